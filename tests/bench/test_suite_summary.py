"""The benchmark suite's ratios and tables, from made-up rows (no timing)."""

from __future__ import annotations

import pytest

from spaedge.bench.compare import add_peer_ratios, is_peer
from spaedge.bench.report import format_suite_summary, machine_line


def _row(engine, ms, case="c", threads=1, precision="fp32", kind="latency"):
    return dict(
        kind=kind,
        case=case,
        engine=engine,
        precision=precision,
        threads=threads,
        median_ms=ms,
        p90_ms=ms * 1.1,
        gflops=1.0,
        input_size="3x8x8",
        macs=1_000_000,
        params=10,
        bundle_bytes=100,
        whole_model_bytes=400,
        density=0.3,
    )


def test_peers_are_the_engines_that_are_not_spaedge():
    assert [e for e in ("spaedge", "spaedge-lowrank", "spaedge-int8") if is_peer(e)] == []
    assert all(is_peer(e) for e in ("onnxruntime", "litert", "torch", "onnxruntime-session"))


def test_ratio_to_the_fastest_peer_of_the_same_case_threads_and_precision():
    rows = [
        _row("spaedge", 2.0),
        _row("onnxruntime", 5.0),
        _row("litert", 4.0),
        _row("torch", 8.0),
        # int8: compared with the int8 peers only, though fp32 LiteRT is faster
        _row("spaedge", 1.0, precision="int8"),
        _row("onnxruntime", 5.0, precision="int8"),
        _row("litert", 2.5, precision="int8"),
        # another thread count: its own fastest peer
        _row("spaedge", 3.0, threads=2),
        _row("onnxruntime", 2.0, threads=2),
        # a group without any peer
        _row("spaedge", 1.0, case="alone"),
        _row("spaedge", 0.5, case="alone", precision="int8"),
    ]
    add_peer_ratios(rows)
    one = {r["engine"]: r for r in rows[:4]}
    assert {r["fastest_peer"] for r in one.values()} == {"litert"}
    assert one["spaedge"]["vs_fastest_peer"] == pytest.approx(0.5)
    assert one["litert"]["vs_fastest_peer"] == pytest.approx(1.0)
    assert one["torch"]["vs_fastest_peer"] == pytest.approx(2.0)
    assert one["spaedge"]["vs_onnxruntime"] == pytest.approx(0.4)
    assert one["spaedge"]["vs_fp32"] is None  # an fp32 row has no fp32 ratio
    i8 = {r["engine"]: r for r in rows[4:7]}
    assert {r["fastest_peer"] for r in i8.values()} == {"litert"}
    assert i8["spaedge"]["fastest_peer_ms"] == 2.5
    assert i8["spaedge"]["vs_fastest_peer"] == pytest.approx(0.4)
    assert i8["spaedge"]["vs_onnxruntime"] == pytest.approx(0.2)
    # int8 against the same engine's fp32 row
    assert i8["spaedge"]["vs_fp32"] == pytest.approx(0.5)
    assert i8["onnxruntime"]["vs_fp32"] == pytest.approx(1.0)
    assert i8["litert"]["vs_fp32"] == pytest.approx(2.5 / 4.0)
    assert rows[7]["fastest_peer"] == "onnxruntime" and rows[7]["vs_fastest_peer"] == 1.5
    assert rows[9]["fastest_peer"] is None and rows[9]["vs_fastest_peer"] is None
    assert rows[9]["vs_onnxruntime"] is None
    assert rows[10]["vs_fastest_peer"] is None and rows[10]["vs_fp32"] == pytest.approx(0.5)


def test_summary_rows_name_case_threads_engine_precision_and_peer():
    lat = [
        _row("spaedge", 2.0),
        _row("onnxruntime", 4.0),
        _row("spaedge", 1.0, precision="int8"),
        _row("onnxruntime", 4.0, precision="int8"),
        _row("spaedge", 1.0, case="alone"),
    ]
    lat[2]["top1_agreement"] = 0.9375
    sw = [
        _row("spaedge-switch", 0.5, kind="switch"),
        _row("onnxruntime-session", 10.0, kind="switch"),
    ]
    add_peer_ratios(lat + sw)
    text = format_suite_summary({"latency": lat, "switch": sw})
    lines = text.splitlines()
    head = next(line for line in lines if line.startswith("case ") and "engine" in line)
    assert head.split()[:4] == ["case", "threads", "engine", "precision"]
    assert "vs fastest peer" in head
    rows = {
        tuple(line.split()[:4]): line.split() for line in lines if line.startswith(("c ", "alone "))
    }
    assert head.split()[-3:] == ["vs", "fp32", "top-1"]
    # ..., vs fastest peer (ratio, peer), vs fp32, top-1
    assert rows[("c", "1", "spaedge", "fp32")][-4:] == ["0.50x", "onnxruntime", "-", "-"]
    assert rows[("c", "1", "spaedge", "int8")][-4:] == ["0.25x", "onnxruntime", "0.50x", "94%"]
    assert rows[("alone", "1", "spaedge", "fp32")][-4:] == ["-", "-", "-", "-"]
    sizes = [line.split() for line in lines if line.startswith("c ") and "3x8x8" in line]
    assert [r[1] for r in sizes] == ["fp32", "int8"]
    assert rows[("c", "1", "spaedge-switch", "fp32")][-1] == "20x"


def test_machine_line_names_cpu_and_the_runtimes_isa():
    line = machine_line({"cpu": "Cortex-A76", "machine": "aarch64", "cores": 4, "isa": "neon"})
    assert "Cortex-A76" in line and "aarch64" in line and "4 cores" in line
    assert "spaedge runtime ISA neon" in line and "onnxruntime -" in line
