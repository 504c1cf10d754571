"""``spaedge library``: libraries of pruned task plans (for ``--schedule similar``)."""

from __future__ import annotations

from pathlib import Path

from spaedge.argtypes import path_text
from spaedge.cli.common import add_config_flags


def add_parser(sub) -> None:
    from spaedge.train import TrainConfig

    lib = sub.add_parser(
        "library",
        help="libraries of pruned task plans (for --schedule similar)",
        description="A library is a directory of pruning plans, one JSON per finished task: the channels its "
        "pruned model kept in every layer and its task embedding (mean of the frozen base's "
        "normalised penultimate features over the first 256 training images). Every `spaedge "
        "train` run writes RUN_DIR/plan.json; `spaedge train --schedule similar --library DIR` prunes "
        "a new task once by the similarity-weighted vote of its --neighbours nearest plans (cosine "
        "of embeddings; weights softmax(cosine / 0.05)), then trains its epochs. Plans of runs pruned "
        "with --criterion taylor transfer much better than magnitude ones (docs/results.md). --library "
        "also accepts run directories or a directory of runs directly.",
    )
    s = lib.add_subparsers(dest="library_command", metavar="ACTION")
    a = s.add_parser(
        "add",
        help="add finished runs' plans to a library directory",
        description="Copy RUN_DIR/plan.json (or rebuild it from task.safetensors + config.json for "
        "runs made before plans existed) into the library directory.",
    )
    a.add_argument("runs", nargs="+", type=path_text, metavar="RUN_DIR")
    a.add_argument(
        "--to",
        type=path_text,
        required=True,
        metavar="DIR",
        help="library directory (created if missing)",
    )
    a.set_defaults(func=cmd_add)
    ls = s.add_parser(
        "list",
        help="the plans of a library, optionally ranked for a task",
        description="List a library's plans; with --task, ranked by similarity to that task.",
    )
    ls.add_argument("library", type=path_text, metavar="DIR")
    ls.add_argument("--task", help="rank the plans by cosine similarity to this task's embedding")
    add_config_flags(ls, TrainConfig, names=["base", "base_weights", "data_dir"])
    ls.set_defaults(func=cmd_list)
    lib.set_defaults(func=lambda args: (lib.print_help(), 2)[1])


def cmd_add(args) -> int:
    from spaedge.train.library import add_to_library, read_plan

    for r in args.runs:
        dest = add_to_library(Path(r), Path(args.to))
        p = read_plan(dest)
        print(f"added {p.task} (density {p.density:.1%}, base {p.base_hash[:12]}) -> {dest}")
    return 0


def cmd_list(args) -> int:
    from spaedge.pack.bundle import base_hash
    from spaedge.pruning.similar import nearest
    from spaedge.train import TrainConfig
    from spaedge.train.library import load_library
    from spaedge.train.setup import embed_task, load_base, resolve

    plans = load_library(args.library)
    if not plans:
        print(f"{args.library}: no plans")
        return 0
    if args.task:
        cfg = resolve(
            TrainConfig(
                task=args.task,
                base=args.base,
                base_weights=args.base_weights,
                data_dir=args.data_dir,
            )
        )
        emb = embed_task(cfg)
        bh = base_hash(load_base(cfg))
        for p, s in nearest(plans, emb, len(plans), base_hash=bh):
            print(f"  {s:.4f}  {p.task:<24} density {p.density:.1%}  {p.source}")
        return 0
    for p in plans:
        acc = f", test accuracy {p.test_accuracy:.2%}" if p.test_accuracy is not None else ""
        print(f"  {p.task:<24} density {p.density:.1%}{acc}, base {p.base_hash[:12]}  {p.source}")
    return 0
