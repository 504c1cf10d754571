"""``spaedge pack``: write the base and task bundles, training the task first if needed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from spaedge.cli.common import (CliError, add_config_flags, add_env_flags, config_from_args, env_from_args,
                                human_bytes, human_count, print_table)
from spaedge.cli.train import TITLE
from spaedge.errors import BundleError
from spaedge.pack.format import read_metadata
from spaedge.pack.layout import base_bundle_path, run_dir_path, task_bundle_path


def add_parser(sub) -> None:
    from spaedge.train import TrainConfig

    k = sub.add_parser("pack", help="write base + task bundles (training first if needed)",
                       description="Write DIR/base.safetensors (once) and DIR/TASK.safetensors, training the task "
                                   "with the given settings first if RUNS has no trained run of it for this base; "
                                   "then print sizes, MACs and test accuracy in PyTorch and in the C++ runtime.")
    k.add_argument("--out", default="bundles", help="bundle directory (default ./bundles)")
    k.add_argument("--runs", default="runs", help="directory of run directories (default ./runs)")
    k.add_argument("--retrain", action="store_true", help="train again even if a run exists")
    add_config_flags(k, TrainConfig, title=TITLE)
    add_env_flags(k)
    k.set_defaults(func=main)


def find_run(runs: Path, task: str, base_hash: str) -> Path | None:
    """The run directory of this task if it was trained against this base."""
    run_dir = run_dir_path(runs, task)
    bundle = run_dir / "task.safetensors"
    if not bundle.exists():
        return None
    try:
        meta = read_metadata(bundle)
    except BundleError:
        return None
    return run_dir if meta.get("base_hash") == base_hash else None


def main(args) -> int:
    import numpy as np

    from spaedge.pack.bundle import base_bundle, load_task_model
    from spaedge.pack.format import atomic_write_bytes, serialise
    from spaedge.progress import Reporter
    from spaedge.tasks import get_task
    from spaedge.train import TrainConfig, predict, run
    from spaedge.train.setup import load_base, resolve

    env = env_from_args(args)
    cfg = resolve(config_from_args(TrainConfig, args), allow_download=env.download, log=print)
    out = Path(args.out)
    base_bytes, bhash = serialise(*base_bundle(load_base(cfg)))
    base_path = base_bundle_path(out)
    if base_path.exists():
        have = read_metadata(base_path).get("content_hash")
        if have != bhash:
            raise CliError(f"{base_path} holds another base ({have[:12]}...) than --base {cfg.base} "
                           f"({bhash[:12]}...): task bundles of one directory share one base; "
                           "pack into another --out directory")
    run_dir = None if args.retrain else find_run(Path(args.runs), cfg.task, bhash)
    if run_dir is None:
        run_dir = run_dir_path(args.runs, cfg.task)
        print(f"no trained run of {cfg.task} for this base yet: training it with these settings -> {run_dir}")
        with Reporter() as rep:
            run(cfg, run_dir, reporter=rep, env=env)
    else:
        print(f"using the trained run {run_dir} (pass --retrain to train again)")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if not base_path.exists():
        atomic_write_bytes(base_path, base_bytes)
        print(f"wrote {base_path} ({human_bytes(len(base_bytes))}, base {bhash[:12]})")
    else:
        print(f"{base_path} already holds this base ({bhash[:12]}); left as it is")
    task_path = task_bundle_path(out, cfg.task)
    atomic_write_bytes(task_path, (run_dir / "task.safetensors").read_bytes())
    task_bytes = task_path.stat().st_size
    print(f"wrote {task_path} ({human_bytes(task_bytes)})")

    # Check what was packed: PyTorch from the bundles, and the C++ runtime.
    model, spec, _ = load_task_model(base_path, task_path)
    task = get_task(cfg.task, data_dir=cfg.data_dir, input_size=spec.input_size)
    test = task.split("test")
    ref_logits, labels = predict(model, test, env=env)
    rows = [
        ("task bundle", f"{human_bytes(task_bytes)}  (the same pruned model stored whole: "
                        f"{human_bytes(metrics['whole_model_bytes'])}, "
                        f"{metrics['whole_model_bytes'] / task_bytes:.1f}x larger)"),
        ("base bundle", human_bytes(base_path.stat().st_size)),
        ("density", f"{metrics['density']:.1%} of the base's weights"),
        ("MACs kept", f"{human_count(metrics['macs'])} of {human_count(metrics['macs_unpruned'])} "
                      f"({metrics['macs'] / metrics['macs_unpruned']:.1%})"),
        ("learned parameters", human_count(metrics["learned_parameters"])),
        ("test accuracy, PyTorch", f"{(ref_logits.argmax(1) == labels).mean():.2%} ({len(labels)} images)"),
    ]
    try:
        from spaedge.runtime import Runtime
    except ImportError as e:
        rows.append(("test accuracy, runtime", f"unavailable: the C++ runtime is not built ({e})"))
        print(f"packed {cfg.task}:")
        print_table(rows)
        return 0
    rt = Runtime(str(base_path))
    rt.load_task(str(task_path))
    X, _ = task.arrays("test")
    logits = rt.run(np.ascontiguousarray(X.numpy()))
    agree = float((logits.argmax(1) == ref_logits.argmax(1)).mean())
    scale = float(np.abs(ref_logits).max()) or 1.0
    rel = float(np.abs(logits - ref_logits).max()) / scale
    rows += [
        ("test accuracy, runtime", f"{(logits.argmax(1) == labels).mean():.2%} ({rt.isa} kernels)"),
        ("runtime vs PyTorch", f"{agree:.2%} same predictions, max logit difference {rel:.1e} of scale"),
    ]
    print(f"packed {cfg.task}:")
    print_table(rows)
    if agree < 0.999 or rel > 1e-3:
        print("warning: the runtime and PyTorch disagree more than they should; please report this",
              file=sys.stderr)
        return 1
    return 0
