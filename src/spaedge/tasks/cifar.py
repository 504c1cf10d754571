"""CIFAR-10, binary version only.

Directory (--data-dir DIR, else $SPAEDGE_DATA/cifar10; the unpacked
cifar-10-batches-bin/ inside either is found too): data_batch_1.bin ..
data_batch_5.bin and test_batch.bin, each a run of 3073-byte records
(1 label byte, then 1024 red, 1024 green, 1024 blue bytes, rows top down).

The "python version" (cifar-10-batches-py) is pickle files; unpickling runs
arbitrary code from the file, so we refuse it and ask for the binary version.

Splits: official 50k train / 10k test; val is a stratified 10% of train
(fixed hash order). Default input 3 x 32 x 32; usual CIFAR-10 mean/std.
"""

from __future__ import annotations

import os

import numpy as np

from .core import (
    ArraySource,
    DatasetNotFound,
    Task,
    parse_input_size,
    search_dirs,
    stratified_split,
)
from .image import crop_fraction_for

LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
# Luma weights applied to the above: an approximation for 1-channel input.
GRAY_MEAN = (0.4809,)
GRAY_STD = (0.2466,)
DEFAULT_SIZE = (3, 32, 32)
VAL_FRACTION = 0.1
SEED = "spaedge/cifar10/v1"
RECORD = 1 + 3 * 32 * 32
TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST_FILES = ["test_batch.bin"]
BIN_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
DIR_NAMES = (
    "cifar10",
    "cifar-10",
    "cifar-10-batches-bin",
    os.path.join("cifar10", "cifar-10-batches-bin"),
)


def _candidates(data_dir):
    dirs = search_dirs(data_dir, DIR_NAMES)
    out = []
    for d in dirs:  # a directory holding the unpacked archive counts too
        out += [d, os.path.join(d, "cifar-10-batches-bin")]
    return list(dict.fromkeys(out))


def _has_python_version(d: str) -> bool:
    return os.path.isfile(os.path.join(d, "data_batch_1")) or os.path.isdir(
        os.path.join(d, "cifar-10-batches-py")
    )


def find_cifar10(data_dir=None) -> str:
    dirs = _candidates(data_dir)
    for d in dirs:
        if all(os.path.isfile(os.path.join(d, f)) for f in TRAIN_FILES + TEST_FILES):
            return d
    py = [d for d in dirs if _has_python_version(d)]
    if py:
        raise DatasetNotFound(
            f"found only the python (pickle) version of CIFAR-10 in {py[0]}; spaedge does not "
            f"unpickle data files (that can run arbitrary code). Download the binary version "
            f"{BIN_URL}, unpack it (cifar-10-batches-bin/) and pass --data-dir DIR.",
            dirs,
        )
    where = f"in {', '.join(dirs)}" if dirs else "(no --data-dir given and SPAEDGE_DATA is not set)"
    raise DatasetNotFound(
        f"CIFAR-10 (binary version) not found {where}: expected "
        f"{', '.join(TRAIN_FILES + TEST_FILES)}. Download {BIN_URL}, unpack it and pass "
        "--data-dir DIR (or put it in $SPAEDGE_DATA/cifar10). The spaedge commands download it "
        "on first use unless --no-download is given (from Python: "
        "spaedge.tasks.fetch_data('cifar10')).",
        dirs,
    )


def read_cifar_bin(path: str):
    """One binary batch file -> (uint8 N x 3 x 32 x 32, int64 labels)."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD:
        raise ValueError(
            f"{path}: {raw.size} bytes is not a whole number of {RECORD}-byte "
            "CIFAR-10 records (is this the binary version?)"
        )
    rec = raw.reshape(-1, RECORD)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ValueError(f"{path}: label {labels.max()} outside 0..9")
    return rec[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def _read_all(d: str, files):
    parts = [read_cifar_bin(os.path.join(d, f)) for f in files]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def make_cifar10(data_dir=None, input_size=None) -> Task:
    size = parse_input_size(input_size, DEFAULT_SIZE)
    root = find_cifar10(data_dir)

    def load():
        xtr, ytr = _read_all(root, TRAIN_FILES)
        xte, yte = _read_all(root, TEST_FILES)
        train_src, test_src = ArraySource(xtr, ytr, size), ArraySource(xte, yte, size)
        train, val = stratified_split(ytr, (1 - VAL_FRACTION, VAL_FRACTION), SEED)
        return {
            "train": (train_src, train),
            "val": (train_src, val),
            "test": (test_src, np.arange(len(test_src))),
        }

    mean, std = (MEAN, STD) if size[0] == 3 else (GRAY_MEAN, GRAY_STD)
    return Task(
        "cifar10",
        LABELS,
        size,
        mean,
        std,
        load,
        description="CIFAR-10 binary version (needs --data-dir)",
        flip_ok=True,
        in_memory=True,
        crop_fraction=crop_fraction_for("cifar10"),  # whole images; the device reads it too
        sources=[("file", os.path.join(root, f)) for f in TRAIN_FILES + TEST_FILES],
    )
