"""int8: weight quantization of a base, activation parameters, and the int8
network in NumPy (docs/int8.md).

No torch: the device side and the checks of the C++ runtime use it. The
calibration that runs the fp32 model is ``spaedge.pack.calibrate``
(toolchain). The arithmetic follows the kernels' (csrc/kernels/README.md,
"int8") operation for operation:

- float32 operations are NumPy float32 operations (one IEEE rounding each,
  round half to even); ``rne`` is :func:`numpy.rint`;
- integer sums are taken in float64 matrix products, exact since every
  partial sum is an integer below 2^31 < 2^53, whatever the order;
- int32 to float32 goes through float64 (exact, then one rounding);
- ``fma(a, b, c)`` (float32) is :func:`fma32`: ``a * b`` is exact in
  float64 (24 + 24 < 53 bits), TwoSum gives the float64 sum with its exact
  error, rounding that sum to odd (the neighbour with an odd last bit when
  the error is not zero) and then to float32 once is the correctly rounded
  fused multiply-add (53 >= 24 + 2 bits).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "CALIBRATION_IMAGES",
    "CALIBRATION_SELECTION",
    "quantize_weight",
    "dequantize_weight",
    "quantize_base_tensors",
    "int8_base_bundle",
    "int8_task_bundle",
    "activation_qparams",
    "calibration_indices",
    "RANDOM_CALIBRATION_IMAGES",
    "RANDOM_CALIBRATION_SELECTION",
    "random_calibration_images",
    "random_calibration_info",
    "STATISTICS",
    "HISTOGRAM_BINS",
    "check_statistic",
    "clip_range",
    "fma32",
    "Int8Step",
    "int8_plan",
    "quantized_values",
    "fold_batchnorm",
    "apply_conv",
    "Int8Conv",
    "Int8Network",
    "reference_run",
    "reference_logits",
]

#: Calibration images per task by default (docs/int8.md, (b)).
CALIBRATION_IMAGES = 256
#: The name of the calibration image selection (its seed and its version).
CALIBRATION_SELECTION = "spaedge/int8-calibration/v1"
#: Random calibration images of a synthetic speed task by default: enough for
#: a min/max calibration of random weights, quick at 224x224.
RANDOM_CALIBRATION_IMAGES = 32
#: The name of the seeded random calibration images of synthetic speed tasks:
#: an int8 task bundle's ``info.calibration.selection`` when calibrated on
#: :func:`random_calibration_images` (its ``seed`` beside it).
RANDOM_CALIBRATION_SELECTION = "spaedge/int8-calibration-random/v1"

#: Range statistics of a value's calibration (docs/int8.md, (b)), in the order
#: a tie on validation is broken: ``minmax`` (the whole observed range),
#: ``percentile-P`` (each end clipped to its P % quantile: the top ``100 - P``
#: percent of the values above 0 and the bottom of those below 0 are
#: clipped), ``mse`` (the range, scaled about 0, whose expected squared
#: quantization error over the observed histogram is least).
STATISTICS = (
    "minmax",
    "percentile-99.9999",
    "percentile-99.999",
    "percentile-99.99",
    "percentile-99.9",
    "mse",
)
#: Histogram bins per value for the statistics other than ``minmax``.
HISTOGRAM_BINS = 1 << 14

_F32 = np.float32


# ---------------------------------------------------------------- weights


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 quantization of a weight ``[O, ...]``.

    Returns ``(q, scale)``: ``q`` int8 in [-127, 127] of ``w``'s shape and
    ``scale`` float32 ``[O]``, with ``scale[o] = f32(max |w[o]| / 127)`` (1
    for an all-zero row) and ``q = clamp(rne(f32(w / scale)), -127, 127)``,
    so that ``|w - scale * q| <= scale / 2`` up to one float32 rounding."""
    w = np.asarray(w, dtype=_F32)
    if w.ndim < 1 or w.shape[0] == 0:
        raise ValueError(f"a weight to quantize needs output channels, got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("a weight to quantize has a non-finite value")
    rows = w.reshape(w.shape[0], -1)
    m = np.abs(rows).max(axis=1) if rows.shape[1] else np.zeros(w.shape[0], _F32)
    scale = np.where(m > 0, m / _F32(127), _F32(1)).astype(_F32)
    q = np.clip(np.rint(rows / scale[:, None]), -127, 127).astype(np.int8)
    return q.reshape(w.shape), scale


def dequantize_weight(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``f32(scale[o] * q)``: the real weight an int8 base stores."""
    q = np.asarray(q)
    s = np.asarray(scale, dtype=_F32).reshape((-1,) + (1,) * (q.ndim - 1))
    return (s * q.astype(_F32)).astype(_F32)


def quantize_base_tensors(
    tensors: Mapping[str, np.ndarray], graph: Mapping
) -> dict[str, np.ndarray]:
    """The tensors of the int8 base bundle from an fp32 base bundle's
    (docs/int8.md, (a)): per conv ``L.weight`` int8 and ``L.weight_scale``;
    ``L.bias`` as it was."""
    out: dict[str, np.ndarray] = {}
    for node in graph["nodes"]:
        if node["op"] != "conv":
            continue
        name = node["name"]
        key = f"{name}.weight"
        if key not in tensors:
            raise ValueError(f"base tensor {key!r} is missing")
        q, s = quantize_weight(tensors[key])
        out[key], out[f"{name}.weight_scale"] = q, s
        if f"{name}.bias" in tensors:
            out[f"{name}.bias"] = np.asarray(tensors[f"{name}.bias"], dtype=_F32)
    return out


def int8_base_bundle(
    tensors: Mapping[str, np.ndarray], meta: Mapping[str, str]
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of the int8 base bundle quantized from an fp32
    base bundle's (as :func:`spaedge.pack.format.read_bundle` returns them):
    the weights quantized, ``precision`` = ``int8``, ``quantized_from`` = the
    fp32 base's content hash (docs/int8.md, (a))."""
    if meta.get("format") != "spaedge-base":
        raise ValueError(f"format {meta.get('format')!r}: only a base bundle is quantized")
    if meta.get("precision", "fp32") != "fp32":
        raise ValueError(f"precision {meta['precision']!r}: this base is quantized already")
    graph = json.loads(meta["graph"])
    out_meta = {k: v for k, v in meta.items() if k not in ("version", "content_hash")}
    out_meta["precision"] = "int8"
    out_meta["quantized_from"] = meta["content_hash"]
    return quantize_base_tensors(tensors, graph), out_meta


def int8_task_bundle(
    tensors: Mapping[str, np.ndarray],
    meta: Mapping[str, str],
    base_hash: str,
    act: Mapping[str, tuple[np.float32, int]],
    info: Mapping | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """An fp32 task bundle's tensors and metadata made an int8 task bundle:
    on the int8 base ``base_hash``, with ``V.act_scale`` and
    ``V.act_zero_point`` for every quantized value (docs/int8.md, (b));
    ``info`` entries (the calibration) join the task's ``info``."""
    if meta.get("format") != "spaedge-task":
        raise ValueError(f"format {meta.get('format')!r}: expected a task bundle")
    out = dict(tensors)
    for v, (scale, zp) in act.items():
        scale = np.float32(scale)
        if not (np.isfinite(scale) and scale > 0) or not 0 <= int(zp) <= 255:
            raise ValueError(
                f"value {v!r}: scale {scale} and zero point {zp} are not u8 parameters"
            )
        for name, arr in (
            (f"{v}.act_scale", np.array([scale], np.float32)),
            (f"{v}.act_zero_point", np.array([int(zp)], np.int32)),
        ):
            if name in out:
                raise ValueError(f"tensor {name!r} is in the task bundle already")
            out[name] = arr
    out_meta = {k: v for k, v in meta.items() if k not in ("version", "content_hash")}
    out_meta["base_hash"] = base_hash
    out_meta["precision"] = "int8"
    merged = json.loads(meta.get("info", "{}") or "{}")
    merged.update(info or {})
    out_meta["info"] = json.dumps(merged)
    return out, out_meta


# ---------------------------------------------------------------- activations


def activation_qparams(lo: float, hi: float) -> tuple[np.float32, int]:
    """u8 parameters ``(scale, zero_point)`` of a value observed in ``[lo, hi]``.

    The range is widened to contain 0 (real 0, the padding, is exact), then
    ``scale = f32((hi - lo) / 255)`` (1 when both are 0) and
    ``zero_point = clamp(rne(-lo / scale), 0, 255)``."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"activation range [{lo}, {hi}] is not finite")
    if hi == lo:
        return _F32(1), 0
    scale = _F32((hi - lo) / 255.0)
    zp = int(np.clip(np.rint(-lo / float(scale)), 0, 255))
    return scale, zp


def calibration_indices(task: str, available: int, n: int = CALIBRATION_IMAGES) -> np.ndarray:
    """Which of ``available`` training images calibrate ``task``: all when
    ``n >= available``, else the first ``n`` of a permutation seeded by the
    task's name (docs/int8.md, (b)), sorted."""
    if n < 1:
        raise ValueError(f"calibration needs at least one image, got {n}")
    if available < 1:
        raise ValueError(f"task {task!r} has no training images to calibrate on")
    if n >= available:
        return np.arange(available)
    digest = hashlib.sha256(f"{CALIBRATION_SELECTION}:{task}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return np.sort(rng.permutation(available)[:n])


def random_calibration_images(
    input_size, n: int = RANDOM_CALIBRATION_IMAGES, seed: int = 0
) -> np.ndarray:
    """``n`` normalised "images" calibrating a synthetic speed task (one
    without data): standard normal values (about what a normalised natural
    image spans), float32 ``[n, C, H, W]`` from
    ``numpy.random.default_rng(seed)``. The same arguments give the same
    bytes on every machine, without torch; fewer images of the same seed are
    a prefix of more. ``spaedge quantize --calibration random``,
    ``spaedge.bench.synthetic.make_int8_pair`` and the benchmarks' int8 peers
    (``spaedge.bench.engines.calibration_of``) all use these."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"calibration needs at least one image, got {n!r}")
    size = tuple(int(v) for v in input_size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"an input size is (C, H, W) of positive sizes, got {input_size!r}")
    return np.random.default_rng(int(seed)).standard_normal((int(n), *size)).astype(_F32)


def random_calibration_info(
    n: int = RANDOM_CALIBRATION_IMAGES, seed: int = 0, statistic: str = "minmax"
) -> dict:
    """The ``info.calibration`` of an int8 task calibrated on
    ``random_calibration_images(input_size, n, seed)``: what
    ``calibration_of`` rebuilds them from."""
    return {
        "images": int(n),
        "split": "random",
        "selection": RANDOM_CALIBRATION_SELECTION,
        "seed": int(seed),
        "statistic": check_statistic(statistic),
    }


def check_statistic(name: str) -> str:
    """``name`` if it is a range statistic: one of :data:`STATISTICS`, or
    ``percentile-P`` for any P in (50, 100); else ValueError saying which are."""
    if name in STATISTICS:
        return name
    head, _, p = str(name).partition("-")
    if head == "percentile":
        try:
            v = float(p)
        except ValueError:
            v = float("nan")
        if 50 < v < 100:
            return name
    raise ValueError(
        f"calibration statistic {name!r}: use one of {', '.join(STATISTICS)} "
        "or percentile-P with P in (50, 100)"
    )


def clip_range(
    statistic: str, lo: float, hi: float, counts: np.ndarray | None
) -> tuple[float, float]:
    """The range ``[lo', hi']`` a statistic gives a value observed in ``[lo, hi]``
    (0 included) with ``counts``, its histogram of equal bins over ``[lo, hi]``
    (unused by ``minmax``). Integer counts and float64 edges: the same
    histogram gives the same range on every machine."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    check_statistic(statistic)
    if statistic == "minmax" or hi == lo:
        return lo, hi
    counts = np.asarray(counts, dtype=np.int64)
    bins = len(counts)
    width = (hi - lo) / bins
    edges = lo + width * np.arange(bins + 1, dtype=np.float64)
    edges[-1] = hi
    if statistic == "mse":
        return _mse_range(lo, hi, counts, edges)
    # The P % and (100 - P) % quantiles of all the values (a ReLU's zeros
    # included), each to its bin's outer edge, then widened to contain 0.
    tail = int(counts.sum()) * (100.0 - float(statistic.partition("-")[2])) / 100.0
    cum = np.cumsum(counts)
    k_hi = int(np.flatnonzero(cum[-1] - cum <= tail)[0])
    k_lo = int(np.flatnonzero(cum - counts <= tail)[-1])
    return min(float(edges[k_lo]), 0.0), max(float(edges[k_hi + 1]), 0.0)


def _mse_range(lo: float, hi: float, counts: np.ndarray, edges: np.ndarray) -> tuple[float, float]:
    """``[a lo, a hi]`` for the ``a`` in a fixed grid of (0.01, 1] whose u8
    quantization has the least expected squared error over the histogram
    (bin centres; uniform error ``step^2 / 12`` inside, the clipping
    distance outside); ties to the larger ``a``."""
    centres = (edges[:-1] + edges[1:]) / 2
    w = counts.astype(np.float64)
    best, best_a = np.inf, 1.0
    for a in np.geomspace(1.0, 0.01, 200):
        a_lo, a_hi = a * lo, a * hi
        step = (a_hi - a_lo) / 255.0
        inside = (centres >= a_lo) & (centres <= a_hi)
        err = np.where(
            inside, step * step / 12.0, np.minimum((centres - a_lo) ** 2, (centres - a_hi) ** 2)
        )
        e = float((w * err).sum())
        if e < best:
            best, best_a = e, float(a)
    return best_a * lo, best_a * hi


# ---------------------------------------------------------------- arithmetic


def fma32(a, b, c) -> np.ndarray:
    """Correctly rounded float32 ``fma(a, b, c)``, elementwise (see the module doc)."""
    a = np.asarray(a, _F32).astype(np.float64)
    b = np.asarray(b, _F32).astype(np.float64)
    c = np.asarray(c, _F32).astype(np.float64)
    p = a * b  # exact
    s = p + c
    bp = s - c  # TwoSum: p + c = s + e exactly
    e = (p - bp) + (c - (s - bp))
    inexact = e != 0
    odd = (s.view(np.int64) & 1).astype(bool)
    nudge = inexact & ~odd
    s = np.where(nudge, np.nextafter(s, np.where(e > 0, np.inf, -np.inf)), s)
    return s.astype(_F32)


def _i2f(v: np.ndarray) -> np.ndarray:
    """int32 values to float32, one rounding (via exact float64)."""
    return np.asarray(v).astype(np.float64).astype(_F32)


# ---------------------------------------------------------------- the plan


@dataclass
class Int8Step:
    """One step of the int8 executor (docs/int8.md, (d))."""

    op: str  # "conv", "maxpool", "gap", "linear"
    name: str  # conv or head node, or the pooling node
    input: str  # value read
    output: str  # value written
    batchnorm: str | None = None  # conv: its folded BatchNorm node
    residual: str | None = None  # conv: the fused add's other input
    relu: bool = False
    node: dict = field(default_factory=dict)


def int8_plan(graph: Mapping) -> list[Int8Step]:
    """The graph as int8 steps, fused as the runtime fuses (exec_plan.cpp).

    Raises ValueError naming the node when the graph has an add or relu that
    no conv chain absorbs (int8 has no standalone add or relu)."""
    nodes = graph["nodes"]
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for v in n["inputs"]:
            consumers.setdefault(v, []).append(i)
    output = graph["output"]

    def sole(v: str, op: str) -> int:
        c = consumers.get(v, [])
        if v == output or len(c) != 1 or nodes[c[0]]["op"] != op:
            return -1
        return c[0]

    owner, last, residual, end = {}, {}, {}, {}
    chain_of: dict[str, int] = {}
    bn_of, has_add = {}, set()
    for i, n in enumerate(nodes):
        if n["op"] != "conv":
            continue
        owner[i] = last[i] = i
        v = n["output"]
        b = sole(v, "batchnorm")
        if b >= 0:
            owner[b], last[i], bn_of[i] = i, b, nodes[b]["name"]
            v = nodes[b]["output"]
        end[i] = v
        chain_of[v] = i
    for a, n in enumerate(nodes):
        if n["op"] != "add" or n["inputs"][0] == n["inputs"][1]:
            continue
        best, best_k = -1, -1
        for k in (0, 1):
            u = n["inputs"][k]
            c = chain_of.get(u, -1)
            if c < 0 or c in has_add or sole(u, "add") != a:
                continue
            if c > best:
                best, best_k = c, k
        if best < 0:
            continue
        u = n["inputs"][best_k]
        residual[best] = n["inputs"][1 - best_k]
        has_add.add(best)
        owner[a], last[best] = best, a
        chain_of.pop(u, None)
        end[best] = n["output"]
        chain_of[n["output"]] = best
    for i, n in enumerate(nodes):
        if n["op"] == "conv":
            r = sole(end[i], "relu")
            if r >= 0:
                owner[r], last[i] = i, r
                end[i] = nodes[r]["output"]
    steps = []
    for i, n in enumerate(nodes):
        head = owner.get(i)
        if head is not None:
            if last[head] != i:
                continue
            h = nodes[head]
            steps.append(
                Int8Step(
                    "conv",
                    h["name"],
                    h["inputs"][0],
                    end[head],
                    batchnorm=bn_of.get(head),
                    residual=residual.get(head),
                    relu=n["op"] == "relu",
                    node=h,
                )
            )
        elif n["op"] in ("maxpool", "gap", "linear"):
            steps.append(Int8Step(n["op"], n["name"], n["inputs"][0], n["output"], node=n))
        else:
            raise ValueError(
                f"node {n['name']!r} ({n['op']}) is not fused into a conv step: int8 runs only "
                "conv chains (conv, batchnorm, add, relu), maxpool, gap and the linear head"
            )
    return steps


def quantized_values(graph: Mapping) -> list[str]:
    """The values an int8 task bundle quantizes, in execution order: the graph
    input and the end of each conv chain (docs/int8.md, (b))."""
    return [graph["input"]] + [s.output for s in int8_plan(graph) if s.op == "conv"]


# ---------------------------------------------------------------- switch time


def fold_batchnorm(gamma, beta, mean, var, eps: float, bias) -> tuple[np.ndarray, np.ndarray]:
    """``(bn_scale, bias)`` folded as the runtime folds them (task.cpp): in
    double, ``s = gamma / sqrt(var + eps)``, ``bias' = (bias - mean) * s + beta``,
    each rounded once to float32."""
    g = np.asarray(gamma, _F32).astype(np.float64)
    v = np.asarray(var, _F32).astype(np.float64) + float(eps)
    if not (v > 0).all():
        raise ValueError("a BatchNorm's running_var plus eps is not positive")
    s = g / np.sqrt(v)
    b = np.asarray(bias, _F32).astype(np.float64)
    m = np.asarray(mean, _F32).astype(np.float64)
    folded = (b - m) * s + np.asarray(beta, _F32).astype(np.float64)
    return s.astype(_F32), folded.astype(_F32)


def apply_conv(
    q: np.ndarray,
    scale: np.ndarray,
    out_index: np.ndarray,
    in_index: np.ndarray,
    update: np.ndarray | None,
    bn_scale: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """A task's int8 conv weight from the int8 base (docs/int8.md, (c)):
    ``(q' [O', I', k, k] int8, wscale' [O'] float32)``.

    Without an ``update`` the kept s8 values stay and BN goes into the
    scale; with one, the kept rows are dequantized, the update added, BN
    folded and the rows requantized per output channel."""
    out_index, in_index = np.asarray(out_index), np.asarray(in_index)
    qk = q[out_index][:, in_index]
    s = np.asarray(scale, _F32)[out_index]
    bn = np.ones(len(out_index), _F32) if bn_scale is None else np.asarray(bn_scale, _F32)
    if update is None:
        return np.ascontiguousarray(qk), (s * bn).astype(_F32)
    w = dequantize_weight(qk, s)
    w = (w + np.asarray(update, _F32)).astype(_F32)
    w = (w * bn[:, None, None, None]).astype(_F32)
    return quantize_weight(w)


@dataclass
class Int8Conv:
    """One conv of a task as the int8 runtime holds it after a switch."""

    q: np.ndarray  # [O', I', k, k] int8
    wscale: np.ndarray  # [O'] float32, BN folded
    bias: np.ndarray  # [O'] float32, BN folded
    stride: int
    padding: int


@dataclass
class Int8Network:
    """A task's int8 network: the graph's steps, each conv applied, the
    head, and every quantized value's ``(scale, zero_point)``."""

    graph: dict
    convs: dict[str, Int8Conv]
    head_weight: np.ndarray  # [classes, C'] float32
    head_bias: np.ndarray  # [classes] float32
    act: dict[str, tuple[np.float32, int]]


# ---------------------------------------------------------------- the network


def _quantize_input(x: np.ndarray, scale: np.float32, zp: int) -> np.ndarray:
    inv = _F32(1) / _F32(scale)
    t = (x.astype(_F32) * inv).astype(_F32)
    t = np.clip(t, _F32(-zp), _F32(255 - zp))
    return (np.rint(t).astype(np.int32) + zp).astype(np.uint8)


def _patches(x: np.ndarray, k: int, stride: int, pad: int) -> np.ndarray:
    """``x`` [N, H, W, C] (float64, zero padding) as [N, OH, OW, k*k*C] in (ky, kx, c) order."""
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    cols = [
        xp[:, ky : ky + stride * (oh - 1) + 1 : stride, kx : kx + stride * (ow - 1) + 1 : stride]
        for ky in range(k)
        for kx in range(k)
    ]
    return np.concatenate(cols, axis=3)


def _qconv(
    x: np.ndarray,
    conv: Int8Conv,
    s_in: np.float32,
    z_in: int,
    s_out: np.float32,
    z_out: int,
    res: tuple[np.ndarray, np.float32, int] | None,
    relu: bool,
) -> np.ndarray:
    o, _, k, _ = conv.q.shape
    a = _patches(x.astype(np.float64) - z_in, k, conv.stride, conv.padding)
    wk = conv.q.transpose(0, 2, 3, 1).reshape(o, -1).astype(np.float64)  # OHWI rows
    acc = a @ wk.T  # exact integers
    mul = ((_F32(s_in) * conv.wscale).astype(_F32) / _F32(s_out)).astype(_F32)
    add = (conv.bias / _F32(s_out)).astype(_F32)
    t = fma32(_i2f(acc), mul, add)
    if res is not None:
        rq, rs, rz = res
        res_mul = _F32(rs) / _F32(s_out)
        t = fma32(_i2f(rq.astype(np.int32) - rz), res_mul, t)
    lo = _F32(0) if relu else _F32(-z_out)
    t = np.minimum(np.maximum(t, lo), _F32(255 - z_out))
    return (np.rint(t).astype(np.int32) + z_out).astype(np.uint8)


def _qmaxpool(x: np.ndarray, k: int, stride: int, pad: int) -> np.ndarray:
    # In-bounds maximum; u8 0 padding never exceeds it (the kernel starts from 0).
    p = _patches(x.astype(np.float64), 1, 1, pad)  # padded copy, zeros
    n, h, w, c = p.shape
    oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
    out = np.zeros((n, oh, ow, c), np.uint8)
    for ky in range(k):
        for kx in range(k):
            win = p[
                :,
                ky : ky + stride * (oh - 1) + 1 : stride,
                kx : kx + stride * (ow - 1) + 1 : stride,
            ]
            out = np.maximum(out, win.astype(np.uint8))
    return out


def _qgap(x: np.ndarray, scale: np.float32, zp: int) -> np.ndarray:
    n = x.shape[1] * x.shape[2]
    sums = x.astype(np.int64).sum(axis=(1, 2)) - n * zp
    m = (_F32(scale) / _F32(n)).astype(_F32)
    return (_i2f(sums) * m).astype(_F32)


def reference_run(
    net: Int8Network, x: np.ndarray, batch: int = 32
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The int8 network on normalised float input ``x`` [N, C, H, W]:
    ``(logits float64 [N, classes], {quantized value: u8 NHWC})``, computed
    ``batch`` images at a time (each image's result does not depend on it)."""
    x = np.asarray(x, _F32)
    parts = [_run(net, x[i : i + batch]) for i in range(0, len(x), batch)]
    logits = np.concatenate([p[0] for p in parts])
    values = {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]} if parts else {}
    return logits, values


def _run(net: Int8Network, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    graph = net.graph
    vin = graph["input"]
    s, z = net.act[vin]
    values = {vin: _quantize_input(x.transpose(0, 2, 3, 1), s, z)}
    qp = {vin: (s, z)}
    feats = logits = None
    for step in int8_plan(graph):
        if step.op == "conv":
            s_in, z_in = qp[step.input]
            s_out, z_out = net.act[step.output]
            res = None
            if step.residual is not None:
                res = (values[step.residual], *qp[step.residual])
            values[step.output] = _qconv(
                values[step.input],
                net.convs[step.name],
                s_in,
                z_in,
                s_out,
                z_out,
                res,
                step.relu,
            )
            qp[step.output] = (s_out, z_out)
        elif step.op == "maxpool":
            n = step.node
            values[step.output] = _qmaxpool(
                values[step.input], n["kernel"], n["stride"], n["padding"]
            )
            qp[step.output] = qp[step.input]
        elif step.op == "gap":
            feats = _qgap(values[step.input], *qp[step.input])
        else:  # linear head, in float64: exact products, the same sum for any batch
            w = net.head_weight.astype(np.float64)
            prod = feats.astype(np.float64)[:, None, :] * w[None]
            logits = prod.sum(axis=2) + net.head_bias.astype(np.float64)
    return logits, values


def reference_logits(net: Int8Network, x: np.ndarray, batch: int = 32) -> np.ndarray:
    """Logits (float64) of the int8 network on normalised input [N, C, H, W]."""
    return reference_run(net, x, batch)[0]
