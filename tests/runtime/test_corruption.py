"""Corruption matrix: every kind of damaged bundle is refused, never a crash.

Real bundles made by the toolchain (tests/fuzz/seeds, from
tests/fuzz/make_seeds.py) are truncated at every structural boundary,
bit-flipped, given absurd header lengths, wrong dtypes, out-of-range indices,
duplicate names, another base... and fed to
  - the C++ runtime (spaedge.runtime.Runtime / load_task): BundleError naming
    the file and the field, and the runtime keeps working afterwards;
  - the Python reader (spaedge.pack.format.read_bundle): BundleError naming the file.
Container cases that tests/cpp/test_bundle.cpp already covers on synthetic
files (each JSON/shape/offset rule) are not repeated here; this file checks
the same rules hold on real bundles and through both readers.

numpy + safetensors + the compiled extension only (no torch), so it also runs
under .ci/sanitize_python.sh against the ASan build.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import _numpy_reference as ref  # noqa: E402
import numpy as np
import pytest
from safetensors.numpy import load as st_load

import spaedge.runtime as runtime
from spaedge.pack.format import BundleError as PyBundleError  # noqa: E402
from spaedge.pack.format import read_bundle  # noqa: E402

Runtime, BundleError = runtime.Runtime, runtime.BundleError
SEEDS = Path(__file__).parents[1] / "fuzz" / "seeds"
BASE = SEEDS / "base.safetensors"
TASK = SEEDS / "task_splora_pruned.safetensors"
GOOD_INPUT = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 1, 8, 8)


def header_of(buf: bytes) -> tuple[int, dict]:
    (n,) = struct.unpack("<Q", buf[:8])
    return n, json.loads(buf[8 : 8 + n])


def boundaries(buf: bytes) -> list[tuple[str, int]]:
    """(label, length) cut points: inside the length field, inside the header,
    at and inside every tensor of the data section."""
    n, hdr = header_of(buf)
    data = 8 + n
    cuts = [("empty", 0)] + [(f"length_byte_{i}", i) for i in range(1, 8)]
    cuts += [
        ("header_start", 8),
        ("header_1", 9),
        ("header_mid", 8 + n // 2),
        ("header_end-1", data - 1),
        ("no_data", data),
    ]
    spans = sorted(tuple(v["data_offsets"]) for k, v in hdr.items() if k != "__metadata__")
    for b, e in spans:
        if b > 0:
            cuts.append((f"tensor_at_{b}", data + b))
        if e - b > 2:
            cuts.append((f"inside_tensor_{b}", data + b + 2))
    cuts.append(("last_byte", len(buf) - 1))
    seen, out = set(), []
    for label, at in cuts:
        if at not in seen and at < len(buf):
            seen.add(at)
            out.append((label, at))
    return out


def parts(path: Path) -> tuple[dict, dict]:
    buf = path.read_bytes()
    _, hdr = header_of(buf)
    return dict(st_load(buf)), dict(hdr["__metadata__"])


def rebuild(tensors: dict, meta: dict) -> bytes:
    """Bundle bytes with a correct content hash (the damage is semantic)."""
    meta = {k: v for k, v in meta.items() if k not in ("content_hash", "version")}
    return ref.bundle_bytes(tensors, meta)


@pytest.fixture(scope="module")
def rt():
    r = Runtime(BASE, threads=1)
    assert r.load_task(TASK) == "fuzz"  # the undamaged bundle loads and runs
    assert r.run(GOOD_INPUT).shape == (1, 3)
    return r


def refused_by_runtime(rt, path: Path, field: str | None = None) -> str:
    """load_task must raise BundleError naming the file (and the field); the runtime keeps its task."""
    before = rt.run(GOOD_INPUT)
    with pytest.raises(BundleError) as e:
        rt.load_task(path)
    msg = str(e.value)
    assert str(path) in msg, msg
    if field is not None:
        assert re.search(field, msg), msg
    assert rt.active_task == "fuzz" and rt.tasks == ["fuzz"]
    assert np.array_equal(rt.run(GOOD_INPUT), before)
    return msg


def refused_by_python(path: Path, field: str | None = None) -> str:
    with pytest.raises(PyBundleError) as e:
        read_bundle(path)
    msg = str(e.value)
    assert str(path) in msg, msg
    if field is not None:
        assert re.search(field, msg), msg
    return msg


# ---- truncation --------------------------------------------------------------------


@pytest.mark.parametrize("which", ["task", "base"])
def test_truncation_at_every_boundary(rt, tmp_path, which):
    good = (TASK if which == "task" else BASE).read_bytes()
    n, _ = header_of(good)
    cuts = boundaries(good)
    assert len(cuts) > 20
    for label, at in cuts:
        p = tmp_path / f"{which}_{label}.safetensors"
        p.write_bytes(good[:at])
        if at == 0:
            field = "empty file"
        elif at < 8:
            field = "shorter than the 8-byte"
        elif at < 8 + n:
            field = r"header length \d+ exceeds"
        else:
            field = r"tensor '[^']+': 'data_offsets' \[\d+, \d+\] out of range"
        if which == "task":
            refused_by_runtime(rt, p, field)
        else:
            with pytest.raises(BundleError, match=field) as e:
                Runtime(p, threads=1)
            assert str(p) in str(e.value)
        refused_by_python(p)


# ---- bit flips ---------------------------------------------------------------------------


def decoded_header(buf: bytes):
    """(metadata, tensor table) as JSON decodes them, or None if it does not."""
    try:
        n, hdr = header_of(buf)
    except Exception:  # noqa: BLE001 - any damage to the length or the JSON
        return None
    if not isinstance(hdr, dict):
        return None
    return hdr.get("__metadata__"), {k: v for k, v in hdr.items() if k != "__metadata__"}


def test_bit_flips_in_the_header(rt, tmp_path):
    """Every flip in the header is refused unless it leaves the decoded header
    exactly as it was (e.g. the case of a hex digit in a \\u escape): the
    content hash covers the metadata and the tensor table, so a flip in a
    label, a digit of 'input' or 'info' no longer loads."""
    good = TASK.read_bytes()
    n, _ = header_of(good)
    want = decoded_header(good)
    loaded_unchanged = refused = 0
    rng = np.random.default_rng(0)
    positions = sorted(
        set(range(0, 8)) | set(rng.choice(np.arange(8, 8 + n), 150, replace=False).tolist())
    )
    meta_start = good.index(b'"__metadata__"')
    meta_end = good.index(b"}", good.index(b'"version"'))
    positions += list(range(meta_start, meta_end, 3))  # and every third byte of the metadata
    for pos in positions:
        for bit in (0, 5):
            b = bytearray(good)
            b[pos] ^= 1 << bit
            p = tmp_path / f"hflip_{pos}_{bit}.safetensors"
            p.write_bytes(bytes(b))
            try:
                name = rt.load_task(p)
            except BundleError as e:
                assert str(p) in str(e)
                refused += 1
                continue
            assert decoded_header(bytes(b)) == want, (
                pos,
                bit,
                bytes(good[max(8, pos - 20) : pos + 20]),
            )
            loaded_unchanged += 1
            rt.unload(name)
            rt.load_task(TASK)
    assert rt.active_task == "fuzz"
    assert refused > 500
    print(f"header flips: {refused} refused, {loaded_unchanged} loaded (decoded header unchanged)")


def _edit_header(buf: bytes, old: bytes, new: bytes) -> bytes:
    """The same bytes with the first `old` in the header replaced by `new` (same
    length: nothing moves; the stored content hash is left as it was)."""
    assert len(old) == len(new)
    n, _ = header_of(buf)
    i = buf.index(old, 8, 8 + n)
    return buf[:i] + new + buf[i + len(old) :]


def _flip_after(buf: bytes, key: bytes) -> bytes:
    """The header with the hex digit after `key` changed (0 <-> 1, a <-> b...)."""
    n, _ = header_of(buf)
    i = buf.index(key, 8, 8 + n) + len(key)
    return buf[:i] + bytes([buf[i] ^ 1]) + buf[i + 1 :]


def _spaedge_run(*args):
    import shutil
    import subprocess

    exe = shutil.which("spaedge-run")
    assert exe is not None, "spaedge-run is not on PATH: `pip install` puts it next to python"
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=120)


def test_metadata_edits_are_refused(rt, tmp_path):
    """Edited metadata: one digit of the normalisation mean changed, and label 'b'
    made a second 'c' (same length, so nothing else moves): refused by the
    runtime, spaedge-run and read_bundle as a content hash mismatch."""
    good = TASK.read_bytes()
    np.save(tmp_path / "x.npy", GOOD_INPUT)
    cases = {
        "mean": _edit_header(good, b"[0.5]", b"[0.7]"),
        "label": _edit_header(good, b'\\"b\\"', b'\\"c\\"'),
        "base_hash": _flip_after(good, b'"base_hash":"'),
        "method": _edit_header(good, b'"method":"splora"', b'"method":"spLora"'),
    }
    for name, buf in cases.items():
        p = tmp_path / f"edited_{name}.safetensors"
        p.write_bytes(buf)
        refused_by_runtime(rt, p, "metadata 'content_hash' mismatch")
        refused_by_python(p, "content_hash")
        r = _spaedge_run(BASE, p, tmp_path / "x.npy")
        assert r.returncode == 2 and str(p) in r.stderr and "content_hash" in r.stderr, (
            name,
            r.returncode,
            r.stderr,
        )


def test_tensor_table_edits_are_refused(rt, tmp_path):
    """Two tensors of one shape swapped (names exchanged, the same data section):
    the hash covers the table, so this is refused too."""
    good = TASK.read_bytes()
    n, hdr = header_of(good)
    a, b = "bn1.weight", "bn1.bias"
    assert hdr[a]["shape"] == hdr[b]["shape"]
    text = good[8 : 8 + n]
    text = text.replace(b'"bn1.weight":', b'"bn1.TMPXXX":').replace(
        b'"bn1.bias":', b'"bn1.weight":'
    )
    text = text.replace(b'"bn1.TMPXXX":', b'"bn1.bias":')
    assert len(text) == n and text != good[8 : 8 + n]
    p = tmp_path / "swapped.safetensors"
    p.write_bytes(good[:8] + text + good[8 + n :])
    refused_by_runtime(rt, p, "metadata 'content_hash' mismatch")
    refused_by_python(p, "content_hash")


def test_base_graph_edit_is_refused(tmp_path):
    """Edited base metadata: conv1's stride changed from 1 to 2 in the graph
    (metadata) keeps the data section; the base is refused, not loaded with
    the same base_hash."""
    good = BASE.read_bytes()
    for name, old, new in [
        ("stride", b'\\"stride\\": 1', b'\\"stride\\": 2'),
        ("config", b'\\"widths\\": [4, 8]', b'\\"widths\\": [4, 9]'),
        ("model", b'"model":"fuzz-tiny"', b'"model":"fuzz-tinY"'),
    ]:
        p = tmp_path / f"base_{name}.safetensors"
        p.write_bytes(_edit_header(good, old, new))
        with pytest.raises(
            BundleError, match=re.escape(str(p)) + ": metadata 'content_hash' mismatch"
        ):
            Runtime(p, threads=1)
        refused_by_python(p, "content_hash")
        np.save(tmp_path / "x.npy", GOOD_INPUT)
        r = _spaedge_run(p, TASK, tmp_path / "x.npy")
        assert r.returncode == 2 and "content_hash" in r.stderr, r.stderr


@pytest.mark.parametrize(
    "edit,field",
    [
        (
            lambda m: m.update(labels=json.dumps(["a", "c", "c"])),
            r"'labels': label 2 'c' repeats label 1",
        ),
        (lambda m: m.update(labels=json.dumps(["a", "", "c"])), r"'labels': label 1 is empty"),
        (
            lambda m: m.update(input=json.dumps({**json.loads(m["input"]), "std": [0.0]})),
            r"'input': std\[0\]",
        ),
        (
            lambda m: m.update(input=json.dumps({**json.loads(m["input"]), "std": [-0.25]})),
            r"'input': std\[0\]",
        ),
        (
            lambda m: m.update(input=json.dumps({**json.loads(m["input"]), "std": [1e39]})),
            r"'input': std\[0\]",
        ),
        (
            lambda m: m.update(
                input=json.dumps({**json.loads(m["input"]), "height": 8192, "width": 8192})
            ),
            r"'input': .*'?height'? must be an integer in \[1, 4096\]",
        ),
    ],
)
def test_bad_labels_and_input_repacked_with_a_right_hash(rt, tmp_path, edit, field):
    """Damaged labels and input, repacked: the same damage packed with a correct hash is
    refused by both readers, naming the field; an 8192x8192 input is refused
    before anything is allocated (it reserved 9.4 GB of arena before)."""
    t, m = parts(TASK)
    edit(m)
    p = tmp_path / "repacked.safetensors"
    p.write_bytes(rebuild(t, m))
    refused_by_runtime(rt, p, field)
    refused_by_python(p, field)


def test_nan_std_is_refused_by_python(tmp_path):
    """Python's JSON reads NaN and Infinity; the reader checks task metadata with
    the runtime's own validator, whose JSON parser refuses them outright."""
    t, m = parts(TASK)
    for bad in ("NaN", "Infinity", "-Infinity"):
        m["input"] = m["input"].replace('"std": [0.25]', f'"std": [{bad}]')
        p = tmp_path / "nanstd.safetensors"
        p.write_bytes(rebuild(t, m))
        refused_by_python(p, r"metadata 'input': invalid JSON")
        t, m = parts(TASK)


