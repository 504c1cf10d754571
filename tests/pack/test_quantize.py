"""int8 (docs/int8.md): weight quantization of the built-in base, the
calibration of a task's activations, and the NumPy int8 network against the
fp32 model on digits."""

from __future__ import annotations

import hashlib
from fractions import Fraction

import numpy as np
import pytest
import torch

from spaedge.adapters import adapt
from spaedge.models import get_base
from spaedge.pack.bundle import base_bundle
from spaedge.pack.calibrate import calibrate, calibration_images, fp32_values, int8_network
from spaedge.pack.materialize import materialize
from spaedge.pack.quantize import (
    activation_qparams,
    apply_conv,
    calibration_indices,
    dequantize_weight,
    fma32,
    int8_plan,
    quantize_base_tensors,
    quantize_weight,
    quantized_values,
    reference_logits,
    reference_run,
)
from spaedge.pruning.prune import prune_to_density
from spaedge.tasks import get_task


@pytest.fixture(scope="module")
def tiny_base():
    tensors, meta = base_bundle(get_base("tiny"))
    return tensors, meta


def test_weight_quantization_round_trips_within_half_a_step(tiny_base):
    tensors, meta = tiny_base
    import json

    graph = json.loads(meta["graph"])
    q = quantize_base_tensors(tensors, graph)
    convs = [n["name"] for n in graph["nodes"] if n["op"] == "conv"]
    assert convs and set(q) == {f"{c}.{k}" for c in convs for k in ("weight", "weight_scale")}
    for c in convs:
        w, qw, s = tensors[f"{c}.weight"], q[f"{c}.weight"], q[f"{c}.weight_scale"]
        assert qw.dtype == np.int8 and qw.shape == w.shape
        assert s.dtype == np.float32 and s.shape == (w.shape[0],) and (s > 0).all()
        assert np.abs(qw.astype(int)).max() <= 127
        # every row uses the full range: its largest weight is +-127
        assert (np.abs(qw.reshape(len(s), -1).astype(int)).max(axis=1) == 127).all()
        err = np.abs(w.astype(np.float64) - dequantize_weight(qw, s).astype(np.float64))
        half = s.astype(np.float64).reshape(-1, 1, 1, 1) / 2
        assert (err <= half * (1 + 2**-20)).all(), c  # scale/2, plus float32 roundings
        # and the bound is tight: rounding to nearest, not truncating
        assert (err > half * 0.9).any(), c


def test_weight_quantization_edge_rows():
    w = np.zeros((3, 2, 1, 1), np.float32)
    w[1] = -0.5
    w[2, 0] = 3.0
    q, s = quantize_weight(w)
    assert s.tolist() == [1.0, np.float32(0.5) / np.float32(127), np.float32(3.0) / np.float32(127)]
    assert q[:, :, 0, 0].tolist() == [[0, 0], [-127, -127], [127, 0]]
    with pytest.raises(ValueError, match="non-finite"):
        quantize_weight(np.array([[np.nan]], np.float32))


def _fma_exact(a: np.float32, b: np.float32, c: np.float32) -> np.float32:
    """fma rounded to float32 from exact rationals (nearest, ties to even)."""
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    r = np.float32(float(exact))
    cands = [r, np.nextafter(r, np.float32(np.inf)), np.nextafter(r, np.float32(-np.inf))]
    dist = [abs(Fraction(float(x)) - exact) for x in cands]
    best = min(dist)
    ties = [x for x, d in zip(cands, dist) if d == best]
    return min(ties, key=lambda x: int(np.array(x).view(np.int32)) & 1)


def test_fma32_is_the_correctly_rounded_fused_multiply_add():
    # A double-rounding case: a*b is a float32 midpoint, c tips it; rounding
    # the float64 sum to float32 gets it wrong, fma32 must not.
    a = np.float32(1 + 2**-12)
    for c, want in ((np.float32(2**-60), 1 + 2**-11 + 2**-23), (np.float32(-(2**-60)), 1 + 2**-11)):
        naive = np.float32(np.float64(a) * np.float64(a) + np.float64(c))
        assert naive == np.float32(1 + 2**-11)  # the naive way rounds both to even
        assert fma32(a, a, c) == np.float32(want)
        assert _fma_exact(a, a, c) == np.float32(want)
    rng = np.random.default_rng(0)
    a = (rng.standard_normal(3000) * 1000).astype(np.float32)
    b = rng.standard_normal(3000).astype(np.float32) * np.float32(1e-3)
    c = (rng.standard_normal(3000) * 10).astype(np.float32)
    got = fma32(a, b, c)
    want = np.array([_fma_exact(x, y, z) for x, y, z in zip(a, b, c)], np.float32)
    assert (got.view(np.int32) == want.view(np.int32)).all()


