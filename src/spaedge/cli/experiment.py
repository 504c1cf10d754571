"""``spaedge experiment``: the methods x criteria x densities x ranks grid, resumable and shardable."""

from __future__ import annotations

import shlex
import sys

from spaedge.argtypes import nonneg_int, path_text, positive_int
from spaedge.cli.common import CliError, add_config_flags, add_env_flags, env_from_args

DESCRIPTION = (
    "Run the comparison grid (methods x criteria x densities x ranks over tasks and seeds) through the "
    "training pipeline and write results.md, results.csv and results.png; finished runs are kept in "
    "OUT/runs and skipped on a rerun."
)


def add_parser(sub) -> None:
    from spaedge.experiment import DEFAULT_LRS, DEFAULT_TASKS
    from spaedge.train import TrainConfig

    e = sub.add_parser(
        "experiment",
        help="methods x criteria x densities x ranks over tasks and seeds",
        description=DESCRIPTION,
    )
    e.add_argument(
        "--out",
        type=path_text,
        default="experiment",
        help="results directory (resumes from its runs/)",
    )
    e.add_argument("--fast", action="store_true", help="a few tiny runs (CI)")
    e.add_argument(
        "--tasks", help="';'-separated task names (default: " + "; ".join(DEFAULT_TASKS) + ")"
    )
    e.add_argument(
        "--seeds", type=positive_int, help="seeds per cell at its chosen rate (default 3)"
    )
    e.add_argument(
        "--report-selection-seed",
        action="store_true",
        help="report seed 0 (the run that chose the rate) among the --seeds; by default it only "
        "chooses the rate and seeds 1..N are reported (one run more per cell)",
    )
    e.add_argument(
        "--lrs",
        help="comma-separated learning rates every method is tried at (default "
        + ",".join(f"{lr:g}" for lr in DEFAULT_LRS)
        + ")",
    )
    e.add_argument(
        "--total-epochs", type=nonneg_int, help="epochs of every run in all (default 30)"
    )
    e.add_argument(
        "--patience",
        type=nonneg_int,
        help="early stopping in the final phase after N epochs without "
        "a better validation accuracy, keeping the best epoch's "
        "model (default 0: off, every epoch runs)",
    )
    e.add_argument("--methods", help="comma-separated methods: only the grid's cells of these")
    e.add_argument(
        "--densities",
        help="comma-separated densities (fractions of the weights kept, e.g. 0.3): only "
        "the grid's cells at these (the grid has 1, 0.3 and 0.1)",
    )
    e.add_argument(
        "--only",
        metavar="REGEX",
        help="only the grid's cells whose key matches (a Python regular "
        "expression searched in keys like "
        "digits__splora-r8__d30__magnitude__iterative)",
    )
    e.add_argument("--workers", type=int, default=2, help="parallel processes (default 2)")
    e.add_argument(
        "--shard",
        default="0/1",
        help="run cells I, I+N, ... of the grid (I/N), for several machines",
    )
    e.add_argument(
        "--train-limit", type=positive_int, help="cap on training images per task (default 400)"
    )
    add_config_flags(e, TrainConfig, names=["base", "base_weights", "data_dir"])
    add_env_flags(e)
    e.add_argument(
        "--report-only", action="store_true", help="only rewrite the table from finished runs"
    )
    e.set_defaults(func=main)


def main(args) -> int:
    import dataclasses
    import re

    from spaedge.experiment import (
        DEFAULT_TASKS,
        FAST_BUDGET,
        Budget,
        check_budget,
        default_grid,
        fast_grid,
        load_results,
        report,
        run_grid,
    )

    if args.fast:
        cells, budget = fast_grid(), FAST_BUDGET
    else:
        tasks = tuple(args.tasks.split(";")) if args.tasks else DEFAULT_TASKS
        cells, budget = default_grid(tasks), Budget()
    if args.methods:
        keep = set(args.methods.split(","))
        cells = [c for c in cells if c.method in keep]
        if not cells:
            raise CliError(f"--methods {args.methods!r} selects no cell of the grid")
    if args.densities:
        try:
            wanted = [float(v) for v in args.densities.split(",")]
        except ValueError:
            raise CliError(
                f"--densities must be numbers separated by commas, got {args.densities!r}"
            ) from None
        cells = [c for c in cells if any(abs(c.density - d) < 1e-9 for d in wanted)]
        if not cells:
            raise CliError(
                f"--densities {args.densities!r} selects no cell of the grid (it has 1, 0.3 and 0.1)"
            )
    if args.only:
        try:
            pattern = re.compile(args.only)
        except re.error as e:
            raise CliError(f"--only {args.only!r} is not a regular expression: {e}") from None
        cells = [c for c in cells if pattern.search(c.config_key)]
        if not cells:
            raise CliError(f"--only {args.only!r} matches no cell of the grid")
    try:
        i, n = (int(v) for v in args.shard.split("/"))
        if not 0 <= i < n:
            raise ValueError
    except ValueError:
        raise CliError(f"--shard must be I/N with 0 <= I < N, got {args.shard!r}") from None
    changes = {
        k: v
        for k, v in (
            ("seeds", args.seeds),
            ("train_limit", args.train_limit),
            ("total_epochs", args.total_epochs),
            ("early_stopping", args.patience),
        )
        if v is not None
    }
    if args.lrs:
        try:
            changes["lrs"] = tuple(float(v) for v in args.lrs.split(","))
        except ValueError:
            raise CliError(f"--lrs must be numbers separated by commas, got {args.lrs!r}") from None
    if args.report_selection_seed:
        changes["held_out_selection"] = False
    budget = dataclasses.replace(budget, **changes)
    check_budget(args.out, budget)  # before any run, and before a table mixes budgets
    if not args.report_only:
        run_grid(
            cells,
            budget,
            args.out,
            workers=args.workers,
            shard=(i, n),
            base=args.base,
            base_weights=args.base_weights,
            data_dir=args.data_dir,
            env=env_from_args(args),
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )
    results = load_results(args.out)
    if not results:
        print("no finished runs yet", file=sys.stderr)
        return 1
    command = (
        "`spaedge " + " ".join(shlex.quote(a) for a in sys.argv[1:]) + "`"
        if len(sys.argv) > 1
        else ""
    )
    print(report(results, args.out, budget, command=command, data_dir=args.data_dir))
    return 0
