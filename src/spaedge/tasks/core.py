"""Task, its datasets and the helpers every loader shares.

A loader produces, per split, a *source* (raw images plus their class ids in
the loader's own numbering) and the indices of the source that belong to the
split. `Task` turns that into normalised (image, label) datasets, optionally
restricted to a subset of classes (renumbered 0..k-1 in the order given).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from typing import Callable, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from spaedge.download import data_home
from spaedge.images import read_image

from .image import CROP_FRACTION

__all__ = [
    "DatasetError",
    "DatasetNotFound",
    "Task",
    "TaskDataset",
    "SPLITS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CROP_FRACTION",
    "load_image",
    "parse_input_size",
    "stratified_split",
]

SPLITS = ("train", "val", "test")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Grayscale input for an RGB-normalised task: the channel average.
IMAGENET_GRAY_MEAN = (0.449,)
IMAGENET_GRAY_STD = (0.226,)


# ITU-R 601-2 luma, the weights PIL uses for RGB -> L.
_LUMA = (0.299, 0.587, 0.114)

Size = tuple[int, int, int]
InputSize = Union[None, int, Sequence[int]]


class DatasetError(ValueError):
    """A task's data is there but cannot be used; the message names the file."""


class DatasetNotFound(FileNotFoundError):
    """A task's data is not where we looked. The message says where and how to fix it."""

    def __init__(self, message: str, searched: Sequence[str] = ()):
        super().__init__(message)
        self.searched = [os.fspath(p) for p in searched]

    def __str__(self) -> str:  # FileNotFoundError would otherwise format errno style
        return self.args[0]


def parse_input_size(input_size: InputSize, default: Size) -> Size:
    """Normalise `input_size` to (C, H, W).

    None -> default; an int n -> (default C, n, n); (H, W) -> (default C, H, W);
    (C, H, W) as given. C must be 1 or 3 (gray images are repeated to 3
    channels, colour images are converted to luma for 1 channel).
    """
    if input_size is None:
        size = tuple(default)
    elif isinstance(input_size, (int, np.integer)):
        size = (default[0], int(input_size), int(input_size))
    else:
        dims = tuple(input_size)
        if len(dims) == 2:
            size = (default[0],) + dims
        elif len(dims) == 3:
            size = dims
        else:
            raise ValueError(f"input_size must be an int, (H, W) or (C, H, W); got {input_size!r}")
    try:
        size = tuple(int(d) for d in size)
    except (TypeError, ValueError):
        raise ValueError(f"input_size must hold integers; got {input_size!r}") from None
    if size[0] not in (1, 3):
        raise ValueError(f"input_size channels must be 1 or 3; got {size[0]} in {size}")
    if size[1] < 1 or size[2] < 1:
        raise ValueError(f"input_size height and width must be positive; got {size}")
    return size  # type: ignore[return-value]


def _stable_key(seed: str, key: str) -> int:
    # Hash-based order instead of an RNG: the same on every numpy/python
    # version, and adding one file to a folder moves only its neighbours.
    return int.from_bytes(
        hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest(), "little"
    )


def stratified_split(
    targets: Sequence[int],
    fractions: Sequence[float],
    seed: str,
    keys: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """Deterministic stratified split of `range(len(targets))`.

    Within each class the members are ordered by a hash of (seed, key) (key
    defaults to the index) and cut by `fractions` (rounded per class; the
    first part takes the remainder). Returns one sorted index array per
    fraction; together they partition all indices.
    """
    targets = np.asarray(targets, dtype=np.int64)
    fractions = [float(f) for f in fractions]
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be >= 0 and sum to 1; got {fractions}")
    if keys is None:
        keys = [str(i) for i in range(len(targets))]
    elif len(keys) != len(targets):
        raise ValueError("keys and targets differ in length")
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for c in np.unique(targets):
        members = np.flatnonzero(targets == c)
        order = sorted(members.tolist(), key=lambda i: (_stable_key(seed, keys[i]), keys[i]))
        n = len(order)
        counts = [int(np.floor(n * f + 0.5)) for f in fractions[1:]]
        while sum(counts) > n:  # rounding overshoot on tiny classes
            counts[counts.index(max(counts))] -= 1
        counts.insert(0, n - sum(counts))
        start = 0
        for p, k in enumerate(counts):
            parts[p].append(np.asarray(order[start : start + k], dtype=np.int64))
            start += k
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]


