"""``spaedge info`` reads bundles through the C++ runtime's reader, not a reader of its own.

Each hostile file gives one line naming the file (and the field), exit code 2,
never a traceback, a hang or unbounded memory; whatever is printed from a
file is escaped. The command runs as a user runs it (a subprocess), under an
address-space limit where the old reader would have read a file whole.

numpy + safetensors + the compiled extension only (no torch): the CLI parser
and the info command build on a device.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
from pathlib import Path

import _numpy_reference as ref  # noqa: E402
import pytest
from safetensors.numpy import load as st_load

from spaedge.runtime import BundleError

SEEDS = Path(__file__).parents[1] / "fuzz" / "seeds"
BASE = SEEDS / "base.safetensors"
TASK = SEEDS / "task_splora_pruned.safetensors"


def info(*args, cwd, limit_gb: float | None = None, timeout: float = 120):
    """`spaedge info ARGS` in a subprocess; `limit_gb` caps its address space."""

    def cap():
        n = int(limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (n, n))

    return subprocess.run(
        [sys.executable, "-m", "spaedge.cli", "info", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=cap if limit_gb else None,
    )


def one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spaedge info: error:"), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def parts(path: Path) -> tuple[dict, dict]:
    buf = path.read_bytes()
    (n,) = struct.unpack("<Q", buf[:8])
    return dict(st_load(buf)), dict(json.loads(buf[8 : 8 + n])["__metadata__"])


def task_with(tmp_path: Path, name: str, **meta) -> Path:
    """The seed task with metadata keys replaced (None: removed), correctly hashed."""
    t, m = parts(TASK)
    m = {k: v for k, v in m.items() if k not in ("content_hash", "version")}
    for k, v in meta.items():
        if v is None:
            m.pop(k, None)
        else:
            m[k] = v
    p = tmp_path / name
    p.write_bytes(ref.bundle_bytes(t, m))
    return p


def test_good_bundles(tmp_path):
    r = info(TASK, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "spaedge-task version 4" in r.stdout and "content hash checked" in r.stdout
    assert "labels  3: a, b, c" in r.stdout and "1x8x8, mean [0.5], std [0.25]" in r.stdout
    r = info(BASE, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "spaedge-base" in r.stdout and "fuzz-tiny" in r.stdout and "6 convs" in r.stdout
    r = info(BASE, "--no-verify", cwd=tmp_path)
    assert r.returncode == 0 and "NOT checked" in r.stdout


def test_inspect_bundle_api():
    from spaedge.runtime import inspect_bundle

    s = inspect_bundle(TASK)
    assert s["format"] == "spaedge-task" and s["hash_verified"] and s["labels"] == ["a", "b", "c"]
    assert (
        s["input"]["height"] == 8
        and s["info"] == {}
        and s["base_hash"] == inspect_bundle(BASE)["content_hash"]
    )
    assert ("fc.weight", "F32", (3, 4)) in [(n, d, tuple(sh)) for n, d, sh in s["tensors"]]
    b = inspect_bundle(BASE, verify=False)
    assert b["model"] == "fuzz-tiny" and b["convs"] == 6 and not b["hash_verified"]


def test_corrupt_data_is_one_line(tmp_path):
    buf = bytearray(TASK.read_bytes())
    buf[-3] ^= 1
    p = tmp_path / "flipped.safetensors"
    p.write_bytes(bytes(buf))
    one_line_error(info(p, cwd=tmp_path), str(p), "content_hash")


def test_deep_nesting(tmp_path):
    """A 100,000-deep 'info' (a RecursionError traceback before)."""
    p = task_with(tmp_path, "deep.safetensors", info="[" * 100_000 + "]" * 100_000)
    one_line_error(info(p, cwd=tmp_path), str(p), "metadata 'info'", "nesting deeper than")


@pytest.mark.parametrize(
    "meta,field",
    [
        ({"task": None}, "missing metadata key 'task'"),  # KeyError before
        ({"input": "[1]"}, "metadata 'input' must be a JSON object"),  # TypeError before
        ({"labels": "{}"}, "metadata 'labels' must be a non-empty JSON list"),  # TypeError before
        ({"info": "[1]"}, "metadata 'info' must be a JSON object"),  # AttributeError before
        (
            {"input": json.dumps({"channels": 1, "height": 8, "width": 8, "mean": [0.5]})},
            "missing field 'std'",
        ),
        ({"labels": json.dumps(["a", "b", "b"])}, "label 2 'b' repeats label 1"),
        ({"base_hash": "nope"}, "metadata 'base_hash' is not 64 lowercase hex digits"),
    ],
)
def test_missing_or_mistyped_metadata(tmp_path, meta, field):
    p = task_with(tmp_path, "bad.safetensors", **meta)
    one_line_error(info(p, cwd=tmp_path), str(p), field)


def test_base_with_a_bad_graph(tmp_path):
    t, m = parts(BASE)
    g = json.loads(m["graph"])
    g["nodes"][0]["stride"] = "two"
    m = {k: v for k, v in m.items() if k not in ("content_hash", "version")}
    m["graph"] = json.dumps(g)
    p = tmp_path / "graph.safetensors"
    p.write_bytes(ref.bundle_bytes(t, m))
    one_line_error(info(p, cwd=tmp_path), str(p), "metadata 'graph': node 'conv1': field 'stride'")


def test_fifo_is_refused_without_blocking(tmp_path):
    """A FIFO with no writer: opening it for reading blocked forever before."""
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    one_line_error(info(fifo, cwd=tmp_path, timeout=60), str(fifo), "is not a regular file")


def test_devices_and_directories(tmp_path):
    """/dev/zero was read without end (unbounded memory); here under a 2 GB cap."""
    one_line_error(info("/dev/zero", cwd=tmp_path, limit_gb=2), "/dev/zero: is not a regular file")
    one_line_error(info(tmp_path, cwd=tmp_path), "is a directory")
    one_line_error(info(tmp_path / "missing.safetensors", cwd=tmp_path), "no such bundle file")


def _huge(tmp_path: Path, gib: float, **meta) -> Path:
    """A sparse file: the seed task's metadata (keys replaced by `meta`) and one
    F32 tensor of `gib` GiB of zeros (the stored hash does not match)."""
    _, m = parts(TASK)
    m.update(meta)
    m["content_hash"] = "0" * 64
    size = int(gib * 2**30) // 4 * 4
    header = {
        "__metadata__": m,
        "fc.weight": {"dtype": "F32", "shape": [size // 4], "data_offsets": [0, size]},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    p = tmp_path / f"huge{gib}.safetensors"
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + size)
    return p


def test_huge_files_are_not_read_whole(tmp_path):
    """Files of 10 GiB (read whole before), in a 1 GiB address space: bad
    metadata is refused from the header alone; a 1.5 GiB data section is
    streamed through the hash in constant memory; --no-verify reads the header only."""
    p = _huge(tmp_path, 10, labels=json.dumps(["a", "a", "c"]))
    one_line_error(info(p, cwd=tmp_path, limit_gb=1), str(p), "label 1 'a' repeats label 0")
    p = _huge(tmp_path, 1.5)
    one_line_error(info(p, cwd=tmp_path, limit_gb=1), str(p), "metadata 'content_hash' mismatch")
    p = _huge(tmp_path, 10)
    r = info(p, "--no-verify", cwd=tmp_path, limit_gb=1)
    assert r.returncode == 0, r.stderr
    assert "10.0 GiB" in r.stdout and "NOT checked" in r.stdout


def test_control_characters_are_escaped(tmp_path):
    """Names carrying terminal escapes, newlines and bidi overrides are printed escaped."""
    evil = "\x1b[2J\x1b]0;owned\x07\r\nfake line\u202e"
    p = task_with(
        tmp_path,
        "evil.safetensors",
        task="t" + evil,
        method="m" + evil,
        labels=json.dumps(["a" + evil, "b\x9b31m", "c"]),
        info=json.dumps({"k" + evil: "v" + evil}),
    )
    r = info(p, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for c in ("\x1b", "\x07", "\r", "\x9b", "\u202e"):
        assert c not in out, repr(c)
    assert len(out.splitlines()) == 6 + 1  # header line, five rows, one info row
    assert "\\x1b[2J" in out and "\\u202e" in out
    # An error message quoting a name from the file is escaped the same way.
    q = task_with(tmp_path, "evil2.safetensors", labels=json.dumps(["x" + evil, "x" + evil, "c"]))
    line = one_line_error(info(q, cwd=tmp_path), str(q), "'labels'")
    assert "\x1b" not in line and "\\x1b" in line


def test_inspect_refuses_like_loading(tmp_path):
    from spaedge.runtime import inspect_bundle

    p = task_with(tmp_path, "dup.safetensors", labels=json.dumps(["a", "a", "c"]))
    with pytest.raises(BundleError, match="label 1 'a' repeats label 0"):
        inspect_bundle(p)
