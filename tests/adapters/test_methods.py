"""The adapter methods (one module each, spaedge.adapters): SPPaRA, SPLoPA,
SparseAdapter against their definitions, and every method's end-to-end path
(train a few steps, prune, pack, run in the C++ runtime, matching PyTorch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _toolchain_helpers import assert_bundle_matches
from _toolchain_helpers import random_batches as _data
from _toolchain_helpers import tiny_task_model as _tiny
from _toolchain_helpers import train_steps as _train
from spaedge.adapters import SPLoPA, SPPaRA, SparseAdapter, adapted_layers, learned_parameters
from spaedge.adapters.sparse import large_keep, sparsify
from spaedge.models import get_base
from spaedge.pruning.prune import prune_to_density

torch.backends.mkldnn.enabled = False


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


def _pack_and_compare(model, base_path, tmp_path, x):
    from spaedge.pack.bundle import TaskSpec, base_hash, write_task
    from spaedge.pack.format import read_bundle
    spec = TaskSpec("t", ["a", "b", "c"], (1, 28, 28), [0.5], [0.25])
    write_task(model, spec, base_hash(get_base("tiny")), tmp_path / "task.safetensors")
    assert_bundle_matches(model, base_path, tmp_path / "task.safetensors", x)
    return read_bundle(tmp_path / "task.safetensors")[0]


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_prunes_packs_and_runs_in_the_runtime(method, tiny_base_bundle, tmp_path):
    from types import SimpleNamespace

    from spaedge.adapters import get_method
    m = get_method(method)
    model = _tiny(method, rank=4)
    data = _data(2, bs=16)
    if m.prepare is not None:  # SparseAdapter's masks, SPLoPA's shared prototypes
        m.prepare(model, SimpleNamespace(mask_criterion="snip", adapter_keep=0.2, splopa_share="model"), data[:1],
                  (1, 28, 28))
    _train(model, data, steps=2)
    prune_to_density(model, torch.zeros(1, 1, 28, 28), 0.3, step_fraction=0.2, criterion="taylor",
                     score_kwargs={"data": data[:1]}, block=m.prune_block,
                     recover=lambda s, d: _train(model, data, steps=1))
    _train(model, data, steps=2)
    # BN statistics moved by training: the runtime must fold the task's BN
    tensors = _pack_and_compare(model, tiny_base_bundle, tmp_path, torch.randn(4, 1, 28, 28))
    keys = {k.split(".")[-1] for k in tensors}
    expect = {"splora": "lora_a", "finetune": "weight_delta", "sppara": "pointwise_delta",
              "splopa": "splopa_coef", "sparse": "sparse_delta_index", "sparse-large": "sparse_delta_values"}
    assert expect[method] in keys
    if method.startswith("sparse"):
        nnz = sum(m.nonzeros() for m in model.modules() if isinstance(m, SparseAdapter))
        stored = sum(v.size for k, v in tensors.items() if k.endswith("sparse_delta_values"))
        assert stored == nnz  # values + indices, never dense + mask


def test_runtime_resolves_shared_adapters_and_refuses_bad_maps(tiny_base_bundle, tmp_path):
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
    rt = runtime.Runtime(tiny_base_bundle, threads=1)
    rt.load_task(tmp_path / "t.safetensors")
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(rt.run(x.numpy()), want, atol=1e-3 * (1 + np.abs(want).max()))
    meta["shared_adapters"] = json.dumps({"layer1.0.conv2": "layer2.0.conv2"})
    write_bundle(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(BundleError, match="shared_adapters"):
        runtime.Runtime(tiny_base_bundle, threads=1).load_task(tmp_path / "bad.safetensors")
