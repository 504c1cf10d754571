"""Adapters: wrap a base network's layers so a task learns only a little.

``adapt(model, method, rank)`` replaces every conv of the base with an adapted
layer (the base weight stays frozen), makes the BatchNorms trainable (each task
has its own) and leaves the head to the task. ``learned_parameters`` counts
what a task trains and stores.
"""

from __future__ import annotations

from torch import nn

from spaedge.adapters.layers import AdaptedLayer, FineTuned, SPLoRA
from spaedge.adapters.pear import PearLoRA
from spaedge.adapters.variants import SPLoPA, SPPaRA, SparseAdapter

__all__ = ["AdaptedLayer", "SPLoRA", "FineTuned", "SPPaRA", "SPLoPA", "SparseAdapter", "PearLoRA", "METHODS", "adapt", "adapted_layers", "learned_parameters"]

METHODS = {
    "splora": lambda conv, rank: SPLoRA(conv, rank=rank),
    "finetune": lambda conv, rank: FineTuned(conv),
    "sppara": lambda conv, rank: SPPaRA(conv),
    # block-SPA: blocks of 4 channels, 4 prototypes of rank min(rank, 4)
    "splopa": lambda conv, rank: SPLoPA(conv, rank=rank, block=SPLOPA_BLOCK),
    "sparse": lambda conv, rank: SparseAdapter(conv),
    "sparse-large": lambda conv, rank: SparseAdapter(conv, large=True),
    # Pear: SPLoRA whose least important adapters are pruned and shared after channel pruning
    "pear": lambda conv, rank: PearLoRA(conv, rank=rank),
}

SPLOPA_BLOCK = 4


def prune_block(model: nn.Module) -> int:
    """Channels a pruning step must remove together for ``model``'s adapters."""
    return SPLOPA_BLOCK if getattr(model, "adapter_method", None) == "splopa" else 1


def adapt(model: nn.Module, method: str = "splora", rank: int = 8, head: str = "fc") -> nn.Module:
    """Wrap every ``nn.Conv2d`` of ``model`` (in place) with adapter ``method``."""
    if method not in METHODS:
        raise ValueError(f"unknown adapter method {method!r}; known: {', '.join(METHODS)}")
    make = METHODS[method]
    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Conv2d):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, make(module, rank))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.requires_grad_(True)
            m.bias.requires_grad_(True)
    for p in model.get_submodule(head).parameters():
        p.requires_grad_(True)
    model.adapter_method = method
    model.adapter_rank = rank
    return model


def adapted_layers(model: nn.Module) -> dict[str, AdaptedLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, AdaptedLayer)}


def learned_parameters(model: nn.Module) -> int:
    """Parameters the task trains (adapters, biases, BatchNorm, head); a sparse
    adapter counts its unmasked entries only."""
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    for m in model.modules():
        if isinstance(m, SparseAdapter):
            total -= m.sparse.numel() - m.nonzeros()
    return total
