"""Plan files and libraries of them, for pruning a new task from similar ones.

A finished run leaves ``plan.json`` in its run directory: a
``spaedge.pruning.similar.Plan`` (the channels its pruned model kept in every
adapted layer and its task embedding) as JSON. A **library** is a directory
of such files (``spaedge library add RUN_DIR... --to DIR`` copies them); a
finished run directory (``spaedge.train.rundir``), or a directory of them,
works as a library too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from spaedge.pack.format import atomic_write_bytes
from spaedge.pack.layout import safe_name, task_name
from spaedge.paths import FileProblem, parse_json, read_json
from spaedge.pruning.similar import Plan, plan_of_model
from spaedge.tasks import Task
from spaedge.train.config import TrainConfig
from spaedge.train.rundir import MANIFEST, is_run, read_run
from spaedge.train.setup import embed_task

__all__ = [
    "PLAN_FILE",
    "FORMAT",
    "plan_to_json",
    "plan_from_json",
    "plan_bytes",
    "write_plan",
    "read_plan",
    "run_plan",
    "plan_from_run",
    "load_library",
    "add_to_library",
]

PLAN_FILE = "plan.json"
FORMAT = "spaedge-plan"
#: More output channels than any adapted layer has (a ResNet's widest is 2048).
MAX_CHANNELS = 1 << 16


def plan_to_json(plan: Plan) -> dict:
    d = asdict(plan)
    d.pop("source")
    return {"format": FORMAT, "version": 1, **d}


def _field(source: str, key: str, why: str) -> FileProblem:
    return FileProblem(f"{source}: field {key!r} {why}")


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def plan_from_json(d, source: str = "") -> Plan:
    """A plan from its JSON form, every field checked: bad content raises
    FileProblem (a ValueError) naming the file and the field."""
    source = source or "plan"
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        fmt = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise FileProblem(f"{source}: not a spaedge pruning plan (format {fmt!r})")
    for key in ("task", "base_hash", "density", "kept", "base_channels", "embedding"):
        if key not in d:
            raise _field(source, key, "is missing: the plan is damaged or not a plan")
    for key in ("task", "base_hash"):
        if not isinstance(d[key], str) or not d[key]:
            raise _field(source, key, "must be a non-empty string")
    if not isinstance(d.get("base", ""), str):
        raise _field(source, "base", "must be a string")
    density = d["density"]
    if not _finite(density) or not 0.0 < float(density) <= 1.0:
        raise _field(source, "density", f"must be a number in (0, 1], got {density!r}")
    channels = d["base_channels"]
    if not isinstance(channels, dict) or not channels:
        raise _field(source, "base_channels", "must be an object of layer -> channel count")
    for layer, n in channels.items():
        if not _count(n) or not 0 < n <= MAX_CHANNELS:
            raise _field(
                source,
                "base_channels",
                f"layer {layer!r} has {n!r} channels; expected an integer in [1, {MAX_CHANNELS}]",
            )
    kept = d["kept"]
    if not isinstance(kept, dict):
        raise _field(
            source,
            "kept",
            f"must be an object of layer -> channel indices, not {type(kept).__name__}",
        )
    if set(kept) != set(channels):
        odd = sorted(set(kept) ^ set(channels))[:3]
        raise _field(source, "kept", f"does not name the layers of 'base_channels' (e.g. {odd})")
    for layer, idx in kept.items():
        n = channels[layer]
        if not isinstance(idx, list) or not idx or not all(_count(i) for i in idx):
            raise _field(
                source, "kept", f"layer {layer!r}: expected a non-empty list of channel indices"
            )
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise _field(
                source,
                "kept",
                f"layer {layer!r}: channel index {bad[0]} is outside [0, {n - 1}] (the base's "
                f"{n} channels)",
            )
        if len(set(idx)) != len(idx):
            raise _field(source, "kept", f"layer {layer!r}: a channel index is listed twice")
    emb = d["embedding"]
    if not isinstance(emb, list) or not emb or not all(_finite(v) for v in emb):
        raise _field(source, "embedding", "must be a non-empty list of finite numbers")
    acc = d.get("test_accuracy")
    if acc is not None and not _finite(acc):
        raise _field(source, "test_accuracy", "must be a finite number or null")
    extra = d.get("extra", {})
    if not isinstance(extra, dict):
        raise _field(source, "extra", "must be an object")
    return Plan(
        task=d["task"],
        base=d.get("base", ""),
        base_hash=d["base_hash"],
        density=float(density),
        kept={k: [int(i) for i in v] for k, v in kept.items()},
        base_channels={k: int(v) for k, v in channels.items()},
        embedding=[float(v) for v in emb],
        test_accuracy=acc,
        source=source,
        extra=extra,
    )


def plan_bytes(plan: Plan) -> bytes:
    return json.dumps(plan_to_json(plan)).encode()


def write_plan(plan: Plan, path: Path) -> None:
    atomic_write_bytes(path, plan_bytes(plan))


def read_plan(path: Path) -> Plan:
    return plan_from_json(read_json(path, "plan file"), source=str(path))


def run_plan(
    model: nn.Module,
    cfg: TrainConfig,
    task: Task,
    base_hash: str,
    metrics: dict,
    embedding: torch.Tensor | None = None,
) -> Plan:
    """The plan of a finished run (``plan.json``, written by ``spaedge.train.pipeline.run``)."""
    if embedding is None:
        embedding = embed_task(cfg, task)
    return plan_of_model(
        model,
        task=task.name,
        base=cfg.base,
        base_hash=base_hash,
        embedding=embedding,
        test_accuracy=metrics.get("test_accuracy"),
        extra={
            "method": cfg.method,
            "schedule": cfg.schedule,
            "criterion": cfg.criterion,
            "seed": cfg.seed,
        },
    )


def plan_from_run(run_dir: Path) -> Plan:
    """A finished run directory's plan (its files checked against the run's manifest)."""
    data = read_run(Path(run_dir), (PLAN_FILE,))[PLAN_FILE]
    where = f"{run_dir}/{PLAN_FILE}"
    return plan_from_json(parse_json(data, where), source=where)


def _plan_sources(path: Path) -> list[Path]:
    """Plan files, and run directories (whose plans are read through their manifest)."""
    if path.is_file():
        return [path]
    if is_run(path):
        return [path]
    files = sorted(p for p in path.glob("*.json") if p.name != MANIFEST)
    files += sorted(p.parent for p in path.glob(f"*/{MANIFEST}"))
    return files


def load_library(paths: str | Path | Sequence[str | Path]) -> list[Plan]:
    """Every plan under ``paths``: plan files, library directories of plans,
    run directories, or directories of run directories. ``paths`` may be one
    string with several entries separated by commas."""
    if isinstance(paths, (str, Path)):
        paths = [p for p in str(paths).split(",") if p]
    plans = []
    for entry in paths:
        path = Path(entry)
        if not path.exists():
            raise FileNotFoundError(f"library {path} does not exist")
        for f in _plan_sources(path):
            if f.is_dir():
                plans.append(plan_from_run(f))  # a run directory: refused if incomplete
                continue
            if f == path:  # a plan file named by the user: it must be one
                plans.append(read_plan(f))
                continue
            try:  # a library directory may hold other JSON files: only plans are read
                d = read_json(f, "library file")
            except FileProblem:
                continue
            if isinstance(d, dict) and d.get("format") == FORMAT:
                plans.append(plan_from_json(d, source=str(f)))  # a damaged plan is an error
    return plans


def add_to_library(run_dir: Path, library: Path) -> Path:
    """Copy (or rebuild) a run's plan into the library directory; returns the file."""
    plan = plan_from_run(Path(run_dir))
    library = Path(library)
    library.mkdir(parents=True, exist_ok=True)
    # Every part of the name comes from the plan file: made safe, so no value can
    # name a path outside the library.
    name = (
        f"{task_name(plan.task)}__{safe_name(str(plan.base_hash)[:8])}__d{round(float(plan.density) * 100)}"
        f"__s{safe_name(str(plan.extra.get('seed', 0)))}.json"
    )
    dest = library / name
    if dest.resolve().parent != library.resolve():
        raise ValueError(
            f"{run_dir}: its plan does not make a file name inside {library} ({name!r})"
        )
    write_plan(plan, dest)
    return dest