def test_activation_parameters():
    assert activation_qparams(0.0, 0.0) == (np.float32(1), 0)
    s, z = activation_qparams(0.0, 5.1)  # post-ReLU: zero point 0
    assert z == 0 and s == np.float32(5.1 / 255)
    s, z = activation_qparams(-1.0, 3.0)
    assert s == np.float32(4.0 / 255) and z == 64  # rne(1 / (4/255)) = rne(63.75)
    s, z = activation_qparams(0.5, 2.0)  # widened to contain 0
    assert z == 0 and s == np.float32(2.0 / 255)
    with pytest.raises(ValueError, match="not finite"):
        activation_qparams(0.0, float("inf"))


def test_calibration_images_are_chosen_reproducibly():
    a = calibration_indices("digits", 1000, 256)
    assert (a == calibration_indices("digits", 1000, 256)).all()
    assert len(np.unique(a)) == 256 and (np.diff(a) > 0).all() and a.max() < 1000
    assert not (a == calibration_indices("cifar10", 1000, 256)).all()
    assert (calibration_indices("digits", 100, 256) == np.arange(100)).all()
    with pytest.raises(ValueError, match="no training images"):
        calibration_indices("digits", 0)


def test_plan_quantizes_the_values_the_runtime_materialises(tiny_base):
    import json

    graph = json.loads(tiny_base[1]["graph"])
    values = quantized_values(graph)
    assert values[:2] == ["x", "relu"]
    assert "layer1.0.relu_out" in values and "layer2.0.downsample.1" in values
    assert "layer1.0.relu1" in values and "layer1.0.add" not in values
    steps = int8_plan(graph)
    by = {s.name: s for s in steps}
    assert by["layer2.0.conv2"].residual == "layer2.0.downsample.1" and by["layer2.0.conv2"].relu
    assert by["layer2.0.downsample.0"].residual is None and not by["layer2.0.downsample.0"].relu
    # an add no conv chain absorbs (both inputs are relus) is refused
    bad = {
        "input": "x",
        "input_channels": 1,
        "output": "s",
        "nodes": [
            {"name": "r1", "op": "relu", "inputs": ["x"], "output": "r1"},
            {"name": "s", "op": "add", "inputs": ["r1", "x"], "output": "s"},
        ],
    }
    with pytest.raises(ValueError, match="'r1' .*not fused"):
        int8_plan(bad)


def test_apply_keeps_s8_values_of_a_conv_without_update():
    rng = np.random.default_rng(0)
    q = rng.integers(-128, 128, (6, 5, 3, 3)).astype(np.int8)
    s = rng.uniform(0.01, 0.1, 6).astype(np.float32)
    bn = rng.uniform(-2, 2, 3).astype(np.float32)
    q2, s2 = apply_conv(q, s, [0, 2, 5], [1, 4], None, bn)
    assert (q2 == q[[0, 2, 5]][:, [1, 4]]).all()
    assert (s2 == (s[[0, 2, 5]] * bn).astype(np.float32)).all()
    # with an update: requantized to the full range of each row
    upd = rng.standard_normal((3, 2, 3, 3)).astype(np.float32) * 0.01
    q3, s3 = apply_conv(q, s, [0, 2, 5], [1, 4], upd, bn)
    w = (dequantize_weight(q[[0, 2, 5]][:, [1, 4]], s[[0, 2, 5]]) + upd) * bn[:, None, None, None]
    assert (
        np.abs(dequantize_weight(q3, s3) - w) <= np.abs(s3)[:, None, None, None] / 2 * 1.001
    ).all()


# ---------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits_model():
    """The built-in base adapted to digits with SPLoRA (rank 4), pruned to 50 %
    density by weight magnitude, then trained: a real pruned task in seconds."""
    task = get_task("digits")
    torch.manual_seed(0)
    base = get_base("tiny")
    base.replace_head(10)
    model = adapt(base, "splora", rank=4)
    x, y = task.arrays("train")
    g = torch.Generator().manual_seed(0)

    def fit(steps):
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
        model.train()
        for _ in range(steps):
            i = torch.randint(0, len(x), (32,), generator=g)
            loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()

    prune_to_density(model, x[:1], 0.5)  # first: the pruned model trains twice as fast
    fit(500)
    return task, model


