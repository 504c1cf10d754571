"""`digits`: scikit-learn's bundled 8x8 handwritten digits; the embedded default.

1797 images with 17 gray levels (0..16), upsampled bilinearly to the base's
input size (default 1 x 28 x 28, the built-in base). Stratified 60/20/20
train/val/test split by a fixed hash order. Normalisation: mean and std of
the training split at the chosen input size.
"""

from __future__ import annotations

import numpy as np

from .core import ArraySource, Task, parse_input_size, stratified_split
from .image import crop_fraction_for

DEFAULT_SIZE = (1, 28, 28)
FRACTIONS = (0.6, 0.2, 0.2)
SEED = "spaedge/digits/v1"


def _load_raw():
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - sklearn is in the train extra
        raise ImportError("the digits task needs scikit-learn: pip install 'spaedge[train]'") from e
    d = load_digits()
    images = np.asarray(d.images, dtype=np.uint8)[:, None]  # N x 1 x 8 x 8, values 0..16
    return images, np.asarray(d.target, dtype=np.int64)


def _channel_stats(source, indices, chunk=64):
    """Per-channel mean and (population) std, in chunks: big inputs stay cheap."""
    total = sq = None
    count = 0
    for start in range(0, len(indices), chunk):
        x = source.load(indices[start : start + chunk]).double()
        s, q = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
        total, sq = (s, q) if total is None else (total + s, sq + q)
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (sq / count - mean * mean).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()


def make_digits(data_dir=None, input_size=None) -> Task:
    size = parse_input_size(input_size, DEFAULT_SIZE)
    images, targets = _load_raw()
    source = ArraySource(images, targets, size, scale=16.0)
    train, val, test = stratified_split(targets, FRACTIONS, SEED)
    table = {"train": (source, train), "val": (source, val), "test": (source, test)}

    # Gray digits: every channel of an RGB input is the same, so measure one.
    gray = source if size[0] == 1 else ArraySource(images, targets, (1,) + size[1:], scale=16.0)
    mean, std = _channel_stats(gray, train)
    mean, std = mean * size[0], std * size[0]
    return Task(
        "digits",
        [str(i) for i in range(10)],
        size,
        mean,
        std,
        lambda: table,
        description="scikit-learn 8x8 digits, upsampled (embedded default)",
        flip_ok=False,
        in_memory=True,
        crop_fraction=crop_fraction_for("digits"),  # whole images; the device reads it too
    )
