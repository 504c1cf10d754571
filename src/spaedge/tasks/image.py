"""Image files to arrays with numpy and Pillow only (no torch).

The one decoder the task loaders (``core.load_image``) and the device's
``spaedge run`` share, so an image is preprocessed on a Raspberry Pi exactly
as the task's data was in training.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "CROP_FRACTION",
    "EXTENSIONS",
    "WHOLE_IMAGE_TASKS",
    "crop_fraction_for",
    "decode_image",
]

# Image files an image folder holds (lower-case suffixes).
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

# Decoded photos: resize so the shorter side (relative to the target aspect) is
# target / CROP_FRACTION, then centre-crop the target. 0.875 is the usual
# ImageNet evaluation transform (256 -> 224), which pretrained bases expect.
CROP_FRACTION = 0.875

# Tasks whose data are whole small images (their loaders pass crop_fraction=1.0):
# only the aspect ratio is cropped. A class subset (NAME:CLASSES) is its task's.
WHOLE_IMAGE_TASKS = frozenset(
    {"digits", "fashion_mnist", "fashion_mnist_base", "fashion_mnist_new", "cifar10"}
)


def crop_fraction_for(task_name: str) -> float:
    """The crop fraction of a task by name (a packed bundle records the name)."""
    head = str(task_name).partition(":")[0]
    return 1.0 if head in WHOLE_IMAGE_TASKS else CROP_FRACTION


def decode_image(path, size, crop_fraction: float = CROP_FRACTION) -> np.ndarray:
    """Decode an image file to a C x H x W float32 array in [0, 1] (not normalised).

    Resized (bilinear) so that the target, relative to its aspect, covers
    ``crop_fraction`` of the shorter side, then centre-cropped to H x W; gray
    for one channel, RGB for three. Needs Pillow (ImportError saying so)."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(
            "decoding image files needs Pillow: pip install pillow "
            "(or give already-normalised .npy arrays)"
        ) from None

    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    c, h, w = size
    with Image.open(path) as im:
        im = im.convert("RGB" if c == 3 else "L")
        w0, h0 = im.size
        s = max(h / h0, w / w0) / crop_fraction
        nw, nh = max(w, int(round(w0 * s))), max(h, int(round(h0 * s)))
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - w) // 2, (nh - h) // 2
        im = im.crop((left, top, left + w, top + h))
        arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr.transpose(2, 0, 1)).astype(np.float32) / np.float32(255.0)
