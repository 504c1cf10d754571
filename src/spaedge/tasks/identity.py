"""What a task's data *is*, as opposed to how it was named.

A run is identified by its content (spaedge.train.identity): the base weights
it loaded, its config, and ``data_identity(task)``: the task's name and, for
each place its data came from, the absolute, resolved path and

- ``sha256``: the digest of a file's content (a named dataset's files:
  Fashion-MNIST's IDX files, CIFAR-10's batches, Flowers-102's label files),
  or
- ``listing``: the digest of a directory's file list (relative names, sizes,
  modification times; cheap, no image is read): an image folder, Flowers-102's
  ``jpg/``.

Two ``imagefolder:imgs`` tasks in two working directories, or one folder
whose files changed, have different identities. Digests of files are cached
per process by (path, size, mtime).
"""

from __future__ import annotations

import functools
import hashlib
import os

__all__ = ["data_identity", "file_digest", "listing_digest"]


@functools.lru_cache(maxsize=256)
def _digest_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def file_digest(path: str) -> str:
    """SHA-256 of a file's content (cached per process by path, size and mtime)."""
    st = os.stat(path)
    return _digest_cached(os.path.realpath(path), st.st_size, st.st_mtime_ns)


def listing_digest(root: str) -> str:
    """SHA-256 of the sorted list of (relative name, size, mtime) of every file
    under ``root`` (links followed, each directory once; hidden entries skipped)."""
    rows = []
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            p = os.path.join(dirpath, f)
            try:
                st = os.stat(p)
            except OSError:
                continue
            rows.append(f"{os.path.relpath(p, root)}\0{st.st_size}\0{st.st_mtime_ns}")
    rows.sort()
    return (
        "sha256:" + hashlib.sha256("\n".join(rows).encode("utf-8", "surrogateescape")).hexdigest()
    )


def data_identity(task) -> dict:
    """``{"task": name, "sources": [{"path": ..., "sha256"|"listing": ...}, ...]}``
    for a Task whose loader declared its sources (``Task.sources``); a task with
    data built into spaedge (digits) has no sources."""
    sources = []
    for kind, path in getattr(task, "sources", ()):
        real = os.path.realpath(path)
        if kind == "file":
            sources.append({"path": real, "sha256": file_digest(real)})
        elif kind == "tree":
            sources.append({"path": real, "listing": listing_digest(real)})
        else:
            raise ValueError(f"unknown data source kind {kind!r}")
    return {"task": task.name, "sources": sources}
