"""Seed corpus for tests/fuzz/fuzz_bundle.cpp, made with the spaedge toolchain.

A deliberately tiny base (ResNet, BasicBlock x [1, 1], widths 4-8, CIFAR stem,
one input channel) and a few task bundles on it: SPLoRA pruned to about half
the channels, SPLoRA unpruned, and a fine-tuned (dense weight_delta) pruned
one. Everything is seeded: tensors are the same on every run (the safetensors
writer may order the metadata keys differently).

    python tests/fuzz/make_seeds.py [OUT_DIR]      # default tests/fuzz/seeds

Writes base.safetensors (the fuzzer's fixed base and itself a seed) and
task_*.safetensors.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from spaedge.adapters import adapt
from spaedge.models.resnet import BasicBlock, ResNet
from spaedge.pack.bundle import TaskSpec, write_base, write_task
from spaedge.pruning.prune import prune_to_density

INPUT = (1, 8, 8)


def tiny_base() -> ResNet:
    torch.manual_seed(0)
    return ResNet(BasicBlock, (1, 1), num_classes=3, in_channels=1, widths=(4, 8), stem="cifar", arch="fuzz-tiny")


def task(method: str, density: float, rank: int, seed: int) -> ResNet:
    model = tiny_base()
    torch.manual_seed(seed)
    model.replace_head(3)
    model = adapt(model, method, rank=rank)
    with torch.no_grad():  # non-trivial adapter factors, BN statistics and biases
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    if density < 1.0:
        prune_to_density(model, torch.zeros(1, *INPUT), density, step_fraction=0.25)
    return model


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    h = write_base(tiny_base(), out / "base.safetensors")
    spec = TaskSpec("fuzz", ["a", "b", "c"], INPUT, [0.5], [0.25])
    for name, method, density, rank in [("splora_pruned", "splora", 0.5, 2),
                                        ("splora_full", "splora", 1.0, 1),
                                        ("finetune_pruned", "finetune", 0.6, 1)]:
        write_task(task(method, density, rank, seed=len(name)), spec, h, out / f"task_{name}.safetensors")
    for p in sorted(out.glob("*.safetensors")):
        print(f"{p}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "seeds")
