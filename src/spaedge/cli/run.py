"""``spaedge run``: classify images, or score a task's test set, with the C++ runtime.

Needs the compiled runtime, numpy and (for images and ``--eval``) the task
loaders; torch only where a task's loader needs it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spaedge.argtypes import path_text, positive_int
from spaedge.cli.common import CliError
from spaedge.pack.layout import base_bundle_path, task_bundle_path


def add_parser(sub) -> None:
    r = sub.add_parser(
        "run",
        help="run a packed task in the C++ runtime",
        description="Classify images, or score the task's test set (--eval), with the C++ runtime.",
    )
    r.add_argument(
        "--bundles", type=path_text, default="bundles", help="bundle directory (default ./bundles)"
    )
    r.add_argument("--task", default="digits", help="task name (default digits)")
    r.add_argument(
        "--eval", action="store_true", help="score the task's split instead of classifying images"
    )
    r.add_argument(
        "--split", default="test", choices=["train", "val", "test"], help="split for --eval"
    )
    r.add_argument("--data-dir", type=path_text, help="where the task's data is (for --eval)")
    r.add_argument("--threads", type=positive_int, help="runtime threads (default: all cores)")
    r.add_argument(
        "--top", type=positive_int, default=3, help="labels to print per image (default 3)"
    )
    r.add_argument(
        "images", nargs="*", type=path_text, metavar="IMAGE", help="image files (jpg, png, ...)"
    )
    r.set_defaults(func=main)


def main(args) -> int:
    bundles = Path(args.bundles)
    base_path, task_path = base_bundle_path(bundles), task_bundle_path(bundles, args.task)
    for p in (base_path, task_path):
        if not p.exists():
            raise CliError(
                f"{p} does not exist: pack the task first (spaedge pack --task {args.task} --out {bundles})"
            )
    from spaedge.cli.info import clean
    from spaedge.runtime import Runtime
    from spaedge.tasks import get_task

    rt = Runtime(str(base_path), threads=args.threads)
    name = rt.load_task(str(task_path))
    info = rt.task_info(name)
    if args.eval:
        task = get_task(args.task, data_dir=args.data_dir, input_size=info["input_shape"])
        X, y = task.arrays(args.split)
        logits = rt.run(np.ascontiguousarray(X.numpy()))
        acc = float((logits.argmax(1) == y.numpy()).mean())
        print(
            f"{clean(name)}: {args.split} accuracy {acc:.2%} on {len(y)} images ({rt.isa} kernels, {rt.threads} threads)"
        )
        return 0
    if not args.images:
        raise CliError("give IMAGE files to classify, or --eval to score the task's test set")
    # The task preprocesses a file exactly as its training data was (crop or not).
    task = get_task(args.task, data_dir=args.data_dir, input_size=info["input_shape"])
    labels = info["labels"]
    for path in args.images:
        if not Path(path).is_file():
            raise CliError(f"{clean(path)}: no such image file")
        try:  # by value range; too many pixels, a strip or an unknown mode refused (spaedge.images)
            x = task.load_image(path).numpy()[None]
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds for bad files
            raise CliError(f"{clean(path)}: cannot read the image ({clean(e)})") from None
        logits = rt.run(np.ascontiguousarray(x, dtype=np.float32))[0]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = np.argsort(-p)[: args.top]
        # labels come from the bundle: written escaped, as spaedge info does
        print(f"{clean(path)}: " + ", ".join(f"{clean(labels[i])} {p[i]:.1%}" for i in top))
    return 0
