"""Training and evaluation loops.

``fit`` trains a model's trainable parameters (AdamW, cosine schedule) and,
with a checkpoint session, saves after every epoch and resumes inside a fit;
under torchrun every rank takes its share of each batch and DDP averages the
gradients (``spaedge.train.distributed``). ``predict``/``evaluate`` score a
split in order.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spaedge.progress import Reporter
from spaedge.tasks.batching import batches
from spaedge.train import distributed

__all__ = ["fit", "predict", "evaluate"]


def fit(model: nn.Module, dataset, epochs: int, *, lr: float = 3e-3, batch_size: int = 64,
        weight_decay: float = 0.0, generator: Optional[torch.Generator] = None,
        reporter: Optional[Reporter] = None, description: str = "train", session=None,
        phase: tuple[str, int] = ("adapt", 0)) -> float:
    """Train the model's trainable parameters; returns the last epoch's mean loss.

    ``session`` (a spaedge.train.checkpoint.Session) checkpoints after every epoch and,
    when resuming, restarts this fit at its saved epoch; ``phase`` names the fit
    in the pipeline (adapt / recover <step> / final)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if epochs <= 0 or not params:
        return float("nan")
    # oneDNN's conv weight-gradient kernel crashes (SIGSEGV in torch 2.13) on
    # some of the ragged channel counts pruning leaves: train without it
    # (docs/benchmarks.md, "Measurements behind the toolchain's defaults").
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*onednn.*tf32.*|.*TF32.*")
        with torch.backends.mkldnn.flags(enabled=False):
            return _fit(model, dataset, epochs, params, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
                        generator=generator, reporter=reporter, description=description, session=session,
                        phase=phase)


def _fit(model, dataset, epochs, params, *, lr, batch_size, weight_decay, generator, reporter, description,
         session=None, phase=("adapt", 0)):
    net = distributed.wrap(model)  # a fresh DDP wrapper per fit: pruning replaced the parameters
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(dataset) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    advance = reporter.bar(description, steps) if reporter else (lambda n=1: None)
    start = min(epochs, session.begin(phase[0], phase[1], opt, sched)) if session is not None else 0
    advance(start * math.ceil(len(dataset) / batch_size))
    model.train()
    loss_mean = float("nan")
    for epoch in range(start, epochs):
        total, count = 0.0, 0
        for x, y in batches(dataset, batch_size, shuffle=True, generator=generator, select=distributed.share):
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(y)
            count += len(y)
            advance()
        total, count = distributed.all_sum([total, count])
        loss_mean = total / max(count, 1)
        if reporter is not None and not reporter.live:
            reporter.log(f"{description}: epoch {epoch + 1}/{epochs}, loss {loss_mean:.4f}")
        if session is not None:
            session.end_epoch(epoch + 1, opt, sched)
    distributed.average_buffers(model)  # BatchNorm statistics: the same model on every rank
    model.eval()
    return loss_mean


@torch.no_grad()
def predict(model: nn.Module, dataset, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) of a whole split, in order."""
    model.eval()
    logits, labels = [], []
    for x, y in batches(dataset, batch_size):
        logits.append(model(x).numpy())
        labels.append(y.numpy())
    return np.concatenate(logits), np.concatenate(labels)


def evaluate(model: nn.Module, dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy on a split."""
    logits, labels = predict(model, dataset, batch_size)
    return float((logits.argmax(1) == labels).mean()) if len(labels) else float("nan")
