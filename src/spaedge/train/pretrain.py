"""Pretraining a base network (``spaedge pretrain``).

The built-in bases (``tiny``, ``small``) are pretrained on Fashion-MNIST
classes 0-5 (T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal). Classes
6-9 and the digits are never seen by the bases, so the downstream tasks test
transfer to new data. Their weights ship in ``spaedge/models/weights/``; this
module is how they were made. A run is reproducible from its seed and
resumable: it checkpoints after every epoch in ``<out>.pretrain/`` and a rerun
with the same settings continues there (the same weights as an uninterrupted
run). ``small``'s weights are stored as float16 (under 6 MB; loaded as
float32).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save

from spaedge.models import BASES
from spaedge.pack.format import atomic_write_bytes
from spaedge.progress import Reporter
from spaedge.tasks import first_items, get_task
from spaedge.train.checkpoint import Session
from spaedge.train.device import TrainEnv
from spaedge.train.loops import evaluate, fit

__all__ = ["PRETRAIN_TASK", "pretrain"]

PRETRAIN_TASK = "fashion_mnist:0,1,2,3,4,5"
# How a base's pretrained weights are stored (float16 keeps small under 6 MB).
STORED_DTYPE = {"small": torch.float16}


def pretrain(
    out: str | Path,
    *,
    base: str = "tiny",
    task: str = PRETRAIN_TASK,
    data_dir: str | None = None,
    epochs: int = 6,
    lr: float = 2e-3,
    batch_size: int = 128,
    seed: int = 0,
    train_limit: int = 0,
    reporter: Reporter | None = None,
    resume: bool = True,
    env: TrainEnv | None = None,
) -> dict:
    """Train every weight of a fresh ``base`` on ``task`` (its first ``train_limit``
    training images, 0: all); write ``out`` (safetensors)."""
    reporter = reporter or Reporter(enabled=False)
    out = Path(out)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    t = get_task(task, data_dir=data_dir)
    model = BASES[base]()
    model.replace_head(t.num_classes)
    config = {
        "pretrain": base,
        "task": t.name,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "train_limit": train_limit,
    }
    work = out.with_name(out.name + ".pretrain")
    session = Session(work, config, model, gen, resume=resume)
    if session.resumed_from is not None:
        reporter.log(
            f"resuming from {session.path}: {session.resumed_from.epochs_done} of {epochs} epochs done"
        )
    session.restore_rng()
    t0 = time.time()
    fit(
        model,
        first_items(t.split("train"), train_limit),
        epochs,
        lr=lr,
        batch_size=batch_size,
        weight_decay=5e-4,
        generator=gen,
        reporter=reporter,
        description=f"pretrain {base}",
        session=session,
        phase=("final", 0),
        env=env,
    )
    result = {
        "task": t.name,
        "epochs": epochs,
        "seed": seed,
        "val_accuracy": evaluate(model, t.split("val"), env=env),
        "test_accuracy": evaluate(model, t.split("test"), env=env),
        "seconds": round(time.time() - t0, 1),
    }
    dtype = STORED_DTYPE.get(base, torch.float32)
    state = {
        k: v.to(dtype if v.is_floating_point() else v.dtype).contiguous()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    meta = {"spaedge_pretrain": json.dumps(result), "config": json.dumps(config)}
    atomic_write_bytes(out, save(state, metadata=meta))
    session.finish()
    with contextlib.suppress(OSError):
        work.rmdir()
    reporter.log(
        f"pretrained {base} on {t.name}: test accuracy {result['test_accuracy']:.2%} "
        f"({result['seconds']} s) -> {out}"
    )
    return result
