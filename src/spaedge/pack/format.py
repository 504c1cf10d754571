"""The one bundle format: safetensors with spaedge metadata (docs/format.md).

This module writes every bundle and is how Python reads them back. It needs
numpy and safetensors only (no torch), so device-side tools can use it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors.numpy import save as _st_save

from spaedge import runtime
from spaedge.errors import BundleError
from spaedge.paths import WriteProblem, remove_stale

__all__ = [
    "FORMAT_VERSION",
    "INT8_FORMAT_VERSION",
    "PRECISIONS",
    "precision_of",
    "MAX_HEADER_BYTES",
    "BundleError",
    "write_bundle",
    "read_bundle",
    "read_metadata",
    "content_hash",
    "atomic_write_bytes",
    "check_task_metadata",
]

FORMAT_VERSION = runtime.FORMAT_VERSION
#: The version of int8 bundles (docs/int8.md, (a)): fp32 bundles stay at
#: FORMAT_VERSION byte for byte, so their content hashes do not change.
INT8_FORMAT_VERSION = "5"
#: Values of the metadata key ``precision`` (absent: fp32).
PRECISIONS = ("fp32", "int8")
#: Header length limit: safetensors' own, as the runtime reads it.
MAX_HEADER_BYTES = runtime.LIMITS["max_header_bytes"]
_DTYPES = {np.dtype(np.float32), np.dtype(np.int32), np.dtype(np.uint8), np.dtype(np.int8)}
_NP_DTYPES = {
    "F32": np.dtype("<f4"),
    "I32": np.dtype("<i4"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
}


def precision_of(meta: Mapping[str, str]) -> str:
    """A bundle's precision: its metadata ``precision``, ``fp32`` when absent."""
    return meta.get("precision", "fp32")


def _u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def content_hash(metadata: Mapping[str, str], table: Mapping[str, Mapping], data) -> str:
    """The canonical content hash of format versions 2 and 3 (docs/format.md).

    SHA-256 over: the number of metadata entries other than ``content_hash``,
    then each as length-prefixed UTF-8 key and value, in bytewise key order;
    the number of tensors, then each tensor's length-prefixed name and dtype,
    its number of dimensions, the dimensions and its two data offsets, in
    bytewise name order; then the data section. Every number is an 8-byte
    little-endian unsigned integer. ``table`` maps tensor names to their
    safetensors header entries (dtype, shape, data_offsets)."""
    h = hashlib.sha256()
    meta = sorted(
        (k.encode("utf-8"), v.encode("utf-8")) for k, v in metadata.items() if k != "content_hash"
    )
    h.update(_u64(len(meta)))
    for k, v in meta:
        h.update(_u64(len(k)) + k + _u64(len(v)) + v)
    entries = sorted(((name.encode("utf-8"), e) for name, e in table.items()), key=lambda x: x[0])
    h.update(_u64(len(entries)))
    for name, e in entries:
        dtype = e["dtype"].encode("utf-8")
        shape = e["shape"]
        begin, end = e["data_offsets"]
        h.update(
            _u64(len(name))
            + name
            + _u64(len(dtype))
            + dtype
            + _u64(len(shape))
            + b"".join(_u64(d) for d in shape)
            + _u64(begin)
            + _u64(end)
        )
    h.update(data)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so readers see the old file or the whole new one.

    The bytes go to ``<name>.tmp-<pid>`` beside it (held under an flock while
    written), are synced, then renamed over ``path``. Temporary files of
    ``path`` left by killed processes are removed first. A failed write (disk
    full, read-only, no permission) raises WriteProblem naming ``path``, with
    the temporary file removed and ``path`` as it was."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(path.parent, re.escape(path.name) + r"\.tmp-(?P<pid>\d+)")
        with open(tmp, "wb") as f:
            _lock(f)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WriteProblem(path, e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _lock(f) -> None:
    """An flock on the file being written, so that stale-file cleaning leaves it alone."""
    try:
        import fcntl

        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (ImportError, OSError):
        pass


def serialise(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> tuple[bytes, str]:
    """Bundle bytes and their content hash; ``metadata`` values must be strings."""
    precision = metadata.get("precision")
    if precision not in (None, "int8"):
        raise ValueError(
            f"metadata precision: {precision!r}; writers set it only for int8 bundles "
            "(absent means fp32)"
        )
    arrays = {}
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        if a.dtype not in _DTYPES:
            raise TypeError(f"tensor {name}: dtype {a.dtype} is not float32, int32, uint8 or int8")
        if a.dtype == np.int8 and precision != "int8":
            raise TypeError(f"tensor {name}: int8 tensors belong to int8 bundles only")
        arrays[name] = a
    for k, v in metadata.items():
        if not isinstance(v, str):
            raise TypeError(f"metadata {k}: values must be strings (JSON-encode structured ones)")
    # Serialise once: the data section and the tensor table do not depend on
    # the metadata, so the hash goes into a header rebuilt around the same data.
    raw = _st_save(arrays, metadata=dict(metadata))
    (n,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8 : 8 + n]), raw[8 + n :]
    meta = {k: v for k, v in metadata.items() if k != "content_hash"}
    meta["version"] = INT8_FORMAT_VERSION if precision == "int8" else FORMAT_VERSION
    table = {k: v for k, v in header.items() if k != "__metadata__"}
    digest = content_hash(meta, table, data)
    header["__metadata__"] = {**meta, "content_hash": digest}
    return _canonical(header, data), digest


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


def write_bundle(
    path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]
) -> str:
    """Write a bundle atomically; returns its content hash."""
    payload, content_hash = serialise(tensors, metadata)
    atomic_write_bytes(path, payload)
    return content_hash


