"""A run's identity is its content, not its spelling (docs/reliability.md,
"Run identity"): resume, `pack`'s run matching and `experiment`'s cells refuse
a run made on other base weights or other data, naming what differs and the
flag that starts over. Each scenario of issue 18 is built by construction."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
from _toolchain_helpers import tiny_image_folder

from spaedge.cli import main
from spaedge.pack.layout import run_dir_path
from spaedge.train import TrainConfig, checkpoint, run

QUICK = dict(
    epochs=1, recovery_epochs=0, final_epochs=1, density=1.0, train_limit=48, test_limit=16
)
QUICK_FLAGS = [
    "--epochs", "1", "--recovery-epochs", "0", "--final-epochs", "1", "--density", "1.0",
    "--train-limit", "48", "--test-limit", "16",
]  # fmt: skip


class Stop(Exception):
    pass


def _stop_after_first_checkpoint(monkeypatch):
    real = checkpoint.save

    def save(path, **kw):
        real(path, **kw)
        raise Stop()

    monkeypatch.setattr(checkpoint, "save", save)
    return real


def _tiny_weights(path, scale=1.0):
    from safetensors.torch import save_file

    from spaedge.models import get_base

    state = {
        k: v * scale if v.is_floating_point() else v
        for k, v in get_base("tiny").state_dict().items()
    }
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def test_resume_refuses_a_checkpoint_made_on_other_base_weights(tmp_path, monkeypatch):
    imgs = tiny_image_folder(tmp_path / "imgs")
    w = tmp_path / "w.safetensors"
    _tiny_weights(w)
    cfg = TrainConfig(task=f"imagefolder:{imgs}", base="tiny", base_weights=str(w), **QUICK)
    real = _stop_after_first_checkpoint(monkeypatch)
    with pytest.raises(Stop):
        run(cfg, tmp_path / "run")
    monkeypatch.setattr(checkpoint, "save", real)
    _tiny_weights(w, scale=0.5)  # same name, other values
    with pytest.raises(
        checkpoint.CheckpointError, match=r"base weights \w+ there, \w+ now.*--restart"
    ):
        run(cfg, tmp_path / "run")
    assert (tmp_path / "run" / checkpoint.CHECKPOINT).exists()  # kept: the user decides
    run(cfg, tmp_path / "run", resume=False)  # --restart
    assert (tmp_path / "run" / "task.safetensors").exists()


def test_resume_refuses_a_checkpoint_made_on_other_data(tmp_path, monkeypatch):
    imgs = tiny_image_folder(tmp_path / "imgs")
    cfg = TrainConfig(task=f"imagefolder:{imgs}", base="tiny", **QUICK)
    real = _stop_after_first_checkpoint(monkeypatch)
    with pytest.raises(Stop):
        run(cfg, tmp_path / "run")
    monkeypatch.setattr(checkpoint, "save", real)
    shutil.copy(imgs / "train" / "dark" / "0.png", imgs / "train" / "bright" / "new.png")
    with pytest.raises(checkpoint.CheckpointError, match=r"data in .*imgs changed.*--restart"):
        run(cfg, tmp_path / "run")


def _folder(root, classes):
    from PIL import Image

    for i, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for k in range(8):
            Image.fromarray(np.full((28, 28), 30 * i + k, np.uint8), "L").save(
                root / c / f"{k}.png"
            )


def test_pack_refuses_a_run_of_the_same_relative_folder_name_elsewhere(
    tmp_path, monkeypatch, capsys
):
    a, b, shared = tmp_path / "A", tmp_path / "B", tmp_path / "SHARED"
    _folder(a / "imgs", ["cat", "dog"])
    _folder(b / "imgs", ["x", "y", "z"])
    monkeypatch.chdir(a)
    cfg = TrainConfig(task="imagefolder:imgs", base="tiny", **QUICK)
    run(cfg, run_dir_path(shared, cfg.task))
    monkeypatch.chdir(b)
    code = main(
        ["pack", "--task", "imagefolder:imgs", "--base", "tiny", "--runs", str(shared),
         "--out", str(b / "bundles"), *QUICK_FLAGS]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0
    assert f"data {a / 'imgs'} there, {b / 'imgs'} now" in err and "--retrain" in err
    assert not (b / "bundles" / "imagefolder_imgs.safetensors").exists()
    assert not list((b / "bundles").glob("*.safetensors")) if (b / "bundles").exists() else True


def test_experiment_refuses_to_extend_a_grid_made_on_another_base(tmp_path):
    from spaedge.experiment import FAST_BUDGET, run_grid
    from spaedge.experiment.grid import Cell

    imgs = tiny_image_folder(tmp_path / "imgs")
    cells = [Cell(f"imagefolder:{imgs}", "splora", 4, 1.0)]
    budget = dataclasses.replace(
        FAST_BUDGET, lrs=(0.01,), train_limit=48, val_limit=16, test_limit=16
    )
    out = tmp_path / "X"
    assert len(run_grid(cells, budget, out, base="tiny", log=lambda m: None)) == 1
    log = []
    assert (
        len(run_grid(cells, budget, out, base="tiny", log=log.append)) == 1
    )  # same inputs: resumed
    assert any("1 already done" in m for m in log)
    with pytest.raises(ValueError, match=r"base 'tiny' there, 'small' now.*another --out"):
        run_grid(cells, budget, out, base="small", log=lambda m: None)
    w = tmp_path / "w.safetensors"
    _tiny_weights(w, scale=0.5)
    with pytest.raises(ValueError, match=r"base weights \w+ there, \w+ now.*--base-weights"):
        run_grid(cells, budget, out, base="tiny", base_weights=str(w), log=lambda m: None)
    shutil.copy(imgs / "train" / "dark" / "0.png", imgs / "train" / "bright" / "new.png")
    with pytest.raises(ValueError, match=r"changed"):
        run_grid(cells, budget, out, base="tiny", log=lambda m: None)
