"""spaedge.runtime (the C++ runtime's Python face) against a plain-numpy reference.

Needs numpy + safetensors + the compiled extension only: no torch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import _numpy_reference as ref  # noqa: E402
import numpy as np
import pytest

import spaedge.runtime as runtime

Runtime, BundleError = runtime.Runtime, runtime.BundleError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A toy base and two tasks on it: splora 16x16 and finetune 20x12 with task biases."""
    d = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    graph, base, h = ref.toy_base(d, rng)
    ta = ref.task_tensors(graph, rng, keep_frac=0.6, rank=2, method="splora", classes=5)
    ref.write(d / "a.safetensors", ta, ref.task_meta(h, "alpha", 5, (3, 16, 16)))
    tb = ref.task_tensors(
        graph,
        rng,
        keep_frac=0.5,
        method="finetune",
        classes=7,
        task_bias=("conv1", "l2.conv1", "mix"),
    )
    ref.write(
        d / "b.safetensors",
        tb,
        ref.task_meta(
            h, "beta", 7, (3, 20, 12), method="finetune", mean=[0.1, 0.2, 0.3], std=[0.5, 0.6, 0.7]
        ),
    )
    return {
        "dir": d,
        "graph": graph,
        "base": base,
        "hash": h,
        "a": ta,
        "b": tb,
        "base_path": d / "base.safetensors",
        "a_path": d / "a.safetensors",
        "b_path": d / "b.safetensors",
    }


def fresh(toy, threads=1, mode="merged"):
    return Runtime(toy["base_path"], threads=threads, mode=mode)


def inputs(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---- numerics ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["merged", "lowrank"])
def test_splora_task_matches_numpy_reference(toy, mode):
    rt = fresh(toy, mode=mode)
    assert rt.mode == mode
    assert rt.load_task(toy["a_path"]) == "alpha"
    x = inputs((3, 3, 16, 16))
    got = rt.run(x)
    want = ref.reference_logits(toy["graph"], toy["base"], toy["a"], x)
    assert got.shape == (3, 5) and got.dtype == np.float32
    assert ref.close(got, want), np.max(np.abs(got - want))


def test_base_with_unaligned_data_section(toy, tmp_path):
    """A base whose header is not padded puts its floats at odd file offsets;
    the runtime reads the data section into aligned memory of its own, so the
    switch reads it as floats in place all the same: same logits, bit for bit."""
    raw = Path(toy["base_path"]).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = raw[8 : 8 + n].rstrip(b" ")
    header += b" " * ((2 - (8 + len(header))) % 4)  # data section at 2 mod 4
    assert (8 + len(header)) % 4 == 2
    (tmp_path / "base.safetensors").write_bytes(
        struct.pack("<Q", len(header)) + header + raw[8 + n :]
    )
    x = inputs((2, 3, 16, 16))
    for mode in ("merged", "lowrank"):
        want = fresh(toy, mode=mode)
        want.load_task(toy["a_path"])
        got = Runtime(tmp_path / "base.safetensors", threads=1, mode=mode)
        got.load_task(toy["a_path"])
        assert np.array_equal(got.run(x), want.run(x))


def test_single_image_returns_one_row(toy):
    rt = fresh(toy)
    rt.load_task(toy["a_path"])
    x = inputs((3, 16, 16))
    got = rt.run(x)
    assert got.shape == (5,)
    assert ref.close(got, ref.reference_logits(toy["graph"], toy["base"], toy["a"], x[None])[0])


def test_finetune_task_with_biases_and_other_input_size(toy):
    rt = fresh(toy, threads=2)
    rt.load_task(toy["b_path"])
    x = inputs((2, 3, 20, 12), seed=5)
    got = rt.run(x)
    assert ref.close(got, ref.reference_logits(toy["graph"], toy["base"], toy["b"], x))