def _show(p) -> str:
    """A path for a message: control characters and NUL escaped (they would cut or garble the line)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(p))


def _open(p: Path):
    """The bundle file opened for reading, checked to be a regular file
    without blocking (a FIFO is refused, not waited on); (file, size)."""
    if "\0" in os.fspath(p):
        raise BundleError(
            f"{_show(p)}: path contains a NUL byte (the file name would be cut there)"
        )
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise BundleError(f"{_show(p)}: no such bundle file") from None
    except IsADirectoryError:
        raise BundleError(f"{_show(p)}: is a directory, not a bundle file") from None
    except OSError as e:
        raise BundleError(f"{_show(p)}: cannot open ({e.strerror})") from None
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise BundleError(f"{_show(p)}: is a directory, not a bundle file")
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BundleError(f"{_show(p)}: is not a regular file")
    return os.fdopen(fd, "rb", buffering=0), st.st_size


def _read_exact(f, p: Path, n: int, size: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = f.read(min(n - len(out), 1 << 24))
        if not chunk:
            raise BundleError(
                f"{_show(p)}: file changed while being read: it was {size} bytes when opened and is "
                f"{os.fstat(f.fileno()).st_size} now (truncated during the load? replace bundles by "
                "writing a new file and renaming it)"
            )
        out += chunk
    return bytes(out)


def _read_header(f, p: Path, size: int) -> bytes:
    if size < 8:
        raise BundleError(f"{_show(p)}: file is {size} bytes, too short for a safetensors header")
    (n,) = struct.unpack("<Q", _read_exact(f, p, 8, size))
    if n > MAX_HEADER_BYTES:
        raise BundleError(
            f"{_show(p)}: header length {n} is absurd (limit {MAX_HEADER_BYTES} bytes, as safetensors)"
        )
    if 8 + n > size:
        raise BundleError(
            f"{_show(p)}: header length {n} does not fit a {size}-byte file (truncated or corrupt)"
        )
    return _read_exact(f, p, n, size)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a bundle, checked to be a spaedge bundle of this
    format version (the header only: the content hash is not checked)."""
    p = Path(path)
    f, size = _open(p)
    with f:
        header = _read_header(f, p, size)
    return _check_metadata(p, _parse_header(p, header))


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


