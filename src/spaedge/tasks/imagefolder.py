"""`imagefolder:PATH`: your own images, one subdirectory per class.

    PATH/<class>/**/*.jpg|jpeg|png|bmp|gif|webp

Class names are the sorted subdirectory names that contain images. Every
image is decoded once when the folder is read: files that are not images,
are truncated, have more than ``MAX_PIXELS`` pixels, an aspect ratio beyond
``MAX_ASPECT``:1 or a pixel mode with no known value range (spaedge.images)
are skipped, counted
and named (``task.notes``), so training never stops on one. Directory links
are followed, but never in a loop, and a file reached twice (through links)
is listed once, in one split. Without
split folders, each class is split 70/15/15 into train/val/test by a fixed
hash of the file's relative path (adding a file moves at most its
neighbours). If PATH has train/ and test/ (and optionally val/) subfolders
with class subdirectories, those are used; a missing val/ is carved as 15% of
train. Images are decoded lazily as for Flowers-102 (shorter side to
input/0.875, centre crop, ImageNet mean/std); a folder of RGB images is 3 x 224 x 224
by default, a folder of grayscale ones 1 x 28 x 28 (the sizes of the bases they
suit: an ImageNet ResNet, the built-in tiny base).
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from spaedge.images import geometry_problem, image_problem

from .core import (
    IMAGENET_GRAY_MEAN,
    IMAGENET_GRAY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetNotFound,
    ImageFileSource,
    Task,
    parse_input_size,
    stratified_split,
)
from .image import EXTENSIONS

DEFAULT_SIZE = (3, 224, 224)  # an RGB folder's own size (photos)
GRAY_SIZE = (1, 28, 28)  # a grayscale folder's
FRACTIONS = (0.70, 0.15, 0.15)
VAL_FRACTION = 0.15
SEED = "spaedge/imagefolder/v1"
SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
SPLIT_NAMES = {n for names in SPLIT_DIRS.values() for n in names}


# Images above MAX_PIXELS pixels, longer than MAX_ASPECT times their width (or
# the reverse), or in a pixel mode that has no known value range are skipped
# (spaedge.images).


def _image_problem(path: str) -> str | None:
    """Why ``path`` cannot be used as an image (None if it decodes), read the way
    training will read it; JPEGs decode at reduced scale, which still reads
    every byte, so a truncated file is found."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            problem = geometry_problem(w, h)
            if problem:
                return problem
            if im.format == "JPEG":
                im.draft(im.mode, (max(1, w // 8), max(1, h // 8)))
            im.load()
            return image_problem(im)
    except Image.DecompressionBombError:
        return "too many pixels (above PIL's decompression-bomb limit)"
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # PIL's ways of saying "not an image"
        return str(e) or type(e).__name__
    return None


class _Scan:
    """What a scan keeps across class folders: files already seen (by their
    real path, so links never list a file twice, in one split or two) and
    the files skipped, with why."""

    def __init__(self):
        self.seen: set[str] = set()
        self.skipped: list[tuple[str, str]] = []
        self.empty: list[str] = []  # class folders left without a usable image


def _scan_classes(root: str, scan: _Scan) -> dict[str, list[str]]:
    """{class name: sorted relative paths (to root) of its images}, classes with images only.

    Directory links are followed once each (a link to a parent or to itself
    is not a loop); every image is decoded once here, and those that fail or
    are too large are skipped (``scan.skipped``) rather than stopping training."""
    out: dict[str, list[str]] = {}
    candidates: list[tuple[str, str]] = []
    folders = []
    for name in sorted(os.listdir(root)):
        cdir = os.path.join(root, name)
        if name.startswith(".") or not os.path.isdir(cdir):
            continue
        folders.append(name)
        visited = set()
        for dirpath, dirnames, filenames in os.walk(cdir, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in visited:  # reached again through a link: a loop or a second path
                dirnames[:] = []
                continue
            visited.add(real)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if f.startswith(".") or not f.lower().endswith(EXTENSIONS):
                    continue
                path = os.path.join(dirpath, f)
                real_file = os.path.realpath(path)
                if real_file in scan.seen or not os.path.isfile(real_file):
                    continue
                scan.seen.add(real_file)
                candidates.append((name, path))
    with ThreadPoolExecutor(
        max(1, min(8, os.cpu_count() or 1))
    ) as pool:  # PIL decodes without the GIL
        problems = list(pool.map(lambda c: _image_problem(c[1]), candidates))
    for (name, path), problem in zip(candidates, problems):
        if problem is not None:
            scan.skipped.append((os.path.relpath(path, root), problem))
            continue
        out.setdefault(name, []).append(os.path.relpath(path, root))
    scan.empty += [os.path.join(root, n) for n in folders if n not in out and n not in SPLIT_NAMES]
    return {name: sorted(files) for name, files in out.items()}


def _split_dir(root: str, split: str):
    for name in SPLIT_DIRS[split]:
        d = os.path.join(root, name)
        if os.path.isdir(d):
            return d
    return None


def _not_found(root: str, why: str) -> DatasetNotFound:
    return DatasetNotFound(
        f"image folder {root}: {why}. Expected one subdirectory per class holding "
        f"{'/'.join(e[1:] for e in EXTENSIONS)} images (PATH/<class>/<image>), or "
        "train/ and test/ (and optionally val/) subfolders laid out that way. "
        "Use imagefolder:PATH with an existing directory.",
        [root],
    )


def _two_classes(root: str, classes: list[str]) -> None:
    if len(classes) < 2:
        raise ValueError(
            f"image folder {root}: only one class ({classes[0]!r}) has images: there is "
            "nothing to classify; add a subdirectory of images for each other class"
        )


def scan_imagefolder(
    root: str, scan: _Scan | None = None
) -> tuple[list[str], dict[str, tuple[list[str], np.ndarray, list[str]]]]:
    """Returns (class names, {split: (absolute paths, class ids, hash keys)} or a single 'all')."""
    scan = scan or _Scan()
    if not os.path.isdir(root):
        raise _not_found(root, "no such directory")
    train_dir, test_dir = _split_dir(root, "train"), _split_dir(root, "test")
    if train_dir and test_dir:
        scans = {"train": _scan_classes(train_dir, scan), "test": _scan_classes(test_dir, scan)}
        val_dir = _split_dir(root, "val")
        if val_dir:
            scans["val"] = _scan_classes(val_dir, scan)
        classes = sorted(scans["train"])
        if not classes:
            raise _not_found(root, f"no class subdirectories with images in {train_dir}")
        index = {c: i for i, c in enumerate(classes)}
        out = {}
        for split, scan in scans.items():
            extra = sorted(set(scan) - set(index))
            if extra:
                raise ValueError(
                    f"image folder {root}: classes {extra} in {split}/ have no "
                    f"training images in {os.path.basename(train_dir)}/"
                )
            base = {"train": train_dir, "test": test_dir, "val": val_dir}[split]
            paths, ids, keys = [], [], []
            for c in sorted(scan):
                for rel in scan[c]:
                    paths.append(os.path.join(base, rel))
                    ids.append(index[c])
                    keys.append(rel)
            out[split] = (paths, np.asarray(ids, dtype=np.int64), keys)
        _two_classes(root, classes)
        return classes, out
    found = _scan_classes(root, scan)
    if not found:
        raise _not_found(root, "no class subdirectories with images")
    classes = sorted(found)
    _two_classes(root, classes)
    paths, ids, keys = [], [], []
    for i, c in enumerate(classes):
        for rel in found[c]:
            paths.append(os.path.join(root, rel))
            ids.append(i)
            keys.append(rel)
    return classes, {"all": (paths, np.asarray(ids, dtype=np.int64), keys)}


def _grayscale(paths: list[str], n: int = 8) -> bool:
    """Whether the folder's images are grayscale (the first few, read for their
    mode only): a gray folder's own size is 1 x 28 x 28, an RGB one's 3 x 224 x 224."""
    from PIL import Image

    modes = []
    for p in paths[:n]:
        try:
            with Image.open(p) as im:
                modes.append(im.mode)
        except (OSError, ValueError):
            continue
    return bool(modes) and all(m in ("1", "L", "LA", "I", "I;16", "F") for m in modes)


@functools.lru_cache(maxsize=8)
def _scanned(root: str):
    """A folder scanned once per process (every image is decoded in a scan;
    a task is built several times at different sizes)."""
    scan = _Scan()
    classes, parts = scan_imagefolder(root, scan)
    return classes, parts, scan


def make_imagefolder(path, input_size=None, name=None) -> Task:
    root = os.path.abspath(os.path.expanduser(os.fspath(path)))
    classes, parts, scan = _scanned(root)
    first = next(iter(parts.values()))[0]
    size = parse_input_size(input_size, GRAY_SIZE if _grayscale(first) else DEFAULT_SIZE)

    def load():
        if "all" in parts:
            paths, ids, keys = parts["all"]
            src = ImageFileSource(paths, ids, size)
            train, val, test = stratified_split(ids, FRACTIONS, SEED, keys)
            return {"train": (src, train), "val": (src, val), "test": (src, test)}
        table = {}
        for split, (paths, ids, _) in parts.items():
            table[split] = (ImageFileSource(paths, ids, size), np.arange(len(paths)))
        if "val" not in table:
            paths, ids, keys = parts["train"]
            train, val = stratified_split(ids, (1 - VAL_FRACTION, VAL_FRACTION), SEED, keys)
            src = table["train"][0]
            table["train"], table["val"] = (src, train), (src, val)
        return table

    mean, std = (
        (IMAGENET_MEAN, IMAGENET_STD) if size[0] == 3 else (IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD)
    )
    task = Task(
        name or f"imagefolder:{path}",
        classes,
        size,
        mean,
        std,
        load,
        description=f"class-per-subdirectory images in {root}",
        flip_ok=True,
        in_memory=False,
        sources=[("tree", root)],
    )
    if scan.empty:
        shown = ", ".join(scan.empty[:3])
        task.notes.append(
            f"{root}: {len(scan.empty)} class folder{'s' if len(scan.empty) > 1 else ''} without "
            f"a usable image left out (not a class): {shown}{', ...' if len(scan.empty) > 3 else ''}"
        )
    if scan.skipped:
        shown = "; ".join(f"{p} ({why})" for p, why in scan.skipped[:3])
        task.notes.append(
            f"{root}: skipped {len(scan.skipped)} file{'s' if len(scan.skipped) > 1 else ''} that "
            f"are not usable images: {shown}{'; ...' if len(scan.skipped) > 3 else ''}"
        )
    return task
