"""The comparison grid's cells (no training): the SparseAdapter variants at the
paper's sparsities, their configs, and a fast grid that stays small."""

from __future__ import annotations

import pytest

from spaedge.adapters import get_method, method_names
from spaedge.adapters.sparse_masks import MaskOptions
from spaedge.experiment.grid import (
    FAST_BUDGET,
    SPARSITIES,
    Budget,
    Cell,
    cell_config,
    default_grid,
    fast_grid,
)

# The SparseAdapter methods: those whose options are the masks'.
SPARSE = {n for n in method_names() if issubclass(get_method(n).options, MaskOptions)}


def test_default_grid_compares_every_sparse_variant_at_40_60_80_percent():
    cells = default_grid(tasks=("digits",))
    sparse = [c for c in cells if c.method in SPARSE]
    assert SPARSITIES == (0.4, 0.6, 0.8)
    # (the mask criteria and the dense control: the next test)
    by_sparsity = [c for c in sparse if "mask_criterion" not in dict(c.options)]
    assert {(c.method, c.rank, dict(c.options)["sparsity"]) for c in by_sparsity} - {
        ("sparse", 8, 0.0)
    } == {
        (m, r, s)
        for m, r in (("sparse", 8), ("sparse-sppara", 0), ("sparse-large", 8))
        for s in SPARSITIES
    }
    assert {c.density for c in sparse} == {0.3}
    assert (
        len({c.key for c in cells}) == len(cells) == len({(c.density, c.label) for c in cells})
    )  # table rows
    for c in sparse:
        cfg = cell_config(c, Budget())
        assert (
            cfg.method == c.method
            and cfg.options.sparsity == dict(c.options)["sparsity"]
            and cfg.rank == (c.rank if get_method(c.method).uses_rank else None)
        )
        assert (
            get_method(c.method).describe(c.rank) in c.label
            and f"sparsity {cfg.options.sparsity}" in c.label
        )


def test_fast_grid_stays_small_with_one_sparse_cell_at_the_default_sparsity():
    cells = fast_grid()
    assert len(cells) == 7
    (sparse,) = [c for c in cells if c.method in SPARSE]
    cfg = cell_config(sparse, FAST_BUDGET)
    assert sparse.method == "sparse" and cfg.options == get_method("sparse").options(rank=4)
    assert (cfg.options.sparsity, cfg.options.mask_criterion) == (0.4, "snip")  # the defaults


def test_the_grid_compares_every_registered_method_and_every_cell_has_a_config():
    cells = default_grid(tasks=("digits",))
    assert {c.method for c in cells} == set(method_names())
    for c in cells + fast_grid():
        cfg = cell_config(c, Budget())
        assert type(cfg.options) is get_method(c.method).options
        assert cfg.options == get_method(c.method).options(
            **dict(c.options), **({"rank": c.rank} if cfg.rank is not None else {})
        )


def test_a_cell_with_an_option_its_method_does_not_take_is_refused():
    with pytest.raises(ValueError, match="sparsity is not an option of method splora"):
        cell_config(Cell("digits", "splora", 8, options=(("sparsity", 0.6),)), Budget())


def test_every_mask_criterion_and_a_balanced_init_dense_control_are_in_the_grid():
    from spaedge.adapters.sparse_masks import MASK_CRITERIA

    cells = default_grid(tasks=("digits",))
    at40 = [
        cell_config(c, Budget()).options
        for c in cells
        if c.method == "sparse" and dict(c.options)["sparsity"] == 0.4
    ]
    assert sorted(o.mask_criterion for o in at40) == sorted(MASK_CRITERIA)
    (control,) = [c for c in cells if c.method == "sparse" and dict(c.options)["sparsity"] == 0]
    assert (control.rank, control.density) == (8, 0.3)
    # the dense control names no mask (nothing is masked); every masked row names its criterion
    assert "mask" not in control.label
    labels = {c.label for c in cells if c.method == "sparse" and c.density == 0.3 and c.options}
    for crit in MASK_CRITERIA:
        assert f"SparseAdapter SPLoRA r8, sparsity 0.4 (magnitude; {crit} mask)" in labels


def test_mask_criteria_get_their_own_markers_and_keep_the_pruning_line_style():
    from spaedge.experiment.report import _linestyle, _marker, _style

    labels = [
        Cell("digits", "sparse", 8, options=(("sparsity", 0.4), ("mask_criterion", m))).label
        for m in ("snip", "magnitude", "random", "grasp", "synflow")
    ] + [Cell("digits", "splora", 8).label, Cell("digits", "splora", 8, criterion="lrp").label]
    colours, markers = _style(labels)
    assert len(set(markers.values())) == len(markers) == 7  # no two variants share a marker
    assert len(colours) == 2  # SparseAdapter at 40% and SPLoRA: one colour each
    assert _linestyle("magnitude; grasp mask") == _linestyle("magnitude") == "-"
    assert _marker("lrp, oneshot; synflow mask") == ">"
