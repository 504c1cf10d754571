"""The benchmark cases and the bodies of the benchmarks (shared by the pytest
files here and by the quick run in tests/test_bench.py).

Cases (batch 1, tasks with random SPLoRA adapters, BatchNorm and head, pruned
with the magnitude criterion; random weights are fine for speed):

- ``digits``: the built-in ``tiny`` base (its shipped weights) with the digits
  task's labels and normalisation, at the embedded default's density (30%) and
  rank (8): what `spaedge pack --task digits` ships, without the training.
  Set SPAEDGE_BENCH_BUNDLES=DIR to time a really packed DIR/digits.safetensors
  (with DIR/base.safetensors) instead.
- ``resnet18-d100`` / ``-d30`` / ``-d10``: ResNet-18 (random base weights,
  seed 0) at 224x224, 102 classes, kept at 100%, 30% and 10% of the base's
  weights.

SPAEDGE_BENCH_QUICK=1 shrinks the ResNet-18 cases to 64x64 (for smoke runs).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from spaedge.bench import BenchTask, EngineUnavailable, bench_task_from_bundles, make_runner
from spaedge.bench.synthetic import make_synthetic_task

QUICK = os.environ.get("SPAEDGE_BENCH_QUICK", "") not in ("", "0")
SIZE = (3, 64, 64) if QUICK else (3, 224, 224)
THREADS = (1, 2)
# Seconds of timed calls per latency benchmark (rounds = budget / one call, 15..300).
BUDGET = float(os.environ.get("SPAEDGE_BENCH_BUDGET", "0.3" if QUICK else "1.5"))

CASES = {
    "digits": dict(base="tiny", density=0.3, rank=8, classes=10, input_size=(1, 28, 28)),
    "resnet18-d100": dict(base="resnet18", density=1.0, rank=8, classes=102, input_size=SIZE),
    "resnet18-d30": dict(base="resnet18", density=0.3, rank=8, classes=102, input_size=SIZE),
    "resnet18-d10": dict(base="resnet18", density=0.1, rank=8, classes=102, input_size=SIZE),
}
# Engines timed per case; "spaedge-lowrank" is the runtime in its fused low-rank mode.
ENGINES = ("spaedge", "spaedge-lowrank", "onnxruntime", "litert", "torch")
LOWRANK_CASES = ("resnet18-d30", "resnet18-d10")
SWITCH_CASES = ("digits", "resnet18-d30", "resnet18-d10")


def latency_params() -> list[tuple[str, int, str]]:
    """(case, threads, engine), engines innermost so one case's engines run back to back."""
    out = []
    for case in CASES:
        for t in THREADS:
            for e in ENGINES:
                if e == "spaedge-lowrank" and case not in LOWRANK_CASES:
                    continue
                out.append((case, t, e))
    return out


class Cases:
    """Builds each case's bundles (and a second task per case for switching) once."""

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = Path(workdir)
        self._tasks: dict[str, BenchTask] = {}
        self._refs: dict[str, np.ndarray] = {}

    def task(self, case: str, variant: int = 0) -> BenchTask:
        key = f"{case}#{variant}"
        if key not in self._tasks:
            self._tasks[key] = self._build(case, variant)
        return self._tasks[key]

    def _build(self, case: str, variant: int) -> BenchTask:
        spec = dict(CASES[case])
        d = self.workdir / case
        packed = os.environ.get("SPAEDGE_BENCH_BUNDLES")
        if case == "digits" and packed and variant == 0:
            return bench_task_from_bundles(
                Path(packed) / "base.safetensors", Path(packed) / "digits.safetensors", d
            )
        name = case if variant == 0 else f"{case}-task{variant + 1}"
        extra = {}
        if case == "digits":
            from spaedge.tasks import get_task

            t = get_task("digits", input_size=spec["input_size"])
            extra = dict(labels=t.labels, mean=t.mean, std=t.std)
        return make_synthetic_task(d, name, seed=variant, **spec, **extra)

    def input(self, case: str) -> np.ndarray:
        size = self.task(case).input_size
        return np.random.default_rng(0).standard_normal((1, *size)).astype(np.float32)

    def reference(self, case: str) -> np.ndarray:
        """PyTorch's logits for the case's input (what every engine must reproduce)."""
        if case not in self._refs:
            import torch

            with torch.inference_mode():
                self._refs[case] = (
                    self.task(case)
                    .torch_model()(torch.from_numpy(self.input(case)))
                    .double()
                    .numpy()
                )
        return self._refs[case]


