"""`spaedge train` under torchrun: 2 processes, DDP over gloo on CPU.

The run must complete, rank 0 alone writes the run directory, the task bundle
runs in the C++ runtime like PyTorch, and both ranks end with the same model.
The same run with gradient averaging switched off (SPAEDGE_DDP_UNSYNCED) ends
with different models, so equality comes from the sync, not from both ranks
seeing the same data."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow  # the whole pipeline (train, pack, run)

ARGS = [
    "--task",
    "digits:0,1,2",
    "--train-limit",
    "64",
    "--batch-size",
    "16",
    "--epochs",
    "1",
    "--recovery-epochs",
    "1",
    "--final-epochs",
    "1",
    "--density",
    "0.5",
    "--prune-step",
    "0.4",
    "--criterion",
    "taylor",
    "--rank",
    "2",
    "--seed",
    "1",
]


def _torchrun(out, **env):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "spaedge.cli",
        "train",
        "--out",
        str(out),
        *ARGS,
    ]
    e = {**os.environ, "OMP_NUM_THREADS": "1", "SPAEDGE_DDP_STATE_HASH": "1", **env}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=e, cwd=out.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    return r, [(out / f"state-rank{i}.sha256").read_text().strip() for i in range(2)]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    return out, *_torchrun(out)


def test_two_processes_train_one_model(ddp_run):
    out, r, hashes = ddp_run
    assert hashes[0] == hashes[1]
    for f in ("task.safetensors", "metrics.json", "config.json", "plan.json"):
        assert (out / f).exists(), f
    assert not (out / "checkpoint.safetensors").exists()
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    assert r.stdout.count("trained digits") == 1  # rank 0 prints, the other rank is silent
    assert "data-parallel over 2 processes" in r.stderr


def test_without_gradient_sync_the_ranks_drift_apart(tmp_path):
    _, hashes = _torchrun(tmp_path / "run", SPAEDGE_DDP_UNSYNCED="1")
    assert hashes[0] != hashes[1]


def test_the_ddp_bundle_runs_in_the_runtime(ddp_run, tmp_path):
    from spaedge import runtime
    from spaedge.models import get_base
    from spaedge.pack.bundle import load_task_model, write_base
    from spaedge.tasks import get_task

    out = ddp_run[0]
    base = tmp_path / "base.safetensors"
    write_base(get_base("tiny"), base)
    model, spec, _ = load_task_model(base, out / "task.safetensors")
    x, _ = get_task("digits:0,1,2").arrays("test")
    x = x[:32].numpy()
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    rt = runtime.Runtime(base, threads=1)
    rt.load_task(out / "task.safetensors")
    got = rt.run(np.ascontiguousarray(x))
    assert float(np.abs(got - want).max()) <= 1e-3 * (1 + float(np.abs(want).max()))
    assert (got.argmax(1) == want.argmax(1)).all()
