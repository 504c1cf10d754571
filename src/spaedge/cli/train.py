"""``spaedge train``: adapt, prune and train a task into a run directory."""

from __future__ import annotations

import os
from pathlib import Path

from spaedge.argtypes import path_text
from spaedge.cli.common import (
    add_config_flags,
    add_env_flags,
    config_from_args,
    env_from_args,
    human_count,
    print_table,
)

TITLE = "training (defaults are the embedded default's)"


def add_parser(sub) -> None:
    from spaedge.train import TrainConfig

    t = sub.add_parser(
        "train",
        help="prune and adapt a task into a run directory",
        description="Adapt the base to a task, prune it iteratively to the target density with "
        "recovery epochs, and write a run directory (task bundle, config, metrics).",
    )
    t.add_argument(
        "--runs",
        type=path_text,
        default="runs",
        help="directory of run directories (default ./runs)",
    )
    t.add_argument("--out", type=path_text, help="run directory (default RUNS/TASK)")
    t.add_argument(
        "--restart",
        action="store_true",
        help="discard an unfinished run's checkpoint in the run directory instead of resuming it",
    )
    add_config_flags(t, TrainConfig, title=TITLE)
    add_env_flags(t)
    t.set_defaults(func=main)


def main(args) -> int:
    # The toolchain (torch) is imported when a command runs, not when the
    # parser is built: `spaedge run/info` on a device has no torch.
    from spaedge.pack.layout import run_dir_path
    from spaedge.paths import check_output_dir
    from spaedge.progress import Reporter
    from spaedge.train import TrainConfig, distributed, run

    cfg = config_from_args(TrainConfig, args)
    out = check_output_dir(
        args.out if args.out else run_dir_path(check_output_dir(args.runs, "--runs"), cfg.task),
        "the run directory",
    )
    # Under torchrun: DDP over the processes (gloo), rank 0 writes and prints (spaedge.train.distributed).
    ddp = distributed.init_from_env()
    dump = os.environ.get(
        "SPAEDGE_DDP_STATE_HASH"
    )  # debug/tests: every rank writes its model's hash

    def on_model(model) -> None:
        if dump:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"state-rank{distributed.rank()}.sha256").write_text(
                distributed.state_hash(model) + "\n"
            )

    is_main = distributed.is_main()
    with Reporter(enabled=is_main) as rep:
        if ddp and is_main:
            rep.log(f"data-parallel over {distributed.world_size()} processes (torchrun, gloo)")
        metrics = run(
            cfg,
            out,
            reporter=rep,
            on_model=on_model,
            env=env_from_args(args),
            resume=not args.restart,
        )
    distributed.finish()  # on an error the process exits and torchrun stops the others
    if is_main:
        report_run(metrics, out)
    return 0


def report_run(m: dict, out: Path) -> None:
    print(f"trained {m['task']} in {m['seconds']} s -> {out}")
    print_table(
        [
            ("test accuracy", f"{m['test_accuracy']:.2%} (val {m['val_accuracy']:.2%})"),
            ("density", f"{m['density']:.1%} of the base's weights"),
            ("MACs", f"{human_count(m['macs'])} (unpruned {human_count(m['macs_unpruned'])})"),
            ("learned parameters", human_count(m["learned_parameters"])),
        ]
    )
