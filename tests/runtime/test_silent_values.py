"""Values that cannot mean anything are refused, never answered (issue 18
items 5 and 11; docs/reliability.md, "Value bounds"): task bundles whose
floats exceed the bound, logits that overflow, masked inputs, and the
spaedge-run device CLI's labels, .npy headers and PGM samples. numpy only."""

from __future__ import annotations

import json
import subprocess

import _numpy_reference as ref  # noqa: E402
import numpy as np
import pytest
from test_runtime import _spaedge_run  # noqa: E402

from spaedge.runtime import BundleError, Runtime


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("values")
    rng = np.random.default_rng(5)
    graph, base, h = ref.toy_base(d, rng)
    t = ref.task_tensors(graph, rng, keep_frac=0.6, rank=2, method="splora", classes=5)
    ref.write(d / "a.safetensors", t, ref.task_meta(h, "alpha", 5, (3, 16, 16)))
    return {"dir": d, "graph": graph, "hash": h, "t": t, "base_path": d / "base.safetensors"}


def _x(n=2, seed=3):
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


def _task_with(toy, tmp_path, name, value, index=0, meta=None):
    t = {k: v.copy() for k, v in toy["t"].items()}
    t[name].reshape(-1)[index] = value
    p = tmp_path / "t.safetensors"
    ref.write(p, t, meta or ref.task_meta(toy["hash"], "alpha", 5, (3, 16, 16)))
    return p


def _lora(toy, side):
    return next(k for k in toy["t"] if k.endswith(f".lora_{side}"))


@pytest.mark.parametrize("side", ["a", "b"])
@pytest.mark.parametrize("value", [1e30, -1e30, 2e6])
def test_huge_adapter_factors_are_refused_at_load_naming_the_tensor(toy, tmp_path, side, value):
    name = _lora(toy, side)
    p = _task_with(toy, tmp_path, name, value, index=1)
    rt = Runtime(toy["base_path"], threads=1)
    with pytest.raises(BundleError, match=rf"tensor '{name}': element 1 is .*beyond the \+-1e6"):
        rt.load_task(p)
    assert rt.tasks == []


def test_a_huge_head_is_refused_and_the_bound_itself_loads(toy, tmp_path):
    p = _task_with(toy, tmp_path, "fc.weight", 3e38)
    with pytest.raises(BundleError, match="tensor 'fc.weight': element 0 is 3e\\+38"):
        Runtime(toy["base_path"], threads=1).load_task(p)
    p = _task_with(toy, tmp_path, "fc.weight", 1e6)  # the bound is inclusive
    rt = Runtime(toy["base_path"], threads=1)
    rt.load_task(p)
    assert np.isfinite(rt.run(_x())).all()


@pytest.mark.parametrize("mode", ["merged", "lowrank"])
def test_logits_that_overflow_raise_instead_of_returning_inf(toy, mode):
    rt = Runtime(toy["base_path"], threads=1)
    rt.load_task(toy["dir"] / "a.safetensors")
    rt.mode = mode
    x = _x()
    assert np.isfinite(rt.run(x)).all()
    x[1] = 3e38  # finite, so past the input check; the network cannot carry it
    with pytest.raises(ValueError, match=r"non-finite logit \((Inf|NaN)\) for image 1"):
        rt.run(x)


def test_a_masked_array_is_refused_or_its_data_used_when_nothing_is_masked(toy):
    rt = Runtime(toy["base_path"], threads=1)
    rt.load_task(toy["dir"] / "a.safetensors")
    x = _x()
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"masked array with 1 masked values.*filled"):
        rt.run(np.ma.masked_invalid(x))
    clean = _x()
    assert np.array_equal(rt.run(np.ma.masked_invalid(clean)), rt.run(clean))
    filled = np.ma.masked_invalid(x).filled(0.0)
    assert np.isfinite(rt.run(filled)).all()


