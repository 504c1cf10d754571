"""SparseAdapter (He et al. 2022) in the SPA setting: an adapter a method
already has, made sparse at initialisation.

The paper prunes an adapter's weights once, at initialisation, with a
pruning-at-initialisation criterion and one global threshold; the masks stay
fixed and training updates only the kept entries. It works up to 80%
sparsity and recommends 40%. Its *Large-Sparse* setting makes the adapter
wider and sparsifies it so that it keeps the dense adapter's parameter count.

Methods (``spaedge.adapters.registry``), options ``sparsity`` (fraction of the
adapter's entries masked, default 0.4) and ``mask_criterion``:

- ``sparse``: sparse SPLoRA. Both factors A (r x I) and B (O x r) are masked.
- ``sparse-sppara``: sparse SPPaRA, the pointwise adapter P (O x I) masked.
- ``sparse-large``: Large-Sparse SPLoRA (``spaedge.adapters.sparse_large``).

This module holds the layers; the masks and their criteria are
``spaedge.adapters.sparse_masks``, the bundle's values + bitmask encoding
``spaedge.adapters.bitmask``.

Every criterion needs nonzero weights (SNIP's |g * w| of a zero is zero), and
SPLoRA's own initialisation has B = 0, which would also zero A's gradient. A
sparse SPLoRA therefore starts *balanced*: A and B both ~ N(0, s^2) with
s^2 = init_std * std(W) / sqrt(r), so B A starts at about init_std times the
base weights' scale (the same start as the sparse SPPaRA's P) and both factors
are on one scale, which a single threshold over both needs (with A at SPLoRA's
Kaiming scale, magnitude would keep A and drop nearly all of B).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from spaedge.adapters.base import AdaptedLayer, centre_tap
from spaedge.adapters.bitmask import scatter, sparse_positions, sparse_tensors
from spaedge.adapters.registry import Method, RankOptions, register
from spaedge.adapters.sparse_masks import Masked, MaskOptions, sparsify
from spaedge.adapters.splora import SPLoRA
from spaedge.errors import SparseTensorError
from spaedge.runtime import LIMITS

__all__ = ["SparseAdapter", "SparseSPLoRA", "SparseOptions", "SparseTensorError"]


@dataclass(frozen=True)
class SparseOptions(MaskOptions, RankOptions):
    """The options of the sparse SPLoRA methods: a rank, the sparsity, the mask criterion."""


class SparseAdapter(Masked, AdaptedLayer):
    """Sparse SPPaRA: a pointwise update P (O x I at the centre tap) with a fixed
    unstructured mask. ``full_kernel``: the update spans the whole kernel
    (O x I x k x k); only a bundle whose entries are not all at the centre tap
    loads as one (the former full-kernel method wrote such bundles)."""

    method = "sparse-sppara"
    masked = (("sparse", "mask"),)

    def __init__(self, base, rank: int = 0, full_kernel: bool = False, init_std: float = 1e-2):
        super().__init__(base)
        self.full_kernel = full_kernel
        shape = (
            tuple(self.weight.shape)
            if full_kernel
            else (self.base_out_channels, self.base_in_channels)
        )
        # Nonzero random init (as the adapters of the SparseAdapter paper), scaled to the
        # base weights so the task starts close to the base; saliency needs w != 0.
        scale = (
            float(self.weight.detach().std()) * init_std if self.weight.numel() > 1 else init_std
        )
        self.sparse = nn.Parameter(torch.randn(shape) * scale)
        self.register_buffer("mask", torch.ones(shape))

    def update(self) -> torch.Tensor:
        return self.sparse * self.mask

    def delta(self) -> torch.Tensor:
        u = self.update()
        return u if self.full_kernel or not self.is_conv else centre_tap(self.weight, u)

    def keep_out(self, keep):
        super().keep_out(keep)
        self.sparse = nn.Parameter(self.sparse.data[keep].clone())
        self.mask = self.mask[keep].clone()

    def keep_in(self, keep):
        super().keep_in(keep)
        self.sparse = nn.Parameter(self.sparse.data[:, keep].clone())
        self.mask = self.mask[:, keep].clone()

    def bundle_tensors(self):
        t = super().bundle_tensors()
        d = self.delta().detach()
        m = self.mask.bool()
        if not self.full_kernel and self.is_conv:
            m = centre_tap(self.weight, m.float()).bool()
        t.update(sparse_tensors("sparse_delta", d, m))
        if not t[
            "sparse_delta_values"
        ].numel():  # optional in the format: nothing kept, nothing stored
            del t["sparse_delta_values"], t["sparse_delta_mask"]
        return t

    def load_bundle_tensors(self, t):
        AdaptedLayer.load_bundle_tensors(self, t)
        shape = tuple(self.weight.shape)
        dims = ", ".join(str(d) for d in shape)
        stored = sparse_positions(
            t, "sparse_delta", math.prod(shape), f"[{dims}] task weight", False
        )
        idx, values = (
            stored if stored is not None else (torch.zeros(0, dtype=torch.long), torch.zeros(0))
        )
        kk = shape[2] * shape[3] if self.is_conv else 1
        centre = (shape[2] // 2) * shape[3] + shape[3] // 2 if self.is_conv else 0
        # The pointwise form when every entry is at the centre tap (what sparse-sppara writes).
        self.full_kernel = self.full_kernel or bool((idx % kk != centre).any())
        if self.full_kernel or not self.is_conv:
            dense, mask = scatter(shape, idx, values)
        else:
            dense, mask = scatter(shape[:2], idx // kk, values)
        self.sparse = nn.Parameter(dense)
        self.mask = mask


class SparseSPLoRA(Masked, SPLoRA):
    """Sparse SPLoRA: ``W + centre_tap((B * M_B) @ (A * M_A))`` with fixed masks
    M_A, M_B; factors initialised balanced (module docstring)."""

    method = "sparse"
    masked = (("lora_a", "lora_a_mask"), ("lora_b", "lora_b_mask"))

    def __init__(self, base: nn.Conv2d | nn.Linear, rank: int = 8, init_std: float = 1e-2):
        AdaptedLayer.__init__(self, base)
        if rank < 1:
            raise ValueError(f"adapter rank must be at least 1, got {rank}")
        self.init_std = init_std
        self.register_buffer("lora_a_mask", torch.ones(0))
        self.register_buffer("lora_b_mask", torch.ones(0))
        self.widen(rank)

    def widen(self, rank: int) -> None:
        """New factors of rank ``rank`` (balanced random), masks all ones: Large-Sparse
        widens before its masks are chosen."""
        if rank < 1:
            raise ValueError(f"adapter rank must be at least 1, got {rank}")
        w = self.weight.detach()
        scale = float(w.std()) * self.init_std if w.numel() > 1 else self.init_std
        s = math.sqrt(scale / math.sqrt(rank))
        self.rank = rank
        self.lora_a = nn.Parameter(torch.randn(rank, self.in_channels) * s)
        self.lora_b = nn.Parameter(torch.randn(self.out_channels, rank) * s)
        self.lora_a_mask = torch.ones(rank, self.in_channels)
        self.lora_b_mask = torch.ones(self.out_channels, rank)

    def delta(self) -> torch.Tensor:
        return centre_tap(
            self.weight, (self.lora_b * self.lora_b_mask) @ (self.lora_a * self.lora_a_mask)
        )

    def keep_out(self, keep: torch.Tensor) -> None:
        super().keep_out(keep)
        self.lora_b_mask = self.lora_b_mask[keep].clone()

    def keep_in(self, keep: torch.Tensor) -> None:
        super().keep_in(keep)
        self.lora_a_mask = self.lora_a_mask[:, keep].clone()

    def bundle_tensors(self) -> dict[str, torch.Tensor]:
        t = AdaptedLayer.bundle_tensors(self)
        t["lora_rank"] = torch.tensor([self.lora_a.shape[0]], dtype=torch.int32)
        t.update(sparse_tensors("lora_a", self.lora_a * self.lora_a_mask, self.lora_a_mask))
        t.update(sparse_tensors("lora_b", self.lora_b * self.lora_b_mask, self.lora_b_mask))
        return t

    def load_bundle_tensors(self, t: dict[str, torch.Tensor]) -> None:
        AdaptedLayer.load_bundle_tensors(self, t)
        r = int(t["lora_rank"].reshape(-1)[0])
        if not 1 <= r <= LIMITS["max_rank"]:
            raise SparseTensorError(
                f"tensor {{0}}: rank {r} must be in [1, {LIMITS['max_rank']}]", "lora_rank"
            )
        O, I = self.out_channels, self.in_channels
        a, ma = scatter((r, I), *sparse_positions(t, "lora_a", r * I, f"[{r}, {I}] factor A", True))
        b, mb = scatter((O, r), *sparse_positions(t, "lora_b", O * r, f"[{O}, {r}] factor B", True))
        self.rank = r
        self.lora_a, self.lora_b = nn.Parameter(a), nn.Parameter(b)
        self.lora_a_mask, self.lora_b_mask = ma, mb


def _prepare(model: nn.Module, opts: MaskOptions, data, input_size) -> None:
    """Sparsify at initialisation: ``opts.sparsity`` of the adapters' entries masked."""
    sparsify(model, opts.mask_criterion, 1.0 - opts.sparsity, data, input_shape=input_size)


register(
    Method(
        "sparse",
        lambda conv, rank: SparseSPLoRA(conv, rank=rank),
        label="SparseAdapter SPLoRA r{rank}",
        options=SparseOptions,
        prepare=_prepare,
        summary="SPLoRA with both factors made sparse at initialisation",
    )
)
register(
    Method(
        "sparse-sppara",
        lambda conv, rank: SparseAdapter(conv),
        label="SparseAdapter SPPaRA",
        options=MaskOptions,
        prepare=_prepare,
        summary="SPPaRA's pointwise adapter made sparse at initialisation",
    )
)
