"""Synthetic tasks: random adapters, BatchNorm and head on a base, pruned to a
density without training. Fine for speed (the benchmark suite) and for tests
that need a task model whose every part is nonzero."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from spaedge.adapters import adapt
from spaedge.bench.engines import BenchTask
from spaedge.errors import BundleError
from spaedge.models import RANDOM, get_base
from spaedge.models.stats import count_macs, count_parameters
from spaedge.pack.bundle import TaskSpec, base_hash, write_base, write_task
from spaedge.pack.format import read_metadata
from spaedge.pack.materialize import materialize, whole_model_bytes
from spaedge.pruning.prune import density as density_of
from spaedge.pruning.prune import prune_to_density

__all__ = ["randomise_task_model", "make_synthetic_task"]


def randomise_task_model(
    model: nn.Module, generator: torch.Generator, scale: float = 0.05, bn_scale: float = 0.1
) -> None:
    """Random task parts, in place: SPLoRA factors and the head ~ N(0, scale^2)
    (so a product B A is nonzero), BatchNorm scales 1 + N(0, bn_scale^2) with
    random shifts and statistics. The frozen base weights are left as they are."""
    g = generator
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_a" in n or "lora_b" in n or n.startswith("fc."):
                p.copy_(scale * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(1 + bn_scale * torch.randn(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))


def _cached(path: Path, bhash: str) -> bool:
    """Whether ``path`` holds the base bundle of hash ``bhash`` in this format; a
    missing file, another base or one of an older format is written again."""
    if not path.exists():
        return False
    try:
        return read_metadata(path).get("content_hash") == bhash
    except BundleError:  # an older format version, or a damaged file: it is a cache
        return False


def make_synthetic_task(
    workdir: str | os.PathLike,
    name: str,
    *,
    base: str = "resnet18",
    density: float = 1.0,
    rank: int = 8,
    classes: int = 10,
    input_size: Sequence[int] = (3, 224, 224),
    seed: int = 0,
    labels: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    prune_step: float = 0.1,
    base_seed: int = 0,
    base_file: str | None = None,
) -> BenchTask:
    """Bundles of a task with random SPLoRA adapters, BatchNorm and head on ``base``,
    pruned (magnitude criterion, no training) to ``density``; fine for speed.

    The base is the built-in weights for ``tiny``, random weights (seeded by
    ``base_seed``; speed does not depend on them) otherwise; its bundle (``base_file``, default
    ``base-BASE.safetensors``) is written once per directory."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    size = tuple(int(v) for v in input_size)
    torch.manual_seed(base_seed)
    model = get_base(base, None if base == "tiny" else RANDOM).eval()
    base_path = workdir / (base_file or f"base-{base}.safetensors")
    bhash = base_hash(model)
    if not _cached(base_path, bhash):
        write_base(model, base_path)
    model.replace_head(classes)
    model = adapt(model, "splora", rank=rank)
    randomise_task_model(model, torch.Generator().manual_seed(seed))
    if density < 1.0:
        # The channel structure does not depend on the image size: prune at a small one.
        small = (size[0], min(size[1], 64), min(size[2], 64))
        prune_to_density(model, torch.zeros(1, *small), density, step_fraction=prune_step)
    model.eval()
    spec = TaskSpec(
        name,
        labels or [f"class{i}" for i in range(classes)],
        size,
        mean or [0.0] * size[0],
        std or [1.0] * size[0],
    )
    task_path = workdir / f"{name}.safetensors"
    info = {"rank": rank, "density": density_of(model), "synthetic": True}
    write_task(model, spec, bhash, task_path, info=info)
    plain = materialize(model)
    return BenchTask(
        name=name,
        base_path=str(base_path),
        task_path=str(task_path),
        input_size=size,
        macs=count_macs(plain, size),
        params=count_parameters(plain),
        bundle_bytes=task_path.stat().st_size,
        whole_bytes=whole_model_bytes(model),
        workdir=str(workdir),
        base_model=model.arch,
        density=density_of(model),
    )