def test_bit_flips_in_the_data(rt, tmp_path):
    good = TASK.read_bytes()
    n, _ = header_of(good)
    data = 8 + n
    for pos in list(range(data, len(good), max(1, (len(good) - data) // 40))) + [len(good) - 1]:
        b = bytearray(good)
        b[pos] ^= 0x10
        p = tmp_path / f"dflip_{pos}.safetensors"
        p.write_bytes(bytes(b))
        refused_by_runtime(rt, p, "metadata 'content_hash' mismatch")
        refused_by_python(p, "content_hash")
    # And in the base: its hash mismatch is found at Runtime construction.
    b = bytearray(BASE.read_bytes())
    b[-3] ^= 1
    p = tmp_path / "base_flip.safetensors"
    p.write_bytes(bytes(b))
    with pytest.raises(BundleError, match=re.escape(str(p)) + ": metadata 'content_hash' mismatch"):
        Runtime(p, threads=1)
    refused_by_python(p, "content_hash")


# ---- absurd header lengths -----------------------------------------------------------------


@pytest.mark.parametrize("n", [2**64 - 1, 2**63, 2**32, 100 * 1024 * 1024 + 1, 100_000_001, 0, 1])
def test_absurd_header_length(rt, tmp_path, n):
    good = TASK.read_bytes()
    p = tmp_path / f"hl_{n}.safetensors"
    p.write_bytes(struct.pack("<Q", n) + good[8:])
    refused_by_runtime(rt, p, "header length")
    refused_by_python(p)


def test_header_cap_is_the_safetensors_one(rt, tmp_path):
    """The header length cap: one, safetensors' 100,000,000 bytes, in C++ and
    Python (the C++ reader allowed 104,857,600). A sparse file just over it."""
    for n, field in [
        (100_000_001, "header length 100000001 is absurd \\(limit 100000000 bytes"),
        (100_000_000, "header"),
    ]:
        p = tmp_path / f"cap_{n}.safetensors"
        with open(p, "wb") as f:
            f.write(struct.pack("<Q", n) + b"{")
            f.truncate(n + 64)
        msg = refused_by_runtime(rt, p, field)
        if n == 100_000_000:
            assert "absurd" not in msg, msg  # read and refused as JSON, not for its length
        py = refused_by_python(p, field)
        if n == 100_000_000:
            assert "absurd" not in py, py
        p.unlink()


# ---- dtypes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype,elem",
    [
        ("F16", 2),
        ("BF16", 2),
        ("F64", 8),
        ("I64", 8),
        ("I8", 1),
        ("BOOL", 1),
        ("I16", 2),
        ("F8_E4M3", 1),
    ],
)
def test_container_dtypes_other_than_f32_i32_u8(rt, tmp_path, dtype, elem):
    good = TASK.read_bytes()

    def edit(h):
        t = h["fc.bias"]
        t["dtype"] = dtype
        t["shape"] = [(t["data_offsets"][1] - t["data_offsets"][0]) // elem]  # sizes still add up
        return h

    p = tmp_path / f"dtype_{dtype}.safetensors"
    p.write_bytes(ref.rewrite_header(good, edit))
    # I8 is an int8 bundle's dtype (format version 5): refused in this fp32 one
    why = "in a fp32 bundle" if dtype == "I8" else "not allowed"
    refused_by_runtime(rt, p, f"tensor 'fc.bias': dtype '{dtype}' {why}")
    refused_by_python(p)


@pytest.mark.parametrize(
    "tensor,new",
    [("fc.weight", np.int32), ("conv1.out_index", np.float32), ("layer1.0.conv1.lora_a", np.int32)],
)
def test_role_dtype_mismatch(rt, tmp_path, tensor, new):
    t, m = parts(TASK)
    t[tensor] = t[tensor].astype(new)
    p = tmp_path / "role_dtype.safetensors"
    p.write_bytes(rebuild(t, m))
    refused_by_runtime(rt, p, f"tensor '{re.escape(tensor)}': dtype is")


# ---- indices -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tensor,value,field",
    [
        ("conv1.out_index", 4, "index 4 out of range for 4 output channels"),
        ("conv1.out_index", -1, "index -1 out of range"),
        ("layer2.0.conv1.out_index", 2**31 - 1, "index 2147483647 out of range"),
        ("layer2.0.conv1.out_index", -(2**31), "index -2147483648 out of range"),
        ("layer1.0.conv1.in_index", 9, r"tensor 'layer1\.0\.conv1\.in_index'"),
    ],
)
def test_indices_out_of_range(rt, tmp_path, tensor, value, field):
    t, m = parts(TASK)
    a = t[tensor].copy()
    a[-1 if value >= 0 else 0] = value
    t[tensor] = a
    p = tmp_path / "index.safetensors"
    p.write_bytes(rebuild(t, m))
    refused_by_runtime(
        rt, p, f"tensor '{re.escape(tensor)}'.*" + field if "tensor" not in field else field
    )


def test_repeated_and_empty_indices(rt, tmp_path):
    t, m = parts(TASK)
    a = t["conv1.out_index"].copy()
    a[1] = a[0]
    t["conv1.out_index"] = a
    p = tmp_path / "repeat.safetensors"
    p.write_bytes(rebuild(t, m))
    refused_by_runtime(rt, p, r"tensor 'conv1\.out_index': not strictly increasing")
    t, m = parts(TASK)
    t["conv1.out_index"] = np.zeros(0, np.int32)
    p.write_bytes(rebuild(t, m))
    refused_by_runtime(rt, p, r"tensor 'conv1\.out_index'")


SPARSE_TASK = (
    SEEDS / "task_sparse_pruned.safetensors"
)  # sparse SPLoRA: lora_rank + lora_*_values/_mask
SPARSE_DELTA_TASK = (
    SEEDS / "task_sparse_sppara_pruned.safetensors"
)  # sparse SPPaRA: sparse_delta_values/_mask


def _sparse_edit(fn, path=SPARSE_TASK) -> bytes:
    t, m = parts(path)
    fn(t)
    return rebuild(t, m)


def _set(name, fn):
    """An edit replacing tensor `name` by fn(its array)."""
    return lambda t: t.__setitem__(name, fn(t[name]))


def _as_index(name):
    """An edit storing the mask `name` as the I32 positions it replaced (…_index)."""

    def edit(t):
        mask = t.pop(name)
        t[name[: -len("_mask")] + "_index"] = np.flatnonzero(
            np.unpackbits(mask, bitorder="little")
        ).astype(np.int32)

    return edit


def _bump_bit(name, value_name):
    """An edit setting one more (in-range) bit of mask `name` than `value_name` has values."""

    def edit(t):
        bits = np.unpackbits(t[name], bitorder="little")
        bits[np.flatnonzero(bits == 0)[0]] = 1
        t[name] = np.packbits(bits, bitorder="little")

    return edit


A, B, D = "layer1.0.conv1.lora_a", "layer2.0.conv2.lora_b", "layer2.0.conv2.sparse_delta"
# (seed, edit, message): each refused by the C++ runtime and the Python reader
# (load_task_model) with the same message, naming the tensor.
MASK_DAMAGE = {
    "mask_long": (
        SPARSE_TASK,
        _set(A + "_mask", lambda m: np.append(m, np.uint8(0))),
        r"tensor 'layer1\.0\.conv1\.lora_a_mask': shape \[2\], expected \[1\] \(one bit per entry of the "
        r"\[2, 3\] factor A, 6 entries, in bytes rounded up\)",
    ),
    "mask_empty": (
        SPARSE_TASK,
        _set(B + "_mask", lambda m: m[:0]),
        r"tensor 'layer2\.0\.conv2\.lora_b_mask': shape \[0\], expected \[\d+\]",
    ),
    "mask_padding": (
        SPARSE_TASK,
        _set(A + "_mask", lambda m: m | np.uint8(0x80)),
        r"tensor 'layer1\.0\.conv1\.lora_a_mask': padding bits after position 5 are set \(last byte "
        r"\d+\): they must be zero",
    ),
    "mask_popcount": (
        SPARSE_TASK,
        _bump_bit(B + "_mask", B + "_values"),
        r"tensor 'layer2\.0\.conv2\.lora_b_mask': has 3 set bits but 'layer2\.0\.conv2\.lora_b_values' "
        r"has 2 values \(one value per set bit\)",
    ),
    "values_short": (
        SPARSE_TASK,
        _set(A + "_values", lambda v: v[:-1]),
        r"tensor 'layer1\.0\.conv1\.lora_a_mask': has 3 set bits but 'layer1\.0\.conv1\.lora_a_values' "
        r"has 2 values",
    ),
    "mask_dtype": (
        SPARSE_TASK,
        _set(A + "_mask", lambda m: m.astype(np.int32)),
        r"tensor 'layer1\.0\.conv1\.lora_a_mask': dtype is I32, expected U8",
    ),
    "mask_missing": (
        SPARSE_TASK,
        lambda t: t.pop(B + "_mask"),
        r"missing tensor 'layer2\.0\.conv2\.lora_b_mask' \(present iff 'layer2\.0\.conv2\.lora_b_values' "
        r"is\)",
    ),
    "values_missing": (
        SPARSE_TASK,
        lambda t: t.pop(A + "_values"),
        r"missing tensor 'layer1\.0\.conv1\.lora_a_values' \(present iff "
        r"'layer1\.0\.conv1\.lora_a_mask' is\)",
    ),
    "index_form": (
        SPARSE_TASK,
        _as_index(A + "_mask"),
        r"tensor 'layer1\.0\.conv1\.lora_a_index': sparse positions are stored as U8 bitmasks "
        r"\('layer1\.0\.conv1\.lora_a_mask'\), no longer as I32 indices: repack the bundle",
    ),
    "rank_zero": (
        SPARSE_TASK,
        lambda t: t.__setitem__("layer2.0.conv2.lora_rank", np.array([0], np.int32)),
        r"tensor 'layer2\.0\.conv2\.lora_rank': rank 0 must be in \[1, 65536\]",
    ),
    "delta_mask_long": (
        SPARSE_DELTA_TASK,
        _set(D + "_mask", lambda m: np.append(m, np.uint8(0))),
        r"tensor 'layer2\.0\.conv2\.sparse_delta_mask': shape \[28\], expected \[27\] \(one bit per "
        r"entry of the \[4, 6, 3, 3\] task weight, 216 entries, in bytes rounded up\)",
    ),
    "delta_popcount": (
        SPARSE_DELTA_TASK,
        _bump_bit(D + "_mask", D + "_values"),
        r"tensor 'layer2\.0\.conv2\.sparse_delta_mask': has 9 set bits but "
        r"'layer2\.0\.conv2\.sparse_delta_values' has 8 values",
    ),
    "delta_padding": (
        SPARSE_DELTA_TASK,
        _set("conv1.sparse_delta_mask", lambda m: m | np.uint8(0x80)),
        r"tensor 'conv1\.sparse_delta_mask': padding bits after position 26 are set",
    ),
    "delta_dtype": (
        SPARSE_DELTA_TASK,
        _set(D + "_mask", lambda m: m.astype(np.float32)),
        r"tensor 'layer2\.0\.conv2\.sparse_delta_mask': dtype is F32, expected U8",
    ),
    "delta_mask_missing": (
        SPARSE_DELTA_TASK,
        lambda t: t.pop(D + "_mask"),
        r"missing tensor 'layer2\.0\.conv2\.sparse_delta_mask' \(present iff "
        r"'layer2\.0\.conv2\.sparse_delta_values' is\)",
    ),
    "delta_values_missing": (
        SPARSE_DELTA_TASK,
        lambda t: t.pop(D + "_values"),
        r"missing tensor 'layer2\.0\.conv2\.sparse_delta_values' \(present iff "
        r"'layer2\.0\.conv2\.sparse_delta_mask' is\)",
    ),
    "delta_index_form": (
        SPARSE_DELTA_TASK,
        _as_index(D + "_mask"),
        r"tensor 'layer2\.0\.conv2\.sparse_delta_index': sparse positions are stored as U8 "
        r"bitmasks \('layer2\.0\.conv2\.sparse_delta_mask'\)",
    ),
}


@pytest.mark.parametrize("case", list(MASK_DAMAGE))
def test_sparse_masks_are_checked(rt, tmp_path, case):
    """The toolchain's sparse bundles run as PyTorch does (tests/adapters); a
    damaged bitmask or its values (with a right hash) is refused by the runtime,
    naming the tensor."""
    seed, edit, field = MASK_DAMAGE[case]
    assert Runtime(BASE, threads=1).load_task(seed) == "fuzz"
    p = tmp_path / f"{case}.safetensors"
    p.write_bytes(_sparse_edit(edit, seed))
    refused_by_runtime(rt, p, field)


@pytest.mark.parametrize("case", list(MASK_DAMAGE))
def test_sparse_masks_are_checked_by_the_torch_reader(tmp_path, case):
    """The same damage refused by the Python reader (load_task_model) with the
    runtime's message; the undamaged seed loads."""
    from spaedge.pack.bundle import load_task_model

    seed, edit, field = MASK_DAMAGE[case]
    load_task_model(BASE, seed)
    p = tmp_path / f"{case}.safetensors"
    p.write_bytes(_sparse_edit(edit, seed))
    read_bundle(p)  # a sound container: the damage is in what the tensors say
    with pytest.raises(PyBundleError) as e:
        load_task_model(BASE, p)
    msg = str(e.value)
    assert str(p) in msg and re.search(field, msg), msg


@pytest.mark.parametrize(
    "edit,field",
    [
        (
            lambda t: t.pop("layer2.0.conv2.lora_rank"),
            r"missing tensor 'layer2\.0\.conv2\.lora_rank'",
        ),
        (
            lambda t: t.update(
                {
                    "layer2.0.conv2.lora_a": np.zeros((2, 7), np.float32),
                    "layer2.0.conv2.lora_b": np.zeros((3, 2), np.float32),
                }
            ),
            r"tensor 'layer2\.0\.conv2\.lora_a_values': conv 'layer2\.0\.conv2' also has dense",
        ),
    ],
)
def test_sparse_factors_are_checked(rt, tmp_path, edit, field):
    """Rules of sparse factors besides their masks, refused by the runtime naming the tensor."""
    p = tmp_path / "sparse.safetensors"
    p.write_bytes(_sparse_edit(edit))
    refused_by_runtime(rt, p, field)


# ---- duplicate names ---------------------------------------------------------------------


def _with_duplicate(good: bytes, name: str, same_region: bool) -> bytes:
    """Header text with tensor `name` listed twice (JSON objects cannot say this
    through json.dumps, so the text is edited)."""
    n, hdr = header_of(good)
    text = good[8 : 8 + n].rstrip(b" ").decode()
    entry = hdr[name]
    dup = dict(entry)
    if not same_region:
        other = next(
            v
            for k, v in hdr.items()
            if k not in ("__metadata__", name) and v["shape"] == entry["shape"]
        )
        dup["data_offsets"] = other["data_offsets"]
    text = text[:-1] + "," + json.dumps(name) + ":" + json.dumps(dup, separators=(",", ":")) + "}"
    raw = text.encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + good[8 + n :]


@pytest.mark.parametrize("same_region", [True, False])
def test_duplicate_tensor_names(rt, tmp_path, same_region):
    p = tmp_path / "dup.safetensors"
    p.write_bytes(_with_duplicate(TASK.read_bytes(), "layer2.0.bn1.bias", same_region))
    refused_by_runtime(rt, p, r"header.*duplicate key \"layer2\.0\.bn1\.bias\"")
    refused_by_python(p, r"layer2\.0\.bn1\.bias")


def test_duplicate_metadata_keys(rt, tmp_path):
    good = TASK.read_bytes()
    n, _ = header_of(good)
    text = good[8 : 8 + n].decode()
    text = text.replace('"__metadata__":{', '"__metadata__":{"task":"evil",', 1)
    raw = text.rstrip(" ").encode()
    raw += b" " * (-len(raw) % 8)
    p = tmp_path / "dupmeta.safetensors"
    p.write_bytes(struct.pack("<Q", len(raw)) + raw + good[8 + n :])
    refused_by_runtime(rt, p, 'duplicate key "task"')
    refused_by_python(p, "task")


# ---- another base, wrong kinds of file --------------------------------------------------------


def test_task_for_another_base(rt, tmp_path):
    t, m = parts(BASE)
    w = t["conv1.weight"].copy()
    w.flat[0] += 1.0
    t["conv1.weight"] = w
    other = tmp_path / "other_base.safetensors"
    other.write_bytes(rebuild(t, m))
    rt2 = Runtime(other, threads=1)
    assert rt2.base_hash != rt.base_hash
    with pytest.raises(
        BundleError,
        match=f"was made for base {rt.base_hash}, but the loaded base is {rt2.base_hash}",
    ) as e:
        rt2.load_task(TASK)
    assert str(TASK) in str(e.value) and rt2.tasks == []
    # A task naming a base that does not exist at all.
    t, m = parts(TASK)
    m["base_hash"] = "f" * 64
    p = tmp_path / "nobase.safetensors"
    p.write_bytes(rebuild(t, m))
    refused_by_runtime(rt, p, "was made for base f{64}")


def test_base_given_as_task_and_task_as_base(rt, tmp_path):
    refused_by_runtime(rt, BASE, "is a spaedge-base bundle, expected a spaedge-task bundle")
    with pytest.raises(
        BundleError, match="is a spaedge-task bundle, expected a spaedge-base bundle"
    ):
        Runtime(TASK, threads=1)


def test_empty_file_directory_missing(rt, tmp_path):
    e = tmp_path / "empty.safetensors"
    e.write_bytes(b"")
    refused_by_runtime(rt, e, "empty file")
    refused_by_python(e)
    refused_by_runtime(rt, tmp_path, "is a directory")
    refused_by_python(tmp_path, "is a directory")
    refused_by_runtime(rt, tmp_path / "missing.safetensors", "cannot open")
    refused_by_python(tmp_path / "missing.safetensors")
    with pytest.raises(BundleError, match="is a directory"):
        Runtime(tmp_path, threads=1)
    with pytest.raises(BundleError, match="empty file"):
        Runtime(e, threads=1)


# ---- values that would poison the arithmetic --------------------------------------------------


@pytest.mark.parametrize(
    "tensor,value",
    [("fc.weight", np.nan), ("layer1.0.conv1.lora_b", np.inf), ("bn1.running_var", -np.inf)],
)
def test_non_finite_values(rt, tmp_path, tensor, value):
    t, m = parts(TASK)
    a = t[tensor].copy()
    a.flat[0] = value
    t[tensor] = a
    p = tmp_path / "nonfinite.safetensors"
    p.write_bytes(rebuild(t, m))
    refused_by_runtime(rt, p, f"tensor '{re.escape(tensor)}'")


@pytest.mark.parametrize(
    "edit,field",
    [
        (lambda i: i.update(std=[0.0]), r"metadata 'input': std\[0\]"),
        (lambda i: i.update(channels=3), r"metadata 'input'"),
        (lambda i: i.update(height=10**9), r"metadata 'input'"),
        (lambda i: i.pop("width"), r"metadata 'input': missing field 'width'"),
    ],
)
def test_bad_input_metadata(rt, tmp_path, edit, field):
    t, m = parts(TASK)
    inp = json.loads(m["input"])
    edit(inp)
    m["input"] = json.dumps(inp)
    p = tmp_path / "input.safetensors"
    p.write_bytes(rebuild(t, m))
    refused_by_runtime(rt, p, field)


# ---- files that change underneath ----------------------------------------------------------
# The runtime reads every bundle into memory of its own, checks it
# there and never reads the file again: a loaded base or task truncated or
# overwritten in place changes nothing. Each case does the file operation, then
# the call (no timing). Truncation ran in a child process: before this, it was
# a SIGBUS, which would have taken pytest down with it.

_CHILD = """
import os, sys
import numpy as np
from spaedge.runtime import Runtime
base, task, other_base, x_path, out, what = sys.argv[1:7]
x = np.load(x_path)
rt = Runtime(base, threads=2)
first = rt.load_task(task)
want = rt.run(x)
bh = rt.base_hash
if what == "truncate_base":
    os.truncate(base, 0)
elif what == "overwrite_base":
    with open(base, "r+b") as f:  # in place, the same inode: what `scp` onto the file does
        f.write(open(other_base, "rb").read())
elif what == "truncate_task":
    os.truncate(task, 10)
elif what == "overwrite_task":
    with open(task, "r+b") as f:
        f.write(b"\\xff" * 64)
for mode in ("merged", "lowrank", "merged"):
    rt.mode = mode  # re-applies the task from the base: a switch
    rt.switch(first)
    got = rt.run(x)
    assert np.array_equal(got, want), (mode, float(np.abs(got - want).max()))
assert rt.base_hash == bh
np.save(out, got)
print("same logits")
"""


@pytest.mark.parametrize(
    "what", ["truncate_base", "overwrite_base", "truncate_task", "overwrite_task"]
)
def test_loaded_files_changed_underneath(tmp_path, what):
    import shutil
    import subprocess
    import sys

    base, task = tmp_path / "base.safetensors", tmp_path / "task.safetensors"
    shutil.copy(BASE, base)
    shutil.copy(TASK, task)
    # Another base of exactly the same size: the same graph, other weights.
    t, m = parts(BASE)
    t = {k: (-2 * v).astype(np.float32) for k, v in t.items()}
    other = tmp_path / "other.safetensors"
    other.write_bytes(rebuild(t, m))
    assert other.stat().st_size == base.stat().st_size
    np.save(tmp_path / "x.npy", np.repeat(GOOD_INPUT, 3, axis=0))
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(base),
            str(task),
            str(other),
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
            what,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])  # -7 was SIGBUS
    assert "same logits" in r.stdout
    # And the logits are those of the bundles as they were.
    fresh = Runtime(BASE, threads=1)
    fresh.load_task(TASK)
    assert np.array_equal(np.load(tmp_path / "y.npy"), fresh.run(np.repeat(GOOD_INPUT, 3, axis=0)))
    # The changed base is another base (or no base): a new Runtime sees it.
    if what == "overwrite_base":
        assert Runtime(base, threads=1).base_hash != fresh.base_hash
        with pytest.raises(BundleError, match="was made for base"):
            Runtime(base, threads=1).load_task(TASK)
    if what == "truncate_base":
        with pytest.raises(BundleError, match="empty file"):
            Runtime(base, threads=1)


