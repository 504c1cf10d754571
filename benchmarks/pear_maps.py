"""Pear's sharing maps against each other (docs/results.md, "Pear: sharing maps").

    python benchmarks/pear_maps.py [--out DIR] [--tasks "digits;fashion_mnist_new"] [--seeds 2] [--workers 1]

Cells of ``spaedge experiment`` (its default budget and protocol: the same
epochs for every run, the learning rate chosen on validation; built-in
``tiny`` base, rank 8) for SPLoRA (no adapter
pruning) and Pear with each sharing map (``pear`` = nearest in depth,
``pear-important``, ``pear-none``), at densities 100% and 30%. Prints a
Markdown table: test accuracy mean ± std over seeds per task, learned
parameters, task-bundle bytes, and how many adapters Pear shared / removed.
Finished runs are kept in ``DIR/runs`` (a rerun resumes).

``--base tiny-deep``: the built-in base has one block per stage, so at most two
convs share a kept shape and the maps rarely differ. ``tiny-deep`` is the same
network with two blocks per stage (widths 16-128, 1 input channel), pretrained
here like the built-in base (Fashion-MNIST classes 0-5; the first
``--pretrain-images`` training images, ``--pretrain-epochs`` epochs) and cached
as ``DIR/tiny-deep.safetensors``; same-shape convs are more common there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from spaedge.experiment import Budget, Cell, run_grid
from spaedge.models import BASES
from spaedge.models.resnet import BasicBlock, ResNet

# module level, so the spawned experiment workers (which re-import this file) know it too
BASES.setdefault(
    "tiny-deep",
    lambda: ResNet(
        BasicBlock,
        (2, 2, 2, 2),
        in_channels=1,
        stem="cifar",
        widths=(16, 32, 64, 128),
        arch="tiny-deep",
    ),
)

# method name -> (registered method, its options (PearOptions fields) as a Cell's)
METHODS = {
    "splora": ("splora", ()),
    "pear": ("pear", ()),
    "pear-important": ("pear", (("pear_share", "important"),)),
    "pear-none": ("pear", (("pear_share", "none"),)),
}


def _pretrain(path: Path, images: int, epochs: int) -> None:
    import torch

    from spaedge.progress import Reporter
    from spaedge.train.pretrain import pretrain

    torch.set_num_threads(1)
    with Reporter() as rep:
        pretrain(path, base="tiny-deep", epochs=epochs, train_limit=images, seed=0, reporter=rep)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="pear-maps")
    p.add_argument("--tasks", default="digits;fashion_mnist_new")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--densities", default="1.0,0.3")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--base", default="tiny", choices=["tiny", "tiny-deep"])
    p.add_argument("--methods", default=",".join(METHODS), help=f"among {', '.join(METHODS)}")
    p.add_argument(
        "--knowledge",
        default="weighted",
        choices=["weighted", "source"],
        help="how a shared adapter starts, this project's stand-in for the paper's knowledge checkpoint (PearOptions.pear_knowledge)",
    )
    p.add_argument("--pretrain-images", type=int, default=12000)
    p.add_argument("--pretrain-epochs", type=int, default=2)
    a = p.parse_args(argv)
    methods = a.methods.split(",")
    knowledge = (("pear_knowledge", a.knowledge),) if a.knowledge != "weighted" else ()
    weights = None
    if a.base == "tiny-deep":
        weights = Path(a.out) / "tiny-deep.safetensors"
        if not weights.exists():
            _pretrain(weights, a.pretrain_images, a.pretrain_epochs)
    tasks = a.tasks.split(";")
    dens = [float(d) for d in a.densities.split(",")]

    def cell(t, m, d, s):
        name, opts = METHODS[m]
        return Cell(t, name, 8, d, seed=s, options=opts + (knowledge if name == "pear" else ()))

    named = [
        (cell(t, m, d, s), m) for t in tasks for d in dens for m in methods for s in range(a.seeds)
    ]
    cells = [c for c, _ in named]
    res = run_grid(
        cells,
        Budget(),
        a.out,
        workers=a.workers,
        base=a.base,
        base_weights=None if weights is None else str(weights),
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    keep = {c.key: m for c, m in named}
    res = [{**r, "name": keep[r["key"]]} for r in res if r["key"] in keep]
    head = (
        ["density", "method"]
        + tasks
        + ["avg", "learned params", "bundle bytes", "shared / removed"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in dens:
        for m in methods:
            rs = [r for r in res if r["name"] == m and r["density"] == d]
            if not rs:
                continue
            cols, means = [], []
            for t in tasks:
                acc = [r["test_accuracy"] * 100 for r in rs if r["task"] == t]
                sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
                cols.append(f"{statistics.mean(acc):.1f} ± {sd:.1f}" if acc else "–")
                if acc:
                    means.append(statistics.mean(acc))
            sh = (
                (
                    f"{statistics.mean(r.get('pear_shared', 0) for r in rs):.1f} / "
                    f"{statistics.mean(r.get('pear_removed', 0) for r in rs):.1f}"
                )
                if m != "splora"
                else "–"
            )
            lines.append(
                "| "
                + " | ".join(
                    [f"{d:.0%}", m]
                    + cols
                    + [
                        f"{statistics.mean(means):.1f}",
                        f"{statistics.mean(r['learned_parameters'] for r in rs):.0f}",
                        f"{statistics.mean(r['task_bundle_bytes'] for r in rs):.0f}",
                        sh,
                    ]
                )
                + " |"
            )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
