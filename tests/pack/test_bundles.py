"""Task and base bundles from torch models: round trips, refusals, sizes, the
materialised model, torchvision-named and built-in base weights."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from spaedge.adapters import FineTuned, SPLoRA, adapt, adapted_layers
from spaedge.bench.synthetic import randomise_task_model
from spaedge.errors import BundleError
from spaedge.models import get_base, load_weights
from spaedge.models.resnet import resnet18, resnet50, spaedge_tiny
from spaedge.pack.bundle import TaskSpec, load_task_model, write_base, write_task
from spaedge.pack.format import read_bundle, read_metadata
from spaedge.pack.materialize import materialize, whole_model_bytes
from spaedge.pruning.prune import density, plan, prune_to_density


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
    randomise_task_model(model, torch.Generator().manual_seed(0), scale=0.1)
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
    rebuilt, spec2, _ = load_task_model(
        tmp_path / "base.safetensors", tmp_path / "demo.safetensors"
    )
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
    print(
        f"task bundle {task_bytes} B, whole pruned model {whole} B, ratio {whole / task_bytes:.1f}"
    )
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
    write_task(
        model,
        TaskSpec("ft", list("abc"), (1, 28, 28), [0.0], [1.0]),
        bhash,
        tmp_path / "ft.safetensors",
    )
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
    assert {
        "layer1.0.downsample.0.weight",
        "layer2.0.downsample.1.running_var",
        "fc.weight",
    } <= names or "layer2.0.downsample.0.weight" in names
    with pytest.raises(ValueError, match="missing"):
        load_weights(resnet50(), tmp_path / "r18.pth")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_base("resnet18", tmp_path / "nope.pth")


def test_builtin_base_ships_and_loads():
    model = get_base("tiny")
    assert model.in_channels == 1
    x = torch.randn(1, 1, 28, 28)
    assert model.features(x).shape == (1, 128)
