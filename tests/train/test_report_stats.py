"""The experiment report's statistics against hand-computed values: the Wilson
interval for a test accuracy, the paired difference across seeds, the test
set's standard error of a gap, the noise verdict, and which seeds are reported."""

from __future__ import annotations

import math

import pytest

from spaedge.experiment import Budget, reported
from spaedge.experiment.report import (
    binomial_se_difference,
    paired_difference,
    paired_rows,
    verdict,
    wilson_interval,
)
from spaedge.experiment.run import reported_seeds


def test_wilson_interval_matches_the_hand_computed_roots():
    # 90 of 100: the roots of n (p - 0.9)^2 = z^2 p (1 - p), solved by hand as a quadratic
    lo, hi = wilson_interval(0.9, 100)
    assert lo == pytest.approx(0.825634338495087, abs=1e-12)
    assert hi == pytest.approx(0.9447708629393243, abs=1e-12)
    # 95% on digits' 359 test images: about ±2.3 points, not symmetric around 95
    lo, hi = wilson_interval(0.95, 359)
    assert (lo, hi) == pytest.approx((0.9223100814940144, 0.9681614788677435), abs=1e-12)
    # the normal approximation (p ± z sqrt(p(1-p)/n)) would give 0.8412 / 0.9588
    assert abs(wilson_interval(0.9, 100)[0] - 0.8412) > 0.01


def test_wilson_interval_stays_in_0_1_and_refuses_nonsense():
    assert wilson_interval(1.0, 50)[1] == pytest.approx(1.0, abs=1e-15)
    assert wilson_interval(0.0, 50)[0] == pytest.approx(0.0, abs=1e-15)
    assert wilson_interval(1.0, 50)[0] < 1.0  # a perfect score still has an interval
    with pytest.raises(ValueError, match="at least one item"):
        wilson_interval(0.5, 0)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        wilson_interval(1.5, 10)


def test_paired_difference_against_hand_computed_mean_and_standard_error():
    a = {1: 0.90, 2: 0.92, 3: 0.95}
    b = {1: 0.88, 2: 0.91, 3: 0.90}
    # d = 0.02, 0.01, 0.05: mean 0.026667, sample sd sqrt(8.6667e-4 / 2) = 0.020817, SE = sd / sqrt(3)
    mean, se, n = paired_difference(a, b)
    assert n == 3
    assert mean == pytest.approx(0.08 / 3, abs=1e-12)
    assert se == pytest.approx(math.sqrt(8.6666666667e-4 / 2) / math.sqrt(3), abs=1e-9)
    assert se == pytest.approx(0.0120185, abs=1e-6)


def test_pairing_cancels_what_both_rows_share_per_seed():
    # a seed that is good for both methods moves both: the paired SE ignores it, the
    # unpaired one (sqrt(s1^2/n + s2^2/n)) does not
    shift = {1: -0.05, 2: 0.0, 3: 0.06}
    a = {s: 0.90 + 0.01 * s + shift[s] for s in shift}
    b = {s: 0.88 + 0.01 * s + shift[s] for s in shift}
    mean, se, _ = paired_difference(a, b)
    assert mean == pytest.approx(0.02, abs=1e-12) and se == pytest.approx(0.0, abs=1e-12)


def test_paired_difference_uses_common_seeds_only_and_needs_two():
    mean, se, n = paired_difference({1: 0.9, 2: 0.8, 3: 0.5}, {1: 0.8, 2: 0.8, 4: 0.1})
    assert n == 2 and mean == pytest.approx(0.05)
    with pytest.raises(ValueError, match="at least 2 common seeds"):
        paired_difference({1: 0.9, 2: 0.8}, {2: 0.8, 3: 0.7})


def test_binomial_se_of_a_gap_and_the_noise_verdict():
    assert binomial_se_difference(0.9, 0.8, 100) == pytest.approx(0.05, abs=1e-12)
    # 2 * sqrt(0.03^2 + 0.04^2) = 0.1: a gap of 0.1 is within noise, 0.1001 outside
    assert verdict(0.1, 0.03, 0.04) == "within noise"
    assert verdict(-0.1001, 0.03, 0.04) == "outside noise"


def test_the_selection_seed_is_held_out_of_the_reported_runs():
    rows = [
        dict(config_key="a", key=f"a{s}{lr}", seed=s, lr=lr, val_accuracy=v, test_accuracy=0.5)
        for s, lr, v in [
            (0, 1e-3, 0.9),
            (0, 1e-2, 0.8),
            (1, 1e-3, 0.7),
            (2, 1e-3, 0.7),
            (3, 1e-3, 0.6),
        ]
    ]
    held = Budget(lrs=(1e-3, 1e-2), seeds=3)
    assert list(reported_seeds(held)) == [1, 2, 3]
    assert sorted(r["seed"] for r in reported(rows, held)) == [1, 2, 3]
    shown = Budget(lrs=(1e-3, 1e-2), seeds=3, held_out_selection=False)
    assert list(reported_seeds(shown)) == [0, 1, 2]
    assert sorted(r["seed"] for r in reported(rows, shown)) == [0, 1, 2]


