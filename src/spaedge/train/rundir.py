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
from spaedge.paths import (
    MAX_BUNDLE_BYTES,
    MAX_JSON_BYTES,
    FileProblem,
    WriteProblem,
    parse_json,
    read_json,
    read_regular,
)

__all__ = [
    "MANIFEST",
    "RUN_FILES",
    "IncompleteRun",
    "write_run",
    "read_run",
    "is_run",
    "read_run_json",
    "read_identity",
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
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST).unlink(missing_ok=True)  # incomplete from here until the manifest is back
    except OSError as e:
        raise WriteProblem(out / MANIFEST, e) from None
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
        manifest = read_json(run_dir / MANIFEST, "the run's manifest")
    except FileProblem as e:
        if not (run_dir / MANIFEST).exists():
            raise IncompleteRun(
                f"{run_dir} is not a finished run (no {MANIFEST}: interrupted, or not a run "
                f"directory): {redo}"
            ) from None
        raise IncompleteRun(f"{e}: {redo}") from None
    listed = manifest.get("files") if isinstance(manifest, dict) else None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or not isinstance(listed, dict)
        or not all(isinstance(v, str) for v in listed.values())
    ):
        raise IncompleteRun(
            f"{run_dir}/{MANIFEST}: field 'files' is not an object of file name -> digest "
            f"(not a spaedge run manifest): {redo}"
        )
    return redo, manifest


def read_run(run_dir: Path, names=RUN_FILES) -> dict[str, bytes]:
    """The run's files ``names`` as bytes, each checked against the manifest."""
    run_dir = Path(run_dir)
    redo, manifest = _manifest(run_dir)
    listed = manifest["files"]
    out = {}
    for name in names:
        if name not in listed:
            raise IncompleteRun(f"{run_dir}: {name} is not part of this run: {redo}")
        limit = MAX_BUNDLE_BYTES if name.endswith(".safetensors") else MAX_JSON_BYTES
        try:
            data = read_regular(run_dir / name, "the run's file", limit)
        except FileProblem as e:
            raise IncompleteRun(f"{e}: {redo}") from None
        if _digest(data) != listed[name]:
            raise IncompleteRun(
                f"{run_dir}/{name} is not the file the run wrote (changed or replaced since): "
                f"{redo}"
            )
        out[name] = data
    return out


def read_run_json(run_dir: Path, name: str, data: bytes) -> dict:
    """A run's JSON file (bytes from ``read_run``) parsed, depth-limited: a JSON
    object, or IncompleteRun naming the file."""
    try:
        doc = parse_json(data, f"{run_dir}/{name}")
    except FileProblem as e:
        raise IncompleteRun(str(e)) from None
    if not isinstance(doc, dict):
        raise IncompleteRun(f"{run_dir}/{name}: not a JSON object")
    return doc
