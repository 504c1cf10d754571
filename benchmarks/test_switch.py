"""Task switch: Runtime.switch between two loaded tasks of a case (merged and
low-rank modes in fp32; int8 pairs) against creating an onnxruntime
InferenceSession for the task's model (fp32, and onnxruntime's int8 model),
which is what switching tasks costs with onnxruntime."""

import bench_cases
import pytest

PARAMS = bench_cases.switch_params()


@pytest.mark.parametrize(
    "case,threads,engine,precision", PARAMS, ids=[f"{c}-{t}t-{e}-{p}" for c, t, e, p in PARAMS]
)
def test_switch(benchmark, cases, case, threads, engine, precision):
    bench_cases.switch_body(benchmark, cases, case, threads, engine, precision)