def test_graph_run_is_the_model(digits_model):
    task, model = digits_model
    x = task.arrays("test")[0][:32]
    with torch.no_grad():
        got = fp32_values(materialize(model), model.graph(), x, set())["logits"]
        torch.testing.assert_close(got, model(x), rtol=1e-5, atol=1e-5)


def test_calibration_is_deterministic(digits_model):
    task, model = digits_model
    images = calibration_images(task)
    assert images.shape == (256, 1, 28, 28)
    a = calibrate(model, images)
    b = calibrate(model, calibration_images(task))
    assert list(a) == quantized_values(model.graph())

    def as_bytes(act):
        return b"".join(
            k.encode() + np.float32(s).tobytes() + np.int32(z).tobytes()
            for k, (s, z) in act.items()
        )

    assert hashlib.sha256(as_bytes(a)).digest() == hashlib.sha256(as_bytes(b)).digest()
    assert all(z == 0 for v, (_, z) in a.items() if "relu" in v)  # after a ReLU
    assert a["x"][1] > 0  # the normalised input has negatives


def test_int8_reference_agrees_with_fp32_on_digits(digits_model, tiny_base):
    task, model = digits_model
    tensors, meta = tiny_base
    qbase = quantize_base_tensors(tensors, model.graph())
    act = calibrate(model, calibration_images(task))
    net = int8_network(model, qbase, act)
    x, y = task.arrays("test")
    with torch.no_grad():
        want = model(x).numpy()
    got, values = reference_run(net, x.numpy())
    assert all(v.dtype == np.uint8 for v in values.values())
    assert set(values) == set(act)
    assert (reference_logits(net, x.numpy()[:40], batch=7) == got[:40]).all()  # any batching
    agree = float((got.argmax(1) == want.argmax(1)).mean())
    acc_fp32 = float((want.argmax(1) == y.numpy()).mean())
    acc_int8 = float((got.argmax(1) == y.numpy()).mean())
    print(f"digits test: top-1 agreement {agree:.4f}, fp32 {acc_fp32:.4f}, int8 {acc_int8:.4f}")
    # Measured 2026-12-07 (x86, 1 torch thread): agreement 0.9861 (354 of 359 test
    # images; the int8 top-2 margins of the 5 others are 0.02-0.36), accuracy fp32
    # 0.9471, int8 0.9443. With 300 training steps instead of 500: 0.9749.
    assert agree >= 0.97
    assert acc_int8 >= acc_fp32 - 0.01
    # The update computed in float64 before its float32 rounding (as another
    # ISA's summation order might round it): measured, 46 of 1152 requantized
    # scales differ in their last bits, no s8 weight and no u8 activation.
    net64 = int8_network(model, qbase, act, update_dtype=torch.float64)
    got64, values64 = reference_run(net64, x.numpy())
    moved = sum(int((values[k] != values64[k]).sum()) for k in values)
    assert moved <= values["x"].size // 1000
    assert (got64.argmax(1) == got.argmax(1)).all()


# ---------------------------------------------------------------- int8 bundles


def _rewrite(path, edit_meta=None, edit_table=None):
    """Rewrite a bundle's header (metadata, tensor table) with a valid content hash."""
    import json
    import struct

    from spaedge.pack.format import content_hash

    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8 : 8 + n]), raw[8 + n :]
    meta = header.pop("__metadata__")
    if edit_meta:
        edit_meta(meta)
    if edit_table:
        edit_table(header)
    meta["content_hash"] = content_hash(meta, header, data)
    text = json.dumps({**header, "__metadata__": meta}).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


@pytest.fixture(scope="module")
def int8_pair(tmp_path_factory):
    """The built-in base as fp32 and int8 base bundles: (fp32 path, int8 path, int8 hash)."""
    from spaedge.pack.bundle import write_base
    from spaedge.pack.format import read_bundle, write_bundle
    from spaedge.pack.quantize import int8_base_bundle

    d = tmp_path_factory.mktemp("int8")
    write_base(get_base("tiny"), d / "base.safetensors")
    h8 = write_bundle(
        d / "base8.safetensors", *int8_base_bundle(*read_bundle(d / "base.safetensors"))
    )
    return d / "base.safetensors", d / "base8.safetensors", h8


