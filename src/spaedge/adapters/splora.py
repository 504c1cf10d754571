"""SPLoRA, channel-SPA with a low-rank adapter (Hedegaard et al.)::

    W_task = W[out_index][:, in_index] + centre_tap(B @ A)

with A (r x I') and B (O' x r) trainable, the product touching only the centre
tap of a k x k kernel (a pointwise update); for linear layers there is no tap.
The bundle stores A and B; the runtime merges them at task application.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from spaedge.adapters.base import AdaptedLayer, centre_tap
from spaedge.adapters.registry import Method, RankOptions, register

__all__ = ["SPLoRA"]


class SPLoRA(AdaptedLayer):
    """Channel-SPA with a rank-r adapter at the centre tap (Hedegaard et al.)."""

    method = "splora"

    def __init__(self, base: nn.Conv2d | nn.Linear, rank: int = 8, init_scale: float = 1.0):
        super().__init__(base)
        if rank < 1:
            raise ValueError(f"adapter rank must be at least 1, got {rank}")
        self.rank = rank
        o, i = self.base_out_channels, self.base_in_channels
        # LoRA initialisation: A random, B zero, so the task starts at the base.
        a = torch.empty(rank, i)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.lora_a = nn.Parameter(a * init_scale)
        self.lora_b = nn.Parameter(torch.zeros(o, rank))

    def delta(self) -> torch.Tensor:
        return centre_tap(self.weight, self.lora_b @ self.lora_a)

    def keep_out(self, keep: torch.Tensor) -> None:
        super().keep_out(keep)
        self.lora_b = nn.Parameter(self.lora_b.data[keep].clone())

    def keep_in(self, keep: torch.Tensor) -> None:
        super().keep_in(keep)
        self.lora_a = nn.Parameter(self.lora_a.data[:, keep].clone())

    def bundle_tensors(self) -> dict[str, torch.Tensor]:
        t = super().bundle_tensors()
        t["lora_a"] = self.lora_a.detach()
        t["lora_b"] = self.lora_b.detach()
        return t

    def load_bundle_tensors(self, t: dict[str, torch.Tensor]) -> None:
        super().load_bundle_tensors(t)
        self.rank = int(t["lora_a"].shape[0])
        self.lora_a = nn.Parameter(t["lora_a"].clone())
        self.lora_b = nn.Parameter(t["lora_b"].clone())


register(
    Method(
        "splora",
        lambda conv, rank: SPLoRA(conv, rank=rank),
        label="SPLoRA r{rank}",
        summary="frozen base + low-rank adapters (the default)",
        options=RankOptions,
    )
)
