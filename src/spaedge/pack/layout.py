"""Names on disk: a bundle directory holds ``base.safetensors`` and one
``<task>.safetensors`` per task, and for int8 (docs/int8.md)
``base.int8.safetensors`` and ``<task>.int8.safetensors`` beside them; run
directories and library files are named after their task the same way. No
torch: the device side uses it too."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

__all__ = [
    "BASE_BUNDLE",
    "BUNDLE_PRECISIONS",
    "int8_name",
    "safe_name",
    "task_name",
    "task_bundle_name",
    "base_bundle_path",
    "task_bundle_path",
    "run_dir_path",
]

BASE_BUNDLE = "base.safetensors"
#: The precisions a bundle directory holds pairs of (fp32: the plain names).
BUNDLE_PRECISIONS = ("fp32", "int8")
_SUFFIX = ".safetensors"


def safe_name(text: str) -> str:
    """A file name made of letters, digits, ``_ . -`` from any text (never a path,
    never hidden, never ``.`` or ``..``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_").lstrip(".") or "task"


def task_name(task: str) -> str:
    """The name a task's files carry: the task name itself when it is a safe file
    name (``digits``), else its safe form and a short hash of the exact name, so
    distinct tasks (``imagefolder:imgs/good``, ``imagefolder:imgs_good``) never
    share a run directory or a bundle file."""
    safe = safe_name(task)
    if safe == task:
        return safe
    return f"{safe}-{hashlib.sha256(task.encode()).hexdigest()[:8]}"


def _check_precision(precision: str) -> None:
    if precision not in BUNDLE_PRECISIONS:
        raise ValueError(f"precision {precision!r}: use one of {', '.join(BUNDLE_PRECISIONS)}")


def int8_name(fp32_name: str) -> str:
    """The int8 bundle's file name beside an fp32 one: ``X.safetensors`` ->
    ``X.int8.safetensors``."""
    return f"{fp32_name.removesuffix(_SUFFIX)}.int8{_SUFFIX}"


def task_bundle_name(task: str, precision: str = "fp32") -> str:
    """The task bundle's file name in a bundle directory."""
    _check_precision(precision)
    name = f"{task_name(task)}{_SUFFIX}"
    return int8_name(name) if precision == "int8" else name


def base_bundle_path(bundles: str | os.PathLike, precision: str = "fp32") -> Path:
    _check_precision(precision)
    return Path(bundles) / (int8_name(BASE_BUNDLE) if precision == "int8" else BASE_BUNDLE)


def task_bundle_path(bundles: str | os.PathLike, task: str, precision: str = "fp32") -> Path:
    return Path(bundles) / task_bundle_name(task, precision)


def run_dir_path(runs: str | os.PathLike, task: str) -> Path:
    """A task's run directory under a directory of runs."""
    return Path(runs) / task_name(task)
