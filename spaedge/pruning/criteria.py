"""Channel importance criteria.

A criterion scores every channel of a group (higher = more important). Scores
are then normalised per group (``normalise``) so one global ranking compares
layers of different widths and scales, as in the SPA paper's protocol.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from spaedge.pruning.groups import ChannelGroup

__all__ = ["CRITERIA", "magnitude", "normalise"]


def magnitude(model: nn.Module, group: ChannelGroup, **_) -> torch.Tensor:
    """Weight magnitude (L1): mean |w| of each channel's filter in the task
    weight (base + adapter update), averaged over the group's producers."""
    scores = torch.zeros(group.size)
    with torch.no_grad():
        for name in group.producers:
            w = model.get_submodule(name).task_weight()
            scores += w.abs().reshape(w.shape[0], -1).mean(dim=1)
    return scores / max(len(group.producers), 1)


def normalise(scores: torch.Tensor) -> torch.Tensor:
    """Per-group normalisation: divide by the group's mean score, so every
    group averages 1 and the global ranking removes a layer's relatively weak
    channels rather than all channels of the layer with the smallest weights."""
    mean = scores.mean()
    return scores / mean if mean > 0 else torch.ones_like(scores)


CRITERIA: dict[str, Callable[..., torch.Tensor]] = {
    "magnitude": magnitude,
    "l1": magnitude,
}