# --------------------------------------------------------------------------
# Sources: raw images of one loader, converted to float [0, 1] at input size.
# --------------------------------------------------------------------------


def _convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """x: N x C0 x H x W float. Gray -> repeated RGB, RGB -> luma."""
    c0 = x.shape[1]
    if c0 == channels:
        return x
    if c0 == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    if c0 == 3 and channels == 1:
        w = torch.tensor(_LUMA, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * w).sum(dim=1, keepdim=True)
    raise ValueError(f"cannot convert {c0}-channel images to {channels} channels")


class ArraySource:
    """Images held in memory as N x C0 x H0 x W0 integers (divided by `scale`).

    Converted on access to float32 [0, 1] at the target size: channel
    conversion, then bilinear interpolation (antialiased when shrinking).
    Small sets are converted once and cached.
    """

    CACHE_BYTES = 64 << 20

    def __init__(self, images: np.ndarray, targets: np.ndarray, size: Size, scale: float = 255.0):
        if images.ndim != 4:
            raise ValueError(f"images must be N x C x H x W, got shape {images.shape}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)
        self.size = tuple(size)
        self.scale = float(scale)
        self._cache: torch.Tensor | None = None
        if len(images) * int(np.prod(self.size)) * 4 <= self.CACHE_BYTES:
            self._cache = self._convert(np.arange(len(images)))

    def __len__(self) -> int:
        return len(self.images)

    def _convert(self, indices: np.ndarray) -> torch.Tensor:
        c, h, w = self.size
        x = torch.from_numpy(np.ascontiguousarray(self.images[indices])).to(torch.float32)
        x = x / self.scale
        x = _convert_channels(x, c)
        h0, w0 = x.shape[-2:]
        if (h0, w0) != (h, w) and len(x):
            shrink = h < h0 or w < w0
            x = F.interpolate(
                x, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink
            )
        return x

    def load(self, indices: np.ndarray) -> torch.Tensor:
        if self._cache is not None:
            return self._cache[torch.from_numpy(np.asarray(indices, dtype=np.int64))]
        return self._convert(np.asarray(indices, dtype=np.int64))


def load_image(path: str, size: Size, crop_fraction: float = CROP_FRACTION) -> torch.Tensor:
    """Decode an image file to C x H x W float [0, 1] (not normalised).

    Resized (bilinear) so that the target, relative to its aspect, covers
    `crop_fraction` of the shorter side, then centre-cropped to H x W. Pixel
    modes are converted by value range (16-bit, float, alpha: spaedge.images),
    and an unsupported mode, too many pixels or an aspect ratio beyond
    `spaedge.images.MAX_ASPECT` raise `spaedge.images.ImageRefused`. Use
    `Task.load_image` to get exactly the preprocessing of a task's data.
    """
    return torch.from_numpy(read_image(path, size, crop_fraction))


class ImageFileSource:
    """Images decoded lazily from files with PIL (see `load_image`)."""

    def __init__(self, paths: Sequence[str], targets: Sequence[int], size: Size):
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} files but {len(targets)} labels")
        self.paths = [os.fspath(p) for p in paths]
        self.targets = np.asarray(targets, dtype=np.int64)
        self.size = tuple(size)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, indices: np.ndarray) -> torch.Tensor:
        if len(indices) == 0:
            return torch.zeros((0,) + self.size)
        return torch.stack([self._load(self.paths[int(i)]) for i in indices])

    def _load(self, path: str) -> torch.Tensor:
        try:
            return load_image(path, self.size)
        except (
            OSError,
            ValueError,
            SyntaxError,
            EOFError,
        ) as e:  # changed or removed since it was checked
            raise DatasetError(
                f"{path}: cannot read the image any more ({e}); the data changed during the run: "
                "fix or remove the file and run again (the run resumes from its checkpoint)"
            ) from None


# --------------------------------------------------------------------------
# Dataset and Task
# --------------------------------------------------------------------------


