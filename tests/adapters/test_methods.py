"""The adapter methods (one module each, spaedge.adapters): SPPaRA, SPLoPA,
SparseAdapter against their definitions, and every method's end-to-end path
(train a few steps, prune, pack, run in the C++ runtime, matching PyTorch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _toolchain_helpers import assert_bundle_matches
from _toolchain_helpers import random_batches as _data
from _toolchain_helpers import tiny_task_model as _tiny
from _toolchain_helpers import train_steps as _train
from torch import nn

from spaedge.adapters import (
    SparseAdapter,
    SPLoPA,
    SPPaRA,
    adapted_layers,
    get_method,
    learned_parameters,
    method_names,
)
from spaedge.adapters.sparse import SparseSPLoRA
from spaedge.adapters.sparse_large import dense_lora_parameters, large_rank
from spaedge.adapters.sparse_masks import (
    MASK_CRITERIA,
    Masked,
    MaskOptions,
    masked_tensors,
    sparsify,
)
from spaedge.models import get_base
from spaedge.pruning.prune import prune_to_density

torch.backends.mkldnn.enabled = False


def _options(method: str, rank: int = 4, **kw):
    """``method``'s options: ``rank`` if it has one, and those of ``kw`` it takes."""
    m = get_method(method)
    kw = {k: v for k, v in kw.items() if k in m.option_names}
    return m.options(**kw, **({"rank": rank} if m.uses_rank else {}))


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
    want = sum(
        torch.kron(layer.positions[p], layer.proto_u[p] @ layer.proto_v[p]) for p in range(3)
    )
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
    b = get_method("splopa").prune_block
    prune_to_density(model, torch.zeros(1, 1, 28, 28), 0.4, step_fraction=0.2, block=b)
    for name, layer in adapted_layers(model).items():
        if layer.base_out_channels % b == 0:
            blocks = layer.out_index // b
            assert all(int((blocks == k).sum()) == b for k in blocks.unique()), name
    model(torch.zeros(1, 1, 28, 28))


# The SparseAdapter methods: those whose options are the masks'.
SPARSE = [n for n in method_names() if issubclass(get_method(n).options, MaskOptions)]


@pytest.mark.parametrize("method", method_names())
def test_a_method_takes_the_mask_options_iff_its_layers_are_masked(method):
    layers = adapted_layers(_tiny(method)).values()
    assert all(isinstance(m, Masked) for m in layers) == (method in SPARSE)


def _masked(model):
    """(parameter, mask) of every masked tensor of a SparseAdapter model, in module order."""
    return [
        pm
        for m in model.modules()
        if isinstance(m, (SparseAdapter, SparseSPLoRA))
        for pm in m.mask_pairs()
    ]


@pytest.mark.parametrize("method", SPARSE)
@pytest.mark.parametrize("criterion", list(MASK_CRITERIA))
def test_sparse_masks_keep_a_global_budget_and_masked_entries_stay_zero(method, criterion):
    model = _tiny(method)
    data = _data(1, bs=8)
    get_method(method).prepare(
        model, _options(method, mask_criterion=criterion, sparsity=0.6), data, (1, 28, 28)
    )
    pairs = _masked(model)
    total = sum(p.numel() for p, _ in pairs)
    kept = sum(int(m.sum()) for _, m in pairs)
    if (
        method == "sparse-large"
    ):  # rank 4 widened to ceil(4 / 0.4) = 10, keeping rank 4's parameters
        assert all(m.lora_a.shape[0] == 10 for m in model.modules() if isinstance(m, SparseSPLoRA))
        assert kept == dense_lora_parameters(_tiny("splora"), 4)
    else:
        assert kept == round(0.4 * total)
    assert (
        len({tuple(p.shape) for p, _ in pairs}) > 1
    )  # one threshold over layers (and both factors)
    for p, m in pairs:
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        assert torch.count_nonzero(p.detach() * (1 - m)) == 0  # masked entries are zeroed...
    before = learned_parameters(model)
    masks = [m.clone() for _, m in pairs]
    _train(model, data, steps=3)
    for (p, m), m0 in zip(_masked(model), masks):
        assert torch.equal(m, m0)  # ...the masks are fixed...
        assert (
            torch.count_nonzero(p.detach() * (1 - m)) == 0
        )  # ...and they stay zero through training
        assert p.grad is None or torch.count_nonzero(p.grad * (1 - m)) == 0
    assert (
        learned_parameters(model)
        == before
        == sum(p.numel() for p in model.parameters() if p.requires_grad) - (total - kept)
    )


