"""Exports of a task's materialised pruned model for the peer engines.

    export_onnx(model_or_bundles, "task.onnx", input_size=(3, 224, 224))
    export_tflite(model_or_bundles, "task.tflite", input_size=(3, 224, 224))
    export_tflite_int8(model_or_bundles, "task.int8.tflite", images, (3, 224, 224))

``model_or_bundles`` is a task model (adapted and pruned, as training leaves
it, or already materialised with :func:`spaedge.pack.materialize.materialize`)
or a ``(base_path, task_path)`` pair of bundles; then ``input_size`` defaults
to the task's. Both exports are of the same network the C++ runtime builds from
the bundles: pruned convs with the adapters merged in, BatchNorm, head.

ONNX: opset 17, input ``"input"`` (NCHW float32), output ``"logits"``; batch 1
or a dynamic batch axis. Written with PyTorch's TorchScript-based exporter
(``dynamo=False``): the torch.export-based one needs onnxscript, which the
toolchain does not otherwise pull in, and gives the same graph for a ResNet.

TFLite, two converters:

- ``"builtin"`` (default): spaedge writes the TFLite flatbuffer itself from the
  task's graph (docs/format.md), with the schema module that ships with the
  LiteRT interpreter (ai-edge-litert, the ``export`` extra). Input is NHWC
  float32 ``[1, H, W, C]`` (the layout TFLite kernels and XNNPACK work in);
  BatchNorm is folded into the convs, ReLU fused into convs and adds, as a
  converter would. Only ResNet graphs (the ops of docs/format.md) are supported.
  ``export_tflite_int8`` writes the same graph full-integer (s8 activations
  calibrated by min/max on given images, per-channel s8 conv weights, int32
  biases, float input and logits): the benchmarks' LiteRT int8 peer.
- ``"litert-torch"``: PyTorch's converter for LiteRT (the ``tflite`` extra,
  ~2 GB of dependencies). It keeps the model's NCHW input.

Every file is written atomically (temporary file, then rename).
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import nn

from spaedge.adapters.base import AdaptedLayer
from spaedge.pack.bundle import load_task_model
from spaedge.pack.format import atomic_write_bytes
from spaedge.pack.materialize import materialize

__all__ = [
    "export_onnx",
    "export_tflite",
    "export_tflite_int8",
    "tflite_int8_qparams",
    "task_torch_model",
    "TFLITE_CONVERTERS",
]

TFLITE_CONVERTERS = ("builtin", "litert-torch")

ModelOrBundles = Union[nn.Module, Sequence[Union[str, os.PathLike]]]


def task_torch_model(
    model_or_bundles: ModelOrBundles, input_size: Sequence[int] | None = None
) -> tuple[nn.Module, tuple[int, int, int]]:
    """(plain materialised eval-mode model, (C, H, W)) for a model or a (base, task) bundle pair."""
    if isinstance(model_or_bundles, nn.Module):
        model = model_or_bundles
        if input_size is None:
            raise ValueError(
                "input_size (C, H, W) is needed to export a model (it is only known for bundles)"
            )
    else:
        try:
            base_path, task_path = model_or_bundles
        except (TypeError, ValueError):
            raise TypeError(
                "expected a torch model or a (base_path, task_path) pair of bundles, "
                f"got {type(model_or_bundles).__name__}"
            ) from None
        model, spec, _ = load_task_model(base_path, task_path)
        if input_size is None:
            input_size = spec.input_size
    size = tuple(int(v) for v in input_size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(
            f"input_size must be (C, H, W) with positive sizes, got {tuple(input_size)}"
        )
    if any(isinstance(m, AdaptedLayer) for m in model.modules()):
        model = materialize(model)
    return model.eval(), size


# ---------------------------------------------------------------------- ONNX
def export_onnx(
    model_or_bundles: ModelOrBundles,
    path: str | os.PathLike,
    input_size: Sequence[int] | None = None,
    *,
    dynamic_batch: bool = False,
    opset: int = 17,
) -> Path:
    """Write the task's pruned model as ONNX; returns the path."""
    model, size = task_torch_model(model_or_bundles, input_size)
    example = torch.zeros(1, *size)
    buf = io.BytesIO()
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        # The TorchScript-based exporter announces its deprecation on every call.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        with torch.no_grad():
            torch.onnx.export(
                model,
                (example,),
                buf,
                input_names=["input"],
                output_names=["logits"],
                opset_version=opset,
                dynamic_axes=axes,
                do_constant_folding=True,
                dynamo=False,
            )
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