def _rounds(fn) -> int:
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-6)
    return int(min(max(BUDGET / one, 15), 300))


def latency_body(benchmark, cases: Cases, case: str, threads: int, engine: str) -> None:
    """One latency benchmark: check the engine's logits against PyTorch, then time it."""
    import pytest

    task = cases.task(case)
    x = cases.input(case)
    kw = {"mode": "lowrank"} if engine == "spaedge-lowrank" else {}
    try:
        run = make_runner(engine.replace("-lowrank", ""), task, threads, x, **kw)
    except EngineUnavailable as e:
        pytest.skip(str(e))
    ref = cases.reference(case)
    got = np.asarray(run(), dtype=np.float64).reshape(ref.shape)
    scale = float(np.abs(ref).max())
    rel = float(np.abs(got - ref).max()) / scale
    assert rel <= 1e-3, (
        f"{engine} disagrees with PyTorch on {case}: max difference {rel:.1e} of the logits' scale"
    )
    assert (got.argmax(-1) == ref.argmax(-1)).all()
    benchmark.group = f"{case} {threads}t"
    benchmark.extra_info.update(
        kind="latency",
        case=case,
        engine=engine,
        # What the engine computes in: the runner says (an int8 runner sets
        # .precision); every engine here runs the float32 model.
        precision=getattr(run, "precision", "fp32"),
        threads=threads,
        input_size="x".join(map(str, task.input_size)),
        macs=task.macs,
        params=task.params,
        bundle_bytes=task.bundle_bytes,
        whole_model_bytes=task.whole_bytes,
        density=task.density,
        max_rel_diff=rel,
        isa=getattr(run, "isa", None),
    )
    benchmark.pedantic(run, rounds=_rounds(run), warmup_rounds=3, iterations=1)


def switch_body(benchmark, cases: Cases, case: str, threads: int, engine: str) -> None:
    """Task switch in the runtime (two loaded tasks, alternating) or creating an
    onnxruntime session for the same task model."""
    import pytest

    a, b = cases.task(case), cases.task(case, 1)
    benchmark.group = f"switch {case} {threads}t"
    benchmark.extra_info.update(
        kind="switch",
        case=case,
        engine=engine,
        precision="fp32",
        threads=threads,
        input_size="x".join(map(str, a.input_size)),
        macs=a.macs,
        density=a.density,
        bundle_bytes=a.bundle_bytes,
    )
    if engine.startswith("spaedge"):
        from spaedge.runtime import Runtime

        rt = Runtime(
            a.base_path, threads=threads, mode="lowrank" if "lowrank" in engine else "merged"
        )
        benchmark.extra_info["isa"] = rt.isa
        names = [rt.load_task(a.task_path), rt.load_task(b.task_path)]
        assert names[0] != names[1]
        state = {"i": 0}

        def switch():
            state["i"] ^= 1
            rt.switch(names[state["i"]])

        benchmark.pedantic(switch, rounds=40, warmup_rounds=4, iterations=1)
        # The switched-to task really is the one that runs.
        rt.switch(names[0])
        got = rt.run(cases.input(case), check_finite=False).astype(np.float64)
        ref = cases.reference(case)
        assert float(np.abs(got - ref).max()) <= 1e-3 * float(np.abs(ref).max())
    else:
        try:
            import onnxruntime as ort
        except ImportError as e:
            pytest.skip(f"onnxruntime not installed: {e}")
        from spaedge.bench import ort_session

        path = a.onnx_path()
        benchmark.pedantic(
            lambda: ort_session(ort, path, threads), rounds=8, warmup_rounds=1, iterations=1
        )
