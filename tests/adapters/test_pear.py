"""Pear (spaedge.adapters.pear): Taylor scores of whole adapters, the sharing
map, the re-initialisation of a shared adapter, parameter sharing in torch
(one adapter in base coordinates, each conv gathering its kept channels),
bundles that store a shared adapter once, and the whole path (train, prune,
share, pack, run in the C++ runtime) on tiny data and on `small` at 30 %."""

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
from spaedge.adapters.base import centre_tap
from spaedge.adapters.pear import (
    OWN,
    REMOVED,
    PearLoRA,
    PearOptions,
    adapter_scores,
    apply_pear,
    counts,
    knowledge_init,
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


def test_knowledge_init_places_each_product_at_its_kept_channels():
    """Products of convs keeping different channels: each entry of the base-coordinate
    mean is over the convs keeping it; rows and columns nobody keeps are 0."""
    g = torch.Generator().manual_seed(2)
    p1 = torch.randn(2, 1, generator=g) @ torch.randn(1, 2, generator=g)
    p2 = torch.randn(2, 1, generator=g) @ torch.randn(1, 3, generator=g)
    sup = [
        (torch.tensor([0, 2]), torch.tensor([0, 1])),
        (torch.tensor([2, 3]), torch.tensor([1, 2, 4])),
    ]
    b, a = knowledge_init([p1, p2], [3.0, 1.0], rank=5, supports=sup, shape=(5, 6))
    assert b.shape == (5, 5) and a.shape == (5, 6)
    want = torch.zeros(5, 6)
    want[0, 0], want[0, 1] = p1[0, 0], p1[0, 1]
    want[2, 0] = p1[1, 0]
    want[2, 1] = 0.75 * p1[1, 1] + 0.25 * p2[0, 0]  # the one entry both keep
    want[2, 2], want[2, 4] = p2[0, 1], p2[0, 2]
    want[3, 1], want[3, 2], want[3, 4] = p2[1, 0], p2[1, 1], p2[1, 2]
    torch.testing.assert_close(b @ a, want, rtol=1e-5, atol=1e-6)  # rank 5 suffices
    assert torch.count_nonzero(b[[1, 4]]) == 0  # rows no conv keeps
    assert torch.count_nonzero(a[:, [3, 5]]) == 0  # columns no conv keeps


def _gathered(layer):
    b, a = layer.factors()
    return (b @ a).detach()


# ------------------------------------------------------------------ apply_pear on a model
def test_pear_prunes_the_lowest_scores_and_shares_one_tensor():
    model, data = _trained()
    layers = adapted_layers(model)
    names = list(layers)
    before = {n: (m.lora_b @ m.lora_a).detach().clone() for n, m in layers.items()}
    scores = adapter_scores(model, data)
    lp = learned_parameters(model)
    rep = apply_pear(model, data, prune=0.5, share="nearest")
    assert rep["scores"] == scores
    assert sorted(rep["pruned"]) == sorted(sorted(scores, key=scores.get)[:6])
    # unpruned tiny: layer1's two convs, and a stage's first conv and its downsampling
    # conv, have one base (O, I)
    assert rep["shared"] >= 1 and rep["shared"] + rep["removed"] == 6
    groups: dict[str, list[str]] = {}
    saved = 0
    for t, s in rep["map"].items():
        tgt = layers[t]
        if s is None:
            assert tgt.state == REMOVED and tgt.delta() is None
            saved += 4 * (before[t].shape[0] + before[t].shape[1])  # rank 4: B is O x 4, A is 4 x I
            continue
        groups.setdefault(s, [s]).append(t)
        src = layers[s]
        assert (tgt.base_out_channels, tgt.base_in_channels) == (
            src.base_out_channels,
            src.base_in_channels,
        )
        assert tgt.lora_a is src.lora_a and tgt.lora_b is src.lora_b  # one nn.Parameter
        saved += 4 * (before[t].shape[0] + before[t].shape[1])
    for group in groups.values():
        holder = min(names.index(n) for n in group)
        assert all(layers[n].state == holder for n in group)  # the group's first conv holds it
        # the shared product is the best rank-4 approximation of the score-weighted
        # mean of what the source and its targets had learned (unpruned: same channels)
        w = torch.tensor([scores[n] for n in group])
        m = sum(wi * before[n] for wi, n in zip(w / w.sum(), group))
        u, sv, vh = torch.linalg.svd(m)
        best = (u[:, :4] * sv[:4]) @ vh[:4]
        for n in group:
            torch.testing.assert_close(_gathered(layers[n]), best, rtol=1e-4, atol=1e-5)
    in_groups = {n for g in groups.values() for n in g}
    for n in layers:
        if n not in rep["map"] and n not in in_groups:
            assert layers[n].state == OWN
    assert counts(model) == {
        "pear_pruned": 6,
        "pear_shared": rep["shared"],
        "pear_removed": rep["removed"],
    }
    assert learned_parameters(model) == lp - saved
    # joint training: a step moves the shared factor once, every member sees it
    src_name = next(iter(groups))
    tgt_name = groups[src_name][1]
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


def _pruned(density=0.5):
    from spaedge.pruning.prune import prune_to_density

    model, data = _trained()
    prune_to_density(model, torch.zeros(1, 1, 28, 28), density, step_fraction=0.25)
    return model, data


@pytest.mark.parametrize("knowledge", ["weighted", "source"])
def test_pear_after_channel_pruning_shares_across_different_kept_channels(knowledge):
    """A shared adapter lives in base coordinates; each conv gathers its own kept
    rows and columns, so convs whose kept channels differ share it."""
    model, data = _pruned()
    layers = adapted_layers(model)
    before = {n: (m.lora_b @ m.lora_a).detach().clone() for n, m in layers.items()}
    rep = apply_pear(model, data, prune=0.5, share="important", knowledge=knowledge)
    assert rep["shared"] >= 1
    differ = 0
    for t, s in rep["map"].items():
        if s is None:  # no kept conv of its base channels
            assert not any(
                (layers[k].base_out_channels, layers[k].base_in_channels)
                == (layers[t].base_out_channels, layers[t].base_in_channels)
                for k in layers
                if k not in rep["map"]
            )
            continue
        tgt, src = layers[t], layers[s]
        assert tgt.lora_b.shape == (src.base_out_channels, 4)
        assert tgt.lora_a.shape == (4, src.base_in_channels)
        differ += not (
            torch.equal(tgt.out_index, src.out_index) and torch.equal(tgt.in_index, src.in_index)
        )
        for m in (tgt, src):  # what each conv applies: its kept rows and columns
            want = m.lora_b[m.out_index] @ m.lora_a[:, m.in_index]
            torch.testing.assert_close(m.delta().detach(), centre_tap(m.weight, want.detach()))
        if knowledge == "source":  # the source starts with its own update
            torch.testing.assert_close(_gathered(src), before[s], rtol=1e-5, atol=1e-6)
    assert differ >= 1  # the case equal kept shapes never allowed
    pruned = rep["pruned"][0]
    with pytest.raises(RuntimeError, match="prune channels before Pear"):
        layers[pruned].keep_out(torch.tensor([0]))


def test_learned_parameters_count_only_the_gathered_entries():
    model, data = _pruned()
    lp = learned_parameters(model)
    layers = adapted_layers(model)
    own = {n: 4 * (m.out_channels + m.in_channels) for n, m in layers.items()}
    rep = apply_pear(model, data, prune=0.5, share="nearest")
    groups: dict[str, list[str]] = {}
    for t, s in rep["map"].items():
        if s is not None:
            groups.setdefault(s, [s]).append(t)
    want = lp - sum(own[t] for t in rep["map"])
    for s, group in groups.items():
        rows = set().union(*(layers[n].out_index.tolist() for n in group))
        cols = set().union(*(layers[n].in_index.tolist() for n in group))
        want += 4 * (len(rows) + len(cols)) - own[s]
    assert learned_parameters(model) == want


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
    """The same model with every conv of a shared adapter given its own copy of the
    factors it gathers."""
    m = copy.deepcopy(model)
    for _n, layer in adapted_layers(m).items():
        if layer.state >= 0:
            b, a = layer.factors()
            layer.lora_a = nn.Parameter(a.detach().clone())
            layer.lora_b = nn.Parameter(b.detach().clone())
            layer.pear_source.fill_(OWN)
            layer._unused = 0
    return m


def test_bundle_stores_a_shared_adapter_once_and_loads_the_sharing_back(tiny_base_bundle, tmp_path):
    from spaedge.pack.bundle import TaskSpec, base_hash, load_task_model, write_task
    from spaedge.pack.format import read_bundle

    model, data = _pruned()
    rep = apply_pear(model, data, prune=0.5)
    spec = TaskSpec(*SPEC.values())
    h = base_hash(get_base("tiny"))
    write_task(model, spec, h, tmp_path / "shared.safetensors")
    write_task(_unshared(model), spec, h, tmp_path / "copied.safetensors")
    tensors, meta = read_bundle(tmp_path / "shared.safetensors")
    smap = json.loads(meta["shared_adapters"])
    assert smap == shared_map(model) and set(smap) >= {t for t, s in rep["map"].items() if s}
    for n in smap:
        assert f"{n}.lora_a" not in tensors and f"{n}.lora_b" not in tensors
    layers = adapted_layers(model)
    for s in set(smap.values()):  # one pair per adapter, in base coordinates
        held = layers[s]
        assert tensors[f"shared.{s}.a"].shape == (4, held.base_in_channels)
        assert tensors[f"shared.{s}.b"].shape == (held.base_out_channels, 4)
    assert not [k for k in tensors if k.startswith("shared.") and k[7:-2] not in smap.values()]
    copied, copied_meta = read_bundle(tmp_path / "copied.safetensors")
    assert "shared_adapters" not in copied_meta
    assert not [k for k in copied if k.startswith("shared.")]
    again, _, _ = load_task_model(tiny_base_bundle, tmp_path / "shared.safetensors")
    assert shared_map(again) == smap
    for t, s in smap.items():
        assert again.get_submodule(t).lora_a is again.get_submodule(s).lora_a
    assert learned_parameters(again) == learned_parameters(model)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=1e-5, atol=1e-5)
    assert_bundle_matches(model, tiny_base_bundle, tmp_path / "shared.safetensors", x)
    assert_bundle_matches(_unshared(model), tiny_base_bundle, tmp_path / "copied.safetensors", x)


