"""SparseAdapter masks: unstructured pruning of adapter weights at initialisation.

``sparsify(model, criterion, keep, data)`` scores every entry of every
``SparseAdapter`` update and keeps the globally top ``keep`` fraction (one
threshold over all layers). Masks are buffers the forward multiplies in, so
masked entries get no gradient and stay out of the bundle.

Scores (higher = keep):
- ``snip``: |g * w| (Lee et al. 2019), g = dL/dw on task batches.
- ``magnitude``: |w|.
- ``random``: uniform random (seeded by the torch RNG).
- ``grasp``: w * (H g) (Wang et al. 2020: GraSP removes the entries whose removal
  reduces gradient flow least, i.e. the highest -w*Hg; we keep the highest w*Hg).
  H g by double back-propagation.
- ``synflow``: |w * dR/dw| with R = sum of the logits of the network with every
  weight replaced by its absolute value on an all-ones input (Tanaka et al.
  2020), iterated over ``rounds`` rounds with an exponential keep schedule, data
  free. BatchNorm runs as the positive scale |gamma|/sqrt(var+eps) (mean and beta
  set to 0) so the "linearised" network is positive throughout.

``large_keep(model, keep)``: for the Large-Sparse setting, the keep fraction that
gives a full-kernel adapter the nonzeros a pointwise adapter has at ``keep``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spaedge.adapters.variants import SparseAdapter

__all__ = ["MASK_CRITERIA", "sparsify", "large_keep"]

MASK_CRITERIA = ("snip", "magnitude", "random", "grasp", "synflow")


def _layers(model):
    return [m for m in model.modules() if isinstance(m, SparseAdapter)]


def _loss(model, data):
    total = 0.0
    for x, y in data:
        total = total + F.cross_entropy(model(x), y) * len(y)
    return total / sum(len(y) for _, y in data)


def _scores(model, criterion, data):
    layers = _layers(model)
    params = [m.sparse for m in layers]
    if criterion == "magnitude":
        return [p.detach().abs() for p in params]
    if criterion == "random":
        return [torch.rand(p.shape) for p in params]
    if not data:
        raise ValueError(f"mask criterion {criterion!r} needs task data")
    with torch.enable_grad(), torch.backends.mkldnn.flags(enabled=False):
        if criterion == "snip":
            g = torch.autograd.grad(_loss(model, data), params)
            return [(gi * p).detach().abs() for gi, p in zip(g, params)]
        if criterion == "grasp":
            g = torch.autograd.grad(_loss(model, data), params, create_graph=True)
            z = sum((gi * gi.detach()).sum() for gi in g)
            hg = torch.autograd.grad(z, params)
            return [(p * h).detach() for p, h in zip(params, hg)]
    raise ValueError(f"unknown mask criterion {criterion!r}; known: {', '.join(MASK_CRITERIA)}")


def _apply_threshold(layers, scores, keep: float) -> None:
    flat = torch.cat([s.reshape(-1) for s in scores])
    k = max(1, int(round(keep * flat.numel())))
    if k >= flat.numel():
        for m in layers:
            m.mask = torch.ones_like(m.sparse)
        return
    thr = torch.topk(flat, k).values[-1]
    budget = k
    for m, s in zip(layers, scores):
        mask = (s > thr).float()
        m.mask = mask
        budget -= int(mask.sum())
    # ties at the threshold: fill the remaining budget in layer order
    for m, s in zip(layers, scores):
        if budget <= 0:
            break
        tie = ((s == thr) & (m.mask == 0)).reshape(-1).nonzero().reshape(-1)[:budget]
        m.mask.view(-1)[tie] = 1.0
        budget -= tie.numel()


def _synflow(model, keep: float, rounds: int) -> None:
    layers = _layers(model)
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    bn_saved = [(b.running_mean.clone(), b.running_var.clone()) for b in bns]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for p in model.parameters():
                p.abs_()
            for b in bns:
                b.running_mean.zero_()
                b.bias.zero_()
        x = torch.ones(1, *model.input_shape) if hasattr(model, "input_shape") else None
        for r in range(1, rounds + 1):
            frac = keep ** (r / rounds)
            with torch.enable_grad(), torch.backends.mkldnn.flags(enabled=False):
                out = model(x)
                g = torch.autograd.grad(out.sum(), [m.sparse for m in layers])
            scores = [(gi * m.sparse * m.mask).detach().abs() for gi, m in zip(g, layers)]
            _apply_threshold(layers, scores, frac)
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(saved[n])
            for b, (mu, var) in zip(bns, bn_saved):
                b.running_mean.copy_(mu)
                b.running_var.copy_(var)
        model.train(was_training)


def sparsify(model: nn.Module, criterion: str, keep: float, data=None, *, input_shape=None,
             rounds: int = 10) -> int:
    """Mask every SparseAdapter of ``model`` to the global top ``keep`` fraction of
    entries by ``criterion``; returns the total number of nonzeros kept."""
    if criterion not in MASK_CRITERIA:
        raise ValueError(f"unknown mask criterion {criterion!r}; known: {', '.join(MASK_CRITERIA)}")
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"adapter keep fraction must be in (0, 1], got {keep}")
    layers = _layers(model)
    if not layers:
        raise ValueError("the model has no SparseAdapter layers (adapt with method 'sparse' or 'sparse-large')")
    was_training = model.training
    model.eval()
    try:
        if criterion == "synflow":
            if input_shape is None:
                raise ValueError("synflow needs input_shape (C, H, W)")
            model.input_shape = tuple(input_shape)
            try:
                _synflow(model, keep, rounds)
            finally:
                del model.input_shape
        else:
            _apply_threshold(layers, _scores(model, criterion, data), keep)
    finally:
        model.train(was_training)
    return sum(m.nonzeros() for m in layers)


def large_keep(model: nn.Module, keep: float) -> float:
    """Keep fraction for a Large-Sparse (full-kernel) model with the nonzeros a
    pointwise sparse adapter keeps at ``keep``."""
    layers = _layers(model)
    pointwise = sum(m.sparse.shape[0] * m.sparse.shape[1] for m in layers)
    return min(1.0, keep * pointwise / sum(m.sparse.numel() for m in layers))
