"""More structured-pruning adapters: SPPaRA, SPLoPA (block-SPA) and SparseAdapter.

All keep the frozen base weight and real channel removal of ``AdaptedLayer``.

SPPaRA: a full-rank pointwise adapter P (O x I) at the centre tap::

    W_task = W[out_index][:, in_index] + centre_tap(P[out_index][:, in_index])

SPLoPA (block-SPA): channels are cut into blocks of ``block`` (bo x bi, the
block size along a dimension falls back to 1 when it does not divide the
dimension, e.g. the 1-channel input of the stem). The centre-tap update is a
sum of Kronecker products of per-layer block-position weights S_p
(O/bo x I/bi) with low-rank prototypes P_p = U_p V_p (bo x bi, rank r) that
every block position of the layer shares::

    update = sum_p kron(S_p, U_p @ V_p)

Channel pruning of a SPLoPA model removes whole blocks (``prune_step(...,
block=...)`` ranks blocks, not channels), so pruning drops rows/columns of S_p
and the prototypes stay whole.

SparseAdapter (He et al. 2022) in the SPA setting: the adapter is a weight
update D made sparse at initialisation by a mask buffer (SNIP, magnitude,
random, GraSP, SynFlow; global threshold over all layers; see
``spaedge.adapters.sparse``). The plain setting's D is pointwise (O x I at the
centre tap, SPPaRA's shape); the Large-Sparse setting's D is the full kernel
(O x I x k x k, k^2 times wider) sparsified to the same number of nonzeros.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from spaedge.adapters.layers import AdaptedLayer, _centre_tap

__all__ = ["SPPaRA", "SPLoPA", "SparseAdapter"]


class SPPaRA(AdaptedLayer):
    """Channel-SPA with a full-rank pointwise (centre-tap) adapter P."""

    method = "sppara"

    def __init__(self, base, rank: int = 0):
        super().__init__(base)
        self.pointwise = nn.Parameter(torch.zeros(self.base_out_channels, self.base_in_channels))

    def delta(self) -> torch.Tensor:
        return _centre_tap(self.weight, self.pointwise)

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
        return _centre_tap(self.weight, self.update())

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
        return u if self.large or not self.is_conv else _centre_tap(self.weight, u)

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

    def learned_parameters(self) -> int:
        return super().learned_parameters() - self.sparse.numel() + self.nonzeros()

    def bundle_tensors(self):
        t = super().bundle_tensors()
        d = self.delta().detach()
        m = self.mask.bool()
        if not self.large and self.is_conv:
            m = _centre_tap(self.weight, m.float()).bool()
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
