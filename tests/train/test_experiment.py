"""`spaedge experiment --fast` (the CI mode): table, CSV, PNG, and resume."""

from __future__ import annotations

import json

import pytest

from spaedge.cli import main

pytestmark = pytest.mark.slow  # the whole pipeline (train, pack, run)


def test_fast_experiment_writes_table_csv_png_and_resumes(tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["experiment", "--fast", "--workers", "1", "--out", str(out)]) == 0
    runs = sorted((out / "runs").glob("*.json"))
    assert len(runs) == 7 * 2  # every cell at both rates of the fast budget
    table = (out / "results.md").read_text()
    for label in ("Fine-pruning", "SPLoRA r4", "SPPaRA", "SPLoPA", "SparseAdapter", "Pear r4"):
        assert label in table
    assert "## Paired differences" in table and "learning rate chosen on validation" in table
    assert (out / "results.csv").read_text().count("\n") == 7 * 2 + 1
    assert (out / "results.png").stat().st_size > 1000 and (
        out / "curves.png"
    ).stat().st_size > 1000
    results = [json.loads(p.read_text()) for p in runs]
    r = results[0]
    assert r["task_bundle_bytes"] > 0 and r["learned_parameters"] > 0 and r["macs"] > 0
    assert len(r["curve"]) >= 2 and all(0 <= h["val_accuracy"] <= 1 for h in r["curve"])
    # the table reports, for every cell, the rate with the better validation accuracy
    for key in {r["config_key"] for r in results}:
        pair = sorted(
            (r for r in results if r["config_key"] == key),
            key=lambda r: (-r["val_accuracy"], r["lr"]),
        )
        shown = f"{pair[0]['lr']:g}"
        row = next(
            l
            for l in table.splitlines()
            if pair[0]["label"] in l and f"| {pair[0]['density']:.0%} |" in l
        )
        assert row.rstrip(" |").endswith(shown), (row, shown)
    # resume: a finished grid runs nothing again
    mtimes = [p.stat().st_mtime for p in runs]
    capsys.readouterr()
    assert main(["experiment", "--fast", "--workers", "1", "--out", str(out)]) == 0
    assert "0 to go" in capsys.readouterr().err
    assert [p.stat().st_mtime for p in runs] == mtimes


def test_rates_are_chosen_on_validation_never_on_test():
    from spaedge.experiment import Budget, chosen_rates, reported

    budget = Budget(lrs=(1e-3, 1e-2), seeds=2, held_out_selection=False)
    rows = [
        dict(config_key="a", seed=0, lr=1e-3, val_accuracy=0.9, test_accuracy=0.5),
        dict(config_key="a", seed=0, lr=1e-2, val_accuracy=0.8, test_accuracy=0.99),
        dict(config_key="a", seed=1, lr=1e-3, val_accuracy=0.7, test_accuracy=0.6),
        dict(
            config_key="a", seed=1, lr=1e-2, val_accuracy=0.9, test_accuracy=0.9
        ),  # not a seed-0 rate
        dict(config_key="b", seed=0, lr=1e-3, val_accuracy=0.5, test_accuracy=0.5),
    ]  # search unfinished
    assert chosen_rates(rows, budget) == {"a": 1e-3}
    assert [(r["seed"], r["lr"]) for r in reported(rows, budget)] == [(0, 1e-3), (1, 1e-3)]


