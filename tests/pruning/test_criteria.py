"""Channel importance criteria and pruning schedules: the gradient, Taylor and
LRP scores against hand computations, and every criterion x schedule reaching
its density."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _toolchain_helpers import random_batches as _data
from _toolchain_helpers import tiny_task_model as _tiny
from torch import nn

from spaedge.pruning.criteria import CRITERIA, lrp_relevance, task_weight_grads
from spaedge.pruning.groups import channel_groups
from spaedge.pruning.prune import density, prune_to_density

torch.backends.mkldnn.enabled = False


# ------------------------------------------------------------------ criteria
def test_gradient_and_taylor_match_a_hand_computation():
    model = _tiny()
    data = _data(1)
    layer_name = "layer1.0.conv1"
    layer = model.get_submodule(layer_name)
    wg = task_weight_grads(model, data)
    # reference: autograd through the real task weight (adapter factors included)
    model.eval()
    w = layer.task_weight()
    w_leaf = w.detach().clone().requires_grad_(True)
    layer.weight_probe = w_leaf
    F.cross_entropy(model(data[0][0]), data[0][1]).backward()
    layer.weight_probe = None
    torch.testing.assert_close(wg[layer_name][0][1], w_leaf.grad)
    group = next(
        g for g in channel_groups(model, torch.zeros(1, 1, 28, 28)) if layer_name in g.producers
    )
    got = CRITERIA["taylor"](model, group, data=data)
    want = torch.zeros(group.size)
    for name in group.producers:
        w, g = wg[name][0]
        want += (w * g).reshape(w.shape[0], -1).sum(1).abs()
    torch.testing.assert_close(got, want / len(group.producers), rtol=1e-5, atol=1e-12)
    grad = CRITERIA["gradient"](model, group, data=data)
    want = torch.zeros(group.size)
    for name in group.producers:
        w, g = wg[name][0]
        want += g.abs().reshape(g.shape[0], -1).mean(1)
    torch.testing.assert_close(grad, want / len(group.producers), rtol=1e-5, atol=1e-12)


def test_data_criteria_refuse_to_run_without_data():
    model = _tiny()
    with pytest.raises(ValueError, match="needs task data"):
        prune_to_density(model, torch.zeros(1, 1, 28, 28), 0.5, criterion="taylor")


def test_lrp_epsilon_rule_on_a_small_mlp_matches_explicit_propagation():
    # Explicit layer-by-layer epsilon-LRP (the rule at linear layers) vs the implementation.
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            from spaedge.adapters import SPLoRA

            self.l1 = SPLoRA(nn.Linear(5, 4, bias=True), rank=2)
            self.relu = nn.ReLU()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(self.relu(self.l1(x)))

    net = Net()
    nn.init.normal_(net.l1.lora_b)
    x = torch.randn(6, 5)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    eps = 1e-2
    got = lrp_relevance(net, [(x, y)], eps=eps)["l1"]
    with torch.no_grad():
        z1 = net.l1(x)
        a1 = z1.clamp(min=0)
        z2 = net.fc(a1)
        r2 = torch.zeros_like(z2)
        r2[torch.arange(6), y] = 1.0  # relevance 1 at the true-class logit
        s = r2 / (z2 + eps * torch.where(z2 >= 0, 1.0, -1.0))
        r_a1 = a1 * (s @ net.fc.weight)  # relevance at fc input (= relu output)
        r_z1 = r_a1 * (z1 > 0)  # relu passes relevance through
        want = r_z1.abs().mean(0)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("criterion", ["magnitude", "gradient", "taylor", "lrp"])
@pytest.mark.parametrize("schedule", ["iterative", "oneshot"])
def test_prune_to_density_with_every_criterion_and_schedule(criterion, schedule):
    model = _tiny()
    data = _data(1, bs=8)
    steps = []
    hist = prune_to_density(
        model,
        torch.zeros(1, 1, 28, 28),
        0.4,
        criterion=criterion,
        schedule=schedule,
        step_fraction=0.2,
        score_kwargs={"data": data},
        recover=lambda s, d: steps.append(s),
    )
    assert density(model) <= 0.4 + 1e-9
    assert len(steps) == (len(hist) if schedule == "iterative" else 1)
    model(torch.zeros(2, 1, 28, 28))


def test_bad_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown pruning schedule"):
        prune_to_density(_tiny(), torch.zeros(1, 1, 28, 28), 0.5, schedule="sometimes")
