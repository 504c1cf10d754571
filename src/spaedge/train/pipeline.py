"""Training and evaluation loops, and the prune-and-adapt pipeline of a task.

``run(config, out_dir)`` is what ``spaedge train`` does: load the base, give it a
task head and adapters, adapt, prune iteratively to the target density with
recovery epochs, train the final epochs, evaluate and write the run directory
(``config.json``, ``metrics.json``, ``task.safetensors``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TrainConfig", "batches", "fit", "evaluate", "predict", "run", "Reporter"]


@dataclass
class TrainConfig:
    task: str = "digits"
    base: str = "tiny"
    base_weights: Optional[str] = None
    data_dir: Optional[str] = None
    method: str = "splora"
    rank: int = 8
    density: float = 0.3
    criterion: str = "magnitude"
    schedule: str = "iterative"     # or "oneshot" (spaedge.pruning.prune.SCHEDULES), or "similar"
    library: Optional[str] = None   # --schedule similar: plans/runs to vote (spaedge.pruning.similar)
    neighbours: int = 3             # --schedule similar: nearest library tasks that vote
    train_limit: int = 0            # train on the first N training images only (0: all)
    mask_criterion: str = "snip"    # SparseAdapter masks (spaedge.adapters.sparse)
    adapter_keep: float = 0.1       # SparseAdapter: kept fraction of a pointwise adapter
    pear_prune: float = 0.5         # Pear: fraction of adapters pruned (and shared into)
    pear_share: str = "nearest"     # Pear: sharing map (spaedge.adapters.pear.SHARE_MAPS)
    prune_step: float = 0.05
    # Defaults from two settings tried on digits: lr 1e-2, batch 32, 12 + 1/step + 8
    # epochs reach 97.2% test accuracy at 30% density, against 90.5% with
    # lr 3e-3, batch 64, 8 + 1/step + 6 (the adapters were under-trained).
    epochs: int = 12            # adaptation before pruning
    recovery_epochs: int = 1    # after each pruning step
    final_epochs: int = 8       # after the last step
    batch_size: int = 32
    lr: float = 1e-2
    weight_decay: float = 0.0
    seed: int = 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class Reporter:
    """Progress for long work: a rich progress bar on a terminal, plain lines otherwise."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.console = Console(stderr=True)
            if self.console.is_terminal:
                self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                          TimeElapsedColumn(), console=self.console, transient=True)

    @property
    def live(self) -> bool:
        """True when a live progress bar shows progress (else log lines do)."""
        return self._progress is not None

    def __enter__(self):
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()

    def log(self, msg: str) -> None:
        if self.enabled:
            self.console.print(msg, highlight=False)

    def bar(self, description: str, total: int):
        """Returns advance(n=1) for a bar of ``total`` steps."""
        if self._progress is None:
            return lambda n=1: None
        tid = self._progress.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            self._progress.advance(tid, n)
            if self._progress.tasks[[t.id for t in self._progress.tasks].index(tid)].finished:
                self._progress.remove_task(tid)
        return advance


def batches(dataset, batch_size: int, shuffle: bool = False,
            generator: Optional[torch.Generator] = None, shard: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) batches of a task split, in order or shuffled.

    ``shard``: under torchrun, this rank's share of each batch (spaedge.distributed)."""
    from spaedge import distributed

    n = len(dataset)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    fetch = getattr(dataset, "batch", None)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size].tolist()
        if shard and distributed.active():
            if len(idx) < distributed.world_size():
                continue  # a last batch too small for every rank: skipped by all
            idx = distributed.shard(idx)
        if fetch is not None:
            yield fetch(idx)
        else:
            items = [dataset[i] for i in idx]
            yield torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])


def first_items(dataset, n: int):
    """The first ``n`` items of a task split (a fixed subset: splits are class-mixed)."""
    import copy

    if n <= 0 or n >= len(dataset):
        return dataset
    sub = copy.copy(dataset)
    sub.indices, sub.targets = dataset.indices[:n], dataset.targets[:n]
    return sub


