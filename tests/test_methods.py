"""Methods of issue 3: criteria, schedules, SPPaRA, SPLoPA, SparseAdapter, and
their end-to-end path (train a few steps, prune, pack, run in the C++ runtime)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _toolchain_helpers import train_steps as _train
from spaedge.adapters import adapt, adapted_layers, learned_parameters
from spaedge.adapters.sparse import large_keep, sparsify
from spaedge.adapters import SPLoPA, SPPaRA, SparseAdapter
from spaedge.models import get_base
from spaedge.pruning.criteria import CRITERIA, lrp_relevance, task_weight_grads
from spaedge.pruning.groups import channel_groups
from spaedge.pruning.prune import density, prune_to_density

torch.backends.mkldnn.enabled = False
torch.set_num_threads(1)  # 2 shared cores: more threads oversubscribe and run ~100x slower


def _tiny(method="splora", rank=4, classes=3, seed=0):
    torch.manual_seed(seed)
    base = get_base("tiny")
    base.replace_head(classes)
    return adapt(base, method, rank=rank)


def _data(n=2, bs=16, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 1, 28, 28, generator=g), torch.randint(0, classes, (bs,), generator=g))
            for _ in range(n)]


# ------------------------------------------------------------------ criteria
def test_gradient_and_taylor_match_a_hand_computation():
    model = _tiny()
    data = _data(1)
    layer_name = "layer1.0.conv1"
    layer = model.get_submodule(layer_name)
    wg = task_weight_grads(model, data)
    # reference: autograd through the real task weight (adapter factors included)
    model.eval()
    w = layer.task_weight()
    w_leaf = w.detach().clone().requires_grad_(True)
    layer.weight_probe = w_leaf
    F.cross_entropy(model(data[0][0]), data[0][1]).backward()
    layer.weight_probe = None
    torch.testing.assert_close(wg[layer_name][0][1], w_leaf.grad)
    group = next(g for g in channel_groups(model, torch.zeros(1, 1, 28, 28)) if layer_name in g.producers)
    got = CRITERIA["taylor"](model, group, data=data)
    want = torch.zeros(group.size)
    for name in group.producers:
        w, g = wg[name][0]
        want += (w * g).reshape(w.shape[0], -1).sum(1).abs()
    torch.testing.assert_close(got, want / len(group.producers), rtol=1e-5, atol=1e-12)
    grad = CRITERIA["gradient"](model, group, data=data)
    assert grad.shape == (group.size,) and (grad > 0).all()


def test_data_criteria_refuse_to_run_without_data():
    model = _tiny()
    with pytest.raises(ValueError, match="needs task data"):
        prune_to_density(model, torch.zeros(1, 1, 28, 28), 0.5, criterion="taylor")


def test_lrp_epsilon_rule_on_a_small_mlp_matches_explicit_propagation():
    # Explicit layer-by-layer epsilon-LRP vs the autograd implementation.
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            from spaedge.adapters import SPLoRA
            self.l1 = SPLoRA(nn.Linear(5, 4, bias=True), rank=2)
            self.relu = nn.ReLU()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(self.relu(self.l1(x)))

    net = Net()
    nn.init.normal_(net.l1.lora_b)
    x = torch.randn(6, 5)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    eps = 1e-2
    got = lrp_relevance(net, [(x, y)], eps=eps)["l1"]
    with torch.no_grad():
        z1 = net.l1(x)
        a1 = z1.clamp(min=0)
        z2 = net.fc(a1)
        r2 = torch.zeros_like(z2)
        r2[torch.arange(6), y] = z2[torch.arange(6), y]
        s = r2 / (z2 + eps * torch.where(z2 >= 0, 1.0, -1.0))
        r_a1 = a1 * (s @ net.fc.weight)          # relevance at fc input (= relu output)
        r_z1 = r_a1 * (z1 > 0)                   # relu passes relevance through
        want = r_z1.abs().mean(0)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("criterion", ["magnitude", "gradient", "taylor", "lrp"])
@pytest.mark.parametrize("schedule", ["iterative", "oneshot"])
def test_prune_to_density_with_every_criterion_and_schedule(criterion, schedule):
    model = _tiny()
    data = _data(1, bs=8)
    steps = []
    hist = prune_to_density(model, torch.zeros(1, 1, 28, 28), 0.4, criterion=criterion, schedule=schedule,
                            step_fraction=0.2, score_kwargs={"data": data}, recover=lambda s, d: steps.append(s))
    assert density(model) <= 0.4 + 1e-9
    assert len(steps) == (len(hist) if schedule == "iterative" else 1)
    model(torch.zeros(2, 1, 28, 28))


def test_bad_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown pruning schedule"):
        prune_to_density(_tiny(), torch.zeros(1, 1, 28, 28), 0.5, schedule="sometimes")


# ------------------------------------------------------------------ adapters
def test_sppara_is_a_full_rank_centre_tap_update():
    conv = nn.Conv2d(6, 8, 3, padding=1, bias=False)
    layer = SPPaRA(conv)
    with torch.no_grad():
        layer.pointwise.normal_()
    layer.keep_out(torch.tensor([0, 2, 5]))
    layer.keep_in(torch.tensor([1, 4]))
    w = layer.task_weight()
    ref = conv.weight.detach()[[0, 2, 5]][:, [1, 4]].clone()
    ref[:, :, 1, 1] += layer.pointwise.detach()
    torch.testing.assert_close(w, ref)
    assert layer.learned_parameters() == 3 * 2


def test_splopa_update_is_a_sum_of_kronecker_products_and_prunes_whole_blocks():
    conv = nn.Conv2d(8, 12, 3, padding=1, bias=False)
    layer = SPLoPA(conv, rank=2, block=4, prototypes=3)
    with torch.no_grad():
        layer.positions.normal_()
    want = sum(torch.kron(layer.positions[p], layer.proto_u[p] @ layer.proto_v[p]) for p in range(3))
    torch.testing.assert_close(layer.update(), want)
    keep_out = torch.tensor([0, 1, 2, 3, 8, 9, 10, 11])  # blocks 0 and 2
    pos_before = layer.positions.detach().clone()
    layer.keep_out(keep_out)
    torch.testing.assert_close(layer.positions.detach(), pos_before[:, [0, 2]])
    torch.testing.assert_close(layer.update(), want[keep_out])
    with pytest.raises(ValueError, match="partial output block"):
        layer.keep_out(torch.tensor([0, 1, 2]))


def test_splopa_model_prunes_in_blocks():
    model = _tiny("splopa", rank=2)
    prune_to_density(model, torch.zeros(1, 1, 28, 28), 0.4, step_fraction=0.2, **{"block": 4})
    for name, layer in adapted_layers(model).items():
        if layer.base_out_channels % 4 == 0:
            blocks = layer.out_index // 4
            assert all(int((blocks == b).sum()) == 4 for b in blocks.unique()), name
    model(torch.zeros(1, 1, 28, 28))


@pytest.mark.parametrize("criterion", ["snip", "magnitude", "random", "grasp", "synflow"])
def test_sparse_masks_keep_a_global_budget_and_are_applied(criterion):
    model = _tiny("sparse")
    data = _data(1, bs=8)
    total = sum(m.sparse.numel() for m in model.modules() if isinstance(m, SparseAdapter))
    nnz = sparsify(model, criterion, 0.1, data, input_shape=(1, 28, 28))
    assert nnz == round(0.1 * total)
    before = learned_parameters(model)
    _train(model, data, steps=2)
    for m in model.modules():
        if isinstance(m, SparseAdapter):
            # masked entries contribute nothing, whatever the optimizer did to them
            assert torch.count_nonzero(m.update() * (1 - m.mask)) == 0
            assert m.sparse.grad is None or torch.count_nonzero(m.sparse.grad * (1 - m.mask)) == 0
    assert learned_parameters(model) == before


def test_snip_and_grasp_scores_are_the_documented_formulas():
    from spaedge.adapters.sparse import _scores
    model = _tiny("sparse")
    data = _data(1, bs=4)
    params = [m.sparse for m in model.modules() if isinstance(m, SparseAdapter)]
    model.eval()
    loss = F.cross_entropy(model(data[0][0]), data[0][1])
    g = torch.autograd.grad(loss, params, create_graph=True)
    snip = _scores(model, "snip", data)
    torch.testing.assert_close(snip[3], (g[3] * params[3]).abs().detach())
    # H g by finite differences along g for one layer
    z = sum((gi * gi.detach()).sum() for gi in g)
    hg = torch.autograd.grad(z, params)
    grasp = _scores(model, "grasp", data)
    torch.testing.assert_close(grasp[3], (params[3] * hg[3]).detach())


def test_large_sparse_has_the_same_nonzeros_as_sparse():
    small, large = _tiny("sparse"), _tiny("sparse-large")
    n_small = sparsify(small, "magnitude", 0.2)
    n_large = sparsify(large, "magnitude", large_keep(large, 0.2))
    assert abs(n_small - n_large) <= 2
    assert learned_parameters(small) == learned_parameters(large) + (n_small - n_large)


# ------------------------------------------------------------------ end to end
METHODS = ["splora", "finetune", "sppara", "splopa", "sparse", "sparse-large"]


@pytest.fixture(scope="module")
def base_bundle(tmp_path_factory):
    from spaedge.pack.bundle import write_base
    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    write_base(get_base("tiny"), path)
    return path


def _pack_and_compare(model, base_path, tmp_path, x, **meta):
    from spaedge import runtime
    from spaedge.pack.bundle import TaskSpec, base_hash, load_task_model, write_task
    from spaedge.pack.format import read_bundle
    spec = TaskSpec("t", ["a", "b", "c"], (1, 28, 28), [0.5], [0.25])
    write_task(model, spec, base_hash(get_base("tiny")), tmp_path / "task.safetensors")
    with torch.no_grad():
        want = model(x).numpy()
        again, _, _ = load_task_model(base_path, tmp_path / "task.safetensors")
        np.testing.assert_allclose(again(x).numpy(), want, rtol=1e-4, atol=1e-4 * (1 + np.abs(want).max()))
    rt = runtime.Runtime(base_path, threads=1)
    rt.load_task(tmp_path / "task.safetensors")
    for mode in ("merged", "lowrank"):
        rt.mode = mode
        got = rt.run(x.numpy())
        scale = 1 + float(np.abs(want).max())
        assert float(np.abs(got - want).max()) <= 1e-3 * scale, mode
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.999
    return read_bundle(tmp_path / "task.safetensors")[0]


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_prunes_packs_and_runs_in_the_runtime(method, base_bundle, tmp_path):
    from types import SimpleNamespace

    from spaedge.adapters import get_method
    m = get_method(method)
    model = _tiny(method, rank=4)
    data = _data(2, bs=16)
    if m.prepare is not None:  # SparseAdapter's masks
        m.prepare(model, SimpleNamespace(mask_criterion="snip", adapter_keep=0.2), data[:1], (1, 28, 28))
    _train(model, data, steps=2)
    prune_to_density(model, torch.zeros(1, 1, 28, 28), 0.3, step_fraction=0.2, criterion="taylor",
                     score_kwargs={"data": data[:1]}, block=m.prune_block,
                     recover=lambda s, d: _train(model, data, steps=1))
    _train(model, data, steps=2)
    # BN statistics moved by training: the runtime must fold the task's BN
    tensors = _pack_and_compare(model, base_bundle, tmp_path, torch.randn(4, 1, 28, 28))
    keys = {k.split(".")[-1] for k in tensors}
    expect = {"splora": "lora_a", "finetune": "weight_delta", "sppara": "pointwise_delta",
              "splopa": "pointwise_delta", "sparse": "sparse_delta_index", "sparse-large": "sparse_delta_values"}
    assert expect[method] in keys
    if method.startswith("sparse"):
        nnz = sum(m.nonzeros() for m in model.modules() if isinstance(m, SparseAdapter))
        stored = sum(v.size for k, v in tensors.items() if k.endswith("sparse_delta_values"))
        assert stored == nnz  # values + indices, never dense + mask


def test_runtime_resolves_shared_adapters_and_refuses_bad_maps(base_bundle, tmp_path):
    """Pear's bundle side: a target conv uses the source conv's factors, stored once."""
    import json

    from spaedge import runtime
    from spaedge.errors import BundleError
    from spaedge.pack.bundle import TaskSpec, base_hash, task_bundle
    from spaedge.pack.format import write_bundle
    model = _tiny("splora", rank=4)
    src, dst = model.get_submodule("layer1.0.conv1"), model.get_submodule("layer1.0.conv2")
    with torch.no_grad():
        src.lora_b.normal_(std=0.1)
        dst.lora_a.copy_(src.lora_a)
        dst.lora_b.copy_(src.lora_b)  # the torch model shares by value
    spec = TaskSpec("t", ["a", "b", "c"], (1, 28, 28), [0.5], [0.25])
    tensors, meta = task_bundle(model, spec, base_hash(get_base("tiny")))
    del tensors["layer1.0.conv2.lora_a"], tensors["layer1.0.conv2.lora_b"]
    meta["shared_adapters"] = json.dumps({"layer1.0.conv2": "layer1.0.conv1"})
    write_bundle(tmp_path / "t.safetensors", tensors, meta)
    x = torch.randn(3, 1, 28, 28)
    rt = runtime.Runtime(base_bundle, threads=1)
    rt.load_task(tmp_path / "t.safetensors")
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(rt.run(x.numpy()), want, atol=1e-3 * (1 + np.abs(want).max()))
    meta["shared_adapters"] = json.dumps({"layer1.0.conv2": "layer2.0.conv2"})
    write_bundle(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(BundleError, match="shared_adapters"):
        runtime.Runtime(base_bundle, threads=1).load_task(tmp_path / "bad.safetensors")
