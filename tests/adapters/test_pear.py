"""Pear (spaedge.adapters.pear): Taylor scores of whole adapters, the sharing
map, the knowledge checkpoint, parameter sharing in torch, bundles that store a
shared adapter once, and the whole path (train, prune, share, pack, run in the
C++ runtime) on tiny data."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _toolchain_helpers import assert_bundle_matches, run_stopped_in_final, tiny_task_model
from _toolchain_helpers import random_batches as _data
from _toolchain_helpers import tiny_image_folder as _images
from _toolchain_helpers import train_steps as _train
from torch import nn

from spaedge.adapters import adapted_layers, get_method, learned_parameters
from spaedge.adapters.pear import (
    OWN,
    REMOVED,
    PearLoRA,
    PearOptions,
    adapter_scores,
    apply_pear,
    knowledge_init,
    link_shared,
    relink,
    shared_map,
    sharing_map,
)
from spaedge.models import get_base

torch.backends.mkldnn.enabled = False
torch.set_num_threads(1)

SPEC = dict(name="t", labels=["a", "b", "c"], input_size=(1, 28, 28), mean=[0.5], std=[0.25])


def _tiny(rank=4, seed=0):
    return tiny_task_model("pear", rank=rank, seed=seed)


def _trained(rank=4):
    model = _tiny(rank)
    data = _data()
    _train(model, data)
    return model, data


# ------------------------------------------------------------------ scores
class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = PearLoRA(nn.Linear(5, 4, bias=True), rank=2)
        self.l2 = PearLoRA(nn.Linear(4, 3, bias=False), rank=2)

    def forward(self, x):
        return self.l2(torch.relu(self.l1(x)))


def test_taylor_scores_are_the_first_order_term_computed_by_hand():
    torch.manual_seed(1)
    net = _MLP()
    with torch.no_grad():
        for m in (net.l1, net.l2):
            m.lora_b.normal_()
    # two batches of different sizes: the loss is the mean over all 7 samples
    data = [
        (torch.randn(4, 5), torch.tensor([0, 1, 2, 0])),
        (torch.randn(3, 5), torch.tensor([2, 2, 1])),
    ]
    got = adapter_scores(net, data)
    x = torch.cat([d[0] for d in data])
    y = torch.cat([d[1] for d in data])
    n = len(y)
    with torch.no_grad():
        w1 = net.l1.weight + net.l1.lora_b @ net.l1.lora_a
        w2 = net.l2.weight + net.l2.lora_b @ net.l2.lora_a
        z1 = x @ w1.T + net.l1.bias
        h = z1.clamp(min=0)
        z2 = h @ w2.T
        d2 = (torch.softmax(z2, 1) - F.one_hot(y, 3).float()) / n  # dL/dz2
        g2 = d2.T @ h  # dL/dW2_eff
        d1 = (d2 @ w2) * (z1 > 0)
        g1 = d1.T @ x  # dL/dW1_eff
        # A, B of one product: g_A.A + g_B.B = 2 <dL/dW_eff, B A>
        want = {
            "l1": abs(2 * float((g1 * (net.l1.lora_b @ net.l1.lora_a)).sum())),
            "l2": abs(2 * float((g2 * (net.l2.lora_b @ net.l2.lora_a)).sum())),
        }
    assert set(got) == {"l1", "l2"}
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-4), k
    assert got["l1"] != pytest.approx(got["l2"], rel=1e-2)  # the two layers are really told apart


def test_scores_of_an_untrained_lora_are_zero_and_need_data():
    model = _tiny()  # B = 0: removing the adapter changes nothing
    assert all(v == 0.0 for v in adapter_scores(model, _data(1, bs=4)).values())
    with pytest.raises(ValueError, match="need task data"):
        adapter_scores(model, [])


# ------------------------------------------------------------------ sharing map
SHAPES = {"a": (4, 4), "b": (4, 4), "c": (8, 4), "d": (4, 4), "e": (4, 4), "f": (8, 4), "g": (4, 4)}
SCORES = {"a": 5.0, "b": 1.0, "c": 0.5, "d": 9.0, "e": 0.1, "f": 3.0, "g": 2.0}


def test_sharing_map_nearest_same_shape():
    m = sharing_map(SHAPES, SCORES, ["b", "c", "e"], "nearest")
    # b (depth 1): a at distance 1 beats d at distance 2; c (8,4): f is its only kept shape twin;
    # e (depth 4): d at distance 1 (g, also (4,4), is at distance 2)
    assert m == {"b": "a", "c": "f", "e": "d"}
    # equal distance: the higher score wins (d=9 over a=5 for position c's twin test below)
    m = sharing_map(
        {"a": (2, 2), "x": (2, 2), "d": (2, 2)}, {"a": 5.0, "x": 0.0, "d": 9.0}, ["x"], "nearest"
    )
    assert m == {"x": "d"}


def test_sharing_map_most_important_same_shape_and_none():
    m = sharing_map(SHAPES, SCORES, ["b", "c", "e"], "important")
    assert m == {"b": "d", "c": "f", "e": "d"}
    assert sharing_map(SHAPES, SCORES, ["b", "c", "e"], "none") == {"b": None, "c": None, "e": None}
    # a position whose kept shape no kept adapter has loses its adapter
    assert sharing_map(SHAPES, SCORES, ["c", "f"], "nearest") == {"c": None, "f": None}
    with pytest.raises(ValueError, match="unknown Pear sharing map"):
        sharing_map(SHAPES, SCORES, ["b"], "random")


# ------------------------------------------------------------------ knowledge checkpoint
def test_knowledge_init_reproduces_the_weighted_product_when_rank_suffices():
    g = torch.Generator().manual_seed(0)
    p1 = torch.randn(6, 1, generator=g) @ torch.randn(1, 5, generator=g)
    p2 = torch.randn(6, 2, generator=g) @ torch.randn(2, 5, generator=g)
    b, a = knowledge_init([p1, p2], [3.0, 1.0], rank=4)
    assert b.shape == (6, 4) and a.shape == (4, 5)
    want = 0.75 * p1 + 0.25 * p2  # rank 3 <= 4
    torch.testing.assert_close(b @ a, want, rtol=1e-5, atol=1e-5)
    # the 4th direction is dead in the product but trainable: B column 0, A row random
    assert torch.count_nonzero(b[:, 3]) == 0 and torch.count_nonzero(a[3]) > 0
    # zero scores: plain mean
    b, a = knowledge_init([p1, p2], [0.0, 0.0], rank=4)
    torch.testing.assert_close(b @ a, 0.5 * (p1 + p2), rtol=1e-5, atol=1e-5)


def test_knowledge_init_at_a_lower_rank_is_the_best_approximation():
    g = torch.Generator().manual_seed(1)
    ps = [torch.randn(6, 5, generator=g) for _ in range(2)]
    m = 0.5 * (ps[0] + ps[1])
    s = torch.linalg.svdvals(m)
    b, a = knowledge_init(ps, [1.0, 1.0], rank=2)
    err = torch.linalg.norm(b @ a - m)
    assert float(err) == pytest.approx(float(s[2:].square().sum().sqrt()), rel=1e-4)  # Eckart-Young


# ------------------------------------------------------------------ apply_pear on a model
def test_pear_prunes_the_lowest_scores_and_shares_one_tensor():
    model, data = _trained()
    layers = adapted_layers(model)
    before = {n: (m.lora_b @ m.lora_a).detach().clone() for n, m in layers.items()}
    scores = adapter_scores(model, data)
    lp = learned_parameters(model)
    rep = apply_pear(model, data, prune=0.5, share="nearest")
    assert rep["scores"] == scores
    assert sorted(rep["pruned"]) == sorted(sorted(scores, key=scores.get)[:6])
    # unpruned tiny: layer1's two convs are the only same-shape pair among these scores' choice
    assert rep["shared"] >= 1 and rep["shared"] + rep["removed"] == 6
    saved = 0
    for t, s in rep["map"].items():
        tgt = layers[t]
        if s is None:
            assert tgt.state == REMOVED and tgt.delta() is None
            saved += 4 * (before[t].shape[0] + before[t].shape[1])  # rank 4: B is O x 4, A is 4 x I
            continue
        src = layers[s]
        assert (tgt.out_channels, tgt.in_channels) == (src.out_channels, src.in_channels)
        assert tgt.lora_a is src.lora_a and tgt.lora_b is src.lora_b  # one nn.Parameter
        assert src.state == OWN and tgt.state == list(layers).index(s)
        saved += tgt.lora_a.numel() + tgt.lora_b.numel()
        # knowledge checkpoint: the shared product is the best rank-4 approximation of the
        # score-weighted mean of what the source and its targets had learned
        group = [s] + [u for u, v in rep["map"].items() if v == s]
        w = torch.tensor([scores[n] for n in group])
        m = sum(wi * before[n] for wi, n in zip(w / w.sum(), group))
        u, sv, vh = torch.linalg.svd(m)
        best = (u[:, :4] * sv[:4]) @ vh[:4]
        torch.testing.assert_close((src.lora_b @ src.lora_a).detach(), best, rtol=1e-4, atol=1e-5)
    for n in layers:
        if n not in rep["map"]:
            assert layers[n].state == OWN
    assert learned_parameters(model) == lp - saved
    # joint training: a step moves the shared factor once, both layers see it
    src_name = next(s for s in rep["map"].values() if s is not None)
    tgt_name = next(t for t, s in rep["map"].items() if s == src_name)
    params = [p for p in model.parameters() if p.requires_grad]
    assert sum(p is layers[src_name].lora_a for p in params) == 1
    a0 = layers[src_name].lora_a.detach().clone()
    _train(model, data, steps=1)
    assert not torch.equal(a0, layers[src_name].lora_a.detach())
    assert layers[tgt_name].lora_a is layers[src_name].lora_a
    # a second call (a resumed run) changes nothing
    assert apply_pear(model, data, prune=0.5).get("skipped")


def test_the_pipeline_hook_reports_pears_counts_the_same_after_a_resume():
    """Method.after_pruning returns the metrics Pear adds to a run's; a resumed run
    (Pear already applied, so skipped) reports the same ones, read from the layers."""
    model, data = _trained()
    hook = get_method("pear").after_pruning
    got = hook(model, PearOptions(rank=4, pear_prune=0.5, pear_share="none"), data)
    assert got == {"pear_pruned": 6, "pear_shared": 0, "pear_removed": 6}
    assert hook(model, PearOptions(rank=4, pear_prune=0.5), data) == got  # skipped, same counts


def test_pear_after_channel_pruning_shares_only_equal_kept_shapes_and_refuses_later_pruning():
    from spaedge.pruning.prune import prune_to_density

    model, data = _trained()
    prune_to_density(model, torch.zeros(1, 1, 28, 28), 0.5, step_fraction=0.25)
    rep = apply_pear(model, data, prune=0.5, share="important")
    layers = adapted_layers(model)
    for t, s in rep["map"].items():
        if s is not None:
            assert (layers[t].out_channels, layers[t].in_channels) == (
                layers[s].out_channels,
                layers[s].in_channels,
            )
        else:
            assert not any(
                (layers[k].out_channels, layers[k].in_channels)
                == (layers[t].out_channels, layers[t].in_channels)
                for k in layers
                if k not in rep["map"]
            )
    pruned = rep["pruned"][0]
    with pytest.raises(RuntimeError, match="prune channels before Pear"):
        layers[pruned].keep_out(torch.tensor([0]))


def test_relink_restores_sharing_from_a_state_dict():
    from spaedge.train.checkpoint import adopt_state

    model, data = _trained()
    apply_pear(model, data, prune=0.5)
    fresh = _tiny()
    adopt_state(fresh, {k: v.clone() for k, v in model.state_dict().items()})
    relink(fresh)
    assert shared_map(fresh) == shared_map(model) and shared_map(model)
    for t, s in shared_map(fresh).items():
        assert fresh.get_submodule(t).lora_a is fresh.get_submodule(s).lora_a
    assert learned_parameters(fresh) == learned_parameters(model)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))


# ------------------------------------------------------------------ bundles
def _unshared(model):
    """The same model with every shared adapter given its own copy of the factors."""
    m = copy.deepcopy(model)
    for _n, layer in adapted_layers(m).items():
        if layer.state >= 0:
            layer.lora_a = nn.Parameter(layer.lora_a.detach().clone())
            layer.lora_b = nn.Parameter(layer.lora_b.detach().clone())
            layer.pear_source.fill_(OWN)
    return m


def test_bundle_stores_a_shared_adapter_once_and_loads_the_sharing_back(tiny_base_bundle, tmp_path):
    from spaedge.pack.bundle import TaskSpec, base_hash, load_task_model, write_task
    from spaedge.pack.format import read_bundle

    model, data = _trained()
    rep = apply_pear(model, data, prune=0.5)
    spec = TaskSpec(*SPEC.values())
    h = base_hash(get_base("tiny"))
    write_task(model, spec, h, tmp_path / "shared.safetensors")
    write_task(_unshared(model), spec, h, tmp_path / "copied.safetensors")
    tensors, meta = read_bundle(tmp_path / "shared.safetensors")
    smap = json.loads(meta["shared_adapters"])
    assert smap == {t: s for t, s in rep["map"].items() if s is not None}
    for t in rep["map"]:
        assert f"{t}.lora_a" not in tensors and f"{t}.lora_b" not in tensors
    copied, copied_meta = read_bundle(tmp_path / "copied.safetensors")
    assert "shared_adapters" not in copied_meta
    factor_bytes = sum(
        4 * (model.get_submodule(t).lora_a.numel() + model.get_submodule(t).lora_b.numel())
        for t in smap
    )
    size = lambda p: (tmp_path / p).stat().st_size  # noqa: E731
    assert size("copied.safetensors") - size("shared.safetensors") >= factor_bytes - 200
    again, _, _ = load_task_model(tiny_base_bundle, tmp_path / "shared.safetensors")
    assert shared_map(again) == smap
    for t, s in smap.items():
        assert again.get_submodule(t).lora_a is again.get_submodule(s).lora_a
    assert learned_parameters(again) == learned_parameters(model)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=1e-5, atol=1e-5)


def test_loading_refuses_a_map_between_different_shapes(tiny_base_bundle, tmp_path):
    from spaedge.errors import BundleError
    from spaedge.pack.bundle import TaskSpec, base_hash, load_task_model, task_bundle
    from spaedge.pack.format import write_bundle

    model, data = _trained()
    apply_pear(model, data, prune=0.5)
    tensors, meta = task_bundle(model, TaskSpec(*SPEC.values()), base_hash(get_base("tiny")))
    smap = json.loads(meta["shared_adapters"])
    t = next(iter(smap))
    smap[t] = "layer4.0.conv2"
    meta["shared_adapters"] = json.dumps(smap)
    write_bundle(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(BundleError, match="shared_adapters"):
        load_task_model(tiny_base_bundle, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="not an adapted conv"):
        link_shared(_tiny(), {"nowhere": "conv1"})


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
@pytest.mark.parametrize("density", [1.0, 0.6])
def test_pear_trains_prunes_packs_and_runs_in_the_runtime(
    density, tiny_base_bundle, tmp_path, monkeypatch
):
    """spaedge train's pipeline with --method pear: adapt, prune channels, Pear,
    final epochs, pack; the bundle rebuilds the model and the C++ runtime agrees."""
    from spaedge.tasks import imagefolder

    monkeypatch.setattr(
        imagefolder, "DEFAULT_SIZE", (3, 28, 28)
    )  # the base's own size: seconds, not minutes
    from spaedge.pack.bundle import load_task_model
    from spaedge.pack.format import read_bundle
    from spaedge.train import TrainConfig, run

    task = f"imagefolder:{_images(tmp_path / 'imgs')}"
    models = []
    cfg = TrainConfig(
        task=task,
        method="pear",
        options=PearOptions(rank=4, pear_prune=0.5),
        density=density,
        epochs=1,
        recovery_epochs=1,
        final_epochs=1,
        prune_step=0.2,
        batch_size=16,
        seed=1,
    )
    metrics = run(cfg, tmp_path / "run", on_model=models.append)
    model = models[0]
    layers = adapted_layers(model)
    states = [m.state for m in layers.values()]
    assert sum(s != OWN for s in states) == round(0.5 * len(layers))
    tensors, meta = read_bundle(tmp_path / "run" / "task.safetensors")
    assert meta["method"] == "pear"
    smap = json.loads(meta.get("shared_adapters", "{}"))
    assert smap == shared_map(model)
    if density == 1.0:
        assert smap  # unpruned: layer1's two convs (at least) have one shape
    n_factors = sum(1 for k in tensors if k.endswith(".lora_a"))
    assert n_factors == sum(s == OWN for s in states)
    assert metrics["learned_parameters"] == learned_parameters(model)
    # the hook's metrics join the run's
    assert metrics["pear_pruned"] == sum(s != OWN for s in states)
    assert metrics["pear_shared"] == len(smap)
    assert metrics["pear_removed"] == sum(s == REMOVED for s in states)
    again, _, _ = load_task_model(tiny_base_bundle, tmp_path / "run" / "task.safetensors")
    inp = json.loads(meta["input"])  # an image folder task runs at 224 x 224 by default
    x = torch.randn(3, inp["channels"], inp["height"], inp["width"])
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=1e-4, atol=1e-4)
    assert_bundle_matches(model, tiny_base_bundle, tmp_path / "run" / "task.safetensors", x)


@pytest.mark.slow
def test_a_run_interrupted_after_pear_resumes_to_the_same_bundle(tmp_path, monkeypatch):
    """The checkpoint of the final phase holds a shared/removed-adapter model: resuming
    relinks the sharing (one parameter in the optimizer again) and does not apply Pear twice."""
    from spaedge.tasks import imagefolder
    from spaedge.train import TrainConfig, run

    monkeypatch.setattr(imagefolder, "DEFAULT_SIZE", (3, 28, 28))
    cfg = TrainConfig(
        task=f"imagefolder:{_images(tmp_path / 'imgs')}",
        method="pear",
        options=PearOptions(rank=4),
        density=1.0,
        epochs=1,
        final_epochs=2,
        batch_size=16,
        seed=2,
    )
    run(cfg, tmp_path / "ref")

    run_stopped_in_final(cfg, tmp_path / "cut", monkeypatch)
    models = []
    run(cfg, tmp_path / "cut", on_model=models.append)
    assert shared_map(models[0])
    # same tensors and metadata (safetensors writes the metadata keys in a varying order,
    # so the files are compared by content, not byte for byte)
    from spaedge.pack.format import read_bundle

    (ta, ma), (tb, mb) = (read_bundle(tmp_path / d / "task.safetensors") for d in ("ref", "cut"))
    assert ma == mb and ma["content_hash"] == mb["content_hash"]
    assert set(ta) == set(tb) and all(np.array_equal(ta[k], tb[k]) for k in ta)
