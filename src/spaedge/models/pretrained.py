"""Pretrained ImageNet weights for the ResNet bases, by name.

    from spaedge.models.pretrained import pretrained_weights
    path = pretrained_weights("resnet18")   # ~/.cache/spaedge/weights/resnet18-f37072fd.safetensors

``resnet18``, ``resnet34`` and ``resnet50`` are torchvision's ImageNet-1k
weights (``IMAGENET1K_V1``). The ``.pth`` is downloaded once into
``spaedge_home()/weights/`` (see ``spaedge.download``: mirror, checksums,
resume, ``--no-download``), its SHA-256 checked, and converted once to
``<stem>.safetensors`` beside it with ``torch.load(weights_only=True)`` (no
pickle code runs); later calls return the safetensors file with no network.

The ``-cifar`` variants (``resnet18-cifar``...) name the same ImageNet file; their
3x3 stem conv has another shape than the file's 7x7 and starts random
(``spaedge.models.get_base``).
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from spaedge.download import (
    DownloadError,
    expected_digest,
    fetch,
    file_lock,
    parse_digest,
    spaedge_home,
)
from spaedge.paths import WriteProblem, remove_stale

__all__ = ["PRETRAINED", "PretrainedWeights", "pretrained_weights", "weights_dir"]


@dataclass(frozen=True)
class PretrainedWeights:
    url: str
    digest: str  # "sha256:<hex>" of the file at url
    size: int  # bytes: a download stops there

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


# torchvision's ResNet IMAGENET1K_V1 files. torchvision names each file after the
# first 8 hex digits of its SHA-256; the full digests are not in torchvision's
# source. They were found in public repositories that pin these exact files
# (2026), each agreeing with the 8-hex prefix of its file name and with the
# others:
#   resnet18: 12+ independent pins (e.g. a backbone catalogue listing 46,830,571 B;
#             several training scripts' *_SHA256 constants)
#   resnet34: 10 independent pins (87,319,819 B), e.g. sha256sum --check scripts
#   resnet50: 9 independent pins (102,530,333 B), e.g. a ResNet50_Weights.IMAGENET1K_V1
#             pin with size_bytes=102_530_333
# They could not be checked against the real files here (no access to the host).
PRETRAINED = {
    "resnet18": PretrainedWeights(
        "https://download.pytorch.org/models/resnet18-f37072fd.pth",
        "sha256:f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec",
        46_830_571,
    ),
    "resnet34": PretrainedWeights(
        "https://download.pytorch.org/models/resnet34-b627a593.pth",
        "sha256:b627a593bcbe140c234610266fe4f8ae95ea42fc881d091c9b6052e6b1d0590f",
        87_319_819,
    ),
    "resnet50": PretrainedWeights(
        "https://download.pytorch.org/models/resnet50-0676ba61.pth",
        "sha256:0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a",
        102_530_333,
    ),
}


def weights_dir() -> Path:
    """``spaedge_home()/weights``: where pretrained weights are cached."""
    return spaedge_home() / "weights"


def _entry(name: str) -> PretrainedWeights:
    base = name[: -len("-cifar")] if name.endswith("-cifar") else name
    if base not in PRETRAINED:
        known = ", ".join(sorted(PRETRAINED) + [f"{n}-cifar" for n in sorted(PRETRAINED)])
        raise ValueError(f"no pretrained weights for base {name!r}; known: {known}")
    return PRETRAINED[base]


def _safetensors_metadata(path: Path) -> dict | None:
    """The ``__metadata__`` of a safetensors file (header only), None if unreadable."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100 << 20:
                return None
            header = json.loads(f.read(n))
        return header.get("__metadata__") or {}
    except (OSError, ValueError, struct.error):
        return None


def _convert(pth: Path, out: Path, source: dict) -> None:
    """``pth`` (a torch state dict) -> ``out`` (safetensors), written atomically."""

    try:
        sd = torch.load(str(pth), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised saying which file
        raise DownloadError(
            f"{pth}: cannot read it as a state dict ({e}); delete it and run "
            "again to download it anew",
            source.get("source_url", ""),
            pth,
        ) from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise DownloadError(
            f"{pth}: not a state dict of tensors; delete it and run again",
            source.get("source_url", ""),
            pth,
        )
    sd = {k: v.contiguous() for k, v in sd.items()}
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    remove_stale(out.parent, re.escape(f".{out.name}.") + r"(?P<pid>\d+)\.tmp")
    try:
        save_file(sd, str(tmp), metadata=source)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except OSError as e:
        raise WriteProblem(out, e) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def pretrained_weights(name: str, *, allow_download: bool = True, progress=None) -> Path:
    """The safetensors file of base ``name``'s ImageNet weights, downloading
    and converting on first use.

    name: ``resnet18``, ``resnet34``, ``resnet50``, or one of them with
    ``-cifar`` (same file). allow_download: False (``--no-download``) uses only
    the cache (a ``.pth`` placed by hand in ``weights_dir()`` is converted).
    Raises DownloadError when the weights can be neither found nor fetched:
    never falls back to random weights.
    """
    w = _entry(name)
    digest = expected_digest(w.url, w.digest)
    pth = weights_dir() / w.filename
    out = pth.with_suffix(".safetensors")
    algo, hexd = parse_digest(digest)
    source = {"source_url": w.url, "source_digest": f"{algo}:{hexd}"}

    def cached() -> bool:
        meta = _safetensors_metadata(out) if out.is_file() else None
        return meta is not None and meta.get("source_digest") == source["source_digest"]

    if cached():
        return out
    with file_lock(out):
        if cached():  # converted by another process meanwhile
            return out
        fetch(
            w.url,
            pth,
            digest=w.digest,
            size=w.size,
            allow_download=allow_download,
            progress=progress,
        )
        _convert(pth, out, source)
    return out
