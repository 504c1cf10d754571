"""Plain-numpy reference of the spaedge task math, and tiny bundle builders.

No torch: the runtime tests must run on a device-like install (numpy +
safetensors). The reference deliberately does NOT fold BatchNorm or reorder
anything: it follows docs/format.md literally, in float64, so it checks the
runtime's gather/merge/fold/pack and fused execution independently.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
from safetensors.numpy import save as st_save

# ---- bundle bytes -----------------------------------------------------------------


def data_section(buf: bytes) -> bytes:
    (n,) = struct.unpack("<Q", buf[:8])
    return buf[8 + n :]


def canonical_hash(buf: bytes) -> str:
    """The content hash of format version 4 of safetensors bytes, written from
    docs/format.md independently of spaedge's writer and C++ reader: SHA-256
    of the metadata but content_hash (count, then length-prefixed UTF-8 key
    and value by key bytes), the tensor table (count, then length-prefixed
    name and dtype, ndim, dims, begin, end by name bytes), then the data
    section; every number u64 little-endian."""
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8 : 8 + n])

    def u64(v: int) -> bytes:
        return struct.pack("<Q", v)

    def s(text: str) -> bytes:
        b = text.encode("utf-8")
        return u64(len(b)) + b

    meta = {k: v for k, v in header.get("__metadata__", {}).items() if k != "content_hash"}
    out = u64(len(meta)) + b"".join(
        s(k) + s(meta[k]) for k in sorted(meta, key=lambda k: k.encode("utf-8"))
    )
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: k.encode("utf-8"))
    out += u64(len(names))
    for k in names:
        e = header[k]
        out += s(k) + s(e["dtype"]) + u64(len(e["shape"])) + b"".join(u64(d) for d in e["shape"])
        out += u64(e["data_offsets"][0]) + u64(e["data_offsets"][1])
    return hashlib.sha256(out + buf[8 + n :]).hexdigest()


def bundle_bytes(tensors: dict, metadata: dict) -> bytes:
    """safetensors bytes with version "4" (unless given) and a correct content_hash added."""
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    meta = {"version": "4", **metadata}
    first = st_save(arrays, metadata=meta)
    return st_save(arrays, metadata={**meta, "content_hash": canonical_hash(first)})


def write(path, tensors: dict, metadata: dict) -> str:
    """Writes a bundle; returns its content hash."""
    buf = bundle_bytes(tensors, metadata)
    Path(path).write_bytes(buf)
    return canonical_hash(buf)


def rewrite_header(buf: bytes, edit) -> bytes:
    """Bytes with the JSON header replaced by edit(header_dict), data kept, the
    content hash left as it was (stale unless the edit changed nothing hashed)."""
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8 : 8 + n])
    header = edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + buf[8 + n :]


# ---- toy base graphs -------------------------------------------------------------------


def conv(name, inp, cin, cout, k, stride=1, pad=None):
    return {
        "name": name,
        "op": "conv",
        "inputs": [inp],
        "output": name,
        "kernel": k,
        "stride": stride,
        "padding": k // 2 if pad is None else pad,
        "in_channels": cin,
        "out_channels": cout,
    }


def bn(name, inp):
    return {"name": name, "op": "batchnorm", "inputs": [inp], "output": name, "eps": 1e-5}


def op(kind, name, *inputs, **fields):
    return {"name": name, "op": kind, "inputs": list(inputs), "output": name, **fields}


def toy_graph():
    """conv-bn-relu stem, maxpool, an identity residual block, a strided
    downsample block (1x1 projection shortcut), a biased conv without BN, gap,
    linear head."""
    n = [
        conv("conv1", "x", 3, 8, 3),
        bn("bn1", "conv1"),
        op("relu", "relu1", "bn1"),
        op("maxpool", "pool", "relu1", kernel=3, stride=2, padding=1),
        conv("l1.conv1", "pool", 8, 8, 3),
        bn("l1.bn1", "l1.conv1"),
        op("relu", "l1.relu1", "l1.bn1"),
        conv("l1.conv2", "l1.relu1", 8, 8, 3),
        bn("l1.bn2", "l1.conv2"),
        op("add", "l1.add", "l1.bn2", "pool"),
        op("relu", "l1.relu2", "l1.add"),
        conv("l2.conv1", "l1.relu2", 8, 12, 3, stride=2),
        bn("l2.bn1", "l2.conv1"),
        op("relu", "l2.relu1", "l2.bn1"),
        conv("l2.conv2", "l2.relu1", 12, 12, 3),
        bn("l2.bn2", "l2.conv2"),
        conv("l2.down", "l1.relu2", 8, 12, 1, stride=2, pad=0),
        bn("l2.down_bn", "l2.down"),
        op("add", "l2.add", "l2.bn2", "l2.down_bn"),
        op("relu", "l2.relu2", "l2.add"),
        conv("mix", "l2.relu2", 12, 10, 1, pad=0),
        op("relu", "mix_relu", "mix"),
        op("gap", "avgpool", "mix_relu"),
        op("linear", "fc", "avgpool"),
    ]
    n[-1]["output"] = "logits"
    return {"input": "x", "input_channels": 3, "nodes": n, "output": "logits"}


def unfused_graph():
    """Shapes that defeat fusion: a BN output read twice, a standalone add of two
    relus (add + relu fused as one step), an add of a value with itself, a
    maxpool feeding an add, relu after the head."""
    n = [
        conv("c1", "x", 2, 6, 3),
        bn("b1", "c1"),
        op("relu", "r1", "b1"),
        conv("c2", "b1", 6, 6, 1, pad=0),  # b1 read by r1 and c2: no conv+relu fusion for c1
        op("relu", "r2", "c2"),
        op("add", "a1", "r1", "r2"),
        op("relu", "ar", "a1"),
        op("add", "twice", "ar", "ar"),
        op("maxpool", "mp", "twice", kernel=2, stride=2, padding=0),
        conv("c3", "mp", 6, 6, 3),
        op("add", "a2", "c3", "mp"),
        op("gap", "g", "a2"),
        op("linear", "head", "g"),
        op("relu", "out", "head"),
    ]
    return {"input": "x", "input_channels": 2, "nodes": n, "output": "out"}


def base_tensors(graph, rng, conv_bias=("mix", "c2")):
    t = {}
    for node in graph["nodes"]:
        if node["op"] == "conv":
            k = node["kernel"]
            fan = node["in_channels"] * k * k
            t[node["name"] + ".weight"] = (
                rng.standard_normal((node["out_channels"], node["in_channels"], k, k))
                / np.sqrt(fan)
            ).astype(np.float32)
            if node["name"] in conv_bias:
                t[node["name"] + ".bias"] = (
                    0.1 * rng.standard_normal(node["out_channels"])
                ).astype(np.float32)
    return t


def write_base(path, graph, tensors, model="toy"):
    return write(
        path, tensors, {"format": "spaedge-base", "model": model, "graph": json.dumps(graph)}
    )


def toy_base(directory, rng):
    """The toy graph's base with random weights, written to DIRECTORY/base.safetensors:
    (graph, base tensors, content hash)."""
    graph = toy_graph()
    base = base_tensors(graph, rng)
    return graph, base, write_base(Path(directory) / "base.safetensors", graph, base)


def _keep(rng, n, k):
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int32)


def task_tensors(graph, rng, keep_frac=0.6, rank=2, method="splora", classes=5, task_bias=()):
    """Random task tensors with consistent, ragged kept channels.

    Channels are kept per 'channel group' so residual adds stay consistent:
    outputs joined by an add share one out_index."""
    nodes = graph["nodes"]
    by_out = {n["output"]: n for n in nodes}

    def root_conv(value):
        # Walk back through bn/relu/maxpool/gap to the conv defining a value's channels.
        while value in by_out:
            n = by_out[value]
            if n["op"] == "conv":
                return n["name"]
            if n["op"] == "add":
                return root_conv(n["inputs"][0])
            value = n["inputs"][0]
        return None

    # Union-find over convs whose outputs meet in an add.
    parent = {}

    def find(a):
        while parent.get(a, a) != a:
            a = parent[a]
        return a

    for n in nodes:
        if n["op"] == "add":
            a, b = root_conv(n["inputs"][0]), root_conv(n["inputs"][1])
            if a and b:
                parent[find(a)] = find(b)
    group_keep = {}
    t = {}
    lists = {graph["input"]: np.arange(graph["input_channels"], dtype=np.int32)}
    for n in nodes:
        name, inp = n["name"], n["inputs"][0]
        if n["op"] == "conv":
            g = find(name)
            if g not in group_keep:
                O = n["out_channels"]
                group_keep[g] = _keep(
                    rng,
                    O,
                    max(
                        1,
                        int(round(O * keep_frac))
                        - (int(rng.integers(0, 2)) if keep_frac < 1 else 0),
                    ),
                )
            out_idx = group_keep[g]
            in_idx = lists[inp]
            t[name + ".out_index"] = out_idx
            t[name + ".in_index"] = in_idx
            O, I, k = len(out_idx), len(in_idx), n["kernel"]
            if method == "splora":
                t[name + ".lora_a"] = (0.3 * rng.standard_normal((rank, I))).astype(np.float32)
                t[name + ".lora_b"] = (0.3 * rng.standard_normal((O, rank))).astype(np.float32)
            elif method == "finetune":
                t[name + ".weight_delta"] = (0.05 * rng.standard_normal((O, I, k, k))).astype(
                    np.float32
                )
            if name in task_bias:
                t[name + ".bias"] = (0.1 * rng.standard_normal(O)).astype(np.float32)
            lists[n["output"]] = out_idx
        elif n["op"] == "batchnorm":
            C = len(lists[inp])
            t[name + ".weight"] = (1 + 0.2 * rng.standard_normal(C)).astype(np.float32)
            t[name + ".bias"] = (0.1 * rng.standard_normal(C)).astype(np.float32)
            t[name + ".running_mean"] = (0.1 * rng.standard_normal(C)).astype(np.float32)
            t[name + ".running_var"] = (0.5 + rng.random(C)).astype(np.float32)
            lists[n["output"]] = lists[inp]
        elif n["op"] == "linear":
            C = len(lists[inp])
            t[name + ".weight"] = (rng.standard_normal((classes, C)) / np.sqrt(C)).astype(
                np.float32
            )
            t[name + ".bias"] = (0.1 * rng.standard_normal(classes)).astype(np.float32)
            lists[n["output"]] = np.arange(classes, dtype=np.int32)
        else:
            lists[n["output"]] = lists[inp]
    return t


def task_meta(
    base_hash, name="toy", classes=5, size=(3, 16, 16), method="splora", mean=None, std=None
):
    c, h, w = size
    return {
        "format": "spaedge-task",
        "base_hash": base_hash,
        "task": name,
        "labels": json.dumps([f"{name}-class{i}" for i in range(classes)]),
        "input": json.dumps(
            {
                "channels": c,
                "height": h,
                "width": w,
                "mean": mean or [0.5] * c,
                "std": std or [0.25] * c,
            }
        ),
        "method": method,
        "info": json.dumps({"rank": 2}),
    }


# ---- reference forward --------------------------------------------------------------------


def conv2d(x, w, stride, pad):
    """x (N, C, H, W), w (O, C, k, k), float64."""
    k = w.shape[-1]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[
        :, :, ::stride, ::stride
    ]
    return np.einsum("nchwij,ocij->nohw", win, w, optimize=True)


def maxpool(x, k, stride, pad):
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[
        :, :, ::stride, ::stride
    ]
    return win.max(axis=(-1, -2))


def task_weight(base_w, t, name):
    """W[out_index][:, in_index] + centre_tap(lora_b @ lora_a) (+ weight_delta), float64."""
    w = base_w.astype(np.float64)[t[name + ".out_index"]][:, t[name + ".in_index"]].copy()
    if name + ".lora_a" in t:
        c = w.shape[-1] // 2
        w[:, :, c, c] += t[name + ".lora_b"].astype(np.float64) @ t[name + ".lora_a"].astype(
            np.float64
        )
    if name + ".weight_delta" in t:
        w += t[name + ".weight_delta"]
    add_splopa(w, t, name)
    return w


def reference_logits(graph, base, task, x):
    """Logits (N, classes) of the task for a normalised NCHW batch, in float64."""
    v = {graph["input"]: np.asarray(x, dtype=np.float64)}
    for n in graph["nodes"]:
        name, a = n["name"], v[n["inputs"][0]]
        kind = n["op"]
        if kind == "conv":
            y = conv2d(
                a, task_weight(base[name + ".weight"], task, name), n["stride"], n["padding"]
            )
            if name + ".bias" in task:
                bias = task[name + ".bias"].astype(np.float64)
            elif name + ".bias" in base:
                bias = base[name + ".bias"].astype(np.float64)[task[name + ".out_index"]]
            else:
                bias = 0.0
            y = y + np.reshape(bias, (1, -1, 1, 1))
        elif kind == "batchnorm":
            g, b = task[name + ".weight"], task[name + ".bias"]
            m, var = task[name + ".running_mean"], task[name + ".running_var"]
            r = lambda z: np.asarray(z, dtype=np.float64).reshape(1, -1, 1, 1)  # noqa: E731
            y = (a - r(m)) / np.sqrt(r(var) + n["eps"]) * r(g) + r(b)
        elif kind == "relu":
            y = np.maximum(a, 0)
        elif kind == "add":
            y = a + v[n["inputs"][1]]
        elif kind == "maxpool":
            y = maxpool(a, n["kernel"], n["stride"], n["padding"])
        elif kind == "gap":
            y = a.mean(axis=(2, 3))
        elif kind == "linear":
            y = a @ task[name + ".weight"].astype(np.float64).T + task[name + ".bias"]
        else:
            raise ValueError(kind)
        v[n["output"]] = y
    return v[graph["output"]]


def close(got, ref):
    """Tolerance of the runtime tests: max abs diff <= 1e-4 * (1 + max |ref|)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return got.shape == ref.shape and float(np.max(np.abs(got - ref))) <= 1e-4 * (
        1 + float(np.max(np.abs(ref)))
    )


