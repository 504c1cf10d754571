"""SPLoPA as defined (spaedge.adapters.splopa): prototypes shared by every
blocked layer or per stage, the dense fallback where the block does not
divide the channels, whole-block pruning, task bundles that hold each
prototype set once and per-layer block coefficients (never a merged update),
bundles rebuilt with their sharing, refused when inconsistent (Python and C++),
the sharing restored after a checkpoint, and the runtime's expansion
(kernels::splopa_expand) agreeing with PyTorch, up to the whole pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _toolchain_helpers import assert_bundle_matches, run_stopped_in_final, tiny_task_model
from _toolchain_helpers import random_batches as _data
from _toolchain_helpers import tiny_image_folder as _images
from _toolchain_helpers import train_steps as _train
from torch import nn

from spaedge.adapters import SPLoPA, adapted_layers, learned_parameters
from spaedge.adapters.splopa import (
    BLOCK,
    PROTOTYPES,
    SPLoPAOptions,
    prototype_sets,
    share_prototypes,
)
from spaedge.models import get_base
from spaedge.pruning.prune import prune_to_density

torch.backends.mkldnn.enabled = False
torch.set_num_threads(1)

SPEC = ("t", ["a", "b", "c"], (1, 28, 28), [0.5], [0.25])
X = (1, 28, 28)


def _tiny(rank=2, seed=0, scope="model"):
    model = tiny_task_model("splopa", rank=rank, seed=seed)
    if scope is not None:
        share_prototypes(model, scope)
    return model


def _pruned(scope="model", density=0.3, seed=0):
    """A tiny SPLoPA model trained a few steps, pruned in whole blocks, trained again."""
    model = _tiny(seed=seed, scope=scope)
    data = _data(2, bs=16, seed=seed)
    _train(model, data, steps=2)
    prune_to_density(
        model,
        torch.zeros(1, *X),
        density,
        step_fraction=0.2,
        block=BLOCK,
        recover=lambda s, d: _train(model, data, steps=1),
    )
    _train(model, data, steps=2)
    return model


def _bundle(model):
    from spaedge.pack.bundle import TaskSpec, base_hash, task_bundle

    return task_bundle(model, TaskSpec(*SPEC), base_hash(get_base("tiny")))


def _write(model, path):
    from spaedge.pack.format import write_bundle

    write_bundle(path, *_bundle(model))
    return path


# ------------------------------------------------------------------ the layer
def test_blocked_layers_and_the_dense_fallback():
    torch.manual_seed(0)
    blocked = SPLoPA(nn.Conv2d(8, 12, 3, padding=1, bias=False), rank=8, block=4)
    assert (
        blocked.blocked and blocked.block_shape == (4, 4) and blocked.rank == 4
    )  # rank capped at the block
    assert blocked.positions.shape == (PROTOTYPES, 3, 2)
    # A block must divide both sides; otherwise the layer learns its own dense pointwise update.
    for o, i in ((16, 1), (6, 8), (8, 6), (10, 6)):
        layer = SPLoPA(nn.Conv2d(i, o, 3, padding=1, bias=False), rank=2)
        assert not layer.blocked and layer.proto_u is None and layer.pointwise.shape == (o, i)
        assert layer.block_shape == (1, 1)
    layer = SPLoPA(nn.Conv2d(6, 10, 3, padding=1, bias=False))
    with torch.no_grad():
        layer.pointwise.normal_()
    want = layer.update()[[0, 3, 7]][:, [1, 5]]
    layer.keep_out(torch.tensor([0, 3, 7]))  # channel by channel: no blocks to keep whole
    layer.keep_in(torch.tensor([1, 5]))
    torch.testing.assert_close(layer.update(), want)
    w = layer.task_weight()
    torch.testing.assert_close(w[:, :, 1, 1] - layer.weight[:, :, 1, 1], want)
    assert layer.learned_parameters() == 3 * 2


def test_the_tiny_base_shares_one_set_or_one_per_stage():
    model = _tiny(scope=None)  # as adapt leaves it: every layer its own prototypes
    layers = adapted_layers(model)
    assert not layers["conv1"].blocked  # the 1-channel stem: dense fallback
    blocked = {n: m for n, m in layers.items() if m.blocked}
    assert len(blocked) == len(layers) - 1
    own = learned_parameters(model)
    sets = share_prototypes(model, "model")
    assert sets == {"model": list(blocked)}
    u = blocked["layer1.0.conv1"].proto_u
    assert all(m.proto_u is u and m.proto_set == "model" for m in blocked.values())
    per_set = PROTOTYPES * (BLOCK * 2 + 2 * BLOCK)  # rank 2
    assert learned_parameters(model) == own - (len(blocked) - 1) * per_set  # counted once
    sets = share_prototypes(model, "stage")
    assert sorted(sets) == ["layer1", "layer2", "layer3", "layer4"]
    for s, names in sets.items():
        assert all(n.startswith(s + ".") for n in names)
        assert len({id(blocked[n].proto_u) for n in names}) == 1
    assert len({id(blocked[names[0]].proto_u) for names in sets.values()}) == 4
    assert learned_parameters(model) == own - (len(blocked) - 4) * per_set
    with pytest.raises(ValueError, match="sharing scope"):
        share_prototypes(model, "layer")


def test_a_shared_set_learns_from_every_layer_and_pruning_keeps_it_whole():
    model = _tiny()
    data = _data(1, bs=8)
    layers = [m for m in adapted_layers(model).values() if m.blocked]
    before = layers[0].proto_u.detach().clone()
    with torch.no_grad():
        for m in layers:
            m.positions.normal_(std=0.1)
    _train(model, data, steps=1)
    assert not torch.equal(layers[0].proto_u.detach(), before)
    assert all(m.proto_u is layers[0].proto_u for m in layers)
    prune_to_density(model, torch.zeros(1, *X), 0.4, step_fraction=0.2, block=BLOCK)
    for m in layers:
        assert m.proto_u.shape == (PROTOTYPES, BLOCK, 2)  # whole prototypes
        blocks = m.out_index // BLOCK
        assert all(int((blocks == b).sum()) == BLOCK for b in blocks.unique())
        assert m.positions.shape[1:] == (m.out_channels // BLOCK, m.in_channels // BLOCK)


# ------------------------------------------------------------------ bundles
@pytest.mark.parametrize("scope", ["model", "stage"])
def test_the_bundle_holds_each_set_once_and_block_coefficients(scope):
    model = _pruned(scope)
    tensors, meta = _bundle(model)
    layers = adapted_layers(model)
    blocked = [n for n, m in layers.items() if m.blocked]
    sets = json.loads(meta["splopa_sets"])
    assert sorted(sets) == sorted(blocked)
    names = {"model"} if scope == "model" else {"layer1", "layer2", "layer3", "layer4"}
    assert set(sets.values()) == names
    assert {k for k in tensors if k.startswith("splopa.")} == {
        f"splopa.{s}.{f}" for s in names for f in "uv"
    }
    for s in names:
        assert tensors[f"splopa.{s}.u"].shape == (PROTOTYPES, BLOCK, 2)
        assert tensors[f"splopa.{s}.v"].shape == (PROTOTYPES, 2, BLOCK)
    for n, m in layers.items():
        if m.blocked:  # never the merged [O', I'] update
            assert f"{n}.pointwise_delta" not in tensors
            assert tensors[f"{n}.splopa_coef"].shape == (
                PROTOTYPES,
                m.out_channels // BLOCK,
                m.in_channels // BLOCK,
            )
        else:
            assert f"{n}.splopa_coef" not in tensors
            assert tensors[f"{n}.pointwise_delta"].shape == (m.out_channels, m.in_channels)
    coef = sum(tensors[f"{n}.splopa_coef"].size for n in blocked)
    merged = sum(layers[n].out_channels * layers[n].in_channels for n in blocked)
    assert coef * BLOCK * BLOCK == PROTOTYPES * merged  # n / b^2 of the merged update


@pytest.mark.parametrize("base,bound", [("small", 1 / 3), ("tiny", 0.4)])
def test_a_30_percent_bundle_is_a_fraction_of_sppara(base, bound, tmp_path):
    """The bundle stores n / b^2 of the merged update: at 30% density, rank 8,
    SPLoPA's task bundle is at most a third of SPPaRA's on `small`. On `tiny`
    the BN, index and header bytes both methods store are two thirds of
    SPLoPA's bundle, so the bound there is 0.4 (measured 0.36)."""
    from spaedge.adapters import adapt, get_method
    from spaedge.models.resnet import spaedge_small, spaedge_tiny
    from spaedge.pack.bundle import TaskSpec, base_hash

    sizes = {}
    for method in ("sppara", "splopa"):
        torch.manual_seed(0)
        model = (
            spaedge_small if base == "small" else spaedge_tiny
        )()  # sizes do not depend on the weights
        h = base_hash(model)
        model.replace_head(3)
        model = adapt(model, method, rank=8)
        if method == "splopa":
            share_prototypes(model, "model")
        prune_to_density(
            model, torch.zeros(1, *X), 0.3, step_fraction=0.2, block=get_method(method).prune_block
        )
        from spaedge.pack.bundle import task_bundle
        from spaedge.pack.format import write_bundle

        path = tmp_path / f"{method}.safetensors"
        write_bundle(path, *task_bundle(model, TaskSpec(*SPEC), h))
        sizes[method] = path.stat().st_size
    assert sizes["splopa"] <= bound * sizes["sppara"], sizes


