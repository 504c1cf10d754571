"""Fine-pruning, the baseline: every kept weight of the pruned base is trained.

The bundle stores the update against the gathered base weight
(``weight_delta``), so the runtime applies it like any other task.
"""

from __future__ import annotations

import torch
from torch import nn

from spaedge.adapters.base import AdaptedLayer
from spaedge.adapters.registry import Method, register

__all__ = ["FineTuned"]


class FineTuned(AdaptedLayer):
    """The "fine-pruning" baseline: the whole (pruned) weight is trained.

    The bundle stores the update against the gathered base weight
    (``weight_delta``), so the runtime applies it like any other task.
    """

    method = "finetune"

    def __init__(self, base: nn.Conv2d | nn.Linear):
        super().__init__(base)
        self.weight.requires_grad_(True)
        self.register_buffer("base_weight", self.weight.detach().clone())

    def keep_out(self, keep: torch.Tensor) -> None:
        super().keep_out(keep)
        self.base_weight = self.base_weight[keep].clone()

    def keep_in(self, keep: torch.Tensor) -> None:
        super().keep_in(keep)
        self.base_weight = self.base_weight[:, keep].clone()

    def bundle_tensors(self) -> dict[str, torch.Tensor]:
        t = super().bundle_tensors()
        t["weight_delta"] = (self.weight - self.base_weight).detach()
        return t

    def load_bundle_tensors(self, t: dict[str, torch.Tensor]) -> None:
        super().load_bundle_tensors(t)
        self.base_weight = self.weight.detach().clone()
        self.weight = nn.Parameter(self.weight.data + t["weight_delta"], requires_grad=True)


register(
    Method(
        "finetune",
        lambda conv, rank: FineTuned(conv),
        label="Fine-pruning",
        summary="train every kept weight (the fine-pruning baseline)",
    )
)
