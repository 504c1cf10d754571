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

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spaedge.adapters import SPLoRA, adapt
from spaedge.cli import build_parser
from spaedge.cli.common import config_from_args
from spaedge.pruning.criteria import CRITERIA, DATA_CRITERIA, LRP_EPS, lrp_relevance
from spaedge.pruning.groups import channel_groups
from spaedge.pruning.prune import prune_step
from spaedge.train.config import TrainConfig

# float32 implementation against float64 hand values
RTOL, ATOL = 1e-5, 1e-6


def _set_task_weight(
    layer: SPLoRA, task_w: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor
) -> None:
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
#   lrp        |z_c V0_c| / (l0 + eps)      = (2, 4, 8, 1) / 15  order 3 0 1 2
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
DESIGNED_ORDER = {
    "magnitude": (0, 1, 2, 3),
    "gradient": (1, 2, 3, 0),
    "taylor": (2, 3, 0, 1),
    "lrp": (3, 0, 1, 2),
}


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
    dw = dz[:, None] * x[None, :]  # dL/dW_task
    return {
        "magnitude": w.abs().mean(1),
        "gradient": dw.abs().mean(1),
        "taylor": (w * dw).sum(1).abs(),
        "lrp": (z.clamp(min=0) * v[y] / _stab(logits[y], LRP_EPS)).abs(),
    }


HAND = _crafted_hand_scores()
HAND["l1"] = HAND["magnitude"]


def test_the_crafted_hand_values_are_what_the_design_says():
    # The closed forms above agree with the table, so the orders below are the designed ones.
    want = {
        "magnitude": [0.5, 4, 4.5, 6.5],
        "gradient": [2, 0.5, 1, 1.5],
        "taylor": [2, 4, 1, 1.5],
        "lrp": [2 / 15, 4 / 15, 8 / 15, 1 / 15],
    }
    for name, values in want.items():
        torch.testing.assert_close(
            HAND[name], torch.tensor(values, dtype=torch.float64), rtol=1e-6, atol=0
        )
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
    over images of the sum over positions of |relevance| (1 at the true logit)."""
    w = _task_weight(net.conv1)
    k = w.shape[-1]
    wm = w.flatten(1)  # (C, Cin*k*k)
    v, b = net.fc.weight.detach().double(), net.fc.bias.detach().double()
    grads, taylors, lrps = [], [], []
    for x, y in data:
        n = x.shape[0]
        u = F.unfold(x.double(), k, padding=k // 2)  # (N, Cin*k*k, P)
        z = torch.einsum("ck,nkp->ncp", wm, u)  # conv output
        a = z.clamp(min=0)
        pooled = a.mean(2)
        logits = pooled @ v.T + b
        dlogits = (logits.softmax(1) - F.one_hot(y, v.shape[0]).double()) / n
        dz = (dlogits @ v)[:, :, None] / z.shape[2] * (z > 0)
        dw = torch.einsum("ncp,nkp->ck", dz, u)
        grads.append(dw.abs().mean(1))
        taylors.append((wm * dw).sum(1))  # signed, per batch
        ly = logits[torch.arange(n), y]
        # relevance at the conv output: R_z = relu(z) * (1/P) * V[y, c] * R_y / (l_y + eps sign l_y), R_y = 1
        r = a / z.shape[2] * (v[y] * (1 / _stab(ly, LRP_EPS))[:, None])[:, :, None]
        lrps.append(r.sum(2))  # signed, per image (one sign per channel and image: a >= 0)
    taylors, lrps = torch.stack(taylors), torch.cat(lrps)
    return {
        "gradient": torch.stack(grads).mean(0),
        "taylor": taylors.abs().mean(0),
        "lrp": lrps.abs().mean(0),
        "taylor_signed": taylors,
        "lrp_signed": lrps,
    }


def test_data_criteria_average_over_batches_and_images_as_documented():
    torch.manual_seed(1)
    net = OneConv(2, 4, 3, k=3, rank=2)
    nn.init.normal_(net.conv1.lora_b)
    g = torch.Generator().manual_seed(2)
    data = [
        (torch.randn(3, 2, 5, 5, generator=g), torch.tensor(labels))
        for labels in ([0, 1, 2], [2, 2, 1])
    ]
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


# ------------------------------------------------- a residual block, by hand
class Residual(nn.Module):
    """A ResNet in miniature: conv0-bn0-relu-maxpool, one basic block (conv1-bn1-relu-conv2-bn2,
    + identity, relu), global average pool, fc. Channel groups: conv0 and conv2 write to the
    residual sum (with bn0, bn2; read by conv1 and fc), conv1 alone (bn1; read by conv2)."""

    def __init__(self, c: int = 4, m: int = 5, classes: int = 3):
        super().__init__()
        self.conv0 = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(c)
        self.relu0 = nn.ReLU()
        self.maxpool = nn.MaxPool2d(2)
        self.conv1 = nn.Conv2d(c, m, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(m, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        h = self.maxpool(self.relu0(self.bn0(self.conv0(x))))
        r = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(h)))))
        return self.fc(torch.flatten(self.pool(self.relu2(r + h)), 1))


def _residual(seed: int = 0) -> Residual:
    """The block adapted with SPLoRA (rank 2, non-zero B), BatchNorms with running
    statistics far from any batch's and non-trivial affine parameters."""
    torch.manual_seed(seed)
    net = adapt(Residual(), "splora", rank=2)
    with torch.no_grad():
        nn.init.normal_(net.fc.weight)
        for layer in (net.conv0, net.conv1, net.conv2):
            layer.weight.mul_(3)
            nn.init.normal_(layer.lora_b, std=0.3)
    for bn in (net.bn0, net.bn1, net.bn2):
        n = bn.num_features
        bn.running_mean.copy_(torch.randn(n) * 0.3)
        bn.running_var.copy_(torch.rand(n) + 0.5)
        with torch.no_grad():
            bn.weight.copy_(torch.rand(n) + 0.5)
            bn.bias.copy_(torch.randn(n) * 0.2)
    return net