@pytest.mark.parametrize("mode", ["merged", "lowrank"])
def test_unfused_graph_shapes(tmp_path, mode):
    rng = np.random.default_rng(3)
    graph = ref.unfused_graph()
    base = ref.base_tensors(graph, rng)
    h = ref.write_base(tmp_path / "base.safetensors", graph, base)
    t = ref.task_tensors(graph, rng, keep_frac=0.7, rank=3, classes=4, task_bias=("c3",))
    ref.write(tmp_path / "t.safetensors", t, ref.task_meta(h, "u", 4, (2, 11, 9)))
    rt = Runtime(tmp_path / "base.safetensors", threads=1, mode=mode)
    rt.load_task(tmp_path / "t.safetensors")
    x = inputs((3, 2, 11, 9), seed=9)
    assert ref.close(rt.run(x), ref.reference_logits(graph, base, t, x))


def test_full_channels_no_adapter_is_plain_base(tmp_path):
    """Keeping every channel with no adapter gives exactly the base network."""
    rng = np.random.default_rng(4)
    graph = ref.toy_graph()
    base = ref.base_tensors(graph, rng)
    h = ref.write_base(tmp_path / "base.safetensors", graph, base)
    t = ref.task_tensors(graph, rng, keep_frac=1.0, method="none", classes=3)
    for k in [k for k in t if k.endswith(".out_index")]:
        assert len(t[k]) in (8, 12, 10)
    ref.write(tmp_path / "t.safetensors", t, ref.task_meta(h, "full", 3, (3, 9, 9), method="none"))
    rt = Runtime(tmp_path / "base.safetensors")
    rt.load_task(tmp_path / "t.safetensors")
    x = inputs((1, 3, 9, 9))
    assert ref.close(rt.run(x), ref.reference_logits(graph, base, t, x))


def test_mode_switch_keeps_results(toy):
    rt = fresh(toy, threads=2)
    rt.load_task(toy["a_path"])
    x = inputs((2, 3, 16, 16))
    want = ref.reference_logits(toy["graph"], toy["base"], toy["a"], x)
    for mode in ["lowrank", "merged", "lowrank"]:
        rt.mode = mode
        assert rt.mode == mode and rt.active_task == "alpha"
        assert ref.close(rt.run(x), want)
        rt.switch("alpha")
        assert ref.close(rt.run(x), want)
    with pytest.raises(ValueError, match="mode"):
        rt.mode = "fast"


def test_threads_do_not_change_results(toy):
    rt = fresh(toy, threads=1)
    rt.load_task(toy["a_path"])
    x = inputs((2, 3, 16, 16))
    one = rt.run(x)
    rt.threads = 2
    assert rt.threads == 2
    assert ref.close(rt.run(x), one)
    rt.threads = None
    assert rt.threads >= 1
    with pytest.raises(ValueError):
        rt.threads = -1


_ISA_CHILD = """
import json, sys
import numpy as np
from spaedge.runtime import Runtime
base, task, x_path, out, mode = sys.argv[1:6]
rt = Runtime(base, threads=2, mode=mode)
rt.load_task(task)
np.save(out, rt.run(np.load(x_path)))
print(json.dumps({"isa": rt.isa}))
"""


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512", "neon"])
@pytest.mark.parametrize("mode", ["merged", "lowrank"])
def test_every_forced_isa_matches_the_reference(toy, tmp_path, isa, mode):
    """SPAEDGE_ISA forces a kernel table once per process: each one this machine
    runs gives the numpy reference; one it cannot run falls back to scalar."""
    x = inputs((2, 3, 16, 16), seed=7)
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ, SPAEDGE_ISA=isa)
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            _ISA_CHILD,
            str(toy["base_path"]),
            str(toy["a_path"]),
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
            mode,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    # cwd: `python -c` puts it first on sys.path; from a checkout that would be
    # the source tree (no compiled module), not the installed package.
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["isa"] in (isa, "scalar"), info
    want = ref.reference_logits(toy["graph"], toy["base"], toy["a"], x)
    got = np.load(tmp_path / "y.npy")
    assert ref.close(got, want), np.max(np.abs(got - want))


# ---- tasks and switching -----------------------------------------------------------


