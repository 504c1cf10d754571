"""int8 from the command line (issue 19 item 2): `spaedge pack --precision
int8` end to end on digits, `spaedge quantize` (its happy paths and each
error), `spaedge run --precision int8`, and mixed pairs refused."""

from __future__ import annotations

import json
import shutil

import pytest
from _cli_helpers import QUICK, spaedge

from spaedge.pack.format import read_metadata

pytestmark = pytest.mark.slow  # trains and packs digits once


def _percent(out: str, row: str) -> float:
    line = next(line for line in out.splitlines() if line.strip().startswith(row))
    return float(line[len(line) - len(line.lstrip()) + len(row) :].split("%")[0])


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    work = tmp_path_factory.mktemp("pack8")
    proc = spaedge("pack", "--task", "digits", "--precision", "int8", *QUICK, cwd=work)
    return work, proc.stdout


def test_pack_int8_writes_and_checks_both_pairs(packed):
    work, out = packed
    b = work / "bundles"
    assert sorted(p.name for p in b.iterdir()) == [
        "base.int8.safetensors",
        "base.safetensors",
        "digits.int8.safetensors",
        "digits.safetensors",
    ]
    # the fp32 pair is what a plain pack writes: the run's bundle, byte for byte
    assert (b / "digits.safetensors").read_bytes() == (
        work / "runs" / "digits" / "task.safetensors"
    ).read_bytes()
    m32, b32 = read_metadata(b / "digits.safetensors"), read_metadata(b / "base.safetensors")
    m8, b8 = (
        read_metadata(b / "digits.int8.safetensors"),
        read_metadata(b / "base.int8.safetensors"),
    )
    assert "precision" not in m32 and m32["version"] == "4"
    assert m8["precision"] == b8["precision"] == "int8" and m8["version"] == "5"
    assert b8["quantized_from"] == b32["content_hash"]
    assert m8["base_hash"] == b8["content_hash"]
    cal = json.loads(m8["info"])["calibration"]
    assert cal["images"] == 256 and cal["split"] == "train"
    assert cal["chosen_on"]["split"] == "val" and cal["chosen_on"]["images"] == 359
    assert cal["statistic"] in cal["chosen_on"]["top1_agreement"]
    # the printed block: fp32 rows, then the int8 rows
    for row in ("int8 calibration", "int8 test accuracy, runtime", "int8 vs fp32 PyTorch"):
        assert f"  {row}" in out, out
    assert "same predictions" in out.split("int8 vs fp32 PyTorch")[1].splitlines()[0]
    fp32_acc = _percent(out, "test accuracy, runtime")
    int8_acc = _percent(out, "int8 test accuracy, runtime")
    assert abs(int8_acc - fp32_acc) <= 3.0, out  # a briefly trained model; see docs/int8.md
    assert _percent(out, "int8 vs fp32 PyTorch") >= 95.0, out
    line = next(line for line in out.splitlines() if "int8 bundles" in line)
    assert "x fp32" in line and line.count("KiB") == 2
    ratio = (b / "base.int8.safetensors").stat().st_size / (b / "base.safetensors").stat().st_size
    assert ratio < 0.3
    assert f"({ratio:.2f}x fp32)" in line.split("base")[1]
    assert not [p for p in b.iterdir() if ".tmp-" in p.name or ".new-" in p.name]


def test_pack_int8_again_reuses_the_int8_base_and_run_reads_the_pair(packed):
    work, out = packed
    base8 = work / "bundles" / "base.int8.safetensors"
    task8 = work / "bundles" / "digits.int8.safetensors"
    before, task_bytes = base8.stat().st_mtime_ns, task8.read_bytes()
    again = spaedge("pack", "--task", "digits", "--precision", "int8", *QUICK, cwd=work).stdout
    assert "already holds the int8 of this base" in again
    assert base8.stat().st_mtime_ns == before
    assert task8.read_bytes() == task_bytes  # the calibration and its choice are deterministic
    ran = spaedge("run", "--task", "digits", "--precision", "int8", "--eval", cwd=work).stdout
    assert f"test accuracy {_percent(out, 'int8 test accuracy, runtime'):.2f}%" in ran


