"""Fixtures of the benchmark suite and the summary it prints at the end.

    pytest benchmarks --benchmark-only

The summary groups the latency benchmarks by case and thread count and gives
each engine's median and p90 and its ratio to onnxruntime (ratios hold on a
shared, noisy machine better than times do), then the task-switch times and
the bundle sizes. SPAEDGE_BENCH_SUMMARY=FILE also writes it as JSON.
"""

from __future__ import annotations

import json
import os

import bench_cases
import numpy as np
import pytest

_LOAD_AT_START = os.getloadavg() if hasattr(os, "getloadavg") else None


@pytest.fixture(scope="session")
def cases(tmp_path_factory):
    return bench_cases.Cases(tmp_path_factory.mktemp("bench-cases"))


def _ms(meta) -> tuple[float, float]:
    data = np.asarray(meta.stats.data, dtype=np.float64) * 1e3
    return float(np.median(data)), float(np.percentile(data, 90))


def summary(benchmarks) -> dict:
    """Rows of the summary from pytest-benchmark's results."""
    lat, sw = [], []
    for b in benchmarks:
        info = b.extra_info
        if not b.stats or "kind" not in info:
            continue
        med, p90 = _ms(b)
        row = {**info, "median_ms": med, "p90_ms": p90, "rounds": len(b.stats.data)}
        (lat if info["kind"] == "latency" else sw).append(row)
    for r in lat:
        ref = next(
            (
                o
                for o in lat
                if o["case"] == r["case"]
                and o["threads"] == r["threads"]
                and o["engine"] == "onnxruntime"
            ),
            None,
        )
        r["ratio"] = r["median_ms"] / ref["median_ms"] if ref else None
        r["gflops"] = 2 * r["macs"] / (r["median_ms"] * 1e-3) / 1e9
    return {"latency": lat, "switch": sw}


def format_summary(s: dict) -> str:
    lines = []
    if s["latency"]:
        lines += [
            "latency, batch 1 (median and p90 of the timed calls; ratio = median / onnxruntime's median)",
            "",
        ]
        head = f"{'case':<14} {'thr':>3}  {'engine':<16} {'median ms':>10} {'p90 ms':>9} {'GFLOP/s':>8} {'vs ORT':>7}"
        lines += [head, "-" * len(head)]
        last = None
        for r in s["latency"]:
            key = (r["case"], r["threads"])
            if last is not None and key != last:
                lines.append("")
            last = key
            ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
            lines.append(
                f"{r['case']:<14} {r['threads']:>3}  {r['engine']:<16} {r['median_ms']:>10.3f} "
                f"{r['p90_ms']:>9.3f} {r['gflops']:>8.1f} {ratio:>7}"
            )
    if s["switch"]:
        lines += [
            "",
            "task switch: Runtime.switch between two loaded tasks vs creating an onnxruntime session",
            "",
        ]
        head = f"{'case':<14} {'thr':>3}  {'what':<24} {'median ms':>10} {'p90 ms':>9} {'ORT / this':>10}"
        lines += [head, "-" * len(head)]
        for r in s["switch"]:
            ses = next(
                (
                    o
                    for o in s["switch"]
                    if o["case"] == r["case"]
                    and o["threads"] == r["threads"]
                    and o["engine"] == "onnxruntime-session"
                ),
                None,
            )
            x = f"{ses['median_ms'] / r['median_ms']:.0f}x" if ses and ses is not r else "-"
            lines.append(
                f"{r['case']:<14} {r['threads']:>3}  {r['engine']:<24} {r['median_ms']:>10.3f} "
                f"{r['p90_ms']:>9.3f} {x:>10}"
            )
    sizes = {}
    for r in s["latency"]:
        sizes.setdefault(r["case"], r)
    if sizes:
        lines += [
            "",
            "what each case is: MACs and parameters of the pruned model, task bundle vs the same "
            "pruned model stored whole",
            "",
        ]
        head = (
            f"{'case':<14} {'input':>9} {'density':>7} {'MMACs':>8} {'params':>10} {'bundle B':>11} "
            f"{'whole B':>12} {'whole/bundle':>12}"
        )
        lines += [head, "-" * len(head)]
        for case, r in sizes.items():
            d = "-" if r.get("density") is None else f"{r['density']:.1%}"
            lines.append(
                f"{case:<14} {r['input_size']:>9} {d:>7} {r['macs'] / 1e6:>8.1f} {r['params']:>10,} "
                f"{r['bundle_bytes']:>11,} {r['whole_model_bytes']:>12,} "
                f"{r['whole_model_bytes'] / r['bundle_bytes']:>11.1f}x"
            )
    return "\n".join(lines)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or not bs.benchmarks:
        return
    s = summary(bs.benchmarks)
    if not s["latency"] and not s["switch"]:
        return
    from spaedge.bench import machine_info

    m = machine_info()
    terminalreporter.write_sep("=", "spaedge benchmark summary")
    terminalreporter.write_line(
        f"machine: {m['cpu']}, {m['cores']} cores; onnxruntime {m.get('onnxruntime', '-')}, "
        f"torch {m.get('torch', '-')}, ai-edge-litert {m.get('ai_edge_litert', '-')}"
    )
    if _LOAD_AT_START and m.get("loadavg"):
        # Other processes on the machine change every engine's times (and multi-thread ones most).
        terminalreporter.write_line(
            f"load average (1 min) at start {_LOAD_AT_START[0]:.1f}, at end "
            f"{m['loadavg'][0]:.1f} on {m['cores']} cores"
        )
    for line in format_summary(s).splitlines():
        terminalreporter.write_line(line)
    out = os.environ.get("SPAEDGE_BENCH_SUMMARY")
    if out:
        with open(out, "w") as f:
            json.dump({"machine": m, "loadavg_at_start": _LOAD_AT_START, **s}, f, indent=2)
        terminalreporter.write_line(f"wrote {out}")