def test_sparse_splora_masks_both_factors_with_one_threshold():
    """Magnitude over the balanced factors keeps entries of A and of B; SPLoRA's own
    initialisation (B = 0) would give a criterion nothing to rank B by."""
    model = _tiny("sparse", rank=4)
    sparsify(model, "magnitude", 0.5)
    layers = [m for m in model.modules() if isinstance(m, SparseSPLoRA)]
    kept_a = sum(int(m.lora_a_mask.sum()) for m in layers) / sum(m.lora_a.numel() for m in layers)
    kept_b = sum(int(m.lora_b_mask.sum()) for m in layers) / sum(m.lora_b.numel() for m in layers)
    assert 0.3 < kept_a < 0.7 and 0.3 < kept_b < 0.7
    layer = layers[3]
    torch.testing.assert_close(
        layer.delta()[:, :, 1, 1],
        (layer.lora_b * layer.lora_b_mask) @ (layer.lora_a * layer.lora_a_mask),
    )


def test_snip_and_grasp_scores_are_the_documented_formulas():
    def _scores(model, criterion, data):
        return MASK_CRITERIA[criterion](model, masked_tensors(model), data)

    for method in ("sparse-sppara", "sparse"):
        model = _tiny(method)
        data = _data(1, bs=4)
        params = [p for p, _ in _masked(model)]
        model.eval()
        loss = F.cross_entropy(model(data[0][0]), data[0][1])
        g = torch.autograd.grad(loss, params, create_graph=True)
        snip = _scores(model, "snip", data)
        torch.testing.assert_close(snip[3], (g[3] * params[3]).abs().detach())
        # H g by double back-propagation
        z = sum((gi * gi.detach()).sum() for gi in g)
        hg = torch.autograd.grad(z, params)
        grasp = _scores(model, "grasp", data)
        torch.testing.assert_close(grasp[3], (params[3] * hg[3]).detach())


@pytest.mark.parametrize(
    "rank, sparsity, wide",
    [
        (8, 0.4, 14),
        (8, 0.6, 20),
        (8, 0.8, 40),
        (4, 0.5, 8),
        (1, 0.0, 1),
        (3, 0.8, 15),
        (5, 0.75, 20),
    ],
)
def test_large_rank_is_the_narrowest_holding_the_dense_budget(rank, sparsity, wide):
    assert large_rank(rank, sparsity) == wide
    assert wide * (1 - sparsity) >= rank - 1e-9 and (wide - 1) * (1 - sparsity) < rank - 1e-9


@pytest.mark.parametrize("sparsity", [0.4, 0.6, 0.8])
def test_large_sparse_has_the_dense_splora_parameter_count(sparsity):
    dense = _tiny("splora", rank=8)
    large = _tiny("sparse-large", rank=8)
    get_method("sparse-large").prepare(
        large,
        _options("sparse-large", rank=8, mask_criterion="snip", sparsity=sparsity),
        _data(1, bs=4),
        (1, 28, 28),
    )
    adapters = lambda model: sum(p.numel() for n, p in model.named_parameters() if "lora" in n)  # noqa: E731
    kept = sum(m.nonzeros() for m in large.modules() if isinstance(m, SparseSPLoRA))
    assert kept == adapters(dense) == dense_lora_parameters(large, 8)
    assert learned_parameters(large) == learned_parameters(dense)
    wide = large_rank(8, sparsity)
    assert adapters(large) == adapters(dense) * wide // 8  # really wider, and sparse
    assert kept <= (1 - sparsity) * adapters(large) + 1e-6


# ------------------------------------------------------------------ end to end
# What each method's bundle must hold (a new method adds its line here).
EXPECT = {
    "splora": "lora_a",
    "finetune": "weight_delta",
    "sppara": "pointwise_delta",
    "splopa": "splopa_coef",
    "pear": "lora_a",
    "sparse": "lora_a_values",
    "sparse-sppara": "sparse_delta_mask",
    "sparse-large": "lora_b_mask",
}


def test_every_registered_method_has_its_bundle_expectation():
    assert set(EXPECT) == set(method_names())


def _pack_and_compare(model, base_path, tmp_path, x, name="task.safetensors"):
    from spaedge.pack.bundle import TaskSpec, base_hash, write_task
    from spaedge.pack.format import read_bundle

    spec = TaskSpec("t", ["a", "b", "c"], (1, 28, 28), [0.5], [0.25])
    write_task(model, spec, base_hash(get_base("tiny")), tmp_path / name)
    assert_bundle_matches(model, base_path, tmp_path / name, x)
    return read_bundle(tmp_path / name)[0]


