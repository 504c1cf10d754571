"""Latency at batch 1, side by side: spaedge runtime (merged and fused low-rank
modes), onnxruntime, LiteRT (XNNPACK) and PyTorch eager, 1 and 2 threads."""

import bench_cases
import pytest


@pytest.mark.parametrize(
    "case,threads,engine",
    bench_cases.latency_params(),
    ids=[f"{c}-{t}t-{e}" for c, t, e in bench_cases.latency_params()],
)
def test_latency(benchmark, cases, case, threads, engine):
    bench_cases.latency_body(benchmark, cases, case, threads, engine)
