"""Image files to float pixels by value range, never by clipping (numpy and
Pillow only: the device side's ``spaedge run IMAGE`` and the training
loaders read images through here).

Every mode Pillow decodes is either converted by what its values mean or
refused with an error naming the mode (docs/reliability.md, "Images"):

- ``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``:
  8-bit channels, divided by 255 (converted to RGB or luma by Pillow);
- ``I;16``, ``I;16L``, ``I;16B``, ``I;16N``: 16-bit, divided by 65535;
- ``I`` (32-bit integers, how Pillow holds 16-bit data from some formats):
  values in 0..65535 are 16-bit samples, divided by 65535; anything else has
  no known range and is refused;
- ``F`` (32-bit float): values in 0..1 are taken as they are, values in
  0..255 are divided by 255; NaN, infinities or values outside 0..255 are
  refused;
- alpha (``LA``, ``PA``, ``RGBA``, ``La``, ``RGBa``, a palette with a transparent
  colour): the image is composited over black (each channel times alpha), so a
  transparent pixel reads as 0 whatever colour it hides.

Geometry: an image of more than ``MAX_PIXELS`` pixels, whose longer side is
more than ``MAX_ASPECT`` times its shorter one, or whose resized size would
exceed ``MAX_PIXELS``, is refused before it is decoded (a 2,000,000 x 1 PNG is
2 kB on disk and its resize to cover a 224 x 224 input would be 10^11 pixels).
"""

from __future__ import annotations

import os

import numpy as np

__all__ = [
    "MAX_PIXELS",
    "MAX_ASPECT",
    "ImageRefused",
    "geometry_problem",
    "image_problem",
    "read_image",
]

# Images above this many pixels are refused (a 30000 x 30000 PNG would take
# 2.7 GB to decode; the largest photos cameras take are ~10^8).
MAX_PIXELS = 100_000_000
# Longest side over shortest: panoramas reach ~10:1; beyond 20:1 an image is a
# strip, and covering a square input from it multiplies its long side.
MAX_ASPECT = 20

_EIGHT_BIT = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
_ALPHA = ("LA", "La", "PA", "RGBA", "RGBa")
_SIXTEEN = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageRefused(ValueError):
    """An image that cannot be read by value range (its mode, values or size)."""


def _resized(w: int, h: int, size, crop_fraction: float) -> tuple[int, int]:
    _, th, tw = size
    s = max(th / h, tw / w) / crop_fraction
    return max(tw, int(round(w * s))), max(th, int(round(h * s)))


def geometry_problem(w: int, h: int, size=None, crop_fraction: float = 1.0) -> str | None:
    """Why an image of ``w`` x ``h`` pixels is refused (None if it is not):
    too many pixels, too elongated, or too many once resized to cover ``size``."""
    if w < 1 or h < 1:
        return f"{w}x{h} pixels: empty"
    if w * h > MAX_PIXELS:
        return f"{w}x{h} pixels, above the {MAX_PIXELS:,} limit"
    if max(w, h) > MAX_ASPECT * min(w, h):
        return f"{w}x{h} pixels: aspect ratio above the {MAX_ASPECT}:1 limit"
    if size is not None:
        nw, nh = _resized(w, h, size, crop_fraction)
        if nw * nh > MAX_PIXELS:
            return f"{w}x{h} pixels would be resized to {nw}x{nh}, above the {MAX_PIXELS:,} limit"
    return None


def _mode_problem(mode: str) -> str | None:
    if mode in _EIGHT_BIT or mode in _ALPHA or mode in _SIXTEEN or mode in ("I", "F"):
        return None
    return f"pixel mode {mode!r} is not supported (8-bit, 16-bit, 32-bit integer or float images)"


