"""Counting what a model costs: multiply-accumulates and parameters."""

from __future__ import annotations

import torch
from torch import nn

from spaedge.adapters.layers import AdaptedLayer

__all__ = ["count_macs", "count_parameters"]


def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """MACs of one forward pass at batch 1 (convolutions and linear layers)."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, (nn.Conv2d,)) or (isinstance(m, AdaptedLayer) and m.is_conv):
            k = m.kernel_size[0] * m.kernel_size[1]
            total += out.shape[1] * out.shape[2] * out.shape[3] * m.in_channels * k
        elif isinstance(m, nn.Linear) or isinstance(m, AdaptedLayer):
            total += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear, AdaptedLayer))]
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
