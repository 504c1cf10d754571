"""The Python toolchain: adapter math, real pruning, bundles, base weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spaedge.adapters import adapt, adapted_layers, learned_parameters
from spaedge.adapters import FineTuned, SPLoRA
from spaedge.errors import BundleError
from spaedge.models import get_base, load_weights
from spaedge.models.resnet import resnet18, resnet50, spaedge_tiny
from spaedge.pack.bundle import TaskSpec, load_task_model, write_base, write_task
from spaedge.pack.format import read_bundle, read_metadata
from spaedge.pack.materialize import materialize, whole_model_bytes
from spaedge.pruning.groups import channel_groups
from spaedge.pruning.prune import density, plan, prune_to_density


def _randomise(layer: SPLoRA, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora_b.copy_(torch.randn(layer.lora_b.shape, generator=g) * 0.1)
        layer.lora_a.copy_(torch.randn(layer.lora_a.shape, generator=g) * 0.1)


def _dense_reference_weight(base_w, a, b, out_idx, in_idx):
    """W[out][:, in] + centre_tap(B[out] @ A[:, in]) with explicit loops (numpy)."""
    w = base_w[np.ix_(out_idx, in_idx)].copy()
    upd = b[out_idx] @ a[:, in_idx]
    if w.ndim == 4:
        c = w.shape[-1] // 2
        for o in range(w.shape[0]):
            for i in range(w.shape[1]):
                w[o, i, c, c] += upd[o, i]
    else:
        w += upd
    return w


@pytest.mark.parametrize("kernel,stride", [(3, 1), (3, 2), (1, 1), (7, 2)])
def test_splora_conv_matches_dense_reference_after_pruning(kernel, stride):
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 10, kernel, stride=stride, padding=kernel // 2, bias=False)
    layer = SPLoRA(conv, rank=3)
    _randomise(layer)
    a0, b0 = layer.lora_a.detach().numpy().copy(), layer.lora_b.detach().numpy().copy()
    out_keep, in_keep = torch.tensor([0, 2, 3, 7, 9]), torch.tensor([1, 4, 5, 6, 10, 11])
    layer.keep_out(out_keep)
    layer.keep_in(in_keep)
    assert layer.out_index.tolist() == out_keep.tolist() and layer.in_index.tolist() == in_keep.tolist()
    ref_w = _dense_reference_weight(conv.weight.detach().numpy(), a0, b0, out_keep.numpy(), in_keep.numpy())
    x = torch.randn(2, 6, 9, 9)
    ref = F.conv2d(x, torch.from_numpy(ref_w), None, stride, kernel // 2)
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-5)
    # only the centre tap moved away from the gathered base weight
    diff = (layer.task_weight() - layer.weight).abs()
    c = kernel // 2
    mask = torch.ones_like(diff, dtype=torch.bool)
    mask[:, :, c, c] = False
    assert (diff[mask] == 0).all() and diff[:, :, c, c].max() > 0


def test_splora_linear_matches_dense_reference():
    torch.manual_seed(1)
    lin = nn.Linear(8, 5)
    layer = SPLoRA(lin, rank=2)
    _randomise(layer, 3)
    ref_w = _dense_reference_weight(lin.weight.detach().numpy(), layer.lora_a.detach().numpy(),
                                    layer.lora_b.detach().numpy(), np.arange(5), np.arange(8))
    x = torch.randn(4, 8)
    torch.testing.assert_close(layer(x), x @ torch.from_numpy(ref_w).T + lin.bias, rtol=1e-5, atol=1e-5)


def test_adapt_freezes_base_and_trains_only_adapters_bn_head():
    model = spaedge_tiny()
    model.replace_head(4)
    adapt(model, "splora", rank=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(not n.endswith(".weight") or "bn" in n or "downsample.1" in n or n.startswith("fc.")
               for n in trainable), trainable
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.endswith("conv1.weight"))
    layers = adapted_layers(model)
    assert len(layers) == sum(1 for n in model.graph()["nodes"] if n["op"] == "conv")
    expected = sum((m.out_channels + m.in_channels) * 4 for m in layers.values())
    expected += sum(p.numel() for n, p in model.named_parameters() if (".bn" in n or n.startswith("bn")
                    or "downsample.1" in n or n.startswith("fc.")))
    assert learned_parameters(model) == expected


def _check_channel_consistency(model):
    """Every conv's in_index equals the kept channels of its input tensor; adds agree."""
    graph = model.graph()
    kept = {"x": list(range(graph["input_channels"]))}
    for node in graph["nodes"]:
        src = [kept[i] for i in node["inputs"]]
        if node["op"] == "conv":
            layer = model.get_submodule(node["name"])
            assert layer.in_index.tolist() == src[0], node["name"]
            kept[node["output"]] = layer.out_index.tolist()
        elif node["op"] == "add":
            assert src[0] == src[1], node["name"]
            kept[node["output"]] = src[0]
        elif node["op"] == "linear":
            assert model.get_submodule(node["name"]).in_features == len(src[0])
        else:
            kept[node["output"]] = src[0]
    return kept


