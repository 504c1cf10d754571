"""The ``spaedge`` command.

    spaedge pack --task digits            prune, train (if needed) and pack a task
    spaedge train --task digits           prune and train a task into a run directory
    spaedge run --bundles DIR --task T    run a packed task in the C++ runtime
    spaedge info BUNDLE                   what a bundle holds
    spaedge pretrain                      recreate the built-in base's weights
    spaedge tasks                         the tasks spaedge knows

Every command prints what it did in words a person reads; errors are one
clear line (exit code 2), never a traceback, for bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from spaedge.errors import BundleError

EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


# ----------------------------------------------------------------- helpers
def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _human_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{int(n)}"


def _safe_name(task: str) -> str:
    """A file name for a task name (imagefolder paths and class lists included)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task).strip("_") or "task"


def _density(text: str) -> float:
    # A bare number above 1 is refused rather than read as a percentage:
    # "--density 2" is more likely a slip than a wish for 2%.
    try:
        v = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        v = float("nan")
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"density must be in (0, 1] or (0%, 100%], e.g. 0.3 or 30%; got {text}")
    return v


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return v


def _nonneg_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text}")
    return v


def _add_training_flags(p: argparse.ArgumentParser) -> None:
    from spaedge.train import TrainConfig

    d = TrainConfig()
    g = p.add_argument_group("training (defaults are the embedded default's)")
    g.add_argument("--base", default=d.base, help=f"base network: tiny (built-in), resnet18/34/50[-cifar] (default {d.base})")
    g.add_argument("--base-weights", help="weights file for the base (.pth state dict or .safetensors, torchvision names)")
    g.add_argument("--data-dir", help="where the task's data is (for fashion_mnist, flowers, cifar10)")
    g.add_argument("--method", default=d.method,
                   choices=["splora", "finetune", "sppara", "splopa", "sparse", "sparse-large", "pear"],
                   help="splora: frozen base + low-rank adapters (default); finetune: train every kept weight (baseline); "
                        "pear: splora, then the least important adapters are pruned and shared (--pear-*)")
    g.add_argument("--pear-prune", type=float, default=d.pear_prune,
                   help=f"for --method pear: fraction of adapters pruned after channel pruning (default {d.pear_prune})")
    g.add_argument("--pear-share", default=d.pear_share, choices=["nearest", "important", "none"],
                   help="for --method pear: a pruned position takes the same-shape kept adapter nearest in depth "
                        "(default), the most important one, or none (adapter removed)")
    g.add_argument("--rank", type=_positive_int, default=d.rank, help=f"adapter rank (default {d.rank})")
    g.add_argument("--density", type=_density, default=d.density,
                   help=f"fraction of the base's weights to keep, e.g. 0.3 or 30%% (default {d.density})")
    g.add_argument("--criterion", default=d.criterion, choices=["magnitude", "l1", "gradient", "taylor", "lrp"],
                   help="channel importance")
    g.add_argument("--schedule", default=d.schedule, choices=["iterative", "oneshot", "similar"],
                   help="iterative: --prune-step of the filters per step with recovery epochs (default); "
                        "oneshot: prune once to the density; similar: prune once before training by the "
                        "similarity-weighted vote of the nearest tasks in --library (see `spaedge library -h`)")
    g.add_argument("--library", help="for --schedule similar: a library directory (`spaedge library add`), run "
                                     "directories or a directory of runs; several separated by commas")
    g.add_argument("--neighbours", type=_positive_int, default=d.neighbours,
                   help=f"for --schedule similar: nearest library tasks that vote (default {d.neighbours})")
    g.add_argument("--train-limit", type=_nonneg_int, default=d.train_limit,
                   help="train on the first N training images only (default 0: all)")
    g.add_argument("--prune-step", type=float, default=d.prune_step,
                   help=f"fraction of filters removed per pruning step (default {d.prune_step})")
    g.add_argument("--epochs", type=_nonneg_int, default=d.epochs, help=f"adaptation epochs before pruning (default {d.epochs})")
    g.add_argument("--recovery-epochs", type=_nonneg_int, default=d.recovery_epochs,
                   help=f"epochs after each pruning step (default {d.recovery_epochs})")
    g.add_argument("--final-epochs", type=_nonneg_int, default=d.final_epochs,
                   help=f"epochs after the last pruning step (default {d.final_epochs})")
    g.add_argument("--batch-size", type=_positive_int, default=d.batch_size)
    g.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr})")
    g.add_argument("--seed", type=int, default=d.seed)


