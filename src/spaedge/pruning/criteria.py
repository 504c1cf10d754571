"""Channel importance criteria.

A criterion scores every channel of a group (higher = more important). Scores
are then normalised per group (``normalise``) so one global ranking compares
layers of different widths and scales, as in the SPA paper's protocol.

All criteria look at the *task* weight W_task = W_base[kept] + adapter update,
never at the frozen base alone. The data-driven ones (gradient, taylor, lrp)
take ``data``: a list of ``(images, labels)`` batches of the task's training
split (a few are enough; ``prune_step`` passes them through ``score_kwargs``).
Their per-layer statistics are computed once per pruning step and shared by all
groups through ``cache`` (a dict ``prune_step`` creates fresh for every step).

- ``magnitude`` (L1): mean |w| of each output filter.
- ``gradient``: mean |dL/dW_task| of each output filter, averaged over batches
  (L = cross-entropy on the batch).
- ``taylor`` (first order, Molchanov et al. 2019, group form): per batch
  |sum over the filter of w * dL/dw| -- the first-order estimate of the loss
  change when the filter is zeroed -- averaged over batches.
- ``lrp`` (layer-wise relevance propagation, epsilon rule): relevance of the
  true-class logit propagated back to every conv output channel; a filter's
  score is the mean over images of |total relevance of its output channel|.
  Implemented with the autograd "gradient x input" identity: for a network of
  linear maps (conv, linear, folded BN, average pool), ReLUs, residual adds and
  max pools, LRP-0 relevance at an activation ``a`` equals ``a * d(logit)/da``
  (relevance passes through active ReLUs, splits over an add in proportion to
  each input's contribution, goes to the winner of a max pool). The epsilon
  rule divides by ``z + eps*sign(z)`` instead of ``z`` at every conv, BN and
  linear output; that is exactly a rescaling of the backward signal at ``z`` by
  ``z / (z + eps*sign(z))``, which forward hooks insert while leaving the
  forward values unchanged. BN runs in inference mode (running statistics).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from spaedge.adapters.base import AdaptedLayer
from spaedge.pruning.groups import ChannelGroup

__all__ = [
    "CRITERIA",
    "DATA_CRITERIA",
    "magnitude",
    "gradient",
    "taylor",
    "lrp",
    "normalise",
    "task_weight_grads",
    "lrp_relevance",
]

LRP_EPS = 1e-6


def _producer_mean(group: ChannelGroup, per_layer: dict[str, torch.Tensor]) -> torch.Tensor:
    scores = torch.zeros(group.size, dtype=torch.float64)
    for name in group.producers:
        scores += per_layer[name].double()
    return (scores / max(len(group.producers), 1)).float()


def magnitude(model: nn.Module, group: ChannelGroup, **_) -> torch.Tensor:
    """Weight magnitude (L1): mean |w| of each channel's filter in the task
    weight (base + adapter update), averaged over the group's producers."""
    scores = torch.zeros(group.size)
    with torch.no_grad():
        for name in group.producers:
            w = model.get_submodule(name).task_weight()
            scores += w.abs().reshape(w.shape[0], -1).mean(dim=1)
    return scores / max(len(group.producers), 1)


def _need_data(data, name: str):
    if not data:
        raise ValueError(
            f"pruning criterion {name!r} needs task data: pass score_kwargs={{'data': batches}}"
        )
    return data


def task_weight_grads(
    model: nn.Module, data: Iterable
) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per adapted layer, [(W_task, dL/dW_task) per batch] with the model in eval mode."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, AdaptedLayer)}
    out: dict[str, list] = {n: [] for n in layers}
    was_training = model.training
    model.eval()
    try:
        for x, y in data:
            for m in layers.values():
                m.weight_probe = m.task_weight().detach().clone().requires_grad_(True)
            with torch.enable_grad(), torch.backends.mkldnn.flags(enabled=False):
                loss = F.cross_entropy(model(x), y)
                probes = [m.weight_probe for m in layers.values()]
                grads = torch.autograd.grad(loss, probes)
            for (n, m), g in zip(layers.items(), grads):
                out[n].append((m.weight_probe.detach(), g.detach()))
    finally:
        for m in layers.values():
            m.weight_probe = None
        model.train(was_training)
    return out


