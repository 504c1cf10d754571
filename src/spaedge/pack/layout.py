"""Names on disk: a bundle directory holds ``base.safetensors`` and one
``<task>.safetensors`` per task; run directories and library files are named
after their task the same way. No torch: the device side uses it too."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["BASE_BUNDLE", "safe_name", "task_bundle_name", "base_bundle_path", "task_bundle_path", "run_dir_path"]

BASE_BUNDLE = "base.safetensors"


def safe_name(text: str) -> str:
    """A file name for a task name (imagefolder paths and class lists included)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "task"


def task_bundle_name(task: str) -> str:
    """The task bundle's file name in a bundle directory."""
    return f"{safe_name(task)}.safetensors"


def base_bundle_path(bundles: str | os.PathLike) -> Path:
    return Path(bundles) / BASE_BUNDLE


def task_bundle_path(bundles: str | os.PathLike, task: str) -> Path:
    return Path(bundles) / task_bundle_name(task)


def run_dir_path(runs: str | os.PathLike, task: str) -> Path:
    """A task's run directory under a directory of runs."""
    return Path(runs) / safe_name(task)