def test_switching_gives_each_task_its_own_outputs(toy):
    rt = fresh(toy)
    rt.load_task(toy["a_path"])
    rt.load_task(toy["b_path"])
    assert rt.tasks == ["alpha", "beta"] and rt.active_task == "beta"
    xa, xb = inputs((2, 3, 16, 16), 11), inputs((2, 3, 20, 12), 12)
    ra = ref.reference_logits(toy["graph"], toy["base"], toy["a"], xa)
    rb = ref.reference_logits(toy["graph"], toy["base"], toy["b"], xb)
    assert ref.close(rt.run(xb), rb)
    for _ in range(3):
        ms = rt.switch("alpha")
        assert isinstance(ms, float) and ms >= 0
        assert rt.active_task == "alpha"
        assert ref.close(rt.run(xa), ra)
        with pytest.raises(ValueError, match=r"\(3, 16, 16\)"):
            rt.run(xb)  # beta's input size is wrong for alpha
        rt.switch("beta")
        assert ref.close(rt.run(xb), rb)


def test_task_info_and_facts(toy):
    rt = fresh(toy)
    assert rt.active_task is None
    with pytest.raises(RuntimeError, match="load_task"):
        rt.run(inputs((3, 16, 16)))
    rt.load_task(toy["b_path"])
    info = rt.task_info()
    assert info["name"] == "beta" and info["classes"] == 7 and len(info["labels"]) == 7
    assert info["input_shape"] == (3, 20, 12)
    assert (
        info["input"]["channels"] == 3
        and info["input"]["height"] == 20
        and info["input"]["width"] == 12
    )
    assert info["input"]["std"] == pytest.approx([0.5, 0.6, 0.7])
    assert info["mean"] == pytest.approx([0.1, 0.2, 0.3]) and info["std"] == pytest.approx(
        [0.5, 0.6, 0.7]
    )
    assert info["method"] == "finetune" and json.loads(info["info"]) == {"rank": 2}
    assert info["bundle_bytes"] == os.path.getsize(toy["b_path"])
    assert info["macs"] > 0 and info["params"] > 0
    assert rt.isa in ("scalar", "avx2", "avx512", "neon")
    assert rt.base_hash == toy["hash"] and rt.base_model == "toy"
    with pytest.raises(KeyError, match="gamma"):
        rt.switch("gamma")
    with pytest.raises(KeyError):
        rt.task_info("gamma")
    rt.unload("beta")
    assert rt.tasks == [] and rt.active_task is None


def test_reloading_a_task_replaces_it(toy, tmp_path):
    rt = fresh(toy)
    rt.load_task(toy["a_path"])
    rng = np.random.default_rng(77)
    t2 = ref.task_tensors(toy["graph"], rng, keep_frac=0.4, classes=5)
    ref.write(tmp_path / "a2.safetensors", t2, ref.task_meta(toy["hash"], "alpha", 5, (3, 16, 16)))
    assert rt.load_task(tmp_path / "a2.safetensors") == "alpha"
    assert rt.tasks == ["alpha"]
    x = inputs((1, 3, 16, 16))
    assert ref.close(rt.run(x), ref.reference_logits(toy["graph"], toy["base"], t2, x))


def test_failed_load_keeps_the_active_task(toy, tmp_path):
    rt = fresh(toy)
    rt.load_task(toy["a_path"])
    bad = bytearray(toy["b_path"].read_bytes())
    bad[-1] ^= 0x40
    (tmp_path / "bad.safetensors").write_bytes(bytes(bad))
    with pytest.raises(BundleError):
        rt.load_task(tmp_path / "bad.safetensors")
    assert rt.active_task == "alpha" and rt.tasks == ["alpha"]
    x = inputs((1, 3, 16, 16))
    assert ref.close(rt.run(x), ref.reference_logits(toy["graph"], toy["base"], toy["a"], x))


