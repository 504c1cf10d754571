"""The adapted layer every method builds on: a frozen base conv (or linear)
whose kept channels are recorded and really removed by pruning.

Every adapted layer keeps the base weight frozen and records which of the
base's output and input channels it still has (``out_index``/``in_index``,
relative to the original base layer). Pruning removes channels for real: the
weight, the adapter factors and the indices are sliced, so nothing that
training does can bring a pruned channel back. A method (one module of this
package each, listed in ``spaedge.adapters.registry``) subclasses
``AdaptedLayer`` with its ``delta()`` and bundle tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AdaptedLayer", "centre_tap"]


class AdaptedLayer(nn.Module):
    """A frozen conv (or linear) base layer with kept-channel indices.

    Subclasses define ``delta()``, the task's update to the (pruned) base
    weight, and ``bundle_tensors()``, what a task bundle stores for them.
    """

    method = "frozen"

    def __init__(self, base: nn.Conv2d | nn.Linear):
        super().__init__()
        if isinstance(base, nn.Conv2d):
            if base.groups != 1 or base.dilation != (1, 1):
                raise ValueError("only dense, undilated convolutions can be adapted")
            if (
                base.kernel_size[0] != base.kernel_size[1]
                or base.stride[0] != base.stride[1]
                or base.padding[0] != base.padding[1]
            ):
                raise ValueError(
                    "only square kernels with equal strides and paddings are supported"
                )
            self.is_conv = True
            self.kernel_size = base.kernel_size
            self.stride = base.stride
            self.padding = base.padding
        elif isinstance(base, nn.Linear):
            self.is_conv = False
            self.kernel_size = (1, 1)
        else:
            raise TypeError(f"cannot adapt {type(base).__name__}")
        w = base.weight.detach().clone()
        self.weight = nn.Parameter(w, requires_grad=False)
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach().clone())
        self.base_out_channels, self.base_in_channels = int(w.shape[0]), int(w.shape[1])
        self.register_buffer("out_index", torch.arange(w.shape[0], dtype=torch.long))
        self.register_buffer("in_index", torch.arange(w.shape[1], dtype=torch.long))

    # channel counts as they are now (after pruning)
    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def in_channels(self) -> int:
        return int(self.weight.shape[1])

    @property
    def in_features(self) -> int:
        return self.in_channels

    @property
    def out_features(self) -> int:
        return self.out_channels

    def delta(self) -> torch.Tensor | None:
        return None

    def task_weight(self) -> torch.Tensor:
        d = self.delta()
        return self.weight if d is None else self.weight + d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A criterion probing dL/dW_task sets ``weight_probe`` to a detached leaf
        # copy of the task weight (spaedge.pruning.criteria.task_weight_grads).
        probe = getattr(self, "weight_probe", None)
        w = self.task_weight() if probe is None else probe
        if self.is_conv:
            return F.conv2d(x, w, self.bias, self.stride, self.padding)
        return F.linear(x, w, self.bias)

    # ---------------------------------------------------------------- pruning
    def keep_out(self, keep: torch.Tensor) -> None:
        """Keep only output channels ``keep`` (positions in the current layer)."""
        self.weight = nn.Parameter(
            self.weight.data[keep].clone(), requires_grad=self.weight.requires_grad
        )
        if self.bias is not None:
            self.bias = nn.Parameter(self.bias.data[keep].clone())
        self.out_index = self.out_index[keep].clone()

    def keep_in(self, keep: torch.Tensor) -> None:
        """Keep only input channels ``keep`` (positions in the current layer)."""
        self.weight = nn.Parameter(
            self.weight.data[:, keep].clone(), requires_grad=self.weight.requires_grad
        )
        self.in_index = self.in_index[keep].clone()

    # ---------------------------------------------------------------- packing
    def bundle_tensors(self) -> dict[str, torch.Tensor]:
        """Task-bundle tensors of this layer (docs/format.md), without the name prefix."""
        t = {"out_index": self.out_index.to(torch.int32), "in_index": self.in_index.to(torch.int32)}
        if self.bias is not None:
            t["bias"] = self.bias.detach()
        return t

    def load_bundle_tensors(self, t: dict[str, torch.Tensor]) -> None:
        """Inverse of ``bundle_tensors`` on a layer built from the same base."""
        out_idx, in_idx = t["out_index"].long(), t["in_index"].long()
        self.keep_out(out_idx)
        self.keep_in(in_idx)
        if "bias" in t:
            self.bias = nn.Parameter(t["bias"].clone())

    def learned_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad) - self.masked_entries()

    def masked_entries(self) -> int:
        """Entries of trainable parameters a mask holds at zero (not learned, not stored)."""
        return 0

    def extra_repr(self) -> str:
        k = f", kernel={self.kernel_size[0]}" if self.is_conv else ""
        return (
            f"{self.method}: in={self.in_channels}/{self.base_in_channels}, "
            f"out={self.out_channels}/{self.base_out_channels}{k}"
        )


def centre_tap(w: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """A zero tensor shaped like ``w`` with ``update`` (O x I) at the centre tap."""
    if w.dim() == 2:
        return update
    k = w.shape[-1]
    c = k // 2
    return F.pad(update[:, :, None, None], (c, k - 1 - c, c, k - 1 - c))


def layers_of(model: nn.Module, cls: type, need: str) -> list[tuple[str, AdaptedLayer]]:
    """(name, layer) of every adapted layer of ``model``, all of which must be
    ``cls`` (``need`` says what requires them, in the error)."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, AdaptedLayer)]
    bad = [n for n, m in layers if not isinstance(m, cls)]
    if bad:
        raise TypeError(f"{need}; {bad[0]} is not one")
    return layers
