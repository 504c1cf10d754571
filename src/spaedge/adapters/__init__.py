"""Adapters: wrap a base network's layers so a task learns only a little.

``adapt(model, method, rank)`` replaces every conv of the base with the
method's adapted layer (the base weight stays frozen), makes the BatchNorms
trainable (each task has its own) and leaves the head to the task.
``learned_parameters`` counts what a task trains and stores. The methods, one
module each, are listed in ``spaedge.adapters.registry``.
"""

from __future__ import annotations

from torch import nn

# Each method module registers itself; the import order is the CLI's order of choices.
from spaedge.adapters import (  # noqa: F401  (registration)
    finetune,
    pear,
    sparse,
    sparse_large,
    splopa,
    splora,
    sppara,
)
from spaedge.adapters.base import AdaptedLayer
from spaedge.adapters.finetune import FineTuned
from spaedge.adapters.pear import PearLoRA
from spaedge.adapters.registry import Method, get_method, method_names, method_of
from spaedge.adapters.sparse import SparseAdapter
from spaedge.adapters.splopa import SPLoPA
from spaedge.adapters.splora import SPLoRA
from spaedge.adapters.sppara import SPPaRA

__all__ = [
    "AdaptedLayer",
    "SPLoRA",
    "FineTuned",
    "SPPaRA",
    "SPLoPA",
    "SparseAdapter",
    "PearLoRA",
    "Method",
    "get_method",
    "method_names",
    "method_of",
    "adapt",
    "adapted_layers",
    "learned_parameters",
    "prune_block",
]


def prune_block(model: nn.Module) -> int:
    """Channels a pruning step must remove together for ``model``'s adapters."""
    return method_of(model).prune_block


def adapt(
    model: nn.Module, method: str = "splora", rank: int | None = 8, head: str = "fc"
) -> nn.Module:
    """Wrap every ``nn.Conv2d`` of ``model`` (in place) with adapter ``method``; ``rank``
    is ignored by a method without one (``model.adapter_rank`` is None then)."""
    m = get_method(method)
    rank = rank if m.uses_rank else None
    make = m.layer
    widest = max(
        (max(c.in_channels, c.out_channels) for c in model.modules() if isinstance(c, nn.Conv2d)),
        default=0,
    )
    if m.uses_rank and (rank is None or not 1 <= rank <= max(widest, 1)):
        raise ValueError(
            f"--rank {rank}: the adapter rank must be between 1 and the widest layer's channel count "
            f"({widest} in this base); a rank above a layer's width adds nothing"
        )
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
    """Parameters the task trains (adapters, biases, BatchNorm, head), each
    shared parameter once; entries a mask holds at zero do not count."""
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total - sum(m.masked_entries() for m in model.modules() if isinstance(m, AdaptedLayer))
