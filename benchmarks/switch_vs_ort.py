"""Task switch vs creating an onnxruntime session, interleaved in one run.

    python benchmarks/switch_vs_ort.py [--case resnet18-d30] [--rounds 30] [--dir DIR]

Builds (or reuses, in --dir) two tasks of a benchmark case, then takes turns in
blocks: spaedge switch at 1 thread, at 2 threads, and an onnxruntime
InferenceSession for the same task model, so load changes on a shared machine
hit all three alike. Prints medians, p90s and the ratio ORT / switch, in
wall time and, for one thread, in the calling thread's CPU time (which a busy
machine inflates far less than wall time: time spent descheduled is not
counted).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cases  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", default="resnet18-d30")
    ap.add_argument(
        "--rounds",
        type=int,
        default=30,
        help="blocks; each block times 5 switches per thread count and 1 session",
    )
    ap.add_argument(
        "--dir", default=None, help="where the case's bundles are built (reused when present)"
    )
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--mode", default="merged")
    ap.add_argument("--no-ort", action="store_true")
    args = ap.parse_args()

    import tempfile

    workdir = Path(args.dir or tempfile.mkdtemp(prefix="spaedge-switch-"))
    cases = bench_cases.Cases(workdir)
    a, b = cases.task(args.case), cases.task(args.case, 1)
    from spaedge.runtime import Runtime

    rts = {}
    for t in args.threads:
        rt = Runtime(a.base_path, threads=t, mode=args.mode)
        names = [rt.load_task(a.task_path), rt.load_task(b.task_path)]
        rts[t] = (rt, names)
    ort = None
    if not args.no_ort:
        import onnxruntime as ort

        from spaedge.bench import ort_session

        onnx = a.onnx_path()
        ort_session(ort, onnx, 1)
    times = {f"switch {t}t": [] for t in args.threads}
    if ort:
        times.update({f"ort session {t}t": [] for t in args.threads})
    cpu = {k: [] for k in times}
    for _ in range(args.rounds):
        for t in args.threads:
            rt, names = rts[t]
            for i in range(6):
                c0, t0 = time.thread_time(), time.perf_counter()
                rt.switch(names[i & 1])
                dt, dc = (time.perf_counter() - t0) * 1e3, (time.thread_time() - c0) * 1e3
                if i:
                    times[f"switch {t}t"].append(dt)
                    cpu[f"switch {t}t"].append(dc)
            if ort:
                c0, t0 = time.thread_time(), time.perf_counter()
                ort_session(ort, onnx, t)
                times[f"ort session {t}t"].append((time.perf_counter() - t0) * 1e3)
                cpu[f"ort session {t}t"].append((time.thread_time() - c0) * 1e3)
    load = os.getloadavg()[0]
    print(
        f"case {args.case}, mode {args.mode}, isa {rts[args.threads[0]][0].isa}, load average {load:.1f}"
    )
    for k, v in times.items():
        v = np.asarray(v)
        c = f"  caller CPU median {np.median(cpu[k]):7.3f} ms" if k.endswith(" 1t") else ""
        print(
            f"{k:<16} median {np.median(v):7.3f} ms  p90 {np.percentile(v, 90):7.3f} ms{c}  (n={len(v)})"
        )
    if ort:
        for t in args.threads:
            r = np.median(times[f"ort session {t}t"]) / np.median(times[f"switch {t}t"])
            line = f"ORT session / switch at {t} thread(s): {r:.1f}x"
            if t == 1:
                rc = np.median(cpu["ort session 1t"]) / np.median(cpu["switch 1t"])
                line += f" (CPU time: {rc:.1f}x)"
            print(line)


if __name__ == "__main__":
    main()