# ---- spaedge-run ------------------------------------------------------------------------------


def _run_tool(*args):
    return subprocess.run(
        [_spaedge_run(), *map(str, args)], capture_output=True, text=True, timeout=60
    )


def test_spaedge_run_escapes_control_characters_in_labels(toy, tmp_path):
    meta = ref.task_meta(toy["hash"], "alpha", 5, (3, 16, 16))
    labels = ["\x1b[2J\x1b[Hclear", "bell\x07", "rtl\u202eevil", "new\nline", "ok é"]
    meta["labels"] = json.dumps(labels)
    p = tmp_path / "t.safetensors"
    ref.write(p, toy["t"], meta)
    np.save(tmp_path / "x.npy", _x())
    r = _run_tool(toy["base_path"], p, tmp_path / "x.npy", "--top", "5")
    assert r.returncode == 0, r.stderr
    for raw in ("\x1b", "\x07", "\u202e", "new\nline"):
        assert raw not in r.stdout
    for esc in ("\\x1b[2J\\x1b[Hclear", "bell\\x07", "rtl\\u202eevil", "new\\x0aline", "ok é"):
        assert esc in r.stdout


def _npy(header: str, data: bytes) -> bytes:
    h = header.encode("latin1")
    pad = (64 - (10 + len(h) + 1) % 64) % 64
    h = h + b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h + data


def test_spaedge_run_parses_the_npy_header_as_a_dict(toy, tmp_path):
    ints = np.arange(3 * 16 * 16, dtype="<i4").tobytes()
    decoy = (
        "{'x': \"'descr': '<f4'\", 'descr': '<i4', 'fortran_order': False, 'shape': (3, 16, 16), }"
    )
    (tmp_path / "decoy.npy").write_bytes(_npy(decoy, ints))
    r = _run_tool(toy["base_path"], toy["dir"] / "a.safetensors", tmp_path / "decoy.npy")
    assert r.returncode == 2 and "unexpected key 'x'" in r.stderr, r.stderr
    ordered = "{'shape': (3, 16, 16), 'fortran_order': False, 'descr': '<i4', }"
    (tmp_path / "ints.npy").write_bytes(_npy(ordered, ints))
    r = _run_tool(toy["base_path"], toy["dir"] / "a.safetensors", tmp_path / "ints.npy")
    assert r.returncode == 2 and "dtype is '<i4'" in r.stderr, r.stderr
    twice = "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (3, 16, 16), }"
    (tmp_path / "twice.npy").write_bytes(_npy(twice, _x(1)[0].tobytes()))
    r = _run_tool(toy["base_path"], toy["dir"] / "a.safetensors", tmp_path / "twice.npy")
    assert r.returncode == 2 and "key 'descr' twice" in r.stderr, r.stderr
    good = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 16, 16), }"
    (tmp_path / "good.npy").write_bytes(_npy(good, _x(1)[0].tobytes()))
    r = _run_tool(toy["base_path"], toy["dir"] / "a.safetensors", tmp_path / "good.npy")
    assert r.returncode == 0, r.stderr


def test_spaedge_run_refuses_pgm_samples_above_maxval(toy, tmp_path):
    img = np.full((16, 16, 3), 100, np.uint8)
    img[3, 4, 1] = 201
    (tmp_path / "x.ppm").write_bytes(b"P6 16 16 200\n" + img.tobytes())
    r = _run_tool(toy["base_path"], toy["dir"] / "a.safetensors", tmp_path / "x.ppm")
    assert r.returncode == 2 and "sample 157 is 201, above maxval 200" in r.stderr, r.stderr
    img[3, 4, 1] = 200
    (tmp_path / "x.ppm").write_bytes(b"P6 16 16 200\n" + img.tobytes())
    r = _run_tool(toy["base_path"], toy["dir"] / "a.safetensors", tmp_path / "x.ppm")
    assert r.returncode == 0, r.stderr
