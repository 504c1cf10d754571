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
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from spaedge.pack.format import atomic_write_bytes
from spaedge.pack.layout import safe_name, task_name
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


def plan_to_json(plan: Plan) -> dict:
    d = asdict(plan)
    d.pop("source")
    return {"format": FORMAT, "version": 1, **d}


def plan_from_json(d: dict, source: str = "") -> Plan:
    if d.get("format") != FORMAT:
        raise ValueError(
            f"{source or 'plan'}: not a spaedge pruning plan (format {d.get('format')!r})"
        )
    return Plan(
        task=d["task"],
        base=d.get("base", ""),
        base_hash=d["base_hash"],
        density=float(d["density"]),
        kept={k: [int(i) for i in v] for k, v in d["kept"].items()},
        base_channels={k: int(v) for k, v in d["base_channels"].items()},
        embedding=[float(v) for v in d["embedding"]],
        test_accuracy=d.get("test_accuracy"),
        source=source,
        extra=d.get("extra", {}),
    )


def plan_bytes(plan: Plan) -> bytes:
    return json.dumps(plan_to_json(plan)).encode()


def write_plan(plan: Plan, path: Path) -> None:
    atomic_write_bytes(path, plan_bytes(plan))


def read_plan(path: Path) -> Plan:
    return plan_from_json(json.loads(Path(path).read_text()), source=str(path))


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
    return plan_from_json(json.loads(data), source=str(run_dir))


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
            try:
                d = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(d, dict) and d.get("format") == FORMAT:
                plans.append(plan_from_json(d, source=str(f)))
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
