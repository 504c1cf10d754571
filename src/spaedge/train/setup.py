"""From a config to the things training starts from: the base, the task sized
for it, the adapted task model, the task's embedding."""

from __future__ import annotations

import torch
from torch import nn

from spaedge.adapters import adapt
from spaedge.models import ResNet, get_base
from spaedge.pack.bundle import base_hash
from spaedge.pruning.similar import task_embedding
from spaedge.tasks import Task, get_task
from spaedge.train.config import TrainConfig

__all__ = ["load_base", "task_for_base", "build_task_model", "embed_task"]


def load_base(cfg: TrainConfig) -> ResNet:
    return get_base(cfg.base, cfg.base_weights)


def task_for_base(cfg: TrainConfig, base: ResNet) -> Task:
    """The config's task at the size and channels ``base`` takes.

    An image folder has no size of its own: it takes the base's (28x28
    grayscale for the built-in base, not 224x224 RGB at 60x the compute)."""
    size = base.native_input_size() if cfg.task.startswith("imagefolder") else None
    task = get_task(cfg.task, data_dir=cfg.data_dir, input_size=size)
    if task.input_size[0] != base.in_channels:
        task = get_task(cfg.task, data_dir=cfg.data_dir, input_size=(base.in_channels, *task.input_size[1:]))
    return task


def build_task_model(cfg: TrainConfig) -> tuple[Task, nn.Module, str]:
    """(task, adapted model with a fresh head, base content hash) for a config."""
    base = load_base(cfg)
    task = task_for_base(cfg, base)
    bhash = base_hash(base)
    base.replace_head(task.num_classes)
    model = adapt(base, cfg.method, rank=cfg.rank)
    return task, model, bhash


def embed_task(cfg: TrainConfig, task: Task | None = None) -> torch.Tensor:
    """The embedding of the config's task under its frozen base (spaedge.pruning.similar)."""
    base = load_base(cfg)
    if task is None:
        task = task_for_base(cfg, base)
    return task_embedding(base, task.split("train"))