def test_paired_rows_compare_against_fine_pruning_with_the_test_set_size():
    def run(label, seed, acc):
        return dict(
            base="small", density=0.1, label=label, task="digits", seed=seed, test_accuracy=acc
        )

    fp = "Fine-pruning (magnitude)"
    sp = "SPLoRA r8 (magnitude)"
    rows = {
        ("small", 0.1, fp): [run(fp, s, a) for s, a in ((1, 0.95), (2, 0.96), (3, 0.94))],
        ("small", 0.1, sp): [run(sp, s, a) for s, a in ((1, 0.97), (2, 0.97), (3, 0.96))],
    }
    (p,) = paired_rows(rows, ["digits"], {"digits": 359})
    assert p["row"] == sp and p["reference"] == fp and p["seeds"] == 3
    assert p["diff"] == pytest.approx(5 / 3, abs=1e-9)  # points
    # d = 2, 1, 2 points: sd 0.57735, SE 0.33333
    assert p["se_seeds"] == pytest.approx(1 / 3, abs=1e-9)
    se_t = math.sqrt(0.95 * 0.05 / 359 + (0.9666666667 * 0.0333333333) / 359) * 100
    assert p["se_test"] == pytest.approx(se_t, abs=1e-6)
    assert p["verdict"] == "within noise"  # 1.67 < 2 * sqrt(0.333^2 + 1.45^2)


def test_flatness_is_the_last_window_minus_the_one_before():
    from spaedge.experiment.report import flatness

    curve = [{"val_accuracy": v} for v in (0.1, 0.2, 0.5, 0.6, 0.7, 0.8, 0.9, 0.9)]
    # last 3: 0.8, 0.9, 0.9 (mean 0.8667); the 3 before: 0.5, 0.6, 0.7 (mean 0.6)
    assert flatness(curve, window=3) == pytest.approx(0.8 / 3, abs=1e-12)
    assert flatness(curve[:5], window=3) is None  # too short for two windows


def test_the_by_compute_table_orders_rows_by_the_macs_they_keep():
    from spaedge.experiment.report import _compute_lines

    summary = [
        dict(base="small", density=0.3, label="B", avg=95.0, sd=1.0, macs=43.4, params=24e3),
        dict(base="small", density=0.3, label="A", avg=97.0, sd=0.5, macs=21.4, params=839e3),
        dict(base="small", density=0.1, label="C", avg=96.0, sd=0.2, macs=28.3, params=22e3),
    ]
    rows = _compute_lines(summary)[2:]
    assert [r.split(" | ")[3] for r in rows] == ["A", "C", "B"]
    assert rows[1] == "| small | 28.30 | 10% | C | 96.0 ± 0.2 | 22.0k |"


def test_sparse_rows_are_also_paired_with_their_dense_control_and_it_with_splora():
    fp, sp = "Fine-pruning (magnitude)", "SPLoRA r8 (magnitude)"
    dense = "SparseAdapter SPLoRA r8, sparsity 0.0 (magnitude)"
    snip = "SparseAdapter SPLoRA r8, sparsity 0.4 (magnitude; snip mask)"
    grasp = "SparseAdapter SPLoRA r8, sparsity 0.4 (magnitude; grasp mask)"
    accs = {fp: (0.97, 0.96, 0.98), sp: (0.95, 0.94, 0.95), dense: (0.96, 0.96, 0.97)}
    accs |= {snip: (0.94, 0.95, 0.94), grasp: (0.95, 0.95, 0.96)}
    rows = {
        ("small", 0.3, lab): [
            dict(base="small", density=0.3, label=lab, task="digits", seed=s + 1, test_accuracy=a)
            for s, a in enumerate(v)
        ]
        for lab, v in accs.items()
    }
    pairs = {(p["row"], p["reference"]): p for p in paired_rows(rows, ["digits"], {"digits": 359})}
    assert set(pairs) == {(lab, fp) for lab in accs if lab != fp} | {
        (snip, dense),
        (grasp, dense),
        (dense, sp),
    }
    # snip - dense: -2, -1, -3 points
    assert pairs[(snip, dense)]["diff"] == pytest.approx(-2.0, abs=1e-9)
    assert pairs[(dense, sp)]["diff"] == pytest.approx(5 / 3, abs=1e-9)
