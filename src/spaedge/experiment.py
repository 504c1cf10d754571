"""``spaedge experiment``: methods x criteria x densities x ranks over tasks and seeds.

Protocol (offline default): the built-in ``tiny`` base (pretrained on
Fashion-MNIST classes 0-5) adapted to three tasks whose images it never saw in
pretraining: ``digits`` (8x8 handwritten digits upscaled, 10 classes),
``fashion_mnist_new`` (Fashion-MNIST classes 6-9) and ``fashion_mnist:6,8``
(shirt vs bag, a 2-class subset of the unseen classes). Each run: adapt
(``epochs``), prune iteratively (``prune_step`` of the filters per step, one
recovery epoch each) to the density, ``final_epochs`` more, then test accuracy,
learned parameters, task-bundle bytes (the real packed file) and MACs. The
training split is capped at ``train_limit`` images (same images for every
method) and the test split at ``test_limit`` to fit the 1-hour / 2-core budget.

Every finished run writes ``runs/<key>.json``; a rerun skips those (resume).
``--shard i/n`` runs every n-th cell, so several processes or machines can
share a grid (each writes its own JSON files; ``--report-only`` merges).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

__all__ = ["Cell", "default_grid", "fast_grid", "run_cell", "run_grid", "report"]

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

    @property
    def key(self) -> str:
        t = self.task.replace(":", "_").replace(",", "-").replace("/", "_")
        return (f"{t}__{self.method}-r{self.rank}__d{int(round(self.density * 100))}__{self.criterion}"
                f"__{self.schedule}__s{self.seed}")

    @property
    def label(self) -> str:
        m = {"splora": f"SPLoRA r{self.rank}", "finetune": "Fine-pruning", "sppara": "SPPaRA",
             "splopa": f"SPLoPA r{self.rank}", "sparse": "SparseAdapter",
             "sparse-large": "SparseAdapter Large-Sparse", "pear": f"Pear r{self.rank}"}.get(self.method, self.method)
        if self.method.startswith("pear-"):  # Pear with another sharing map, e.g. pear-none
            m = f"Pear r{self.rank}, share {self.method[5:]}"
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
    # Learning rates per family: the low-rank/sparse adapters learn slowly at a
    # fine-tuning rate (at 3e-3 SPLoRA reached 77% where fine-pruning had 94%
    # unpruned); 1e-2 is the rate `spaedge train` defaults to. Fine-pruning
    # updates every weight and keeps the usual fine-tuning rate.
    lr: float = 1e-2
    finetune_lr: float = 3e-3
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


class _Subset:
    """The first ``n`` images of a split (a fixed, seed-independent subset)."""

    def __init__(self, ds, n: int):
        self.ds, self.n = ds, min(n, len(ds))

    def __len__(self):
        return self.n

    def batch(self, idx):
        return self.ds.batch(idx)


def run_cell(cell: Cell, budget: Budget, out_dir: str, base: str = "tiny", base_weights: Optional[str] = None,
             data_dir: Optional[str] = None) -> dict:
    import torch

    torch.set_num_threads(1)  # one run per core
    from spaedge.adapters import learned_parameters
    from spaedge.methods import after_pruning, prepare_adapters, prune_options, score_batches
    from spaedge.models.stats import count_macs
    from spaedge.pack.bundle import TaskSpec, write_task
    from spaedge.pruning.prune import density, prune_to_density
    from spaedge.train import TrainConfig, build_task_model, evaluate, fit

    t0 = time.time()
    # "pear" uses Pear's default sharing map, "pear-<map>" another one (spaedge.adapters.pear.SHARE_MAPS)
    method, share = ("pear", cell.method[5:] or "nearest") if cell.method.startswith("pear") else (cell.method, "")
    cfg = TrainConfig(task=cell.task, base=base, base_weights=base_weights, data_dir=data_dir, method=method,
                      rank=max(cell.rank, 1), density=cell.density, criterion=cell.criterion, seed=cell.seed)
    torch.manual_seed(cell.seed)
    gen = torch.Generator().manual_seed(cell.seed)
    task, model, bhash = build_task_model(cfg)
    train = _Subset(task.split("train", augment=True), budget.train_limit)
    test = _Subset(task.split("test"), budget.test_limit)
    data = score_batches(_Subset(task.split("train"), budget.train_limit), budget.score_batches, seed=cell.seed)
    prepare_adapters(model, method=method, mask_criterion=budget.mask_criterion,
                     adapter_keep=budget.adapter_keep, data=data, input_size=task.input_size)
    kw = dict(lr=budget.finetune_lr if method == "finetune" else budget.lr, batch_size=budget.batch_size,
              generator=gen)
    fit(model, train, budget.epochs, **kw)
    if cell.density < 1.0:
        opts = prune_options(model, criterion=cell.criterion, schedule=cell.schedule, data=data)
        prune_to_density(model, torch.zeros(1, *task.input_size), cell.density, step_fraction=budget.prune_step,
                         criterion=cell.criterion,
                         recover=lambda s, d: fit(model, train, budget.recovery_epochs, **kw), **opts)
    pear = after_pruning(model, method=method, data=data, pear_share=share or "nearest")
    fit(model, train, budget.final_epochs, **kw)
    run_dir = Path(out_dir) / "bundles"
    run_dir.mkdir(parents=True, exist_ok=True)
    bundle = run_dir / f"{cell.key}.safetensors"
    write_task(model, TaskSpec.from_task(task), bhash, bundle)
    result = {**dataclasses.asdict(cell), "key": cell.key, "label": cell.label,
              "test_accuracy": evaluate(model, test), "density_reached": density(model),
              "learned_parameters": learned_parameters(model), "task_bundle_bytes": bundle.stat().st_size,
              "macs": count_macs(model, task.input_size), "seconds": round(time.time() - t0, 1),
              "budget": dataclasses.asdict(budget)}
    if pear:
        result.update(pear_shared=pear["shared"], pear_removed=pear["removed"])
    bundle.unlink()  # the numbers are what the table needs; keep the disk small
    return result


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _worker(args):
    cell, budget, out_dir, base, base_weights, data_dir = args
    res = run_cell(cell, budget, out_dir, base, base_weights, data_dir)
    _write_json(Path(out_dir) / "runs" / f"{cell.key}.json", res)
    return res


def run_grid(cells: list[Cell], budget: Budget, out_dir: str | Path, *, workers: int = 1, shard=(0, 1),
             base="tiny", base_weights=None, data_dir=None, log=print) -> list[dict]:
    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    i, n = shard
    mine = [c for k, c in enumerate(cells) if k % n == i]
    todo = [c for c in mine if not (out / "runs" / f"{c.key}.json").exists()]
    log(f"{len(mine)} runs in this shard, {len(mine) - len(todo)} already done, {len(todo)} to go")
    args = [(c, budget, str(out), base, base_weights, data_dir) for c in todo]
    t0 = time.time()
    done = 0
    if workers <= 1:
        for a in args:
            r = _worker(a)
            done += 1
            log(f"[{done}/{len(todo)}] {r['key']}: {r['test_accuracy']:.2%} ({r['seconds']}s, "
                f"{time.time() - t0:.0f}s elapsed)")
    else:
        import multiprocessing as mp
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
    import csv

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


def main(args) -> int:
    import shlex
    import sys

    if args.fast:
        cells, budget = fast_grid(), FAST_BUDGET
    else:
        tasks = tuple(args.tasks.split(";")) if args.tasks else DEFAULT_TASKS
        seeds = tuple(range(args.seeds))
        cells, budget = default_grid(tasks, seeds), Budget()
        if args.train_limit:
            budget.train_limit = args.train_limit
    try:
        i, n = (int(v) for v in args.shard.split("/"))
        if not 0 <= i < n:
            raise ValueError
    except ValueError:
        raise SystemExit(f"spaedge experiment: --shard must be I/N with 0 <= I < N, got {args.shard!r}")
    if not args.report_only:
        run_grid(cells, budget, args.out, workers=args.workers, shard=(i, n), base=args.base,
                 base_weights=args.base_weights, data_dir=args.data_dir,
                 log=lambda m: print(m, file=sys.stderr, flush=True))
    results = load_results(args.out)
    if not results:
        print("no finished runs yet", file=sys.stderr)
        return 1
    print(report(results, args.out, command="`spaedge " + " ".join(shlex.quote(a) for a in sys.argv[2:]) + "`"
                 if len(sys.argv) > 1 else ""))
    return 0


def add_parser(sub) -> None:
    e = sub.add_parser("experiment", help="methods x criteria x densities x ranks over tasks and seeds",
                       description=__doc__.split("\n\n")[0])
    e.add_argument("--out", default="experiment", help="results directory (resumes from its runs/)")
    e.add_argument("--fast", action="store_true", help="a few tiny runs (CI)")
    e.add_argument("--tasks", help="';'-separated task names (default: " + "; ".join(DEFAULT_TASKS) + ")")
    e.add_argument("--seeds", type=int, default=2, help="seeds per cell (default 2)")
    e.add_argument("--workers", type=int, default=2, help="parallel processes (default 2)")
    e.add_argument("--shard", default="0/1", help="run cells I, I+N, ... of the grid (I/N), for several machines")
    e.add_argument("--train-limit", type=int, help="cap on training images per task (default 400)")
    e.add_argument("--base", default="tiny")
    e.add_argument("--base-weights")
    e.add_argument("--data-dir")
    e.add_argument("--report-only", action="store_true", help="only rewrite the table from finished runs")
    e.set_defaults(func=main)
