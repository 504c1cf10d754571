"""Side-by-side latency of one task in spaedge and the engines users would pick instead.

    engines.py    the task (BenchTask) and one Runner per engine and precision: spaedge,
                  onnxruntime, LiteRT (fp32 and int8), PyTorch
    timing.py     engines timed in turn, task switches, session creation, the machine
    compare.py    run_bench: one task in every installed engine (``spaedge bench``)
    report.py     the table, the chart, the text report
    synthetic.py  tasks with random adapters for speed tests (the benchmark suite, tests),
                  their int8 pairs (make_int8_pair)

Each engine's output is checked against PyTorch before it is timed (an int8
engine's by its top-1 agreement with fp32); ratios to onnxruntime at the same
precision are what carry over between machines.
"""

from spaedge.bench.compare import run_bench
from spaedge.bench.engines import (
    ENGINES,
    INT8_ENGINES,
    PRECISIONS,
    REFERENCE,
    BenchTask,
    EngineUnavailable,
    bench_task_from_bundles,
    check_agreement,
    make_runner,
    ort_session,
    top1_agreement,
)
from spaedge.bench.report import format_table, report_text
from spaedge.bench.timing import machine_info, measure, session_times, summarise, switch_times

__all__ = [
    "ENGINES",
    "INT8_ENGINES",
    "PRECISIONS",
    "top1_agreement",
    "REFERENCE",
    "BenchTask",
    "EngineUnavailable",
    "bench_task_from_bundles",
    "check_agreement",
    "make_runner",
    "ort_session",
    "run_bench",
    "format_table",
    "report_text",
    "machine_info",
    "measure",
    "summarise",
    "switch_times",
    "session_times",
]