def _parse_header(p: Path, header: bytes) -> dict:
    try:
        doc = json.loads(header.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        raise BundleError(
            f"{_show(p)}: header has the key {str(e)!r} twice (duplicate tensor or metadata name)"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{_show(p)}: header is not valid JSON ({e})") from None
    except RecursionError:
        raise BundleError(f"{_show(p)}: header is not valid JSON (nested too deeply)") from None
    if not isinstance(doc, dict):
        raise BundleError(f"{_show(p)}: header is not a JSON object")
    return doc


def _check_metadata(p: Path, doc: dict) -> dict[str, str]:
    meta = doc.get("__metadata__")
    if not isinstance(meta, dict):
        raise BundleError(f"{_show(p)}: field '__metadata__' is missing: not a spaedge bundle")
    for k, v in meta.items():
        if not isinstance(v, str):
            raise BundleError(
                f"{_show(p)}: field {k!r} is a {type(v).__name__}; metadata values must be strings"
            )
        try:
            k.encode("utf-8"), v.encode("utf-8")
        except UnicodeEncodeError:
            raise BundleError(
                f"{_show(p)}: field {k!r} is not valid UTF-8 (a lone surrogate escape)"
            ) from None
    fmt = meta.get("format")
    if fmt not in ("spaedge-base", "spaedge-task"):
        raise BundleError(
            f"{_show(p)}: field 'format' is {fmt!r}, expected 'spaedge-base' or 'spaedge-task'"
        )
    version = meta.get("version")
    if version == "1":
        raise BundleError(
            f"{_show(p)}: field 'version' is '1': format version 1 is no longer read (its content hash "
            "does not cover the metadata); delete the file and repack it with this spaedge "
            "(`spaedge pack --retrain`, or re-run the packing that wrote it)"
        )
    if version == "2":
        raise BundleError(
            f"{_show(p)}: field 'version' is '2': format version 2 is no longer read (its task "
            "bundles do not store the adapter rank); delete the file and repack it with this "
            "spaedge (`spaedge pack --retrain`, or re-run the packing that wrote it)"
        )
    if version == "3":
        raise BundleError(
            f"{_show(p)}: field 'version' is '3': format version 3 is no longer read (its Pear "
            "bundles share adapters only between convs of equal kept channels); delete the file "
            "and repack it with this spaedge (`spaedge pack --retrain`, or re-run the packing "
            "that wrote it)"
        )
    if version not in (FORMAT_VERSION, INT8_FORMAT_VERSION):
        raise BundleError(
            f"{_show(p)}: field 'version' is {version!r}; this spaedge reads versions "
            f"{FORMAT_VERSION} (fp32) and {INT8_FORMAT_VERSION} (int8): repack the bundle with "
            "this version"
        )
    precision = precision_of(meta)
    if precision not in PRECISIONS:
        raise BundleError(
            f"{_show(p)}: field 'precision' is {precision!r}, expected 'int8' (or absent: fp32)"
        )
    if version == INT8_FORMAT_VERSION and precision != "int8":
        raise BundleError(
            f"{_show(p)}: field 'precision' is {precision!r} in a version {version} bundle; "
            f"version {version} is for int8 bundles (precision 'int8')"
        )
    if version == FORMAT_VERSION and precision != "fp32":
        raise BundleError(
            f"{_show(p)}: field 'precision' is {precision!r} in a version {version} bundle; "
            f"int8 bundles are version {INT8_FORMAT_VERSION}"
        )
    return meta


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_table(p: Path, doc: dict, data_size: int, precision: str) -> dict[str, dict]:
    """The tensor entries, checked as the C++ reader checks them (and int8
    tensors only in an int8 bundle)."""
    table = {}
    for name, e in doc.items():
        if name == "__metadata__":
            continue
        where = f"{_show(p)}: tensor {name!r}"
        if not name:
            raise BundleError(f"{_show(p)}: header has a tensor with an empty name")
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            raise BundleError(
                f"{where}: header entry must be an object of exactly dtype, shape, data_offsets"
            )
        dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
        if dtype not in _NP_DTYPES:
            raise BundleError(
                f"{where}: dtype {dtype!r} not allowed (spaedge bundles hold only F32, I32, U8 "
                "and, int8 bundles, I8)"
            )
        if dtype == "I8" and precision != "int8":
            raise BundleError(
                f"{where}: dtype 'I8' in a {precision} bundle (I8 tensors belong to int8 bundles)"
            )
        if not isinstance(shape, list) or len(shape) > 8 or not all(_is_count(d) for d in shape):
            raise BundleError(f"{where}: 'shape' must be a list of at most 8 non-negative integers")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_count(d) for d in offsets)
        ):
            raise BundleError(
                f"{where}: 'data_offsets' must be [begin, end], non-negative integers"
            )
        begin, end = offsets
        if not begin <= end <= data_size:
            raise BundleError(
                f"{where}: 'data_offsets' [{begin}, {end}] out of range: the data section has "
                f"{data_size} bytes"
            )
        if _NP_DTYPES[dtype].itemsize * int(np.prod(shape, dtype=object)) != end - begin:
            raise BundleError(
                f"{where}: 'shape' {shape} of {dtype} does not fill 'data_offsets' [{begin}, {end}]"
            )
        table[name] = e
    pos = 0
    for name, e in sorted(table.items(), key=lambda kv: tuple(kv[1]["data_offsets"])):
        begin, end = e["data_offsets"]
        if begin != pos:
            raise BundleError(
                f"{_show(p)}: tensor {name!r}: 'data_offsets' [{begin}, {end}] "
                f"{'overlap another tensor' if begin < pos else 'leave bytes that belong to no tensor'}"
            )
        pos = end
    if pos != data_size:
        raise BundleError(
            f"{_show(p)}: data section bytes [{pos}, {data_size}) belong to no tensor"
        )
    return table


