"""Fashion-MNIST (Zalando), read from the IDX files.

Looked for in --data-dir, else $SPAEDGE_DATA/fashion-mnist, else
/usr/share/datasets/fashion-mnist (Debian/Ubuntu package dataset-fashion-mnist).
Files: train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
t10k-labels-idx1-ubyte, each optionally .gz.

Splits: the official 60k train / 10k test; val is a stratified 10% of train
(fixed hash order) carved before any class subset is taken, so a given
image is in the same split whatever classes a task selects.

Class subsets renumber labels 0..k-1 in the order given:
`fashion_mnist_base` = classes 0..5 (pretraining of the built-in base only),
`fashion_mnist_new` = 6..9 (Shirt, Sneaker, Bag, Ankle boot; classes the base
never saw), `fashion_mnist:6,7,8,9` any subset.

Normalisation is the full training set's (mean 0.2860, std 0.3530) for every
subset, so a downstream task feeds the base data scaled as in pretraining.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from .core import (
    ArraySource,
    DatasetNotFound,
    Task,
    parse_input_size,
    search_dirs,
    stratified_split,
)
from .idx import read_idx
from .image import crop_fraction_for

LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MEAN, STD = 0.2860, 0.3530
DEFAULT_SIZE = (1, 28, 28)
VAL_FRACTION = 0.1
SEED = "spaedge/fashion_mnist/v1"
SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
DIR_NAMES = ("fashion-mnist", "fashion_mnist", os.path.join("FashionMNIST", "raw"))
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_cache: dict[tuple, dict[str, np.ndarray]] = {}
_cache_lock = threading.Lock()


def _find_file(directory: str, stem: str):
    for name in (stem + ".gz", stem):
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            return p
    return None


def find_fashion_mnist(data_dir=None) -> dict[str, str]:
    """Paths of the four IDX files, or DatasetNotFound saying where we looked."""
    dirs = search_dirs(data_dir, DIR_NAMES, defaults=(SYSTEM_DIR,))
    for d in dirs:
        found = {k: _find_file(d, stem) for k, stem in FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    raise DatasetNotFound(
        "Fashion-MNIST not found in "
        + ", ".join(dirs)
        + ": expected "
        + ", ".join(s + "[.gz]" for s in FILES.values())
        + ". Install the package dataset-fashion-mnist (apt) or download the files from "
        "https://github.com/zalandoresearch/fashion-mnist and pass --data-dir DIR "
        "(or set SPAEDGE_DATA so that $SPAEDGE_DATA/fashion-mnist holds them).",
        dirs,
    )


def _read(paths: dict[str, str]) -> dict[str, np.ndarray]:
    key = tuple(
        sorted(
            (k, os.path.realpath(p), os.stat(p).st_mtime_ns, os.stat(p).st_size)
            for k, p in paths.items()
        )
    )
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    out = {k: read_idx(p) for k, p in paths.items()}
    for part in ("train", "test"):
        x, y = out[f"{part}_images"], out[f"{part}_labels"]
        if x.ndim != 3 or x.dtype != np.uint8:
            raise ValueError(
                f"{paths[part + '_images']}: expected uint8 N x H x W images, "
                f"got {x.dtype} {x.shape}"
            )
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(
                f"{paths[part + '_labels']}: expected {len(x)} labels, got shape {y.shape}"
            )
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise ValueError(f"{paths[part + '_labels']}: labels outside 0..9")
        out[f"{part}_labels"] = y.astype(np.int64)
    with _cache_lock:
        if len(_cache) >= 4:
            _cache.pop(next(iter(_cache)))
        _cache[key] = out
    return out


def make_fashion_mnist(data_dir=None, input_size=None) -> Task:
    size = parse_input_size(input_size, DEFAULT_SIZE)
    paths = find_fashion_mnist(data_dir)  # fail early, load lazily

    def load():
        raw = _read(paths)
        train_src = ArraySource(raw["train_images"][:, None], raw["train_labels"], size)
        test_src = ArraySource(raw["test_images"][:, None], raw["test_labels"], size)
        train, val = stratified_split(raw["train_labels"], (1 - VAL_FRACTION, VAL_FRACTION), SEED)
        return {
            "train": (train_src, train),
            "val": (train_src, val),
            "test": (test_src, np.arange(len(test_src))),
        }

    c = size[0]
    return Task(
        "fashion_mnist",
        LABELS,
        size,
        (MEAN,) * c,
        (STD,) * c,
        load,
        description="Fashion-MNIST, 10 clothing classes (official train/test)",
        flip_ok=False,
        in_memory=True,
        crop_fraction=crop_fraction_for("fashion_mnist"),  # whole images; the device reads it too
        sources=[("file", paths[k]) for k in sorted(paths)],
    )
