"""`pytest --benchmark-only` typed at the repository root collects the benchmark
suite (conftest.py at the root), and plain `pytest` does not.

Collection only (a few seconds each), except the one run marked slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _pytest(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: float = 300):
    """pytest in a subprocess at the repository root, as a user types it: the
    checkout is not put on sys.path (-P), only the installed package is used."""
    pre = ["-P"] if sys.version_info >= (3, 11) else []
    cmd = [sys.executable, *pre, "-m", "pytest", "-p", "no:cacheprovider", *args]
    return subprocess.run(
        cmd,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _collected(p) -> list[str]:
    """Node ids printed by --collect-only -q."""
    return [line for line in p.stdout.splitlines() if "::" in line and " " not in line]


@pytest.fixture(scope="module")
def checkout():
    if not (ROOT / "benchmarks" / "bench_cases.py").exists():
        pytest.fail(f"the benchmark suite is not beside the tests ({ROOT / 'benchmarks'})")
    return ROOT


def test_benchmark_only_at_the_root_collects_the_benchmarks(checkout):
    p = _pytest("--benchmark-only", "--collect-only", "-q")
    ids = _collected(p)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    bench = [i for i in ids if i.startswith("benchmarks/")]
    assert bench, (
        "pytest --benchmark-only at the repository root collected no benchmark:\n"
        + p.stdout[-2000:]
    )
    # Only the benchmarks: the tests would all be skipped by --benchmark-only.
    assert bench == ids, [i for i in ids if not i.startswith("benchmarks/")][:5]
    assert any(i.startswith("benchmarks/test_latency.py::test_latency[") for i in ids)
    assert any(i.startswith("benchmarks/test_switch.py::test_switch[") for i in ids)
    # A named path is left as typed (docs/benchmarks.md's spelling for the
    # switch benchmarks alone; `pytest benchmarks --benchmark-only` likewise).
    named = _pytest("benchmarks/test_switch.py", "--benchmark-only", "--collect-only", "-q")
    assert named.returncode == 0, named.stdout[-2000:] + named.stderr[-2000:]
    assert _collected(named) == [i for i in ids if i.startswith("benchmarks/test_switch.py::")]


def test_plain_collection_leaves_the_benchmarks_out(checkout):
    """Plain `pytest` (testpaths = tests) never collects, so never times, a
    benchmark. What is under tests/ is left out (--ignore-glob) to keep this
    quick: whatever is collected can only come from elsewhere."""
    p = _pytest("--collect-only", "-q", f"--ignore-glob={ROOT / 'tests'}/*")
    assert not [i for i in _collected(p) if i.startswith("benchmarks/")], p.stdout[-2000:]
    assert p.returncode == 5 and "no tests collected" in p.stdout, (
        p.stdout[-2000:] + p.stderr[-2000:]
    )


@pytest.mark.slow
def test_benchmark_only_prints_the_tables_and_json(checkout, tmp_path):
    """A short real run (the digits case, 1 thread, small budget): the summary
    has a row per engine and precision (fp32 and int8) with the ratio to the
    fastest peer of its precision, and --benchmark-json carries the same
    fields and the machine."""
    out = tmp_path / "b.json"
    p = _pytest(
        "--benchmark-only",
        "-k",
        "test_latency and digits-1t",
        f"--benchmark-json={out}",
        f"--basetemp={tmp_path / 'bt'}",
        env={"SPAEDGE_BENCH_QUICK": "1", "SPAEDGE_BENCH_BUDGET": "0.02"},
        timeout=900,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    text = p.stdout[p.stdout.index("spaedge benchmark summary") :]
    assert "spaedge runtime ISA " in text and "vs fastest peer" in text
    rows = [line.split() for line in text.splitlines() if line.startswith("digits ")]
    engines = {(r[2], r[3]): r for r in rows if len(r) >= 9 and r[1] == "1"}
    assert {("spaedge", "fp32"), ("onnxruntime", "fp32"), ("torch", "fp32")} <= set(engines), text
    assert {("spaedge", "int8"), ("onnxruntime", "int8")} <= set(engines), text
    d = json.loads(out.read_text())
    assert d["machine_info"]["spaedge"]["isa"] and d["machine_info"]["spaedge"]["cpu"]
    info = {
        (b["extra_info"]["engine"], b["extra_info"]["precision"]): b["extra_info"]
        for b in d["benchmarks"]
    }
    for prec in ("fp32", "int8"):
        peer = info["spaedge", prec]["fastest_peer"]
        assert peer in ("onnxruntime", "litert", "torch")
        assert info[peer, prec]["vs_fastest_peer"] == 1.0
        for (_, p), e in info.items():
            assert e["case"] == "digits" and e["threads"] == 1
            if p == prec:
                assert e["fastest_peer"] == peer and e["vs_fastest_peer"] > 0
    assert info["spaedge", "int8"]["vs_fp32"] > 0 and info["spaedge", "fp32"]["vs_fp32"] is None
    assert 0 <= info["onnxruntime", "int8"]["top1_agreement"] <= 1
