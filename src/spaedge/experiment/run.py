"""Running the grid: every cell at every rate of the budget on the selection
seed, the rate with the best validation accuracy chosen (never the test
accuracy), then the other seeds at that rate. Each finished run is a JSON
file in ``OUT/runs``; a rerun skips those (resume). ``shard=(i, n)`` runs
every n-th job, so several processes or machines can share a grid; a
machine runs a cell's other seeds once the rate search of that cell has
finished (on any machine sharing OUT)."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

import torch

from spaedge.experiment.grid import Budget, Cell, cell_config
from spaedge.pack.bundle import TaskSpec, task_bundle
from spaedge.pack.format import atomic_write_bytes, serialise
from spaedge.train import train_task
from spaedge.train.device import TrainEnv
from spaedge.train.identity import differences, identity_of
from spaedge.train.loops import Diverged
from spaedge.train.setup import resolve

__all__ = [
    "run_cell",
    "run_grid",
    "load_results",
    "chosen_rates",
    "check_inputs",
    "reported_seeds",
]

SELECTION_SEED = 0


def run_cell(
    cell: Cell,
    budget: Budget,
    base: str = "tiny",
    base_weights: str | None = None,
    data_dir: str | None = None,
    env: TrainEnv | None = None,
) -> dict:
    """Train one cell through the pipeline; its row of the table (the bundle is
    serialised in memory for its size, not written)."""
    torch.set_num_threads(1)  # one run per core
    cfg = cell_config(cell, budget, base, base_weights, data_dir)
    try:
        trained = train_task(cfg, env=env, curve=True)
    except (
        Diverged
    ) as e:  # a rate too high for this method: a result (never chosen), not a failure of the grid
        resolved = resolve(cfg, allow_download=env.download if env else True)
        return {
            **dataclasses.asdict(cell),
            "key": cell.key,
            "config_key": cell.config_key,
            "label": cell.label,
            "base": base,
            "lr": cell.lr,
            "val_accuracy": 0.0,
            "test_accuracy": 0.0,
            "diverged": str(e),
            "seconds": 0.0,
            "budget": dataclasses.asdict(budget),
            "identity": identity_of(resolved),
        }
    m = trained.metrics
    bundle, _ = serialise(
        *task_bundle(trained.model, TaskSpec.from_task(trained.task), trained.base_hash)
    )
    result = {
        **dataclasses.asdict(cell),
        "key": cell.key,
        "config_key": cell.config_key,
        "label": cell.label,
        "base": trained.config.base,
        "lr": trained.config.lr,
        "val_accuracy": m["val_accuracy"],
        "test_accuracy": m["test_accuracy"],
        "density_reached": m["density"],
        "learned_parameters": m["learned_parameters"],
        "task_bundle_bytes": len(bundle),
        "macs": m["macs"],
        "macs_unpruned": m["macs_unpruned"],
        "seconds": m["seconds"],
        "curve": m["curve"],
        "budget": dataclasses.asdict(budget),
        "identity": trained.identity,  # base weights and data used (spaedge.train.identity)
        **trained.method_metrics,  # e.g. Pear's pear_shared, pear_removed
    }
    return result


def _worker(args):
    cell, budget, out_dir, base, base_weights, data_dir, env = args
    res = run_cell(cell, budget, base, base_weights, data_dir, env)
    atomic_write_bytes(
        Path(out_dir) / "runs" / f"{cell.key}.json", json.dumps(res, indent=1).encode()
    )
    return res


def load_results(out_dir: str | Path) -> list[dict]:
    from spaedge.paths import read_json

    return [
        read_json(p, "experiment result") for p in sorted((Path(out_dir) / "runs").glob("*.json"))
    ]


# Budget fields a later run may change in the same results directory: more
# rates or more seeds add runs, and whether the selection seed is reported
# changes only which runs the table shows; anything else would mix
# incomparable runs.
EXTENSIBLE = ("lrs", "seeds", "held_out_selection")


def check_budget(out_dir: str | Path, budget: Budget) -> None:
    """Refuse a budget other than the one the directory's runs were made with
    (rates and seeds aside), naming the fields that differ. Fields a budget no
    longer has are not compared (an older budget restated the SparseAdapter
    methods' default options, which now come from the methods)."""
    want = {k: v for k, v in dataclasses.asdict(budget).items() if k not in EXTENSIBLE}
    for r in load_results(out_dir):
        have = {k: v for k, v in r.get("budget", {}).items() if k not in EXTENSIBLE}
        diff = sorted(k for k in want if have.get(k) != want[k])
        if diff:
            raise ValueError(
                f"{Path(out_dir) / 'runs'} holds runs made with another budget ("
                + ", ".join(f"{k} {have.get(k)!r} there, {want.get(k)!r} here" for k in diff)
                + "): give the same flags, or another --out"
            )


def check_inputs(
    out_dir: str | Path,
    budget: Budget,
    base: str = "tiny",
    base_weights: str | None = None,
    data_dir: str | None = None,
    env: TrainEnv | None = None,
) -> None:
    """Refuse a results directory whose runs were made on other inputs than
    these: another base or other base weights (by content), or other data
    (spaedge.train.identity). Rates chosen, seeds run and "already done" cells
    all assume the same inputs, so a mix is never extended."""
    results = load_results(out_dir)
    wanted: dict[str, dict] = {}
    for r in results:
        task = r.get("task")
        if task not in wanted:
            cfg = cell_config(Cell(task=str(task)), budget, base, base_weights, data_dir)
            wanted[task] = identity_of(resolve(cfg, allow_download=env.download if env else True))
        what = differences(r.get("identity"), wanted[task])
        if r.get("base") not in (None, base) and base != "auto":
            what.insert(0, f"base {r.get('base')!r} there, {base!r} now")
        if what:
            raise ValueError(
                f"{Path(out_dir) / 'runs'} holds runs made on other inputs ({r.get('key')}: "
                + "; ".join(what)
                + "): give the same --base, --base-weights and --data-dir, or another --out"
            )


def reported_seeds(budget: Budget) -> range:
    """The seeds the table reports: 1..seeds when the selection seed is held
    out, else 0..seeds-1 (seed 0 being the one that chose the rate)."""
    return range(1, budget.seeds + 1) if budget.held_out_selection else range(budget.seeds)


def chosen_rates(results: list[dict], budget: Budget) -> dict[str, float]:
    """{config_key: rate} for every cell whose rate search (all rates, selection
    seed) is complete: the highest validation accuracy, ties to the lower rate."""
    by: dict[str, dict[float, float]] = {}
    for r in results:
        if r["seed"] == SELECTION_SEED and r.get("lr") is not None:
            by.setdefault(r["config_key"], {})[float(r["lr"])] = r["val_accuracy"]
    out = {}
    for key, accs in by.items():
        if all(float(lr) in accs for lr in budget.lrs):
            out[key] = min(budget.lrs, key=lambda lr: (-accs[float(lr)], lr))
    return out


def run_grid(
    cells: list[Cell],
    budget: Budget,
    out_dir: str | Path,
    *,
    workers: int = 1,
    shard=(0, 1),
    base="tiny",
    base_weights=None,
    data_dir=None,
    log: Callable[[str], None] = print,
    env: TrainEnv | None = None,
) -> list[dict]:
    """Run the rate search, then the other seeds at the chosen rates; returns all results."""
    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    check_budget(out, budget)
    check_inputs(out, budget, base, base_weights, data_dir, env)
    search = [
        dataclasses.replace(c, seed=SELECTION_SEED, lr=lr) for c in cells for lr in budget.lrs
    ]
    _run(
        search, budget, out, workers, shard, (base, base_weights, data_dir, env), log, "rate search"
    )
    rates = chosen_rates(load_results(out), budget)
    seeds = [
        dataclasses.replace(c, seed=s, lr=rates[c.config_key])
        for c in cells
        if c.config_key in rates
        for s in reported_seeds(budget)
        if s != SELECTION_SEED
    ]
    waiting = sum(c.config_key not in rates for c in cells)
    if waiting:
        log(
            f"{waiting} cells still wait for their rate search (other shards): run again to finish them"
        )
    _run(
        seeds, budget, out, workers, shard, (base, base_weights, data_dir, env), log, "other seeds"
    )
    return load_results(out)


def _run(
    jobs: list[Cell], budget: Budget, out: Path, workers: int, shard, where, log, what: str
) -> None:
    i, n = shard
    mine = [c for k, c in enumerate(jobs) if k % n == i]
    todo = [c for c in mine if not (out / "runs" / f"{c.key}.json").exists()]
    log(
        f"{what}: {len(mine)} runs in this shard, {len(mine) - len(todo)} already done, {len(todo)} to go"
    )
    args = [(c, budget, str(out), *where) for c in todo]
    t0, done = time.time(), 0

    def note(r):
        nonlocal done
        done += 1
        log(
            f"[{what} {done}/{len(todo)}] {r['key']}: val {r['val_accuracy']:.2%}, test {r['test_accuracy']:.2%} "
            f"({r['seconds']}s, {time.time() - t0:.0f}s elapsed)"
        )

    if workers <= 1:
        for a in args:
            note(_worker(a))
        return
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        for f in as_completed([pool.submit(_worker, a) for a in args]):
            note(f.result())
