"""Task registry and data loaders.

    from spaedge.tasks import get_task
    task = get_task("fashion_mnist_new")          # or "digits", "flowers", ...
    task.labels, task.input_size, task.mean, task.std, task.num_classes
    train = task.split("train")                   # Dataset of (C x H x W float32, int64)
    X, y = task.arrays("val")                     # whole split in memory

Images come out normalised with the task's mean/std at `input_size`. Splits
are deterministic (fixed hash order, no RNG). Missing data raises
`DatasetNotFound` naming the directories searched and how to provide them;
unknown names raise `UnknownTask` listing the known ones. See
`registry.py` for the names and each loader's module for its layout.

`fetch_data(name, data_dir)` downloads the data of tasks that can be
downloaded (flowers, cifar10) on first use and returns the directory to pass
as `data_dir`; see `fetch.py`.
"""

from __future__ import annotations

import importlib

# Loaded on first use: `spaedge.tasks.image` (numpy and Pillow only) serves the
# device's `spaedge run` without torch, which batching and the loaders import.
_WHERE = {
    "batches": "batching",
    "first_items": "batching",
    "score_batches": "batching",
    "CROP_FRACTION": "core",
    "IMAGENET_MEAN": "core",
    "IMAGENET_STD": "core",
    "SPLITS": "core",
    "DatasetNotFound": "core",
    "Task": "core",
    "TaskDataset": "core",
    "load_image": "core",
    "parse_input_size": "core",
    "stratified_split": "core",
    "fetch_data": "fetch",
    "data_identity": "identity",
    "read_idx": "idx",
    "write_idx": "idx",
    "DEFAULT_TASK": "registry",
    "UnknownTask": "registry",
    "get_task": "registry",
    "list_tasks": "registry",
    "register_task": "registry",
    "task_descriptions": "registry",
}


def __getattr__(name: str):
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'spaedge.tasks' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{where}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


__all__ = [
    "batches",
    "first_items",
    "score_batches",
    "CROP_FRACTION",
    "DEFAULT_TASK",
    "DatasetNotFound",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPLITS",
    "Task",
    "TaskDataset",
    "UnknownTask",
    "data_identity",
    "fetch_data",
    "get_task",
    "list_tasks",
    "load_image",
    "parse_input_size",
    "read_idx",
    "register_task",
    "stratified_split",
    "task_descriptions",
    "write_idx",
]