def test_pack_precision_names_the_training_flag(tmp_path):
    proc = spaedge("pack", "--precision", "bf16", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "--train-precision bf16" in proc.stderr
    assert "--train-precision" in spaedge("pack", "--help", cwd=tmp_path).stdout


def test_quantize_makes_the_same_pair_as_pack(packed, tmp_path):
    work, out = packed
    res = spaedge(
        "quantize",
        "--bundles",
        str(work / "bundles"),
        "--task",
        "digits",
        "--out",
        "q",
        cwd=tmp_path,
    ).stdout
    b, q = work / "bundles", tmp_path / "q"
    assert "wrote q/base.int8.safetensors" in res and "quantized digits:" in res
    assert (q / "base.int8.safetensors").read_bytes() == (b / "base.int8.safetensors").read_bytes()
    assert (q / "digits.int8.safetensors").read_bytes() == (
        b / "digits.int8.safetensors"
    ).read_bytes()
    assert _percent(res, "int8 vs fp32 PyTorch") == _percent(out, "int8 vs fp32 PyTorch")
    # a fixed statistic, recorded without a validation choice; the base is reused
    res = spaedge(
        "quantize",
        "--bundles",
        str(b),
        "--task",
        "digits",
        "--out",
        "q",
        "--calibration",
        "64",
        "--calibration-statistic",
        "percentile-99.9",
        cwd=tmp_path,
    ).stdout
    assert "already holds the int8 of base.safetensors" in res
    cal = json.loads(read_metadata(q / "digits.int8.safetensors")["info"])["calibration"]
    assert cal["statistic"] == "percentile-99.9" and cal["images"] == 64
    assert "chosen_on" not in cal
    assert not [p for p in q.iterdir() if ".tmp-" in p.name or ".new-" in p.name]


def _copy(packed, tmp_path, names):
    work, _ = packed
    d = tmp_path / "b"
    d.mkdir()
    for src, dst in names:
        shutil.copy(work / "bundles" / src, d / dst)
    return d


@pytest.mark.parametrize(
    "files,args,message",
    [
        ([], ["--task", "digits"], "b/digits.safetensors does not exist: pack the task first"),
        (
            [
                ("base.int8.safetensors", "base.safetensors"),
                ("digits.int8.safetensors", "digits.safetensors"),
            ],
            ["--task", "digits"],
            "is int8 already",
        ),
        (
            [("digits.safetensors", "digits.safetensors")],
            ["--task", "digits"],
            "no base bundle in b is the base",
        ),
        (
            [
                ("base.safetensors", "base.safetensors"),
                ("digits.safetensors", "nosuch.safetensors"),
            ],
            ["--task", "nosuch"],
            "unknown task 'nosuch'",
        ),
        (
            [
                ("base.safetensors", "base.safetensors"),
                ("digits.safetensors", "digits.safetensors"),
            ],
            ["--task", "digits", "--calibration", "random"],
            "--calibration random is for synthetic speed tasks only",
        ),
        (
            [
                ("base.safetensors", "base.safetensors"),
                ("digits.safetensors", "fashion_mnist.safetensors"),
            ],
            ["--task", "fashion_mnist", "--data-dir", "nodata", "--no-download"],
            "--data-dir says where they are",
        ),
        (
            [
                ("base.safetensors", "base.safetensors"),
                ("digits.safetensors", "digits.safetensors"),
                ("base.safetensors", "base.int8.safetensors"),
            ],
            ["--task", "digits"],
            "holds another base than the int8 of",
        ),
    ],
)
def test_quantize_errors_are_one_clear_line(packed, tmp_path, files, args, message):
    d = _copy(packed, tmp_path, files)
    (tmp_path / "nodata").mkdir()
    before = sorted(p.name for p in d.iterdir())
    proc = spaedge("quantize", "--bundles", "b", *args, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert message in err, err
    assert sorted(p.name for p in d.iterdir()) == before  # nothing written


@pytest.mark.parametrize(
    "value,message",
    [("0", "a positive integer) or 'random'"), ("lots", "got 'lots'"), ("-3", "got '-3'")],
)
def test_quantize_refuses_a_bad_calibration(tmp_path, value, message):
    proc = spaedge(
        "quantize", "--task", "digits", "--calibration", value, cwd=tmp_path, check=False
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    proc = spaedge(
        "quantize",
        "--task",
        "digits",
        "--calibration-statistic",
        "median",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2 and "percentile-P" in proc.stderr, proc.stderr


def test_quantize_help_says_random_is_for_synthetic_tasks(tmp_path):
    out = " ".join(spaedge("quantize", "--help", cwd=tmp_path).stdout.split())
    assert "'random' is for synthetic speed tasks only" in out
    assert "validation split (never the test split)" in out
    assert "quantize" in spaedge("--help", cwd=tmp_path).stdout


def test_quantize_a_synthetic_task_on_random_images(tmp_path):
    import torch

    from spaedge.bench.engines import calibration_of
    from spaedge.bench.synthetic import make_int8_pair, make_synthetic_task
    from spaedge.pack.bundle import load_task_model
    from spaedge.pack.calibrate import calibrate
    from spaedge.pack.format import read_bundle
    from spaedge.pack.quantize import random_calibration_images, random_calibration_info

    t = make_synthetic_task(
        tmp_path / "b", "syn", base="tiny", density=0.5, rank=2, classes=3, input_size=(1, 28, 28)
    )
    res = spaedge(
        "quantize", "--bundles", "b", "--task", "syn", "--calibration", "random", cwd=tmp_path
    )
    assert "32 random N(0,1) images (seed 0), minmax" in res.stdout
    assert "int8 test accuracy" not in res.stdout  # no data: nothing to score
    base8 = tmp_path / "b" / "base-tiny.int8.safetensors"  # named after its fp32 base
    meta = read_metadata(tmp_path / "b" / "syn.int8.safetensors")
    info = json.loads(meta["info"])
    # one random scheme: what make_int8_pair writes, and what the bench rebuilds
    assert info["calibration"] == random_calibration_info(32, 0, "minmax")
    images = calibration_of(info, "syn", t.input_size)
    assert images.tobytes() == random_calibration_images(t.input_size, 32, 0).tobytes()
    # ... and the activations were calibrated on exactly those images
    model, _, _ = load_task_model(t.base_path, t.task_path)
    act = calibrate(model, torch.from_numpy(images), statistic="minmax")
    tensors = read_bundle(tmp_path / "b" / "syn.int8.safetensors")[0]

    # Within float rounding: the command's torch and this process's may sum a
    # conv in another order (threads), moving a range by an ulp (seen once).
    def same(a, b):
        return abs(float(a[0]) - float(b[0])) <= 1e-5 * abs(float(b[0])) and abs(a[1] - b[1]) <= 1

    for v, (scale, zero) in act.items():
        stored = (tensors[f"{v}.act_scale"][0], int(tensors[f"{v}.act_zero_point"][0]))
        assert same(stored, (scale, zero)), (v, stored, scale, zero)
    act_other = calibrate(model, torch.from_numpy(images[:16]), statistic="minmax")
    assert any(not same(act_other[v], act[v]) for v in act)  # the check above can fail
    pair = make_int8_pair(t)  # the benchmarks' pair of the same fp32 bundles
    assert json.loads(read_metadata(pair.task_path)["info"])["calibration"] == info["calibration"]
    assert pair.calibration.tobytes() == images.tobytes()
    assert meta["base_hash"] == read_metadata(base8)["content_hash"]
    assert read_metadata(base8)["quantized_from"] == read_metadata(t.base_path)["content_hash"]
    from spaedge.runtime import Runtime

    rt = Runtime(str(base8), threads=1)
    rt.load_task(str(tmp_path / "b" / "syn.int8.safetensors"))
    import numpy as np

    assert rt.run(np.zeros((2, 1, 28, 28), np.float32)).shape == (2, 3)


def test_mixed_pairs_are_refused(packed, tmp_path):
    # an fp32 base where the int8 one should be: the runtime names both precisions
    _copy(
        packed,
        tmp_path,
        [
            ("base.safetensors", "base.int8.safetensors"),
            ("digits.int8.safetensors", "digits.int8.safetensors"),
        ],
    )
    proc = spaedge(
        "run",
        "--bundles",
        "b",
        "--task",
        "digits",
        "--precision",
        "int8",
        "--eval",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "is int8 but the loaded base" in proc.stderr and "fp32" in proc.stderr, proc.stderr
    proc = spaedge("run", "--bundles", "b", "--task", "digits", "--eval", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "--precision int8" not in proc.stderr
    assert "pack the task first" in proc.stderr


def test_an_interrupted_quantize_leaves_the_old_bundle(packed, tmp_path, monkeypatch):
    """Ctrl-C while the new int8 task bundle is checked: the one installed
    stays byte for byte, and no partial or temporary file is left."""
    import torch

    from spaedge.cli import quantize
    from spaedge.pack.calibrate import calibration_images
    from spaedge.runtime import Runtime
    from spaedge.tasks import get_task

    d = _copy(
        packed,
        tmp_path,
        [
            ("base.safetensors", "base.safetensors"),
            ("digits.safetensors", "digits.safetensors"),
            ("base.int8.safetensors", "base.int8.safetensors"),
            ("digits.int8.safetensors", "digits.int8.safetensors"),
        ],
    )
    old = (d / "digits.int8.safetensors").read_bytes()

    def interrupted(self, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(Runtime, "load_task", interrupted)
    torch.set_num_threads(1)
    with pytest.raises(KeyboardInterrupt):
        quantize.write_int8_task(
            d / "base.safetensors",
            d / "digits.safetensors",
            d / "base.int8.safetensors",
            d / "digits.int8.safetensors",
            calibration_images(get_task("digits"), 32),
            statistic="minmax",
            val=None,
            split="train",
            selection="spaedge/int8-calibration/v1",
        )
    assert (d / "digits.int8.safetensors").read_bytes() == old
    assert sorted(p.name for p in d.iterdir()) == [
        "base.int8.safetensors",
        "base.safetensors",
        "digits.int8.safetensors",
        "digits.safetensors",
    ]