def test_replacing_by_rename_is_the_way_to_update(rt, tmp_path):
    """The documented way: write a new file and rename it over the old one. A
    loaded runtime keeps what it checked; the next load reads the new file."""
    import os
    import shutil

    task = tmp_path / "task.safetensors"
    shutil.copy(TASK, task)
    r = Runtime(BASE, threads=1)
    r.load_task(task)
    want = r.run(GOOD_INPUT)
    t, m = parts(TASK)
    t["fc.bias"] = (t["fc.bias"] + 1).astype(np.float32)
    tmp = tmp_path / "task.safetensors.tmp"
    tmp.write_bytes(rebuild(t, m))
    os.replace(tmp, task)
    r.switch("fuzz")
    assert np.array_equal(r.run(GOOD_INPUT), want)
    r.load_task(task)
    assert np.allclose(r.run(GOOD_INPUT), want + 1, atol=1e-5)


# ---- paths --------------------------------------------------------------------------------


def test_nul_byte_in_a_path_is_refused(rt, tmp_path):
    """A NUL byte in a path: it used to cut the path (the C++ side opened
    'base.safetensors' for 'base.safetensors\\0junk'). Refused, in both readers."""
    from spaedge.pack.format import read_metadata

    for p in (str(BASE) + "\0junk", str(TASK) + "\0"):
        with pytest.raises(BundleError, match="path contains a NUL byte"):
            Runtime(p, threads=1)
        with (
            pytest.raises(BundleError, match=re.escape(str(TASK)) + r".*path contains a NUL byte")
            if p.startswith(str(TASK))
            else pytest.raises(BundleError, match="NUL")
        ):
            rt.load_task(p)
        with pytest.raises(PyBundleError, match="path contains a NUL byte"):
            read_bundle(p)
        with pytest.raises(PyBundleError, match="path contains a NUL byte"):
            read_metadata(p)
    assert rt.tasks == ["fuzz"]


