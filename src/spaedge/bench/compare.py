"""One task timed in every installed engine at batch 1 (what ``spaedge bench`` does),
and the ratios the benchmark suite reports for each of its rows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

import spaedge
from spaedge.bench.engines import (
    ENGINES,
    INT8_ENGINES,
    PRECISIONS,
    REFERENCE,
    BenchTask,
    EngineUnavailable,
    Runner,
    check_agreement,
    int8_statistic,
    make_runner,
    top1_agreement,
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
    int8: BenchTask | None = None,
    precisions: Sequence[str] = ("fp32",),
    check_images: int = 16,
    check: tuple[np.ndarray, np.ndarray | None] | None = None,
    check_name: str = "seeded random inputs",
) -> dict:
    """Everything ``spaedge bench`` reports, as a JSON-able dict.

    ``precisions``: ``fp32`` times the engines on ``task``; ``int8`` times
    those with an int8 runner on ``int8`` (its int8 pair, made by
    ``synthetic.make_int8_pair`` or read with ``bench_task_from_bundles``).
    Every row has its ``precision``; ``ratio`` is to onnxruntime at the same
    precision and threads. Before timing, each engine runs ``check_images``
    seeded random inputs and its top-1 class is compared with the fp32
    reference's (``top1_agreement``; ``max_rel_diff`` is the largest logit
    difference on the timed input, relative to the reference's largest).
    ``check`` = (images, labels or None) replaces those inputs (a trained
    task's test images: ``spaedge bench`` passes them when the task's data
    is here); with labels every row also gets its ``accuracy``."""
    for p in precisions:
        if p not in PRECISIONS:
            raise ValueError(f"unknown precision {p!r}; known: {', '.join(PRECISIONS)}")
    if "int8" in precisions and int8 is None:
        raise ValueError("precision int8 needs the int8 task (int8=...)")
    tasks = {"fp32": task, "int8": int8}
    x = np.random.default_rng(seed).standard_normal((1, *task.input_size)).astype(np.float32)
    labels = None
    if check is not None:
        check, labels = np.ascontiguousarray(check[0], dtype=np.float32), check[1]
        check_images = len(check)
    else:
        check = (
            np.random.default_rng(seed + 1)
            .standard_normal((check_images, *task.input_size))
            .astype(np.float32)
        )
    accuracy: dict[tuple[str, str], float] = {}
    reference = reference_engine = check_ref = None
    agreement: dict[tuple[str, str], float] = {}
    latency: list[dict] = []
    for n in threads:
        runners: dict[tuple[str, str], Runner] = {}
        errors: dict[tuple[str, str], str] = {}
        for p in precisions:
            for e in engines:
                if p == "int8" and e not in INT8_ENGINES:
                    continue
                try:
                    runners[e, p] = make_runner(
                        e, tasks[p], n, x, precision=p, **({"mode": mode} if e == "spaedge" else {})
                    )
                except EngineUnavailable as err:
                    errors[e, p] = str(err)
        if not runners:
            raise ValueError(
                "no engine can run here: "
                + "; ".join(f"{e} {p}: {m}" for (e, p), m in errors.items())
            )
        outputs = {k: r() for k, r in runners.items()}
        if reference is None:
            ref_runner = runners.get(("torch", "fp32"))
            if ref_runner is None:
                try:
                    ref_runner = make_runner("torch", task, n, x)
                except EngineUnavailable:  # a device without torch: the first fp32 engine
                    ref_runner = next((r for (e, p), r in runners.items() if p == "fp32"), None)
            if ref_runner is None:  # int8 only and no torch: spaedge's own fp32 run
                ref_runner = make_runner("spaedge", task, n, x, mode=mode)
            reference_engine = ref_runner.engine
            reference = np.asarray(ref_runner(), dtype=np.float64)
            check_ref = np.asarray(ref_runner.predict(check), dtype=np.float64)
        agree = check_agreement(outputs, reference)
        for k, r in runners.items():
            if k not in agreement:
                pred = np.asarray(r.predict(check))
                agreement[k] = top1_agreement(pred, check_ref)
                if labels is not None:
                    accuracy[k] = float((pred.argmax(1) == np.asarray(labels)).mean())
        times = measure({f"{e} {p}": r for (e, p), r in runners.items()}, runs)
        for p in precisions:
            for e in engines:
                if (e, p) in errors:
                    latency.append(
                        {"engine": e, "precision": p, "threads": n, "error": errors[e, p]}
                    )
                    continue
                if (e, p) not in runners:
                    continue
                s = summarise(times[f"{e} {p}"])
                s.update(
                    engine=e,
                    precision=p,
                    threads=n,
                    gflops=2 * task.macs / (s["median_ms"] * 1e-3) / 1e9,
                    max_rel_diff=agree[e, p],
                    top1_agreement=agreement[e, p],
                    check_images=int(check_images),
                )
                if p == "int8":  # the range statistic this engine's activations took
                    s["statistic"] = int8_statistic(e, tasks[p].statistic or "minmax")
                if (e, p) in accuracy:
                    s["accuracy"] = accuracy[e, p]
                latency.append(s)
        for p in precisions:
            ref = next(
                (
                    r
                    for r in latency
                    if r["engine"] == REFERENCE
                    and r["threads"] == n
                    and r["precision"] == p
                    and "error" not in r
                ),
                None,
            )
            for r in latency:
                if r["threads"] == n and r["precision"] == p and "error" not in r:
                    r["ratio"] = r["median_ms"] / ref["median_ms"] if ref else None
    switch = {}
    if "spaedge" in engines:
        for p in precisions:
            t = tasks[p]
            paths = [t.task_path, *(other_tasks if p == "fp32" else ())]
            st = summarise(
                np.asarray(switch_times(t.base_path, paths, threads[-1], switches, mode)) * 1e-3
            )
            sw = {
                "spaedge_switch": st,
                "threads": threads[-1],
                "between": [Path(q).stem for q in paths],
            }
            try:
                onnx = t.onnx_int8_path() if p == "int8" else t.onnx_path()
                ses = summarise(
                    np.asarray(session_times(onnx, threads[-1], max(3, switches // 4))) * 1e-3
                )
                sw["onnxruntime_session"] = ses
                sw["speedup"] = ses["median_ms"] / st["median_ms"]
            except (ImportError, EngineUnavailable):
                pass
            if p == "fp32":
                switch.update(sw)  # the fp32 switch at the top level, as before
            else:
                switch[p] = sw
    facts = task.facts()
    if int8 is not None and "int8" in precisions:
        facts["int8"] = int8.facts()
    return {
        "task": facts,
        "machine": machine_info(),
        "spaedge_version": spaedge.__version__,
        "mode": mode,
        "isa": _isa(task),
        "precisions": list(precisions),
        "latency": latency,
        "switch": switch,
        "runs": runs,
        "outputs_checked_against": reference_engine,
        "checked_on": check_name,
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


def add_peer_ratios(
    rows: list[dict], group: Sequence[str] = ("kind", "case", "threads", "precision")
) -> None:
    """Sets, on every row with a ``median_ms``, the ratios to the peers timed in
    the same run for the same ``group`` values (kind, case, thread count and
    precision: an int8 row is compared with the int8 peers):

    - ``fastest_peer`` / ``fastest_peer_ms``: the peer row with the lowest
      median in the group (the best a user could pick instead);
    - ``vs_fastest_peer``: this row's median / that median (below 1: faster);
    - ``vs_onnxruntime``: this row's median / the group's ``onnxruntime`` row's;
    - ``vs_fp32``: this row's median / the median of the same engine's fp32
      row of the same kind, case and threads (None for fp32 rows, or without one).

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
    fp32 = {
        (r.get("kind"), r.get("case"), r.get("threads"), r["engine"]): r
        for r in rows
        if r.get("median_ms") is not None and r.get("precision", "fp32") == "fp32"
    }
    for r in rows:
        if r.get("median_ms") is None:
            continue
        twin = fp32.get((r.get("kind"), r.get("case"), r.get("threads"), r["engine"]))
        r["vs_fp32"] = (
            r["median_ms"] / twin["median_ms"]
            if twin is not None and r.get("precision", "fp32") != "fp32"
            else None
        )
