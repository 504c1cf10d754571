"""Base and task bundles from torch models, and torch models from bundles.

The base bundle holds the frozen conv weights and the graph; a task bundle
holds, per conv, the kept channels and the task's adapter, plus the task's
BatchNorms and head (docs/format.md). ``load_task_model`` rebuilds the exact
torch model a task bundle was made from, which is how the toolchain checks
and evaluates what it packed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from spaedge.adapters import AdaptedLayer, adapt, get_method, method_of
from spaedge.errors import BundleError, SparseTensorError
from spaedge.models import ResNet, from_config
from spaedge.pack import families
from spaedge.pack.format import (
    check_task_metadata,
    json_field,
    precision_of,
    read_bundle,
    serialise,
    write_bundle,
)
from spaedge.pack.quantize import dequantize_weight

__all__ = [
    "base_bundle",
    "write_base",
    "base_hash",
    "task_bundle",
    "write_task",
    "load_base_model",
    "load_task_model",
    "TaskSpec",
]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


def _conv_nodes(graph: dict) -> list[dict]:
    return [n for n in graph["nodes"] if n["op"] == "conv"]


def _base_weight(model: ResNet, name: str) -> torch.Tensor:
    m = model.get_submodule(name)
    if isinstance(m, AdaptedLayer):
        if m.out_channels != m.base_out_channels or m.in_channels != m.base_in_channels:
            raise ValueError(
                f"layer {name} is pruned: a base bundle is written from the unpruned base"
            )
        if getattr(m, "base_weight", None) is not None:
            return m.base_weight
    return m.weight


def base_bundle(model: ResNet) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of the base bundle for ``model`` (unpruned)."""
    graph = model.graph()
    tensors = {}
    for node in _conv_nodes(graph):
        tensors[f"{node['name']}.weight"] = _np(_base_weight(model, node["name"])).astype(
            np.float32
        )
        bias = model.get_submodule(node["name"]).bias
        if bias is not None:
            tensors[f"{node['name']}.bias"] = _np(bias).astype(np.float32)
    meta = {
        "format": "spaedge-base",
        "model": model.arch,
        "graph": json.dumps(graph),
        "config": json.dumps(model.config()),
    }
    if getattr(model, "weights_source", None):  # where the weights came from (random bases say so)
        meta["weights"] = model.weights_source
    return tensors, meta


def base_hash(model: ResNet) -> str:
    """Content hash the base bundle of ``model`` has (without writing it)."""
    return serialise(*base_bundle(model))[1]


def write_base(model: ResNet, path: str | os.PathLike) -> str:
    """Write the base bundle atomically; returns its content hash."""
    return write_bundle(path, *base_bundle(model))


class TaskSpec:
    """What a task bundle says about its task besides the weights."""

    def __init__(
        self,
        name: str,
        labels: Sequence[str],
        input_size: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
    ):
        self.name, self.labels = name, list(labels)
        self.input_size = tuple(int(v) for v in input_size)
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]

    @classmethod
    def from_task(cls, task) -> TaskSpec:
        return cls(task.name, task.labels, task.input_size, task.mean, task.std)

    def metadata(self) -> dict[str, str]:
        c, h, w = self.input_size
        return {
            "task": self.name,
            "labels": json.dumps(self.labels),
            "input": json.dumps(
                {"channels": c, "height": h, "width": w, "mean": self.mean, "std": self.std}
            ),
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str], where: str) -> TaskSpec:
        inp = json_field(meta, "input", where)
        try:
            size = (inp["channels"], inp["height"], inp["width"])
            return cls(
                meta["task"], json_field(meta, "labels", where), size, inp["mean"], inp["std"]
            )
        except (KeyError, TypeError) as e:
            raise BundleError(f"{where}: field 'input' or 'task' is malformed ({e})") from None


