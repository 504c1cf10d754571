"""Exports for the peer engines: ONNX checked with onnxruntime, TFLite with the
LiteRT interpreter, both against the PyTorch model the task bundle describes
(and the C++ runtime where it is built)."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch

from spaedge.adapters import adapt  # noqa: E402
from spaedge.bench.synthetic import randomise_task_model  # noqa: E402
from spaedge.models import get_base  # noqa: E402
from spaedge.pack.bundle import TaskSpec, write_base, write_task  # noqa: E402
from spaedge.pack.export import (  # noqa: E402
    _same_padding_matches,
    export_onnx,
    export_tflite,
    export_tflite_int8,
    task_torch_model,
)
from spaedge.pack.materialize import materialize  # noqa: E402
from spaedge.pruning.prune import density, prune_to_density  # noqa: E402


def _randomise(model, seed: int) -> None:
    """Non-trivial adapters, BatchNorm statistics and head, as training would leave them."""
    randomise_task_model(model, torch.Generator().manual_seed(seed), scale=0.1, bn_scale=0.2)


def _task_model(base_name: str, classes: int, d: float, size, seed: int = 0):
    torch.manual_seed(seed)
    base = get_base(base_name, None if base_name == "tiny" else "random")
    model = copy.deepcopy(base)
    model.replace_head(classes)
    model = adapt(model, "splora", rank=4)
    _randomise(model, seed + 1)
    if d < 1.0:
        prune_to_density(
            model, torch.zeros(1, size[0], min(size[1], 48), min(size[2], 48)), d, step_fraction=0.2
        )
    return base, model.eval()


def _close(got, want, tol=1e-4):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    assert (got.argmax(-1) == want.argmax(-1)).all(), "predictions differ"
    scale = float(np.abs(want).max())
    assert scale > 0
    err = float(np.abs(got - want).max()) / scale
    assert err <= tol, f"logits differ by {err:.2e} of their scale"


def _ort(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = s.get_inputs(), s.get_outputs()
    assert (inp.name, out.name) == ("input", "logits")
    return s, s.run(["logits"], {"input": np.ascontiguousarray(x, np.float32)})[0]


@pytest.fixture(scope="module")
def resnet18_30():
    """A random ResNet-18 task pruned to 30% density at 64x64."""
    size = (3, 64, 64)
    _, model = _task_model("resnet18", 12, 0.3, size)
    assert density(model) <= 0.3 + 1e-6
    return model, size


def test_onnx_pruned_resnet18_matches_torch(tmp_path, resnet18_30):
    model, size = resnet18_30
    x = torch.randn(4, *size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(x).numpy()
    path = export_onnx(model, tmp_path / "r18.onnx", size, dynamic_batch=True)
    s, got = _ort(path, x.numpy())
    _close(got, want)
    # The exported model is the pruned one: its first conv keeps only some of the 64 channels.
    conv1 = materialize(model).conv1
    assert conv1.out_channels < 64
    import onnx

    g = onnx.load(str(path)).graph
    first_conv = next(n for n in g.node if n.op_type == "Conv")
    w = next(i for i in g.initializer if i.name == first_conv.input[1])
    assert list(w.dims)[:2] == [conv1.out_channels, 3]
    assert not list(tmp_path.glob("*.tmp-*")), "the atomic write left a temporary file"


def test_onnx_static_batch_is_batch_one(tmp_path, resnet18_30):
    model, size = resnet18_30
    path = export_onnx(model, tmp_path / "static.onnx", size)
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert s.get_inputs()[0].shape == [1, *size]
    x = torch.randn(1, *size)
    with torch.no_grad():
        want = model(x).numpy()
    _close(s.run(["logits"], {"input": x.numpy()})[0], want)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        s.run(["logits"], {"input": np.zeros((2, *size), np.float32)})


def test_onnx_of_tiny_base_task_from_bundles(tmp_path):
    """Export straight from a (base, task) bundle pair of the built-in base; ONNX,
    PyTorch and the C++ runtime must give the same logits."""
    size = (1, 28, 28)
    base, model = _task_model("tiny", 10, 0.3, size, seed=5)
    bhash = write_base(base, tmp_path / "base.safetensors")
    spec = TaskSpec("digits", [str(i) for i in range(10)], size, [0.1], [0.3])
    write_task(model, spec, bhash, tmp_path / "digits.safetensors")
    bundles = (tmp_path / "base.safetensors", tmp_path / "digits.safetensors")
    path = export_onnx(
        bundles, tmp_path / "digits.onnx", dynamic_batch=True
    )  # input size from the bundle
    x = torch.randn(16, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x).numpy()
    _, got = _ort(path, x.numpy())
    _close(got, want)
    import spaedge.runtime as runtime

    rt = runtime.Runtime(bundles[0], threads=1)
    rt.load_task(bundles[1])
    _close(rt.run(x.numpy()), got)


def test_export_needs_an_input_size_for_a_model(tmp_path, resnet18_30):
    model, _ = resnet18_30
    with pytest.raises(ValueError, match="input_size"):
        export_onnx(model, tmp_path / "x.onnx")
    with pytest.raises(TypeError, match="torch model or a"):
        export_onnx(42, tmp_path / "x.onnx", (3, 8, 8))
    with pytest.raises(ValueError, match="converter"):
        export_tflite(model, tmp_path / "x.tflite", (3, 64, 64), converter="tf")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------- TFLite
def _litert(path, x_nhwc):
    import ai_edge_litert.interpreter as interp

    it = interp.Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    (i,), (o,) = it.get_input_details(), it.get_output_details()
    assert list(i["shape"]) == list(x_nhwc.shape)
    it.set_tensor(i["index"], np.ascontiguousarray(x_nhwc, np.float32))
    it.invoke()
    return it.get_tensor(o["index"])


@pytest.mark.parametrize("size", [(3, 64, 64), (3, 57, 70)])
def test_tflite_builtin_pruned_resnet18_matches_torch(tmp_path, resnet18_30, size):
    """Even and odd sizes: stride-2 convs and the max-pool need explicit padding
    where TFLite's SAME would pad differently from PyTorch."""
    import ai_edge_litert  # noqa: F401

    model, _ = resnet18_30
    path = export_tflite(model, tmp_path / "r18.tflite", size)
    for seed in range(2):
        x = torch.randn(1, *size, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            want = model(x).numpy()
        _close(_litert(path, x.numpy().transpose(0, 2, 3, 1)), want)


def test_tflite_builtin_tiny_task_matches_torch(tmp_path):
    import ai_edge_litert  # noqa: F401

    size = (1, 28, 28)
    _, model = _task_model("tiny", 10, 0.5, size, seed=7)
    path = export_tflite(model, tmp_path / "tiny.tflite", size)
    x = torch.randn(1, *size)
    with torch.no_grad():
        want = model(x).numpy()
    _close(_litert(path, x.numpy().transpose(0, 2, 3, 1)), want)


def test_tflite_builtin_graph_is_folded_and_fused(tmp_path, resnet18_30):
    """BatchNorm folded into convs and ReLU fused: no standalone ops for them."""
    import ai_edge_litert.schema_py_generated as s

    model, size = resnet18_30
    path = export_tflite(model, tmp_path / "r18.tflite", size)
    m = s.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    codes = [m.operatorCodes[op.opcodeIndex].builtinCode for op in m.subgraphs[0].operators]
    B = s.BuiltinOperator
    n_convs = sum(1 for n in model.graph()["nodes"] if n["op"] == "conv")
    assert codes.count(B.CONV_2D) == n_convs
    assert B.RELU not in codes
    assert (
        codes.count(B.ADD) == 8
        and codes.count(B.MAX_POOL_2D) == 1
        and codes[-1] == B.FULLY_CONNECTED
    )


@pytest.mark.parametrize("size", [(3, 64, 64), (3, 57, 70)])
def test_tflite_int8_is_full_integer_and_close_to_torch(tmp_path, resnet18_30, size):
    """The full-integer export: float32 only at the input and the logits (one
    QUANTIZE, one DEQUANTIZE), s8 activations, per-output-channel s8 conv
    weights, int32 biases; on 16 inputs like its 16 calibration images, every
    logit within 5 % of the largest fp32 |logit| and top-1 the same on at
    least 14 (measured: 1-2 % and 16 of 16)."""
    import ai_edge_litert.schema_py_generated as s

    model, _ = resnet18_30
    g = torch.Generator().manual_seed(0)
    cal = torch.randn(16, *size, generator=g).numpy()
    path = export_tflite_int8(model, tmp_path / "r18.int8.tflite", cal, size)
    m = s.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    sg = m.subgraphs[0]
    T = s.TensorType
    floats = [t.name.decode() for t in sg.tensors if t.type == T.FLOAT32]
    assert floats == ["input", "logits"]
    codes = [m.operatorCodes[op.opcodeIndex].builtinCode for op in sg.operators]
    B = s.BuiltinOperator
    assert codes[0] == B.QUANTIZE and codes[-1] == B.DEQUANTIZE
    assert codes.count(B.QUANTIZE) == 1 and codes.count(B.DEQUANTIZE) == 1
    convs = [op for op in sg.operators if m.operatorCodes[op.opcodeIndex].builtinCode == B.CONV_2D]
    for op in convs:
        x, w, b = (sg.tensors[i] for i in op.inputs)
        assert x.type == T.INT8 and w.type == T.INT8 and b.type == T.INT32
        assert len(w.quantization.scale) == w.shape[0] and set(w.quantization.zeroPoint) == {0}
        assert len(b.quantization.scale) == w.shape[0]
    x = torch.randn(16, *size, generator=g)
    with torch.no_grad():
        want = model(x).numpy().astype(np.float64)
    got = np.concatenate(
        [_litert(path, x[i : i + 1].numpy().transpose(0, 2, 3, 1)) for i in range(len(x))]
    )
    err = float(np.abs(got - want).max()) / float(np.abs(want).max())
    agree = int((got.argmax(1) == want.argmax(1)).sum())
    print(f"LiteRT int8 {size}: max |diff| {err:.2%} of the largest |logit|, top-1 {agree}/16")
    assert err <= 0.05 and agree >= 14


def test_tflite_int8_refuses_images_of_another_size(tmp_path, resnet18_30):
    model, size = resnet18_30
    with pytest.raises(ValueError, match=r"calibration images must be \[N, 3, 64, 64\]"):
        export_tflite_int8(model, tmp_path / "x.tflite", np.zeros((2, 3, 32, 32), np.float32), size)
    assert not (tmp_path / "x.tflite").exists()


def test_same_padding_rule():
    assert _same_padding_matches(64, 3, 1, 1)  # stride 1, k//2: always SAME
    assert not _same_padding_matches(64, 3, 2, 1)  # TF pads 0 before, 1 after; PyTorch 1 and 1
    assert _same_padding_matches(63, 3, 2, 1)
    assert not _same_padding_matches(224, 7, 2, 3)
    assert _same_padding_matches(223, 7, 2, 3)


@pytest.mark.tflite
def test_tflite_litert_torch_converter(tmp_path):
    """The general converter (the optional `tflite` extra, ~2 GB); NCHW input.
    CI runs it in a separate environment that has the extra (.ci/run)."""
    import litert_torch  # noqa: F401

    size = (1, 28, 28)
    _, model = _task_model("tiny", 10, 0.5, size, seed=9)
    path = export_tflite(model, tmp_path / "lt.tflite", size, converter="litert-torch")
    x = torch.randn(1, *size)
    with torch.no_grad():
        want = model(x).numpy()
    _close(_litert(path, x.numpy()), want)


def test_task_torch_model_is_plain(resnet18_30):
    from spaedge.adapters.base import AdaptedLayer

    model, size = resnet18_30
    plain, got_size = task_torch_model(model, size)
    assert got_size == size
    assert not any(isinstance(m, AdaptedLayer) for m in plain.modules())


def test_tflite_litert_torch_missing_says_what_to_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "litert_torch", None)  # as if it were not installed
    _, model = _task_model("tiny", 3, 1.0, (1, 28, 28))
    with pytest.raises(ImportError, match=r"spaedge\[tflite\]"):
        export_tflite(model, tmp_path / "x.tflite", (1, 28, 28), converter="litert-torch")
    assert not (tmp_path / "x.tflite").exists()