@pytest.mark.parametrize("scope", ["model", "stage"])
def test_load_task_model_rebuilds_the_model_and_its_sharing(scope, tiny_base_bundle, tmp_path):
    from spaedge.pack.bundle import load_task_model

    model = _pruned(scope)
    path = _write(model, tmp_path / "t.safetensors")
    again, _, meta = load_task_model(tiny_base_bundle, path)
    assert meta["method"] == "splopa"
    assert prototype_sets(again)[0] == prototype_sets(model)[0]
    groups = {}
    for _n, m in adapted_layers(again).items():
        if m.blocked:
            groups.setdefault(m.proto_set, set()).add(id(m.proto_u))
    assert all(len(ids) == 1 for ids in groups.values())  # one Parameter per set again
    assert learned_parameters(again) == learned_parameters(model)
    x = torch.randn(3, *X)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scope", ["model", "stage"])
def test_the_runtime_expands_the_kronecker_sum_like_pytorch(scope, tiny_base_bundle, tmp_path):
    """Merged and low-rank modes, within 1e-3 of the logits' scale, same top-1
    (the rebuilt torch model within 1e-4)."""
    model = _pruned(scope, seed=1)
    with torch.no_grad():  # a sizeable update, so a wrong expansion cannot hide in the base
        for m in adapted_layers(model).values():
            if m.blocked:
                m.positions.normal_(std=0.2)
    assert_bundle_matches(
        model, tiny_base_bundle, _write(model, tmp_path / "t.safetensors"), torch.randn(4, *X)
    )