def test_int8_base_bundle_round_trip(int8_pair, tiny_base):
    import json

    from spaedge import runtime
    from spaedge.errors import BundleError
    from spaedge.pack.bundle import load_base_model
    from spaedge.pack.format import read_bundle, read_metadata, write_bundle
    from spaedge.pack.quantize import int8_base_bundle

    fp32, int8, h8 = int8_pair
    m32 = read_metadata(fp32)
    assert m32["version"] == "4" and "precision" not in m32  # fp32 bundles unchanged
    tensors, meta = read_bundle(int8)
    assert meta["version"] == "5" and meta["precision"] == "int8"
    assert meta["quantized_from"] == m32["content_hash"] and meta["content_hash"] == h8
    assert meta["graph"] == m32["graph"] and meta["config"] == m32["config"]
    want = quantize_base_tensors(tiny_base[0], json.loads(meta["graph"]))
    assert set(tensors) == set(want)
    for k, v in want.items():
        assert tensors[k].dtype == v.dtype and (tensors[k] == v).all(), k
    # a quarter of the fp32 file, plus the scales and the header
    ratio = int8.stat().st_size / fp32.stat().st_size
    assert ratio < 0.3, ratio
    again = int8.with_name("again.safetensors")
    write_bundle(again, *int8_base_bundle(*read_bundle(fp32)))
    assert again.read_bytes() == int8.read_bytes()
    # the toolchain rebuilds the base from it, dequantized
    model, _ = load_base_model(int8)
    w = model.get_submodule("layer1.0.conv1").weight.detach().numpy()
    s = tensors["layer1.0.conv1.weight_scale"]
    assert (w == dequantize_weight(tensors["layer1.0.conv1.weight"], s)).all()
    # the C++ runtime reads it: one base, its precision from the bundle
    summary = runtime.inspect_bundle(str(int8))
    assert summary["version"] == "5" and summary["metadata"]["precision"] == "int8"
    assert runtime.Runtime(int8, threads=1).base_hash == h8
    # and refuses a damaged one by name, like an fp32 base
    bad = int8.with_name("bad_scale.safetensors")
    bad.write_bytes(int8.read_bytes())

    def zero_scale(table):
        table["layer1.0.conv1.weight_scale"]["shape"] = [1]

    _rewrite(bad, edit_table=zero_scale)
    with pytest.raises(BundleError, match="'layer1.0.conv1.weight_scale'"):
        runtime.Runtime(bad, threads=1)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.pop("precision"), "version 5 is for int8 bundles"),
        (lambda m: m.update(version="4"), "int8 bundles are version 5"),
        (lambda m: m.update(precision="int4"), "'precision' is 'int4', expected 'int8'"),
        (lambda m: m.update(precision="fp32", version="4"), "dtype 'I8' in a fp32 bundle"),
    ],
)
def test_inconsistent_int8_bundles_are_refused(int8_pair, tmp_path, edit, message):
    import shutil

    from spaedge.errors import BundleError
    from spaedge.pack.format import read_bundle

    p = tmp_path / "b.safetensors"
    shutil.copy(int8_pair[1], p)
    _rewrite(p, edit)
    with pytest.raises(BundleError, match=message):
        read_bundle(p)


def test_writers_keep_int8_to_int8_bundles():
    from spaedge.pack.format import serialise

    meta = {"format": "spaedge-base", "model": "m", "graph": "{}", "config": "{}"}
    with pytest.raises(TypeError, match="int8 bundles only"):
        serialise({"w": np.zeros(2, np.int8)}, meta)
    with pytest.raises(ValueError, match="precision"):
        serialise({"w": np.zeros(2, np.float32)}, {**meta, "precision": "fp32"})