def test_path_that_is_not_utf8(rt):
    """A path that is not UTF-8 (bytes on Linux) is named, escaped, in a
    BundleError; the message could not be made a Python string before
    (UnicodeDecodeError instead of the error)."""
    with pytest.raises(BundleError, match=r"\\xff-missing\.safetensors: cannot open"):
        Runtime(b"/nonexistent/\xff-missing.safetensors", threads=1)
    with pytest.raises(BundleError, match=r"\\xff-missing\.safetensors: cannot open"):
        rt.load_task(b"/nonexistent/\xff-missing.safetensors")
    assert rt.tasks == ["fuzz"]


def test_spaedge_run_refuses_the_same_files(tmp_path):
    """The device CLI goes through the same reader: one line, nonzero exit, no crash."""
    import shutil
    import subprocess

    exe = shutil.which("spaedge-run")
    assert exe is not None, "spaedge-run is not on PATH: `pip install` puts it next to python"
    good = TASK.read_bytes()
    np.save(tmp_path / "x.npy", GOOD_INPUT)
    ok = subprocess.run(
        [exe, str(BASE), str(TASK), str(tmp_path / "x.npy")], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    for label, at in boundaries(good)[::3]:
        p = tmp_path / f"cli_{label}.safetensors"
        p.write_bytes(good[:at])
        r = subprocess.run(
            [exe, str(BASE), str(p), str(tmp_path / "x.npy")], capture_output=True, text=True
        )
        assert r.returncode not in (0,) and r.returncode > 0, (
            label,
            r.returncode,
            r.stderr,
        )  # < 0: a signal
        assert str(p) in r.stderr, r.stderr


# ---- SPLoPA: block coefficients and a shared prototype set ----------------------------------

SPLOPA = SEEDS / "task_splopa_pruned.safetensors"


def _splopa_edit(tensor, how):
    def edit(t, m):
        a = t[tensor].copy()
        if how == "nan":
            a.flat[0] = np.nan
        elif how == "inf":
            a.flat[-1] = np.inf
        elif how == "i32":
            a = a.astype(np.int32)
        elif how == "2d":
            a = a.reshape(a.shape[0], -1)
        elif how == "empty":
            a = a[:0]
        t[tensor] = a

    return edit


@pytest.mark.parametrize(
    "edit,field",
    [
        (
            _splopa_edit("splopa.model.u", "nan"),
            r"tensor 'splopa\.model\.u': element 0 is not finite",
        ),
        (
            _splopa_edit("layer2.0.conv2.splopa_coef", "inf"),
            r"tensor 'layer2\.0\.conv2\.splopa_coef': element \d+ is not",
        ),
        (_splopa_edit("splopa.model.v", "i32"), r"tensor 'splopa\.model\.v': dtype is I32"),
        (
            _splopa_edit("layer1.0.conv1.splopa_coef", "i32"),
            r"tensor 'layer1\.0\.conv1\.splopa_coef': dtype is I32",
        ),
        (
            _splopa_edit("layer1.0.conv1.splopa_coef", "2d"),
            r"tensor 'layer1\.0\.conv1\.splopa_coef': shape",
        ),
        (_splopa_edit("splopa.model.u", "empty"), r"tensor 'splopa\.model\.u': shape \[0, 4, 2\]"),
        (lambda t, m: m.pop("splopa_sets"), r"tensor '[^']+\.splopa_coef': has no prototype set"),
        (
            lambda t, m: m.update(splopa_sets='{"layer1.0.conv1": 7}'),
            r"metadata 'splopa_sets': entry 'layer1\.0\.conv1'",
        ),
        (lambda t, m: m.update(splopa_sets="[}"), r"metadata 'splopa_sets'"),
        (
            lambda t, m: t.update({"splopa.model.w": t["splopa.model.u"]}),
            r"tensor 'splopa\.model\.w': unknown tensor",
        ),
    ],
)
def test_damaged_splopa_bundles_are_refused(tmp_path, edit, field):
    """The SPLoPA seed loads; values, dtypes, shapes and the set mapping damaged
    (and hashed again) are refused naming the tensor or the field."""
    r = Runtime(BASE, threads=1)
    assert r.load_task(SPLOPA) == "fuzz" and r.run(GOOD_INPUT).shape == (1, 3)
    t, m = parts(SPLOPA)
    edit(t, m)
    p = tmp_path / "splopa.safetensors"
    p.write_bytes(rebuild(t, m))
    refused_by_runtime(r, p, field)
