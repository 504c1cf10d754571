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
    assert len(runs) == 7
    table = (out / "results.md").read_text()
    for label in ("Fine-pruning", "SPLoRA r4", "SPPaRA", "SPLoPA", "SparseAdapter", "Pear r4"):
        assert label in table
    assert (out / "results.csv").read_text().count("\n") == 8
    assert (out / "results.png").stat().st_size > 1000
    r = json.loads(runs[0].read_text())
    assert r["task_bundle_bytes"] > 0 and r["learned_parameters"] > 0 and r["macs"] > 0
    # resume: a finished grid runs nothing again
    mtimes = [p.stat().st_mtime for p in runs]
    capsys.readouterr()
    assert main(["experiment", "--fast", "--workers", "1", "--out", str(out)]) == 0
    assert "0 to go" in capsys.readouterr().err
    assert [p.stat().st_mtime for p in runs] == mtimes


def test_bad_shard_is_refused(tmp_path, capsys):
    assert main(["experiment", "--fast", "--shard", "3/2", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--shard must be I/N" in err and "'3/2'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # refused before any run