def test_loading_refuses_shared_adapters_that_do_not_fit(tiny_base_bundle, tmp_path):
    from spaedge import runtime
    from spaedge.errors import BundleError
    from spaedge.pack.bundle import TaskSpec, base_hash, load_task_model, task_bundle
    from spaedge.pack.format import write_bundle

    model, data = _trained()
    apply_pear(model, data, prune=0.5)
    tensors, meta = task_bundle(model, TaskSpec(*SPEC.values()), base_hash(get_base("tiny")))
    smap = json.loads(meta["shared_adapters"])
    s = next(iter(set(smap.values())))
    own = next(n for n, m in adapted_layers(model).items() if m.state == OWN)

    def refused(name, edit, python, native):
        t, m = {k: v.copy() for k, v in tensors.items()}, dict(meta)
        edit(t, m)
        p = tmp_path / name
        write_bundle(p, t, m)
        with pytest.raises(BundleError, match=python):
            load_task_model(tiny_base_bundle, p)
        with pytest.raises(BundleError, match=native):
            runtime.Runtime(tiny_base_bundle, threads=1).load_task(p)

    def narrower(t, m):  # stored at fewer input channels than the base conv has
        t[f"shared.{s}.a"] = t[f"shared.{s}.a"][:, :-1].copy()

    refused("narrow.safetensors", narrower, "does not fit a conv", "base channels")

    def onto_own(t, m):  # a conv with its own factors cannot use a shared adapter too
        m["shared_adapters"] = json.dumps({**smap, own: s})

    refused("own.safetensors", onto_own, "has its own lora_a", "has its own lora_a")

    def missing(t, m):
        del t[f"shared.{s}.b"]

    refused(
        "missing.safetensors",
        missing,
        rf"shared\.{s}\.b' is missing",
        rf"missing tensor 'shared\.{s}\.b'",
    )

    def unused(t, m):
        t["shared.spare.a"], t["shared.spare.b"] = t[f"shared.{s}.a"], t[f"shared.{s}.b"]

    refused("unused.safetensors", unused, "no conv uses", "no entry of metadata")


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
    assert counts(model)["pear_pruned"] == round(0.5 * len(layers))
    tensors, meta = read_bundle(tmp_path / "run" / "task.safetensors")
    assert meta["method"] == "pear"
    smap = json.loads(meta.get("shared_adapters", "{}"))
    assert smap == shared_map(model)
    if density == 1.0:
        assert smap  # unpruned: layer1's two convs (at least) have one base (O, I)
    n_factors = sum(1 for k in tensors if k.endswith(".lora_a"))
    assert n_factors == sum(s == OWN for s in states)
    assert metrics["learned_parameters"] == learned_parameters(model)
    # the hook's metrics join the run's
    assert metrics["pear_pruned"] == counts(model)["pear_pruned"]
    assert metrics["pear_shared"] == len(smap) - len(set(smap.values()))  # sources not counted
    assert metrics["pear_removed"] == sum(s == REMOVED for s in states)
    again, _, _ = load_task_model(tiny_base_bundle, tmp_path / "run" / "task.safetensors")
    inp = json.loads(meta["input"])  # an image folder task runs at 224 x 224 by default
    x = torch.randn(3, inp["channels"], inp["height"], inp["width"])
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=1e-4, atol=1e-4)
    assert_bundle_matches(model, tiny_base_bundle, tmp_path / "run" / "task.safetensors", x)