@pytest.mark.parametrize("method", method_names())
def test_method_trains_prunes_packs_and_runs_in_the_runtime(method, tiny_base_bundle, tmp_path):
    from spaedge.pack.bundle import load_task_model

    m = get_method(method)
    model = _tiny(method, rank=4)
    data = _data(2, bs=16)
    opts = _options(method, mask_criterion="snip", sparsity=0.6)
    if m.prepare is not None:  # SparseAdapter's masks, SPLoPA's shared prototypes
        m.prepare(model, opts, data[:1], (1, 28, 28))
    _train(model, data, steps=2)
    prune_to_density(
        model,
        torch.zeros(1, 1, 28, 28),
        0.3,
        step_fraction=0.2,
        criterion="taylor",
        score_kwargs={"data": data[:1]},
        block=m.prune_block,
        recover=lambda s, d: _train(model, data, steps=1),
    )
    if m.after_pruning is not None:  # Pear's adapter pruning and sharing
        m.after_pruning(model, opts, data[:1])
    _train(model, data, steps=2)
    # BN statistics moved by training: the runtime must fold the task's BN
    tensors = _pack_and_compare(model, tiny_base_bundle, tmp_path, torch.randn(4, 1, 28, 28))
    keys = {k.split(".")[-1] for k in tensors}
    assert EXPECT[method] in keys
    if method in SPARSE:
        assert not keys & {
            "lora_a",
            "lora_b",
            "pointwise_delta",
        }  # values + bitmasks, never dense + mask
        assert not {k for k in keys if k.endswith("_index")} - {"out_index", "in_index"}
        nnz = sum(
            m.nonzeros() for m in model.modules() if isinstance(m, (SparseAdapter, SparseSPLoRA))
        )
        stored = sum(v.size for k, v in tensors.items() if k.endswith("_values"))
        masks = [
            v
            for k, v in tensors.items()
            if k.endswith(("lora_a_mask", "lora_b_mask", "sparse_delta_mask"))
        ]
        assert all(m.dtype == np.uint8 for m in masks)
        assert stored == nnz == sum(int(np.unpackbits(m).sum()) for m in masks)
        again, _, _ = load_task_model(tiny_base_bundle, tmp_path / "task.safetensors")
        assert learned_parameters(again) == learned_parameters(model)
        state, rebuilt = model.state_dict(), again.state_dict()
        assert state.keys() == rebuilt.keys()  # the same layers, ranks and masks
        for k, v in state.items():
            if not k.endswith("num_batches_tracked"):  # not in bundles
                torch.testing.assert_close(rebuilt[k].to(v.dtype), v, msg=k)


def _sparse_model(method, sparsity, rank=8):
    """A SparseAdapter model masked at ``sparsity`` (magnitude), pruned to 30% density, trained a step."""
    model = _tiny(method, rank=rank)
    get_method(method).prepare(
        model,
        _options(method, rank, mask_criterion="magnitude", sparsity=sparsity),
        [],
        (1, 28, 28),
    )
    prune_to_density(model, torch.zeros(1, 1, 28, 28), 0.3, step_fraction=0.35)
    _train(model, _data(1, bs=8), steps=1)
    return model


@pytest.mark.parametrize("method", SPARSE)
def test_sparse_bundles_shrink_with_sparsity(method, tiny_base_bundle, tmp_path):
    """40% < 60% < 80% sparsity: smaller bundles, each running as PyTorch does. The
    kept entries take 4 bytes each and their positions one bit per entry of the
    adapter, so the sparse adapter is stored in fewer bytes than the same adapter
    dense at every one of these sparsities (8 bytes per kept entry, values plus
    I32 positions, were more than the dense adapter at 40%)."""
    sizes = []
    for sparsity in (0.4, 0.6, 0.8):
        model = _sparse_model(method, sparsity)
        name = f"{method}-{sparsity}.safetensors"
        tensors = _pack_and_compare(
            model, tiny_base_bundle, tmp_path, torch.randn(2, 1, 28, 28), name
        )
        sizes.append((tmp_path / name).stat().st_size)
        pairs = [
            pm
            for m in model.modules()
            if isinstance(m, (SparseAdapter, SparseSPLoRA))
            for pm in m.mask_pairs()
        ]
        nnz, dense = sum(int(m.sum()) for _, m in pairs), sum(p.numel() for p, _ in pairs)
        # the adapter's tensors: values and positions (lora_{a,b}_*, sparse_delta_*), not lora_rank
        stored = sum(
            v.nbytes
            for k, v in tensors.items()
            if k.rsplit(".", 1)[-1].startswith(("lora_", "sparse_"))
            and not k.endswith(".lora_rank")
        )
        values = sum(v.nbytes for k, v in tensors.items() if k.endswith("_values"))
        assert values == 4 * nnz, (sparsity, values, nnz)
        assert stored < 4 * dense, (sparsity, stored, dense)
    if (
        method == "sparse-large"
    ):  # the same nonzeros, spread over wider factors: about the same size
        assert max(sizes) - min(sizes) < 0.1 * min(sizes), sizes
    else:
        assert sizes[0] > sizes[1] > sizes[2], sizes


