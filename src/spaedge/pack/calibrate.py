"""int8 activation calibration of a task model, and its int8 network
(docs/int8.md, (b) and (c)). Toolchain: torch runs the fp32 model; what is
computed from it is ``spaedge.pack.quantize`` (NumPy).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spaedge.adapters.base import AdaptedLayer
from spaedge.errors import BundleError
from spaedge.pack.bundle import TaskSpec, load_task_model, task_bundle
from spaedge.pack.format import precision_of, read_bundle
from spaedge.pack.materialize import materialize
from spaedge.pack.quantize import (
    CALIBRATION_IMAGES,
    CALIBRATION_SELECTION,
    Int8Conv,
    Int8Network,
    activation_qparams,
    apply_conv,
    calibration_indices,
    fold_batchnorm,
    int8_plan,
    int8_task_bundle,
    quantized_values,
)

__all__ = [
    "calibration_images",
    "calibration_info",
    "fp32_values",
    "calibrate",
    "int8_network",
    "int8_task",
    "int8_network_from_bundles",
]


def calibration_images(task, n: int = CALIBRATION_IMAGES) -> torch.Tensor:
    """The ``n`` normalised training images of ``task`` chosen for calibration
    (:func:`spaedge.pack.quantize.calibration_indices`), without augmentation."""
    ds = task.split("train")
    idx = calibration_indices(task.name, len(ds), n)
    return ds.batch(idx.tolist())[0]


def calibration_info(n: int) -> dict:
    """What the task bundle's ``info`` says about the calibration."""
    return {
        "calibration": {
            "images": int(n),
            "split": "train",
            "selection": CALIBRATION_SELECTION,
            "statistic": "minmax",
        }
    }


def fp32_values(
    plain: nn.Module, graph: Mapping, x: torch.Tensor, keep: set[str]
) -> dict[str, torch.Tensor]:
    """Run the materialised model ``plain`` node by node over ``graph`` on
    ``x``: the values named in ``keep`` (NCHW) and ``"logits"``."""
    vals = {graph["input"]: x}
    out = {}
    for n in graph["nodes"]:
        a = vals[n["inputs"][0]]
        op = n["op"]
        if op in ("conv", "batchnorm", "linear"):
            y = plain.get_submodule(n["name"])(a)
        elif op == "relu":
            y = F.relu(a)
        elif op == "add":
            y = a + vals[n["inputs"][1]]
        elif op == "maxpool":
            y = F.max_pool2d(a, n["kernel"], n["stride"], n["padding"])
        elif op == "gap":
            y = a.mean(dim=(2, 3))
        else:
            raise ValueError(f"node {n['name']!r}: unknown op {op!r}")
        vals[n["output"]] = y
    for v in keep:
        out[v] = vals[v]
    out["logits"] = vals[graph["output"]]
    return out


@torch.no_grad()
def calibrate(
    model: nn.Module, images: torch.Tensor, batch_size: int = 64
) -> dict[str, tuple[np.float32, int]]:
    """``{value: (scale, zero_point)}`` for every value the int8 executor
    quantizes, from the minimum and maximum each takes on ``images`` in the
    fp32 model (materialised as the packer does). Deterministic: the same
    model and images give the same parameters."""
    graph = model.graph()
    names = quantized_values(graph)
    plain = materialize(model).eval()
    lo = dict.fromkeys(names, 0.0)
    hi = dict.fromkeys(names, 0.0)
    for b in range(0, len(images), batch_size):
        vals = fp32_values(plain, graph, images[b : b + batch_size], set(names))
        for v in names:
            t = vals[v]
            if not torch.isfinite(t).all():
                raise ValueError(f"value {v!r} is not finite on a calibration image")
            lo[v] = min(lo[v], float(t.min()))
            hi[v] = max(hi[v], float(t.max()))
    return {v: activation_qparams(lo[v], hi[v]) for v in names}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


