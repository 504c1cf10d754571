"""Task switch: Runtime.switch between two loaded tasks of a case (merged and
low-rank modes) against creating an onnxruntime InferenceSession for the task's
model, which is what switching tasks costs with onnxruntime."""

import bench_cases
import pytest

PARAMS = [
    (c, t, e)
    for c in bench_cases.SWITCH_CASES
    for t in bench_cases.THREADS
    for e in ("spaedge-switch", "spaedge-lowrank-switch", "onnxruntime-session")
]


@pytest.mark.parametrize("case,threads,engine", PARAMS, ids=[f"{c}-{t}t-{e}" for c, t, e in PARAMS])
def test_switch(benchmark, cases, case, threads, engine):
    bench_cases.switch_body(benchmark, cases, case, threads, engine)