# -------------------------------------------------------------------- TFLite
def export_tflite(
    model_or_bundles: ModelOrBundles,
    path: str | os.PathLike,
    input_size: Sequence[int] | None = None,
    *,
    converter: str = "builtin",
) -> Path:
    """Write the task's pruned model as a TFLite flatbuffer; returns the path.

    ``converter="builtin"``: NHWC input ``[1, H, W, C]``; ``"litert-torch"``:
    NCHW input ``[1, C, H, W]`` (see the module doc)."""
    if converter not in TFLITE_CONVERTERS:
        raise ValueError(
            f"unknown TFLite converter {converter!r}; known: {', '.join(TFLITE_CONVERTERS)}"
        )
    model, size = task_torch_model(model_or_bundles, input_size)
    if converter == "builtin":
        payload = _tflite_builtin(model, size)
    else:
        payload = _tflite_litert_torch(model, size)
    path = Path(path)
    atomic_write_bytes(path, payload)
    return path


def _tflite_litert_torch(model: nn.Module, size: tuple[int, int, int]) -> bytes:
    try:
        import litert_torch
    except ImportError as e:
        raise ImportError(
            "TFLite export with converter='litert-torch' needs litert-torch: "
            "install spaedge[tflite] (pip install 'spaedge[tflite]' torch==2.13.0), "
            f"or use converter='builtin' ({e})"
        ) from e
    edge = litert_torch.convert(model.eval(), (torch.zeros(1, *size),))
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "model.tflite"
        edge.export(str(out))
        return out.read_bytes()


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as s
    except ImportError as e:
        raise ImportError(
            "TFLite export needs the LiteRT package for its schema: "
            f"pip install 'spaedge[export]' (ai-edge-litert) ({e})"
        ) from e
    import flatbuffers

    return s, flatbuffers


class _TFLiteWriter:
    """Tensors, buffers and operators of one TFLite subgraph, as schema objects."""

    def __init__(self, s):
        self.s = s
        self.buffers = [s.BufferT()]  # buffer 0: the empty buffer, by convention
        self.tensors: list = []
        self.operators: list = []
        self.opcodes: dict[int, int] = {}  # builtin code -> index in operatorCodes
        self.versions: dict[int, int] = {}  # builtin code -> the op version its tensors need
        self.shapes: list[list[int]] = []

    def tensor(
        self,
        name: str,
        shape: Sequence[int],
        data: np.ndarray | None = None,
        dtype: str = "float32",
        quant: tuple | None = None,
    ) -> int:
        """A tensor; ``quant`` = (scales, zero points[, quantized dimension])
        makes it a quantized one (one scale: per tensor)."""
        s = self.s
        t = s.TensorT()
        t.name = name
        t.shape = [int(v) for v in shape]
        t.type = {
            "float32": s.TensorType.FLOAT32,
            "int32": s.TensorType.INT32,
            "int8": s.TensorType.INT8,
        }[dtype]
        t.buffer = 0
        if quant is not None:
            q = s.QuantizationParametersT()
            q.scale = [float(v) for v in np.atleast_1d(quant[0])]
            q.zeroPoint = [int(v) for v in np.atleast_1d(quant[1])]
            q.quantizedDimension = int(quant[2]) if len(quant) > 2 else 0
            t.quantization = q
        if data is not None:
            arr = np.ascontiguousarray(data, dtype=dtype)
            if list(arr.shape) != t.shape:
                raise AssertionError(f"{name}: data shape {arr.shape} != {t.shape}")
            b = s.BufferT()
            b.data = np.frombuffer(
                arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes(), dtype=np.uint8
            )
            self.buffers.append(b)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        self.shapes.append(t.shape)
        return len(self.tensors) - 1

    def op(
        self,
        code: int,
        inputs: Sequence[int],
        outputs: Sequence[int],
        options_type: int = 0,
        options=None,
        version: int = 1,
    ) -> None:
        s = self.s
        if code not in self.opcodes:
            self.opcodes[code] = len(self.opcodes)
        self.versions[code] = max(self.versions.get(code, 1), version)
        o = s.OperatorT()
        o.opcodeIndex = self.opcodes[code]
        o.inputs = [int(i) for i in inputs]
        o.outputs = [int(i) for i in outputs]
        o.builtinOptionsType = options_type
        o.builtinOptions = options
        self.operators.append(o)

    def finish(self, inputs: Sequence[int], outputs: Sequence[int], description: str) -> bytes:
        s, flatbuffers = self.s, _schema()[1]
        codes = []
        for code, _ in sorted(self.opcodes.items(), key=lambda kv: kv[1]):
            c = s.OperatorCodeT()
            c.builtinCode = code
            c.deprecatedBuiltinCode = min(code, 127)  # the int8 field older readers use
            c.version = self.versions.get(code, 1)
            codes.append(c)
        sg = s.SubGraphT()
        sg.tensors, sg.operators = self.tensors, self.operators
        sg.inputs, sg.outputs = list(inputs), list(outputs)
        sg.name = "main"
        sig = s.SignatureDefT()
        sig.signatureKey = "serving_default"
        sig.subgraphIndex = 0
        sig.inputs = [_tensor_map(s, "input", inputs[0])]
        sig.outputs = [_tensor_map(s, "logits", outputs[0])]
        m = s.ModelT()
        m.version = 3
        m.operatorCodes = codes
        m.subgraphs = [sg]
        m.buffers = self.buffers
        m.description = description
        m.signatureDefs = [sig]
        builder = flatbuffers.Builder(1024)
        builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def _tensor_map(s, name: str, index: int):
    t = s.TensorMapT()
    t.name, t.tensorIndex = name, index
    return t


