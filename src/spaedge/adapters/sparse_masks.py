"""SparseAdapter's masks: which entries of an adapter are kept, chosen once at
initialisation with one global threshold (He et al. 2022).

``sparsify(model, criterion, keep, data)`` scores every entry of every masked
tensor of the model (the layers mixing in ``Masked``: ``spaedge.adapters.sparse``)
and keeps the globally top ``keep`` fraction (or exactly ``nonzeros``
entries): one threshold over all layers and, for SPLoRA, over both factors.

The criteria, one entry each in ``MASK_CRITERIA`` (the ``mask_criterion``
option's choices), score entries (higher = keep):

- ``snip``: |g * w| (Lee et al. 2019), g = dL/dw on task batches.
- ``magnitude``: |w|.
- ``random``: uniform random (seeded by the torch RNG).
- ``grasp``: w * (H g) (Wang et al. 2020: GraSP removes the entries whose removal
  reduces gradient flow least, i.e. the highest -w*Hg; we keep the highest w*Hg).
  H g by double back-propagation.
- ``synflow``: |w * dR/dw| with R = sum of the logits of the network with every
  weight replaced by its absolute value on an all-ones input (Tanaka et al.
  2020), data free. BatchNorm runs as the positive scale |gamma|/sqrt(var+eps)
  (mean and beta set to 0) so the "linearised" network is positive throughout.

``DATA_MASK_CRITERIA`` need task batches; the ``ITERATIVE_MASK_CRITERIA`` are
scored again under the masks of the previous round, over ``rounds`` rounds
with an exponential keep schedule (synflow).

A mask is a 0/1 buffer beside its parameter that the forward multiplies in,
so a masked entry gets no gradient; masked entries are also zeroed in the
parameter when the mask is set, so they stay exactly zero through training
(Adam's update of a zero gradient is zero, decoupled weight decay of a zero
is zero). ``learned_parameters`` counts the kept entries only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from spaedge.adapters.base import layers_of
from spaedge.adapters.registry import MethodOptions
from spaedge.argtypes import flag, parse_sparsity

__all__ = [
    "Masked",
    "MaskOptions",
    "MASK_CRITERIA",
    "DATA_MASK_CRITERIA",
    "ITERATIVE_MASK_CRITERIA",
    "masked_tensors",
    "sparsify",
]

# (model, masked tensors (layer, parameter name, mask name), data, input_shape) ->
# one score tensor per masked tensor, higher = keep
Score = Callable[..., list[torch.Tensor]]


class Masked:
    """Mixin of an adapted layer whose trainable tensors are multiplied by fixed
    0/1 masks: ``masked`` names each (parameter, mask buffer) pair."""

    masked: tuple[tuple[str, str], ...] = ()

    def mask_pairs(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        return [(getattr(self, p), getattr(self, m)) for p, m in self.masked]

    def nonzeros(self) -> int:
        """Entries the masks keep (what is learned and stored)."""
        return sum(int(m.sum()) for _, m in self.mask_pairs())

    def masked_entries(self) -> int:
        return sum(p.numel() for p, _ in self.mask_pairs()) - self.nonzeros()


def _masked_layers(model: nn.Module) -> list[Masked]:
    need = (
        "adapter masks need SparseAdapter layers (adapt with method 'sparse', 'sparse-sppara' "
        "or 'sparse-large')"
    )
    layers = [m for _, m in layers_of(model, Masked, need)]
    if not layers:
        raise ValueError(f"the model has no adapted layers: {need}")
    return layers


def masked_tensors(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """Every (layer, parameter name, mask name) of the model, in module order."""
    return [(m, p, k) for m in _masked_layers(model) for p, k in m.masked]


def _params(entries) -> list[nn.Parameter]:
    return [getattr(m, p) for m, p, _ in entries]


def _loss(model, data):
    total = 0.0
    for x, y in data:
        total = total + F.cross_entropy(model(x), y) * len(y)
    return total / sum(len(y) for _, y in data)


@contextlib.contextmanager
def _grads():
    """Gradients on (the caller may run under no_grad), oneDNN off."""
    with torch.enable_grad(), torch.backends.mkldnn.flags(enabled=False):
        yield


def _magnitude(model, entries, data=None, input_shape=None) -> list[torch.Tensor]:
    return [p.detach().abs() for p in _params(entries)]


def _random(model, entries, data=None, input_shape=None) -> list[torch.Tensor]:
    return [torch.rand(p.shape) for p in _params(entries)]


def _snip(model, entries, data=None, input_shape=None) -> list[torch.Tensor]:
    params = _params(entries)
    with _grads():
        g = torch.autograd.grad(_loss(model, data), params)
    return [(gi * p).detach().abs() for gi, p in zip(g, params)]


def _grasp(model, entries, data=None, input_shape=None) -> list[torch.Tensor]:
    params = _params(entries)
    with _grads():
        g = torch.autograd.grad(_loss(model, data), params, create_graph=True)
        z = sum((gi * gi.detach()).sum() for gi in g)
        hg = torch.autograd.grad(z, params)
    return [(p * h).detach() for p, h in zip(params, hg)]


def _synflow(model, entries, data=None, input_shape=None) -> list[torch.Tensor]:
    """|w * dR/dw| of the linearised network under the current masks (module docstring)."""
    if input_shape is None:
        raise ValueError("synflow needs input_shape (C, H, W)")
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    bn_saved = [(b.running_mean.clone(), b.running_var.clone()) for b in bns]
    try:
        with torch.no_grad():
            for p in model.parameters():
                p.abs_()
            for b in bns:
                b.running_mean.zero_()
                b.bias.zero_()
        params = _params(entries)
        with _grads():
            out = model(torch.ones(1, *input_shape))
            g = torch.autograd.grad(out.sum(), params)
        return [
            (gi * p * getattr(m, name)).detach().abs()
            for gi, p, (m, _, name) in zip(g, params, entries)
        ]
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(saved[n])
            for b, (mu, var) in zip(bns, bn_saved):
                b.running_mean.copy_(mu)
                b.running_var.copy_(var)


MASK_CRITERIA: dict[str, Score] = {
    "snip": _snip,
    "magnitude": _magnitude,
    "random": _random,
    "grasp": _grasp,
    "synflow": _synflow,
}
DATA_MASK_CRITERIA = {"snip", "grasp"}
ITERATIVE_MASK_CRITERIA = {"synflow"}


@dataclass(frozen=True)
class MaskOptions(MethodOptions):
    """The options of the SparseAdapter methods."""

    sparsity: float = flag(
        0.4,
        "fraction of the adapter's entries masked to zero at initialisation, e.g. 0.4 or 40%% "
        "(default {default}, as the paper recommends; it works up to 0.8); sparse-large "
        "enlarges the rank to ceil(rank / (1 - sparsity)) and keeps rank --rank's parameter count",
        parse=parse_sparsity,
    )
    mask_criterion: str = flag(
        "snip",
        "how the adapter's masks are chosen at initialisation, one global threshold "
        "(default {default})",
        choices=lambda: list(MASK_CRITERIA),
    )


def apply_threshold(entries, scores: list[torch.Tensor], k: int) -> None:
    """Masks keeping exactly the ``k`` top-scored entries over all ``entries``."""
    flat = torch.cat([s.reshape(-1) for s in scores])
    if k >= flat.numel():
        for m, p, name in entries:
            setattr(m, name, torch.ones_like(getattr(m, p)))
        return
    thr = torch.topk(flat, k).values[-1]
    budget = k
    masks = []
    for s in scores:
        mask = (s > thr).float()
        masks.append(mask)
        budget -= int(mask.sum())
    # ties at the threshold: fill the remaining budget in layer order
    for mask, s in zip(masks, scores):
        if budget <= 0:
            break
        tie = ((s == thr) & (mask == 0)).reshape(-1).nonzero().reshape(-1)[:budget]
        mask.view(-1)[tie] = 1.0
        budget -= tie.numel()
    for (m, _, name), mask in zip(entries, masks):
        setattr(m, name, mask)


def sparsify(
    model: nn.Module,
    criterion: str,
    keep: float | None = None,
    data=None,
    *,
    nonzeros: int | None = None,
    input_shape=None,
    rounds: int = 10,
) -> int:
    """Mask every masked tensor of ``model`` (SparseSPLoRA's factors, SparseAdapter's
    update) to the global top ``keep`` fraction of their entries by ``criterion``,
    or to exactly ``nonzeros`` entries; masked entries are zeroed. Returns the
    number of entries kept."""
    if criterion not in MASK_CRITERIA:
        raise ValueError(f"unknown mask criterion {criterion!r}; known: {', '.join(MASK_CRITERIA)}")
    if criterion in DATA_MASK_CRITERIA and not data:
        raise ValueError(f"mask criterion {criterion!r} needs task data")
    entries = masked_tensors(model)
    total = sum(getattr(m, p).numel() for m, p, _ in entries)
    if nonzeros is None:
        if keep is None or not 0.0 < keep <= 1.0:
            raise ValueError(f"adapter keep fraction must be in (0, 1], got {keep}")
        nonzeros = max(1, int(round(keep * total)))
    if not 1 <= nonzeros <= total:
        raise ValueError(
            f"nonzeros must be in [1, {total}] (the adapters' entries), got {nonzeros}"
        )
    score = MASK_CRITERIA[criterion]
    k = nonzeros
    # an iterative criterion keeps an exponentially shrinking count each round, k at the last
    counts = (
        [
            k if r == rounds else max(k, int(round(total * (k / total) ** (r / rounds))))
            for r in range(1, rounds + 1)
        ]
        if criterion in ITERATIVE_MASK_CRITERIA
        else [k]
    )
    was_training = model.training
    model.eval()
    try:
        for count in counts:
            apply_threshold(entries, score(model, entries, data, input_shape), count)
    finally:
        model.train(was_training)
    with torch.no_grad():
        for m, p, name in entries:
            getattr(m, p).mul_(getattr(m, name))
    return sum(m.nonzeros() for m in _masked_layers(model))
