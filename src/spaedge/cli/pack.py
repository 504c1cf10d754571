"""``spaedge pack``: write the base and task bundles, training the task first if needed."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from spaedge.argtypes import path_text
from spaedge.cli.common import (
    CliError,
    add_config_flags,
    add_env_flags,
    clean_killed_packs,
    config_from_args,
    env_from_args,
    human_bytes,
    human_count,
    print_table,
)
from spaedge.cli.quantize import add_calibration_flags
from spaedge.cli.train import TITLE
from spaedge.pack.format import read_metadata
from spaedge.pack.layout import base_bundle_path, run_dir_path, task_bundle_path
from spaedge.paths import WriteProblem, check_output_dir, check_output_file


def add_parser(sub) -> None:
    from spaedge.train import TrainConfig

    k = sub.add_parser(
        "pack",
        help="write base + task bundles (training first if needed)",
        description="Write DIR/base.safetensors (once) and DIR/TASK.safetensors, training the task "
        "with the given settings first if RUNS has no trained run of it for this base; "
        "then print sizes, MACs and test accuracy in PyTorch and in the C++ runtime. "
        "With --precision int8, also DIR/base.int8.safetensors (once) and "
        "DIR/TASK.int8.safetensors (as spaedge quantize writes them), with the int8 test "
        "accuracy in the runtime and its agreement with the fp32 model.",
    )
    k.add_argument(
        "--precision",
        dest="bundle_precision",
        type=_bundle_precision,
        default="fp32",
        metavar="{fp32,int8}",
        help="the bundles' precision (default fp32). int8 writes the fp32 pair and an int8 pair "
        "beside it (s8 weights, u8 activations calibrated on training images); the training "
        "arithmetic is --train-precision",
    )
    k.add_argument(
        "--out", type=path_text, default="bundles", help="bundle directory (default ./bundles)"
    )
    k.add_argument(
        "--runs",
        type=path_text,
        default="runs",
        help="directory of run directories (default ./runs)",
    )
    k.add_argument(
        "--retrain",
        action="store_true",
        help="train again even if a finished run exists (replacing it)",
    )
    k.add_argument(
        "--restart",
        action="store_true",
        help="discard an unfinished run's checkpoint instead of resuming it",
    )
    add_config_flags(k, TrainConfig, title=TITLE)
    add_env_flags(k, precision_flag="--train-precision")
    i8 = k.add_argument_group("int8 (with --precision int8)")
    add_calibration_flags(i8, random=False)
    k.set_defaults(func=main)


def _bundle_precision(text: str) -> str:
    from spaedge.pack.layout import BUNDLE_PRECISIONS
    from spaedge.train.device import PRECISIONS

    if text in BUNDLE_PRECISIONS:
        return text
    if text in PRECISIONS:  # before int8, pack's --precision was the training arithmetic
        raise argparse.ArgumentTypeError(
            f"{text!r} is a training arithmetic: in spaedge pack that is --train-precision "
            f"{text}; --precision is the bundles' (fp32 or int8)"
        )
    raise argparse.ArgumentTypeError(
        f"expected fp32 or int8 (the bundles' precision), got {text!r}"
    )


def find_run(run_dir: Path, cfg, base_hash: str, identity: dict | None = None) -> bool:
    """Whether ``run_dir`` holds a finished run of exactly this config (task
    included) against this base and, when ``identity`` is given, on the same
    base weights and data (spaedge.train.identity). A finished run of other
    settings or inputs is an error
    (never packed in their place, never replaced without --retrain); an
    unfinished one (a checkpoint, no manifest) is resumed by training."""
    from spaedge.train import TrainConfig
    from spaedge.train.identity import differences
    from spaedge.train.rundir import is_run, read_identity, read_run, read_run_json

    if not is_run(run_dir):
        return False
    files = read_run(
        run_dir, ("config.json", "task.safetensors")
    )  # checked against the run's manifest
    try:
        had = TrainConfig.from_json(
            read_run_json(run_dir, "config.json", files["config.json"])
        ).to_json()
    except (TypeError, ValueError) as e:
        raise CliError(
            f"{run_dir}/config.json is not a training config ({e}): pass --retrain"
        ) from None
    want = cfg.to_json()
    diff = [k for k in want if had.get(k) != want[k]]
    if diff:
        what = ", ".join(f"{k} {had.get(k)!r} there, {want[k]!r} now" for k in diff[:3])
        raise CliError(
            f"{run_dir} holds a run with other settings ({what}{', ...' if len(diff) > 3 else ''}): "
            "pass --retrain to replace it, or --runs another directory to keep both"
        )
    if read_metadata(run_dir / "task.safetensors").get("base_hash") != base_hash:
        raise CliError(
            f"{run_dir} was trained against another base than --base {cfg.base}: pass --retrain"
        )
    if identity is not None:
        what = differences(read_identity(run_dir), identity)
        if what:
            raise CliError(
                f"{run_dir} holds a run of these settings on other inputs ({'; '.join(what)}): "
                "pass --retrain to replace it, or --runs another directory to keep both"
            )
    return True


METRICS = ("whole_model_bytes", "density", "macs", "macs_unpruned", "learned_parameters")


def _metrics(run_dir: Path, data: bytes) -> dict:
    """The run's metrics.json, with the numbers ``pack`` prints checked."""
    import math

    from spaedge.train.rundir import read_run_json

    metrics = read_run_json(run_dir, "metrics.json", data)
    for k in METRICS:
        v = metrics.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise CliError(
                f"{run_dir}/metrics.json: field {k!r} must be a non-negative number, got {v!r}: "
                "pass --retrain"
            )
    if metrics["macs_unpruned"] <= 0:
        raise CliError(
            f"{run_dir}/metrics.json: field 'macs_unpruned' must be positive: pass --retrain"
        )
    return metrics


