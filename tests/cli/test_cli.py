"""The `spaedge` command end to end, as a user runs it (subprocesses)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _cli_helpers import QUICK, spaedge

from spaedge.pack.format import read_metadata

pytestmark = pytest.mark.slow  # the whole pipeline (train, pack, run)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    work = tmp_path_factory.mktemp("pack")
    proc = spaedge("pack", "--task", "digits", *QUICK, cwd=work)
    return work, proc.stdout


def test_pack_digits_writes_bundles_and_checks_the_runtime(packed):
    work, out = packed
    base, task = work / "bundles" / "base.safetensors", work / "bundles" / "digits.safetensors"
    assert base.exists() and task.exists()
    assert read_metadata(task)["base_hash"] == read_metadata(base)["content_hash"]
    assert "test accuracy, runtime" in out and "same predictions" in out
    line = next(l for l in out.splitlines() if "runtime vs PyTorch" in l)
    assert "100.00% same predictions" in line or float(line.split("%")[0].split()[-1]) >= 99.9
    assert (work / "runs" / "digits" / "metrics.json").exists()
    m = json.loads((work / "runs" / "digits" / "metrics.json").read_text())
    assert m["density"] <= 0.5 and m["task_bundle_bytes"] < m["whole_model_bytes"]
    assert not list((work / "bundles").glob("*.tmp-*"))


def test_pack_again_reuses_the_run_and_keeps_the_base(packed):
    work, _ = packed
    base = work / "bundles" / "base.safetensors"
    before = base.stat().st_mtime_ns
    out = spaedge("pack", "--task", "digits", *QUICK, cwd=work).stdout
    assert "using the trained run" in out and "already holds this base" in out
    assert base.stat().st_mtime_ns == before


def test_pack_refuses_a_directory_holding_another_base(packed, tmp_path):
    work, _ = packed
    proc = spaedge(
        "pack",
        "--task",
        "digits",
        "--base",
        "resnet18-cifar",
        "--base-weights",
        "random",
        "--out",
        str(work / "bundles"),
        *QUICK,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2
    assert "holds another base" in proc.stderr and "Traceback" not in proc.stderr


def test_info_run_eval_and_images(packed, tmp_path):
    work, _ = packed
    out = spaedge("info", "bundles/digits.safetensors", cwd=work).stdout
    assert "spaedge-task" in out and "digits" in out and "labels" in out
    out = spaedge("info", "bundles/base.safetensors", cwd=work).stdout
    assert "spaedge-base" in out and "spaedge-tiny" in out
    out = spaedge("run", "--task", "digits", "--eval", cwd=work).stdout
    acc = float(out.split("accuracy")[1].split("%")[0])
    assert 0 <= acc <= 100 and "359 images" in out
    from PIL import Image

    img = np.zeros((28, 28), np.uint8)
    img[6:22, 12:16] = 255  # something like a one
    Image.fromarray(img).save(tmp_path / "one.png")
    out = spaedge(
        "run", "--task", "digits", "--top", "2", str(tmp_path / "one.png"), cwd=work
    ).stdout
    assert out.startswith(str(tmp_path / "one.png")) and out.count("%") == 2


@pytest.mark.parametrize(
    "args,message",
    [
        (["pack", "--density", "2"], "density must be in"),
        (["pack", "--rank", "0"], "positive integer"),
        (["train", "--task", "nope"], "unknown task"),
        (
            ["train", "--task", "flowers", "--data-dir", "/nonexistent/flowers"],
            "/nonexistent/flowers",
        ),
        (["info", "/nonexistent.safetensors"], "no such bundle"),
        (["run", "--bundles", "/nonexistent"], "pack the task first"),
    ],
)
def test_bad_input_is_one_clear_line(args, message, tmp_path):
    proc = spaedge(*args, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message.lower() in proc.stderr.lower(), proc.stderr
    assert "Traceback" not in proc.stderr


def test_info_refuses_a_corrupt_bundle(packed, tmp_path):
    work, _ = packed
    data = bytearray((work / "bundles" / "digits.safetensors").read_bytes())
    data[len(data) // 2] ^= 1
    (tmp_path / "bad.safetensors").write_bytes(bytes(data))
    proc = spaedge("info", str(tmp_path / "bad.safetensors"), cwd=tmp_path, check=False)
    assert (
        proc.returncode == 2 and "bad.safetensors" in proc.stderr and "Traceback" not in proc.stderr
    )


def test_help_explains_every_command(tmp_path):
    out = spaedge("--help", cwd=tmp_path).stdout
    for cmd in ("pack", "train", "run", "info", "pretrain", "tasks"):
        assert cmd in out
    assert "--density" in spaedge("pack", "--help", cwd=tmp_path).stdout


def test_run_reads_16_bit_and_float_images_by_value_and_refuses_a_strip(packed, tmp_path):
    """Issue 18 items 4 and 8: the same digit at 8 bits, 16 bits and as a float
    TIFF gives the same answer; a 1e6 x 1 PNG is refused before it is decoded."""
    from PIL import Image

    work, _ = packed
    img = np.zeros((28, 28), np.uint8)
    img[5:23, 9:19] = 255
    img[9:19, 13:15] = 0  # something like a zero
    Image.fromarray(img).save(tmp_path / "l8.png")
    Image.fromarray(img.astype(np.uint16) * 257).save(tmp_path / "i16.png")
    Image.fromarray(img.astype(np.float32) / 255, "F").save(tmp_path / "f.tif")
    outs = [
        spaedge("run", "--task", "digits", str(tmp_path / n), cwd=work).stdout.split(": ", 1)[1]
        for n in ("l8.png", "i16.png", "f.tif")
    ]
    assert outs[0] == outs[1] == outs[2], outs
    Image.new("L", (1_000_000, 1)).save(tmp_path / "strip.png")
    proc = spaedge("run", "--task", "digits", str(tmp_path / "strip.png"), cwd=work, check=False)
    assert proc.returncode == 2 and "aspect ratio above the 20:1 limit" in proc.stderr
    assert "Traceback" not in proc.stderr
