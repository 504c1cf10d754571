"""Structured channel pruning that really removes channels.

``prune_to_density`` follows the SPA paper's protocol: iterative steps, each
removing a fixed fraction (5% by default) of the base's filters with the lowest
globally ranked, per-group normalised scores, with recovery training after
each step, until the backbone keeps at most ``density`` of the base's weights.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from spaedge.adapters.base import AdaptedLayer
from spaedge.pruning.criteria import CRITERIA, DATA_CRITERIA, normalise
from spaedge.pruning.groups import ChannelGroup, channel_groups

SCHEDULES = ("iterative", "oneshot")

__all__ = ["SCHEDULES", "remove_channels", "density", "plan", "prune_step", "prune_to_density"]


def _keep_batchnorm(bn: nn.BatchNorm2d, keep: torch.Tensor) -> None:
    bn.weight = nn.Parameter(bn.weight.data[keep].clone(), requires_grad=bn.weight.requires_grad)
    bn.bias = nn.Parameter(bn.bias.data[keep].clone(), requires_grad=bn.bias.requires_grad)
    bn.running_mean = bn.running_mean[keep].clone()
    bn.running_var = bn.running_var[keep].clone()
    bn.num_features = int(keep.numel())


def _keep_linear_in(fc: nn.Linear, keep: torch.Tensor) -> None:
    fc.weight = nn.Parameter(fc.weight.data[:, keep].clone(), requires_grad=fc.weight.requires_grad)
    fc.in_features = int(keep.numel())


def remove_channels(model: nn.Module, group: ChannelGroup, keep: torch.Tensor) -> None:
    """Keep only channels ``keep`` (positions within the group) everywhere in the group."""
    keep = torch.as_tensor(keep, dtype=torch.long).sort().values
    if keep.numel() == 0:
        raise ValueError(f"cannot remove every channel of the group produced by {group.producers}")
    for name in group.producers:
        model.get_submodule(name).keep_out(keep)
    for name in group.norms:
        _keep_batchnorm(model.get_submodule(name), keep)
    for name in group.consumers:
        m = model.get_submodule(name)
        if isinstance(m, AdaptedLayer):
            m.keep_in(keep)
        elif isinstance(m, nn.Linear):
            _keep_linear_in(m, keep)
        else:
            raise TypeError(f"cannot remove input channels of {name} ({type(m).__name__})")
    group.size = int(keep.numel())


def _weights(layer: AdaptedLayer, base: bool = False) -> int:
    k = layer.kernel_size[0] * layer.kernel_size[1]
    if base:
        return layer.base_out_channels * layer.base_in_channels * k
    return layer.out_channels * layer.in_channels * k


def density(model: nn.Module) -> float:
    """Fraction of the base backbone's weights the model still has."""
    layers = [m for m in model.modules() if isinstance(m, AdaptedLayer)]
    return sum(_weights(m) for m in layers) / max(sum(_weights(m, base=True) for m in layers), 1)


def plan(model: nn.Module) -> dict[str, dict[str, list[int]]]:
    """Per adapted layer, the kept channels relative to the original base."""
    return {
        n: {"out_index": m.out_index.tolist(), "in_index": m.in_index.tolist()}
        for n, m in model.named_modules()
        if isinstance(m, AdaptedLayer)
    }


def _channel_cost(model: nn.Module, group: ChannelGroup) -> int:
    """Base weights removed from the backbone with one channel of ``group``."""
    cost = 0
    for name in group.producers:
        m = model.get_submodule(name)
        cost += m.in_channels * m.kernel_size[0] * m.kernel_size[1]
    for name in group.consumers:
        m = model.get_submodule(name)
        if isinstance(m, AdaptedLayer):
            cost += m.out_channels * m.kernel_size[0] * m.kernel_size[1]
    return cost