@pytest.mark.parametrize("ctor,step", [(resnet18, 0.05), (resnet50, 0.2)])
def test_pruning_keeps_residual_blocks_consistent(ctor, step):
    torch.manual_seed(0)
    model = adapt(ctor(num_classes=7), "splora", rank=2)
    x = torch.randn(2, 3, 32, 32)
    history = prune_to_density(model, x[:1], 0.3, step_fraction=step)
    assert history and history[-1] <= 0.3 + 1e-9 and density(model) == pytest.approx(history[-1])
    assert all(a > b for a, b in zip(history, history[1:]))  # every step removed something
    _check_channel_consistency(model)
    for name, p in plan(model).items():
        for idx in (p["out_index"], p["in_index"]):
            assert idx == sorted(set(idx)), name
    assert model(x).shape == (2, 7)
    # The residual groups Torch-Pruning found include every conv writing to the sum.
    groups = channel_groups(model, x[:1])
    g = next(g for g in groups if "layer1.0.conv2" in g.producers) if ctor is resnet18 else None
    if g is not None:
        assert {"conv1", "layer1.0.conv2", "layer1.1.conv2"} <= set(g.producers)
        assert "bn1" in g.norms


def test_pruned_channels_do_not_grow_back_during_training():
    torch.manual_seed(0)
    model = spaedge_tiny()
    model.replace_head(3)
    adapt(model, "splora", rank=2)
    x = torch.randn(8, 1, 28, 28)
    prune_to_density(model, x[:1], 0.5)
    before = plan(model)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), torch.randint(0, 3, (8,))).backward()
        opt.step()
    assert plan(model) == before
    assert {n: p.shape for n, p in model.named_parameters()} == shapes


@pytest.fixture(scope="module")
def pruned18():
    """A random ResNet-18 with rank-8 SPLoRA adapters pruned to 30% density (and its seed-0 base)."""
    return _pruned_resnet18(0.3, rank=8)


def _pruned_resnet18(density_target=0.3, rank=8, method="splora", classes=5):
    torch.manual_seed(0)
    base = resnet18()
    for m in base.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    base.replace_head(classes)
    model = adapt(base, method, rank=rank)
    for layer in adapted_layers(model).values():
        if isinstance(layer, SPLoRA):
            _randomise(layer)
    prune_to_density(model, torch.zeros(1, 3, 64, 64), density_target)
    return model.eval()


def test_bundle_round_trip_rebuilds_the_same_model(tmp_path, pruned18):
    model = pruned18
    torch.manual_seed(0)
    base = resnet18()  # same seed as in _pruned_resnet18: the same base weights
    bhash = write_base(base, tmp_path / "base.safetensors")
    spec = TaskSpec("demo", [f"c{i}" for i in range(5)], (3, 64, 64), [0.5] * 3, [0.25] * 3)
    write_task(model, spec, bhash, tmp_path / "demo.safetensors", info={"rank": 8})
    meta = read_metadata(tmp_path / "demo.safetensors")
    assert meta["format"] == "spaedge-task" and meta["base_hash"] == bhash
    assert json.loads(meta["labels"]) == spec.labels
    rebuilt, spec2, _ = load_task_model(tmp_path / "base.safetensors", tmp_path / "demo.safetensors")
    assert spec2.input_size == (3, 64, 64) and spec2.mean == [0.5] * 3
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
    assert plan(rebuilt) == plan(model)
    # The same task written again is the same file, byte for byte (the
    # safetensors writer orders metadata differently on every call).
    first = (tmp_path / "demo.safetensors").read_bytes()
    for _ in range(3):
        write_task(model, spec, bhash, tmp_path / "again.safetensors", info={"rank": 8})
        assert (tmp_path / "again.safetensors").read_bytes() == first