def test_concurrent_callers_are_serialised(toy):
    rt = fresh(toy)
    rt.load_task(toy["a_path"])
    rt.load_task(toy["b_path"])
    xa = inputs((1, 3, 16, 16), 2)
    ra = ref.reference_logits(toy["graph"], toy["base"], toy["a"], xa)
    errors = []

    def runner():
        try:
            for _ in range(30):
                rt.switch("alpha")
                rt.run(
                    xa
                )  # another thread may switch in between: then a clear error or alpha's result
        except (ValueError, BundleError) as e:  # shape mismatch after a concurrent switch
            if "16, 16" not in str(e) and "needs" not in str(e):
                errors.append(e)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    def switcher():
        for _ in range(30):
            rt.switch("beta")

    ts = [threading.Thread(target=runner), threading.Thread(target=switcher)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    rt.switch("alpha")
    assert ref.close(rt.run(xa), ra)


# ---- input validation ------------------------------------------------------------------


@pytest.fixture()
def rt_alpha(toy):
    rt = fresh(toy)
    rt.load_task(toy["a_path"])
    return rt


@pytest.mark.parametrize(
    "shape", [(16, 16, 3), (1, 16, 16, 3), (3, 16, 15), (2, 3, 16, 17), (4, 16, 16)]
)
def test_wrong_shape_is_a_value_error(rt_alpha, shape):
    with pytest.raises(
        ValueError, match=r"expected a float32 array of shape \(3, 16, 16\) or \(N, 3, 16, 16\)"
    ):
        rt_alpha.run(np.zeros(shape, np.float32))


def test_nhwc_gets_a_hint(rt_alpha):
    with pytest.raises(ValueError, match="NHWC"):
        rt_alpha.run(np.zeros((2, 16, 16, 3), np.float32))


@pytest.mark.parametrize("shape", [(16,), (3, 16 * 16), (1, 1, 3, 16, 16)])
def test_wrong_ndim_is_a_value_error(rt_alpha, shape):
    with pytest.raises(ValueError, match="-D shape"):
        rt_alpha.run(np.zeros(shape, np.float32))


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64, bool, np.complex64])
def test_non_float_dtypes_are_refused(rt_alpha, dtype):
    with pytest.raises(ValueError, match="dtype"):
        rt_alpha.run(np.zeros((3, 16, 16), dtype))


def test_uint8_points_to_normalize(rt_alpha):
    with pytest.raises(ValueError, match="normalize"):
        rt_alpha.run(np.zeros((3, 16, 16), np.uint8))


def test_float64_and_float16_are_converted(rt_alpha):
    x = inputs((2, 3, 16, 16))
    want = rt_alpha.run(x)
    assert np.array_equal(rt_alpha.run(x.astype(np.float64)), want)
    assert ref.close(
        rt_alpha.run(x.astype(np.float16)), rt_alpha.run(x.astype(np.float16).astype(np.float32))
    )


def test_non_contiguous_input(rt_alpha):
    x = inputs((4, 3, 16, 16))
    strided = np.asarray(
        np.transpose(np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1))), (0, 3, 1, 2))
    )
    assert not strided.flags.c_contiguous
    assert np.array_equal(rt_alpha.run(strided), rt_alpha.run(x))
    assert np.array_equal(rt_alpha.run(x[::2]), rt_alpha.run(np.ascontiguousarray(x[::2])))


def test_lists_are_accepted(rt_alpha):
    x = inputs((3, 16, 16))
    assert np.array_equal(rt_alpha.run(x.tolist()), rt_alpha.run(x))