def _as_dense_splora(tensors: dict, meta: dict) -> tuple[dict, dict]:
    """A sparse SPLoRA task bundle's tensors and metadata as the dense SPLoRA bundle
    of the same task: every conv's sparse factors written out as lora_a [r, I'] and
    lora_b [O', r] (zeros included), the same channels, rank and function."""
    out = {k: v for k, v in tensors.items() if not k.endswith(("lora_rank", "_values", "_mask"))}
    for k in tensors:
        if k.endswith(".lora_rank"):
            L = k[: -len(".lora_rank")]
            r, O, I = (
                int(tensors[k][0]),
                tensors[L + ".out_index"].size,
                tensors[L + ".in_index"].size,
            )
            for f, shape in (("lora_a", (r, I)), ("lora_b", (O, r))):
                full = np.zeros(shape[0] * shape[1], np.float32)
                keep = np.unpackbits(tensors[f"{L}.{f}_mask"], bitorder="little")[
                    : full.size
                ].astype(bool)
                full[keep] = tensors[f"{L}.{f}_values"]
                out[f"{L}.{f}"] = full.reshape(shape)
    return out, {
        **{k: v for k, v in meta.items() if k not in ("content_hash", "version")},
        "method": "splora",
    }


def test_sparse_splora_bundle_at_40_percent_is_smaller_than_dense(tiny_base_bundle, tmp_path):
    """The paper's recommended 40% sparsity: the sparse SPLoRA r8 task bundle is
    smaller than the dense SPLoRA r8 bundle of the same pruned model (same
    channels, rank and function); it was larger while positions were I32."""
    from spaedge.pack.format import read_bundle, write_bundle

    model = _sparse_model("sparse", 0.4)
    x = torch.randn(2, 1, 28, 28)
    sparse = tmp_path / "sparse.safetensors"
    _pack_and_compare(model, tiny_base_bundle, tmp_path, x, sparse.name)
    dense = tmp_path / "dense.safetensors"
    write_bundle(dense, *_as_dense_splora(*read_bundle(sparse)))
    assert_bundle_matches(model, tiny_base_bundle, dense, x)  # really the same task, dense
    assert sparse.stat().st_size < dense.stat().st_size, (
        sparse.stat().st_size,
        dense.stat().st_size,
    )


def test_runtime_resolves_shared_adapters_and_refuses_bad_maps(tiny_base_bundle, tmp_path):
    """Pear's bundle side: one adapter stored once in base coordinates, each conv
    using it gathering its kept rows and columns."""
    import json

    from spaedge import runtime
    from spaedge.errors import BundleError
    from spaedge.pack.bundle import TaskSpec, base_hash, task_bundle
    from spaedge.pack.format import write_bundle

    model = _tiny("splora", rank=4)
    g = torch.Generator().manual_seed(3)
    b, a = 0.1 * torch.randn(16, 4, generator=g), torch.randn(4, 16, generator=g)
    for name in ("layer1.0.conv1", "layer1.0.conv2"):
        layer = model.get_submodule(name)
        with torch.no_grad():  # the torch model shares by value (unpruned: every channel)
            layer.lora_a.copy_(a)
            layer.lora_b.copy_(b)
    spec = TaskSpec("t", ["a", "b", "c"], (1, 28, 28), [0.5], [0.25])
    tensors, meta = task_bundle(model, spec, base_hash(get_base("tiny")))
    for name in ("layer1.0.conv1", "layer1.0.conv2"):
        del tensors[f"{name}.lora_a"], tensors[f"{name}.lora_b"]
    tensors["shared.s.a"], tensors["shared.s.b"] = a.numpy(), b.numpy()
    meta["shared_adapters"] = json.dumps({"layer1.0.conv1": "s", "layer1.0.conv2": "s"})
    write_bundle(tmp_path / "t.safetensors", tensors, meta)
    x = torch.randn(3, 1, 28, 28)
    rt = runtime.Runtime(tiny_base_bundle, threads=1)
    rt.load_task(tmp_path / "t.safetensors")
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(rt.run(x.numpy()), want, atol=1e-3 * (1 + np.abs(want).max()))
    del tensors["layer2.0.conv2.lora_a"], tensors["layer2.0.conv2.lora_b"]
    meta["shared_adapters"] = json.dumps({"layer1.0.conv1": "s", "layer2.0.conv2": "s"})
    write_bundle(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(BundleError, match="shared_adapters.*base channels"):
        runtime.Runtime(tiny_base_bundle, threads=1).load_task(tmp_path / "bad.safetensors")
