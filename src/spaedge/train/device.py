"""Where and how training computes: the one place that knows about devices.

``TrainEnv`` is how a run uses the machine, not what it learns: the device
(``auto`` picks CUDA, then Apple's MPS, then the CPU), the arithmetic
precision, the data-loading processes, and whether named downloads may use
the network. It is not part of ``TrainConfig``, so a checkpoint made on one
device resumes on another.

Only ``fit`` and ``predict`` (``spaedge.train.loops``) move a model to the
device; pruning, scoring, packing and checkpoints see it on the CPU. Moving a
ResNet-50 across PCIe takes milliseconds, against epochs of training between
moves.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "TrainEnv",
    "DEVICES",
    "PRECISIONS",
    "resolve_device",
    "resolve_precision",
    "autocast",
    "GradScaler",
    "use_onednn",
    "to_device",
]

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _env_field(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainEnv:
    device: str = _env_field(
        "auto", "where to train: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps"
    )
    precision: str = _env_field(
        "auto",
        "arithmetic: auto (bf16 on CUDA GPUs that have it, else fp16 on CUDA; "
        "fp32 on MPS and CPU), fp32, bf16 or fp16 (mixed precision: weights "
        "and the optimizer stay fp32)",
    )
    loader_workers: int = _env_field(
        0,
        "processes decoding images while the model trains (0: in the training "
        "process); the data and its order do not depend on it",
    )
    download: bool = _env_field(
        True, "may download named weights and datasets (--no-download: local files only)"
    )


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for a ``--device`` value; a device that is not there is an error naming what is."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"--device {name!r} is not a device; use one of {', '.join(DEVICES)} (or cuda:N)"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {name}: no CUDA GPU is visible to torch {torch.__version__} here "
            f"(torch.cuda.is_available() is False); use --device cpu or auto"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ValueError(
            f"--device {name}: Apple's MPS is not available here; use --device cpu or auto"
        )
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: spaedge trains on cpu, cuda or mps")
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype (float32: no autocast) for a ``--precision`` value on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for the forward pass (a no-op at float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class GradScaler:
    """Loss scaling for float16 (gradients would underflow); a pass-through otherwise."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

    def backward_step(self, loss: torch.Tensor, optimizer) -> None:
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()


def use_onednn(model: nn.Module, device: torch.device) -> bool:
    """Whether CPU training may use oneDNN's convolutions (3-4x faster for a
    ResNet-18 at 224): only while every conv has its base's channel counts.
    Its weight-gradient kernel crashed (SIGSEGV, torch 2.13) on some ragged
    counts pruning leaves, so pruned models train on PyTorch's native
    convolution (docs/benchmarks.md)."""
    if device.type != "cpu":
        return False
    for m in model.modules():
        if hasattr(m, "base_out_channels") and (
            m.out_channels != m.base_out_channels or m.in_channels != m.base_in_channels
        ):
            return False
    return True


def to_device(batch, device: torch.device, memory_format=torch.contiguous_format):
    """(images, labels) on ``device`` (images in ``memory_format``)."""
    x, y = batch
    non_blocking = device.type == "cuda"
    return (
        x.to(device, non_blocking=non_blocking, memory_format=memory_format),
        y.to(device, non_blocking=non_blocking),
    )
