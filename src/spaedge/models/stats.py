"""Counting what a model costs: multiply-accumulates and parameters.

A layer counts when it is an ``nn.Conv2d`` or ``nn.Linear``, or says what it
is the way adapted layers do (``is_conv``, ``kernel_size``, ``in_channels``,
``out_channels``): this module knows no layer types above the models.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["count_macs", "count_parameters"]


def _kind(m: nn.Module) -> str | None:
    if isinstance(m, nn.Conv2d):
        return "conv"
    if isinstance(m, nn.Linear):
        return "linear"
    if hasattr(m, "is_conv") and hasattr(
        m, "kernel_size"
    ):  # an adapted layer (spaedge.adapters.base)
        return "conv" if m.is_conv else "linear"
    return None


def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """MACs of one forward pass at batch 1 (convolutions and linear layers)."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if _kind(m) == "conv":
            k = m.kernel_size[0] * m.kernel_size[1]
            total += out.shape[1] * out.shape[2] * out.shape[3] * m.in_channels * k
        else:
            total += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if _kind(m) is not None]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)


def count_parameters(model: nn.Module) -> int:
    """Parameters of the model as it runs (frozen base weights included)."""
    return sum(p.numel() for p in model.parameters())
