"""Training checkpoints: an interrupted `spaedge train` resumes to the same result.

The reference is an uninterrupted run with the same seed; interrupted runs
stop after N epoch checkpoints (in adaptation, during a pruning recovery, in
the final phase), or by SIGINT in a subprocess, and are continued. The task
bundle must be byte-identical and the metrics equal (but the wall time).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from _toolchain_helpers import STOP_AFTER_FIRST_CHECKPOINT  # noqa: E402
from _toolchain_helpers import tiny_image_folder as _images  # noqa: E402

from spaedge.train import (  # noqa: E402
    TrainConfig,
    checkpoint,  # noqa: E402
    run,
)
from spaedge.train.setup import resolve  # noqa: E402

pytestmark = pytest.mark.slow  # the whole pipeline (train, pack, run)

CFG = dict(
    epochs=2, recovery_epochs=1, final_epochs=2, density=0.6, prune_step=0.2, seed=3, batch_size=16
)


@pytest.fixture(scope="module", autouse=True)
def task_dir(tmp_path_factory):
    CFG["task"] = f"imagefolder:{_images(tmp_path_factory.mktemp('imgs'))}"


def _resolved(cfg: dict) -> dict:
    """The config a run records (its base chosen for the task, data made local)."""
    return resolve(TrainConfig(**cfg)).to_json()


def metrics_wo_time(d):
    m = json.loads((d / "metrics.json").read_text())
    m.pop("seconds")
    return m


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    run(TrainConfig(**CFG), d)
    assert not (d / checkpoint.CHECKPOINT).exists()  # removed once the run is complete
    return d


def test_an_image_folder_takes_the_base_input_size():
    from spaedge.train import build_task_model

    task, _, _ = build_task_model(TrainConfig(**CFG))
    assert task.input_size == (1, 28, 28)  # the built-in base's, not 224x224
    task, _, _ = build_task_model(
        TrainConfig(**{**CFG, "base": "resnet18", "base_weights": "random"})
    )
    assert task.input_size == (3, 224, 224)


class Stop(Exception):
    pass


@pytest.mark.parametrize("stop_after", [1, 3, 6])  # adapt epoch 1; a recovery; final epoch 1
def test_resume_gives_the_same_bundle(reference, tmp_path, monkeypatch, stop_after):
    saves = []
    real = checkpoint.save

    def counting_save(path, **kw):
        real(path, **kw)
        saves.append(kw["position"].phase)
        if len(saves) == stop_after:
            raise Stop()

    monkeypatch.setattr(checkpoint, "save", counting_save)
    with pytest.raises(Stop):
        run(TrainConfig(**CFG), tmp_path)
    assert (tmp_path / checkpoint.CHECKPOINT).exists() and not (
        tmp_path / "task.safetensors"
    ).exists()
    ck = checkpoint.load(tmp_path / checkpoint.CHECKPOINT, _resolved(CFG))
    assert ck is not None and ck.position.phase == saves[-1]
    monkeypatch.setattr(checkpoint, "save", real)
    run(TrainConfig(**CFG), tmp_path)
    assert (tmp_path / "task.safetensors").read_bytes() == (
        reference / "task.safetensors"
    ).read_bytes()
    assert metrics_wo_time(tmp_path) == metrics_wo_time(reference)
    assert not list(tmp_path.glob("*.tmp-*"))


def test_checkpoint_of_another_config_is_not_resumed(tmp_path, monkeypatch):
    real = checkpoint.save

    def stop(path, **kw):
        real(path, **kw)
        raise Stop()

    monkeypatch.setattr(checkpoint, "save", stop)
    with pytest.raises(Stop):
        run(TrainConfig(**CFG), tmp_path)
    monkeypatch.setattr(checkpoint, "save", real)
    with pytest.raises(
        checkpoint.CheckpointError, match=r"other settings \(seed 3 there, 4 now\).*--restart"
    ):
        checkpoint.load(tmp_path / checkpoint.CHECKPOINT, _resolved({**CFG, "seed": 4}))
    assert checkpoint.load(tmp_path / checkpoint.CHECKPOINT, _resolved(CFG)) is not None
    # a run with another config in the same directory is refused, the checkpoint kept; --restart discards it
    with pytest.raises(checkpoint.CheckpointError, match="--restart"):
        run(TrainConfig(**{**CFG, "seed": 4}), tmp_path)
    assert checkpoint.load(tmp_path / checkpoint.CHECKPOINT, _resolved(CFG)) is not None
    run(TrainConfig(**{**CFG, "seed": 4}), tmp_path, resume=False)
    assert (tmp_path / "task.safetensors").exists() and not (
        tmp_path / checkpoint.CHECKPOINT
    ).exists()


def test_a_corrupt_checkpoint_is_refused_naming_restart(tmp_path):
    (tmp_path / checkpoint.CHECKPOINT).write_bytes(b"not a checkpoint at all")
    with pytest.raises(
        checkpoint.CheckpointError, match="not a readable spaedge checkpoint.*--restart"
    ):
        run(TrainConfig(**CFG), tmp_path)


def test_ctrl_c_leaves_a_resumable_run_directory(tmp_path):
    cfg = {**CFG, "final_epochs": 3}
    args = [
        "--task",
        cfg["task"],
        "--epochs",
        "2",
        "--recovery-epochs",
        "1",
        "--final-epochs",
        "3",
        "--density",
        "0.6",
        "--prune-step",
        "0.2",
        "--seed",
        "3",
        "--batch-size",
        "16",
    ]

    def train(out):
        return ["train", "--out", str(out), *args]

    reference = tmp_path / "reference"
    r = subprocess.run(
        [sys.executable, "-m", "spaedge.cli", *train(reference)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", STOP_AFTER_FIRST_CHECKPOINT, *train(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    _, status = os.waitpid(proc.pid, os.WUNTRACED)  # returns once the child has stopped itself
    assert os.WIFSTOPPED(status), f"the child ended before its first checkpoint (status {status})"
    ck = out / checkpoint.CHECKPOINT
    assert ck.exists() and not (out / "task.safetensors").exists()
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err.decode()[-2000:])
    assert b"interrupted" in err
    assert b"Traceback" not in err, err.decode()[-2000:]
    assert not (out / "task.safetensors").exists()
    assert not [p for p in out.iterdir() if ".tmp-" in p.name], list(out.iterdir())
    assert checkpoint.load(ck, _resolved(cfg)) is not None  # whole, readable
    r = subprocess.run(
        [sys.executable, "-m", "spaedge.cli", *train(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stdout + r.stderr
    assert (out / "task.safetensors").read_bytes() == (reference / "task.safetensors").read_bytes()
    assert metrics_wo_time(out) == metrics_wo_time(reference)
