"""SPLoPA (block-SPA): channels cut into blocks, the update a sum of Kronecker
products of block-position weights with shared low-rank prototypes.

Channels are cut into blocks of ``block`` (bo x bi, the block size along a
dimension falls back to 1 when it does not divide the dimension, e.g. the
1-channel input of the stem). The centre-tap update is a sum of Kronecker
products of per-layer block-position weights S_p (O/bo x I/bi) with low-rank
prototypes P_p = U_p V_p (bo x bi, rank r) that every block position of the
layer shares::

    update = sum_p kron(S_p, U_p @ V_p)

Channel pruning of a SPLoPA model removes whole blocks (the registry's
``prune_block``: ``prune_step(..., block=...)`` ranks blocks, not channels), so
pruning drops rows/columns of S_p and the prototypes stay whole.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from spaedge.adapters.base import AdaptedLayer, centre_tap
from spaedge.adapters.registry import Method, register

__all__ = ["SPLoPA", "BLOCK"]

BLOCK = 4  # channels per block: blocks of 4 channels, 4 prototypes of rank min(rank, 4)


class SPLoPA(AdaptedLayer):
    """Block-SPA: sum of kron(block-position weights, shared low-rank prototype)."""

    method = "splopa"

    def __init__(self, base, rank: int = 1, block: int = 4, prototypes: int = 4):
        super().__init__(base)
        if rank < 1 or block < 1 or prototypes < 1:
            raise ValueError("SPLoPA needs rank, block and prototypes >= 1")
        o, i = self.base_out_channels, self.base_in_channels
        self.bo = block if o % block == 0 else 1
        self.bi = block if i % block == 0 else 1
        self.rank = min(rank, self.bo, self.bi)
        n = prototypes
        # Prototypes random, positions zero: the task starts at the base (LoRA-style).
        u = torch.empty(n, self.bo, self.rank)
        v = torch.empty(n, self.rank, self.bi)
        nn.init.normal_(u, std=1.0 / math.sqrt(self.rank))
        nn.init.normal_(v, std=1.0 / math.sqrt(self.bi))
        self.proto_u, self.proto_v = nn.Parameter(u), nn.Parameter(v)
        self.positions = nn.Parameter(torch.zeros(n, o // self.bo, i // self.bi))

    def update(self) -> torch.Tensor:
        """The [O', I'] centre-tap update."""
        protos = self.proto_u @ self.proto_v  # n x bo x bi
        # sum_p kron(S_p, P_p) as one einsum: [a, c] blocks of size bo x bi
        n, a, c = self.positions.shape
        full = torch.einsum("nac,nbd->abcd", self.positions, protos)  # a, bo, c, bi
        return full.reshape(a * self.bo, c * self.bi)

    def delta(self) -> torch.Tensor:
        return centre_tap(self.weight, self.update())

    def _blocks(self, index: torch.Tensor, size: int, side: str) -> torch.Tensor:
        blocks = torch.div(index, size, rounding_mode="floor")
        uniq, counts = torch.unique_consecutive(blocks, return_counts=True)
        if size > 1 and (counts != size).any():
            raise ValueError(f"SPLoPA layer keeps a partial {side} block of size {size}: prune whole blocks "
                             f"(prune_step(..., block={size}))")
        return uniq

    def _block_positions(self, index: torch.Tensor, size: int, side: str, current: torch.Tensor) -> torch.Tensor:
        """Positions (in the current S) of the blocks ``index`` still touches."""
        kept = self._blocks(index, size, side)
        cur = self._blocks(current, size, side)
        lookup = {int(b): p for p, b in enumerate(cur.tolist())}
        return torch.tensor([lookup[int(b)] for b in kept], dtype=torch.long)

    def keep_out(self, keep):
        old = self.out_index.clone()
        super().keep_out(keep)
        pos = self._block_positions(self.out_index, self.bo, "output", old)
        self.positions = nn.Parameter(self.positions.data[:, pos].clone())

    def keep_in(self, keep):
        old = self.in_index.clone()
        super().keep_in(keep)
        pos = self._block_positions(self.in_index, self.bi, "input", old)
        self.positions = nn.Parameter(self.positions.data[:, :, pos].clone())

    def bundle_tensors(self):
        # The runtime has no Kronecker op: the update is stored merged as the
        # [O', I'] centre-tap pointwise_delta (docs/format.md).
        t = super().bundle_tensors()
        t["pointwise_delta"] = self.update().detach()
        return t

    def load_bundle_tensors(self, t):
        # A packed SPLoPA comes back as its merged update (factors are not stored).
        AdaptedLayer.load_bundle_tensors(self, t)
        self.proto_u = nn.Parameter(torch.ones(1, 1, 1))
        self.proto_v = nn.Parameter(torch.ones(1, 1, 1))
        self.bo = self.bi = 1
        self.positions = nn.Parameter(t["pointwise_delta"].clone()[None])


register(Method("splopa", lambda conv, rank: SPLoPA(conv, rank=rank, block=BLOCK), label="SPLoPA r{rank}",
                prune_block=BLOCK, summary="block-SPA: Kronecker products of shared low-rank prototypes"))