def _residual_data():
    g = torch.Generator().manual_seed(3)
    return [
        (torch.randn(3, 1, 8, 8, generator=g), torch.tensor(labels))
        for labels in ([0, 1, 2], [1, 2, 2])
    ]


RESIDUAL_EXAMPLE = torch.zeros(1, 1, 8, 8)


def _conv_fwd(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Stride-1 'same' convolution by im2col."""
    k = w.shape[-1]
    u = F.unfold(a, k, padding=k // 2)
    return torch.einsum("ck,nkp->ncp", w.flatten(1), u).reshape(
        a.shape[0], w.shape[0], *a.shape[2:]
    )


def _conv_lrp(
    a: torch.Tensor, w: torch.Tensor, z: torch.Tensor, r: torch.Tensor, eps: float
) -> torch.Tensor:
    """Epsilon rule through a conv z = w * a: every input entry of every patch gets
    a_i w_ci / (z_c + eps sign z_c) of R_c, summed over the patches it is in."""
    k = w.shape[-1]
    u = F.unfold(a, k, padding=k // 2)  # (N, Cin*k*k, P)
    s = (r / _stab(z, eps)).flatten(2)  # (N, C, P)
    per_entry = u * torch.einsum("ck,ncp->nkp", w.flatten(1), s)
    return F.fold(per_entry, a.shape[2:], k, padding=k // 2)


def _bn_fwd(z: torch.Tensor, bn: nn.BatchNorm2d):
    """Inference-mode BatchNorm as an affine map y = scale * z + shift; returns (y, scale)."""
    scale = bn.weight.detach().double() / (bn.running_var.double() + bn.eps).sqrt()
    shift = bn.bias.detach().double() - scale * bn.running_mean.double()
    return z * scale[:, None, None] + shift[:, None, None], scale[:, None, None]


def _maxpool2(a: torch.Tensor):
    """2x2/2 max pool by reshaping; returns (output, one-hot mask of each window's winner)."""
    n, c, h, w = a.shape
    win = (
        a.reshape(n, c, h // 2, 2, w // 2, 2)
        .permute(0, 1, 2, 4, 3, 5)
        .reshape(n, c, h // 2, w // 2, 4)
    )
    winner = F.one_hot(win.argmax(-1), 4).double()
    return win.max(-1).values, winner


def _maxpool2_lrp(a: torch.Tensor, winner: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """All of a window's relevance to its winner."""
    n, c, h, w = a.shape
    per = winner * r[..., None]
    return per.reshape(n, c, h // 2, w // 2, 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


def _conv_zplus(a: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, r: torch.Tensor):
    """z+ rule through a conv with its BatchNorm folded in (W' = scale * W, bias
    ignored): every input entry of every patch gets a_i W'+_ci / z+_c of R_c, with
    z+_c = sum_i a_i W'+_ci, summed over the patches it is in."""
    k = w.shape[-1]
    wp = (w * scale.reshape(-1, 1, 1, 1)).clamp(min=0).flatten(1)
    u = F.unfold(a, k, padding=k // 2)  # (N, Cin*k*k, P)
    zp = torch.einsum("ck,nkp->ncp", wp, u)
    per_entry = u * torch.einsum("ck,ncp->nkp", wp, _div0(r.flatten(2), zp))
    return F.fold(per_entry, a.shape[2:], k, padding=k // 2)


def _residual_lrp_by_hand(net: Residual, data, eps: float, rule: str = "zplus"):
    """LRP of the residual net, layer by layer, from relevance 1 at the true-class
    logit down to every conv output: the epsilon rule at the linear layer; LRP-0 at
    the add (in proportion to each input) and the average pool; all to the winner
    at the max pool; unchanged through ReLUs; at every conv the z+ rule with its
    BatchNorm folded in (``rule="zplus"``, the SPA authors' LRP), or, for contrast,
    gradient x input (``rule="lrp0"``: LRP-0 through the BatchNorm and the conv).
    A conv's score: mean over images of the sum over positions of |relevance| at
    its BatchNorm's output."""
    w0, w1, w2 = (_task_weight(getattr(net, n)) for n in ("conv0", "conv1", "conv2"))
    v, b = net.fc.weight.detach().double(), net.fc.bias.detach().double()
    totals = {"conv0": [], "conv1": [], "conv2": []}

    def through(a, w, z, y, scale, r_y):  # relevance at a BatchNorm's output -> its conv's input
        if rule == "zplus":
            return _conv_zplus(a, w, scale, r_y)
        return _conv_lrp(a, w, z, z * scale * _div0(r_y, y), 0.0)

    for x, y in data:
        x = x.double()
        n = x.shape[0]
        # forward
        z0 = _conv_fwd(x, w0)
        y0, s0 = _bn_fwd(z0, net.bn0)
        a0 = y0.clamp(min=0)
        h, winner = _maxpool2(a0)
        z1 = _conv_fwd(h, w1)
        y1, s1 = _bn_fwd(z1, net.bn1)
        a1 = y1.clamp(min=0)
        z2 = _conv_fwd(a1, w2)
        y2, s2 = _bn_fwd(z2, net.bn2)
        total = y2 + h
        a = total.clamp(min=0)
        pooled = a.mean((2, 3))
        logits = pooled @ v.T + b
        # relevance, top down
        r_logits = torch.zeros_like(logits)
        r_logits[torch.arange(n), y] = 1.0
        r_pooled = pooled * ((r_logits / _stab(logits, eps)) @ v)  # fc, epsilon
        r_a = (
            a / (a.shape[2] * a.shape[3]) * _div0(r_pooled, pooled)[:, :, None, None]
        )  # average pool, LRP-0
        r_total = r_a  # ReLU
        r_y2, r_h = y2 * _div0(r_total, total), h * _div0(r_total, total)  # add, LRP-0
        r_y1 = through(a1, w2, z2, y2, s2, r_y2)  # conv2 + bn2; ReLU
        r_h = r_h + through(h, w1, z1, y1, s1, r_y1)  # conv1 + bn1, + identity
        r_y0 = _maxpool2_lrp(a0, winner, r_h)  # max pool; ReLU
        for name, r in (("conv0", r_y0), ("conv1", r_y1), ("conv2", r_y2)):
            totals[name].append(r.abs().sum((2, 3)))
    return {name: torch.cat(t).mean(0) for name, t in totals.items()}


def test_lrp_through_conv_batchnorm_residual_add_and_max_pool_matches_explicit_propagation():
    net = _residual()
    with torch.no_grad():  # a negative BatchNorm scale: folding it flips which weights are W'+
        for bn in (net.bn0, net.bn1, net.bn2):
            bn.weight[1] *= -1
    data = _residual_data()
    eps = 0.25  # large enough that the epsilon rule at the fc visibly matters
    want = _residual_lrp_by_hand(net, data, eps)
    # what the test tells apart: gradient x input, the fc's LRP-0, BatchNorm left unfolded
    grad_x_input = _residual_lrp_by_hand(net, data, eps, rule="lrp0")
    lrp0_fc = _residual_lrp_by_hand(net, data, 0.0)
    unfolded = copy.deepcopy(net)
    with torch.no_grad():
        for bn in (unfolded.bn0, unfolded.bn1, unfolded.bn2):
            bn.weight.abs_()
    unfolded_want = _residual_lrp_by_hand(unfolded, data, eps)
    for other in (grad_x_input, lrp0_fc):
        assert all(not torch.allclose(want[n], other[n], rtol=1e-2) for n in ("conv0", "conv1"))
    assert not torch.allclose(want["conv0"], unfolded_want["conv0"], rtol=1e-2)
    net.train()  # the criterion must use the running statistics all the same, and give the mode back
    got = lrp_relevance(net, data, eps=eps)
    assert net.training
    assert set(got) == {"conv0", "conv1", "conv2"}
    for name in want:
        torch.testing.assert_close(got[name].double(), want[name], rtol=1e-4, atol=1e-9, msg=name)


def test_lrp_criterion_averages_the_residual_groups_producers():
    net = _residual()
    data = _residual_data()
    groups = {tuple(g.producers): g for g in channel_groups(net, RESIDUAL_EXAMPLE)}
    assert set(groups) == {("conv0", "conv2"), ("conv1",)}
    res, mid = groups[("conv0", "conv2")], groups[("conv1",)]
    assert res.norms == ["bn0", "bn2"] and res.consumers == ["conv1", "fc"]
    assert mid.norms == ["bn1"] and mid.consumers == ["conv2"]
    want = _residual_lrp_by_hand(net, data, LRP_EPS)
    cache: dict = {}
    torch.testing.assert_close(
        CRITERIA["lrp"](net, res, data=data, cache=cache).double(),
        (want["conv0"] + want["conv2"]) / 2,
        rtol=1e-4,
        atol=1e-9,
    )
    torch.testing.assert_close(
        CRITERIA["lrp"](net, mid, data=data, cache=cache).double(),
        want["conv1"],
        rtol=1e-4,
        atol=1e-9,
    )


# ------------------------------------------------------ the name on the command line
def _criterion_from_command_line(name: str) -> str:
    """``spaedge train --criterion NAME`` as the CLI parses it into the TrainConfig."""
    return config_from_args(
        TrainConfig, build_parser().parse_args(["train", "--criterion", name])
    ).criterion


def test_every_criterion_the_cli_offers_is_checked_here():
    choices = next(f for f in dataclasses.fields(TrainConfig) if f.name == "criterion").metadata[
        "choices"
    ]()
    assert choices == list(CRITERIA)
    assert set(choices) == set(HAND)  # a new criterion needs its hand-computed ranking in this file
    assert {"gradient", "taylor", "lrp"} == DATA_CRITERIA
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--criterion", "no-such-criterion"])


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("name", sorted(HAND))
def test_the_cli_name_prunes_the_channels_its_criterion_ranks_lowest(name, n):
    # The pipeline's path: the parsed name into prune_step, data only for the data criteria.
    criterion = _criterion_from_command_line(name)
    assert criterion == name
    net = _crafted()
    removed = prune_step(
        net,
        torch.zeros(1, 2, 1, 1),
        n,
        criterion=criterion,
        score_kwargs={"data": [(X, Y)]} if criterion in DATA_CRITERIA else None,
    )
    assert removed == n
    kept = sorted(_order(HAND[name])[n:])
    assert net.conv1.out_index.tolist() == kept
    assert net.conv1.in_index.tolist() == [0, 1]
    torch.testing.assert_close(net.fc.weight.detach(), FC_W[:, kept])


# ------------------------------------------- a pruning step removes the lowest
def _hand_step(scores: list[torch.Tensor], n: int) -> list[set[int]]:
    """Positions a step of ``n`` removes by hand: each group's scores divided by the
    group's mean, one ranking over all groups, the n lowest (each group keeping one)."""
    ranked = sorted(
        (float(s[p] / s.mean()), gi, p) for gi, s in enumerate(scores) for p in range(len(s))
    )
    drop: list[set[int]] = [set() for _ in scores]
    for _, gi, p in ranked:
        if sum(map(len, drop)) == n:
            break
        if len(drop[gi]) < len(scores[gi]) - 1:
            drop[gi].add(p)
    return drop


# Filters whose every task-weight entry is +-s: mean |w| = s, whatever inputs a filter
# keeps. Group "res" (conv0 + conv2 write the residual sum): producer mean
# (1.8, .5, 3, 2.7), normalised (.9, .25, 1.5, 1.35); group "mid" (conv1):
# (.4, .1, .2, .5, .3), normalised (1.33, .33, .67, 1.67, 1). Four channels go:
# res 1 (.25), mid 1 (.33), mid 2 (.67), res 0 (.9). Then two more, of what is
# left: mid 4 (.3/.4 = .75) and res 3 (2.7/2.85 = .95), at positions 2 and 1.
S0 = [1.6, 0.1, 5.9, 0.4]
S2 = [2.0, 0.9, 0.1, 5.0]
S1 = [0.4, 0.1, 0.2, 0.5, 0.3]


def _signs(shape, g) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=g).float() * 2 - 1


def _magnitude_residual() -> Residual:
    net = _residual()
    g = torch.Generator().manual_seed(4)
    for name, s in (("conv0", S0), ("conv1", S1), ("conv2", S2)):
        layer = getattr(net, name)
        w = _signs(layer.weight.shape, g) * torch.tensor(s)[:, None, None, None]
        _set_task_weight(layer, w, layer.lora_a.detach(), layer.lora_b.detach())
    return net


def _residual_logits_by_hand(net: Residual, keep_res, keep_mid, x) -> torch.Tensor:
    """The unpruned net's task weights, BatchNorms and head restricted to the kept
    channels, run forward by hand (what the pruned net must compute)."""
    w0, w1, w2 = (_task_weight(getattr(net, n)) for n in ("conv0", "conv1", "conv2"))
    w0, w1, w2 = w0[keep_res], w1[keep_mid][:, keep_res], w2[keep_res][:, keep_mid]

    def bn(z, m, keep):
        scale = m.weight.detach().double()[keep] / (m.running_var.double()[keep] + m.eps).sqrt()
        shift = m.bias.detach().double()[keep] - scale * m.running_mean.double()[keep]
        return z * scale[:, None, None] + shift[:, None, None]

    h = _maxpool2(bn(_conv_fwd(x.double(), w0), net.bn0, keep_res).clamp(min=0))[0]
    r = bn(_conv_fwd(bn(_conv_fwd(h, w1), net.bn1, keep_mid).clamp(min=0), w2), net.bn2, keep_res)
    pooled = (r + h).clamp(min=0).mean((2, 3))
    return pooled @ net.fc.weight.detach().double()[:, keep_res].T + net.fc.bias.detach().double()


def _check_pruned(
    net: Residual, original: Residual, keep_res: list[int], keep_mid: list[int]
) -> None:
    for name in ("conv0", "conv2"):
        assert getattr(net, name).out_index.tolist() == keep_res, name
    assert net.conv1.out_index.tolist() == keep_mid
    assert net.conv0.in_index.tolist() == [0]
    assert net.conv1.in_index.tolist() == keep_res
    assert net.conv2.in_index.tolist() == keep_mid
    for name, keep in (("bn0", keep_res), ("bn1", keep_mid), ("bn2", keep_res)):
        bn, bn0 = getattr(net, name), getattr(original, name)
        assert bn.num_features == len(keep), name
        for t in ("weight", "bias", "running_mean", "running_var"):
            torch.testing.assert_close(
                getattr(bn, t).detach(), getattr(bn0, t).detach()[keep], rtol=0, atol=0
            )
    assert net.fc.in_features == len(keep_res)
    x = _residual_data()[0][0]
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            net(x).double(),
            _residual_logits_by_hand(original, keep_res, keep_mid, x),
            rtol=1e-4,
            atol=1e-5,
        )


def test_a_step_removes_the_lowest_normalised_channels_over_all_groups():
    net = _magnitude_residual()
    original = copy.deepcopy(net)
    res = (torch.tensor(S0) + torch.tensor(S2)) / 2
    mid = torch.tensor(S1)
    # The design tells apart the ranking of the docs from near misses: raw scores
    # ranked globally, or the residual group scored by one of its producers.
    assert _hand_step([res, mid], 4) == [{0, 1}, {1, 2}]
    raw = sorted(
        [(float(v), 0, p) for p, v in enumerate(res)]
        + [(float(v), 1, p) for p, v in enumerate(mid)]
    )
    assert {(gi, p) for _, gi, p in raw[:4]} != {(0, 0), (0, 1), (1, 1), (1, 2)}
    assert _hand_step([torch.tensor(S0), mid], 4) != [{0, 1}, {1, 2}]
    assert _hand_step([torch.tensor(S2), mid], 4) != [{0, 1}, {1, 2}]

    assert prune_step(net, RESIDUAL_EXAMPLE, 4, criterion="magnitude") == 4
    _check_pruned(net, original, keep_res=[2, 3], keep_mid=[0, 3, 4])
    # A second step ranks what is left (positions), and removes base channels 4 of
    # mid (position 2) and 3 of res (position 1): indices stay those of the base.
    assert _hand_step([res[[2, 3]], mid[[0, 3, 4]]], 2) == [{1}, {2}]
    assert prune_step(net, RESIDUAL_EXAMPLE, 2, criterion="magnitude") == 2
    _check_pruned(net, original, keep_res=[2], keep_mid=[0, 3])


def test_an_lrp_step_removes_the_lowest_hand_relevance_channels():
    net = _residual()
    original = copy.deepcopy(net)
    data = _residual_data()
    hand = _residual_lrp_by_hand(net, data, LRP_EPS)
    scores = [(hand["conv0"] + hand["conv2"]) / 2, hand["conv1"]]
    n = 3
    ranked = sorted(float(s[p] / s.mean()) for s in scores for p in range(len(s)))
    assert ranked[n] - ranked[n - 1] > 1e-2  # no near tie at the cut
    drop = _hand_step(scores, n)
    keep_res = [p for p in range(4) if p not in drop[0]]
    keep_mid = [p for p in range(5) if p not in drop[1]]
    assert drop[0] and drop[1]  # both groups lose channels
    assert prune_step(net, RESIDUAL_EXAMPLE, n, criterion="lrp", score_kwargs={"data": data}) == n
    _check_pruned(net, original, keep_res, keep_mid)