def test_an_unpruned_model_with_own_prototypes_packs_and_runs(tiny_base_bundle, tmp_path):
    """A model nobody linked (every layer its own set, named after the conv) is a valid bundle too."""
    model = _tiny(scope=None)
    with torch.no_grad():
        for m in adapted_layers(model).values():
            (m.positions if m.blocked else m.pointwise).normal_(std=0.1)
    tensors, meta = _bundle(model)
    assert json.loads(meta["splopa_sets"])["layer1.0.conv1"] == "layer1.0.conv1"
    assert "splopa.layer1.0.conv1.u" in tensors
    assert_bundle_matches(
        model, tiny_base_bundle, _write(model, tmp_path / "t.safetensors"), torch.randn(2, *X)
    )


def _edits():
    def drop_entry(t, m):
        s = json.loads(m["splopa_sets"])
        del s["layer2.0.conv1"]
        m["splopa_sets"] = json.dumps(s)

    def entry_without_coef(t, m):
        m["splopa_sets"] = json.dumps({**json.loads(m["splopa_sets"]), "conv1": "model"})

    def entry_for_no_conv(t, m):
        m["splopa_sets"] = json.dumps({**json.loads(m["splopa_sets"]), "layer9.conv": "model"})

    def unused_set(t, m):
        t["splopa.spare.u"], t["splopa.spare.v"] = t["splopa.model.u"], t["splopa.model.v"]

    def missing_v(t, m):
        del t["splopa.model.v"]

    def other_n(t, m):
        t["layer3.0.conv2.splopa_coef"] = t["layer3.0.conv2.splopa_coef"][:-1].copy()

    def blocks_do_not_tile(t, m):  # 2-channel blocks with coefficients made for 4
        t["splopa.model.u"] = t["splopa.model.u"][:, :2].copy()

    def v_of_another_rank(t, m):
        t["splopa.model.v"] = np.concatenate([t["splopa.model.v"]] * 2, axis=1)

    def not_an_object(t, m):
        m["splopa_sets"] = json.dumps(["model"])

    # (edit, what the C++ runtime's message names, what the Python loader's names)
    return [
        (drop_entry, "layer2.0.conv1.splopa_coef", "layer2.0.conv1.splopa_coef"),
        (entry_without_coef, "splopa_sets", "splopa_sets"),
        (entry_for_no_conv, "splopa_sets", "splopa_sets"),
        (unused_set, "splopa.spare", "splopa.spare"),
        (missing_v, "splopa.model.v", "splopa.model.v"),
        (other_n, "layer3.0.conv2.splopa_coef", "layer3.0.conv2.splopa_coef"),
        (blocks_do_not_tile, "splopa_coef", "splopa_coef"),
        (v_of_another_rank, "splopa.model.v", "splopa_coef"),
        (not_an_object, "splopa_sets", "splopa_sets"),
    ]