# ---- SPLoPA (block-SPA): block coefficients and shared prototype sets ------------------------

SPLOPA_N, SPLOPA_RANK = 3, 2


def _splopa_block(c):
    return next(b for b in (4, 3, 2, 1) if c % b == 0)


def splopa_set(t, name):
    """The set of conv ``name`` in ``splopa_tensors``' bundles: named by its block shape,
    the largest of 4, 3, 2, 1 dividing its kept outputs and inputs (so convs share sets)."""
    O, I = len(t[name + ".out_index"]), len(t[name + ".in_index"])
    return f"b{_splopa_block(O)}x{_splopa_block(I)}"


def splopa_tensors(graph, rng, keep_frac=0.7, classes=5):
    """``task_tensors`` (no adapter) plus SPLoPA: every conv block coefficients
    [n, O'/bo, I'/bi], one prototype set per block shape (splopa.<set>.u/.v);
    returns (tensors, the 'splopa_sets' metadata value)."""
    t = task_tensors(graph, rng, keep_frac=keep_frac, method="none", classes=classes)
    sets = {}
    for n in graph["nodes"]:
        if n["op"] != "conv":
            continue
        name = n["name"]
        O, I = len(t[name + ".out_index"]), len(t[name + ".in_index"])
        s = splopa_set(t, name)
        bo, bi = _splopa_block(O), _splopa_block(I)
        if f"splopa.{s}.u" not in t:
            t[f"splopa.{s}.u"] = (0.5 * rng.standard_normal((SPLOPA_N, bo, SPLOPA_RANK))).astype(
                np.float32
            )
            t[f"splopa.{s}.v"] = (0.5 * rng.standard_normal((SPLOPA_N, SPLOPA_RANK, bi))).astype(
                np.float32
            )
        t[name + ".splopa_coef"] = (0.2 * rng.standard_normal((SPLOPA_N, O // bo, I // bi))).astype(
            np.float32
        )
        sets[name] = s
    return t, json.dumps(sets)


def add_splopa(w, t, name):
    """w[:, :, c, c] += sum_p kron(C_p, U_p V_p) when conv ``name`` has SPLoPA coefficients (float64)."""
    if name + ".splopa_coef" not in t:
        return
    s = splopa_set(t, name)
    u, v = t[f"splopa.{s}.u"].astype(np.float64), t[f"splopa.{s}.v"].astype(np.float64)
    coef = t[name + ".splopa_coef"].astype(np.float64)
    c = w.shape[-1] // 2
    w[:, :, c, c] += sum(np.kron(coef[p], u[p] @ v[p]) for p in range(coef.shape[0]))