def fit(model: nn.Module, dataset, epochs: int, *, lr: float = 3e-3, batch_size: int = 64,
        weight_decay: float = 0.0, generator: Optional[torch.Generator] = None,
        reporter: Optional[Reporter] = None, description: str = "train", session=None,
        phase: tuple[str, int] = ("adapt", 0)) -> float:
    """Train the model's trainable parameters; returns the last epoch's mean loss.

    ``session`` (a spaedge.checkpoint.Session) checkpoints after every epoch and,
    when resuming, restarts this fit at its saved epoch; ``phase`` names the fit
    in the pipeline (adapt / recover <step> / final)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if epochs <= 0 or not params:
        return float("nan")
    # oneDNN's conv weight-gradient kernel crashes (SIGSEGV in torch 2.13) on
    # some of the ragged channel counts pruning leaves; PyTorch's native conv
    # is at most ~1.5x slower on these small layers, so train without oneDNN.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*onednn.*tf32.*|.*TF32.*")
        with torch.backends.mkldnn.flags(enabled=False):
            return _fit(model, dataset, epochs, params, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
                        generator=generator, reporter=reporter, description=description, session=session,
                        phase=phase)


def _fit(model, dataset, epochs, params, *, lr, batch_size, weight_decay, generator, reporter, description,
         session=None, phase=("adapt", 0)):
    from spaedge import distributed

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
        for x, y in batches(dataset, batch_size, shuffle=True, generator=generator, shard=True):
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


def build_task_model(cfg: TrainConfig):
    """(task, adapted model with a fresh head, base content hash) for a config."""
    from spaedge.adapters import adapt
    from spaedge.models import get_base
    from spaedge.pack.bundle import base_hash
    from spaedge.tasks import get_task

    base = get_base(cfg.base, cfg.base_weights)
    # An image folder has no size of its own: it takes the base's (28x28
    # grayscale for the built-in base, not 224x224 RGB at 60x the compute).
    size = base.native_input_size() if cfg.task.startswith("imagefolder") else None
    task = get_task(cfg.task, data_dir=cfg.data_dir, input_size=size)
    if task.input_size[0] != base.in_channels:
        task = get_task(cfg.task, data_dir=cfg.data_dir,
                        input_size=(base.in_channels, *task.input_size[1:]))
    bhash = base_hash(base)
    base.replace_head(task.num_classes)
    model = adapt(base, cfg.method, rank=cfg.rank)
    return task, model, bhash


def run(cfg: TrainConfig, out_dir: str | Path, *, reporter: Optional[Reporter] = None,
        on_model: Optional[Callable[[nn.Module], None]] = None, resume: bool = True) -> dict:
    """Adapt, prune and train a task; write the run directory; return its metrics.

    Checkpoints after every epoch (``out_dir/checkpoint.safetensors``) and, with
    ``resume``, continues from a checkpoint made with the same config, reaching
    the same model as an uninterrupted run (spaedge.checkpoint)."""
    from spaedge.adapters import learned_parameters
    from spaedge.models.stats import count_macs
    from spaedge.pack.bundle import TaskSpec, write_task
    from spaedge.pack.format import atomic_write_bytes
    from spaedge.pack.materialize import whole_model_bytes
    from spaedge.pruning.prune import density

    reporter = reporter or Reporter(enabled=False)
    out = Path(out_dir)
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    task, model, bhash = build_task_model(cfg)
    from spaedge.methods import prepare_adapters, prune_options, score_batches
    score_data = score_batches(task.split("train"), 4, cfg.batch_size, cfg.seed)
    prepare_adapters(model, method=cfg.method, mask_criterion=cfg.mask_criterion, adapter_keep=cfg.adapter_keep,
                     data=score_data, input_size=task.input_size)
    train_ds, val_ds, test_ds = task.split("train", augment=True), task.split("val"), task.split("test")
    if cfg.train_limit:
        train_ds = first_items(train_ds, cfg.train_limit)
    example = torch.zeros(1, *task.input_size)
    macs_full = count_macs(model, task.input_size)
    from spaedge.checkpoint import Session, prune_resumable
    session = Session(out, cfg.to_json(), model, gen, resume=resume)
    if session.resumed_from is not None:
        p = session.resumed_from
        reporter.log(f"resuming from {session.path}: {p.phase} (step {p.step}), {p.epochs_done} epochs done")
        from spaedge.methods import restore_adapters
        restore_adapters(model, method=cfg.method)
    session.restore_rng()
    kw = dict(lr=cfg.lr, batch_size=cfg.batch_size, weight_decay=cfg.weight_decay, generator=gen,
              reporter=reporter, session=session)
    reporter.log(f"task {task.name}: {len(train_ds)} train / {len(val_ds)} val / {len(test_ds)} test images, "
                 f"{task.num_classes} classes, input {'x'.join(map(str, task.input_size))}")
    similar = None
    if cfg.schedule == "similar" and session.resumed_from is None:  # resumed: the checkpoint has the shapes
        from spaedge.pruning.similar import prune_from_library  # prune once by similar tasks' vote, then train
        similar = prune_from_library(model, cfg, task, bhash, example, log=reporter.log)
    fit(model, train_ds, cfg.epochs, description="adapt", phase=("adapt", 0), **kw)
    reporter.log(f"adapted at density {density(model):.1%}: val accuracy {evaluate(model, val_ds):.2%}")

    def recover(step: int, d: float) -> None:
        fit(model, train_ds, cfg.recovery_epochs, description=f"recover {step}", phase=("recover", step), **kw)
        reporter.log(f"pruning step {step}: density {d:.1%}, val accuracy {evaluate(model, val_ds):.2%}")

    if cfg.density < 1.0 and cfg.schedule != "similar":
        prune_resumable(session, model, example, cfg.density, step_fraction=cfg.prune_step,
                        criterion=cfg.criterion, recover=recover,
                        **prune_options(model, criterion=cfg.criterion, schedule=cfg.schedule, data=score_data))
    from spaedge.methods import after_pruning
    pear = after_pruning(model, method=cfg.method, data=score_data, pear_prune=cfg.pear_prune,
                         pear_share=cfg.pear_share)
    if pear and not pear.get("skipped"):
        reporter.log(f"pear: {len(pear['pruned'])} adapters pruned, {pear['shared']} shared, "
                     f"{pear['removed']} removed (--pear-share none, or no kept adapter of their kept shape)")
    fit(model, train_ds, cfg.final_epochs, description="final", phase=("final", 0), **kw)
    metrics = {
        "task": task.name, "val_accuracy": evaluate(model, val_ds), "test_accuracy": evaluate(model, test_ds),
        "density": density(model), "learned_parameters": learned_parameters(model),
        "macs": count_macs(model, task.input_size), "macs_unpruned": macs_full,
        "whole_model_bytes": whole_model_bytes(model), "seconds": round(time.time() - t0, 1),
        "base_hash": bhash,
    }
    from spaedge import distributed
    if not distributed.is_main():  # under torchrun only rank 0 writes the run directory
        if on_model is not None:
            on_model(model)
        return metrics
    if similar is not None:
        metrics["similar_tasks"] = similar["neighbours"]
    out.mkdir(parents=True, exist_ok=True)
    info = {"rank": cfg.rank, "density": metrics["density"], "test_accuracy": metrics["test_accuracy"],
            "macs": metrics["macs"], "learned_parameters": metrics["learned_parameters"],
            "base": cfg.base, "criterion": cfg.criterion}
    write_task(model, TaskSpec.from_task(task), bhash, out / "task.safetensors", info=info)
    metrics["task_bundle_bytes"] = (out / "task.safetensors").stat().st_size
    atomic_write_bytes(out / "config.json", json.dumps(cfg.to_json(), indent=2).encode())
    atomic_write_bytes(out / "metrics.json", json.dumps(metrics, indent=2).encode())
    from spaedge.pruning.similar import write_run_plan  # kept channels + task embedding, for libraries
    write_run_plan(out, model, cfg, task, bhash, metrics, embedding=similar["embedding"] if similar else None)
    session.finish()
    if on_model is not None:
        on_model(model)
    return metrics
