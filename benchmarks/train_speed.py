"""Training and evaluation throughput of an adapted ResNet on this machine's CPU
(docs/benchmarks.md, "Training on the CPU"; README, "Flowers-102 on an
ImageNet base").

    python benchmarks/train_speed.py [--base resnet18] [--size 224] [--batch 32] [--threads 2] [--steps 5]

Times SPLoRA training steps (forward, backward, AdamW) the way
``spaedge.train.loops.fit`` runs them: unpruned with oneDNN and a
channels-last input (what ``fit`` does before pruning), the same without
them, and pruned to 30% density on PyTorch's native convolution (what ``fit``
does after pruning); then inference-mode evaluation. Random base weights
(speed does not depend on them). Prints images per second and the seconds an
epoch of Flowers-102's 1020 training images takes.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from spaedge.adapters import adapt
from spaedge.models import RANDOM, get_base
from spaedge.pruning.prune import prune_to_density

FLOWERS_TRAIN = 1020


def _model(base: str, density: float):
    torch.manual_seed(0)
    m = get_base(base, RANDOM)
    m.replace_head(102)
    m = adapt(m, "splora", rank=8)
    if density < 1.0:
        prune_to_density(m, torch.zeros(1, 3, 64, 64), density, step_fraction=0.1)
    return m


def _train_rate(m, x, y, steps: int, onednn: bool, channels_last: bool) -> float:
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], 1e-3)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x.to(memory_format=fmt)
    m.train()
    with torch.backends.mkldnn.flags(enabled=onednn):

        def step():
            loss = F.cross_entropy(m(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()  # warm-up
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
    return steps * len(x) / (time.perf_counter() - t0)


def _eval_rate(m, x, steps: int) -> float:
    m.eval()
    with torch.inference_mode():
        m(x)
        t0 = time.perf_counter()
        for _ in range(steps):
            m(x)
    return steps * len(x) / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="resnet18")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--steps", type=int, default=5)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    x = torch.randn(a.batch, 3, a.size, a.size)
    y = torch.randint(0, 102, (a.batch,))
    print(
        f"{a.base} at {a.size}x{a.size}, batch {a.batch}, {a.threads} threads, torch {torch.__version__}"
    )
    full, pruned = _model(a.base, 1.0), _model(a.base, 0.3)
    rows = [
        (
            "train, unpruned, oneDNN + channels-last (fit before pruning)",
            _train_rate(full, x, y, a.steps, True, True),
        ),
        ("train, unpruned, native conv", _train_rate(full, x, y, a.steps, False, False)),
        (
            "train, 30% density, native conv (fit after pruning)",
            _train_rate(pruned, x, y, a.steps, False, False),
        ),
        ("evaluate, unpruned, inference mode", _eval_rate(full, x, a.steps)),
        ("evaluate, 30% density, inference mode", _eval_rate(pruned, x, a.steps)),
    ]
    for what, rate in rows:
        print(
            f"  {what:<62} {rate:7.1f} images/s  ({FLOWERS_TRAIN / rate:6.0f} s per Flowers-102 epoch)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
