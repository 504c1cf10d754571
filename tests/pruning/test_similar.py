"""One-shot pruning from similar tasks (spaedge.pruning.similar, spaedge.train.library): the vote math on
hand-made masks, the budget and dependency groups of the one-shot removal, the
similarity, and the whole path (library of two tiny tasks -> a new task pruned
once -> packed -> run by the C++ runtime, matching PyTorch)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _toolchain_helpers import assert_bundle_matches, tiny_task_model  # noqa: E402

from spaedge.adapters.base import AdaptedLayer  # noqa: E402
from spaedge.adapters.registry import RankOptions
from spaedge.models import get_base  # noqa: E402
from spaedge.pruning import similar  # noqa: E402
from spaedge.pruning.groups import channel_groups  # noqa: E402
from spaedge.pruning.prune import _channel_cost, _weights, density  # noqa: E402

torch.set_num_threads(1)
EXAMPLE = torch.zeros(1, 1, 28, 28)


def _tiny(seed=0):
    return tiny_task_model("splora", rank=2, seed=seed)


def _plan(kept: dict[str, list[int]], channels: dict[str, int], emb, task="t") -> similar.Plan:
    return similar.Plan(
        task=task,
        base="tiny",
        base_hash="h",
        density=0.5,
        kept=kept,
        base_channels=channels,
        embedding=list(emb),
    )


# ------------------------------------------------------------------ vote math
def test_vote_weights_are_normalised_and_follow_similarity():
    w = similar.vote_weights([0.9, 0.8, 0.8])
    assert math.isclose(float(w.sum()), 1.0, rel_tol=1e-12)
    assert w[0] > w[1] == w[2]
    # softmax at the documented temperature: a cosine 0.1 higher weighs e^2 more
    assert math.isclose(float(w[0] / w[1]), math.exp(0.1 / similar.TEMPERATURE), rel_tol=1e-9)
    torch.testing.assert_close(
        similar.vote_weights([0.3, 0.3]), torch.tensor([0.5, 0.5], dtype=torch.float64)
    )
    torch.testing.assert_close(
        similar.vote_weights([0.9, 0.1], temperature=math.inf),
        torch.tensor([0.5, 0.5], dtype=torch.float64),
    )
    with pytest.raises(ValueError):
        similar.vote_weights([])


def test_channel_votes_are_the_weighted_sum_of_kept_masks():
    chans = {"a": 6, "b": 4}
    p1 = _plan({"a": [0, 2, 4], "b": [0, 1]}, chans, [1, 0])
    p2 = _plan({"a": [0, 1, 2], "b": [3]}, chans, [0, 1])
    w = similar.vote_weights([0.95, 0.85])
    votes = similar.channel_votes([(p1, 0.95), (p2, 0.85)])
    w1, w2 = float(w[0]), float(w[1])
    want_a = [w1 + w2, w2, w1 + w2, 0, w1, 0]
    want_b = [w1, w1, 0, w2]
    torch.testing.assert_close(votes["a"], torch.tensor(want_a, dtype=torch.float64))
    torch.testing.assert_close(votes["b"], torch.tensor(want_b, dtype=torch.float64))
    assert float(votes["a"].max()) <= 1.0 + 1e-12  # a weighted fraction of the neighbours


def _hand_votes(model) -> dict[str, torch.Tensor]:
    """Two hand-made plans per layer: one keeps the even channels, the other the first half."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, AdaptedLayer)}
    chans = {n: m.base_out_channels for n, m in layers.items()}
    even = _plan({n: list(range(0, c, 2)) for n, c in chans.items()}, chans, [1.0, 0.0])
    half = _plan({n: list(range(c // 2)) for n, c in chans.items()}, chans, [0.6, 0.8])
    return similar.channel_votes([(even, 0.9), (half, 0.6)])


@pytest.mark.parametrize("target", [0.5, 0.3, 0.12])
def test_prune_by_votes_hits_the_budget_ranks_by_vote_and_respects_groups(target):
    model = _tiny()
    votes = _hand_votes(model)
    groups = channel_groups(model, EXAMPLE)
    score = {
        gi: similar.group_votes(model, g, votes) + similar.TIE_BREAK * similar._magnitude(model, g)
        for gi, g in enumerate(groups)
    }
    layers = [m for m in model.modules() if isinstance(m, AdaptedLayer)]
    base_total = sum(_weights(m, base=True) for m in layers)
    max_cost = max(_channel_cost(model, g) for g in groups) / base_total
    members = [(list(g.producers), list(g.norms), list(g.consumers)) for g in groups]
    reached = similar.prune_by_votes(model, EXAMPLE, votes, target)
    # the budget: at most the target, and no more than one channel's weights below it
    assert reached == pytest.approx(density(model))
    assert reached <= target + 1e-12
    assert reached > target - max_cost
    # dependency groups: every member of a group kept the same base channels
    kept_scores, removed_scores = [], []
    for gi, (prod, norms, cons) in enumerate(members):
        out = model.get_submodule(prod[0]).out_index
        for name in prod:
            assert torch.equal(model.get_submodule(name).out_index, out), name
        for name in norms:
            assert model.get_submodule(name).num_features == len(out)
        for name in cons:
            m = model.get_submodule(name)
            if isinstance(m, AdaptedLayer):
                assert torch.equal(m.in_index, out), name
            else:
                assert m.in_features == len(out)
        kept = set(out.tolist())
        s = score[gi]
        kept_scores += [float(s[i]) for i in kept] if len(kept) > 1 else []
        removed_scores += [float(s[i]) for i in range(len(s)) if i not in kept]
    # the global ranking: nothing removed scored above anything kept
    assert removed_scores and max(removed_scores) <= min(kept_scores) + 1e-12
    model(torch.randn(2, 1, 28, 28))


def test_the_vote_prefers_channels_the_similar_tasks_kept():
    model = _tiny()
    votes = _hand_votes(model)
    similar.prune_by_votes(model, EXAMPLE, votes, 0.3)
    # every kept channel was kept by at least one neighbour
    for name, m in model.named_modules():
        if isinstance(m, AdaptedLayer):
            assert (votes[name][m.out_index] > 0).all() or m.out_channels == 1, name


# -------------------------------------------------------------- similarity
def _images(root, pattern: str, n=(24, 8, 8), seed=0):
    """A tiny two-class image folder. squares: bright vs dark noise;
    stripes: horizontal vs vertical bars."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "val", "test"), n):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                if pattern == "squares":
                    a = rng.normal(200 if c == "a" else 60, 40, (28, 28))
                else:
                    bars = (np.arange(28) // 4) % 2 * 180.0 + 30
                    a = (bars[:, None] if c == "a" else bars[None, :]) + rng.normal(0, 20, (28, 28))
                Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L").save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Task names of three tiny image folders at 1x28x28 (imagefolder's own default is 3x224x224: slow)."""
    from spaedge.tasks.imagefolder import make_imagefolder
    from spaedge.tasks.registry import register_task

    root = tmp_path_factory.mktemp("tasks")
    dirs = {
        "squares": _images(root / "squares", "squares"),
        "stripes": _images(root / "stripes", "stripes"),
        "squares2": _images(root / "squares2", "squares", seed=1),
    }
    names = {}
    for k, d in dirs.items():
        names[k] = f"simtest_{k}"
        register_task(
            names[k],
            lambda data_dir, size, d=d, n=names[k]: make_imagefolder(d, size or (1, 28, 28), n),
        )
    return names


def test_similarity_ranks_an_identical_task_first(folders):
    from spaedge.tasks import get_task

    base = get_base("tiny")
    emb = {k: similar.task_embedding(base, get_task(p).split("train")) for k, p in folders.items()}
    assert similar.cosine(emb["squares"], emb["squares"]) == pytest.approx(1.0)
    chans = {"x": 1}
    lib = [
        _plan({"x": [0]}, chans, emb["stripes"], task="stripes"),
        _plan({"x": [0]}, chans, emb["squares"], task="squares"),
        _plan({"x": [0]}, chans, emb["squares2"], task="squares2"),
    ]
    near = similar.nearest(lib, emb["squares"], k=3)
    assert [p.task for p, _ in near] == ["squares", "squares2", "stripes"]
    assert near[0][1] == pytest.approx(1.0)
    # plans of another base are never neighbours
    assert similar.nearest(lib, emb["squares"], k=3, base_hash="other") == []


# ------------------------------------------------------------------ end to end
CFG = dict(
    epochs=1,
    recovery_epochs=0,
    final_epochs=1,
    density=0.5,
    prune_step=0.3,
    seed=0,
    batch_size=16,
    options=RankOptions(rank=2),  # splora's
)


@pytest.mark.slow
def test_library_then_a_new_task_pruned_once_runs_in_the_runtime(
    folders, tmp_path, tiny_base_bundle
):
    from spaedge.train import TrainConfig, library, run

    runs = {}
    for name in ("squares", "stripes"):
        runs[name] = tmp_path / "runs" / name
        run(TrainConfig(task=folders[name], schedule="oneshot", **CFG), runs[name])
        plan = json.loads((runs[name] / library.PLAN_FILE).read_text())
        assert plan["format"] == "spaedge-plan" and plan["density"] <= 0.5
    lib = tmp_path / "lib"
    files = [library.add_to_library(r, lib) for r in runs.values()]
    assert len(library.load_library(lib)) == 2
    stored = library.read_plan(files[1] if "stripes" in files[1].name else files[0])
    direct = library.plan_from_run(runs["stripes"])
    assert (
        direct.kept == stored.kept
        and direct.density == stored.density
        and direct.embedding == stored.embedding
    )
    assert (
        len(library.load_library(tmp_path / "runs")) == 2
    )  # a directory of finished runs is a library too
    # a run directory whose files no longer match its manifest is refused, never half-read
    (runs["stripes"] / library.PLAN_FILE).write_text("{}")
    with pytest.raises(ValueError, match="not the file the run wrote"):
        library.plan_from_run(runs["stripes"])
    with pytest.raises(ValueError, match="not the file the run wrote"):
        library.load_library(tmp_path / "runs")

    new = tmp_path / "new"
    models = []
    cfg = TrainConfig(
        task=folders["squares2"],
        schedule="similar",
        library=str(lib),
        neighbours=2,
        **{**CFG, "density": 0.3},
    )
    metrics = run(cfg, new, on_model=models.append)
    near = metrics["similar_tasks"]
    assert near[0]["task"] == folders["squares"]  # the same kind of images ranks first
    assert near[0]["weight"] > near[1]["weight"] and sum(
        n["weight"] for n in near
    ) == pytest.approx(1.0)
    assert metrics["density"] <= 0.3 + 1e-12
    model = models[0]

    assert_bundle_matches(
        model, tiny_base_bundle, new / "task.safetensors", torch.randn(5, 1, 28, 28)
    )


def test_similar_schedule_needs_a_library(folders, tmp_path):
    from spaedge.train import TrainConfig, run

    with pytest.raises(ValueError, match="--library"):
        run(TrainConfig(task=folders["squares"], schedule="similar", **CFG), tmp_path)


def test_a_plan_of_the_task_itself_never_votes(folders, tmp_path):
    # A library that holds the task being pruned (same name): its own plan would
    # be its nearest neighbour at similarity 1 and decide the vote alone.
    from spaedge.train import TrainConfig, library
    from spaedge.train.pipeline import _prune_from_library
    from spaedge.train.setup import build_task_model, embed_task

    lib = tmp_path / "lib"
    lib.mkdir()
    cfg = TrainConfig(
        task=folders["squares"],
        base="tiny",
        schedule="similar",
        library=str(lib),
        neighbours=2,
        **CFG,
    )
    task, model, bhash = build_task_model(cfg)
    layers = {
        n: int(m.base_out_channels) for n, m in model.named_modules() if hasattr(m, "keep_out")
    }
    emb = embed_task(cfg, task).tolist()
    every = {n: list(range(c)) for n, c in layers.items()}
    own = _plan(every, layers, emb, task=folders["squares"])
    own.base_hash = bhash
    library.write_plan(own, lib / "own.json")
    example = torch.zeros(1, *task.input_size)
    with pytest.raises(ValueError, match="plans of .* itself do not vote"):
        _prune_from_library(model, cfg, task, bhash, example, lambda m: None)
    other = _plan(every, layers, [-v for v in emb], task=folders["stripes"])
    other.base_hash = bhash
    library.write_plan(other, lib / "other.json")
    got = _prune_from_library(model, cfg, task, bhash, example, lambda m: None)
    assert [n["task"] for n in got["neighbours"]] == [folders["stripes"]]
