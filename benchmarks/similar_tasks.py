"""One-shot pruning from similar tasks vs pruning from scratch, at equal training budget.

    python benchmarks/similar_tasks.py --out runs/similar [--workers 2] [--seeds 0 1]

Everything runs through the ``spaedge`` CLI (the commands are printed):

1. Library: ``spaedge train`` (the SPA protocol: adapt, iterative pruning with
   recovery epochs, final epochs) on tasks *related to but different from* the
   new ones: Fashion-MNIST class pairs 6,7 and 8,9 and the digit halves 0-4 and
   5-9, at each density; ``spaedge library add`` collects their plans.
2. New tasks, never in the library: ``fashion_mnist_new`` (classes 6-9, 4-way)
   and ``digits`` (10-way). Each at each density and seed with the same total
   training epochs (``BUDGET``) in every arm:
   - scratch, one-shot magnitude: adapt, prune once (L1), train;
   - scratch, one-shot Taylor: adapt, prune once (first-order Taylor), train;
   - scratch, magnitude at init: prune once before training (L1 of the base
     weights), train: the control for "pruned before training";
   - similar: prune once before any training by the library vote, train;
   - similar at half the epochs;
   - control: the same vote from a library holding only the other domain's
     tasks (digits plans for the Fashion task, Fashion plans for digits).
3. A Markdown table of test accuracy (mean ± std over seeds) to ``OUT/similar.md``.

``--library-criterion taylor`` builds the library with first-order Taylor
pruning instead of magnitude; ``--densities`` and ``--arms WORD...`` narrow
the grid (finished runs are skipped, so an interrupted run continues).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from spaedge.pack.layout import safe_name

LIBRARY_TASKS = ["fashion_mnist:6,7", "fashion_mnist:8,9", "digits:0-4", "digits:5-9"]
NEW_TASKS = ["fashion_mnist_new", "digits"]
DENSITIES = [0.1, 0.3]
TRAIN_LIMIT = 1000
BUDGET = 4  # training epochs of every arm on the new task
LIBRARY_FLAGS = [
    "--epochs",
    "3",
    "--recovery-epochs",
    "1",
    "--final-epochs",
    "2",
    "--prune-step",
    "0.15",
]
ARMS = {
    "scratch, one-shot magnitude": [
        "--schedule",
        "oneshot",
        "--criterion",
        "magnitude",
        "--epochs",
        "2",
        "--recovery-epochs",
        "0",
        "--final-epochs",
        "2",
    ],
    "scratch, one-shot Taylor": [
        "--schedule",
        "oneshot",
        "--criterion",
        "taylor",
        "--epochs",
        "2",
        "--recovery-epochs",
        "0",
        "--final-epochs",
        "2",
    ],
    "scratch, magnitude at init": [
        "--schedule",
        "oneshot",
        "--criterion",
        "magnitude",
        "--epochs",
        "0",
        "--recovery-epochs",
        "0",
        "--final-epochs",
        "4",
    ],
    "similar tasks (vote of 3)": ["--schedule", "similar", "--epochs", "2", "--final-epochs", "2"],
    "similar tasks, half the epochs": [
        "--schedule",
        "similar",
        "--epochs",
        "1",
        "--final-epochs",
        "1",
    ],
    "other-domain tasks only (control)": [
        "--schedule",
        "similar",
        "--epochs",
        "2",
        "--final-epochs",
        "2",
        "--neighbours",
        "2",
    ],
}
EPOCHS = {"similar tasks, half the epochs": BUDGET // 2}


def _spaedge(args: list[str], log) -> None:
    cmd = [sys.executable, "-m", "spaedge.cli", *args]
    log("spaedge " + " ".join(args))
    r = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    if r.returncode != 0:
        raise RuntimeError(f"failed: {' '.join(args)}\n{r.stderr[-2000:]}")


def main(argv=None) -> int:
    global DENSITIES, ARMS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/similar")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--densities", type=float, nargs="+", default=DENSITIES)
    ap.add_argument(
        "--library-criterion", default="magnitude", help="criterion of the library runs"
    )
    ap.add_argument(
        "--arms", nargs="+", help="only the arms whose name contains one of these words"
    )
    a = ap.parse_args(argv)
    DENSITIES = a.densities
    if a.arms:
        ARMS = {k: v for k, v in ARMS.items() if any(w in k for w in a.arms)}
    LIBRARY_FLAGS.extend(["--criterion", a.library_criterion])
    out = Path(a.out)
    # lr and batch pinned (the TrainConfig defaults changed after these tables were made)
    common = ["--train-limit", str(TRAIN_LIMIT), "--lr", "0.003", "--batch-size", "64"]

    def pool_run(jobs):
        with ThreadPoolExecutor(a.workers) as pool:
            list(
                pool.map(
                    lambda j: (
                        _spaedge(j, print)
                        if not Path(j[j.index("--out") + 1], "metrics.json").exists()
                        else None
                    ),
                    jobs,
                )
            )

    lib_jobs = []
    for d in DENSITIES:
        for t in LIBRARY_TASKS:
            lib_jobs.append(
                [
                    "train",
                    "--task",
                    t,
                    "--density",
                    str(d),
                    "--out",
                    str(out / f"lib_runs/d{int(d * 100)}/{safe_name(t)}"),
                    *LIBRARY_FLAGS,
                    *common,
                ]
            )
    pool_run(lib_jobs)
    for d in DENSITIES:
        runs = [str(out / f"lib_runs/d{int(d * 100)}/{safe_name(t)}") for t in LIBRARY_TASKS]
        _spaedge(["library", "add", *runs, "--to", str(out / f"lib{int(d * 100)}")], print)
        for dom in ("digits", "fashion"):
            _spaedge(
                [
                    "library",
                    "add",
                    *[r for r in runs if Path(r).name.startswith(dom)],
                    "--to",
                    str(out / f"lib{int(d * 100)}_{dom}"),
                ],
                print,
            )

    jobs = []
    for t in NEW_TASKS:
        for d in DENSITIES:
            for s in a.seeds:
                for arm, flags in ARMS.items():
                    extra = (
                        ["--library", str(out / f"lib{int(d * 100)}")] if "similar" in arm else []
                    )
                    if "other-domain" in arm:
                        other = "fashion" if t.startswith("digits") else "digits"
                        extra = ["--library", str(out / f"lib{int(d * 100)}_{other}")]
                    run_dir = (
                        out / "new" / f"{safe_name(t)}__d{int(d * 100)}__{safe_name(arm)}__s{s}"
                    )
                    jobs.append(
                        [
                            "train",
                            "--task",
                            t,
                            "--density",
                            str(d),
                            "--seed",
                            str(s),
                            "--out",
                            str(run_dir),
                            *flags,
                            *extra,
                            *common,
                        ]
                    )
    pool_run(jobs)

    lines = [
        "| new task | density | method | epochs | test accuracy % (mean ± std) | seconds | nearest tasks (weight) |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in NEW_TASKS:
        for d in DENSITIES:
            for arm in ARMS:
                ms = []
                for s in a.seeds:
                    p = (
                        out
                        / "new"
                        / f"{safe_name(t)}__d{int(d * 100)}__{safe_name(arm)}__s{s}"
                        / "metrics.json"
                    )
                    ms.append(json.loads(p.read_text()))
                acc = [m["test_accuracy"] * 100 for m in ms]
                sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
                near = ", ".join(
                    f"{n['task']} ({n['weight']:.2f})" for n in ms[0].get("similar_tasks", [])
                )
                lines.append(
                    f"| {t} | {d:.0%} | {arm} | {EPOCHS.get(arm, BUDGET)} | {statistics.mean(acc):.1f} ± {sd:.1f} "
                    f"| {statistics.mean(m['seconds'] for m in ms):.0f} | {near or '–'} |"
                )
    lib = ["| library task | density | test accuracy % |", "|---|---|---|"]
    for d in DENSITIES:
        for t in LIBRARY_TASKS:
            m = json.loads(
                (out / f"lib_runs/d{int(d * 100)}/{safe_name(t)}/metrics.json").read_text()
            )
            lib.append(f"| {t} | {d:.0%} | {m['test_accuracy'] * 100:.1f} |")
    text = "\n".join(lines) + "\n\n" + "\n".join(lib) + "\n"
    (out / "similar.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
