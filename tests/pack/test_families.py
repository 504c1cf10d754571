"""The packer's tensor families mirror the runtime's list, the packer refuses
what no family holds, and the adapter rank is stored, so a reloaded model
reports its true rank (no guess from the first conv)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from spaedge import runtime
from spaedge.adapters import adapt, adapted_layers, get_method, method_names
from spaedge.adapters.sparse import sparsify
from spaedge.errors import BundleError
from spaedge.models.resnet import spaedge_tiny
from spaedge.pack import families
from spaedge.pack.bundle import TaskSpec, load_task_model, task_bundle, write_base, write_task
from spaedge.pack.format import read_bundle, write_bundle

SPEC = TaskSpec("t", list("abc"), (1, 28, 28), [0.0], [1.0])


def test_python_families_mirror_the_runtime_list():
    """Same families, same order, same tensors and metadata keys as
    csrc/runtime/families/families.inc (read from the compiled module)."""
    ours = [
        {
            "name": f.name,
            "conv_tensors": list(f.conv_tensors),
            "model_tensors": list(f.model_tensors),
            "metadata": f.metadata,
        }
        for f in families.FAMILIES
    ]
    assert ours == runtime.FAMILIES


def test_every_method_packs_through_the_families():
    """Every registered method's layer tensors belong to a family (or are the
    conv's own kept channels and bias)."""
    for name in method_names():
        model = adapt(spaedge_tiny(), name, rank=2)
        for layer in adapted_layers(model).values():
            for k in layer.bundle_tensors():
                assert k in families.CONV_OWN or families.conv_family(k), (name, k)


def _model(method: str, rank: int):
    torch.manual_seed(0)
    base = spaedge_tiny()
    base.replace_head(3)
    return adapt(base, method, rank=rank)


def test_a_tensor_of_no_family_is_refused_by_the_packer(monkeypatch):
    model = _model("splora", 2)
    layer = next(iter(adapted_layers(model).values()))
    cls = type(layer)
    orig = cls.bundle_tensors
    monkeypatch.setattr(
        cls, "bundle_tensors", lambda self: {**orig(self), "lora_c": torch.zeros(1)}
    )
    with pytest.raises(ValueError, match="tensor 'lora_c' belongs to no tensor family"):
        task_bundle(model, SPEC, "0" * 64)


@pytest.mark.parametrize("method,rank", [("sparse", 3), ("splopa", 12), ("splora", 5)])
def test_a_reloaded_model_reports_its_true_rank(tmp_path, method, rank):
    """Sparse factors' lora_rank and SPLoPA's prototype rank (min(rank, 8))
    do not say the adapter rank, nor does the first conv: the bundle does."""
    torch.manual_seed(0)
    bhash = write_base(spaedge_tiny(), tmp_path / "base.safetensors")
    model = _model(method, rank)
    if method == "sparse":
        sparsify(model, "magnitude", 0.5)
    write_task(model, SPEC, bhash, tmp_path / "t.safetensors")
    tensors, meta = read_bundle(tmp_path / "t.safetensors")
    assert meta["rank"] == str(rank)
    rebuilt, _, _ = load_task_model(tmp_path / "base.safetensors", tmp_path / "t.safetensors")
    assert rebuilt.adapter_rank == rank
    # Without the stored rank the bundle is refused, saying to repack (not guessed).
    del meta["rank"]
    write_bundle(tmp_path / "old.safetensors", tensors, meta)
    with pytest.raises(BundleError, match="field 'rank' is missing.*repack"):
        load_task_model(tmp_path / "base.safetensors", tmp_path / "old.safetensors")


def test_a_method_without_a_rank_stores_none(tmp_path):
    assert not get_method("finetune").uses_rank
    _, meta = task_bundle(_model("finetune", 1), SPEC, "0" * 64)
    assert "rank" not in meta


def test_the_rank_is_checked_by_the_runtime_validator():
    _, meta = task_bundle(_model("splora", 2), SPEC, "0" * 64)
    assert runtime.check_task_metadata(meta, "m")["rank"] == 2
    for bad in ("0", "65537", "2.0", "x", "02"):
        with pytest.raises(
            BundleError, match=r"m: metadata 'rank' must be an integer in \[1, 65536\]"
        ):
            runtime.check_task_metadata({**meta, "rank": bad}, "m")


def test_limits_are_the_runtimes():
    assert runtime.LIMITS["max_rank"] == 65536 and runtime.LIMITS["max_input_side"] == 4096
    assert dataclasses.is_dataclass(families.FAMILIES[0])
