"""The one bundle format: safetensors with spaedge metadata (docs/format.md).

This module writes every bundle and is how Python reads them back. It needs
numpy and safetensors only (no torch), so device-side tools can use it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Mapping

import numpy as np
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from spaedge.errors import BundleError

__all__ = ["FORMAT_VERSION", "BundleError", "write_bundle", "read_bundle", "read_metadata",
           "data_hash", "atomic_write_bytes"]

FORMAT_VERSION = "1"
_DTYPES = {np.dtype(np.float32), np.dtype(np.int32)}
_MAX_HEADER = 100 * 1024 * 1024


def _split(buf: bytes, where: str) -> tuple[int, bytes]:
    if len(buf) < 8:
        raise BundleError(f"{where}: file is {len(buf)} bytes, too short for a safetensors header")
    (n,) = struct.unpack("<Q", buf[:8])
    if n > _MAX_HEADER or 8 + n > len(buf):
        raise BundleError(f"{where}: header length {n} does not fit a {len(buf)}-byte file (truncated or corrupt)")
    return n, buf[8 + n:]


def data_hash(buf: bytes, where: str = "bundle") -> str:
    """SHA-256 of the data section of serialised safetensors bytes."""
    _, data = _split(buf, where)
    return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def serialise(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> tuple[bytes, str]:
    """Bundle bytes and their content hash; ``metadata`` values must be strings."""
    arrays = {}
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        if a.dtype not in _DTYPES:
            raise TypeError(f"tensor {name}: dtype {a.dtype} is not float32 or int32")
        arrays[name] = a
    for k, v in metadata.items():
        if not isinstance(v, str):
            raise TypeError(f"metadata {k}: values must be strings (JSON-encode structured ones)")
    # Serialise once: the data section does not depend on the metadata, so its
    # hash goes into a header rebuilt around the same data.
    raw = _st_save(arrays, metadata=dict(metadata))
    (n,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
    content_hash = hashlib.sha256(data).hexdigest()
    header["__metadata__"] = {**metadata, "version": FORMAT_VERSION, "content_hash": content_hash}
    return _canonical(header, data), content_hash


def _canonical(header: dict, data: bytes) -> bytes:
    """A safetensors file with its header keys in sorted order.

    The safetensors writer emits ``__metadata__`` in a different (hash) order
    on every call, so the same bundle written twice differed in bytes; sorted
    keys make a bundle a pure function of its content (resume and rebuilds
    give byte-identical files). Offsets are relative to the data section and
    do not change; the header is padded with spaces to 8 bytes as the format asks."""
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def write_bundle(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                 metadata: Mapping[str, str]) -> str:
    """Write a bundle atomically; returns its content hash."""
    payload, content_hash = serialise(tensors, metadata)
    atomic_write_bytes(path, payload)
    return content_hash


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a bundle, checked to be a spaedge bundle."""
    p = Path(path)
    with open(_existing(p), "rb") as f:
        head = f.read(8)
        size = p.stat().st_size
        if len(head) < 8:
            raise BundleError(f"{p}: file is {size} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise BundleError(f"{p}: header length {n} does not fit a {size}-byte file (truncated or corrupt)")
        header = f.read(n)
    return _check_metadata(p, header)


def _existing(p: Path) -> Path:
    if p.is_dir():
        raise BundleError(f"{p}: is a directory, not a bundle file")
    if not p.exists():
        raise BundleError(f"{p}: no such bundle file")
    return p


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs):
    # json.loads keeps the last of repeated keys silently, and safetensors does
    # too: a header naming a tensor (or metadata key) twice is refused, as the C++ reader does.
    out = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _check_metadata(p: Path, header: bytes) -> dict[str, str]:
    try:
        doc = json.loads(header.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        raise BundleError(f"{p}: header has the key {str(e)!r} twice (duplicate tensor or metadata name)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{p}: header is not valid JSON ({e})") from None
    meta = doc.get("__metadata__") if isinstance(doc, dict) else None
    if not isinstance(meta, dict):
        raise BundleError(f"{p}: field '__metadata__' is missing: not a spaedge bundle")
    fmt = meta.get("format")
    if fmt not in ("spaedge-base", "spaedge-task"):
        raise BundleError(f"{p}: field 'format' is {fmt!r}, expected 'spaedge-base' or 'spaedge-task'")
    if meta.get("version") != FORMAT_VERSION:
        raise BundleError(f"{p}: field 'version' is {meta.get('version')!r}; this spaedge reads version "
                          f"{FORMAT_VERSION}: repack the bundle with this version")
    return meta


def read_bundle(path: str | os.PathLike, verify: bool = True) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors (numpy) and metadata of a bundle; ``verify`` checks the content hash."""
    p = Path(path)
    buf = _existing(p).read_bytes()
    n, data = _split(buf, str(p))
    meta = _check_metadata(p, buf[8:8 + n])
    if verify:
        actual = hashlib.sha256(data).hexdigest()
        if actual != meta.get("content_hash"):
            raise BundleError(f"{p}: field 'content_hash' does not match the data "
                              f"(stored {meta.get('content_hash')!r}, computed {actual}): the file is corrupt")
    try:
        tensors = _st_load(buf)
    except Exception as e:  # noqa: BLE001 - safetensors raises several kinds
        raise BundleError(f"{p}: tensors cannot be read ({e})") from None
    for name, a in tensors.items():
        if a.dtype not in _DTYPES:
            raise BundleError(f"{p}: tensor '{name}' has dtype {a.dtype}, expected float32 or int32")
    return tensors, meta


def json_field(meta: Mapping[str, str], key: str, where: str):
    """Decode a JSON-valued metadata field with an error naming it."""
    if key not in meta:
        raise BundleError(f"{where}: field '{key}' is missing")
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as e:
        raise BundleError(f"{where}: field '{key}' is not valid JSON ({e})") from None