def _config(args):
    from spaedge.train import TrainConfig

    return TrainConfig(task=args.task, base=args.base, base_weights=args.base_weights, data_dir=args.data_dir,
                       method=args.method, rank=args.rank, density=args.density, criterion=args.criterion,
                       schedule=args.schedule, library=args.library, neighbours=args.neighbours,
                       train_limit=args.train_limit, pear_prune=args.pear_prune, pear_share=args.pear_share,
                       prune_step=args.prune_step, epochs=args.epochs, recovery_epochs=args.recovery_epochs,
                       final_epochs=args.final_epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)


def _print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


# ---------------------------------------------------------------- commands
def cmd_train(args) -> int:
    from spaedge import distributed
    from spaedge.train import Reporter, run

    cfg = _config(args)
    out = Path(args.out or Path(args.runs) / _safe_name(cfg.task))
    # Under torchrun: DDP over the processes (gloo), rank 0 writes and prints (spaedge.distributed).
    ddp = distributed.init_from_env()
    dump = os.environ.get("SPAEDGE_DDP_STATE_HASH")  # debug/tests: every rank writes its model's hash

    def on_model(model) -> None:
        if dump:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"state-rank{distributed.rank()}.sha256").write_text(distributed.state_hash(model) + "\n")
    main = distributed.is_main()
    with Reporter(enabled=main) as rep:
        if ddp and main:
            rep.log(f"data-parallel over {distributed.world_size()} processes (torchrun, gloo)")
        metrics = run(cfg, out, reporter=rep, on_model=on_model)
    distributed.finish()  # on an error the process exits and torchrun stops the others
    if main:
        _report_run(metrics, out)
    return 0


def _report_run(m: dict, out: Path) -> None:
    print(f"trained {m['task']} in {m['seconds']} s -> {out}")
    _print_table([
        ("test accuracy", f"{m['test_accuracy']:.2%} (val {m['val_accuracy']:.2%})"),
        ("density", f"{m['density']:.1%} of the base's weights"),
        ("MACs", f"{_human_count(m['macs'])} (unpruned {_human_count(m['macs_unpruned'])})"),
        ("learned parameters", _human_count(m["learned_parameters"])),
    ])


def _find_run(runs: Path, cfg, base_hash: str) -> Path | None:
    """The run directory of this task if it was trained against this base."""
    run_dir = runs / _safe_name(cfg.task)
    bundle = run_dir / "task.safetensors"
    if not bundle.exists():
        return None
    from spaedge.pack.format import read_metadata

    try:
        meta = read_metadata(bundle)
    except BundleError:
        return None
    return run_dir if meta.get("base_hash") == base_hash else None


def cmd_pack(args) -> int:
    import numpy as np

    from spaedge.models import get_base
    from spaedge.pack.bundle import base_bundle, load_task_model
    from spaedge.pack.format import atomic_write_bytes, read_metadata, serialise
    from spaedge.train import Reporter, predict, run
    from spaedge.tasks import get_task

    cfg = _config(args)
    out = Path(args.out)
    base_model = get_base(cfg.base, cfg.base_weights)
    base_bytes, bhash = serialise(*base_bundle(base_model))
    base_path = out / "base.safetensors"
    if base_path.exists():
        have = read_metadata(base_path).get("content_hash")
        if have != bhash:
            raise CliError(f"{base_path} holds another base ({have[:12]}...) than --base {cfg.base} "
                           f"({bhash[:12]}...): task bundles of one directory share one base; "
                           "pack into another --out directory")
    run_dir = None if args.retrain else _find_run(Path(args.runs), cfg, bhash)
    if run_dir is None:
        run_dir = Path(args.runs) / _safe_name(cfg.task)
        print(f"no trained run of {cfg.task} for this base yet: training it with these settings -> {run_dir}")
        with Reporter() as rep:
            run(cfg, run_dir, reporter=rep)
    else:
        print(f"using the trained run {run_dir} (pass --retrain to train again)")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if not base_path.exists():
        atomic_write_bytes(base_path, base_bytes)
        print(f"wrote {base_path} ({_human_bytes(len(base_bytes))}, base {bhash[:12]})")
    else:
        print(f"{base_path} already holds this base ({bhash[:12]}); left as it is")
    task_path = out / f"{_safe_name(cfg.task)}.safetensors"
    atomic_write_bytes(task_path, (run_dir / "task.safetensors").read_bytes())
    task_bytes = task_path.stat().st_size
    print(f"wrote {task_path} ({_human_bytes(task_bytes)})")

    # Check what was packed: PyTorch from the bundles, and the C++ runtime.
    model, spec, _ = load_task_model(base_path, task_path)
    task = get_task(cfg.task, data_dir=cfg.data_dir, input_size=spec.input_size)
    test = task.split("test")
    ref_logits, labels = predict(model, test)
    rows = [
        ("task bundle", f"{_human_bytes(task_bytes)}  (the same pruned model stored whole: "
                        f"{_human_bytes(metrics['whole_model_bytes'])}, "
                        f"{metrics['whole_model_bytes'] / task_bytes:.1f}x larger)"),
        ("base bundle", _human_bytes(base_path.stat().st_size)),
        ("density", f"{metrics['density']:.1%} of the base's weights"),
        ("MACs kept", f"{_human_count(metrics['macs'])} of {_human_count(metrics['macs_unpruned'])} "
                      f"({metrics['macs'] / metrics['macs_unpruned']:.1%})"),
        ("learned parameters", _human_count(metrics["learned_parameters"])),
        ("test accuracy, PyTorch", f"{(ref_logits.argmax(1) == labels).mean():.2%} ({len(labels)} images)"),
    ]
    try:
        from spaedge.runtime import Runtime
    except ImportError as e:
        rows.append(("test accuracy, runtime", f"unavailable: the C++ runtime is not built ({e})"))
        print(f"packed {cfg.task}:")
        _print_table(rows)
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
    _print_table(rows)
    if agree < 0.999 or rel > 1e-3:
        print("warning: the runtime and PyTorch disagree more than they should; please report this",
              file=sys.stderr)
        return 1
    return 0


