"""Training and evaluation loops.

``fit`` trains a model's trainable parameters (AdamW, cosine schedule) on
the device ``TrainEnv`` names (``spaedge.train.device``) and, with a
checkpoint session, saves after every epoch and resumes inside a fit; a
non-finite loss stops it (``Diverged``). Under torchrun every rank takes its
share of each batch and DDP averages the gradients
(``spaedge.train.distributed``). ``predict``/``evaluate`` score a split in
order, in inference mode.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spaedge.progress import Reporter
from spaedge.tasks.batching import batches
from spaedge.train import distributed
from spaedge.train.device import (
    GradScaler,
    TrainEnv,
    autocast,
    resolve_device,
    resolve_precision,
    to_device,
    use_onednn,
)

__all__ = ["fit", "predict", "evaluate", "Diverged"]


def fit(
    model: nn.Module,
    dataset,
    epochs: int,
    *,
    lr: float = 3e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    generator: torch.Generator | None = None,
    reporter: Reporter | None = None,
    description: str = "train",
    session=None,
    phase: tuple[str, int] = ("adapt", 0),
    env: TrainEnv | None = None,
    on_epoch: Callable[[int, float], bool] | None = None,
) -> float:
    """Train the model's trainable parameters; returns the last epoch's mean loss.

    ``session`` (a spaedge.train.checkpoint.Session) checkpoints after every epoch and,
    when resuming, restarts this fit at its saved epoch; ``phase`` names the fit
    in the pipeline (adapt / recover <step> / final). ``env`` says where and how
    (device, precision, loader processes); the model is back where it was after.
    ``on_epoch(epochs done, mean loss)`` runs after every epoch (validation,
    ``spaedge.train.validation``); True ends the fit there."""
    params = [p for p in model.parameters() if p.requires_grad]
    if epochs <= 0 or not params:
        return float("nan")
    env = env or TrainEnv()
    device = resolve_device(env.device)
    onednn = use_onednn(model, device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*onednn.*tf32.*|.*TF32.*")
        with torch.backends.mkldnn.flags(enabled=onednn):
            home = _device_of(model)
            model.to(device)
            try:
                return _fit(
                    model,
                    dataset,
                    epochs,
                    params,
                    lr=lr,
                    batch_size=batch_size,
                    weight_decay=weight_decay,
                    generator=generator,
                    reporter=reporter,
                    description=description,
                    session=session,
                    phase=phase,
                    env=env,
                    device=device,
                    channels_last=onednn,
                    on_epoch=on_epoch,
                )
            finally:
                model.to(home)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _fit(
    model,
    dataset,
    epochs,
    params,
    *,
    lr,
    batch_size,
    weight_decay,
    generator,
    reporter,
    description,
    session,
    phase,
    env,
    device,
    channels_last,
    on_epoch,
):
    net = distributed.wrap(model)  # a fresh DDP wrapper per fit: pruning replaced the parameters
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    per_epoch = math.ceil(len(dataset) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * per_epoch)
    dtype = resolve_precision(env.precision, device)
    scaler = GradScaler(device, dtype)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    advance = (
        reporter.bar(description, epochs * per_epoch, unit="img")
        if reporter
        else (lambda n=1, images=0: None)
    )
    start = min(epochs, session.begin(phase[0], phase[1], opt, sched)) if session is not None else 0
    advance(start * per_epoch)
    loss_mean = float("nan")
    for epoch in range(start, epochs):
        model.train()  # (validation after an epoch leaves it in eval mode)
        total, count, t0 = 0.0, 0, time.perf_counter()
        for batch in batches(
            dataset,
            batch_size,
            shuffle=True,
            generator=generator,
            select=distributed.share,
            workers=env.loader_workers,
            pin_memory=device.type == "cuda",
        ):
            x, y = to_device(batch, device, fmt)
            with autocast(device, dtype):
                loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.backward_step(loss, opt)
            sched.step()
            total += loss.item() * len(y)
            count += len(y)
            advance(images=len(y))
        total, count = distributed.all_sum([total, count])
        loss_mean = total / max(count, 1)
        if not math.isfinite(loss_mean):
            raise Diverged(
                f"{description}: the loss became {loss_mean} in epoch {epoch + 1} (learning rate "
                f"{opt.param_groups[0]['lr']:.3g}): lower --lr and run again; nothing was written"
            )
        if reporter is not None and not reporter.live:
            rate = count / max(time.perf_counter() - t0, 1e-9)
            left = (epochs - epoch - 1) * per_epoch * batch_size / max(rate, 1e-9)
            reporter.log(
                f"{description}: epoch {epoch + 1}/{epochs}, loss {loss_mean:.4f}, {rate:.0f} images/s"
                + (f", {_duration(left)} left in this phase" if epoch + 1 < epochs else "")
            )
        stop = bool(on_epoch(epoch + 1, loss_mean)) if on_epoch is not None else False
        if (
            session is not None
        ):  # a stopped phase counts as done: a resumed run does not train it further
            session.end_epoch(epochs if stop else epoch + 1, opt, sched)
        if stop:
            if reporter is not None:
                reporter.log(
                    f"{description}: stopped after epoch {epoch + 1}/{epochs} (no better validation "
                    "accuracy)"
                )
            break
    distributed.average_buffers(model)  # BatchNorm statistics: the same model on every rank
    model.eval()
    return loss_mean


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return (
        f"{s // 3600}h{s % 3600 // 60:02d}m"
        if s >= 3600
        else f"{s // 60}m{s % 60:02d}s"
        if s >= 60
        else f"{s}s"
    )


class Diverged(ValueError):
    """Training produced a non-finite loss: the run stops instead of packing a broken model."""


def predict(
    model: nn.Module, dataset, batch_size: int = 256, env: TrainEnv | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) of a whole split, in order (inference mode, oneDNN, on ``env``'s device)."""
    env = env or TrainEnv()
    device = resolve_device(env.device)
    model.eval()
    logits, labels = [], []
    home = _device_of(model)
    model.to(device)
    try:
        with torch.inference_mode():
            for batch in batches(
                dataset, batch_size, workers=env.loader_workers, pin_memory=device.type == "cuda"
            ):
                x, y = to_device(batch, device)
                with autocast(device, resolve_precision(env.precision, device)):
                    out = model(x)
                logits.append(out.float().cpu().numpy())
                labels.append(y.cpu().numpy())
    finally:
        model.to(home)
    return np.concatenate(logits), np.concatenate(labels)


def evaluate(
    model: nn.Module, dataset, batch_size: int = 256, env: TrainEnv | None = None
) -> float:
    """Top-1 accuracy on a split."""
    logits, labels = predict(model, dataset, batch_size, env)
    return float((logits.argmax(1) == labels).mean()) if len(labels) else float("nan")
