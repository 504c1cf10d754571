"""SPPaRA, channel-SPA with a full-rank pointwise adapter P at the centre tap::

    W_task = W[out_index][:, in_index] + centre_tap(P[out_index][:, in_index])

The bundle stores P's kept rows and columns as ``pointwise_delta``.
"""

from __future__ import annotations

import torch
from torch import nn

from spaedge.adapters.base import AdaptedLayer, centre_tap
from spaedge.adapters.registry import Method, register

__all__ = ["SPPaRA"]


class SPPaRA(AdaptedLayer):
    """Channel-SPA with a full-rank pointwise (centre-tap) adapter P."""

    method = "sppara"

    def __init__(self, base, rank: int = 0):
        super().__init__(base)
        self.pointwise = nn.Parameter(torch.zeros(self.base_out_channels, self.base_in_channels))

    def delta(self) -> torch.Tensor:
        return centre_tap(self.weight, self.pointwise)

    def keep_out(self, keep):
        super().keep_out(keep)
        self.pointwise = nn.Parameter(self.pointwise.data[keep].clone())

    def keep_in(self, keep):
        super().keep_in(keep)
        self.pointwise = nn.Parameter(self.pointwise.data[:, keep].clone())

    def bundle_tensors(self):
        t = super().bundle_tensors()
        t["pointwise_delta"] = self.pointwise.detach()
        return t

    def load_bundle_tensors(self, t):
        super().load_bundle_tensors(t)
        self.pointwise = nn.Parameter(t["pointwise_delta"].clone())


register(
    Method(
        "sppara",
        lambda conv, rank: SPPaRA(conv),
        label="SPPaRA",
        summary="frozen base + a full-rank pointwise adapter",
    )
)