@torch.no_grad()
def int8_network(
    model: nn.Module,
    qbase: Mapping[str, np.ndarray],
    act: Mapping[str, tuple[np.float32, int]],
    update_dtype: torch.dtype = torch.float32,
) -> Int8Network:
    """The int8 network of a task model on an int8 base (``qbase``: the int8
    base bundle's tensors), applied as a switch does (docs/int8.md, (c)).

    ``update_dtype``: the dtype each layer's ``delta()`` is computed in
    before it is rounded to float32 (float64 measures how much the update's
    rounding moves the result)."""
    graph = model.graph()
    convs = {}
    bns = {n["name"]: n for n in graph["nodes"] if n["op"] == "batchnorm"}
    for step in int8_plan(graph):
        if step.op != "conv":
            continue
        layer = model.get_submodule(step.name)
        if not isinstance(layer, AdaptedLayer):
            raise TypeError(f"layer {step.name} is not adapted: call spaedge.adapters.adapt first")
        d = _delta(layer, update_dtype)
        o = layer.out_channels
        bias = (
            _np(layer.bias).astype(np.float32)
            if layer.bias is not None
            else np.zeros(o, np.float32)
        )
        bn_scale = None
        if step.batchnorm is not None:
            bn = model.get_submodule(step.batchnorm)
            bn_scale, bias = fold_batchnorm(
                _np(bn.weight),
                _np(bn.bias),
                _np(bn.running_mean),
                _np(bn.running_var),
                bns[step.batchnorm]["eps"],
                bias,
            )
        q, s = apply_conv(
            qbase[f"{step.name}.weight"],
            qbase[f"{step.name}.weight_scale"],
            _np(layer.out_index),
            _np(layer.in_index),
            d,
            bn_scale,
        )
        convs[step.name] = Int8Conv(q, s, bias, int(layer.stride[0]), int(layer.padding[0]))
    head_node = next(n for n in graph["nodes"] if n["op"] == "linear")
    head = model.get_submodule(head_node["name"])
    w = head.task_weight() if isinstance(head, AdaptedLayer) else head.weight
    return Int8Network(
        graph,
        convs,
        _np(w).astype(np.float32),
        _np(head.bias).astype(np.float32),
        dict(act),
    )


def _delta(layer: AdaptedLayer, dtype: torch.dtype) -> np.ndarray | None:
    if dtype == torch.float32:
        d = layer.delta()
    else:
        d = copy.deepcopy(layer).to(dtype).delta()
    return None if d is None else _np(d).astype(np.float32)


def int8_task(
    model: nn.Module,
    spec: TaskSpec,
    int8_base_hash: str,
    images: torch.Tensor,
    info: dict | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of the int8 task bundle of ``model`` on the int8
    base ``int8_base_hash``, calibrated on ``images`` (docs/int8.md, (b))."""
    tensors, meta = task_bundle(model, spec, int8_base_hash, info)
    act = calibrate(model, images)
    return int8_task_bundle(tensors, meta, int8_base_hash, act, calibration_info(len(images)))


def int8_network_from_bundles(base_path, task_path) -> Int8Network:
    """The int8 network of an int8 base and task bundle pair, as the runtime
    applies it at a switch (docs/int8.md, (c)): what the C++ runtime's int8
    output is checked against."""
    qbase, bmeta = read_bundle(base_path)
    tensors, meta = read_bundle(task_path)
    for path, m in ((base_path, bmeta), (task_path, meta)):
        if precision_of(m) != "int8":
            raise BundleError(f"{path}: field 'precision' is {precision_of(m)!r}, not 'int8'")
    model, _, _ = load_task_model(base_path, task_path)
    act = {}
    for v in quantized_values(model.graph()):
        s, z = tensors.get(f"{v}.act_scale"), tensors.get(f"{v}.act_zero_point")
        if s is None or z is None or s.shape != (1,) or z.shape != (1,):
            raise BundleError(
                f"{task_path}: tensors '{v}.act_scale' and '{v}.act_zero_point' must both be "
                "present, one number each (the quantization of a value the int8 executor stores)"
            )
        act[v] = (np.float32(s[0]), int(z[0]))
    return int8_network(model, qbase, act)
