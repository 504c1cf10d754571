"""Latency at batch 1, side by side: spaedge runtime (merged and fused low-rank
modes), onnxruntime, LiteRT (XNNPACK) and PyTorch eager, 1 and 2 threads; in
fp32 and, for the pruned cases, int8 (spaedge's int8 pair, onnxruntime static
QDQ, LiteRT full-integer)."""

import bench_cases
import pytest


@pytest.mark.parametrize(
    "case,threads,engine,precision",
    bench_cases.latency_params(),
    ids=[f"{c}-{t}t-{e}-{p}" for c, t, e, p in bench_cases.latency_params()],
)
def test_latency(benchmark, cases, case, threads, engine, precision):
    bench_cases.latency_body(benchmark, cases, case, threads, engine, precision)
