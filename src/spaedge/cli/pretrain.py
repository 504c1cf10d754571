"""``spaedge pretrain``: recreate a built-in base's weights."""

from __future__ import annotations

from pathlib import Path

from spaedge.argtypes import path_text, positive_int
from spaedge.cli.common import add_env_flags, env_from_args


def add_parser(sub) -> None:
    from spaedge.models import BUILTIN

    pt = sub.add_parser(
        "pretrain",
        help="recreate a built-in base's weights",
        description="Pretrain a built-in base (tiny or small) on Fashion-MNIST classes 0-5 (the "
        "classes downstream tasks never use) and write its weights. Reproducible from "
        "--seed; checkpoints every epoch beside --out and resumes when run again.",
    )
    pt.add_argument(
        "--base", default="tiny", choices=sorted(BUILTIN), help="which built-in base (default tiny)"
    )
    pt.add_argument("--task", default="fashion_mnist:0,1,2,3,4,5", help="pretraining task")
    pt.add_argument(
        "--data-dir",
        type=path_text,
        help="Fashion-MNIST directory (default /usr/share/datasets/fashion-mnist)",
    )
    pt.add_argument("--epochs", type=positive_int, default=10)
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument(
        "--out",
        type=path_text,
        help="weights file (default: the package's built-in weights of --base)",
    )
    pt.add_argument(
        "--restart", action="store_true", help="discard an unfinished pretraining's checkpoint"
    )
    add_env_flags(pt)
    pt.set_defaults(func=main)


def main(args) -> int:
    from spaedge.models import BUILTIN
    from spaedge.paths import check_output_file
    from spaedge.progress import Reporter
    from spaedge.train.pretrain import pretrain

    out = check_output_file(Path(args.out) if args.out else BUILTIN[args.base], "--out")
    with Reporter() as rep:
        pretrain(
            out,
            base=args.base,
            task=args.task,
            data_dir=args.data_dir,
            epochs=args.epochs,
            seed=args.seed,
            reporter=rep,
            resume=not args.restart,
            env=env_from_args(args),
        )
    return 0
