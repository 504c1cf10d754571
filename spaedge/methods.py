"""Glue between a TrainConfig and the methods: adapter preparation before
training (SparseAdapter masks) and the options of pruning (criterion data,
schedule, block size). Used by ``spaedge.train.run`` and ``spaedge experiment``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["score_batches", "prepare_adapters", "prune_options", "after_pruning", "restore_adapters"]


def score_batches(dataset, n_batches: int = 4, batch_size: int = 64, seed: int = 0) -> list:
    """A few fixed (images, labels) batches of a split for data-driven criteria."""
    from spaedge.train import batches

    g = torch.Generator().manual_seed(seed + 7919)
    out = []
    for b in batches(dataset, batch_size, shuffle=True, generator=g):
        out.append(b)
        if len(out) >= n_batches:
            break
    return out


def prepare_adapters(model: nn.Module, *, method: str, mask_criterion: str = "snip", adapter_keep: float = 0.1,
                     data=None, input_size=None) -> None:
    """Sparsify SparseAdapter models at initialisation (no-op for other methods).

    ``adapter_keep`` is the fraction of a *pointwise* adapter's entries kept;
    the Large-Sparse model keeps the same number of nonzeros over its k^2-times
    wider full-kernel adapter."""
    if method not in ("sparse", "sparse-large"):
        return
    from spaedge.adapters.sparse import large_keep, sparsify

    keep = large_keep(model, adapter_keep) if method == "sparse-large" else adapter_keep
    sparsify(model, mask_criterion, keep, data, input_shape=input_size)


def prune_options(model: nn.Module, *, criterion: str, schedule: str = "iterative", data=None) -> dict:
    """Keyword arguments for prune_to_density for this model and criterion."""
    from spaedge.adapters import prune_block
    from spaedge.pruning.criteria import DATA_CRITERIA

    opts = {"schedule": schedule, "block": prune_block(model)}
    if criterion in DATA_CRITERIA:
        opts["score_kwargs"] = {"data": data}
    return opts


def after_pruning(model: nn.Module, *, method: str, data, pear_prune: float = 0.5, pear_share: str = "nearest"):
    """Pear: once channel pruning is over (kept shapes final) and before the
    final epochs, prune the least important adapters and share important ones
    into their positions (spaedge.adapters.pear). No-op for other methods."""
    if method != "pear":
        return None
    from spaedge.adapters.pear import apply_pear

    return apply_pear(model, data, prune=pear_prune, share=pear_share)


def restore_adapters(model: nn.Module, *, method: str) -> None:
    """After a checkpoint's state dict was adopted: rebuild what a state dict
    cannot hold (Pear's parameter sharing and removed adapters)."""
    if method == "pear":
        from spaedge.adapters.pear import relink

        relink(model)