def _units(model: nn.Module, group: ChannelGroup, block: int) -> list[list[int]]:
    """The removable units of a group: single channels, or whole blocks."""
    if block <= 1:
        return [[p] for p in range(group.size)]
    base = model.get_submodule(group.producers[0])
    if base.base_out_channels % block:
        return [[p] for p in range(group.size)]
    units: dict[int, list[int]] = {}
    for pos, idx in enumerate(base.out_index.tolist()):
        units.setdefault(idx // block, []).append(pos)
    return list(units.values())


def ranked_units(
    model: nn.Module,
    groups: list,
    scores: list[torch.Tensor],
    *,
    block: int = 1,
    min_channels: int = 1,
) -> list[tuple[float, int, list[int]]]:
    """Every removable unit (a channel, or a block of them) of every group as
    (score, group index, channel positions), lowest score first: a unit's score
    is the mean of its channels' ``scores[group index]``, and each group keeps
    at least ``min_channels``. Shared by the criteria-driven steps here and the
    similar-task vote (spaedge.pruning.similar)."""
    candidates = []
    for gi, (g, s) in enumerate(zip(groups, scores)):
        units = _units(model, g, block)
        unit_scores = [float(s[u].mean()) for u in units]
        spare = g.size - min_channels
        for j in sorted(range(len(units)), key=lambda j: unit_scores[j]):
            if len(units[j]) > spare:
                break
            spare -= len(units[j])
            candidates.append((unit_scores[j], gi, units[j]))
    candidates.sort(key=lambda c: (c[0], c[1], c[2][0]))
    return candidates


def remove_positions(model: nn.Module, groups: list, drop: dict[int, list[int]]) -> None:
    """Remove the channel positions ``drop[group index]`` of each group."""
    for gi, positions in drop.items():
        g = groups[gi]
        gone = set(positions)
        remove_channels(
            model, g, torch.tensor([i for i in range(g.size) if i not in gone], dtype=torch.long)
        )


def prune_step(
    model: nn.Module,
    example_input: torch.Tensor,
    n_channels: int,
    *,
    target_density: float = 0.0,
    criterion: str = "magnitude",
    min_channels: int = 1,
    score_kwargs: dict | None = None,
    block: int = 1,
    agree: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> int:
    """Remove up to ``n_channels`` lowest-ranked channels, stopping early once
    the backbone is estimated to be at ``target_density``. Returns how many went.

    ``block`` > 1 removes channels in whole blocks of ``block`` base channels
    (base index // block, for block-SPA adapters): a block is ranked by the mean
    of its channels' normalised scores. Groups whose base width is not a
    multiple of ``block`` are pruned channel by channel.

    ``agree`` maps each group's scores before ranking; data-parallel training
    passes one that gives every process rank 0's scores, so all remove the
    same channels (``spaedge.train.distributed.agree``)."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown pruning criterion {criterion!r}; known: {', '.join(CRITERIA)}")
    score = CRITERIA[criterion]
    kwargs = {**(score_kwargs or {}), "cache": {}}  # per-step cache shared by all groups
    groups = channel_groups(model, example_input)
    layers = [m for m in model.modules() if isinstance(m, AdaptedLayer)]
    base_total = sum(_weights(m, base=True) for m in layers)
    current = sum(_weights(m) for m in layers)
    agree = agree or (lambda t: t)
    scores = [agree(normalise(score(model, g, **kwargs))) for g in groups]
    candidates = ranked_units(model, groups, scores, block=block, min_channels=min_channels)
    costs = [_channel_cost(model, g) for g in groups]
    drop: dict[int, list[int]] = {}
    removed = 0
    for _, gi, positions in candidates:
        if removed >= n_channels or current <= target_density * base_total:
            break
        drop.setdefault(gi, []).extend(positions)
        current -= costs[gi] * len(positions)
        removed += len(positions)
    remove_positions(model, groups, drop)
    return removed


def prune_to_density(
    model: nn.Module,
    example_input: torch.Tensor,
    target: float,
    *,
    step_fraction: float = 0.05,
    criterion: str = "magnitude",
    recover: Callable[[int, float], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    score_kwargs: dict | None = None,
    schedule: str = "iterative",
    block: int = 1,
    agree: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[float]:
    """Prune to ``target`` density (fraction of base weights kept).

    ``schedule="iterative"`` (the SPA paper): steps of ``step_fraction`` of the
    base's filters, ``recover(step, density)`` training after each step.
    ``schedule="oneshot"``: one scoring of the model as it is, then channels are
    removed in that ranking down to the target with no training in between
    (re-ranked only if the weight estimate of one pass falls short);
    ``recover`` runs once at the end. Returns the density after each step.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown pruning schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    if criterion not in CRITERIA:
        raise ValueError(f"unknown pruning criterion {criterion!r}; known: {', '.join(CRITERIA)}")
    if criterion in DATA_CRITERIA and not (score_kwargs or {}).get("data"):
        raise ValueError(
            f"pruning criterion {criterion!r} needs task data: pass score_kwargs={{'data': batches}}"
        )
    if not 0.0 < target <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {target}")
    if not 0.0 < step_fraction <= 1.0:
        raise ValueError(f"pruning step must be in (0, 1], got {step_fraction}")
    groups = channel_groups(model, example_input)
    total_filters = sum(g.size for g in groups)
    per_step = max(1, math.ceil(step_fraction * total_filters))
    if schedule == "oneshot":
        per_step = total_filters
    history: list[float] = []
    step = 0
    while density(model) > target + 1e-9:
        removed = prune_step(
            model,
            example_input,
            per_step,
            target_density=target,
            criterion=criterion,
            score_kwargs=score_kwargs,
            block=block,
            agree=agree,
        )
        if removed == 0:
            break  # every group is at its minimum width
        step += 1
        d = density(model)
        history.append(d)
        if on_step is not None:
            on_step(step, d)
        if recover is not None and schedule == "iterative":
            recover(step, d)
    if recover is not None and schedule == "oneshot" and history:
        recover(step, history[-1])
    return history
