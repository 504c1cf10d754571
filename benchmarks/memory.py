"""Resident memory of the runtime: after loading a base, and after loading and
switching to each task (docs/benchmarks.md, "Memory on the device").

    python benchmarks/memory.py [--bases resnet18 resnet50] [--densities 0.3 0.1]
                                [--precision fp32|int8]

Packs synthetic bundles (random adapters; memory does not depend on the
weights' values; int8: their int8 pairs, calibrated on seeded random
images) into a cache directory, then measures in a fresh Python
process that imports only numpy and the runtime, as a device would. RSS is
read from /proc/self/status (Linux): VmRSS after each step, and the growth
over the process before the base was loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MEASURE = r"""
import json, sys
import numpy as np
from spaedge.runtime import Runtime

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")

base, tasks = sys.argv[1], sys.argv[2:]
out = {"before": rss()}
rt = Runtime(base, threads=1)
out["base"] = rss()
out["tasks"] = []
for path in tasks:
    name = rt.load_task(path)
    loaded = rss()
    rt.switch(name)
    c, h, w = rt.task_info(name)["input_shape"]
    rt.run(np.zeros((1, c, h, w), np.float32))
    out["tasks"].append({"path": path, "loaded": loaded, "active": rss()})
print(json.dumps(out))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bases", nargs="+", default=["resnet18", "resnet50"])
    ap.add_argument("--densities", nargs="+", type=float, default=[0.3, 0.1])
    ap.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "spaedge-memory"))
    args = ap.parse_args(argv)
    from spaedge.bench.synthetic import make_int8_pair, make_synthetic_task

    mib = 1 << 20
    for base in args.bases:
        tasks = [
            make_synthetic_task(args.workdir, f"{base}-d{int(d * 100)}", base=base, density=d)
            for d in args.densities
        ]
        if args.precision == "int8":
            tasks = [make_int8_pair(t) for t in tasks]
        base_path = tasks[0].base_path
        r = subprocess.run(
            [sys.executable, "-c", MEASURE, base_path, *[t.task_path for t in tasks]],
            capture_output=True,
            text=True,
            check=True,
        )
        m = json.loads(r.stdout)
        file_bytes = Path(base_path).stat().st_size
        grown = m["base"] - m["before"]
        print(
            f"{base} ({args.precision}): base file {file_bytes / mib:.1f} MiB, RSS after loading it "
            f"+{grown / mib:.1f} MiB ({grown / file_bytes:.2f}x the file)"
        )
        prev = m["base"]
        for t, tm in zip(tasks, m["tasks"]):
            print(
                f"  {Path(t.task_path).name}: density {t.density:.2f}, "
                f"load +{(tm['loaded'] - prev) / mib:.1f} MiB, "
                f"switch and run +{(tm['active'] - tm['loaded']) / mib:.1f} MiB "
                f"(whole pruned model in fp32 {(t.fp32 or t).whole_bytes / mib:.1f} MiB)"
            )
            prev = tm["active"]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