def test_bad_shard_is_refused(tmp_path, capsys):
    assert main(["experiment", "--fast", "--shard", "3/2", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--shard must be I/N" in err and "'3/2'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # refused before any run


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--densities", "0.5", "selects no cell"),
        ("--densities", "a,b", "must be numbers"),
        ("--methods", "nonesuch", "selects no cell"),
        ("--only", "nonesuch", "matches no cell"),
        ("--only", "(", "not a regular expression"),
    ],
)
def test_a_filter_that_selects_nothing_is_refused_before_any_run(
    flag, value, message, tmp_path, capsys
):
    assert main(["experiment", "--tasks", "digits", flag, value, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and value in err
    assert not (tmp_path / "runs").exists()


def test_the_density_filter_keeps_only_those_cells(tmp_path, capsys, monkeypatch):
    import spaedge.experiment as experiment

    seen = {}
    monkeypatch.setattr(
        experiment,
        "run_grid",
        lambda cells, budget, *a, **k: seen.update(cells=cells, budget=budget),
    )
    main(
        [
            "experiment",
            "--tasks",
            "digits",
            "--densities",
            "0.3",
            "--methods",
            "splora,finetune",
            "--out",
            str(tmp_path),
        ]
    )
    cells = seen["cells"]
    assert (
        cells
        and {c.density for c in cells} == {0.3}
        and {c.method for c in cells} == {"splora", "finetune"}
    )
    # fine-pruning and SPLoRA r8 (magnitude and LRP), SPLoRA r2
    assert len(cells) == 5
    assert seen["budget"].early_stopping == 0 and seen["budget"].total_epochs == 30  # the defaults
    main(
        [
            "experiment",
            "--tasks",
            "digits",
            "--only",
            "__(finetune-r0|splora-r8)__d10__magnitude__iterative",
            "--patience",
            "2",
            "--total-epochs",
            "10",
            "--out",
            str(tmp_path),
        ]
    )
    assert sorted(c.method for c in seen["cells"]) == ["finetune", "splora"]
    assert seen["budget"].early_stopping == 2 and seen["budget"].total_epochs == 10
    assert {(c.rank, c.density, c.criterion) for c in seen["cells"] if c.method == "splora"} == {
        (8, 0.1, "magnitude")
    }


def test_a_directory_of_runs_refuses_another_budget(tmp_path, capsys, monkeypatch):
    """Runs made with 10 epochs are not mixed with runs of 30 (a table would compare
    them silently); more rates or seeds only add runs."""
    import dataclasses

    import spaedge.experiment as experiment
    from spaedge.experiment import Budget

    (tmp_path / "runs").mkdir()
    made = dataclasses.asdict(Budget(total_epochs=10, early_stopping=2))
    (
        tmp_path / "runs" / "digits__splora-r8__d30__magnitude__iterative__lr0.01__s0.json"
    ).write_text(json.dumps({"budget": made}))
    monkeypatch.setattr(
        experiment, "run_grid", lambda *a, **k: pytest.fail("ran with another budget")
    )
    assert main(["experiment", "--tasks", "digits", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert (
        "another budget" in err
        and "total_epochs 10 there, 30 here" in err
        and "early_stopping" in err
    )
    ran = []
    monkeypatch.setattr(experiment, "run_grid", lambda *a, **k: ran.append(a))
    monkeypatch.setattr(experiment, "load_results", lambda out: [])
    main(
        [
            "experiment",
            "--tasks",
            "digits",
            "--total-epochs",
            "10",
            "--patience",
            "2",
            "--lrs",
            "0.01,0.1",
            "--seeds",
            "5",
            "--out",
            str(tmp_path),
        ]
    )
    assert ran  # the same budget with more rates and seeds goes on


def test_runs_of_a_budget_with_fields_since_removed_are_not_refused(tmp_path):
    """A budget used to restate the SparseAdapter methods' default options
    (sparsity, mask_criterion); their runs stay in the same directory."""
    import dataclasses

    from spaedge.experiment import Budget, check_budget

    (tmp_path / "runs").mkdir()
    old = {**dataclasses.asdict(Budget()), "sparsity": 0.4, "mask_criterion": "snip"}
    (tmp_path / "runs" / "a.json").write_text(json.dumps({"budget": old}))
    check_budget(tmp_path, Budget())
    with pytest.raises(ValueError, match="total_epochs 30 there, 10 here"):
        check_budget(tmp_path, Budget(total_epochs=10))