def _channels(im) -> tuple[np.ndarray, np.ndarray | None]:
    """(H x W x C float32 in 0..1 with C = 1 or 3, alpha H x W in 0..1 or None),
    from a loaded Pillow image of any supported mode."""
    mode = im.mode
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
        mode = im.mode
    elif mode in ("La", "RGBa"):  # premultiplied: undo it the way Pillow does
        im = im.convert("LA" if mode == "La" else "RGBA")
        mode = im.mode
    if mode in _ALPHA:
        a = np.asarray(im, dtype=np.float32) / np.float32(255.0)
        return a[..., :-1], a[..., -1]
    if mode in _SIXTEEN:
        a = np.asarray(im).astype(np.float32) / np.float32(65535.0)
        return a[..., None], None
    if mode == "I":
        a = np.asarray(im)
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise ImageRefused(
                f"32-bit integer pixels (mode 'I') from {lo} to {hi}: no known range "
                "(16-bit samples are 0..65535); save it as 8- or 16-bit"
            )
        return (a.astype(np.float32) / np.float32(65535.0))[..., None], None
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        if not np.isfinite(a).all():
            raise ImageRefused("float pixels (mode 'F') include NaN or infinity")
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise ImageRefused(
                f"float pixels (mode 'F') from {lo:g} to {hi:g}: only 0..1 or 0..255 are "
                "understood; rescale it first"
            )
        return (a if hi <= 1 else a / np.float32(255.0))[..., None], None
    if mode != "L":
        im = im.convert("RGB")  # 8-bit colour modes: Pillow's own conversions
    a = np.asarray(im, dtype=np.float32) / np.float32(255.0)
    return (a[..., None] if a.ndim == 2 else a), None


def _to_channels(a: np.ndarray, c: int) -> np.ndarray:
    if a.shape[-1] == c:
        return a
    if c == 1:  # ITU-R 601-2 luma, as Pillow's RGB -> L
        return (a @ np.asarray([0.299, 0.587, 0.114], np.float32))[..., None]
    return np.repeat(a, 3, axis=-1)


def image_problem(im, size=None, crop_fraction: float = 1.0) -> str | None:
    """Why an opened Pillow image is refused (None if it can be read): its
    geometry (``geometry_problem``), its mode, or (after decoding) its values."""
    w, h = im.size
    problem = geometry_problem(w, h, size, crop_fraction) or _mode_problem(im.mode)
    if problem is None and im.mode in ("I", "F"):
        try:
            _channels(im)
        except ImageRefused as e:
            return str(e)
    return problem


def read_image(path: str | os.PathLike, size, crop_fraction: float = 1.0) -> np.ndarray:
    """An image file as C x H x W float32 in 0..1 (not normalised) for ``size``
    = (C, H, W): resized (bilinear) so that the target covers ``crop_fraction``
    of its shorter side, then centre-cropped. 8-bit images take Pillow's 8-bit
    path (as they always did); others are converted by value range (module
    doc). Raises ImageRefused naming what is wrong."""
    from PIL import Image

    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    c, h, w = size
    with Image.open(path) as im:
        w0, h0 = im.size
        problem = geometry_problem(w0, h0, size, crop_fraction) or _mode_problem(im.mode)
        if problem:
            raise ImageRefused(problem)
        nw, nh = _resized(w0, h0, size, crop_fraction)
        left, top = (nw - w) // 2, (nh - h) // 2
        box = (left, top, left + w, top + h)
        if im.mode in ("1", "L", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV") or (
            im.mode == "P" and "transparency" not in im.info
        ):
            im = im.convert("RGB" if c == 3 else "L")
            im = im.resize((nw, nh), Image.Resampling.BILINEAR).crop(box)
            arr = np.asarray(im, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
            arr = arr[..., None] if arr.ndim == 2 else arr
        else:
            im.load()
            a, alpha = _channels(im)
            if alpha is not None:
                a = a * alpha[..., None]
            a = _to_channels(a, c)
            planes = []
            for k in range(c):  # Pillow resizes float ('F') planes the same way
                p = Image.fromarray(np.ascontiguousarray(a[..., k]), "F")
                planes.append(np.asarray(p.resize((nw, nh), Image.Resampling.BILINEAR).crop(box)))
            arr = np.clip(np.stack(planes, axis=-1), 0.0, 1.0)
    return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)
