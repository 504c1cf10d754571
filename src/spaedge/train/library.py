"""Plan files and libraries of them, for pruning a new task from similar ones.

A finished run leaves ``plan.json`` in its run directory: a
``spaedge.pruning.similar.Plan`` (the channels its pruned model kept in every
adapted layer and its task embedding) as JSON. A **library** is a directory
of such files (``spaedge library add RUN_DIR... --to DIR`` copies them); a run
directory, or a directory of run directories, works as a library too.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from spaedge.models import get_base
from spaedge.pack.format import atomic_write_bytes, read_bundle
from spaedge.pack.layout import safe_name
from spaedge.pruning.similar import Plan, plan_of_model
from spaedge.tasks import Task
from spaedge.train.config import TrainConfig
from spaedge.train.setup import embed_task

__all__ = ["PLAN_FILE", "FORMAT", "plan_to_json", "plan_from_json", "write_plan", "read_plan", "write_run_plan",
           "plan_from_run", "load_library", "add_to_library"]

PLAN_FILE = "plan.json"
FORMAT = "spaedge-plan"


def plan_to_json(plan: Plan) -> dict:
    d = asdict(plan)
    d.pop("source")
    return {"format": FORMAT, "version": 1, **d}


def plan_from_json(d: dict, source: str = "") -> Plan:
    if d.get("format") != FORMAT:
        raise ValueError(f"{source or 'plan'}: not a spaedge pruning plan (format {d.get('format')!r})")
    return Plan(task=d["task"], base=d.get("base", ""), base_hash=d["base_hash"], density=float(d["density"]),
                kept={k: [int(i) for i in v] for k, v in d["kept"].items()},
                base_channels={k: int(v) for k, v in d["base_channels"].items()},
                embedding=[float(v) for v in d["embedding"]], test_accuracy=d.get("test_accuracy"),
                source=source, extra=d.get("extra", {}))


def write_plan(plan: Plan, path: Path) -> None:
    atomic_write_bytes(path, json.dumps(plan_to_json(plan)).encode())


def read_plan(path: Path) -> Plan:
    return plan_from_json(json.loads(Path(path).read_text()), source=str(path))


def write_run_plan(out: Path, model: nn.Module, cfg: TrainConfig, task: Task, base_hash: str, metrics: dict,
                   embedding: Optional[torch.Tensor] = None) -> None:
    """``out/plan.json`` for a finished run (written by ``spaedge.train.pipeline.run``)."""
    if embedding is None:
        embedding = embed_task(cfg, task)
    p = plan_of_model(model, task=task.name, base=cfg.base, base_hash=base_hash, embedding=embedding,
                      test_accuracy=metrics.get("test_accuracy"),
                      extra={"method": cfg.method, "schedule": cfg.schedule, "criterion": cfg.criterion,
                             "seed": cfg.seed})
    write_plan(p, Path(out) / PLAN_FILE)


def plan_from_run(run_dir: Path) -> Plan:
    """A run directory's plan: its ``plan.json``, or (runs made before plans
    existed) rebuilt from ``task.safetensors`` and ``config.json``."""
    run_dir = Path(run_dir)
    if (run_dir / PLAN_FILE).exists():
        return read_plan(run_dir / PLAN_FILE)
    bundle, config = run_dir / "task.safetensors", run_dir / "config.json"
    if not (bundle.exists() and config.exists()):
        raise FileNotFoundError(f"{run_dir}: no {PLAN_FILE}, and no task.safetensors + config.json to rebuild it "
                                "from: is it a finished `spaedge train` run directory?")
    cfg = TrainConfig.from_json(json.loads(config.read_text()))
    tensors, meta = read_bundle(bundle)
    base = get_base(cfg.base, cfg.base_weights)
    layers = {n: m for n, m in base.named_modules() if isinstance(m, nn.Conv2d)}
    kept, chans, weights, base_w = {}, {}, 0, 0
    for name, conv in layers.items():
        o, i, kh, kw = conv.weight.shape
        out_idx = tensors.get(f"{name}.out_index")
        in_idx = tensors.get(f"{name}.in_index")
        kept[name] = sorted(int(v) for v in (out_idx if out_idx is not None else range(o)))
        chans[name] = int(o)
        weights += len(kept[name]) * (len(in_idx) if in_idx is not None else i) * kh * kw
        base_w += o * i * kh * kw
    info = json.loads(meta.get("info", "{}"))
    return Plan(task=meta["task"], base=cfg.base, base_hash=meta["base_hash"], density=weights / max(base_w, 1),
                kept=kept, base_channels=chans, embedding=embed_task(cfg).tolist(),
                test_accuracy=info.get("test_accuracy"), source=str(run_dir),
                extra={"method": cfg.method, "seed": cfg.seed})


def _plan_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if (path / PLAN_FILE).exists():
        return [path / PLAN_FILE]
    files = sorted(p for p in path.glob("*.json"))
    files += sorted(p for p in path.glob(f"*/{PLAN_FILE}"))
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
        for f in _plan_files(path):
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
    seed = plan.extra.get("seed", 0)
    dest = library / f"{safe_name(plan.task)}__{plan.base_hash[:8]}__d{round(plan.density * 100)}__s{seed}.json"
    if (Path(run_dir) / PLAN_FILE).exists():
        shutil.copyfile(Path(run_dir) / PLAN_FILE, dest)
    else:
        write_plan(plan, dest)
    return dest