def main(args) -> int:
    import numpy as np

    from spaedge.pack.bundle import base_bundle, load_task_model
    from spaedge.pack.format import atomic_write_bytes, serialise
    from spaedge.progress import Reporter
    from spaedge.tasks import get_task
    from spaedge.train import TrainConfig, predict, run
    from spaedge.train.identity import run_identity
    from spaedge.train.rundir import read_run
    from spaedge.train.setup import load_base, resolve

    env = env_from_args(args)
    cfg = config_from_args(TrainConfig, args)
    # Every path first: a bad one costs a second, not the training before it.
    out = check_output_dir(args.out, "--out")
    base_path = check_output_file(base_bundle_path(out), "the base bundle")
    task_path = check_output_file(task_bundle_path(out, cfg.task), "the task bundle")
    int8 = args.bundle_precision == "int8"
    if int8:
        check_output_file(base_bundle_path(out, "int8"), "the int8 base bundle")
        check_output_file(task_bundle_path(out, cfg.task, "int8"), "the int8 task bundle")
    run_dir = check_output_dir(
        run_dir_path(check_output_dir(args.runs, "--runs"), cfg.task), "the run directory"
    )
    have = read_metadata(base_path).get("content_hash", "") if base_path.exists() else None
    cfg = resolve(cfg, allow_download=env.download, log=print)
    base_bytes, bhash = serialise(*base_bundle(load_base(cfg)))
    if have is not None and have != bhash:
        raise CliError(
            f"{base_path} holds another base ({have[:12]}...) than --base {cfg.base} "
            f"({bhash[:12]}...): task bundles of one directory share one base; "
            "pack into another --out directory"
        )
    if int8:  # an int8 base of another base there: said before the training
        from spaedge.cli.quantize import int8_base_state

        int8_base_state(base_path, out, bhash)
    identity = run_identity(get_task(cfg.task, data_dir=cfg.data_dir), bhash)
    if not args.retrain and find_run(run_dir, cfg, bhash, identity):
        print(f"using the trained run {run_dir} (pass --retrain to train again)")
    else:
        print(f"training {cfg.task} with these settings -> {run_dir}")
        with Reporter() as rep:
            run(cfg, run_dir, reporter=rep, env=env, resume=not args.restart)
    files = read_run(run_dir, ("task.safetensors", "metrics.json"))
    metrics = _metrics(run_dir, files["metrics.json"])
    if not base_path.exists():
        atomic_write_bytes(base_path, base_bytes)
        print(f"wrote {base_path} ({human_bytes(len(base_bytes))}, base {bhash[:12]})")
    else:
        print(f"{base_path} already holds this base ({bhash[:12]}); left as it is")

    # The new bundle is checked beside the old one (PyTorch from the bundles,
    # and the C++ runtime) and replaces it only if it passes.
    task_bytes = len(files["task.safetensors"])
    new_path = task_path.with_name(f".{task_path.name}.new-{os.getpid()}")
    clean_killed_packs(task_path)
    try:
        try:
            atomic_write_bytes(new_path, files["task.safetensors"])
        except WriteProblem as e:  # named as the bundle the user asked for
            raise WriteProblem(task_path, e.error) from None
        model, spec, _ = load_task_model(base_path, new_path)
        task = get_task(cfg.task, data_dir=cfg.data_dir, input_size=spec.input_size)
        test = task.split("test")
        ref_logits, labels = predict(model, test, env=env)
        rows = [
            (
                "task bundle",
                f"{human_bytes(task_bytes)}  (the same pruned model stored whole: "
                f"{human_bytes(metrics['whole_model_bytes'])}, "
                f"{metrics['whole_model_bytes'] / task_bytes:.1f}x larger)",
            ),
            ("base bundle", human_bytes(base_path.stat().st_size)),
            ("density", f"{metrics['density']:.1%} of the base's weights"),
            (
                "MACs kept",
                f"{human_count(metrics['macs'])} of {human_count(metrics['macs_unpruned'])} "
                f"({metrics['macs'] / metrics['macs_unpruned']:.1%})",
            ),
            ("learned parameters", human_count(metrics["learned_parameters"])),
            (
                "test accuracy, PyTorch",
                f"{(ref_logits.argmax(1) == labels).mean():.2%} ({len(labels)} images)",
            ),
        ]
        from spaedge.cli.quantize import check_rows
        from spaedge.runtime import Runtime

        rt = Runtime(str(base_path))
        rt.load_task(str(new_path))
        X, _ = task.arrays("test")
        logits = rt.run(np.ascontiguousarray(X.numpy()))
        check, agree, rel = check_rows(
            logits, ref_logits, labels, rt.isa, "test accuracy, runtime", "runtime vs PyTorch"
        )
        rows += check
        if agree < 0.999 or rel > 1e-3:
            print(f"packed {cfg.task} (not installed):")
            print_table(rows)
            print(
                f"error: the runtime and PyTorch disagree more than they should; {task_path} was left as it "
                "was. Please report this.",
                file=sys.stderr,
            )
            return 1
        try:
            os.replace(new_path, task_path)
        except OSError as e:
            raise WriteProblem(task_path, e) from None
    finally:
        new_path.unlink(missing_ok=True)
    print(f"wrote {task_path} ({human_bytes(task_bytes)})")
    if int8:
        rows += _pack_int8(
            args, cfg.task, base_path, task_path, task, (X.numpy(), labels), ref_logits
        )
    print(f"packed {cfg.task}:")
    print_table(rows)
    return 0


def _pack_int8(args, name: str, base_path: Path, task_path: Path, task, test, ref_logits) -> list:
    """The int8 pair beside the fp32 one just installed (``spaedge quantize``'s
    steps), and the rows its check adds to pack's table."""
    from spaedge.cli.quantize import calibration_data, install_int8_base, size_row, write_int8_task
    from spaedge.pack.calibrate import validation_images
    from spaedge.pack.layout import task_bundle_path

    int8_base = install_int8_base(base_path, base_path.parent, called="this base")
    int8_task = task_bundle_path(base_path.parent, name, "int8")
    images, split, selection, seed = calibration_data(task, args.calibration, None)
    rows = write_int8_task(
        base_path,
        task_path,
        int8_base,
        int8_task,
        images,
        statistic=args.calibration_statistic,
        val=validation_images(task),
        split=split,
        selection=selection,
        seed=seed,
        test=test,
        ref_logits=ref_logits,
    )
    print(f"wrote {int8_task}")
    return rows + [size_row(base_path, task_path, int8_base, int8_task)]
