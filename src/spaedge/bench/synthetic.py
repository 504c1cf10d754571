"""Synthetic tasks: random adapters, BatchNorm and head on a base, pruned to a
density without training. Fine for speed (the benchmark suite) and for tests
that need a task model whose every part is nonzero.

``make_int8_pair`` quantizes a task's pair (docs/int8.md): the int8 base
and the int8 task calibrated on given images or, for synthetic speed tasks,
on seeded random ones (``spaedge.pack.quantize.random_calibration_images``,
the images ``spaedge quantize --calibration random`` uses)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spaedge.adapters import adapt
from spaedge.bench.engines import BenchTask
from spaedge.errors import BundleError
from spaedge.models import RANDOM, get_base
from spaedge.models.stats import count_macs, count_parameters
from spaedge.pack.bundle import TaskSpec, base_hash, load_task_model, write_base, write_task
from spaedge.pack.format import read_bundle, read_metadata, write_bundle
from spaedge.pack.materialize import materialize, whole_model_bytes
from spaedge.pack.quantize import (
    RANDOM_CALIBRATION_IMAGES,
    random_calibration_images,
    random_calibration_info,
)
from spaedge.pruning.prune import density as density_of
from spaedge.pruning.prune import prune_to_density

__all__ = [
    "randomise_task_model",
    "make_synthetic_task",
    "make_int8_pair",
]


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
        base_bytes=base_path.stat().st_size,
    )


def _int8_base(fp32_base: Path, out: Path) -> str:
    """The int8 base quantized from ``fp32_base`` at ``out`` (written when it is
    missing or quantized from another base); its content hash."""
    from spaedge.pack.quantize import int8_base_bundle

    want = read_metadata(fp32_base)["content_hash"]
    if out.exists():
        try:
            meta = read_metadata(out)
            if meta.get("quantized_from") == want and meta.get("precision") == "int8":
                return meta["content_hash"]
        except BundleError:  # an older format, a damaged file: it is a cache
            pass
    return write_bundle(out, *int8_base_bundle(*read_bundle(fp32_base)))


def make_int8_pair(
    task: BenchTask,
    images: np.ndarray | None = None,
    *,
    calibration: int = RANDOM_CALIBRATION_IMAGES,
    seed: int = 0,
) -> BenchTask:
    """The int8 pair of ``task``'s fp32 bundles, as an int8 BenchTask.

    Written under ``task.workdir/int8/``: the base quantized per output
    channel (once per fp32 base) and the task calibrated on ``images``
    (normalised NCHW float32) or, when none are given, on
    ``spaedge.pack.quantize.random_calibration_images(task.input_size,
    calibration, seed)`` (for synthetic speed tasks only, as
    ``spaedge quantize --calibration random``, whose seed is 0: a real task calibrates on its own training
    images, ``spaedge pack --precision int8``). The task bundle's
    ``info.calibration`` says which; a pair already there for the same fp32
    bundles and calibration is reused. The returned task keeps the images
    (``.calibration``: the int8 peers are calibrated on the same ones) and
    ``task`` as its fp32 twin."""
    from spaedge.pack.calibrate import int8_task

    if task.precision != "fp32":
        raise ValueError(f"task {task.name} is {task.precision} already")
    if images is None:
        images = random_calibration_images(task.input_size, calibration, seed)
        described = random_calibration_info(calibration, seed, "minmax")
    else:
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or tuple(images.shape[1:]) != tuple(task.input_size):
            raise ValueError(
                f"calibration images must be [N, {', '.join(map(str, task.input_size))}] "
                f"(normalised NCHW), got shape {list(images.shape)}"
            )
        described = {
            "images": int(len(images)),
            "split": "given",
            "sha256": _digest(images),
            "statistic": "minmax",
        }
    d = Path(task.workdir) / "int8"
    d.mkdir(parents=True, exist_ok=True)
    base8 = d / Path(task.base_path).name
    h8 = _int8_base(Path(task.base_path), base8)
    task8 = d / Path(task.task_path).name
    fp32_hash = read_metadata(task.task_path)["content_hash"]
    if not _int8_task_cached(task8, h8, fp32_hash, described):
        model, spec, _ = load_task_model(task.base_path, task.task_path)
        fp32_meta = read_metadata(task.task_path)
        info = json.loads(fp32_meta.get("info") or "{}")
        info["quantized_from"] = fp32_hash
        tensors, meta = int8_task(model, spec, h8, torch.from_numpy(images), info)
        info = json.loads(meta["info"])
        info["calibration"] = described
        meta["info"] = json.dumps(info)
        write_bundle(task8, tensors, meta)
    return BenchTask(
        name=task.name,
        base_path=str(base8),
        task_path=str(task8),
        input_size=task.input_size,
        macs=task.macs,
        params=task.params,
        bundle_bytes=task8.stat().st_size,
        whole_bytes=0,
        workdir=task.workdir,
        base_model=task.base_model,
        density=task.density,
        precision="int8",
        base_bytes=base8.stat().st_size,
        fp32=task,
        calibration=images,
        statistic=described["statistic"],
    )


def _digest(images: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(images.tobytes()).hexdigest()


def _int8_task_cached(path: Path, h8: str, fp32_hash: str, described: dict) -> bool:
    if not path.exists():
        return False
    try:
        meta = read_metadata(path)
    except BundleError:
        return False
    info = json.loads(meta.get("info") or "{}")
    return (
        meta.get("base_hash") == h8
        and info.get("quantized_from") == fp32_hash
        and info.get("calibration") == described
    )
