"""Real channel removal: residual blocks stay consistent, removed channels never
come back during training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spaedge.adapters import adapt
from spaedge.models.resnet import resnet18, resnet50, spaedge_tiny
from spaedge.pruning.groups import channel_groups
from spaedge.pruning.prune import density, plan, prune_to_density


def _check_channel_consistency(model):
    """Every conv's in_index equals the kept channels of its input tensor; adds agree."""
    graph = model.graph()
    kept = {"x": list(range(graph["input_channels"]))}
    for node in graph["nodes"]:
        src = [kept[i] for i in node["inputs"]]
        if node["op"] == "conv":
            layer = model.get_submodule(node["name"])
            assert layer.in_index.tolist() == src[0], node["name"]
            kept[node["output"]] = layer.out_index.tolist()
        elif node["op"] == "add":
            assert src[0] == src[1], node["name"]
            kept[node["output"]] = src[0]
        elif node["op"] == "linear":
            assert model.get_submodule(node["name"]).in_features == len(src[0])
        else:
            kept[node["output"]] = src[0]
    return kept


@pytest.mark.parametrize("ctor,step", [(resnet18, 0.05), (resnet50, 0.2)])
def test_pruning_keeps_residual_blocks_consistent(ctor, step):
    torch.manual_seed(0)
    model = adapt(ctor(num_classes=7), "splora", rank=2)
    x = torch.randn(2, 3, 32, 32)
    history = prune_to_density(model, x[:1], 0.3, step_fraction=step)
    assert history and history[-1] <= 0.3 + 1e-9 and density(model) == pytest.approx(history[-1])
    assert all(a > b for a, b in zip(history, history[1:]))  # every step removed something
    _check_channel_consistency(model)
    for name, p in plan(model).items():
        for idx in (p["out_index"], p["in_index"]):
            assert idx == sorted(set(idx)), name
    assert model(x).shape == (2, 7)
    # The residual groups Torch-Pruning found include every conv writing to the sum.
    groups = channel_groups(model, x[:1])
    g = next(g for g in groups if "layer1.0.conv2" in g.producers) if ctor is resnet18 else None
    if g is not None:
        assert {"conv1", "layer1.0.conv2", "layer1.1.conv2"} <= set(g.producers)
        assert "bn1" in g.norms


def test_pruned_channels_do_not_grow_back_during_training():
    torch.manual_seed(0)
    model = spaedge_tiny()
    model.replace_head(3)
    adapt(model, "splora", rank=2)
    x = torch.randn(8, 1, 28, 28)
    prune_to_density(model, x[:1], 0.5)
    before = plan(model)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), torch.randint(0, 3, (8,))).backward()
        opt.step()
    assert plan(model) == before
    assert {n: p.shape for n, p in model.named_parameters()} == shapes
