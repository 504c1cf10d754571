"""One task timed in every installed engine at batch 1 (what ``spaedge bench`` does),
and the ratios the benchmark suite reports for each of its rows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

import spaedge
from spaedge.bench.engines import (
    ENGINES,
    REFERENCE,
    BenchTask,
    EngineUnavailable,
    Runner,
    check_agreement,
    make_runner,
)
from spaedge.bench.timing import machine_info, measure, session_times, summarise, switch_times
from spaedge.runtime import Runtime

__all__ = ["run_bench", "is_peer", "add_peer_ratios"]


def run_bench(
    task: BenchTask,
    *,
    threads: Sequence[int] = (1,),
    runs: int = 50,
    engines: Sequence[str] = ENGINES,
    mode: str = "merged",
    switches: int = 20,
    other_tasks: Sequence[str] = (),
    seed: int = 0,
) -> dict:
    """Everything ``spaedge bench`` reports, as a JSON-able dict."""
    x = np.random.default_rng(seed).standard_normal((1, *task.input_size)).astype(np.float32)
    reference = None
    latency: list[dict] = []
    for n in threads:
        runners: dict[str, Runner] = {}
        errors: dict[str, str] = {}
        for e in engines:
            try:
                runners[e] = make_runner(
                    e, task, n, x, **({"mode": mode} if e == "spaedge" else {})
                )
            except EngineUnavailable as err:
                errors[e] = str(err)
        if not runners:
            raise ValueError(
                "no engine can run here: " + "; ".join(f"{e}: {m}" for e, m in errors.items())
            )
        outputs = {e: r() for e, r in runners.items()}
        if reference is None:
            if "torch" in outputs:
                reference, reference_engine = (
                    np.asarray(outputs["torch"], dtype=np.float64),
                    "torch",
                )
            else:
                try:
                    reference = np.asarray(make_runner("torch", task, n, x)(), dtype=np.float64)
                    reference_engine = "torch"
                except EngineUnavailable:  # a device without torch: compare with the first engine
                    reference_engine = next(iter(outputs))
                    reference = np.asarray(outputs[reference_engine], dtype=np.float64)
        agree = check_agreement(outputs, reference)
        times = measure(runners, runs)
        for e in engines:
            if e in errors:
                latency.append({"engine": e, "threads": n, "error": errors[e]})
                continue
            s = summarise(times[e])
            s.update(
                engine=e,
                threads=n,
                gflops=2 * task.macs / (s["median_ms"] * 1e-3) / 1e9,
                max_rel_diff=agree[e],
            )
            latency.append(s)
        ref = next(
            (
                r
                for r in latency
                if r["engine"] == REFERENCE and r["threads"] == n and "error" not in r
            ),
            None,
        )
        for r in latency:
            if r["threads"] == n and "error" not in r:
                r["ratio"] = r["median_ms"] / ref["median_ms"] if ref else None
    switch = {}
    if "spaedge" in engines:
        paths = [task.task_path, *other_tasks]
        st = summarise(
            np.asarray(switch_times(task.base_path, paths, threads[-1], switches, mode)) * 1e-3
        )
        switch = {
            "spaedge_switch": st,
            "threads": threads[-1],
            "between": [Path(p).stem for p in paths]
            if len(paths) > 1
            else [Path(task.task_path).stem],
        }
        try:
            ses = summarise(
                np.asarray(session_times(task.onnx_path(), threads[-1], max(3, switches // 4)))
                * 1e-3
            )
            switch["onnxruntime_session"] = ses
            switch["speedup"] = ses["median_ms"] / st["median_ms"]
        except (ImportError, EngineUnavailable):
            pass
    return {
        "task": task.facts(),
        "machine": machine_info(),
        "spaedge_version": spaedge.__version__,
        "mode": mode,
        "isa": _isa(task),
        "latency": latency,
        "switch": switch,
        "runs": runs,
        "outputs_checked_against": reference_engine,
    }


def _isa(task: BenchTask) -> str:
    try:
        return Runtime(task.base_path, threads=1).isa
    except Exception:  # noqa: BLE001
        return "?"


def is_peer(engine: str) -> bool:
    """A peer is an engine a user would pick instead of spaedge's runtime
    (onnxruntime, LiteRT, PyTorch and their variants): any engine whose name does
    not start with "spaedge"."""
    return not engine.startswith("spaedge")


def add_peer_ratios(rows: list[dict], group: Sequence[str] = ("kind", "case", "threads")) -> None:
    """Sets, on every row with a ``median_ms``, the ratios to the peers timed in
    the same run for the same ``group`` values (kind, case and thread count):

    - ``fastest_peer`` / ``fastest_peer_ms``: the peer row with the lowest
      median (of any precision: the best a user could pick instead);
    - ``vs_fastest_peer``: this row's median / that median (below 1: faster);
    - ``vs_onnxruntime``: this row's median / the ``onnxruntime`` row's median.

    A group without a peer (or without onnxruntime) gets None for those keys."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("median_ms") is not None:
            groups.setdefault(tuple(r.get(k) for k in group), []).append(r)
    for members in groups.values():
        peers = [r for r in members if is_peer(r["engine"])]
        best = min(peers, key=lambda r: r["median_ms"], default=None)
        ort = next((r for r in members if r["engine"] == REFERENCE), None)
        for r in members:
            r["fastest_peer"] = best["engine"] if best else None
            r["fastest_peer_ms"] = best["median_ms"] if best else None
            r["vs_fastest_peer"] = r["median_ms"] / best["median_ms"] if best else None
            r["vs_onnxruntime"] = r["median_ms"] / ort["median_ms"] if ort else None
