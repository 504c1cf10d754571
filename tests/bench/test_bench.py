"""`spaedge bench` and the benchmark suite, run quickly so neither can rot.

No timing is asserted: only that every engine runs the same model to the same
logits and that the reports hold what they promise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime  # noqa: F401
import pytest
import torch  # noqa: F401

import spaedge.runtime  # noqa: F401
from spaedge import bench  # noqa: E402
from spaedge.bench.synthetic import make_synthetic_task  # noqa: E402
from spaedge.cli import main  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """DIR/base.safetensors with two digits-like tasks on the built-in base."""
    d = tmp_path_factory.mktemp("bundles")
    a = make_synthetic_task(
        d,
        "digits",
        base="tiny",
        density=0.3,
        classes=10,
        input_size=(1, 28, 28),
        base_file="base.safetensors",
    )
    make_synthetic_task(
        d,
        "other",
        base="tiny",
        density=0.5,
        classes=4,
        input_size=(1, 28, 28),
        seed=1,
        base_file="base.safetensors",
    )
    return d, a


def test_every_engine_runs_the_same_model(bundles):
    _, task = bundles
    x = np.random.default_rng(1).standard_normal((1, *task.input_size)).astype(np.float32)
    outs = {}
    for e in bench.ENGINES:
        try:
            outs[e] = bench.make_runner(e, task, 1, x)()
        except bench.EngineUnavailable as err:
            assert e == "litert", err  # only LiteRT is optional in the test install
    assert {"spaedge", "onnxruntime", "torch"} <= set(outs)
    diff = bench.check_agreement(outs, np.asarray(outs["torch"], np.float64))
    assert max(diff.values()) < 1e-4, diff
    assert outs["spaedge"].shape == (1, 10)


def test_measure_interleaves_and_counts():
    calls = []
    times = bench.measure(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, runs=7, block=3, warmup=1
    )
    assert {k: len(v) for k, v in times.items()} == {"a": 7, "b": 7}
    # warm-up, then blocks of (1 untimed + up to 3 timed) calls taking turns
    assert calls[:2] == ["a", "b"]
    assert calls[2:6] == ["a"] * 4 and calls[6:10] == ["b"] * 4
    assert len(calls) == 2 + 2 * (7 + 3)
    s = bench.summarise([0.001, 0.002, 0.003, 0.004])
    assert (
        s["median_ms"] == pytest.approx(2.5)
        and s["runs"] == 4
        and s["min_ms"] == pytest.approx(1.0)
    )


def test_spaedge_bench_cli(bundles, tmp_path, capsys):
    d, task = bundles
    j, png = tmp_path / "r.json", tmp_path / "r.png"
    assert (
        main(
            [
                "bench",
                "--bundles",
                str(d),
                "--task",
                "digits",
                "--threads",
                "1",
                "--runs",
                "3",
                "--switches",
                "4",
                "--json",
                str(j),
                "--png",
                str(png),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "median ms" in out and "vs onnxruntime" in out and "task switch (digits <-> other" in out
    r = json.loads(j.read_text())
    rows = {row["engine"]: row for row in r["latency"] if row["precision"] == "fp32"}
    assert rows["onnxruntime"]["ratio"] == pytest.approx(1.0)
    for e in ("spaedge", "torch"):
        row = rows[e]
        assert row["runs"] == 3 and row["p90_ms"] >= row["median_ms"] > 0
        assert row["max_rel_diff"] < 1e-4
        assert row["gflops"] == pytest.approx(2 * task.macs / row["median_ms"] / 1e6)
    assert r["task"]["macs"] == task.macs and r["task"]["bundle_bytes"] == task.bundle_bytes
    assert r["task"]["whole_bytes"] == task.whole_bytes
    assert r["switch"]["between"] == ["digits", "other"] and r["switch"]["speedup"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_spaedge_bench_cli_missing_bundle(tmp_path, capsys):
    assert main(["bench", "--bundles", str(tmp_path), "--task", "digits"]) == 2
    assert "spaedge pack --task digits" in capsys.readouterr().err


@pytest.mark.slow
def test_benchmark_suite_runs(tmp_path):
    """`pytest benchmarks` (benchmarking disabled, small inputs, the digits
    cases): every benchmark body runs once, including its agreement checks."""
    assert (BENCHMARKS / "bench_cases.py").exists(), (
        f"the benchmark suite is not next to the tests ({BENCHMARKS})"
    )
    env = {**os.environ, "SPAEDGE_BENCH_QUICK": "1"}
    cmd = [
        sys.executable,
        "-P",
        "-m",
        "pytest",
        str(BENCHMARKS),
        "--benchmark-disable",
        "-k",
        "digits",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--basetemp={tmp_path / 'bt'}",
    ]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    tail = p.stdout.strip().splitlines()[-1]
    assert " passed" in tail and "failed" not in tail and "error" not in tail, tail


def test_exports_are_reused_only_when_newer_than_the_bundle(bundles, tmp_path):
    """--exports DIR: a device without torch times the peers on exports made elsewhere."""
    _, task = bundles
    t = bench.BenchTask(**{**task.facts(), "input_size": task.input_size, "workdir": str(tmp_path)})
    onnx = tmp_path / "digits.onnx"
    onnx.write_bytes(b"stub")
    bundle_time = os.stat(task.task_path).st_mtime
    os.utime(onnx, (bundle_time + 10, bundle_time + 10))
    assert t.onnx_path() == str(onnx) and onnx.read_bytes() == b"stub"
    t2 = bench.BenchTask(
        **{**task.facts(), "input_size": task.input_size, "workdir": str(tmp_path)}
    )
    os.utime(onnx, (bundle_time - 10, bundle_time - 10))  # stale: older than the task bundle
    assert t2.onnx_path() == str(onnx) and onnx.read_bytes() != b"stub"
    import onnxruntime as ort

    assert (
        ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).get_inputs()[0].name
        == "input"
    )


def test_a_stale_cached_base_is_written_again(tmp_path):
    """A cached base the reader refuses (an older format version, a damaged
    file) is a cache miss, not an error: the benchmark writes it again."""
    from spaedge.pack.format import read_metadata

    stale = tmp_path / "base.safetensors"
    stale.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"__metadata__"}')
    t = make_synthetic_task(
        tmp_path,
        "t",
        base="tiny",
        density=0.5,
        classes=3,
        input_size=(1, 28, 28),
        base_file="base.safetensors",
    )
    assert Path(t.base_path) == stale
    assert read_metadata(stale)["model"] == "spaedge-tiny"