def test_int8_task_bundle(int8_pair, digits_model, tmp_path):
    import json

    from spaedge import runtime
    from spaedge.errors import BundleError
    from spaedge.pack.bundle import TaskSpec, load_task_model
    from spaedge.pack.calibrate import int8_task
    from spaedge.pack.format import read_bundle, write_bundle

    task, model = digits_model
    _, int8, h8 = int8_pair
    path = tmp_path / "digits.safetensors"
    images = calibration_images(task)
    write_bundle(path, *int8_task(model, TaskSpec.from_task(task), h8, images, {"rank": 4}))
    tensors, meta = read_bundle(path)
    assert meta["version"] == "5" and meta["precision"] == "int8" and meta["base_hash"] == h8
    info = json.loads(meta["info"])
    assert info["rank"] == 4 and info["calibration"]["images"] == 256
    act = calibrate(model, images)
    for v, (s, z) in act.items():
        assert (
            tensors[f"{v}.act_scale"].tolist() == [s]
            and tensors[f"{v}.act_zero_point"].dtype == np.int32
        )
        assert tensors[f"{v}.act_zero_point"].tolist() == [z]
    # the toolchain rebuilds the task on the dequantized base
    again, _, _ = load_task_model(int8, path)
    x = task.arrays("test")[0]
    with torch.no_grad():
        agree = float((again(x).argmax(1) == model(x).argmax(1)).float().mean())
    print(f"task on the dequantized int8 base (fp32 arithmetic): top-1 agreement {agree:.4f}")
    assert agree >= 0.97
    # the int8 network from the bundle pair is the one from the model, bit for bit
    from spaedge.pack.calibrate import int8_network_from_bundles

    net = int8_network_from_bundles(int8, path)
    want = reference_logits(int8_network(model, read_bundle(int8)[0], act), x.numpy()[:64])
    assert (reference_logits(net, x.numpy()[:64]) == want).all()
    assert runtime.inspect_bundle(str(path))["base_hash"] == h8
    with pytest.raises(BundleError, match="not 'int8'"):
        int8_network_from_bundles(int8_pair[0], path)
    # the C++ runtime's int8 output against the reference (docs/int8.md (e))
    _runtime_matches_reference(int8, path, net, x.numpy())
    # with zero updates every float32 operation of (c) is defined exactly, so
    # every u8 activation is identical (docs/int8.md (e)): the logits within
    # float32 summation of the head
    zero = tmp_path / "zero.safetensors"
    write_bundle(
        zero,
        {k: np.zeros_like(v) if k.endswith(".lora_b") else v for k, v in tensors.items()},
        meta,
    )
    net = int8_network_from_bundles(int8, zero)
    _runtime_matches_reference(int8, zero, net, x.numpy()[:128], exact=True)
    with pytest.raises(BundleError, match="is int8 but the loaded base .* is fp32"):
        runtime.Runtime(int8_pair[0], threads=1).load_task(path)


