"""From a config to the things training starts from: named resources made
local (``resolve``), the base, the task sized for it, the adapted task model,
the task's embedding."""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn

from spaedge.adapters import adapt
from spaedge.models import ResNet, get_base
from spaedge.models.pretrained import PRETRAINED, pretrained_weights
from spaedge.pack.bundle import base_hash
from spaedge.pruning.similar import task_embedding
from spaedge.tasks import Task, fetch_data, get_task
from spaedge.train.config import AUTO, TrainConfig

__all__ = [
    "resolve",
    "default_base",
    "load_base",
    "task_for_base",
    "build_task_model",
    "embed_task",
]


def default_base(task: Task) -> str:
    """The base a task trains on when ``--base`` is not given: natural RGB
    images (flowers, cifar10, an RGB image folder) get an ImageNet ResNet-18;
    grayscale ones (digits, Fashion-MNIST, a gray image folder) the built-in
    28x28 ``tiny``."""
    return "resnet18" if task.input_size[0] == 3 else "tiny"


def resolve(
    cfg: TrainConfig,
    *,
    allow_download: bool = True,
    log: Callable[[str], None] | None = None,
    progress=None,
) -> TrainConfig:
    """The config with its named resources made local, before any work: the
    task's data (downloaded into the cache on first use), the base chosen for
    the task when ``base`` is ``auto``, and its pretrained weights (downloaded
    and converted once). ``allow_download=False`` (``--no-download``) uses
    what is on disk or raises naming where files go."""
    log = log or (lambda msg: None)
    data_dir = fetch_data(cfg.task, cfg.data_dir, allow_download=allow_download, progress=progress)
    base = cfg.base
    if base == AUTO:
        base = default_base(get_task(cfg.task, data_dir=data_dir))
        kind = "natural RGB images" if base != "tiny" else "grayscale images"
        log(f"base {base} for {cfg.task} ({kind}; --base picks another)")
    if cfg.base_weights is None and base.removesuffix("-cifar") in PRETRAINED:
        pretrained_weights(
            base, allow_download=allow_download, progress=progress
        )  # cached for get_base
    return dataclasses.replace(cfg, data_dir=data_dir, base=base)


def load_base(cfg: TrainConfig) -> ResNet:
    """The config's base with its weights (``resolve`` the config first: no base is ``auto``)."""
    if cfg.base == AUTO:
        raise ValueError("base 'auto' is chosen by spaedge.train.setup.resolve(cfg) from the task")
    return get_base(cfg.base, cfg.base_weights, allow_download=False)


def task_for_base(cfg: TrainConfig, base: ResNet, log: Callable[[str], None] | None = None) -> Task:
    """The config's task at the input size the base was made for (its native
    size: 224x224 for an ImageNet stem, 32x32 for a -cifar stem, 28x28 for
    ``tiny``), with its channels; a grayscale task on an RGB base (or the
    reverse) is converted, and ``log`` says so."""
    task = get_task(cfg.task, data_dir=cfg.data_dir, input_size=base.native_input_size())
    own = get_task(cfg.task, data_dir=cfg.data_dir).input_size[0]
    for note in task.notes:
        if log is not None:
            log(note)
    if own != base.in_channels and log is not None:
        how = (
            "each gray image repeated to 3 channels"
            if own == 1
            else "colour converted to luma (1 channel)"
        )
        log(
            f"{cfg.task} has {'gray' if own == 1 else 'RGB'} images, the {cfg.base} base takes "
            f"{base.in_channels} channel{'s' if base.in_channels > 1 else ''}: {how}"
        )
    return task


def build_task_model(
    cfg: TrainConfig, log: Callable[[str], None] | None = None
) -> tuple[Task, nn.Module, str]:
    """(task, adapted model with a fresh head, base content hash) for a config
    (resolved here if its base is still ``auto``)."""
    if cfg.base == AUTO:
        cfg = resolve(cfg, log=log)
    base = load_base(cfg)
    task = task_for_base(cfg, base, log)
    bhash = base_hash(base)
    base.replace_head(task.num_classes)
    model = adapt(base, cfg.method, rank=cfg.rank)  # None: the method has no rank
    return task, model, bhash


def embed_task(cfg: TrainConfig, task: Task | None = None) -> torch.Tensor:
    """The embedding of the config's task under its frozen base (spaedge.pruning.similar)."""
    base = load_base(cfg)
    if task is None:
        task = task_for_base(cfg, base)
    return task_embedding(base, task.split("train"))