def test_pear_on_small_at_30_percent_shares_and_the_runtime_agrees(tmp_path, monkeypatch):
    """The built-in `small` base (two blocks per stage) pruned to 30 % density:
    channel pruning leaves convs of one base (O, I) with different kept channels,
    Pear still shares adapters (shared > 0 in the run's metrics), and the packed
    bundle loads in the C++ runtime with the torch model's logits."""
    from spaedge.pack.bundle import write_base
    from spaedge.pack.format import read_bundle
    from spaedge.tasks import imagefolder
    from spaedge.train import TrainConfig, run

    monkeypatch.setattr(imagefolder, "DEFAULT_SIZE", (3, 28, 28))
    cfg = TrainConfig(
        task=f"imagefolder:{_images(tmp_path / 'imgs')}",
        base="small",
        method="pear",
        options=PearOptions(rank=4),
        density=0.3,
        schedule="oneshot",
        epochs=1,
        final_epochs=1,
        batch_size=16,
        seed=0,
    )
    models = []
    metrics = run(cfg, tmp_path / "run", on_model=models.append)
    model = models[0]
    assert metrics["density"] == pytest.approx(0.3, abs=0.05)
    assert metrics["pear_shared"] > 0 and metrics["pear_shared"] == counts(model)["pear_shared"]
    layers = adapted_layers(model)
    smap = shared_map(model)
    differ = [
        t
        for t, s in smap.items()
        if not (
            torch.equal(layers[t].out_index, layers[s].out_index)
            and torch.equal(layers[t].in_index, layers[s].in_index)
        )
    ]
    assert differ  # shared across different kept channels, not only equal kept shapes
    _, meta = read_bundle(tmp_path / "run" / "task.safetensors")
    assert json.loads(meta["shared_adapters"]) == smap
    base = tmp_path / "small.safetensors"
    write_base(get_base("small"), base)
    x = torch.randn(4, 1, 28, 28)
    assert_bundle_matches(model, base, tmp_path / "run" / "task.safetensors", x)


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
