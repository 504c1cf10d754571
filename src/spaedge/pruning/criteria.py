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
- ``lrp`` (layer-wise relevance propagation as the SPA authors prune with it:
  the rules of Yeom et al., "Pruning by explaining", and their ResNet code):
  every image starts with relevance 1 at its true-class logit; the
  epsilon rule (``LRP_EPS``) at linear layers; the z+ rule (alpha=1, beta=0,
  bias ignored) at every convolution, with the BatchNorm that follows it folded
  in (W' = W * gamma / sqrt(var + eps), running statistics); all of a max
  pool's relevance to each window's winner; relevance unchanged through ReLUs;
  at an add and the average pool in proportion to each input's contribution
  (the authors' epsilon there is 1e-6, which is LRP-0 to float precision). A
  filter's score is the mean over images of the sum over positions of
  |relevance| at its (BatchNorm-folded) output channel.
  Implemented with autograd carrying c = R / a (so R = a * c at every
  activation a): a linear map's ordinary backward pass is then LRP-0, the
  epsilon rule rescales it at a linear output by z / (z + eps * sign(z)), and
  the z+ rule replaces a conv's backward by W'+ transposed, applied to
  c * y / z+ (y the BatchNorm output, z+ = conv(x, W'+)). The forward values
  are never changed.
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

# The SPA authors' epsilon (Yeom et al.'s code: linear, pooling and add layers).
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


# z+ denominators are sums of non-negative terms; where one is 0 so is every
# numerator, and this only keeps 0/0 out.
ZPLUS_STAB = 1e-12


def _zplus(x: torch.Tensor, layer: AdaptedLayer, scale: torch.Tensor | None, y: torch.Tensor):
    """``y``'s values, with the z+ rule of the conv ``layer`` (its BatchNorm folded in
    as the per-channel ``scale``) as the backward pass from ``y`` to ``x``."""
    w = layer.task_weight().detach()
    if scale is not None:
        w = w * scale.view(-1, *([1] * (w.dim() - 1)))
    zp = F.conv2d(x, w.clamp(min=0), None, layer.stride, layer.padding)
    ratio = (y / (zp + ZPLUS_STAB)).detach()
    return y.detach() + zp * ratio - (zp * ratio).detach()


def _bn_scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    if bn.running_var is None:
        raise ValueError(f"LRP folds BatchNorm with its running statistics; {bn} keeps none")
    scale = 1 / torch.sqrt(bn.running_var + bn.eps)
    return scale * bn.weight.detach() if bn.weight is not None else scale


def _conv_norm_pairs(model: nn.Module, x: torch.Tensor) -> dict[str, nn.BatchNorm2d]:
    """Which BatchNorm reads each adapted conv's output directly (one forward pass)."""
    convs = {n: m for n, m in model.named_modules() if isinstance(m, AdaptedLayer) and m.is_conv}
    outputs: dict[int, str] = {}
    pairs: dict[str, nn.BatchNorm2d] = {}

    def conv_hook(name):
        def hook(module, inputs, out):
            outputs[id(out)] = name

        return hook

    def bn_hook(module, inputs, out):
        name = outputs.get(id(inputs[0]))
        if name is not None:
            pairs[name] = module

    handles = [m.register_forward_hook(conv_hook(n)) for n, m in convs.items()]
    handles += [
        m.register_forward_hook(bn_hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return pairs


def lrp_relevance(
    model: nn.Module, data: Iterable, eps: float = LRP_EPS
) -> dict[str, torch.Tensor]:
    """Per adapted layer, the mean over images of the sum over positions of |relevance|
    of each output channel (the SPA authors' LRP, see the module docstring; ``eps`` is
    the epsilon rule's at linear layers)."""
    data = list(data)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, AdaptedLayer)}
    rel = {n: torch.zeros(m.out_channels, dtype=torch.float64) for n, m in layers.items()}
    was_training = model.training
    model.eval()
    acts: dict[str, torch.Tensor] = {}
    inputs: dict[str, torch.Tensor] = {}
    handles = []
    count = 0
    try:
        pairs = _conv_norm_pairs(model, data[0][0]) if data else {}
        folded = {id(bn): name for name, bn in pairs.items()}

        def keep(name, out):
            out.retain_grad()
            acts[name] = out
            return out

        def layer_hook(name):
            def hook(module, args, out):
                if not module.is_conv:
                    return keep(name, _eps_hook(eps)(module, args, out))
                if name in pairs:  # its z+ rule goes in at its BatchNorm's output
                    inputs[name] = args[0]
                    return out
                return keep(name, _zplus(args[0], module, None, out))

            return hook

        def bn_hook(module, args, out):
            name = folded.get(id(module))
            if name is None or name not in inputs:
                return out
            conv = layers[name]
            return keep(name, _zplus(inputs.pop(name), conv, _bn_scale(module), out))

        handles += [m.register_forward_hook(layer_hook(n)) for n, m in layers.items()]
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                handles.append(m.register_forward_hook(bn_hook))
            elif isinstance(m, nn.Linear):
                handles.append(m.register_forward_hook(_eps_hook(eps)))
        for x, y in data:
            with torch.enable_grad(), torch.backends.mkldnn.flags(enabled=False):
                x = x.clone().requires_grad_(True)  # so every activation is in the graph
                true = model(x).gather(1, y.view(-1, 1))
                # relevance 1 at the true-class logit, carried as c = R / logit
                seed = 1 / torch.where(true == 0, torch.ones_like(true), true)
                (true * seed.detach()).sum().backward()
            for n, a in acts.items():
                r = (a.detach() * a.grad).abs()
                rel[n] += (r.sum(dim=(2, 3)) if r.dim() == 4 else r).sum(0).double()
            count += len(y)
            model.zero_grad(set_to_none=True)
            acts.clear()
            inputs.clear()
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