def _runtime_matches_reference(base, task, net, x, exact=False):
    """The runtime's logits against the NumPy int8 network within docs/int8.md
    (e)'s tolerance for a task whose convs all carry an update: every logit
    within 1 % of the largest reference |logit|, the same top-1 wherever the
    reference's top-2 margin exceeds 2 % of it; identical over thread counts.
    ``exact``: every conv's update is zero, so every logit is within the
    bound of float32 summation of the head over identical u8 activations."""
    from spaedge import runtime

    rt = runtime.Runtime(base, threads=1)
    rt.load_task(task)
    got = rt.run(x).astype(np.float64)
    want = reference_logits(net, x)
    scale = np.abs(want).max()
    diff = np.abs(got - want).max()
    top2 = np.sort(want, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 0.02 * scale
    # the bound docs/int8.md (e) gives when every u8 activation is identical
    feats = _head_input(net, x)
    n = feats.shape[1]
    bound = (
        (n + 1)
        * 2.0**-24
        * (np.abs(net.head_bias) + np.abs(feats[:, None, :] * net.head_weight[None]).sum(axis=2))
    )
    print(
        f"runtime int8 vs reference: max |diff| {diff:.3g} ({diff / scale:.2%} of max |logit| "
        f"{scale:.3g}); within the identical-activation bound: {(np.abs(got - want) <= bound).mean():.4f}"
    )
    assert diff <= 0.01 * scale
    assert (got.argmax(1) == want.argmax(1))[clear].all()
    if exact:
        assert (np.abs(got - want) <= bound).all()
    rt.threads = 2
    assert (rt.run(x) == got.astype(np.float32)).all()


def _head_input(net, x):
    """The reference's float head input (the gap output) per image."""
    from spaedge.pack import quantize as q8

    feats = []
    orig = q8._qgap

    def spy(v, scale, zp):
        out = orig(v, scale, zp)
        feats.append(out)
        return out

    q8._qgap = spy
    try:
        q8.reference_logits(net, x)
    finally:
        q8._qgap = orig
    return np.concatenate(feats).astype(np.float64)


def test_info_shows_the_precision(int8_pair, tmp_path):
    import subprocess
    import sys

    def info(path):
        return subprocess.run(
            [sys.executable, "-m", "spaedge.cli", "info", str(path)], capture_output=True, text=True
        )

    fp32, int8, h8 = int8_pair
    r = info(fp32)
    assert r.returncode == 0, r.stderr
    assert "spaedge-base version 4, fp32," in r.stdout
    r = info(int8)
    assert r.returncode == 0, r.stderr
    assert "spaedge-base version 5, int8," in r.stdout and f"content {h8[:16]}" in r.stdout
    assert "quantized from" in r.stdout and "content hash checked" in r.stdout
    bad = tmp_path / "bad.safetensors"
    raw = bytearray(int8.read_bytes())
    raw[-1] ^= 1
    bad.write_bytes(bytes(raw))
    r = info(bad)
    assert r.returncode != 0 and "content_hash" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- against the kernels


def _kernel_cases(rng, count):
    """Random qconv / quantize / qmaxpool / qglobal_avgpool cases: (input bytes
    for int8_kernel_driver.cpp, the NumPy reference's outputs)."""
    import struct

    from spaedge.pack import quantize as q8

    f32 = np.float32
    buf, want = bytearray(struct.pack("<i", count)), []
    for c in range(count):
        k = int(rng.choice([1, 3, 5, 7]))
        stride, pad = int(rng.choice([1, 2])), int(rng.integers(0, k // 2 + 1))
        ih, iw = int(rng.integers(k, 12)), int(rng.integers(k, 12))
        ic = int(rng.integers(100, 300)) if c % 7 == 0 else int(rng.integers(1, 40))
        oc = int(rng.integers(1, 40))
        z_in, z_out = int(rng.integers(0, 256)), int(rng.integers(0, 256))
        relu, has_res = bool(rng.integers(0, 2)), bool(rng.integers(0, 2))
        w = rng.integers(-128, 128, (oc, ic, k, k)).astype(np.int8)  # -128 included
        x = rng.integers(0, 256, (1, ih, iw, ic)).astype(np.uint8)
        s_in, s_out = (
            f32(rng.uniform(0.001, 0.1)),
            f32(rng.uniform(0.001, 2) * 10 ** rng.uniform(0, 2)),
        )
        conv = q8.Int8Conv(
            w,
            rng.uniform(-0.02, 0.02, oc).astype(f32),
            rng.normal(0, 3, oc).astype(f32),
            stride,
            pad,
        )
        oh, ow = (ih + 2 * pad - k) // stride + 1, (iw + 2 * pad - k) // stride + 1
        res = None
        if has_res:
            res = (
                rng.integers(0, 256, (1, oh, ow, oc)).astype(np.uint8),
                f32(rng.uniform(0.001, 1)),
                int(rng.integers(0, 256)),
            )
        out = q8._qconv(x, conv, s_in, z_in, s_out, z_out, res, relu)
        # the constants as docs/int8.md (c) defines them, handed to the kernel
        mul = ((s_in * conv.wscale).astype(f32) / s_out).astype(f32)
        add = (conv.bias / s_out).astype(f32)
        res_mul = f32(res[1] / s_out) if res else f32(0)
        buf += struct.pack(
            "<12i", ih, iw, ic, oc, k, stride, pad, z_in, z_out, int(has_res),
            res[2] if res else 0, int(relu),
        )  # fmt: skip
        buf += w.transpose(0, 2, 3, 1).tobytes() + x.tobytes() + mul.tobytes() + add.tobytes()
        buf += res_mul.tobytes() + (res[0].tobytes() if res else b"")
        n = int(rng.integers(1, 500))
        xs = (rng.normal(0, 3, n) * rng.uniform(0.1, 10)).astype(f32)
        qs, qz = f32(rng.uniform(0.005, 0.2)), int(rng.integers(0, 256))
        gs = f32(rng.uniform(0.001, 1))
        buf += struct.pack("<i", n) + xs.tobytes() + qs.tobytes() + struct.pack("<i", qz)
        buf += gs.tobytes()
        want += [out, q8._quantize_input(xs, qs, qz)]
        if oh >= 2 and ow >= 2:
            want.append(q8._qmaxpool(out, 3, 2, 1))
        want.append(q8._qgap(out, gs, z_out))
    # Last, one pixel of 1x1 conv whose channels sit on rounding boundaries:
    # acc = w[o], and mul, add such that fma(acc, mul, add) and a separate
    # multiply and add round to different integers (random cases almost never
    # come this close to a half-integer).
    acc = rng.integers(-128, 128, 200_000).astype(f32)
    mul = rng.uniform(0.5, 2.0, acc.size).astype(f32)
    add = (np.rint(acc * mul) + 0.5 - acc.astype(np.float64) * mul).astype(f32)
    sep = (acc * mul).astype(f32) + add
    exact = acc.astype(np.float64) * mul + add  # exact here: 8 + 24 bits, close exponents
    pick = np.flatnonzero(np.rint(sep) != np.rint(exact.astype(f32)))[:64]
    assert len(pick) >= 16, len(pick)
    oc, z_out = len(pick), 128
    buf[:4] = struct.pack("<i", count + 1)
    buf += struct.pack("<12i", 1, 1, 1, oc, 1, 1, 0, 0, z_out, 0, 0, 0)
    buf += acc[pick].astype(np.int8).tobytes() + bytes([1]) + mul[pick].tobytes()
    buf += add[pick].tobytes() + f32(0).tobytes()
    buf += struct.pack("<i", 1) + f32(0).tobytes() + f32(1).tobytes() + struct.pack("<i", 0)
    buf += f32(1).tobytes()
    t = q8.fma32(acc[pick], mul[pick], add[pick])
    out = (np.rint(np.clip(t, -z_out, 255 - z_out)).astype(np.int32) + z_out).astype(np.uint8)
    want += [out, np.zeros(1, np.uint8), (out.astype(np.float32) - z_out).astype(f32)]
    return bytes(buf), b"".join(np.ascontiguousarray(a).tobytes() for a in want)


def test_reference_is_the_scalar_kernels_bit_for_bit(tmp_path):
    """The NumPy int8 arithmetic against csrc/kernels/scalar/qconv.cpp (every
    other ISA is bit for bit scalar's: tests/cpp/test_kernels_int8.cpp)."""
    import os
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    assert cxx, "a C++ compiler is needed (set CXX)"
    exe = tmp_path / "driver"
    subprocess.run(
        [cxx, "-O1", "-std=c++17", "-I", str(root / "csrc"), "-o", str(exe),
         str(root / "tests/pack/int8_kernel_driver.cpp"),
         str(root / "csrc/kernels/scalar/qconv.cpp")],
        check=True,
    )  # fmt: skip
    cases, want = _kernel_cases(np.random.default_rng(1), 120)
    (tmp_path / "in.bin").write_bytes(cases)
    subprocess.run([str(exe), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")], check=True)
    got = (tmp_path / "out.bin").read_bytes()
    assert len(got) == len(want)
    diff = np.frombuffer(got, np.uint8) != np.frombuffer(want, np.uint8)
    assert not diff.any(), f"{int(diff.sum())} of {len(want)} bytes differ"


# ---------------------------------------------------------------- range statistics


def test_clip_range_by_hand():
    from spaedge.pack.quantize import check_statistic, clip_range

    # 4 bins over [-1, 3]: edges -1, 0, 1, 2, 3; 100 values
    counts = np.array([1, 50, 48, 1])
    assert clip_range("minmax", -1, 3, counts) == (-1.0, 3.0)
    # 1 % tails: the bottom value (bin 0) and the top one (bin 3) are clipped
    assert clip_range("percentile-99", -1, 3, counts) == (0.0, 2.0)
    # 0.1 % tails: a tail of 0.1 value keeps every bin
    assert clip_range("percentile-99.9", -1, 3, counts) == (-1.0, 3.0)
    # 5 % tails: bins 0 and 3 (one value each) go, bins 1 and 2 (50, 48) stay
    assert clip_range("percentile-95", -1, 3, counts) == (0.0, 2.0)
    # 0 is always inside: [1, 3] is binned as [0, 3] (edges 0, .75, 1.5, 2.25, 3)
    assert clip_range("percentile-60", 1, 3, np.array([0, 0, 100, 0])) == (0.0, 2.25)
    # mse: a uniform histogram keeps its range, a far outlier is clipped
    uniform = np.full(1024, 100)
    assert clip_range("mse", 0, 1, uniform) == (0.0, 1.0)
    # 10^7 values in [0, 0.98) and one at 10: the range ends near the mass's top
    # (one value's clipping error is less than every value's finer step)
    outlier = np.zeros(1024, np.int64)
    outlier[:100] = 100000
    outlier[-1] = 1
    lo, hi = clip_range("mse", 0, 10, outlier)
    assert lo == 0 and 0.95 < hi < 1.05
    for bad in ("median", "percentile-50", "percentile-100", "percentile-x", "percentile"):
        with pytest.raises(ValueError, match="percentile-P"):
            check_statistic(bad)


def test_percentile_calibration_is_deterministic_and_clips(digits_model):
    task, model = digits_model
    images = calibration_images(task)
    a = calibrate(model, images, statistic="percentile-99.99")
    assert a == calibrate(model, calibration_images(task), statistic="percentile-99.99")
    m = calibrate(model, images)
    assert all(a[v][0] <= m[v][0] for v in m)  # never a wider range than min/max
    assert sum(a[v][0] < m[v][0] for v in m) >= len(m) // 2  # most are clipped


def test_the_statistic_is_chosen_on_the_validation_split(digits_model, int8_pair, tmp_path):
    """auto calibrates on training images and picks, on the validation split
    and never the test split, the statistic whose int8 runtime agrees best with
    fp32; a candidate that clips half of every range loses."""
    import json

    from spaedge.pack.bundle import TaskSpec, write_task
    from spaedge.pack.calibrate import (
        activation_stats,
        choose_statistic,
        int8_task_from_bundles,
        validation_images,
    )
    from spaedge.pack.format import read_bundle, read_metadata, write_bundle
    from spaedge.pack.quantize import STATISTICS
    from spaedge.runtime import Runtime

    task, model = digits_model
    fp32, int8, _ = int8_pair
    spec = TaskSpec("digits", task.labels, task.input_size, task.mean, task.std)
    task_path = tmp_path / "digits.safetensors"
    write_task(model, spec, read_metadata(fp32)["content_hash"], task_path)

    class Spy:  # the task, recording which splits are read
        def __init__(self, t):
            self.t, self.name, self.read = t, t.name, []

        def split(self, s):
            self.read.append(s)
            return self.t.split(s)

    spy = Spy(task)
    val = validation_images(spy)
    assert spy.read == ["val"] and len(val[0]) == len(task.split("val"))
    tensors, meta, choice = int8_task_from_bundles(
        fp32, task_path, int8, calibration_images(task), val=val
    )
    assert set(choice.agreement) == set(STATISTICS)
    best = max(STATISTICS, key=lambda s: (choice.agreement[s], -choice.logit_mse[s]))
    assert choice.statistic == best
    cal = json.loads(meta["info"])["calibration"]
    assert cal["statistic"] == best and cal["chosen_on"]["split"] == "val"
    assert cal["chosen_on"]["images"] == len(val[0])
    # the recorded agreement is the runtime's on the validation images
    path = tmp_path / "digits.int8.safetensors"
    write_bundle(path, tensors, meta)
    rt = Runtime(str(int8), threads=1)
    rt.load_task(str(path))
    with torch.no_grad():
        want = model(val[0]).numpy().argmax(1)
    got = rt.run(np.ascontiguousarray(val[0].numpy())).argmax(1)
    assert float((got == want).mean()) == choice.agreement[best]
    # a statistic that clips half of each range is never chosen over min/max
    tensors32, meta32 = read_bundle(task_path)
    stats = activation_stats(model, calibration_images(task))
    bad = choose_statistic(model, stats, int8, tensors32, meta32, val, ("percentile-60", "minmax"))
    assert bad.statistic == "minmax"
    assert bad.agreement["percentile-60"] < bad.agreement["minmax"]
    # accuracy on the test split, for the record (docs/int8.md, (e))
    x, y = task.arrays("test")
    got = rt.run(np.ascontiguousarray(x.numpy())).argmax(1)
    with torch.no_grad():
        ref = model(x).numpy().argmax(1)
    agree, acc8 = float((got == ref).mean()), float((got == y.numpy()).mean())
    acc32 = float((ref == y.numpy()).mean())
    print(f"digits test, {best}: agreement {agree:.4f}, fp32 {acc32:.4f}, int8 {acc8:.4f}")
    assert agree >= 0.97 and acc8 >= acc32 - 0.01
    with pytest.raises(ValueError, match="validation"):
        int8_task_from_bundles(fp32, task_path, int8, calibration_images(task))


def test_random_calibration_images_are_one_seeded_scheme():
    from spaedge.pack.quantize import random_calibration_images, random_calibration_info

    a = random_calibration_images((3, 8, 8), 4, seed=5)
    assert a.dtype == np.float32 and a.shape == (4, 3, 8, 8)
    assert a.tobytes() == random_calibration_images((3, 8, 8), 4, seed=5).tobytes()
    # fewer images of a seed are a prefix of more; another seed is others
    assert random_calibration_images((3, 8, 8), 2, seed=5).tobytes() == a[:2].tobytes()
    assert not np.array_equal(random_calibration_images((3, 8, 8), 4, seed=6), a)
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="at least one image"):
            random_calibration_images((3, 8, 8), bad)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        random_calibration_images((8, 8), 2)
    assert random_calibration_info(4, 5) == {
        "images": 4,
        "split": "random",
        "selection": "spaedge/int8-calibration-random/v1",
        "seed": 5,
        "statistic": "minmax",
    }