@pytest.mark.parametrize("edit,cpp,py", _edits(), ids=lambda e: getattr(e, "__name__", ""))
def test_inconsistent_splopa_bundles_are_refused_naming_the_field(
    edit, cpp, py, tiny_base_bundle, tmp_path
):
    from spaedge import runtime
    from spaedge.errors import BundleError
    from spaedge.pack.bundle import load_task_model
    from spaedge.pack.format import write_bundle

    tensors, meta = _bundle(_pruned(density=0.5))
    tensors = dict(tensors)
    edit(tensors, meta)
    path = tmp_path / "bad.safetensors"
    write_bundle(path, tensors, meta)
    with pytest.raises(BundleError, match=cpp.replace(".", r"\.")):
        runtime.Runtime(tiny_base_bundle, threads=1).load_task(path)
    with pytest.raises(BundleError, match=py.replace(".", r"\.")):
        load_task_model(tiny_base_bundle, path)


# ------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("scope", ["model", "stage"])
def test_the_sharing_is_restored_after_a_checkpoint_is_adopted(scope):
    from spaedge.adapters import get_method
    from spaedge.train.checkpoint import adopt_state

    trained = _pruned(scope)
    state = {k: v.detach().clone() for k, v in trained.state_dict().items()}
    fresh = _tiny(scope=scope)  # build_task_model, then the method's prepare
    adopt_state(fresh, state)
    blocked = [m for m in adapted_layers(fresh).values() if m.blocked]
    assert len({id(m.proto_u) for m in blocked}) == len(
        blocked
    )  # a state dict cannot hold the sharing
    get_method("splopa").restore(fresh)
    assert len({id(m.proto_u) for m in blocked}) == (1 if scope == "model" else 4)
    assert learned_parameters(fresh) == learned_parameters(trained)
    x = torch.randn(2, *X)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), trained(x))


# ------------------------------------------------------------------ end to end
def _cfg(tmp_path, splopa_share="model", **kw):
    from spaedge.train import TrainConfig

    task = f"imagefolder:{_images(tmp_path / 'imgs')}"
    return TrainConfig(
        **{
            **dict(
                task=task,
                method="splopa",
                options=SPLoPAOptions(rank=2, splopa_share=splopa_share),
                density=0.5,
                epochs=1,
                recovery_epochs=1,
                final_epochs=1,
                prune_step=0.2,
                batch_size=16,
                seed=1,
            ),
            **kw,
        }
    )


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["model", "stage"])
def test_splopa_trains_prunes_packs_and_runs_in_the_runtime(
    scope, tiny_base_bundle, tmp_path, monkeypatch
):
    """spaedge train's pipeline with --method splopa --splopa-share SCOPE."""
    from spaedge.pack.bundle import load_task_model
    from spaedge.pack.format import read_bundle
    from spaedge.tasks import imagefolder
    from spaedge.train import run

    monkeypatch.setattr(imagefolder, "DEFAULT_SIZE", (1, 28, 28))
    models = []
    metrics = run(_cfg(tmp_path, splopa_share=scope), tmp_path / "run", on_model=models.append)
    model = models[0]
    tensors, meta = read_bundle(tmp_path / "run" / "task.safetensors")
    assert set(json.loads(meta["splopa_sets"]).values()) == (
        {"model"} if scope == "model" else {"layer1", "layer2", "layer3", "layer4"}
    )
    assert not any(k.endswith(".pointwise_delta") for k in tensors if not k.startswith("conv1."))
    assert metrics["learned_parameters"] == learned_parameters(model)
    again, _, _ = load_task_model(tiny_base_bundle, tmp_path / "run" / "task.safetensors")
    x = torch.randn(3, *X)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=1e-4, atol=1e-4)
    assert_bundle_matches(model, tiny_base_bundle, tmp_path / "run" / "task.safetensors", x)


@pytest.mark.slow
def test_a_run_interrupted_in_the_final_phase_resumes_to_the_same_bundle(tmp_path, monkeypatch):
    """The checkpoint holds every layer's copy of the shared prototypes: resuming
    relinks them (one parameter in the optimizer again) and ends where an
    uninterrupted run ends."""
    from spaedge.pack.format import read_bundle
    from spaedge.tasks import imagefolder
    from spaedge.train import run

    monkeypatch.setattr(imagefolder, "DEFAULT_SIZE", (1, 28, 28))
    cfg = _cfg(tmp_path, splopa_share="stage", final_epochs=2)
    run(cfg, tmp_path / "ref")

    run_stopped_in_final(cfg, tmp_path / "cut", monkeypatch)
    models = []
    run(cfg, tmp_path / "cut", on_model=models.append)
    assert len({id(m.proto_u) for m in adapted_layers(models[0]).values() if m.blocked}) == 4
    (ta, ma), (tb, mb) = (read_bundle(tmp_path / d / "task.safetensors") for d in ("ref", "cut"))
    assert ma == mb and ma["content_hash"] == mb["content_hash"]
    assert set(ta) == set(tb) and all(np.array_equal(ta[k], tb[k]) for k in ta)
