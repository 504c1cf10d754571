"""``spaedge pretrain``: recreate the built-in base's weights."""

from __future__ import annotations

from pathlib import Path

from spaedge.argtypes import path_text, positive_int


def add_parser(sub) -> None:
    pt = sub.add_parser("pretrain", help="recreate the built-in base's weights",
                        description="Pretrain the built-in tiny base on Fashion-MNIST classes 0-5 (the classes "
                                    "downstream tasks never use) and write its weights.")
    pt.add_argument("--task", default="fashion_mnist:0,1,2,3,4,5", help="pretraining task")
    pt.add_argument("--data-dir", type=path_text, help="Fashion-MNIST directory (default /usr/share/datasets/fashion-mnist)")
    pt.add_argument("--epochs", type=positive_int, default=10)
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--out", type=path_text, help="weights file (default: the package's built-in weights)")
    pt.set_defaults(func=main)


def main(args) -> int:
    from spaedge.models import BUILTIN_WEIGHTS
    from spaedge.progress import Reporter
    from spaedge.train.pretrain import pretrain

    out = Path(args.out or BUILTIN_WEIGHTS)
    with Reporter() as rep:
        pretrain(out, task=args.task, data_dir=args.data_dir, epochs=args.epochs, seed=args.seed, reporter=rep)
    return 0
