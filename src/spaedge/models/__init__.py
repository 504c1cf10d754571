"""Base networks and their weights.

``get_base(name, weights=None)`` returns a base model:

- ``tiny`` (default): the built-in grayscale 28x28 base, pretrained here on
  Fashion-MNIST classes 0-5 (``spaedge pretrain``); its weights ship with the
  package.
- ``resnet18`` / ``resnet34`` / ``resnet50``: torchvision-compatible; pass a
  weights file (``.pth`` loaded with ``torch.load(weights_only=True)`` or
  ``.safetensors``) or get random weights (fine for speed tests only).
  Add ``-cifar`` (e.g. ``resnet18-cifar``) for the small-input stem.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from spaedge.models.resnet import ResNet, from_config, resnet18, resnet34, resnet50, spaedge_tiny

__all__ = ["ResNet", "get_base", "load_weights", "BASES", "BUILTIN_WEIGHTS", "from_config"]

BUILTIN_WEIGHTS = Path(__file__).with_name("weights") / "spaedge_tiny.safetensors"

BASES = {
    "tiny": lambda: spaedge_tiny(),
    "resnet18": lambda: resnet18(),
    "resnet34": lambda: resnet34(),
    "resnet50": lambda: resnet50(),
    "resnet18-cifar": lambda: resnet18(stem="cifar"),
    "resnet34-cifar": lambda: resnet34(stem="cifar"),
    "resnet50-cifar": lambda: resnet50(stem="cifar"),
}


def get_base(name: str = "tiny", weights: str | os.PathLike | None = None, in_channels: int | None = None) -> ResNet:
    """Build base ``name`` and load its weights (built-in ones for ``tiny``)."""
    if name not in BASES:
        raise ValueError(f"unknown base {name!r}; known bases: {', '.join(BASES)}")
    model = BASES[name]() if in_channels is None else _with_channels(name, in_channels)
    if weights is None and name == "tiny":
        if not BUILTIN_WEIGHTS.exists():
            raise FileNotFoundError(
                f"the built-in base weights are missing ({BUILTIN_WEIGHTS}); "
                "recreate them with `spaedge pretrain` or reinstall spaedge")
        weights = BUILTIN_WEIGHTS
    if weights is not None:
        load_weights(model, weights)
    model.eval()
    return model


def _with_channels(name: str, in_channels: int) -> ResNet:
    kw = {"in_channels": in_channels}
    if name.endswith("-cifar"):
        kw["stem"] = "cifar"
    ctor = {"tiny": spaedge_tiny, "resnet18": resnet18, "resnet34": resnet34,
            "resnet50": resnet50}[name.replace("-cifar", "")]
    return ctor(**kw)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``.pth``/``.pt`` file (no pickle code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with what to do
        raise ValueError(f"{path}: cannot read weights ({e}); give a torchvision state dict saved "
                         "with torch.save(model.state_dict()) or a .safetensors file") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(sd).__name__}")
    return sd


def load_weights(model: ResNet, path: str | os.PathLike, *, head: bool = True) -> None:
    """Load a torchvision-named state dict into ``model``.

    The classification head (``fc.*``) is optional and ignored when its shape
    differs: every task trains its own head.
    """
    sd = read_state_dict(path)
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"{path}: not weights for this base ({type(model).__name__} {model.arch}); "
                         f"missing {len(missing)} tensors, e.g. {missing[:3]}")
    for k, v in sd.items():
        if k in own and own[k].shape != v.shape and not k.startswith("fc."):
            raise ValueError(f"{path}: tensor {k} has shape {tuple(v.shape)}, the base expects "
                             f"{tuple(own[k].shape)}: wrong architecture or input channels?")
    keep = {k: v for k, v in sd.items() if k in own and (head or not k.startswith("fc."))
            and own[k].shape == v.shape}
    model.load_state_dict(keep, strict=False)
