"""The comparison protocol's training pieces: the same epoch budget for every
schedule (--total-epochs), early stopping on validation that keeps the best
epoch, the validation curve, and all of it resuming exactly."""

from __future__ import annotations

import pytest
from _toolchain_helpers import run_stopped_in_final, tiny_image_folder

from spaedge.train import TrainConfig, run, train_task

pytestmark = pytest.mark.slow

BASE = dict(
    epochs=1,
    recovery_epochs=1,
    final_epochs=1,
    prune_step=0.2,
    density=0.6,
    seed=5,
    batch_size=16,
    lr=3e-2,
)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return f"imagefolder:{tiny_image_folder(tmp_path_factory.mktemp('imgs'))}"


@pytest.mark.parametrize("schedule", ["iterative", "oneshot"])
def test_total_epochs_gives_every_schedule_the_same_budget(task, schedule):
    t = train_task(TrainConfig(task=task, schedule=schedule, total_epochs=6, **BASE), curve=True)
    assert len(t.metrics["curve"]) == 6  # one validation per epoch trained, in every phase
    phases = [h["phase"] for h in t.metrics["curve"]]
    assert phases[0] == "adapt" and phases.count("final") == t.metrics["final_epochs"] >= 1
    if schedule == "iterative":
        assert phases.count("recover") >= 2  # several steps, one recovery epoch each
    else:
        assert phases.count("recover") == 1


def test_early_stopping_stops_on_validation_and_keeps_the_best_epoch(task):
    t = train_task(
        TrainConfig(task=task, early_stopping=1, **{**BASE, "final_epochs": 6}), curve=True
    )
    final = [h["val_accuracy"] for h in t.metrics["curve"] if h["phase"] == "final"]
    # patience 1: it stops at the first epoch that does not beat the best so far, not before
    best = -1.0
    for i, acc in enumerate(final):
        if acc <= best:
            assert i == len(final) - 1, final
        best = max(best, acc)
    assert t.metrics["val_accuracy"] == pytest.approx(max(final))  # the best epoch's model was kept


def test_an_interrupted_run_with_early_stopping_resumes_to_the_same_bundle(
    task, tmp_path, monkeypatch
):
    cfg = TrainConfig(task=task, early_stopping=2, **{**BASE, "final_epochs": 4})
    ref = tmp_path / "ref"
    run(cfg, ref)
    run_stopped_in_final(cfg, tmp_path / "run", monkeypatch, finals=2)
    run(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "task.safetensors").read_bytes() == (
        ref / "task.safetensors"
    ).read_bytes()
