"""The adapted layer and SPLoRA: the task weight against a dense reference
after pruning, and what ``adapt`` freezes and trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spaedge.adapters import SPLoRA, adapt, adapted_layers, learned_parameters
from spaedge.models.resnet import spaedge_tiny


def _randomise(layer: SPLoRA, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora_b.copy_(torch.randn(layer.lora_b.shape, generator=g) * 0.1)
        layer.lora_a.copy_(torch.randn(layer.lora_a.shape, generator=g) * 0.1)


def _dense_reference_weight(base_w, a, b, out_idx, in_idx):
    """W[out][:, in] + centre_tap(B[out] @ A[:, in]) with explicit loops (numpy)."""
    w = base_w[np.ix_(out_idx, in_idx)].copy()
    upd = b[out_idx] @ a[:, in_idx]
    if w.ndim == 4:
        c = w.shape[-1] // 2
        for o in range(w.shape[0]):
            for i in range(w.shape[1]):
                w[o, i, c, c] += upd[o, i]
    else:
        w += upd
    return w


@pytest.mark.parametrize("kernel,stride", [(3, 1), (3, 2), (1, 1), (7, 2)])
def test_splora_conv_matches_dense_reference_after_pruning(kernel, stride):
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 10, kernel, stride=stride, padding=kernel // 2, bias=False)
    layer = SPLoRA(conv, rank=3)
    _randomise(layer)
    a0, b0 = layer.lora_a.detach().numpy().copy(), layer.lora_b.detach().numpy().copy()
    out_keep, in_keep = torch.tensor([0, 2, 3, 7, 9]), torch.tensor([1, 4, 5, 6, 10, 11])
    layer.keep_out(out_keep)
    layer.keep_in(in_keep)
    assert (
        layer.out_index.tolist() == out_keep.tolist()
        and layer.in_index.tolist() == in_keep.tolist()
    )
    ref_w = _dense_reference_weight(
        conv.weight.detach().numpy(), a0, b0, out_keep.numpy(), in_keep.numpy()
    )
    x = torch.randn(2, 6, 9, 9)
    ref = F.conv2d(x, torch.from_numpy(ref_w), None, stride, kernel // 2)
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-5)
    # only the centre tap moved away from the gathered base weight
    diff = (layer.task_weight() - layer.weight).abs()
    c = kernel // 2
    mask = torch.ones_like(diff, dtype=torch.bool)
    mask[:, :, c, c] = False
    assert (diff[mask] == 0).all() and diff[:, :, c, c].max() > 0


def test_splora_linear_matches_dense_reference():
    torch.manual_seed(1)
    lin = nn.Linear(8, 5)
    layer = SPLoRA(lin, rank=2)
    _randomise(layer, 3)
    ref_w = _dense_reference_weight(
        lin.weight.detach().numpy(),
        layer.lora_a.detach().numpy(),
        layer.lora_b.detach().numpy(),
        np.arange(5),
        np.arange(8),
    )
    x = torch.randn(4, 8)
    torch.testing.assert_close(
        layer(x), x @ torch.from_numpy(ref_w).T + lin.bias, rtol=1e-5, atol=1e-5
    )


def test_adapt_freezes_base_and_trains_only_adapters_bn_head():
    model = spaedge_tiny()
    model.replace_head(4)
    adapt(model, "splora", rank=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(
        not n.endswith(".weight") or "bn" in n or "downsample.1" in n or n.startswith("fc.")
        for n in trainable
    ), trainable
    assert not any(
        p.requires_grad for n, p in model.named_parameters() if n.endswith("conv1.weight")
    )
    layers = adapted_layers(model)
    assert len(layers) == sum(1 for n in model.graph()["nodes"] if n["op"] == "conv")
    expected = sum((m.out_channels + m.in_channels) * 4 for m in layers.values())
    expected += sum(
        p.numel()
        for n, p in model.named_parameters()
        if (".bn" in n or n.startswith("bn") or "downsample.1" in n or n.startswith("fc."))
    )
    assert learned_parameters(model) == expected
