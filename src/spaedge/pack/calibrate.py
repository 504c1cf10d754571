"""int8 activation calibration of a task model, and its int8 network
(docs/int8.md, (b) and (c)). Toolchain: torch runs the fp32 model; what is
computed from it is ``spaedge.pack.quantize`` (NumPy).
"""

from __future__ import annotations

import copy
import hashlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spaedge.adapters.base import AdaptedLayer
from spaedge.errors import BundleError
from spaedge.pack.bundle import TaskSpec, load_task_model, task_bundle
from spaedge.pack.format import precision_of, read_bundle, read_metadata, write_bundle
from spaedge.pack.materialize import materialize
from spaedge.pack.quantize import (
    CALIBRATION_IMAGES,
    CALIBRATION_SELECTION,
    HISTOGRAM_BINS,
    STATISTICS,
    Int8Conv,
    Int8Network,
    activation_qparams,
    apply_conv,
    calibration_indices,
    check_statistic,
    clip_range,
    fold_batchnorm,
    int8_plan,
    int8_task_bundle,
    quantized_values,
)

__all__ = [
    "VALIDATION_IMAGES",
    "VALIDATION_SELECTION",
    "calibration_images",
    "validation_images",
    "calibration_info",
    "fp32_values",
    "ValueStats",
    "activation_stats",
    "act_params",
    "calibrate",
    "Int8Choice",
    "choose_statistic",
    "int8_task_from_bundles",
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


#: Validation images the statistic is chosen on, at most (docs/int8.md, (b)).
VALIDATION_IMAGES = 1000
#: The name of the validation image selection (its seed and its version).
VALIDATION_SELECTION = "spaedge/int8-validation/v1"


def validation_images(task, n: int = VALIDATION_IMAGES) -> tuple[torch.Tensor, np.ndarray]:
    """``(images, labels)``: at most ``n`` normalised images of ``task``'s
    ``val`` split (all when it has no more; else the first ``n`` of a
    permutation seeded by :data:`VALIDATION_SELECTION` and the task's name,
    sorted). Never the test split."""
    ds = task.split("val")
    if len(ds) < 1:
        raise ValueError(
            f"task {task.name!r} has no validation images to choose a calibration statistic on: "
            "give one (--calibration-statistic minmax, say)"
        )
    idx = _selection(VALIDATION_SELECTION, task.name, len(ds), n)
    x, y = ds.batch(idx.tolist())
    return x, np.asarray(y)


def _selection(what: str, name: str, available: int, n: int) -> np.ndarray:
    if n >= available:
        return np.arange(available)
    digest = hashlib.sha256(f"{what}:{name}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return np.sort(rng.permutation(available)[:n])


def calibration_info(
    n: int,
    statistic: str = "minmax",
    split: str = "train",
    selection: str = CALIBRATION_SELECTION,
    chosen_on: Mapping | None = None,
    seed: int | None = None,
) -> dict:
    """What the task bundle's ``info`` says about the calibration: the images
    (how many, of which split, which selection, and the ``seed`` of random
    ones: :func:`spaedge.pack.quantize.random_calibration_info`), the range
    statistic and, when it was chosen on validation images, what decided it."""
    cal = {
        "images": int(n),
        "split": split,
        "selection": selection,
        "statistic": check_statistic(statistic),
    }
    if seed is not None:
        cal["seed"] = int(seed)
    if chosen_on is not None:
        cal["chosen_on"] = dict(chosen_on)
    return {"calibration": cal}


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


def _batch_size(images: torch.Tensor) -> int:
    """Images per forward pass: 64 for small images, fewer for large ones
    (every value of the graph is held for a batch)."""
    pixels = int(np.prod(images.shape[2:])) if images.dim() > 2 else 1
    return int(min(64, max(1, (1 << 17) // max(pixels, 1))))


@dataclass
class ValueStats:
    """What calibration observed of one value: its range (0 included) and,
    for the statistics that need it, its histogram over that range
    (:data:`spaedge.pack.quantize.HISTOGRAM_BINS` equal bins, int64 counts)."""

    lo: float
    hi: float
    counts: np.ndarray | None = field(default=None, repr=False)


@torch.no_grad()
def activation_stats(
    model: nn.Module,
    images: torch.Tensor,
    histograms: bool = True,
    batch_size: int | None = None,
) -> dict[str, ValueStats]:
    """``{value: ValueStats}`` for every value the int8 executor quantizes, in
    the fp32 model (materialised as the packer does) on ``images``: the
    minimum and maximum, and with ``histograms`` a second pass counting the
    values in equal bins over that range. Deterministic: integer counts, and
    the same model, images and batch size give the same float values."""
    graph = model.graph()
    names = quantized_values(graph)
    plain = materialize(model).eval()
    bs = batch_size or _batch_size(images)
    lo = dict.fromkeys(names, 0.0)
    hi = dict.fromkeys(names, 0.0)
    for b in range(0, len(images), bs):
        vals = fp32_values(plain, graph, images[b : b + bs], set(names))
        for v in names:
            t = vals[v]
            if not torch.isfinite(t).all():
                raise ValueError(f"value {v!r} is not finite on a calibration image")
            lo[v] = min(lo[v], float(t.min()))
            hi[v] = max(hi[v], float(t.max()))
    stats = {v: ValueStats(lo[v], hi[v]) for v in names}
    if not histograms:
        return stats
    bins = HISTOGRAM_BINS
    counts = {v: torch.zeros(bins, dtype=torch.int64) for v in names}
    for b in range(0, len(images), bs):
        vals = fp32_values(plain, graph, images[b : b + bs], set(names))
        for v in names:
            if hi[v] == lo[v]:
                continue
            t = vals[v].reshape(-1).double()
            idx = ((t - lo[v]) * (bins / (hi[v] - lo[v]))).floor().clamp_(0, bins - 1).long()
            counts[v] += torch.bincount(idx, minlength=bins)
    for v in names:
        stats[v].counts = counts[v].numpy()
    return stats


def act_params(
    stats: Mapping[str, ValueStats], statistic: str = "minmax"
) -> dict[str, tuple[np.float32, int]]:
    """``{value: (scale, zero_point)}`` of the ranges ``statistic`` gives."""
    return {
        v: activation_qparams(*clip_range(statistic, s.lo, s.hi, s.counts))
        for v, s in stats.items()
    }


def calibrate(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int | None = None,
    statistic: str = "minmax",
) -> dict[str, tuple[np.float32, int]]:
    """``{value: (scale, zero_point)}`` for every value the int8 executor
    quantizes, from the range ``statistic`` gives each on ``images`` in the
    fp32 model (``minmax``: its minimum and maximum). Deterministic: the same
    model and images give the same parameters."""
    check_statistic(statistic)
    stats = activation_stats(model, images, statistic != "minmax", batch_size)
    return act_params(stats, statistic)


@dataclass
class Int8Choice:
    """The statistic chosen on validation images, and what decided it: per
    candidate, the top-1 agreement of the int8 runtime with the fp32 model,
    the mean squared difference of their logits, and the int8 accuracy
    (None without labels)."""

    statistic: str
    act: dict
    agreement: dict[str, float]
    logit_mse: dict[str, float]
    accuracy: dict[str, float | None]
    images: int

    def chosen_on(self) -> dict:
        return {
            "split": "val",
            "images": self.images,
            "selection": VALIDATION_SELECTION,
            "top1_agreement": {k: round(v, 6) for k, v in self.agreement.items()},
            "logit_mse": {k: float(f"{v:.6g}") for k, v in self.logit_mse.items()},
        }


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> np.ndarray:
    model.eval()
    return np.concatenate(
        [model(x[b : b + batch_size]).float().numpy() for b in range(0, len(x), batch_size)]
    )


def choose_statistic(
    model: nn.Module,
    stats: Mapping[str, ValueStats],
    int8_base_path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    meta: Mapping[str, str],
    val: tuple[torch.Tensor, np.ndarray | None],
    candidates: Sequence[str] = STATISTICS,
    threads: int | None = None,
) -> Int8Choice:
    """The range statistic whose int8 task agrees best with the fp32 model
    on the validation images ``val`` = ``(images, labels or None)``, run in
    the C++ runtime on the int8 base (the arithmetic of the device). Ties go
    to the smaller mean squared logit difference (a few hundred images
    agree on all but a handful; the logits still tell the candidates
    apart), then to the earlier candidate.
    ``tensors``/``meta``: the fp32 task bundle's. Deterministic."""
    from spaedge.runtime import Runtime

    x, y = val
    ref = _logits(model, x, _batch_size(x)).astype(np.float64)
    want = ref.argmax(1)
    h8 = read_metadata(int8_base_path)["content_hash"]
    rt = Runtime(int8_base_path, threads=threads)
    xs = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    agreement, mse, accuracy, acts = {}, {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="spaedge-int8-") as tmp:
        path = os.path.join(tmp, "candidate.safetensors")
        for stat in candidates:
            act = acts[stat] = act_params(stats, stat)
            write_bundle(path, *int8_task_bundle(tensors, meta, h8, act))
            rt.load_task(path)
            logits = rt.run(xs)
            got = logits.argmax(1)
            agreement[stat] = float((got == want).mean())
            mse[stat] = float(((logits.astype(np.float64) - ref) ** 2).mean())
            accuracy[stat] = None if y is None else float((got == np.asarray(y)).mean())
    order = {s: i for i, s in enumerate(candidates)}
    best = max(candidates, key=lambda s: (agreement[s], -mse[s], -order[s]))
    return Int8Choice(best, acts[best], agreement, mse, accuracy, len(x))


def int8_task_from_bundles(
    fp32_base_path: str | os.PathLike,
    fp32_task_path: str | os.PathLike,
    int8_base_path: str | os.PathLike,
    images: torch.Tensor,
    *,
    statistic: str = "auto",
    val: tuple[torch.Tensor, np.ndarray | None] | None = None,
    split: str = "train",
    selection: str = CALIBRATION_SELECTION,
    seed: int | None = None,
    threads: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, str], Int8Choice | None]:
    """Tensors and metadata of the int8 task bundle of an fp32 pair, on the
    int8 base at ``int8_base_path`` (quantized from ``fp32_base_path``),
    calibrated on ``images``. ``statistic`` ``auto`` chooses among
    :data:`STATISTICS` on ``val`` (required then; never the test split);
    any other is used as it is; ``split``, ``selection`` and ``seed`` say
    which images they are (:func:`calibration_info`). Returns the choice too
    (None when given)."""
    tensors, meta = read_bundle(fp32_task_path)
    if precision_of(meta) != "fp32":
        raise BundleError(
            f"{fp32_task_path}: field 'precision' is {precision_of(meta)!r}: it is quantized "
            "already; give its fp32 task bundle"
        )
    h8 = read_metadata(int8_base_path)["content_hash"]
    model, _, _ = load_task_model(fp32_base_path, fp32_task_path)
    choice = None
    if statistic == "auto":
        if val is None:
            raise ValueError("statistic 'auto' is chosen on validation images: give val")
        stats = activation_stats(model, images)
        choice = choose_statistic(model, stats, int8_base_path, tensors, meta, val, threads=threads)
        statistic, act = choice.statistic, choice.act
    else:
        act = calibrate(model, images, statistic=statistic)
    info = calibration_info(
        len(images),
        statistic,
        split,
        selection,
        None if choice is None else choice.chosen_on(),
        seed,
    )
    out, out_meta = int8_task_bundle(tensors, meta, h8, act, info)
    return out, out_meta, choice


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
    statistic: str = "minmax",
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of the int8 task bundle of ``model`` on the int8
    base ``int8_base_hash``, calibrated on ``images`` with ``statistic``
    (docs/int8.md, (b))."""
    tensors, meta = task_bundle(model, spec, int8_base_hash, info)
    act = calibrate(model, images, statistic=statistic)
    return int8_task_bundle(
        tensors, meta, int8_base_hash, act, calibration_info(len(images), statistic)
    )


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
