"""Base networks and their weights.

``get_base(name, weights=None)`` returns a base model:

- ``tiny`` and ``small``: the built-in grayscale 28x28 bases (``tiny``:
  BasicBlock x [1,1,1,1], widths 16-128, 308k parameters; ``small``: ResNet-18's
  layout at half width, 32-256, ~2.8M), pretrained here on Fashion-MNIST
  classes 0-5 (``spaedge pretrain``); their weights ship with the package
  (``small``'s as float16, loaded as float32).
- ``resnet18`` / ``resnet34`` / ``resnet50``: torchvision-compatible. With no
  ``weights`` they get torchvision's ImageNet-1k weights, downloaded once and
  cached (``spaedge.models.pretrained``); or pass a weights file (``.pth``
  read with ``torch.load(weights_only=True)``, or ``.safetensors``). Random
  weights only when asked for: ``weights="random"`` (fine for speed tests).
  Add ``-cifar`` (e.g. ``resnet18-cifar``) for the small-input stem; with
  ImageNet weights its 3x3 stem conv starts random (the file's is 7x7).

Every base says where its weights came from (``model.weights_source``); base
bundles record it and ``spaedge info`` shows it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from spaedge.models.pretrained import PRETRAINED, pretrained_weights
from spaedge.models.resnet import (
    ResNet,
    from_config,
    resnet18,
    resnet34,
    resnet50,
    spaedge_small,
    spaedge_tiny,
)
from spaedge.paths import MAX_BUNDLE_BYTES, parse_json, read_regular

__all__ = [
    "ResNet",
    "get_base",
    "load_weights",
    "BASES",
    "BUILTIN",
    "BUILTIN_WEIGHTS",
    "RANDOM",
    "from_config",
]

_WEIGHTS_DIR = Path(__file__).with_name("weights")
# The built-in bases' weights, shipped in the package (spaedge pretrain --base NAME remakes them).
BUILTIN = {
    "tiny": _WEIGHTS_DIR / "spaedge_tiny.safetensors",
    "small": _WEIGHTS_DIR / "spaedge_small.safetensors",
}
BUILTIN_WEIGHTS = BUILTIN["tiny"]
RANDOM = "random"  # weights=RANDOM: a randomly initialised base, on purpose

BASES = {
    "tiny": lambda: spaedge_tiny(),
    "small": lambda: spaedge_small(),
    "resnet18": lambda: resnet18(),
    "resnet34": lambda: resnet34(),
    "resnet50": lambda: resnet50(),
    "resnet18-cifar": lambda: resnet18(stem="cifar"),
    "resnet34-cifar": lambda: resnet34(stem="cifar"),
    "resnet50-cifar": lambda: resnet50(stem="cifar"),
}


def get_base(
    name: str = "tiny",
    weights: str | os.PathLike | None = None,
    *,
    allow_download: bool = True,
    progress=None,
) -> ResNet:
    """Build base ``name`` with its weights: ``None`` for its own (built-in for
    ``tiny``, ImageNet for the ResNets, downloaded on first use unless
    ``allow_download`` is False), a weights file, or ``"random"``."""
    if name not in BASES:
        raise ValueError(f"unknown base {name!r}; known bases: {', '.join(BASES)}")
    model = BASES[name]()
    if weights is not None and str(weights) == RANDOM:
        model.weights_source = "random (not pretrained)"
    elif weights is None and name in BUILTIN:
        path = BUILTIN[name]
        if not path.exists():
            raise FileNotFoundError(
                f"the built-in {name} base's weights are missing ({path}); recreate them with "
                f"`spaedge pretrain --base {name}` or reinstall spaedge"
            )
        load_weights(model, path)
        model.weights_source = f"built-in ({path.name})"
    elif weights is None:
        path = pretrained_weights(name, allow_download=allow_download, progress=progress)
        stem = name.endswith("-cifar")
        load_weights(model, path, skip_stem=stem)
        entry = PRETRAINED[name.removesuffix("-cifar")]
        model.weights_source = f"ImageNet-1k ({entry.filename})" + (
            ", stem conv random (3x3 small-input stem)" if stem else ""
        )
    else:
        load_weights(model, weights)
        model.weights_source = f"file {Path(weights).name}"
    model.eval()
    return model


def _safetensors_state(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    """A .safetensors file's tensors, its header checked first so that a
    garbage or truncated file is one clear error naming it (no SafetensorError)."""
    from safetensors.torch import load as st_load

    again = "give a .safetensors file saved whole (safetensors.torch.save_file)"
    if len(data) < 8:
        raise ValueError(
            f"weights file {path}: {len(data)} bytes, too short to be .safetensors; {again}"
        )
    n = int.from_bytes(data[:8], "little")
    if n > 100_000_000 or 8 + n > len(data):
        raise ValueError(
            f"weights file {path}: header length {n} does not fit a {len(data)}-byte file "
            f"(truncated or not .safetensors); {again}"
        )
    header = parse_json(data[8 : 8 + n], f"weights file {path}: header")
    if not isinstance(header, dict):
        raise ValueError(f"weights file {path}: header is not a JSON object; {again}")
    try:
        return st_load(data)
    except Exception as e:  # noqa: BLE001 - SafetensorError and whatever else the parser raises
        raise ValueError(
            f"weights file {path}: not readable as .safetensors ({e}); {again}"
        ) from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``.pth``/``.pt`` file (no pickle code runs).

    The file is read through ``spaedge.paths.read_regular``: a regular file
    (a FIFO or device is refused without blocking) of at most
    ``MAX_BUNDLE_BYTES``."""
    path = Path(path)
    data = read_regular(path, "weights file", MAX_BUNDLE_BYTES)
    if path.suffix == ".safetensors":
        return _safetensors_state(path, data)
    try:
        sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with what to do
        raise ValueError(
            f"{path}: cannot read weights ({e}); give a torchvision state dict saved "
            "with torch.save(model.state_dict()) or a .safetensors file"
        ) from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(sd).__name__}")
    return sd


def load_weights(
    model: ResNet, path: str | os.PathLike, *, head: bool = True, skip_stem: bool = False
) -> None:
    """Load a torchvision-named state dict into ``model``.

    The classification head (``fc.*``) is optional and ignored when its shape
    differs: every task trains its own head. ``skip_stem`` leaves the stem
    conv as initialised (ImageNet weights on a small-input -cifar stem).
    """
    sd = read_state_dict(path)
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if skip_stem:
        sd.pop("conv1.weight", None)
    own = model.state_dict()
    optional = ("fc.", "conv1.") if skip_stem else ("fc.",)
    missing = [
        k
        for k in own
        if k not in sd and not k.startswith(optional) and not k.endswith("num_batches_tracked")
    ]
    if missing:
        raise ValueError(
            f"{path}: not weights for this base ({type(model).__name__} {model.arch}); "
            f"missing {len(missing)} tensors, e.g. {missing[:3]}"
        )
    for k, v in sd.items():
        if k in own and own[k].shape != v.shape and not k.startswith("fc."):
            raise ValueError(
                f"{path}: tensor {k} has shape {tuple(v.shape)}, the base expects "
                f"{tuple(own[k].shape)}: wrong architecture or input channels?"
            )
    keep = {
        k: v
        for k, v in sd.items()
        if k in own and (head or not k.startswith("fc.")) and own[k].shape == v.shape
    }
    model.load_state_dict(keep, strict=False)
