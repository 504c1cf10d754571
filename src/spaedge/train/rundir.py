"""A run directory's files become visible together or not at all.

A finished run leaves ``task.safetensors``, ``config.json``, ``metrics.json``
and ``plan.json``, and last ``run.json``: the manifest, with the SHA-256 of
each, and the run's identity (spaedge.train.identity: the base weights'
content hash and the data's identity; ``read_identity``). Writing a run first removes the old manifest, so a directory
interrupted while its files are replaced has none, and every reader (``spaedge
pack``, ``library add``, a library of runs) goes through ``read_run``, which
refuses a directory whose manifest is missing or does not match its files:
it never mixes two runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from spaedge.pack.format import atomic_write_bytes

__all__ = [
    "MANIFEST",
    "RUN_FILES",
    "IncompleteRun",
    "write_run",
    "read_run",
    "read_identity",
    "is_run",
]

MANIFEST = "run.json"
RUN_FILES = ("task.safetensors", "config.json", "metrics.json", "plan.json")
FORMAT = "spaedge-run"


class IncompleteRun(ValueError):
    """A run directory without a complete, matching set of files."""


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_run(out: Path, files: dict[str, bytes], identity: dict | None = None) -> None:
    """Write ``files`` (name -> bytes) into ``out``, then the manifest naming
    them (and the run's ``identity``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # incomplete from here until the manifest is back
    for name, data in files.items():
        atomic_write_bytes(out / name, data)
    manifest = {"format": FORMAT, "version": 1, "files": {n: _digest(d) for n, d in files.items()}}
    if identity is not None:
        manifest["identity"] = identity
    atomic_write_bytes(out / MANIFEST, json.dumps(manifest, indent=1).encode())


def is_run(path: Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_identity(run_dir: Path) -> dict | None:
    """The identity the run's manifest records (None for a run written without one)."""
    _, manifest = _manifest(Path(run_dir))
    ident = manifest.get("identity")
    return ident if isinstance(ident, dict) else None


def _manifest(run_dir: Path) -> tuple[str, dict]:
    """(what to do about a bad run, the manifest checked for its shape)."""
    redo = f"train it again (spaedge train --out {run_dir}, or spaedge pack --retrain)"
    try:
        manifest = json.loads((run_dir / MANIFEST).read_bytes())
        listed = manifest["files"]
        if manifest.get("format") != FORMAT or not isinstance(listed, dict):
            raise ValueError
    except FileNotFoundError:
        raise IncompleteRun(
            f"{run_dir} is not a finished run (no {MANIFEST}: interrupted, or not a run "
            f"directory): {redo}"
        ) from None
    except (OSError, ValueError, KeyError, TypeError):
        raise IncompleteRun(f"{run_dir}/{MANIFEST} is unreadable: {redo}") from None
    return redo, manifest


def read_run(run_dir: Path, names=RUN_FILES) -> dict[str, bytes]:
    """The run's files ``names`` as bytes, each checked against the manifest."""
    run_dir = Path(run_dir)
    redo, manifest = _manifest(run_dir)
    return _read_run_files(run_dir, names, redo, manifest["files"])


def _read_run_files(run_dir, names, redo, listed) -> dict[str, bytes]:
    out = {}
    for name in names:
        if name not in listed:
            raise IncompleteRun(f"{run_dir}: {name} is not part of this run: {redo}")
        try:
            data = (run_dir / name).read_bytes()
        except OSError as e:
            raise IncompleteRun(f"{run_dir}/{name} cannot be read ({e.strerror}): {redo}") from None
        if _digest(data) != listed[name]:
            raise IncompleteRun(
                f"{run_dir}/{name} is not the file the run wrote (changed or replaced since): "
                f"{redo}"
            )
        out[name] = data
    return out
