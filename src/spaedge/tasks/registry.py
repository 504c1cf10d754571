"""Task names -> Task objects.

digits                    scikit-learn digits (embedded default)
fashion_mnist             Fashion-MNIST, 10 classes
fashion_mnist_base        classes 0..5 (pretraining the built-in base only)
fashion_mnist_new         classes 6..9, labels 0..3 (never seen by the base)
flowers                   Oxford Flowers-102 (needs --data-dir)
cifar10                   CIFAR-10 binary version (needs --data-dir)
imagefolder:PATH          one subdirectory per class
NAME:CLASSES              class subset of a named task, e.g. fashion_mnist:6,7,8,9
                          (ids, ranges like 6-9 or label names; renumbered
                          0..k-1 in the order given)
"""

from __future__ import annotations

import re
from typing import Callable, Optional

from .cifar import make_cifar10
from .core import InputSize, Task
from .digits import make_digits
from .fashion import make_fashion_mnist
from .flowers import make_flowers
from .imagefolder import make_imagefolder

Factory = Callable[[Optional[str], InputSize], Task]

DEFAULT_TASK = "digits"


def _fashion_base(data_dir, input_size):
    return make_fashion_mnist(data_dir, input_size).with_classes(range(6), "fashion_mnist_base")


def _fashion_new(data_dir, input_size):
    return make_fashion_mnist(data_dir, input_size).with_classes(range(6, 10), "fashion_mnist_new")


_REGISTRY: dict[str, tuple[Factory, str]] = {
    "digits": (
        make_digits,
        "scikit-learn 8x8 digits upsampled to the base input (embedded default)",
    ),
    "fashion_mnist": (make_fashion_mnist, "Fashion-MNIST, 10 classes"),
    "fashion_mnist_base": (
        _fashion_base,
        "Fashion-MNIST classes 0-5 (pretraining the built-in base only)",
    ),
    "fashion_mnist_new": (
        _fashion_new,
        "Fashion-MNIST classes 6-9 relabelled 0-3 (unseen by the base)",
    ),
    "flowers": (
        make_flowers,
        "Oxford Flowers-102, official split (--data-dir or $SPAEDGE_DATA/flowers102)",
    ),
    "cifar10": (make_cifar10, "CIFAR-10 binary version (--data-dir or $SPAEDGE_DATA/cifar10)"),
}

_PATTERNS = {
    "imagefolder:PATH": "images in PATH/<class>/; or PATH/train, PATH/val, PATH/test",
    "NAME:CLASSES": "class subset of a task, e.g. fashion_mnist:6,7,8,9 or fashion_mnist:6-9",
}


def register_task(name: str, factory: Factory, description: str = "") -> None:
    """Add a task: `factory(data_dir, input_size) -> Task`."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"task names use letters, digits, _ . - only; got {name!r}")
    if name == "imagefolder":
        raise ValueError("'imagefolder' is reserved")
    _REGISTRY[name] = (factory, description)


def list_tasks() -> list[str]:
    """Names accepted by `get_task` as they are (plus imagefolder:PATH and NAME:CLASSES)."""
    return sorted(_REGISTRY)


def task_descriptions() -> dict[str, str]:
    """{name or pattern: one-line description}, for help texts."""
    out = {n: d for n, (_, d) in sorted(_REGISTRY.items())}
    out.update(_PATTERNS)
    return out


def _unknown(name: str) -> str:
    return (
        f"unknown task {name!r}; known tasks: {', '.join(list_tasks())}, "
        "imagefolder:PATH, and NAME:CLASSES class subsets (e.g. fashion_mnist:6,7,8,9)"
    )


class UnknownTask(KeyError, ValueError):
    """Unknown task name; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


def _parse_classes(spec: str, task: Task) -> list[int]:
    out: list[int] = []
    lower = {l.lower(): i for i, l in enumerate(task.labels)}
    for tok in (t.strip() for t in spec.split(",")):
        if not tok:
            raise ValueError(f"empty class in subset {spec!r}")
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", tok)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if b < a:
                raise ValueError(f"empty class range {tok!r}")
            out += range(a, b + 1)
        elif tok.isdigit():
            out.append(int(tok))
        elif tok.lower() in lower:
            out.append(lower[tok.lower()])
        else:
            raise ValueError(
                f"{task.name}: {tok!r} is neither a class id (0..{task.num_classes - 1}) "
                f"nor a label ({', '.join(task.labels[:12])}"
                f"{', ...' if task.num_classes > 12 else ''})"
            )
    return out


def get_task(name: str, data_dir: str | None = None, input_size: InputSize = None) -> Task:
    """Build a task by name.

    data_dir: where the dataset lives (default: $SPAEDGE_DATA/<dataset>, and for
    Fashion-MNIST /usr/share/datasets/fashion-mnist). input_size: None for the
    task's default, an int (square), (H, W) or (C, H, W).
    Raises UnknownTask (a KeyError) for unknown names and DatasetNotFound (a
    FileNotFoundError) when the data is missing.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnknownTask(_unknown(str(name)))
    name = name.strip()
    if name in _REGISTRY:
        return _REGISTRY[name][0](data_dir, input_size)
    head, sep, rest = name.partition(":")
    if head == "imagefolder":
        path = rest if sep and rest else data_dir
        if not path:
            raise ValueError("imagefolder needs a path: imagefolder:PATH (or --data-dir PATH)")
        return make_imagefolder(path, input_size, name=f"imagefolder:{path}")
    if sep and head in _REGISTRY:
        base = _REGISTRY[head][0](data_dir, input_size)
        classes = _parse_classes(rest, base)
        return base.with_classes(classes, name=f"{head}:{','.join(map(str, classes))}")
    raise UnknownTask(_unknown(name))