def cmd_run(args) -> int:
    import numpy as np

    from spaedge.runtime import Runtime

    bundles = Path(args.bundles)
    base_path = bundles / "base.safetensors"
    task_path = bundles / f"{_safe_name(args.task)}.safetensors"
    for p in (base_path, task_path):
        if not p.exists():
            raise CliError(f"{p} does not exist: pack the task first (spaedge pack --task {args.task} --out {bundles})")
    rt = Runtime(str(base_path), threads=args.threads)
    name = rt.load_task(str(task_path))
    info = rt.task_info(name)
    if args.eval:
        from spaedge.tasks import get_task

        task = get_task(args.task, data_dir=args.data_dir, input_size=info["input_shape"])
        X, y = task.arrays(args.split)
        logits = rt.run(np.ascontiguousarray(X.numpy()))
        acc = float((logits.argmax(1) == y.numpy()).mean())
        print(f"{name}: {args.split} accuracy {acc:.2%} on {len(y)} images ({rt.isa} kernels, {rt.threads} threads)")
        return 0
    if not args.images:
        raise CliError("give IMAGE files to classify, or --eval to score the task's test set")
    from spaedge.tasks import get_task

    # The task preprocesses a file exactly as its training data was (crop or not).
    task = get_task(args.task, data_dir=args.data_dir, input_size=info["input_shape"])
    labels = info["labels"]
    for path in args.images:
        if not Path(path).is_file():
            raise CliError(f"{path}: no such image file")
        try:
            x = task.load_image(path).numpy()[None]
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds for bad files
            raise CliError(f"{path}: cannot read the image ({e})") from None
        logits = rt.run(np.ascontiguousarray(x, dtype=np.float32))[0]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = np.argsort(-p)[: args.top]
        print(f"{path}: " + ", ".join(f"{labels[i]} {p[i]:.1%}" for i in top))
    return 0


def cmd_info(args) -> int:
    from spaedge.pack.format import json_field, read_bundle

    path = Path(args.bundle)
    tensors, meta = read_bundle(path)
    size = path.stat().st_size
    print(f"{path}: {meta['format']} version {meta['version']}, {_human_bytes(size)}, "
          f"{len(tensors)} tensors, content {meta['content_hash'][:16]}")
    if meta["format"] == "spaedge-base":
        graph = json_field(meta, "graph", str(path))
        convs = [n for n in graph["nodes"] if n["op"] == "conv"]
        params = sum(int(t.size) for k, t in tensors.items() if k.endswith(".weight"))
        _print_table([("model", meta.get("model", "?")), ("graph", f"{len(graph['nodes'])} nodes, {len(convs)} convs"),
                      ("input channels", str(graph["input_channels"])), ("weights", _human_count(params))])
    else:
        inp = json_field(meta, "input", str(path))
        labels = json_field(meta, "labels", str(path))
        info = json_field(meta, "info", str(path)) if "info" in meta else {}
        rows = [("task", meta["task"]), ("method", meta.get("method", "?")),
                ("base", meta["base_hash"][:16]),
                ("input", f"{inp['channels']}x{inp['height']}x{inp['width']}, mean {inp['mean']}, std {inp['std']}"),
                ("labels", f"{len(labels)}: {', '.join(labels[:10])}{' ...' if len(labels) > 10 else ''}")]
        for k, v in info.items():
            rows.append((k.replace("_", " "), f"{v:.4g}" if isinstance(v, float) else str(v)))
        _print_table(rows)
    return 0


