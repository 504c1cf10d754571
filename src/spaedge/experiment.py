"""``spaedge experiment``: methods x criteria x densities x ranks over tasks and seeds.

Protocol (offline default): the built-in ``tiny`` base (pretrained on
Fashion-MNIST classes 0-5) adapted to three tasks whose images it never saw in
pretraining: ``digits`` (8x8 handwritten digits upscaled, 10 classes),
``fashion_mnist_new`` (Fashion-MNIST classes 6-9) and ``fashion_mnist:6,8``
(shirt vs bag, a 2-class subset of the unseen classes). Each run is the
training pipeline (``spaedge.train.pipeline.train_task``) under the grid's
``Budget``: adapt (``epochs``), prune iteratively (``prune_step`` of the
filters per step, one recovery epoch each) to the density, ``final_epochs``
more, then test accuracy, learned parameters, task-bundle bytes (the packed
bundle's size) and MACs. The
training split is capped at ``train_limit`` images (same images for every
method) and the test split at ``test_limit`` to fit the 1-hour / 2-core budget.

Every finished run writes ``runs/<key>.json``; a rerun skips those (resume).
``--shard i/n`` runs every n-th cell, so several processes or machines can
share a grid (each writes its own JSON files; ``--report-only`` merges).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import multiprocessing as mp
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from spaedge.adapters import get_method
from spaedge.pack.bundle import TaskSpec, task_bundle
from spaedge.pack.format import atomic_write_bytes, serialise
from spaedge.pack.layout import task_name
from spaedge.train import TrainConfig, train_task
from spaedge.train.device import TrainEnv

__all__ = ["Cell", "Budget", "FAST_BUDGET", "DEFAULT_TASKS", "default_grid", "fast_grid", "cell_config", "run_cell",
           "run_grid", "load_results", "report"]

DEFAULT_TASKS = ("digits", "fashion_mnist_new", "fashion_mnist:6,8")


@dataclass(frozen=True)
class Cell:
    task: str
    method: str = "splora"
    rank: int = 8
    density: float = 0.3
    criterion: str = "magnitude"
    schedule: str = "iterative"
    seed: int = 0
    # Method options as TrainConfig fields and values, e.g. (("pear_share", "none"),)
    options: tuple = ()

    @property
    def key(self) -> str:
        t = task_name(self.task)
        opts = "".join(f"-{v}" for _, v in self.options)
        return (f"{t}__{self.method}{opts}-r{self.rank}__d{int(round(self.density * 100))}__{self.criterion}"
                f"__{self.schedule}__s{self.seed}")

    @property
    def label(self) -> str:
        m = get_method(self.method).describe(self.rank)
        m += "".join(f", {k.split('_')[-1]} {v}" for k, v in self.options)
        extra = "" if self.schedule == "iterative" else f", {self.schedule}"
        return f"{m} ({self.criterion}{extra})"


@dataclass
class Budget:
    epochs: int = 2
    recovery_epochs: int = 1
    final_epochs: int = 2
    prune_step: float = 0.15
    train_limit: int = 400
    test_limit: int = 1000
    batch_size: int = 32
    # The adapters' rate (they learn slowly at a fine-tuning rate; 1e-2 is what
    # `spaedge train` defaults to). A method may set its own (the registry's
    # ``lr``: fine-pruning keeps the usual fine-tuning rate). docs/benchmarks.md,
    # "Measurements behind the toolchain's defaults".
    lr: float = 1e-2
    score_batches: int = 2
    adapter_keep: float = 0.1
    mask_criterion: str = "snip"


def default_grid(tasks=DEFAULT_TASKS, seeds=(0, 1), densities=(1.0, 0.3, 0.1)) -> list[Cell]:
    cells = []
    for task in tasks:
        for seed in seeds:
            c = lambda **kw: cells.append(Cell(task=task, seed=seed, **kw))  # noqa: E731
            for d in densities:
                c(method="finetune", rank=0, density=d)
                c(method="splora", rank=8, density=d)
            for d in densities:
                if d < 1.0:
                    c(method="splora", rank=2, density=d)
                    c(method="sppara", rank=0, density=d)
                    c(method="splopa", rank=2, density=d)
                    c(method="sparse", rank=0, density=d)
            c(method="sparse-large", rank=0, density=0.3)
            c(method="pear", rank=8, density=0.3)
            for crit in ("gradient", "taylor", "lrp"):
                c(method="splora", rank=8, density=0.1, criterion=crit)
            c(method="splora", rank=8, density=0.1, schedule="oneshot")
    return cells


def fast_grid() -> list[Cell]:
    return [Cell("digits", "finetune", 0, 0.3), Cell("digits", "splora", 4, 0.3),
            Cell("digits", "splora", 4, 0.3, criterion="taylor", schedule="oneshot"),
            Cell("digits", "sppara", 0, 0.3), Cell("digits", "splopa", 2, 0.3), Cell("digits", "sparse", 0, 0.3),
            Cell("digits", "pear", 4, 0.3)]


FAST_BUDGET = Budget(epochs=1, recovery_epochs=0, final_epochs=1, prune_step=0.35, train_limit=128,
                     test_limit=128, score_batches=1)


def cell_config(cell: Cell, budget: Budget, base: str = "tiny", base_weights: Optional[str] = None,
                data_dir: Optional[str] = None) -> TrainConfig:
    """The training config of one cell of the grid under ``budget``."""
    return TrainConfig(task=cell.task, base=base, base_weights=base_weights, data_dir=data_dir, method=cell.method,
                       rank=max(cell.rank, 1), density=cell.density, criterion=cell.criterion,
                       schedule=cell.schedule, seed=cell.seed, epochs=budget.epochs,
                       recovery_epochs=budget.recovery_epochs, final_epochs=budget.final_epochs,
                       prune_step=budget.prune_step, train_limit=budget.train_limit, test_limit=budget.test_limit,
                       batch_size=budget.batch_size, lr=get_method(cell.method).lr or budget.lr,
                       score_batches=budget.score_batches, adapter_keep=budget.adapter_keep,
                       mask_criterion=budget.mask_criterion, **dict(cell.options))


def run_cell(cell: Cell, budget: Budget, base: str = "tiny", base_weights: Optional[str] = None,
             data_dir: Optional[str] = None, env: Optional[TrainEnv] = None) -> dict:
    """Train one cell through the pipeline; its row of the table (the bundle is
    serialised in memory for its size, not written)."""
    torch.set_num_threads(1)  # one run per core
    trained = train_task(cell_config(cell, budget, base, base_weights, data_dir), env=env)
    m = trained.metrics
    bundle, _ = serialise(*task_bundle(trained.model, TaskSpec.from_task(trained.task), trained.base_hash))
    result = {**dataclasses.asdict(cell), "key": cell.key, "label": cell.label,
              "test_accuracy": m["test_accuracy"], "density_reached": m["density"],
              "learned_parameters": m["learned_parameters"], "task_bundle_bytes": len(bundle),
              "macs": m["macs"], "seconds": m["seconds"], "budget": dataclasses.asdict(budget)}
    if trained.pear:
        result.update(pear_shared=trained.pear["shared"], pear_removed=trained.pear["removed"])
    return result


def _write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1).encode())


def _worker(args):
    cell, budget, out_dir, base, base_weights, data_dir, env = args
    res = run_cell(cell, budget, base, base_weights, data_dir, env)
    _write_json(Path(out_dir) / "runs" / f"{cell.key}.json", res)
    return res


def run_grid(cells: list[Cell], budget: Budget, out_dir: str | Path, *, workers: int = 1, shard=(0, 1),
             base="tiny", base_weights=None, data_dir=None, log=print, env: Optional[TrainEnv] = None) -> list[dict]:
    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    i, n = shard
    mine = [c for k, c in enumerate(cells) if k % n == i]
    todo = [c for c in mine if not (out / "runs" / f"{c.key}.json").exists()]
    log(f"{len(mine)} runs in this shard, {len(mine) - len(todo)} already done, {len(todo)} to go")
    args = [(c, budget, str(out), base, base_weights, data_dir, env) for c in todo]
    t0 = time.time()
    done = 0
    if workers <= 1:
        for a in args:
            r = _worker(a)
            done += 1
            log(f"[{done}/{len(todo)}] {r['key']}: {r['test_accuracy']:.2%} ({r['seconds']}s, "
                f"{time.time() - t0:.0f}s elapsed)")
    else:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futs = {pool.submit(_worker, a): a[0] for a in args}
            for f in as_completed(futs):
                r = f.result()
                done += 1
                log(f"[{done}/{len(todo)}] {r['key']}: {r['test_accuracy']:.2%} ({r['seconds']}s, "
                    f"{time.time() - t0:.0f}s elapsed)")
    return load_results(out)


def load_results(out_dir: str | Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((Path(out_dir) / "runs").glob("*.json"))]


def _ms(values):
    if not values:
        return "–"
    m = statistics.mean(values) * 100
    s = statistics.stdev(values) * 100 if len(values) > 1 else 0.0
    return f"{m:.1f} ± {s:.1f}"


def report(results: list[dict], out_dir: str | Path, command: str = "") -> str:
    """Write results.md, results.csv and results.png; return the Markdown table."""
    out = Path(out_dir)
    tasks = sorted({r["task"] for r in results}, key=lambda t: (DEFAULT_TASKS + (t,)).index(t))
    rows: dict[tuple, list[dict]] = {}
    for r in results:
        rows.setdefault((r["density"], r["label"]), []).append(r)
    order = sorted(rows, key=lambda k: (-k[0], k[1]))
    head = ["density", "method (criterion)"] + tasks + ["avg", "learned params", "task bundle KB", "MMACs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    summary = []
    for key in order:
        rs = rows[key]
        per_task = [[r["test_accuracy"] for r in rs if r["task"] == t] for t in tasks]
        means = [statistics.mean(v) for v in per_task if v]
        avg = statistics.mean(means) * 100 if means else float("nan")
        lp = statistics.mean(r["learned_parameters"] for r in rs)
        kb = statistics.mean(r["task_bundle_bytes"] for r in rs) / 1024
        macs = statistics.mean(r["macs"] for r in rs) / 1e6
        lines.append("| " + " | ".join([f"{key[0]:.0%}", key[1]] + [_ms(v) for v in per_task] +
                                        [f"{avg:.1f}", f"{lp / 1e3:.1f}k", f"{kb:.1f}", f"{macs:.2f}"]) + " |")
        summary.append((key, avg, lp))
    table = "\n".join(lines)
    seeds = sorted({r["seed"] for r in results})
    md = (f"# spaedge experiment\n\n{command}\n\nTest accuracy (%) mean ± std over seeds {seeds}; "
          f"learned params, bundle size and MACs averaged over tasks and seeds.\n\n{table}\n")
    (out / "results.md").write_text(md)
    fields = ["task", "method", "rank", "density", "criterion", "schedule", "seed", "test_accuracy",
              "density_reached", "learned_parameters", "task_bundle_bytes", "macs", "seconds"]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in results:
            w.writerow(r)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 5))
        for (dens, label), avg, lp in summary:
            mk = {1.0: "o", 0.3: "s", 0.1: "^"}.get(dens, "x")
            ax.scatter(lp, avg, marker=mk)
            ax.annotate(f"{label.split(' (')[0]} {dens:.0%}", (lp, avg), fontsize=6)
        ax.set_xscale("log")
        ax.set_xlabel("learned parameters (mean over tasks)")
        ax.set_ylabel("test accuracy, mean over tasks (%)")
        ax.set_title("accuracy vs learned parameters (o 100%, s 30%, ^ 10% density)")
        fig.tight_layout()
        fig.savefig(out / "results.png", dpi=120)
        plt.close(fig)
    except ImportError:  # matplotlib is optional: table and CSV still written
        pass
    return table