def read_bundle(
    path: str | os.PathLike, verify: bool = True
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors (numpy) and metadata of a bundle; ``verify`` checks the content hash.

    Refuses, with a :class:`BundleError` naming the file and the field, what
    the C++ reader refuses in the container, an old format version, a content
    hash that does not match the metadata, tensor table and data, and (task
    bundles) bad labels or input metadata (:func:`check_task_metadata`)."""
    p = Path(path)
    f, size = _open(p)
    with f:
        header = _read_header(f, p, size)
        doc = _parse_header(p, header)
        meta = _check_metadata(p, doc)
        data_size = size - 8 - len(header)
        table = _check_table(p, doc, data_size, precision_of(meta))
        data = bytearray(_read_exact(f, p, data_size, size))
    if verify:
        actual = content_hash(meta, table, data)
        if actual != meta.get("content_hash"):
            raise BundleError(
                f"{_show(p)}: field 'content_hash' does not match the metadata, tensor table and data "
                f"(stored {meta.get('content_hash')!r}, computed {actual}): the file is corrupt or "
                "was edited after packing"
            )
    if meta["format"] == "spaedge-task":
        check_task_metadata(meta, _show(p))
    tensors = {}
    for name, e in table.items():
        begin, end = e["data_offsets"]
        dt = _NP_DTYPES[e["dtype"]]
        a = np.frombuffer(data, dtype=dt, count=(end - begin) // dt.itemsize, offset=begin).reshape(
            e["shape"]
        )
        # A tensor after a U8 tensor of odd length may be unaligned: copy it then (torch needs aligned data).
        tensors[name] = a.astype(dt.newbyteorder("="), copy=not a.flags.aligned)
    return tensors, meta


def check_task_metadata(meta: Mapping[str, str], where: str) -> None:
    """A task bundle's metadata checked by the runtime's own validator
    (:func:`spaedge.runtime.check_task_metadata`: labels, input, method,
    base_hash, info, rank, the families' metadata keys). Raises BundleError
    naming the field."""
    runtime.check_task_metadata(dict(meta), where)


def json_field(meta: Mapping[str, str], key: str, where: str):
    """Decode a JSON-valued metadata field with an error naming it."""
    if key not in meta:
        raise BundleError(f"{where}: field '{key}' is missing")
    try:
        return json.loads(meta[key], object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        raise BundleError(f"{where}: field '{key}' has the key {str(e)!r} twice") from None
    except json.JSONDecodeError as e:
        raise BundleError(f"{where}: field '{key}' is not valid JSON ({e})") from None
    except RecursionError:
        raise BundleError(f"{where}: field '{key}' is not valid JSON (nested too deeply)") from None