class TaskDataset(Dataset):
    """One split of a task: (float32 C x H x W normalised, int64 label) pairs.

    `targets` holds every item's label (a LongTensor) without decoding images;
    `batch(indices)` loads many items at once (faster for in-memory sources).
    With `flip=True` each item is mirrored left-right with probability 1/2
    using torch's global RNG (DataLoader workers seed it per worker).
    """

    def __init__(
        self,
        source,
        indices: np.ndarray,
        label_map: np.ndarray,
        mean: Sequence[float],
        std: Sequence[float],
        flip: bool = False,
        name: str = "",
    ):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.targets = torch.from_numpy(label_map[source.targets[self.indices]].astype(np.int64))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.flip = bool(flip)
        self.name = name

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return f"TaskDataset({self.name!r}, n={len(self)}, flip={self.flip})"

    def _positions(self, index) -> np.ndarray:
        pos = np.asarray(index, dtype=np.int64).reshape(-1)
        n = len(self.indices)
        if pos.size and (pos.min() < -n or pos.max() >= n):
            raise IndexError(f"index out of range for a split of {n} items")
        return np.where(pos < 0, pos + n, pos)

    def flips(self, n: int) -> torch.Tensor | None:
        """Which of ``n`` items to mirror (torch's global RNG), or None without flipping."""
        return torch.rand(n) < 0.5 if self.flip and n else None

    def batch(
        self, index: Iterable[int], flips: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``index`` as one batch; ``flips`` (from ``flips()``, drawn by the
        caller when a loader process decodes) says which to mirror."""
        pos = self._positions(list(index))
        x = self.source.load(self.indices[pos])
        mask = flips if flips is not None else self.flips(len(pos))
        if mask is not None:
            x = torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)
        x = (x - self.mean) / self.std
        return x.to(torch.float32).contiguous(), self.targets[torch.from_numpy(pos)]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batch([int(index)])
        return x[0], y[0]


# A loader returns {split: (source, indices into the source)}.
SplitTable = dict[str, tuple[object, np.ndarray]]


class _LazySplits:
    """Runs a loader once, on first use, and keeps the result."""

    def __init__(self, loader: Callable[[], SplitTable]):
        self._loader = loader
        self._table: SplitTable | None = None

    def get(self) -> SplitTable:
        if self._table is None:
            table = self._loader()
            missing = [s for s in SPLITS if s not in table]
            if missing:
                raise RuntimeError(f"task loader returned no {missing} split")
            self._table = table
        return self._table


class Task:
    """A classification task: labels, input size, normalisation and data splits.

    Attributes: name, labels (list[str]), input_size (C, H, W), mean and std
    (per-channel floats), num_classes, description, in_memory (whether
    `arrays()` of every split is cheap).
    """

    def __init__(
        self,
        name: str,
        labels: Sequence[str],
        input_size: Size,
        mean: Sequence[float],
        std: Sequence[float],
        loader: Callable[[], SplitTable] | _LazySplits,
        *,
        description: str = "",
        flip_ok: bool = True,
        in_memory: bool = True,
        crop_fraction: float = CROP_FRACTION,
        classes: Sequence[int] | None = None,
        source_classes: int | None = None,
        sources: Sequence[tuple[str, str]] = (),
    ):
        self.name = name
        # Where the data came from, for the run's identity (spaedge.tasks.identity):
        # ("file", path) digested by content, ("tree", dir) by its file list.
        self.sources = tuple((str(k), os.fspath(p)) for k, p in sources)
        self.labels = [str(l) for l in labels]
        self.input_size: Size = tuple(int(d) for d in input_size)  # type: ignore[assignment]
        c = self.input_size[0]
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"{name}: mean/std need {c} values, got {self.mean} / {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"{name}: std must be positive, got {self.std}")
        self.description = description
        # Things a person should know about the data (files skipped, say); shown by the pipeline.
        self.notes: list[str] = []
        self.flip_ok = flip_ok
        self.in_memory = in_memory
        self.crop_fraction = float(crop_fraction)
        self._splits = loader if isinstance(loader, _LazySplits) else _LazySplits(loader)
        # Classes of the loader's numbering this task keeps, in label order.
        n_src = len(self.labels) if source_classes is None else int(source_classes)
        self._source_classes = n_src
        self._classes = np.arange(n_src) if classes is None else np.asarray(classes, dtype=np.int64)
        if len(self._classes) != len(self.labels):
            raise ValueError(f"{name}: {len(self.labels)} labels for {len(self._classes)} classes")
        self._label_map = np.full(n_src, -1, dtype=np.int64)
        self._label_map[self._classes] = np.arange(len(self._classes))

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"Task({self.name!r}, classes={self.num_classes}, input_size={self.input_size}, "
            f"mean={self.mean}, std={self.std})"
        )

    def input_spec(self) -> dict:
        """The task bundle's `input` field (docs/format.md)."""
        c, h, w = self.input_size
        return {
            "channels": c,
            "height": h,
            "width": w,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def with_classes(self, classes: Sequence[int], name: str | None = None) -> Task:
        """The same data restricted to `classes` (ids in this task's label
        numbering), renumbered 0..k-1 in the order given."""
        classes = [int(c) for c in classes]
        if not classes:
            raise ValueError(f"{self.name}: empty class subset")
        if len(set(classes)) != len(classes):
            raise ValueError(f"{self.name}: repeated class in subset {classes}")
        bad = [c for c in classes if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(f"{self.name}: classes {bad} out of range 0..{self.num_classes - 1}")
        if name is None:
            name = f"{self.name}:{','.join(map(str, classes))}"
        sub = Task(
            name,
            [self.labels[c] for c in classes],
            self.input_size,
            self.mean,
            self.std,
            self._splits,
            description=self.description,
            flip_ok=self.flip_ok,
            in_memory=self.in_memory,
            crop_fraction=self.crop_fraction,
            classes=self._classes[classes],
            source_classes=self._source_classes,
            sources=self.sources,
        )
        sub.notes = list(self.notes)
        return sub

    def load_image(self, path: str) -> torch.Tensor:
        """An image file preprocessed like this task's data: C x H x W, normalised.

        Photo tasks centre-crop `crop_fraction` (0.875) of the shorter side;
        tasks whose data is whole small images (digits, Fashion-MNIST,
        CIFAR-10) use 1.0, i.e. only the aspect ratio is cropped.
        """
        x = load_image(path, self.input_size, self.crop_fraction)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return (x - mean) / std

    def split(self, name: str, augment: bool = False) -> TaskDataset:
        """Dataset of split `name` ("train", "val" or "test").

        `augment=True` adds a random horizontal flip for tasks where mirroring
        keeps the class (photos; not digits or clothes); it is off by default
        so that every run sees the same data.
        """
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        source, indices = self._splits.get()[name]
        keep = self._label_map[source.targets[indices]] >= 0
        return TaskDataset(
            source,
            indices[keep],
            self._label_map,
            self.mean,
            self.std,
            flip=augment and self.flip_ok,
            name=f"{self.name}/{name}",
        )

    def arrays(self, split: str, max_bytes: int = 2 << 30) -> tuple[torch.Tensor, torch.Tensor]:
        """All of `split` in memory: X float32 N x C x H x W (normalised), y int64.

        Lazy (file-backed) tasks are decoded image by image; a split larger
        than `max_bytes` raises ValueError (use `split()` with a DataLoader).
        """
        ds = self.split(split)
        n = len(ds)
        c, h, w = self.input_size
        need = n * c * h * w * 4
        if need > max_bytes:
            raise ValueError(
                f"{self.name}/{split}: {n} images of {c}x{h}x{w} need {need / 2**30:.1f} GiB "
                f"as one array (limit {max_bytes / 2**30:.1f} GiB). Iterate "
                f"task.split({split!r}) with a torch DataLoader, or pass a larger max_bytes."
            )
        X = torch.empty((n, c, h, w), dtype=torch.float32)
        chunk = 4096 if self.in_memory else 64
        for start in range(0, n, chunk):
            X[start : start + chunk] = ds.batch(range(start, min(n, start + chunk)))[0]
        return X, ds.targets.clone()


def search_dirs(
    data_dir: str | os.PathLike | None, names: Sequence[str], defaults: Sequence[str] = ()
) -> list[str]:
    """Directories to look for a dataset in, in order.

    An explicit `data_dir` is searched alone (it and `data_dir/<name>`), so
    a typo never silently falls back to another copy. Otherwise
    `<data home>/<name>` for each name (`$SPAEDGE_DATA`, default
    `$SPAEDGE_HOME/data`: where named datasets are downloaded), then the
    system `defaults`.
    """
    out: list[str] = []
    if data_dir is not None:
        d = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
        out.append(d)
        out += [os.path.join(d, n) for n in names]
    else:
        root = os.path.abspath(os.path.expanduser(os.fspath(data_home())))
        out += [os.path.join(root, n) for n in names]
        out += list(defaults)
    seen, uniq = set(), []
    for d in out:
        if d not in seen:
            seen.add(d)
            uniq.append(d)
    return uniq
