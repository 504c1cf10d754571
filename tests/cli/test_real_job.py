"""`spaedge pack --task flowers` with no other flags, as a new user runs it:
the ImageNet ResNet-18 weights and Flowers-102 come from a loopback mirror
(stand-ins made here, SPAEDGE_MIRROR + SPAEDGE_CHECKSUMS), the default base
follows the task, and the packed bundle runs in the C++ runtime like PyTorch.
No request leaves 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from _mirror import MirrorServer, dead_port, flowers_files, mirror_env, resnet18_pth

from spaedge.models.pretrained import PRETRAINED
from spaedge.pack.format import read_metadata
from spaedge.tasks.fetch import FLOWERS_BASE as FLOWERS

pytestmark = pytest.mark.slow

R18 = PRETRAINED["resnet18"].url
# The smallest schedule through every phase: adapt, one pruning step, final.
TINY_BUDGET = [
    "--epochs",
    "1",
    "--recovery-epochs",
    "0",
    "--final-epochs",
    "1",
    "--density",
    "0.6",
    "--prune-step",
    "0.5",
    "--batch-size",
    "6",
]


def spaedge(*args, cwd, env, check=True, timeout=1200):
    proc = subprocess.run(
        [sys.executable, "-m", "spaedge.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"spaedge {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def _error_line(proc) -> str:
    """The one line of a failed command's error (progress lines may come before it)."""
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), proc.stderr
    return errors[0]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    files, sizes, _ = flowers_files(classes=(1, 2, 3), per_split=2)
    weights, _ = resnet18_pth()
    served = {FLOWERS + name: data for name, data in files.items()}
    served[R18] = weights
    with MirrorServer() as server:
        for url, data in served.items():
            server.add(url, data)
        tmp = tmp_path_factory.mktemp("mirror")
        env = {**os.environ, **mirror_env(server, tmp, served), "OMP_NUM_THREADS": "2"}
        yield server, env, sizes


def test_pack_flowers_downloads_trains_an_imagenet_resnet18_and_the_runtime_agrees(
    mirror, tmp_path
):
    server, env, sizes = mirror
    out = spaedge("pack", "--task", "flowers", *TINY_BUDGET, cwd=tmp_path, env=env).stdout
    # what it chose and fetched
    assert "base resnet18 for flowers" in out
    assert server.count(R18) == 1 and server.count(FLOWERS + "102flowers.tgz") == 1
    base_meta = read_metadata(tmp_path / "bundles" / "base.safetensors")
    assert (
        base_meta["model"] == "resnet18"
        and "ImageNet-1k (resnet18-f37072fd.pth)" in base_meta["weights"]
    )
    task_meta = read_metadata(tmp_path / "bundles" / "flowers.safetensors")
    spec = json.loads(task_meta["input"])
    assert (spec["channels"], spec["height"], spec["width"]) == (3, 224, 224)
    assert spec["mean"] == pytest.approx([0.485, 0.456, 0.406])
    cfg = json.loads((tmp_path / "runs" / "flowers" / "config.json").read_text())
    assert cfg["base"] == "resnet18" and cfg["base_weights"] is None
    # the runtime agrees with PyTorch on >= 99.9% of the test predictions (pack checks and prints it)
    line = next(l for l in out.splitlines() if "runtime vs PyTorch" in l)
    assert float(line.split("%")[0].split()[-1]) >= 99.9
    assert f"({sizes['test']} images)" in out

    # a second pack reuses everything: no request
    before = {u: server.count(u) for u in (R18, FLOWERS + "102flowers.tgz", FLOWERS + "setid.mat")}
    again = spaedge(
        "pack", "--task", "flowers", *TINY_BUDGET, "--no-download", cwd=tmp_path, env=env
    ).stdout
    assert "using the trained run" in again
    assert {u: server.count(u) for u in before} == before


def test_no_download_with_an_empty_cache_names_what_and_where(mirror, tmp_path):
    server, env, _ = mirror
    env = {**env, "SPAEDGE_HOME": str(tmp_path / "empty-home")}
    n = server.count(R18)
    proc = spaedge(
        "train",
        "--task",
        "flowers",
        "--no-download",
        *TINY_BUDGET,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert proc.returncode == 2
    err = _error_line(proc)
    assert "--no-download" in err
    assert str(tmp_path / "empty-home") in err  # where to place the file by hand
    assert server.count(R18) == n  # nothing was requested


def test_a_resnet_base_with_unreachable_weights_fails_instead_of_going_random(tmp_path):
    env = {
        **os.environ,
        "SPAEDGE_HOME": str(tmp_path / "home"),
        "SPAEDGE_MIRROR": f"http://127.0.0.1:{dead_port()}",
        "SPAEDGE_TIMEOUT": "3,3",
    }
    t0 = time.monotonic()
    proc = spaedge(
        "train",
        "--task",
        "digits",
        "--base",
        "resnet18",
        *TINY_BUDGET,
        cwd=tmp_path,
        env=env,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 2
    err = _error_line(proc)
    assert "resnet18-f37072fd.pth" in err and "connection refused" in err
    assert not (tmp_path / "runs").exists()  # no run started
    assert time.monotonic() - t0 < 60  # a dead host fails in seconds, not at a timeout of minutes


def test_an_explicit_random_base_trains_and_says_so(tmp_path):
    proc = spaedge(
        "train",
        "--task",
        "digits",
        "--base",
        "resnet18-cifar",
        "--base-weights",
        "random",
        "--train-limit",
        "64",
        "--test-limit",
        "32",
        *TINY_BUDGET,
        cwd=tmp_path,
        env=dict(os.environ),
    )
    info = json.loads(read_metadata(tmp_path / "runs" / "digits" / "task.safetensors")["info"])
    assert info["base_weights"].startswith("random")
    assert "gray images, the resnet18-cifar base takes 3 channels" in proc.stdout + proc.stderr
    shown = spaedge(
        "info",
        str(tmp_path / "runs" / "digits" / "task.safetensors"),
        cwd=tmp_path,
        env=dict(os.environ),
    ).stdout
    assert "random (not pretrained)" in shown