def test_bundle_for_another_base_and_corruption_are_refused(tmp_path, pruned18):
    model = pruned18
    torch.manual_seed(0)
    bhash = write_base(resnet18(), tmp_path / "base.safetensors")
    spec = TaskSpec("demo", list("abcde"), (3, 64, 64), [0.0] * 3, [1.0] * 3)
    task = tmp_path / "demo.safetensors"
    write_task(model, spec, bhash, task)
    torch.manual_seed(1)
    write_base(resnet18(), tmp_path / "other.safetensors")
    with pytest.raises(BundleError, match="base_hash"):
        load_task_model(tmp_path / "other.safetensors", task)
    data = bytearray(task.read_bytes())
    data[-5] ^= 0x40
    (tmp_path / "flipped.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="content_hash"):
        read_bundle(tmp_path / "flipped.safetensors")
    (tmp_path / "short.safetensors").write_bytes(task.read_bytes()[:100])
    with pytest.raises(BundleError, match="short.safetensors"):
        read_bundle(tmp_path / "short.safetensors")
    with pytest.raises(BundleError, match="directory"):
        read_bundle(tmp_path)
    # An interrupted write leaves the old file and no temporary one.
    before = task.read_bytes()
    with pytest.raises(TypeError):
        write_task(model, spec, 123, task)  # metadata must be strings
    assert task.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp-*"))


def test_task_bundle_is_a_tenth_of_the_whole_pruned_model_resnet18_30pct(tmp_path, pruned18):
    model = pruned18
    assert density(model) <= 0.3
    torch.manual_seed(0)
    bhash = write_base(resnet18(), tmp_path / "base.safetensors")
    spec = TaskSpec("demo", list("abcde"), (3, 224, 224), [0.0] * 3, [1.0] * 3)
    write_task(model, spec, bhash, tmp_path / "t.safetensors")
    task_bytes = (tmp_path / "t.safetensors").stat().st_size
    whole = whole_model_bytes(model)
    print(f"task bundle {task_bytes} B, whole pruned model {whole} B, ratio {whole / task_bytes:.1f}")
    assert task_bytes * 10 <= whole


def test_materialized_model_equals_adapted_model(pruned18):
    model = pruned18
    plain = materialize(model)
    assert not any(isinstance(m, SPLoRA) for m in plain.modules())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), rtol=1e-5, atol=1e-5)


def test_finetune_baseline_round_trips_its_weight_delta(tmp_path):
    torch.manual_seed(0)
    base = spaedge_tiny()
    bhash = write_base(base, tmp_path / "base.safetensors")
    base.replace_head(3)
    model = adapt(base, "finetune")
    prune_to_density(model, torch.zeros(1, 1, 28, 28), 0.6)
    with torch.no_grad():
        for layer in adapted_layers(model).values():
            assert isinstance(layer, FineTuned)
            layer.weight.add_(0.01)
    write_task(model, TaskSpec("ft", list("abc"), (1, 28, 28), [0.0], [1.0]), bhash, tmp_path / "ft.safetensors")
    rebuilt, _, _ = load_task_model(tmp_path / "base.safetensors", tmp_path / "ft.safetensors")
    x = torch.randn(2, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=1e-6, atol=1e-6)


def test_torchvision_named_weights_load(tmp_path):
    torch.manual_seed(3)
    src = resnet18()
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    model = get_base("resnet18", tmp_path / "r18.pth")
    torch.testing.assert_close(model.layer3[1].conv2.weight, src.layer3[1].conv2.weight)
    names = set(model.state_dict())
    assert {"layer1.0.downsample.0.weight", "layer2.0.downsample.1.running_var", "fc.weight"} <= names \
        or "layer2.0.downsample.0.weight" in names
    with pytest.raises(ValueError, match="missing"):
        load_weights(resnet50(), tmp_path / "r18.pth")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_base("resnet18", tmp_path / "nope.pth")


def test_builtin_base_ships_and_loads():
    model = get_base("tiny")
    assert model.in_channels == 1
    x = torch.randn(1, 1, 28, 28)
    assert model.features(x).shape == (1, 128)