def _grad_cache(model, data, cache):
    if cache is None:
        return task_weight_grads(model, data)
    if "grads" not in cache:
        cache["grads"] = task_weight_grads(model, data)
    return cache["grads"]


def gradient(
    model: nn.Module, group: ChannelGroup, data=None, cache: dict | None = None, **_
) -> torch.Tensor:
    """Mean |dL/dW_task| of each output filter, averaged over batches."""
    wg = _grad_cache(model, _need_data(data, "gradient"), cache)
    per = {
        n: torch.stack([g.abs().reshape(g.shape[0], -1).mean(1) for _, g in v]).mean(0)
        for n, v in wg.items()
        if n in group.producers
    }
    return _producer_mean(group, per)


def taylor(
    model: nn.Module, group: ChannelGroup, data=None, cache: dict | None = None, **_
) -> torch.Tensor:
    """First-order Taylor: per batch |sum_filter w * dL/dw|, averaged over batches."""
    wg = _grad_cache(model, _need_data(data, "taylor"), cache)
    per = {
        n: torch.stack([(w * g).reshape(g.shape[0], -1).sum(1).abs() for w, g in v]).mean(0)
        for n, v in wg.items()
        if n in group.producers
    }
    return _producer_mean(group, per)


def _eps_hook(eps: float):
    def hook(module, inputs, z):
        f = (z / (z + eps * torch.where(z >= 0, 1.0, -1.0))).detach()
        return z * f + (z * (1 - f)).detach()  # same value, backward scaled by f

    return hook


def lrp_relevance(
    model: nn.Module, data: Iterable, eps: float = LRP_EPS
) -> dict[str, torch.Tensor]:
    """Per adapted layer, the mean over images of |relevance| of each output channel
    (epsilon-LRP from the true-class logit, see the module docstring)."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, AdaptedLayer)}
    hooked = [
        m for m in model.modules() if isinstance(m, (AdaptedLayer, nn.BatchNorm2d, nn.Linear))
    ]
    handles = [m.register_forward_hook(_eps_hook(eps)) for m in hooked]
    acts: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, inputs, z):
            z.retain_grad()
            acts[name] = z

        return hook

    handles += [m.register_forward_hook(keep(n)) for n, m in layers.items()]
    rel = {n: torch.zeros(m.out_channels, dtype=torch.float64) for n, m in layers.items()}
    count = 0
    was_training = model.training
    model.eval()
    try:
        for x, y in data:
            with torch.enable_grad(), torch.backends.mkldnn.flags(enabled=False):
                x = x.clone().requires_grad_(True)  # so every activation is in the graph
                logits = model(x)
                logits.gather(1, y.view(-1, 1)).sum().backward()
            for n, z in acts.items():
                r = (z.detach() * z.grad).sum(dim=(2, 3)) if z.dim() == 4 else z.detach() * z.grad
                rel[n] += r.abs().sum(0).double()
            count += len(y)
            model.zero_grad(set_to_none=True)
            acts.clear()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: (v / max(count, 1)).float() for n, v in rel.items()}


def lrp(
    model: nn.Module, group: ChannelGroup, data=None, cache: dict | None = None, **_
) -> torch.Tensor:
    data = _need_data(data, "lrp")
    if cache is None:
        per = lrp_relevance(model, data)
    else:
        if "lrp" not in cache:
            cache["lrp"] = lrp_relevance(model, data)
        per = cache["lrp"]
    return _producer_mean(group, per)


def normalise(scores: torch.Tensor) -> torch.Tensor:
    """Per-group normalisation: divide by the group's mean score, so every
    group averages 1 and the global ranking removes a layer's relatively weak
    channels rather than all channels of the layer with the smallest weights."""
    if not torch.isfinite(scores).all():
        raise ValueError(
            "a pruning criterion gave non-finite channel scores: the model diverged (lower --lr)"
        )
    mean = scores.mean()
    return scores / mean if mean > 0 else torch.ones_like(scores)


CRITERIA: dict[str, Callable[..., torch.Tensor]] = {
    "magnitude": magnitude,
    "l1": magnitude,
    "gradient": gradient,
    "taylor": taylor,
    "lrp": lrp,
}

# Criteria that need task batches (score_kwargs["data"]).
DATA_CRITERIA = {"gradient", "taylor", "lrp"}
