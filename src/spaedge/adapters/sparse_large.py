"""Large-Sparse SPLoRA (method ``sparse-large``; He et al. 2022): the sparse
SPLoRA of ``spaedge.adapters.sparse`` made wider, keeping the dense adapter's
parameter count.

The rank is enlarged from the configured r to ``r' = ceil(r / (1 - sparsity))``
and the masks keep exactly ``r * sum over convs of (O + I)`` entries, the dense
rank-r SPLoRA's parameter count (``large_rank``, ``dense_lora_parameters``).
The realised sparsity ``1 - r / r'`` is the configured one or, where
r / (1 - sparsity) is not a whole number, a little above it (r 8 at 40%: r'
14, 42.9%).
"""

from __future__ import annotations

import math

from torch import nn

from spaedge.adapters.registry import Method, register
from spaedge.adapters.sparse import SparseOptions, SparseSPLoRA
from spaedge.adapters.sparse_masks import sparsify
from spaedge.adapters.splora import SPLoRA

__all__ = ["large_rank", "dense_lora_parameters"]


def large_rank(rank: int, sparsity: float) -> int:
    """Large-Sparse's rank: ``ceil(rank / (1 - sparsity))``, the narrowest rank whose
    entries at ``sparsity`` hold at least rank ``rank``'s dense parameters."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return math.ceil(round(rank / (1.0 - sparsity), 9))  # 8 / (1 - 0.8) is 40.00000000000001


def dense_lora_parameters(model: nn.Module, rank: int) -> int:
    """Parameters of dense rank-``rank`` factors on ``model``'s (sparse) SPLoRA layers,
    ``rank * sum(O + I)``: what Large-Sparse keeps."""
    return sum(
        rank * (m.out_channels + m.in_channels) for m in model.modules() if isinstance(m, SPLoRA)
    )


def _prepare(model: nn.Module, opts: SparseOptions, data, input_size) -> None:
    """Widen every layer to ``large_rank`` and keep exactly the dense SPLoRA's
    parameter count at the configured rank."""
    budget = dense_lora_parameters(model, opts.rank)
    wide = large_rank(opts.rank, opts.sparsity)
    for m in model.modules():
        if isinstance(m, SparseSPLoRA):
            m.widen(wide)
    sparsify(model, opts.mask_criterion, data=data, nonzeros=budget, input_shape=input_size)


register(
    Method(
        "sparse-large",
        lambda conv, rank: SparseSPLoRA(conv, rank=rank),
        label="SparseAdapter Large-Sparse SPLoRA r{rank}",
        options=SparseOptions,
        prepare=_prepare,
        summary="sparse SPLoRA widened to rank ceil(rank / (1 - sparsity)), keeping the parameters of "
        "rank --rank",
    )
)
