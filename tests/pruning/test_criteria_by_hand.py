"""Criteria that cannot be swapped unnoticed.

Every expected score here is computed in the test from the definitions in
``spaedge.pruning.criteria``'s docstring, by hand: closed forms, or an explicit
forward pass and a backward pass written with plain tensor ops (no autograd,
nothing of the implementation). The networks are crafted so that magnitude,
gradient, Taylor and LRP put the channels in four different orders, so a
criterion that silently became another one (or a name wired to the wrong
function) fails.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spaedge.adapters import SPLoRA
from spaedge.pruning.criteria import CRITERIA, LRP_EPS
from spaedge.pruning.groups import channel_groups

# float32 implementation against float64 hand values
RTOL, ATOL = 1e-5, 1e-6


def _set_task_weight(layer: SPLoRA, task_w: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor) -> None:
    """Give ``layer`` the adapter factors ``lora_a``/``lora_b`` and the base weight
    that makes its task weight ``task_w`` (W_task = W + centre tap of B @ A)."""
    k = task_w.shape[-1]
    delta = torch.zeros_like(task_w)
    delta[:, :, k // 2, k // 2] = lora_b @ lora_a
    with torch.no_grad():
        layer.lora_a.copy_(lora_a)
        layer.lora_b.copy_(lora_b)
        layer.weight.copy_(task_w - delta)


def _task_weight(layer: SPLoRA) -> torch.Tensor:
    """W_task by hand, in float64: the base weight plus B @ A at the centre tap."""
    w = layer.weight.detach().double().clone()
    k = w.shape[-1]
    w[:, :, k // 2, k // 2] += layer.lora_b.detach().double() @ layer.lora_a.detach().double()
    return w


def _stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    """The epsilon rule's denominator z + eps * sign(z), sign(0) = +1."""
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _div0(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / b, 0 where b == 0 (LRP-0 at an add or average pool whose output is 0)."""
    return torch.where(b == 0, torch.zeros_like(a), a / torch.where(b == 0, torch.ones_like(b), b))


def _order(scores) -> tuple[int, ...]:
    """Channel positions, lowest score first."""
    return tuple(int(i) for i in torch.as_tensor(scores).argsort())


# --------------------------------------------------------------- one conv layer
class OneConv(nn.Module):
    """x -> conv1 (SPLoRA) -> ReLU -> global average pool -> fc."""

    def __init__(self, cin: int, cout: int, classes: int, k: int = 1, rank: int = 1):
        super().__init__()
        self.conv1 = SPLoRA(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), rank=rank)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cout, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.relu(self.conv1(x))), 1))


# The crafted layer: 2 inputs, 4 channels, 2 classes, one 1x1 image x = (1, 1), label 0.
#   W_task rows (1, 0), (8, 0), (-4, 5), (7, -6)  -> z = W_task x = (1, 8, 1, 1), all active
#   fc rows V0 = (2, .5, 8, 1), V1 = (6, -.5, 10, -2), bias (0, 5) -> logits (15, 15), p = (.5, .5)
#   dL/dz_c = sum_k (p_k - [k = 0]) V_kc = (2, -.5, 1, -1.5)
#   magnitude  mean |W_task[c]|             = (.5, 4, 4.5, 6.5)  order 0 1 2 3
#   gradient   mean_i |dL/dz_c x_i|         = (2, .5, 1, 1.5)    order 1 2 3 0
#   taylor     |sum_i W_ci dL/dz_c x_i|     = (2, 4, 1, 1.5)     order 2 3 0 1
#   lrp        |z_c V0_c| * l0/(l0 + eps)   = (2, 4, 8, 1)       order 3 0 1 2
# Every rank position holds a different channel under each criterion (a Latin
# square), so any two criteria disagree on every position, and the n lowest
# channels differ for every n in 1..3. The SPLoRA factors are not zero and the
# base weight alone ranks differently (magnitude (2.5, 6, 5.5, 10.5): order 0 2 1 3),
# so a criterion reading the frozen base instead of the task weight fails too.
W_TASK = torch.tensor([[1.0, 0.0], [8.0, 0.0], [-4.0, 5.0], [7.0, -6.0]])
LORA_A = torch.tensor([[1.0, -1.0]])
LORA_B = torch.tensor([[3.0], [-2.0], [1.0], [-4.0]])
FC_W = torch.tensor([[2.0, 0.5, 8.0, 1.0], [6.0, -0.5, 10.0, -2.0]])
FC_B = torch.tensor([0.0, 5.0])
X = torch.ones(1, 2, 1, 1)
Y = torch.tensor([0])
DESIGNED_ORDER = {"magnitude": (0, 1, 2, 3), "gradient": (1, 2, 3, 0), "taylor": (2, 3, 0, 1), "lrp": (3, 0, 1, 2)}


def _crafted() -> OneConv:
    net = OneConv(2, 4, 2)
    _set_task_weight(net.conv1, W_TASK[:, :, None, None], LORA_A, LORA_B)
    with torch.no_grad():
        net.fc.weight.copy_(FC_W)
        net.fc.bias.copy_(FC_B)
    return net


def _crafted_hand_scores() -> dict[str, torch.Tensor]:
    """The four criteria on the crafted layer, in closed form (see the table above)."""
    w, v, b = W_TASK.double(), FC_W.double(), FC_B.double()
    x, y = X.double().flatten(), int(Y[0])
    z = w @ x
    logits = v @ z.clamp(min=0) + b
    p = logits.softmax(0)
    dz = (p - F.one_hot(torch.tensor(y), 2).double()) @ v * (z > 0)  # dL/dz (batch of one image)
    dw = dz[:, None] * x[None, :]                                    # dL/dW_task
    return {
        "magnitude": w.abs().mean(1),
        "gradient": dw.abs().mean(1),
        "taylor": (w * dw).sum(1).abs(),
        "lrp": (z.clamp(min=0) * v[y] * logits[y] / _stab(logits[y], LRP_EPS)).abs(),
    }


HAND = _crafted_hand_scores()
HAND["l1"] = HAND["magnitude"]


def test_the_crafted_hand_values_are_what_the_design_says():
    # The closed forms above agree with the table, so the orders below are the designed ones.
    want = {"magnitude": [0.5, 4, 4.5, 6.5], "gradient": [2, 0.5, 1, 1.5], "taylor": [2, 4, 1, 1.5],
            "lrp": [2, 4, 8, 1]}
    for name, values in want.items():
        torch.testing.assert_close(HAND[name], torch.tensor(values, dtype=torch.float64), rtol=1e-6, atol=0)
        assert _order(HAND[name]) == DESIGNED_ORDER[name], name
    # Variants a criterion could drift to rank differently here: magnitude of the
    # frozen base weight, Taylor summing |w * g| per entry instead of |sum w * g|.
    base_magnitude = _crafted().conv1.weight.detach().abs().flatten(1).mean(1)
    assert _order(base_magnitude) != DESIGNED_ORDER["magnitude"]
    g = torch.tensor([2.0, -0.5, 1.0, -1.5])  # dL/dz
    entrywise_taylor = (W_TASK * g[:, None] * X.flatten()).abs().sum(1)
    assert _order(entrywise_taylor) != DESIGNED_ORDER["taylor"]


@pytest.mark.parametrize("name", ["magnitude", "gradient", "taylor", "lrp"])
def test_each_criterion_equals_its_hand_values_on_the_crafted_layer(name):
    net = _crafted()
    (group,) = channel_groups(net, torch.zeros(1, 2, 1, 1))
    assert group.producers == ["conv1"] and group.consumers == ["fc"] and group.size == 4
    got = CRITERIA[name](net, group, data=[(X, Y)], cache={})
    torch.testing.assert_close(got.double(), HAND[name], rtol=RTOL, atol=ATOL)
    assert _order(got) == DESIGNED_ORDER[name]


def test_the_four_criteria_rank_the_crafted_channels_differently():
    net = _crafted()
    (group,) = channel_groups(net, torch.zeros(1, 2, 1, 1))
    orders = {name: _order(CRITERIA[name](net, group, data=[(X, Y)])) for name in DESIGNED_ORDER}
    assert orders == DESIGNED_ORDER
    for position in range(4):  # a Latin square: every position differs between every two criteria
        assert len({o[position] for o in orders.values()}) == 4, position


# ------------------------------------------- averaging over images and batches
def _one_conv_hand(net: OneConv, data) -> dict[str, torch.Tensor]:
    """Gradient, Taylor and LRP of ``net.conv1`` with an explicit forward and
    backward pass (im2col), per the module docstring: per batch, L = mean
    cross-entropy; gradient = mean over batches of mean |dL/dW_task| per filter;
    taylor = mean over batches of |sum_filter W_task * dL/dW_task|; lrp = mean
    over images of |relevance of the channel summed over positions|."""
    w = _task_weight(net.conv1)
    k = w.shape[-1]
    wm = w.flatten(1)                                     # (C, Cin*k*k)
    v, b = net.fc.weight.detach().double(), net.fc.bias.detach().double()
    grads, taylors, lrps = [], [], []
    for x, y in data:
        n = x.shape[0]
        u = F.unfold(x.double(), k, padding=k // 2)        # (N, Cin*k*k, P)
        z = torch.einsum("ck,nkp->ncp", wm, u)             # conv output
        a = z.clamp(min=0)
        pooled = a.mean(2)
        logits = pooled @ v.T + b
        dlogits = (logits.softmax(1) - F.one_hot(y, v.shape[0]).double()) / n
        dz = (dlogits @ v)[:, :, None] / z.shape[2] * (z > 0)
        dw = torch.einsum("ncp,nkp->ck", dz, u)
        grads.append(dw.abs().mean(1))
        taylors.append((wm * dw).sum(1))                   # signed, per batch
        ly = logits[torch.arange(n), y]
        # relevance at the conv output: R_z = relu(z) * (1/P) * V[y, c] * R_y / (l_y + eps sign l_y), R_y = l_y
        r = a / z.shape[2] * (v[y] * (ly / _stab(ly, LRP_EPS))[:, None])[:, :, None]
        lrps.append(r.sum(2))                              # signed, per image
    taylors, lrps = torch.stack(taylors), torch.cat(lrps)
    return {"gradient": torch.stack(grads).mean(0), "taylor": taylors.abs().mean(0), "lrp": lrps.abs().mean(0),
            "taylor_signed": taylors, "lrp_signed": lrps}


def test_data_criteria_average_over_batches_and_images_as_documented():
    torch.manual_seed(1)
    net = OneConv(2, 4, 3, k=3, rank=2)
    nn.init.normal_(net.conv1.lora_b)
    g = torch.Generator().manual_seed(2)
    data = [(torch.randn(3, 2, 5, 5, generator=g), torch.tensor(labels)) for labels in ([0, 1, 2], [2, 2, 1])]
    (group,) = channel_groups(net, torch.zeros(1, 2, 5, 5))
    hand = _one_conv_hand(net, data)
    cache: dict = {}
    for name in ("gradient", "taylor", "lrp"):
        got = CRITERIA[name](net, group, data=data, cache=cache)
        torch.testing.assert_close(got.double(), hand[name], rtol=1e-4, atol=1e-7, msg=name)
    # The data make the check sensitive to where the absolute value is taken:
    # a channel's Taylor sum changes sign between the batches, and its LRP
    # relevance between images, so |mean| would not pass for mean |.|.
    assert ((hand["taylor_signed"] > 0).any(0) & (hand["taylor_signed"] < 0).any(0)).any()
    assert ((hand["lrp_signed"] > 0).any(0) & (hand["lrp_signed"] < 0).any(0)).any()
    assert not torch.allclose(hand["taylor_signed"].mean(0).abs(), hand["taylor"], rtol=1e-2)
    assert not torch.allclose(hand["lrp_signed"].mean(0).abs(), hand["lrp"], rtol=1e-2)
