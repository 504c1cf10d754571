"""Timing: calls of several engines in turn, task switches, session creation, and
the machine a number was measured on.

Runs are interleaved in blocks (a few runs of each engine in turn, the first
of each block discarded) so that load changes on a shared machine hit every
engine alike; ratios between engines are what carry over between machines.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

import numpy as np

from spaedge.bench.engines import ort_session
from spaedge.runtime import Runtime

__all__ = ["measure", "summarise", "switch_times", "session_times", "machine_info"]


def measure(
    runners: dict[str, Callable[[], object]], runs: int, block: int = 5, warmup: int = 2
) -> dict[str, list[float]]:
    """Seconds per call of each runner, ``runs`` timed calls each.

    Runners take turns in blocks of ``block`` calls; each block starts with one
    untimed call (the previous engine's threads may still be spinning), and
    ``warmup`` untimed calls per runner come first."""
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in runners}
    clock = time.perf_counter
    while any(len(v) < runs for v in times.values()):
        for k, fn in runners.items():
            todo = min(block, runs - len(times[k]))
            if todo <= 0:
                continue
            fn()
            for _ in range(todo):
                t0 = clock()
                fn()
                times[k].append(clock() - t0)
    return times


def summarise(seconds: Sequence[float]) -> dict:
    """Median, p90, min and count of a list of durations, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "min_ms": float(ms.min()),
        "runs": int(ms.size),
    }


def switch_times(
    base_path: str, task_paths: Sequence[str], threads: int, n: int, mode: str = "merged"
) -> list[float]:
    """Milliseconds of ``Runtime.switch`` cycling through the loaded tasks (n switches).

    With one task, each switch re-applies it (a switch always rebuilds the
    weights, so the cost is the same as switching from another task)."""
    rt = Runtime(base_path, threads=threads, mode=mode)
    names = [rt.load_task(p) for p in task_paths]
    out = []
    for i in range(n + 1):
        ms = rt.switch(names[i % len(names)] if len(names) > 1 else names[0])
        if i:  # the first switch after loading warms the caches
            out.append(ms)
    return out


def session_times(onnx_path: str, threads: int, n: int) -> list[float]:
    """Milliseconds to create an onnxruntime InferenceSession for the model file."""
    import onnxruntime as ort

    ort_session(ort, onnx_path, threads)  # first one pays file-system and library warm-up
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        s = ort_session(ort, onnx_path, threads)
        out.append((time.perf_counter() - t0) * 1e3)
        del s
    return out


def machine_info() -> dict:
    """CPU model, core count, ISA of the runtime; for reports."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": platform.system(),
    }
    with contextlib.suppress(OSError):  # others' work skews a shared machine's times
        info["loadavg"] = [round(v, 2) for v in os.getloadavg()]
    for mod, key in (
        ("onnxruntime", "onnxruntime"),
        ("torch", "torch"),
        ("ai_edge_litert", "ai_edge_litert"),
    ):
        with contextlib.suppress(Exception):  # a version is nice to have only
            info[key] = __import__(mod).__version__
    return info
