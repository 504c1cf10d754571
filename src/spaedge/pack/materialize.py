"""A task as a plain torch model: adapters merged, pruned layers as nn.Conv2d.

This is "the same pruned model stored whole": what exports (ONNX, TFLite) and
size comparisons start from.
"""

from __future__ import annotations

import copy

import torch
from safetensors.torch import save
from torch import nn

from spaedge.adapters.base import AdaptedLayer

__all__ = ["materialize", "whole_model_bytes"]


def materialize(model: nn.Module) -> nn.Module:
    """A copy of ``model`` where every adapted layer is a plain layer with its task weight."""
    plain = copy.deepcopy(model).eval()
    for name, m in list(plain.named_modules()):
        if not isinstance(m, AdaptedLayer):
            continue
        with torch.no_grad():
            w = m.task_weight().detach().clone()
            if m.is_conv:
                layer = nn.Conv2d(
                    m.in_channels,
                    m.out_channels,
                    m.kernel_size,
                    stride=m.stride,
                    padding=m.padding,
                    bias=m.bias is not None,
                )
            else:
                layer = nn.Linear(m.in_channels, m.out_channels, bias=m.bias is not None)
            layer.weight.copy_(w)
            if m.bias is not None:
                layer.bias.copy_(m.bias.detach())
        parent_name, _, child = name.rpartition(".")
        setattr(plain.get_submodule(parent_name) if parent_name else plain, child, layer)
    for p in plain.parameters():
        p.requires_grad_(False)
    return plain


def whole_model_bytes(model: nn.Module) -> int:
    """Bytes of the materialised pruned model's weights as one safetensors file."""
    state = {
        k: v.contiguous()
        for k, v in materialize(model).state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    return len(save(state))