def cmd_pretrain(args) -> int:
    from spaedge.models import BUILTIN_WEIGHTS
    from spaedge.pretrain import pretrain
    from spaedge.train import Reporter

    out = Path(args.out or BUILTIN_WEIGHTS)
    with Reporter() as rep:
        pretrain(out, task=args.task, data_dir=args.data_dir, epochs=args.epochs, seed=args.seed, reporter=rep)
    return 0


def cmd_tasks(args) -> int:
    from spaedge.tasks import task_descriptions

    for name, desc in task_descriptions().items():
        print(f"  {name:<18} {desc}")
    return 0


# ------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spaedge", description=__doc__.split("\n\n")[1].rstrip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Run `spaedge COMMAND --help` for a command's options.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="prune and adapt a task into a run directory",
                       description="Adapt the base to a task, prune it iteratively to the target density with "
                                   "recovery epochs, and write a run directory (task bundle, config, metrics).")
    t.add_argument("--task", default="digits", help="task name (see `spaedge tasks`; default digits)")
    t.add_argument("--runs", default="runs", help="directory of run directories (default ./runs)")
    t.add_argument("--out", help="run directory (default RUNS/TASK)")
    _add_training_flags(t)
    t.set_defaults(func=cmd_train)

    k = sub.add_parser("pack", help="write base + task bundles (training first if needed)",
                       description="Write DIR/base.safetensors (once) and DIR/TASK.safetensors, training the task "
                                   "with the given settings first if RUNS has no trained run of it for this base; "
                                   "then print sizes, MACs and test accuracy in PyTorch and in the C++ runtime.")
    k.add_argument("--task", default="digits", help="task name (default digits)")
    k.add_argument("--out", default="bundles", help="bundle directory (default ./bundles)")
    k.add_argument("--runs", default="runs", help="directory of run directories (default ./runs)")
    k.add_argument("--retrain", action="store_true", help="train again even if a run exists")
    _add_training_flags(k)
    k.set_defaults(func=cmd_pack)

    r = sub.add_parser("run", help="run a packed task in the C++ runtime",
                       description="Classify images, or score the task's test set (--eval), with the C++ runtime.")
    r.add_argument("--bundles", default="bundles", help="bundle directory (default ./bundles)")
    r.add_argument("--task", default="digits", help="task name (default digits)")
    r.add_argument("--eval", action="store_true", help="score the task's split instead of classifying images")
    r.add_argument("--split", default="test", choices=["train", "val", "test"], help="split for --eval")
    r.add_argument("--data-dir", help="where the task's data is (for --eval)")
    r.add_argument("--threads", type=_positive_int, help="runtime threads (default: all cores)")
    r.add_argument("--top", type=_positive_int, default=3, help="labels to print per image (default 3)")
    r.add_argument("images", nargs="*", metavar="IMAGE", help="image files (jpg, png, ...)")
    r.set_defaults(func=cmd_run)

    i = sub.add_parser("info", help="what a bundle holds", description="Print a bundle's metadata and sizes.")
    i.add_argument("bundle", help="a base or task bundle (.safetensors)")
    i.set_defaults(func=cmd_info)

    pt = sub.add_parser("pretrain", help="recreate the built-in base's weights",
                        description="Pretrain the built-in tiny base on Fashion-MNIST classes 0-5 (the classes "
                                    "downstream tasks never use) and write its weights.")
    pt.add_argument("--task", default="fashion_mnist:0,1,2,3,4,5", help="pretraining task")
    pt.add_argument("--data-dir", help="Fashion-MNIST directory (default /usr/share/datasets/fashion-mnist)")
    pt.add_argument("--epochs", type=_positive_int, default=10)
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--out", help="weights file (default: the package's built-in weights)")
    pt.set_defaults(func=cmd_pretrain)

    ts = sub.add_parser("tasks", help="list the known tasks")
    ts.set_defaults(func=cmd_tasks)
    from spaedge.bench import add_bench_parser
    add_bench_parser(sub)
    from spaedge.experiment import add_parser as add_experiment_parser
    add_experiment_parser(sub)
    from spaedge.pruning.similar import add_parser as add_library_parser
    add_library_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args) or 0
    except (CliError, BundleError, FileNotFoundError, ValueError) as e:
        if os.environ.get("SPAEDGE_DEBUG"):
            raise
        print(f"spaedge {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"spaedge {args.command}: interrupted; no partial bundle was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
