"""Data-parallel training under ``torchrun`` (torch.distributed DDP, gloo on CPU).

``torchrun --nproc_per_node N -m spaedge.cli train ...`` starts N copies of
``spaedge train``; ``init_from_env`` (called by the CLI) sees torchrun's
``WORLD_SIZE``/``RANK`` and joins the gloo process group. Then, in the
training loops and pipeline (``spaedge.train``):

- every ``fit`` wraps the model in a fresh ``DistributedDataParallel`` (pruning
  replaces parameters with smaller ones, so a wrapper never outlives a pruning
  step); DDP averages the gradients over ranks in every backward;
- every rank walks the same shuffled order of the training split (same seeded
  generator) and takes its interleaved share of each global batch
  (``share``: positions rank, rank+N, ...), so a step still sees
  ``batch_size`` images in total and the schedule matches a single process;
- after each fit the BatchNorm running statistics are averaged over ranks, so
  every rank holds the same model;
- pruning scores are taken from rank 0 (``agree``) so every rank removes the
  same channels;
- only rank 0 writes (checkpoints, bundles, metrics, plan) and prints.

Without torchrun (or with one process) every function here is a no-op.
Debugging: ``SPAEDGE_DDP_STATE_HASH=1`` makes every rank write
``RUN_DIR/state-rank<r>.sha256`` (its final model's hash; they must be equal);
``SPAEDGE_DDP_UNSYNCED=1`` skips the DDP wrapper, so ranks train apart (the
hashes then differ: what tests/test_ddp.py checks the sync against).
"""

from __future__ import annotations

import hashlib
import os

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "init_from_env",
    "active",
    "rank",
    "world_size",
    "is_main",
    "wrap",
    "share",
    "agree",
    "average_buffers",
    "all_sum",
    "barrier",
    "state_hash",
    "finish",
]


def init_from_env() -> bool:
    """Join the process group torchrun describes (gloo); True if distributed."""
    if active():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    dist.init_process_group("gloo")
    return True


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def wrap(model: nn.Module) -> nn.Module:
    """``model`` in a new DDP wrapper (gradient averaging), or itself alone."""
    if not active() or os.environ.get("SPAEDGE_DDP_UNSYNCED"):  # debug/tests: no gradient averaging
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def share(index: list[int]) -> list[int] | None:
    """This rank's share of a global batch (interleaved positions); None for a
    last batch too small to give every rank a part (every rank skips it)."""
    if not active():
        return index
    if len(index) < world_size():
        return None
    return index[rank() :: world_size()]


def agree(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's value of ``t`` on every rank (for decisions that must match)."""
    if not active():
        return t
    t = t.detach().clone().contiguous()
    dist.broadcast(t, src=0)
    return t


@torch.no_grad()
def average_buffers(model: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks."""
    if not active():
        return
    n = world_size()
    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b.div_(n)


def all_sum(values: list[float]) -> list[float]:
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if active():
        dist.barrier()


def state_hash(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def finish() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
