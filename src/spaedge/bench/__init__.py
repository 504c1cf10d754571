"""Side-by-side latency of one task in spaedge and the engines users would pick instead.

    engines.py    the task (BenchTask) and one Runner per engine: spaedge, onnxruntime, LiteRT, PyTorch
    timing.py     engines timed in turn, task switches, session creation, the machine
    compare.py    run_bench: one task in every installed engine (``spaedge bench``)
    report.py     the table, the chart, the text report
    synthetic.py  tasks with random adapters for speed tests (the benchmark suite, tests)

Each engine's output is checked against PyTorch before it is timed; ratios
to onnxruntime are what carry over between machines.
"""

from spaedge.bench.compare import run_bench
from spaedge.bench.engines import (
    ENGINES,
    REFERENCE,
    BenchTask,
    EngineUnavailable,
    bench_task_from_bundles,
    check_agreement,
    make_runner,
    ort_session,
)
from spaedge.bench.report import format_table, report_text
from spaedge.bench.timing import machine_info, measure, session_times, summarise, switch_times

__all__ = [
    "ENGINES",
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