def test_nan_input(rt_alpha):
    x = inputs((3, 16, 16))
    x[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        rt_alpha.run(x)
    # Allowed; the logits are unspecified (max and ReLU drop a NaN on x86 and
    # keep it on NEON), and a NaN that reaches them is refused, never returned.
    try:
        out = rt_alpha.run(x, check_finite=False)
    except BundleError as e:
        assert "non-finite logit" in str(e)
    else:
        assert out.shape == (5,) and np.isfinite(out).all()


def test_empty_batch(rt_alpha):
    assert rt_alpha.run(np.zeros((0, 3, 16, 16), np.float32)).shape == (0, 5)


def test_normalize(toy):
    rt = fresh(toy)
    rt.load_task(toy["b_path"])
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (20, 12, 3), dtype=np.uint8)  # HWC
    mean, std = np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.6, 0.7])
    want = ((img.astype(np.float64) / 255 - mean) / std).transpose(2, 0, 1)
    got = rt.normalize(img)
    assert got.shape == (3, 20, 12) and got.dtype == np.float32 and got.flags.c_contiguous
    assert np.allclose(got, want, atol=1e-5)
    assert np.allclose(rt.normalize(img.transpose(2, 0, 1)[None]), want[None], atol=1e-5)
    assert np.allclose(rt.normalize(img.astype(np.float32) / 255), want, atol=1e-5)
    assert rt.run(rt.normalize(img)).shape == (7,)
    assert rt.predict(rt.normalize(img), k=3)[0][0].startswith("beta-class")
    with pytest.raises(ValueError, match="resize"):
        rt.normalize(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        rt.normalize(np.zeros((20, 12, 3), np.int16))


# ---- bad bundles --------------------------------------------------------------------------


def test_bundle_error_is_the_shared_value_error():
    from spaedge.errors import BundleError as shared

    assert BundleError is shared and issubclass(BundleError, ValueError)


def _bad(tmp_path, name, buf):
    p = tmp_path / name
    p.write_bytes(buf)
    return p


def _task_bytes(toy, edit=None, meta_edit=None, hash_=None):
    t = dict(toy["a"])
    if edit:
        edit(t)
    meta = ref.task_meta(hash_ or toy["hash"], "alpha", 5, (3, 16, 16))
    if meta_edit:
        meta_edit(meta)
    return ref.bundle_bytes(t, meta)


@pytest.mark.parametrize(
    "case,pattern",
    [
        ("bitflip", "content_hash' mismatch"),
        ("truncated_data", r"out of range|truncated|exceeds"),
        ("truncated_header", "exceeds"),
        ("seven_bytes", "shorter than the 8-byte"),
        ("empty", "empty file"),
        ("absurd_header", "exceeds|absurd"),
        ("garbage_json", "invalid JSON"),
        (
            "index_out_of_range",
            r"tensor 'l1.conv1.out_index': index 99 out of range for 8 output channels",
        ),
        ("non_increasing", r"tensor 'conv1.out_index': not strictly increasing"),
        ("missing_tensor", r"missing tensor 'l2.bn1.running_var'"),
        ("unknown_tensor", r"tensor 'l1.conv1.extra': unknown tensor"),
        ("in_index_mismatch", r"tensor 'l1.conv1.in_index'"),
        ("lora_shape", r"tensor 'mix.lora_b': shape"),
        ("nan_weight", r"tensor 'fc.weight': element 3 is not finite"),
        ("labels_mismatch", r"metadata 'labels' has 4 labels"),
        ("missing_meta", r"missing metadata key 'input'"),
        ("bad_input_meta", r"metadata 'input': field 'height'"),
        (
            "version",
            r"metadata 'version' is '6', this runtime reads format versions 4 \(fp32\) and 5",
        ),
        ("version5_fp32", r"missing metadata key 'precision': version 5 is for int8 bundles"),
        ("version1", r"metadata 'version' is '1': format version 1 is no longer read .*repack"),
        ("version2", r"metadata 'version' is '2': format version 2 is no longer read .*repack"),
        ("version3", r"metadata 'version' is '3': format version 3 is no longer read .*repack"),
        ("base_as_task", r"is a spaedge-base bundle, expected a spaedge-task bundle"),
        ("wrong_base", r"was made for base 0{64}, but the loaded base is"),
        ("f64_dtype", r"dtype 'F64' not allowed"),
    ],
)
def test_corrupt_task_bundles_raise_bundle_error(toy, tmp_path, case, pattern):
    good = _task_bytes(toy)
    if case == "bitflip":
        b = bytearray(good)
        b[len(b) - 10] ^= 1
        buf = bytes(b)
    elif case == "truncated_data":
        buf = good[:-4]
    elif case == "truncated_header":
        buf = good[:40]
    elif case == "seven_bytes":
        buf = good[:7]
    elif case == "empty":
        buf = b""
    elif case == "absurd_header":
        buf = struct.pack("<Q", 1 << 60) + good[8:]
    elif case == "garbage_json":
        (n,) = struct.unpack("<Q", good[:8])
        buf = good[:8] + b"{" + b"x" * (n - 1) + good[8 + n :]
    elif case == "index_out_of_range":
        buf = _task_bytes(
            toy,
            lambda t: t.__setitem__(
                "l1.conv1.out_index", np.r_[t["l1.conv1.out_index"][:-1], 99].astype(np.int32)
            ),
        )
    elif case == "non_increasing":
        buf = _task_bytes(
            toy, lambda t: t.__setitem__("conv1.out_index", t["conv1.out_index"][::-1].copy())
        )
    elif case == "missing_tensor":
        buf = _task_bytes(toy, lambda t: t.pop("l2.bn1.running_var"))
    elif case == "unknown_tensor":
        buf = _task_bytes(toy, lambda t: t.__setitem__("l1.conv1.extra", np.zeros(3, np.float32)))
    elif case == "in_index_mismatch":

        def edit(t):
            idx = t["l1.conv1.in_index"]
            t["l1.conv1.in_index"] = (
                np.setdiff1d(np.arange(8), idx)[: len(idx)].astype(np.int32)
                if len(idx) <= 4
                else idx[1:].copy()
            )

        buf = _task_bytes(toy, edit)
    elif case == "lora_shape":
        buf = _task_bytes(toy, lambda t: t.__setitem__("mix.lora_b", np.zeros((2, 2), np.float32)))
    elif case == "nan_weight":

        def edit(t):
            w = t["fc.weight"].copy()
            w.flat[3] = np.nan
            t["fc.weight"] = w

        buf = _task_bytes(toy, edit)
    elif case == "labels_mismatch":
        buf = _task_bytes(
            toy, meta_edit=lambda m: m.__setitem__("labels", json.dumps(list("abcd")))
        )
    elif case == "missing_meta":
        buf = _task_bytes(toy, meta_edit=lambda m: m.pop("input"))
    elif case == "bad_input_meta":
        buf = _task_bytes(
            toy,
            meta_edit=lambda m: m.__setitem__(
                "input",
                json.dumps(
                    {"channels": 3, "height": -1, "width": 16, "mean": [0] * 3, "std": [1] * 3}
                ),
            ),
        )
    elif case == "version":
        buf = _task_bytes(toy, meta_edit=lambda m: m.__setitem__("version", "6"))
    elif case == "version5_fp32":
        buf = _task_bytes(toy, meta_edit=lambda m: m.__setitem__("version", "5"))
    elif case == "version1":
        buf = _task_bytes(toy, meta_edit=lambda m: m.__setitem__("version", "1"))
    elif case == "version2":
        buf = _task_bytes(toy, meta_edit=lambda m: m.__setitem__("version", "2"))
    elif case == "version3":
        buf = _task_bytes(toy, meta_edit=lambda m: m.__setitem__("version", "3"))
    elif case == "base_as_task":
        buf = toy["base_path"].read_bytes()
    elif case == "wrong_base":
        buf = _task_bytes(toy, hash_="0" * 64)
    elif case == "f64_dtype":
        buf = _task_bytes(toy, lambda t: t.__setitem__("fc.bias", t["fc.bias"].astype(np.float64)))
    else:
        raise AssertionError(case)
    p = _bad(tmp_path, f"{case}.safetensors", buf)
    rt = fresh(toy)
    with pytest.raises(BundleError, match=pattern) as e:
        rt.load_task(p)
    assert str(p) in str(e.value)
    assert rt.tasks == []


def test_input_size_limits(tmp_path):
    """Hostile input sizes: they are bounded before anything is allocated
    (docs/runtime.md): sides up to 4096, 1 to 4 channels, and at most 1 GiB of
    activations for the network at that size. A tiny base (one 1x1 conv to 16
    channels) and tasks of a kilobyte that would otherwise reserve gigabytes."""
    graph = {
        "input": "x",
        "input_channels": 3,
        "output": "logits",
        "nodes": [
            ref.conv("c", "x", 3, 16, 1, pad=0),
            ref.op("relu", "r", "c"),
            ref.op("gap", "g", "r"),
            ref.op("linear", "fc", "g"),
        ],
    }
    graph["nodes"][-1]["output"] = "logits"
    rng = np.random.default_rng(0)
    base = ref.base_tensors(graph, rng, conv_bias=())
    h = ref.write_base(tmp_path / "base.safetensors", graph, base)
    t = ref.task_tensors(graph, rng, keep_frac=1.0, method="none", classes=2)
    rt = Runtime(tmp_path / "base.safetensors", threads=1)
    for size, pattern in [
        ((3, 8192, 8192), r"metadata 'input': field 'height' must be an integer in \[1, 4096\]"),
        (
            (3, 4096, 4096),
            r"metadata 'input': a 3x4096x4096 input needs \d+ MiB of activations "
            r"in this network \(limit 1024 MiB\)",
        ),
    ]:
        p = tmp_path / f"t{size[1]}.safetensors"
        ref.write(p, t, ref.task_meta(h, "big", 2, size, method="none"))
        assert p.stat().st_size < 2000
        with pytest.raises(BundleError, match=pattern):
            rt.load_task(p)
        assert rt.tasks == []
    ref.write(
        tmp_path / "ok.safetensors", t, ref.task_meta(h, "ok", 2, (3, 1024, 1024), method="none")
    )
    rt.load_task(tmp_path / "ok.safetensors")
    assert rt.run(np.zeros((1, 3, 1024, 1024), np.float32)).shape == (1, 2)


def test_directory_and_missing_file(toy, tmp_path):
    rt = fresh(toy)
    with pytest.raises(BundleError, match="is a directory"):
        rt.load_task(tmp_path)
    with pytest.raises(BundleError, match="cannot open"):
        rt.load_task(tmp_path / "nope.safetensors")


def test_corrupt_base(toy, tmp_path):
    buf = bytearray(toy["base_path"].read_bytes())
    buf[-3] ^= 0x10
    with pytest.raises(BundleError, match="content_hash"):
        Runtime(_bad(tmp_path, "b1.safetensors", bytes(buf)))
    with pytest.raises(BundleError, match="expected a spaedge-base bundle"):
        Runtime(toy["a_path"])
    g = ref.toy_graph()
    g["nodes"][4]["inputs"] = ["later"]
    with pytest.raises(
        BundleError, match=r"input 'later' is not the graph input or the output of an earlier node"
    ):
        Runtime(
            _bad(
                tmp_path,
                "b2.safetensors",
                ref.bundle_bytes(
                    toy["base"], {"format": "spaedge-base", "model": "toy", "graph": json.dumps(g)}
                ),
            )
        )


# ---- spaedge-run ------------------------------------------------------------------------------


def _spaedge_run():
    env = os.environ.get("SPAEDGE_RUN")
    if env and Path(env).exists():
        return env
    for cand in (shutil.which("spaedge-run"), REPO / "build" / "spaedge-run"):
        if cand and Path(cand).exists():
            return str(cand)
    pytest.fail("spaedge-run not found: `pip install` puts it next to python (or set SPAEDGE_RUN)")


def test_spaedge_run_matches_runtime_top1(toy, tmp_path):
    exe = _spaedge_run()
    rt = fresh(toy)
    rt.load_task(toy["a_path"])
    x = inputs((3, 3, 16, 16), seed=21)
    np.save(tmp_path / "batch.npy", x)
    np.save(tmp_path / "one.npy", x[1])
    r = subprocess.run(
        [
            exe,
            str(toy["base_path"]),
            str(toy["a_path"]),
            str(tmp_path / "batch.npy"),
            str(tmp_path / "one.npy"),
            "--top",
            "2",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    firsts = [line.split()[1] for line in r.stdout.splitlines() if line.strip().startswith("1.")]
    labels = rt.task_info()["labels"]
    want = [labels[i] for i in np.argmax(rt.run(x), axis=1)] + [
        labels[int(np.argmax(rt.run(x[1])))]
    ]
    assert firsts == want
    assert sum(1 for line in r.stdout.splitlines() if line.strip().startswith("2.")) == 4


def test_spaedge_run_pgm_ppm_and_bench(toy, tmp_path):
    exe = _spaedge_run()
    rng = np.random.default_rng(8)
    img = rng.integers(0, 256, (20, 12, 3), dtype=np.uint8)
    (tmp_path / "img.ppm").write_bytes(b"P6\n# comment\n12 20\n255\n" + img.tobytes())
    r = subprocess.run(
        [
            exe,
            str(toy["base_path"]),
            str(toy["b_path"]),
            str(tmp_path / "img.ppm"),
            "--bench",
            "5",
            "--top=1",
            "--mode",
            "lowrank",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    rt = fresh(toy)
    rt.load_task(toy["b_path"])
    label = rt.predict(rt.normalize(img))[0][0]
    assert f"1. {label}" in r.stdout
    assert (
        "median" in r.stdout
        and "p90" in r.stdout
        and "switch" in r.stdout
        and "mode lowrank" in r.stdout
    )


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["{base}", "{a}"], "expected BASE TASK INPUT"),
        (["{base}", "{a}", "{x}", "--threads", "-1"], "--threads"),
        (["{base}", "{a}", "{x}", "--frobnicate"], "unknown option"),
        (["{base}", "{a}", "{x}", "--mode", "fast"], "--mode must be merged or lowrank"),
        (["{base}", "{base}", "{x}"], "expected a spaedge-task bundle"),
        (["{base}", "{a}", "{dir}"], "is a directory"),
        (["{base}", "{a}", "{missing}"], "cannot open"),
        (["{base}", "{a}", "{wrong}"], r"needs NCHW \(3, 16, 16\)"),
        (["{base}", "{a}", "{f64}"], "float32"),
        (["{base}", "{a}", "{txt}"], "not a .npy file"),
        (["{base}", "{a}", "{pgm}"], "PGM"),
    ],
)
def test_spaedge_run_errors_are_one_line(toy, tmp_path, args, pattern):
    exe = _spaedge_run()
    np.save(tmp_path / "x.npy", inputs((3, 16, 16)))
    np.save(tmp_path / "wrong.npy", inputs((3, 16, 17)))
    np.save(tmp_path / "f64.npy", inputs((3, 16, 16)).astype(np.float64))
    (tmp_path / "t.txt").write_text("hello")
    (tmp_path / "g.pgm").write_bytes(b"P5 16 16 255\n" + bytes(256))
    sub = {
        "base": toy["base_path"],
        "a": toy["a_path"],
        "x": tmp_path / "x.npy",
        "dir": tmp_path,
        "wrong": tmp_path / "wrong.npy",
        "f64": tmp_path / "f64.npy",
        "txt": tmp_path / "t.txt",
        "pgm": tmp_path / "g.pgm",
        "missing": tmp_path / "missing.npy",
    }
    r = subprocess.run(
        [exe] + [a.format(**sub) for a in args], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spaedge-run: error:"), r.stderr
    assert re.search(pattern, lines[0]), lines[0]


def test_spaedge_run_help():
    exe = _spaedge_run()
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert (
        r.returncode == 0
        and "usage: spaedge-run BASE TASK INPUT" in r.stdout
        and "--bench" in r.stdout
    )


# ---- SPLoPA: prototype sets shared by convs, expanded at task application -------------


@pytest.mark.parametrize("mode", ["merged", "lowrank"])
@pytest.mark.parametrize("threads", [1, 2])
def test_splopa_task_matches_numpy_reference(toy, tmp_path, mode, threads):
    """Block coefficients per conv, one prototype set per block shape (4x4,
    4x3, 2x4, ... on the toy's ragged kept counts), shared by several convs;
    switching to and from a SPLoRA task rebuilds the same weights."""
    rng = np.random.default_rng(12)
    t, sets = ref.splopa_tensors(toy["graph"], rng, keep_frac=0.7, classes=4)
    assert len(set(json.loads(sets).values())) < len(json.loads(sets))  # a set serves several convs
    meta = ref.task_meta(toy["hash"], "sp", 4, (3, 14, 14), method="splopa")
    meta["splopa_sets"] = sets
    ref.write(tmp_path / "sp.safetensors", t, meta)
    rt = fresh(toy, threads=threads, mode=mode)
    assert rt.load_task(tmp_path / "sp.safetensors") == "sp"
    x = inputs((2, 3, 14, 14), seed=13)
    want = ref.reference_logits(toy["graph"], toy["base"], t, x)
    got = rt.run(x)
    assert ref.close(got, want), np.max(np.abs(got - want))
    rt.load_task(toy["a_path"])
    xa = inputs((2, 3, 16, 16))
    assert ref.close(rt.run(xa), ref.reference_logits(toy["graph"], toy["base"], toy["a"], xa))
    rt.switch("sp")
    assert np.array_equal(rt.run(x), got)
