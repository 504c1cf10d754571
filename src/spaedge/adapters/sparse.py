"""SparseAdapter (He et al. 2022) in the SPA setting, and its masks.

The adapter is a weight update D made sparse at initialisation by a mask
buffer the forward multiplies in (masked entries get no gradient and stay out
of the bundle). The plain setting's D is pointwise (O x I at the centre tap,
SPPaRA's shape); the Large-Sparse setting's D is the full kernel (O x I x k x
k, k^2 times wider) sparsified to the same number of nonzeros.

``sparsify(model, criterion, keep, data)`` scores every entry of every
``SparseAdapter`` update and keeps the globally top ``keep`` fraction (one
threshold over all layers).

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

from spaedge.adapters.base import AdaptedLayer, centre_tap
from spaedge.adapters.registry import Method, register

__all__ = ["SparseAdapter", "MASK_CRITERIA", "sparsify", "large_keep"]

MASK_CRITERIA = ("snip", "magnitude", "random", "grasp", "synflow")


class SparseAdapter(AdaptedLayer):
    """A weight update D with a fixed unstructured mask (a buffer) applied in forward."""

    method = "sparse"

    def __init__(self, base, rank: int = 0, large: bool = False, init_std: float = 1e-2):
        super().__init__(base)
        self.large = large
        shape = tuple(self.weight.shape) if large else (self.base_out_channels, self.base_in_channels)
        # Nonzero random init (as the adapters of the SparseAdapter paper), scaled to the
        # base weights so the task starts close to the base; saliency needs w != 0.
        scale = float(self.weight.detach().std()) * init_std if self.weight.numel() > 1 else init_std
        self.sparse = nn.Parameter(torch.randn(shape) * scale)
        self.register_buffer("mask", torch.ones(shape))

    def update(self) -> torch.Tensor:
        return self.sparse * self.mask

    def delta(self) -> torch.Tensor:
        u = self.update()
        return u if self.large or not self.is_conv else centre_tap(self.weight, u)

    def keep_out(self, keep):
        super().keep_out(keep)
        self.sparse = nn.Parameter(self.sparse.data[keep].clone())
        self.mask = self.mask[keep].clone()

    def keep_in(self, keep):
        super().keep_in(keep)
        self.sparse = nn.Parameter(self.sparse.data[:, keep].clone())
        self.mask = self.mask[:, keep].clone()

    def nonzeros(self) -> int:
        return int(self.mask.sum())

    def masked_entries(self) -> int:
        return self.sparse.numel() - self.nonzeros()

    def bundle_tensors(self):
        t = super().bundle_tensors()
        d = self.delta().detach()
        m = self.mask.bool()
        if not self.large and self.is_conv:
            m = centre_tap(self.weight, m.float()).bool()
        flat = torch.nonzero(m.reshape(-1), as_tuple=False).reshape(-1)
        if flat.numel():
            t["sparse_delta_values"] = d.reshape(-1)[flat].float()
            t["sparse_delta_index"] = flat.to(torch.int32)
        return t

    def load_bundle_tensors(self, t):
        AdaptedLayer.load_bundle_tensors(self, t)
        self.large = True
        dense = torch.zeros(self.weight.shape)
        mask = torch.zeros(self.weight.shape)
        if "sparse_delta_index" in t:
            idx = t["sparse_delta_index"].long()
            dense.view(-1)[idx] = t["sparse_delta_values"]
            mask.view(-1)[idx] = 1.0
        self.sparse = nn.Parameter(dense)
        self.mask = mask


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


def _prepare(model: nn.Module, opts, data, input_size) -> None:
    """Sparsify at initialisation. ``opts.adapter_keep`` is the fraction of a
    *pointwise* adapter's entries kept; the Large-Sparse model keeps the same
    number of nonzeros over its k^2-times wider full-kernel adapter."""
    keep = large_keep(model, opts.adapter_keep) if model.adapter_method == "sparse-large" else opts.adapter_keep
    sparsify(model, opts.mask_criterion, keep, data, input_shape=input_size)


register(Method("sparse", lambda conv, rank: SparseAdapter(conv), label="SparseAdapter", uses_rank=False,
                prepare=_prepare, summary="a pointwise update made sparse at initialisation (--mask-criterion)"))
register(Method("sparse-large", lambda conv, rank: SparseAdapter(conv, large=True),
                label="SparseAdapter Large-Sparse", uses_rank=False, prepare=_prepare,
                summary="SparseAdapter over the full kernel, with the plain one's nonzeros"))
