"""Names on disk: a bundle directory holds ``base.safetensors`` and one
``<task>.safetensors`` per task; run directories and library files are named
after their task the same way. No torch: the device side uses it too."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

__all__ = [
    "BASE_BUNDLE",
    "safe_name",
    "task_name",
    "task_bundle_name",
    "base_bundle_path",
    "task_bundle_path",
    "run_dir_path",
]

BASE_BUNDLE = "base.safetensors"


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


def task_bundle_name(task: str) -> str:
    """The task bundle's file name in a bundle directory."""
    return f"{task_name(task)}.safetensors"


def base_bundle_path(bundles: str | os.PathLike) -> Path:
    return Path(bundles) / BASE_BUNDLE


def task_bundle_path(bundles: str | os.PathLike, task: str) -> Path:
    return Path(bundles) / task_bundle_name(task)


def run_dir_path(runs: str | os.PathLike, task: str) -> Path:
    """A task's run directory under a directory of runs."""
    return Path(runs) / task_name(task)