def task_bundle(
    model: ResNet, spec: TaskSpec, base_content_hash: str, info: dict | None = None
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of the task bundle of an adapted (pruned) model."""
    graph = model.graph()
    tensors: dict[str, np.ndarray] = {}
    for node in graph["nodes"]:
        name = node["name"]
        if node["op"] == "conv":
            layer = model.get_submodule(name)
            if not isinstance(layer, AdaptedLayer):
                raise TypeError(f"layer {name} is not adapted: call spaedge.adapters.adapt first")
            for k, v in layer.bundle_tensors().items():
                if k not in families.CONV_OWN and families.conv_family(k) is None:
                    raise ValueError(
                        f"layer {name}: tensor {k!r} belongs to no tensor family of the runtime "
                        "(spaedge/pack/families.py)"
                    )
                tensors[f"{name}.{k}"] = _np(v)
        elif node["op"] == "batchnorm":
            bn = model.get_submodule(name)
            for k in ("weight", "bias", "running_mean", "running_var"):
                tensors[f"{name}.{k}"] = _np(getattr(bn, k)).astype(np.float32)
        elif node["op"] == "linear":
            head = model.get_submodule(name)
            tensors[f"{name}.weight"] = _np(head.weight).astype(np.float32)
            tensors[f"{name}.bias"] = _np(head.bias).astype(np.float32)
    meta = {
        "format": "spaedge-task",
        "base_hash": base_content_hash,
        "method": model.adapter_method,
        **spec.metadata(),
        "info": json.dumps(info or {}),
    }
    method = method_of(model)
    if method.uses_rank:  # the adapter rank, stored (format 3) so a reload needs no guess
        meta["rank"] = str(int(model.adapter_rank))
    # Model-level metadata and tensors (Pear's shared_adapters, SPLoPA's
    # prototype sets): each must belong to a family, like the layers' tensors.
    if method.bundle_metadata is not None:
        for k, v in method.bundle_metadata(model).items():
            if families.metadata_family(k) is None:
                raise ValueError(f"method {method.name}: metadata {k!r} belongs to no family")
            meta[k] = v
    if method.bundle_tensors is not None:
        for k, v in method.bundle_tensors(model).items():
            if families.model_family(k) is None:
                raise ValueError(f"method {method.name}: tensor {k!r} belongs to no family")
            if k in tensors:
                raise ValueError(
                    f"method {method.name}: model-level tensor {k!r} collides with a layer's"
                )
            tensors[k] = _np(v)
    check_task_metadata(meta, f"task bundle of {spec.name!r}")
    return tensors, meta


def write_task(
    model: ResNet,
    spec: TaskSpec,
    base_content_hash: str,
    path: str | os.PathLike,
    info: dict | None = None,
) -> str:
    return write_bundle(path, *task_bundle(model, spec, base_content_hash, info))


def load_base_model(
    path: str | os.PathLike, num_classes: int = 1000
) -> tuple[ResNet, dict[str, str]]:
    """The base network stored in a base bundle (conv weights; BatchNorms at
    identity). An int8 base gives its dequantized weights (docs/int8.md)."""
    tensors, meta = read_bundle(path)
    where = str(path)
    if meta["format"] != "spaedge-base":
        raise BundleError(f"{where}: field 'format' is {meta['format']!r}; expected a base bundle")
    model = from_config(json_field(meta, "config", where), num_classes)
    with torch.no_grad():
        for node in _conv_nodes(model.graph()):
            key = f"{node['name']}.weight"
            if key not in tensors:
                raise BundleError(f"{where}: tensor '{key}' is missing")
            conv = model.get_submodule(node["name"])
            if tuple(tensors[key].shape) != tuple(conv.weight.shape):
                raise BundleError(
                    f"{where}: tensor '{key}' has shape {tensors[key].shape}, "
                    f"the graph says {tuple(conv.weight.shape)}"
                )
            w = tensors[key]
            if precision_of(meta) == "int8":
                scale = tensors.get(f"{node['name']}.weight_scale")
                if scale is None or scale.shape != (w.shape[0],):
                    raise BundleError(
                        f"{where}: tensor '{node['name']}.weight_scale' is missing or not "
                        f"[{w.shape[0]}] (one scale per output channel of an int8 weight)"
                    )
                w = dequantize_weight(w, scale)
            conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
    return model, meta


#: The I32 position tensors of sparse adapters that U8 bitmasks replaced (refused by name).
_INDEX_FORM = (".sparse_delta_index", ".lora_a_index", ".lora_b_index")


def load_task_model(
    base_path: str | os.PathLike, task_path: str | os.PathLike
) -> tuple[ResNet, TaskSpec, dict]:
    """Rebuild the torch model of a task: (model in eval mode, task spec, metadata)."""
    tensors, meta = read_bundle(task_path)
    where = str(task_path)
    if meta["format"] != "spaedge-task":
        raise BundleError(f"{where}: field 'format' is {meta['format']!r}; expected a task bundle")
    spec = TaskSpec.from_metadata(meta, where)
    base, base_meta = load_base_model(base_path, num_classes=len(spec.labels))
    if meta.get("base_hash") != base_meta["content_hash"]:
        raise BundleError(
            f"{where}: field 'base_hash' names base {meta.get('base_hash')}, but {base_path} is "
            f"{base_meta['content_hash']}: pack the task against this base or use the right base"
        )
    graph = base.graph()
    method = get_method(meta["method"])
    rank = 1  # a method without a rank ignores it
    if method.uses_rank:
        if "rank" not in meta:
            raise BundleError(
                f"{where}: field 'rank' is missing (method {method.name!r} uses a rank): "
                "repack the bundle with this spaedge"
            )
        rank = int(meta["rank"])  # checked by read_bundle (the runtime's validator)
    model = adapt(base, meta["method"], rank=rank)
    for k in tensors:
        if k.endswith(_INDEX_FORM):
            raise BundleError(
                f"{where}: tensor '{k}': sparse positions are stored as U8 bitmasks "
                f"('{k[: -len('_index')]}_mask'), no longer as I32 indices: repack the bundle with "
                "this spaedge"
            )
    t = {k: torch.from_numpy(v.copy()) for k, v in tensors.items()}
    for node in graph["nodes"]:
        name, prefix = node["name"], node["name"] + "."
        sub = {k[len(prefix) :]: v for k, v in t.items() if k.startswith(prefix)}
        try:
            if node["op"] == "conv":
                model.get_submodule(name).load_bundle_tensors(sub)
            elif node["op"] == "batchnorm":
                bn = model.get_submodule(name)
                bn.weight = nn.Parameter(sub["weight"])
                bn.bias = nn.Parameter(sub["bias"])
                bn.running_mean, bn.running_var = sub["running_mean"], sub["running_var"]
                bn.num_features = int(sub["weight"].numel())
            elif node["op"] == "linear":
                head = model.get_submodule(name)
                head.weight = nn.Parameter(sub["weight"])
                head.bias = nn.Parameter(sub["bias"])
                head.in_features, head.out_features = (
                    int(sub["weight"].shape[1]),
                    int(sub["weight"].shape[0]),
                )
        except KeyError as e:
            raise BundleError(f"{where}: tensor '{prefix}{e.args[0]}' is missing") from None
        except SparseTensorError as e:
            raise BundleError(f"{where}: {e.message(prefix)}") from None
    if method.load_tensors is not None:
        method.load_tensors(model, t, meta, where)
    if method.load_metadata is not None:
        method.load_metadata(model, meta, where)
    model.eval()
    return model, spec, meta
