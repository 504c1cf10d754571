"""Sparse tensors in a task bundle: the kept entries as F32 values plus a U8
bitmask of their flat positions, one bit per entry (docs/format.md: 4 bytes and
a bit per kept entry, so a sparser adapter is a smaller bundle than the dense
one). Encoding (``sparse_tensors``), the checks a reader makes
(``sparse_positions``, as the C++ runtime makes them) and the dense tensor and
mask rebuilt from them (``scatter``).
"""

from __future__ import annotations

import torch

from spaedge.errors import SparseTensorError

__all__ = [
    "pack_mask",
    "unpack_mask",
    "sparse_tensors",
    "sparse_positions",
    "scatter",
    "SparseTensorError",
]

_DTYPE_NAMES = {torch.float32: "F32", torch.int32: "I32", torch.uint8: "U8"}


def pack_mask(keep: torch.Tensor) -> torch.Tensor:
    """U8 bitmask of a flat bool tensor: bit i (byte i // 8, bit i % 8, least
    significant first) set iff ``keep[i]``; padding bits zero (docs/format.md)."""
    keep = keep.reshape(-1).bool()
    bits = torch.zeros(-(-keep.numel() // 8) * 8, dtype=torch.uint8)
    bits[: keep.numel()] = keep.to(torch.uint8)
    weights = torch.tensor([1 << b for b in range(8)], dtype=torch.uint8)
    return (bits.reshape(-1, 8) * weights).sum(1, dtype=torch.uint8)


def unpack_mask(mask: torch.Tensor, numel: int) -> torch.Tensor:
    """The flat bool tensor of ``numel`` entries that :func:`pack_mask` packed (unchecked)."""
    bits = (mask.reshape(-1, 1).to(torch.int32) >> torch.arange(8, dtype=torch.int32)) & 1
    return bits.reshape(-1)[:numel].bool()


def sparse_tensors(name: str, value: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """``name_values`` (the entries of ``value`` where ``mask`` is nonzero, in flat
    order) and ``name_mask`` (their positions as a bitmask)."""
    keep = mask.reshape(-1) != 0
    return {
        f"{name}_values": value.detach().reshape(-1)[keep].float().contiguous(),
        f"{name}_mask": pack_mask(keep),
    }


def sparse_positions(
    t: dict[str, torch.Tensor], name: str, numel: int, shape: str, required: bool
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(flat positions, values) of the sparse tensor ``name`` (``name_values`` at the set
    bits of ``name_mask``) of ``numel`` entries, checked as the C++ runtime checks
    them; None when neither is present and not ``required``."""
    vn, mn = f"{name}_values", f"{name}_mask"
    if vn not in t and mn not in t and not required:
        return None
    if vn not in t:
        raise SparseTensorError("missing tensor {0} (present iff {1} is)", vn, mn)
    if mn not in t:
        raise SparseTensorError("missing tensor {0} (present iff {1} is)", mn, vn)
    values, mask = t[vn], t[mn]
    for n, x, want in ((vn, values, torch.float32), (mn, mask, torch.uint8)):
        if x.dtype != want:
            raise SparseTensorError(
                f"tensor {{0}}: dtype is {_DTYPE_NAMES.get(x.dtype, x.dtype)}, expected "
                f"{_DTYPE_NAMES[want]}",
                n,
            )
    if values.dim() != 1:
        raise SparseTensorError(f"tensor {{0}}: shape {list(values.shape)}, expected [nnz]", vn)
    nbytes = -(-numel // 8)
    if list(mask.shape) != [nbytes]:
        raise SparseTensorError(
            f"tensor {{0}}: shape {list(mask.shape)}, expected [{nbytes}] (one bit per entry of "
            f"the {shape}, {numel} entries, in bytes rounded up)",
            mn,
        )
    bits = unpack_mask(mask, 8 * nbytes)
    if bits[numel:].any():
        raise SparseTensorError(
            f"tensor {{0}}: padding bits after position {numel - 1} are set (last byte "
            f"{int(mask[-1])}): they must be zero",
            mn,
        )
    keep = bits[:numel]
    if int(keep.sum()) != values.numel():
        raise SparseTensorError(
            f"tensor {{0}}: has {int(keep.sum())} set bits but {{1}} has {values.numel()} values "
            "(one value per set bit)",
            mn,
            vn,
        )
    return keep.nonzero().reshape(-1), values


def scatter(shape, index: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dense tensor, 0/1 mask) of ``shape`` with ``values`` at flat positions ``index``."""
    dense, mask = torch.zeros(shape), torch.zeros(shape)
    idx = index.long().reshape(-1)
    dense.view(-1)[idx] = values.float().reshape(-1)
    mask.view(-1)[idx] = 1.0
    return dense, mask