def _same_padding_matches(size: int, kernel: int, stride: int, pad: int) -> bool:
    """Whether TFLite SAME padding gives PyTorch's symmetric ``pad`` result here.

    SAME makes ceil(size / stride) outputs and puts total//2 rows before; the
    values depend only on the rows before and the output count."""
    out_torch = (size + 2 * pad - kernel) // stride + 1
    out_same = -(-size // stride)
    total = max((out_same - 1) * stride + kernel - size, 0)
    return out_same == out_torch and total // 2 == pad


def _tflite_builtin(
    model: nn.Module,
    size: tuple[int, int, int],
    qparams: dict[str, tuple[float, int]] | None = None,
) -> bytes:
    """Write the materialised ResNet ``model`` as TFLite, NHWC, batch 1.

    With ``qparams`` (graph value name -> (scale, s8 zero point), every value
    an op of the model writes, the graph input and output included) the model
    is full-integer: the float input is quantized once, every op runs on s8
    activations with per-channel s8 conv weights (per-tensor for the head),
    int32 biases, and the logits are dequantized at the end."""
    if not hasattr(model, "graph"):
        raise TypeError(
            f"the builtin TFLite writer exports spaedge ResNet task models, not {type(model).__name__}; "
            "use converter='litert-torch' for other models"
        )
    s, _ = _schema()
    B = s.BuiltinOperator
    graph = model.graph()
    nodes = graph["nodes"]
    consumers: dict[str, int] = {}
    for n in nodes:
        for i in n["inputs"]:
            consumers[i] = consumers.get(i, 0) + 1

    # Pass 1: fold BatchNorm into convs and ReLU into their producer; one
    # "virtual op" per TFLite op, in graph order.
    vops: list[dict] = []
    producer: dict[str, dict] = {}  # graph value name -> the virtual op that computes it
    for n in nodes:
        kind, name, out = n["op"], n["name"], n["output"]
        src = [producer[i] if i != graph["input"] else None for i in n["inputs"]]
        if kind == "conv":
            conv = model.get_submodule(name)
            w = conv.weight.detach().double().numpy()
            b = (
                conv.bias.detach().double().numpy()
                if conv.bias is not None
                else np.zeros(w.shape[0])
            )
            v = {
                "kind": "conv",
                "name": name,
                "src": src[0],
                "w": w,
                "b": b,
                "kernel": n["kernel"],
                "stride": n["stride"],
                "padding": n["padding"],
                "relu": False,
            }
        elif kind == "batchnorm":
            v = src[0]
            if v is None or v["kind"] != "conv" or consumers.get(n["inputs"][0], 0) != 1:
                raise ValueError(f"{name}: a batchnorm must follow a conv that nothing else reads")
            bn = model.get_submodule(name)
            scale = bn.weight.detach().double().numpy() / np.sqrt(
                bn.running_var.double().numpy() + n["eps"]
            )
            v["w"] = v["w"] * scale[:, None, None, None]
            v["b"] = (
                v["b"] - bn.running_mean.double().numpy()
            ) * scale + bn.bias.detach().double().numpy()
            v["value"] = out
            producer[out] = v
            continue
        elif kind == "relu":
            p = src[0]
            if (
                p is not None
                and p["kind"] in ("conv", "add")
                and not p["relu"]
                and consumers.get(n["inputs"][0], 0) == 1
            ):
                p["relu"] = True
                p["value"] = out
                producer[out] = p
                continue
            v = {"kind": "relu", "name": name, "src": src[0]}
        elif kind == "maxpool":
            v = {
                "kind": "maxpool",
                "name": name,
                "src": src[0],
                "kernel": n["kernel"],
                "stride": n["stride"],
                "padding": n["padding"],
            }
        elif kind == "add":
            v = {"kind": "add", "name": name, "srcs": src, "relu": False}
        elif kind == "gap":
            v = {"kind": "gap", "name": name, "src": src[0]}
        elif kind == "linear":
            fc = model.get_submodule(name)
            v = {
                "kind": "linear",
                "name": name,
                "src": src[0],
                "w": fc.weight.detach().double().numpy(),
                "b": fc.bias.detach().double().numpy(),
            }
        else:
            raise ValueError(
                f"node {name}: op {kind!r} is not supported by the builtin TFLite writer"
            )
        v["value"] = out
        vops.append(v)
        producer[out] = v

    # Pass 2: emit TFLite tensors and operators (NHWC, batch 1).
    w = _TFLiteWriter(s)
    c, h, wd = size
    int8 = qparams is not None
    # op versions the int8 tensors need (what LiteRT's converter writes)
    ver = (
        {B.CONV_2D: 3, B.ADD: 2, B.MAX_POOL_2D: 2, B.MEAN: 2, B.FULLY_CONNECTED: 4, B.PAD: 2}
        if int8
        else {}
    )
    dtype = "int8" if int8 else "float32"

    def qp(value: str):
        return qparams[value] if int8 else None

    x = w.tensor("input", [1, h, wd, c])
    inp = x
    if int8:
        xq = w.tensor("input/quantized", [1, h, wd, c], dtype="int8", quant=qp(graph["input"]))
        w.op(B.QUANTIZE, [x], [xq], version=2)
        x = xq
    quant_of = {x: qp(graph["input"])}  # tensor index -> its (scale, zero point)

    def act_tensor(name: str, shape, value: str) -> int:
        t = w.tensor(name, shape, dtype=dtype, quant=qp(value))
        quant_of[t] = qp(value)
        return t

    def nonneg(
        v,
    ) -> bool:  # the value is a ReLU output (so zero padding is like -inf padding for max)
        return v is not None and (v["kind"] == "relu" or v.get("relu", False))

    def pad(t: int, p: int, name: str, fill: float = 0.0) -> int:
        n_, hh, ww, cc = w.shapes[t]
        paddings = w.tensor(
            f"{name}/paddings", [4, 2], np.array([[0, 0], [p, p], [p, p], [0, 0]]), "int32"
        )
        out = w.tensor(
            f"{name}/pad", [n_, hh + 2 * p, ww + 2 * p, cc], dtype=dtype, quant=quant_of.get(t)
        )
        quant_of[out] = quant_of.get(t)
        if fill == 0.0:  # int8: PAD fills with the zero point, i.e. real 0
            w.op(
                B.PAD,
                [t, paddings],
                [out],
                s.BuiltinOptions.PadOptions,
                s.PadOptionsT(),
                ver.get(B.PAD, 1),
            )
        else:
            if int8:
                value = w.tensor(f"{name}/pad_value", [], np.array(-128), "int8", quant_of[t])
            else:
                value = w.tensor(f"{name}/pad_value", [], np.array(fill), "float32")
            w.op(
                B.PADV2,
                [t, paddings, value],
                [out],
                s.BuiltinOptions.PadV2Options,
                s.PadV2OptionsT(),
                2 if int8 else 1,
            )
        return out

    def act(v) -> int:
        return s.ActivationFunctionType.RELU if v.get("relu") else s.ActivationFunctionType.NONE

    def weights(name: str, wt: np.ndarray, b: np.ndarray, t_in: int, per_channel: bool):
        """The weight and bias tensors; int8: s8 symmetric weights (per output
        channel or per tensor), int32 bias at scale input scale x weight scale."""
        if not int8:
            return (
                w.tensor(f"{name}/weight", wt.shape, wt),
                w.tensor(f"{name}/bias", b.shape, b),
            )
        from spaedge.pack.quantize import quantize_weight

        f = wt.astype(np.float32)
        if per_channel:
            q, ws = quantize_weight(f)
        else:
            m = float(np.abs(f).max())
            ws = np.float32(m / 127 if m > 0 else 1.0)
            q = np.clip(np.rint(f / ws), -127, 127).astype(np.int8)
            ws = np.array([ws], np.float32)
        s_in = np.float32(quant_of[t_in][0])
        bs = (s_in * ws).astype(np.float32)
        bq = np.clip(np.rint(b / bs.astype(np.float64)), -(2**31), 2**31 - 1).astype(np.int32)
        zeros = np.zeros(len(ws), np.int64)
        return (
            w.tensor(f"{name}/weight", q.shape, q, "int8", (ws, zeros, 0)),
            w.tensor(f"{name}/bias", b.shape, bq, "int32", (bs, zeros, 0)),
        )

    for v in vops:
        srcs = v["srcs"] if v["kind"] == "add" else [v["src"]]
        t_in = [x if u is None else u["t"] for u in srcs]
        shape = w.shapes[t_in[0]]
        name = v["name"]
        if v["kind"] in ("conv", "maxpool"):
            k, st, p = v["kernel"], v["stride"], v["padding"]
            t = t_in[0]
            if p == 0:
                padding = s.Padding.VALID
            elif _same_padding_matches(shape[1], k, st, p) and _same_padding_matches(
                shape[2], k, st, p
            ):
                padding = s.Padding.SAME
            else:
                fill = (
                    0.0
                    if v["kind"] == "conv" or nonneg(v["src"])
                    else float(np.finfo(np.float32).min)
                )
                t = pad(t, p, name, fill)
                padding = s.Padding.VALID
            oh = (shape[1] + 2 * p - k) // st + 1
            ow = (shape[2] + 2 * p - k) // st + 1
            if v["kind"] == "conv":
                weight = v["w"].transpose(0, 2, 3, 1)  # OIHW -> OHWI
                wt, bt = weights(name, weight, v["b"], t, per_channel=True)
                out = act_tensor(name, [1, oh, ow, weight.shape[0]], v["value"])
                o = s.Conv2DOptionsT()
                o.padding, o.strideH, o.strideW = padding, st, st
                o.dilationHFactor = o.dilationWFactor = 1
                o.fusedActivationFunction = act(v)
                w.op(
                    B.CONV_2D,
                    [t, wt, bt],
                    [out],
                    s.BuiltinOptions.Conv2DOptions,
                    o,
                    ver.get(B.CONV_2D, 1),
                )
            else:
                # int8: max commutes with the affine map, so the output keeps
                # the input's parameters (as the converter requires)
                out = w.tensor(name, [1, oh, ow, shape[3]], dtype=dtype, quant=quant_of.get(t))
                quant_of[out] = quant_of.get(t)
                o = s.Pool2DOptionsT()
                o.padding, o.strideH, o.strideW = padding, st, st
                o.filterHeight = o.filterWidth = k
                o.fusedActivationFunction = s.ActivationFunctionType.NONE
                w.op(
                    B.MAX_POOL_2D,
                    [t],
                    [out],
                    s.BuiltinOptions.Pool2DOptions,
                    o,
                    ver.get(B.MAX_POOL_2D, 1),
                )
        elif v["kind"] == "relu":
            out = act_tensor(name, shape, v["value"])
            w.op(B.RELU, t_in, [out], version=2 if int8 else 1)
        elif v["kind"] == "add":
            out = act_tensor(name, shape, v["value"])
            o = s.AddOptionsT()
            o.fusedActivationFunction = act(v)
            w.op(B.ADD, t_in, [out], s.BuiltinOptions.AddOptions, o, ver.get(B.ADD, 1))
        elif v["kind"] == "gap":
            axes = w.tensor(f"{name}/axes", [2], np.array([1, 2]), "int32")
            out = act_tensor(name, [1, shape[3]], v["value"])
            o = s.ReducerOptionsT()
            o.keepDims = False
            w.op(
                B.MEAN,
                [t_in[0], axes],
                [out],
                s.BuiltinOptions.ReducerOptions,
                o,
                ver.get(B.MEAN, 1),
            )
        else:  # linear
            wt, bt = weights(name, v["w"], v["b"], t_in[0], per_channel=False)
            out = act_tensor(
                "logits/quantized" if int8 else "logits", [1, v["w"].shape[0]], v["value"]
            )
            o = s.FullyConnectedOptionsT()
            o.fusedActivationFunction = s.ActivationFunctionType.NONE
            o.keepNumDims = False
            w.op(
                B.FULLY_CONNECTED,
                [t_in[0], wt, bt],
                [out],
                s.BuiltinOptions.FullyConnectedOptions,
                o,
                ver.get(B.FULLY_CONNECTED, 1),
            )
            if int8:
                logits = w.tensor("logits", [1, v["w"].shape[0]])
                w.op(B.DEQUANTIZE, [out], [logits], version=2)
                out = logits
        v["t"] = out
    last = vops[-1]
    if last["kind"] != "linear":
        raise ValueError("the graph must end with the linear head")
    return w.finish(
        [inp],
        [last["t"]],
        f"spaedge task ({getattr(model, 'arch', 'resnet')}), NHWC input"
        + (", full-integer int8" if int8 else ""),
    )


def tflite_int8_qparams(
    model: nn.Module, images: np.ndarray | torch.Tensor, batch_size: int = 8
) -> dict[str, tuple[float, int]]:
    """(scale, s8 zero point) of every value of the materialised ``model``'s
    graph, from the minimum and maximum it takes on ``images`` (normalised
    NCHW), widened to contain 0: spaedge's u8 parameters
    (``quantize.activation_qparams``, the same statistic as its int8
    calibration) with the zero point moved by -128 for TFLite's s8."""
    from spaedge.pack.calibrate import fp32_values
    from spaedge.pack.quantize import activation_qparams

    graph = model.graph()
    names = [graph["input"]] + [n["output"] for n in graph["nodes"]]
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    lo = dict.fromkeys(names, 0.0)
    hi = dict.fromkeys(names, 0.0)
    with torch.no_grad():
        for b in range(0, len(x), batch_size):
            vals = fp32_values(model, graph, x[b : b + batch_size], set(names))
            vals[graph["output"]] = vals.pop("logits")
            for v in names:
                a, b = (float(m) for m in torch.aminmax(vals[v]))
                if not (np.isfinite(a) and np.isfinite(b)):
                    raise ValueError(f"value {v!r} is not finite on a calibration image")
                lo[v], hi[v] = min(lo[v], a), max(hi[v], b)
    out = {}
    for v in names:
        scale, zp = activation_qparams(lo[v], hi[v])
        out[v] = (float(scale), int(zp) - 128)
    return out


def export_tflite_int8(
    model_or_bundles: ModelOrBundles,
    path: str | os.PathLike,
    images: np.ndarray | torch.Tensor,
    input_size: Sequence[int] | None = None,
) -> Path:
    """Write the task's pruned model as a full-integer int8 TFLite flatbuffer
    (the builtin writer; NHWC float32 input, float32 logits): activations s8
    per tensor, calibrated by min/max on ``images`` (normalised NCHW, the
    images spaedge's int8 task was calibrated on), conv weights s8 per output
    channel and symmetric from the fp32 weights with BatchNorm folded, the
    head's per tensor, biases int32. What LiteRT's converter makes with
    full-integer quantization and a float interface. Returns the path."""
    model, size = task_torch_model(model_or_bundles, input_size)
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or tuple(images.shape[1:]) != size or len(images) < 1:
        raise ValueError(
            f"calibration images must be [N, {', '.join(map(str, size))}] (normalised NCHW), "
            f"got shape {list(images.shape)}"
        )
    payload = _tflite_builtin(model, size, tflite_int8_qparams(model, images))
    path = Path(path)
    atomic_write_bytes(path, payload)
    return path
