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

from .batching import batches, first_items, score_batches
from .core import (
    CROP_FRACTION,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SPLITS,
    DatasetNotFound,
    Task,
    TaskDataset,
    load_image,
    parse_input_size,
    stratified_split,
)
from .fetch import fetch_data
from .identity import data_identity
from .idx import read_idx, write_idx
from .registry import (
    DEFAULT_TASK,
    UnknownTask,
    get_task,
    list_tasks,
    register_task,
    task_descriptions,
)

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
