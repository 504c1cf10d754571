"""Reader for the IDX format (MNIST, Fashion-MNIST), plain or gzip-compressed.

Layout (all integers big-endian): two zero bytes, one dtype code byte, one
byte giving the number of dimensions, one uint32 per dimension, then the data
in C order. We parse it ourselves with numpy so no dataset library is needed.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

__all__ = ["read_idx", "write_idx"]

# IDX type code -> big-endian numpy dtype.
_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: str | os.PathLike) -> bytes:
    from spaedge.paths import MAX_BUNDLE_BYTES, read_regular

    data = read_regular(path, "IDX file", MAX_BUNDLE_BYTES)  # a FIFO is refused, not waited on
    if data[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise ValueError(f"{os.fspath(path)}: corrupt gzip stream ({e})") from e
    return data


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzip detected by content) into a native-endian array."""
    data = _read_bytes(path)
    name = os.fspath(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{name}: not an IDX file (bad magic {data[:4].hex()!r})")
    code, ndim = data[2], data[3]
    if code not in _DTYPES:
        raise ValueError(f"{name}: unknown IDX dtype code 0x{code:02x}")
    if ndim == 0:
        raise ValueError(f"{name}: IDX file with zero dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{name}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = _DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{name}: IDX payload is {len(data) - header} bytes, "
            f"expected {expected} for shape {shape} of {dtype}"
        )
    arr = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> None:
    """Write an array as IDX (gzip if `compress`, default: path ends with .gz).

    Used by tests to build fixtures and handy for exporting small subsets.
    """
    array = np.asarray(array)
    matches = [
        (code, dt)
        for code, dt in _DTYPES.items()
        if dt.kind == array.dtype.kind and dt.itemsize == array.dtype.itemsize
    ]
    if not matches:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    code, dt = matches[0]
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError("IDX needs 1..255 dimensions")
    payload = (
        bytes([0, 0, code, array.ndim])
        + np.asarray(array.shape, ">u4").tobytes()
        + np.ascontiguousarray(array, dt).tobytes()
    )
    if compress is None:
        compress = os.fspath(path).endswith(".gz")
    if compress:
        payload = gzip.compress(payload, mtime=0)
    with open(path, "wb") as f:
        f.write(payload)
