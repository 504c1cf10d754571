"""The bundle format's content hash and the Python reader (spaedge.pack.format).

The canonical hash of format version 4 is computed three times, from
docs/format.md each: by the Python writer/reader, by the C++ reader, and by
the test writers (tests/_numpy_reference.py, tests/cpp/test_bundle_writer.h);
a worked example pins the number. numpy + safetensors only.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import _numpy_reference as ref  # noqa: E402
import numpy as np
import pytest

from spaedge.errors import BundleError
from spaedge.pack.format import (
    FORMAT_VERSION,
    MAX_HEADER_BYTES,
    content_hash,
    read_bundle,
    read_metadata,
    serialise,
    write_bundle,
)
from spaedge.runtime import Runtime, inspect_bundle

SEEDS = Path(__file__).parents[1] / "fuzz" / "seeds"

# docs/format.md, "Content hash": the worked example (also in tests/cpp/test_bundle.cpp).
VECTOR_META = {"format": "spaedge-task", "version": "4", "labels": '["caf\u00e9","7"]'}
VECTOR_TABLE = {
    "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
    "idx": {"dtype": "I32", "shape": [1], "data_offsets": [8, 12]},
}
VECTOR_DATA = np.array([1.0, -2.0], "<f4").tobytes() + np.array([7], "<i4").tobytes()
VECTOR_HASH = "8bcb20783895b8071011eadac298526a091ede4be5594ee26e9ec91c1a880215"


def test_worked_example():
    assert FORMAT_VERSION == "4" and MAX_HEADER_BYTES == 100_000_000
    assert content_hash(VECTOR_META, VECTOR_TABLE, VECTOR_DATA) == VECTOR_HASH
    # content_hash itself is not hashed; any other key or value is.
    assert (
        content_hash({**VECTOR_META, "content_hash": "x"}, VECTOR_TABLE, VECTOR_DATA) == VECTOR_HASH
    )
    assert content_hash({**VECTOR_META, "info": ""}, VECTOR_TABLE, VECTOR_DATA) != VECTOR_HASH
    swapped = {"w": {**VECTOR_TABLE["w"], "shape": [2, 1]}, "idx": VECTOR_TABLE["idx"]}
    assert content_hash(VECTOR_META, swapped, VECTOR_DATA) != VECTOR_HASH


def test_three_implementations_agree(tmp_path):
    """The writer's hash, the test reference's, the C++ reader's and inspect's."""
    rng = np.random.default_rng(0)
    tensors = {
        "b.\u00e9": rng.standard_normal(5).astype(np.float32),
        "a": np.arange(3, dtype=np.int32),
        "Z": np.zeros((0, 2), np.float32),
        "m": np.array([0x11, 0xFF, 0x80], np.uint8),
    }
    meta = {
        "format": "spaedge-base",
        "model": "m\u00fc",
        "graph": "{}",
        "\u00e9": "\U0001f600",
        "E": "",
    }
    payload, h = serialise(tensors, meta)
    assert ref.canonical_hash(payload) == h
    p = tmp_path / "b.safetensors"
    p.write_bytes(payload)
    t, m = read_bundle(p)
    assert m["content_hash"] == h and m["version"] == "4" and set(t) == set(tensors)
    assert np.array_equal(t["b.\u00e9"], tensors["b.\u00e9"]) and t["Z"].shape == (0, 2)
    assert t["m"].dtype == np.uint8 and np.array_equal(t["m"], tensors["m"])
    with pytest.raises(
        BundleError, match="metadata 'graph': field 'input'"
    ):  # the C++ reader got past the hash
        inspect_bundle(p)
    # A toy base: C++ and Python agree on its hash.
    rng = np.random.default_rng(1)
    graph = ref.toy_graph()
    h2 = ref.write_base(tmp_path / "toy.safetensors", graph, ref.base_tensors(graph, rng))
    assert Runtime(tmp_path / "toy.safetensors", threads=1).base_hash == h2
    assert read_bundle(tmp_path / "toy.safetensors")[1]["content_hash"] == h2
    assert inspect_bundle(tmp_path / "toy.safetensors")["content_hash"] == h2


def test_u8_tensors_one_byte_each_and_unaligned_neighbours(tmp_path):
    """U8 (sparse position masks) takes one byte per element, so a tensor after an
    odd-length one starts unaligned: both readers read it right."""
    table = {
        "m": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
        "w": {"dtype": "F32", "shape": [2], "data_offsets": [3, 11]},
    }
    data = bytes([0x11, 0xFF, 0x80]) + np.array([1.5, -2.0], "<f4").tobytes()
    meta = {"format": "spaedge-base", "version": "4", "model": "m", "graph": "{}"}

    def file(meta):
        text = json.dumps({"__metadata__": meta, **table}).encode()
        text += b" " * (-len(text) % 8)
        return struct.pack("<Q", len(text)) + text + data

    meta["content_hash"] = ref.canonical_hash(file(meta))
    p = tmp_path / "u8.safetensors"
    p.write_bytes(file(meta))
    t, _ = read_bundle(p)
    assert (
        t["m"].tolist() == [0x11, 0xFF, 0x80]
        and t["w"].tolist() == [1.5, -2.0]
        and t["w"].flags.aligned
    )
    with pytest.raises(
        BundleError, match="metadata 'graph': field 'input'"
    ):  # the C++ reader got past the hash
        inspect_bundle(p)
    table["m"]["shape"] = [12]  # 4 bytes each would fill the file: not U8
    p.write_bytes(file(meta))
    with pytest.raises(BundleError, match=r"tensor 'm': 'shape' \[12\] of U8 does not fill"):
        read_bundle(p, verify=False)


def test_written_bundles_are_byte_identical_and_version_4(tmp_path):
    t = {"x": np.ones(4, np.float32)}
    m = {"format": "spaedge-base", "model": "m", "graph": "{}", "version": "1"}
    h = write_bundle(tmp_path / "a.safetensors", t, m)
    write_bundle(tmp_path / "b.safetensors", t, m)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert read_metadata(tmp_path / "a.safetensors")["version"] == "4"
    assert read_bundle(tmp_path / "a.safetensors")[1]["content_hash"] == h


@pytest.mark.parametrize("old", ["1", "2", "3"])
def test_old_versions_are_refused_with_what_to_do(tmp_path, old):
    buf = (SEEDS / "task_splora_pruned.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", buf[:8])
    i = buf.index(b'"version":"4"', 8, 8 + n)
    p = tmp_path / f"v{old}.safetensors"
    p.write_bytes(buf[:i] + f'"version":"{old}"'.encode() + buf[i + 13 :])
    said = rf"version {old} is no longer read .*repack.*spaedge pack --retrain"
    for read in (read_bundle, read_metadata):
        with pytest.raises(BundleError, match=said):
            read(p)
    with pytest.raises(BundleError, match="format " + said):
        Runtime(SEEDS / "base.safetensors", threads=1).load_task(p)


def _seed_task(tmp_path, **meta) -> Path:
    buf = (SEEDS / "task_splora_pruned.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", buf[:8])
    from safetensors.numpy import load

    m = {
        k: v
        for k, v in json.loads(buf[8 : 8 + n])["__metadata__"].items()
        if k not in ("content_hash", "version")
    }
    m.update(meta)
    p = tmp_path / "t.safetensors"
    p.write_bytes(ref.bundle_bytes(dict(load(buf)), m))
    return p


@pytest.mark.parametrize(
    "meta,field",
    [
        ({"labels": "[" * 50_000 + "]" * 50_000}, "metadata 'labels': invalid JSON"),
        (
            {
                "input": '{"channels": 1, "channels": 1, "height": 8, "width": 8, "mean": [0.5], "std": [0.25]}'
            },
            "metadata 'input': invalid JSON .*duplicate key \"channels\"",
        ),
        (
            {"input": '{"channels": true, "height": 8, "width": 8, "mean": [0.5], "std": [0.25]}'},
            "'channels'",
        ),
        (
            {
                "input": '{"channels": 5, "height": 8, "width": 8, "mean": [0,0,0,0,0], "std": [1,1,1,1,1]}'
            },
            r"'channels' must be an integer in \[1, 4\]",
        ),
        (
            {"input": '{"channels": 1, "height": 8, "width": 8, "mean": [0.5], "std": [1e-50]}'},
            r"std\[0\]",
        ),
        ({"labels": '["a", "b"]'}, None),  # wrong count: only the C++ reader knows the classes
    ],
)
def test_python_reader_checks_task_metadata(tmp_path, meta, field):
    p = _seed_task(tmp_path, **meta)
    if field is None:
        read_bundle(p)
        return
    with pytest.raises(BundleError, match=field) as e:
        read_bundle(p)
    assert str(p) in str(e.value)


def test_lone_surrogates_are_refused(tmp_path):
    """JSON can spell a lone surrogate (\\ud800); it is not UTF-8, so it cannot be hashed."""
    p = tmp_path / "s.safetensors"
    good = ref.bundle_bytes(
        {"x": np.ones(1, np.float32)}, {"format": "spaedge-base", "model": "ab", "graph": "{}"}
    )
    (n,) = struct.unpack("<Q", good[:8])
    text = good[8 : 8 + n].replace(b'"model":"ab"', b'"model":"\\ud800"').rstrip(b" ")
    text += b" " * (-len(text) % 8)
    p.write_bytes(struct.pack("<Q", len(text)) + text + good[8 + n :])
    with pytest.raises(BundleError, match="not valid UTF-8"):
        read_bundle(p)
    with pytest.raises(BundleError, match="lone"):
        inspect_bundle(p)


def test_fifo_and_devices_do_not_block(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for read in (read_bundle, read_metadata):
        with pytest.raises(BundleError, match="is not a regular file"):
            read(fifo)
        with pytest.raises(BundleError, match="is not a regular file"):
            read("/dev/zero")
        with pytest.raises(BundleError, match="no such bundle file"):
            read(tmp_path / "missing")
        with pytest.raises(BundleError, match="is a directory"):
            read(tmp_path)


def test_truncated_while_read(tmp_path, monkeypatch):
    """A file that ends before its size said (truncated while being read) is
    refused; the size is taken once, then the file shrinks (made to happen at
    that point by wrapping the size lookup)."""
    import spaedge.pack.format as fmt

    p = tmp_path / "t.safetensors"
    p.write_bytes((SEEDS / "task_splora_pruned.safetensors").read_bytes())
    real = fmt._open

    def open_then_truncate(path):
        f, size = real(path)
        os.truncate(path, size - 100)
        return f, size

    monkeypatch.setattr(fmt, "_open", open_then_truncate)
    with pytest.raises(BundleError, match="file changed while being read"):
        read_bundle(p)
