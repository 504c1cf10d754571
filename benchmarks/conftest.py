"""Fixtures of the benchmark suite and the summary it prints at the end.

    pytest --benchmark-only              # at the repository root (conftest.py there)
    pytest benchmarks --benchmark-only   # the same

The summary has one row per case, thread count, engine and precision: median
and p90, the ratio to the fastest peer (onnxruntime, LiteRT or PyTorch) and to
onnxruntime at the same case, threads and precision (ratios hold on a shared,
noisy machine better than times do), an int8 row's ratio to the same engine's
fp32 row and its top-1 agreement with fp32, then the task-switch times and the
bundle sizes, under a line naming the machine (CPU model, the ISA the spaedge
runtime used, the peers' versions).

``--benchmark-json FILE`` carries the same: each benchmark's ``extra_info``
has kind, case, engine, precision, threads, isa, the ratios
(``fastest_peer``, ``vs_fastest_peer``, ``vs_onnxruntime``, ``vs_fp32``) and,
for int8, ``top1_agreement``, and
``machine_info["spaedge"]`` the machine line's facts. SPAEDGE_BENCH_SUMMARY=FILE
also writes the summary's rows as JSON.
"""

from __future__ import annotations

import json
import os

import bench_cases
import numpy as np
import pytest

from spaedge.bench.compare import add_peer_ratios
from spaedge.bench.report import format_suite_summary, machine_line

_LOAD_AT_START = os.getloadavg() if hasattr(os, "getloadavg") else None
# What add_peer_ratios sets on a row, copied into the benchmark's extra_info.
_RATIO_KEYS = ("fastest_peer", "fastest_peer_ms", "vs_fastest_peer", "vs_onnxruntime", "vs_fp32")


@pytest.fixture(scope="session")
def cases(tmp_path_factory):
    return bench_cases.Cases(tmp_path_factory.mktemp("bench-cases"))


def _ms(meta) -> tuple[float, float]:
    data = np.asarray(meta.stats.data, dtype=np.float64) * 1e3
    return float(np.median(data)), float(np.percentile(data, 90))


def _rows(benchmarks) -> list[tuple[object, dict]]:
    """(benchmark, row) for each benchmark of this suite that ran, ratios set."""
    out = []
    for b in benchmarks:
        info = b.extra_info
        if not b.stats or "kind" not in info:
            continue
        med, p90 = _ms(b)
        out.append((b, {**info, "median_ms": med, "p90_ms": p90, "rounds": len(b.stats.data)}))
    add_peer_ratios([r for _, r in out])
    for _, r in out:
        if r["kind"] == "latency":
            r["gflops"] = 2 * r["macs"] / (r["median_ms"] * 1e-3) / 1e9
    return out


def summary(benchmarks) -> dict:
    """Rows of the summary from pytest-benchmark's results."""
    rows = [r for _, r in _rows(benchmarks)]
    return {
        "latency": [r for r in rows if r["kind"] == "latency"],
        "switch": [r for r in rows if r["kind"] == "switch"],
    }


def _machine(benchmarks) -> dict:
    """The machine as the summary names it: machine_info() and the ISA(s) the
    spaedge runtime used in this run."""
    from spaedge.bench import machine_info

    m = machine_info()
    isas = sorted({str(b.extra_info["isa"]) for b in benchmarks if b.extra_info.get("isa")})
    m["isa"] = ", ".join(isas) or None
    return m


def _session(config):
    return getattr(config, "_benchmarksession", None)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session):
    """Ratios into each benchmark's extra_info before pytest-benchmark writes
    --benchmark-json / --benchmark-save (its own sessionfinish wrapper)."""
    bs = _session(session.config)
    if bs is not None and bs.benchmarks:
        for b, r in _rows(bs.benchmarks):
            b.extra_info.update({k: r[k] for k in _RATIO_KEYS})
    yield


def pytest_benchmark_update_machine_info(config, machine_info):
    bs = _session(config)
    m = _machine(bs.benchmarks if bs is not None else [])
    # The load is not the machine: --benchmark-compare warns when machine_info differs.
    m.pop("loadavg", None)
    machine_info["spaedge"] = m


def pytest_benchmark_update_json(config, benchmarks, output_json):
    if hasattr(os, "getloadavg"):
        output_json["spaedge_loadavg"] = {
            "at_start": [round(v, 2) for v in _LOAD_AT_START],
            "at_end": [round(v, 2) for v in os.getloadavg()],
        }


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    bs = _session(config)
    if bs is None or not bs.benchmarks:
        return
    s = summary(bs.benchmarks)
    if not s["latency"] and not s["switch"]:
        return
    m = _machine(bs.benchmarks)
    terminalreporter.write_sep("=", "spaedge benchmark summary")
    terminalreporter.write_line(machine_line(m))
    if _LOAD_AT_START and m.get("loadavg"):
        # Other processes on the machine change every engine's times (and multi-thread ones most).
        terminalreporter.write_line(
            f"load average (1 min) at start {_LOAD_AT_START[0]:.1f}, at end "
            f"{m['loadavg'][0]:.1f} on {m['cores']} cores"
        )
    for line in format_suite_summary(s).splitlines():
        terminalreporter.write_line(line)
    out = os.environ.get("SPAEDGE_BENCH_SUMMARY")
    if out:
        tmp = f"{out}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"machine": m, "loadavg_at_start": _LOAD_AT_START, **s}, f, indent=2)
        os.replace(tmp, out)
        terminalreporter.write_line(f"wrote {out}")
