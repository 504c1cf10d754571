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
- ``resnet34-d30`` / ``-d10``, ``resnet50-d30`` / ``-d10``: the same recipe on
  ResNet-34 and ResNet-50 (issue 19's cases), timed in spaedge, onnxruntime
  and LiteRT only.

Precisions: every case is timed in fp32; the pruned ones (and digits) also
in int8 (``INT8_CASES``): spaedge's int8 pair (``make_int8_pair``: the base
quantized per output channel, the task calibrated on 32 seeded random
images), onnxruntime static QDQ int8 and LiteRT full-integer int8, both
calibrated on the same images. Set SPAEDGE_BENCH_INT8_BUNDLES=DIR8 (with
SPAEDGE_BENCH_BUNDLES) to time a really quantized pair for digits,
DIR8/digits.int8.safetensors on DIR8/base.int8.safetensors as
``spaedge quantize`` writes them (``spaedge.bench.engines.find_int8_pair``). An int8 row is not checked against PyTorch
to 1e-3 but within ``INT8_TOLERANCE`` of the largest |logit|, and records its
top-1 agreement with fp32 on ``CHECK_IMAGES`` seeded random inputs.

SPAEDGE_BENCH_QUICK=1 shrinks the ResNet cases to 64x64 (for smoke runs).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from spaedge.bench import (
    BenchTask,
    EngineUnavailable,
    bench_task_from_bundles,
    make_runner,
    top1_agreement,
)
from spaedge.bench.engines import find_int8_pair
from spaedge.bench.synthetic import make_int8_pair, make_synthetic_task

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
    "resnet34-d30": dict(base="resnet34", density=0.3, rank=8, classes=102, input_size=SIZE),
    "resnet34-d10": dict(base="resnet34", density=0.1, rank=8, classes=102, input_size=SIZE),
    "resnet50-d30": dict(base="resnet50", density=0.3, rank=8, classes=102, input_size=SIZE),
    "resnet50-d10": dict(base="resnet50", density=0.1, rank=8, classes=102, input_size=SIZE),
}
# Engines timed per case; "spaedge-lowrank" is the runtime in its fused low-rank mode.
ENGINES = ("spaedge", "spaedge-lowrank", "onnxruntime", "litert", "torch")
LOWRANK_CASES = ("resnet18-d30", "resnet18-d10")
# The deeper bases: only the engines a device would deploy (keeps the suite's time).
DEPLOY_ONLY_CASES = ("resnet34-d30", "resnet34-d10", "resnet50-d30", "resnet50-d10")
DEPLOY_ENGINES = ("spaedge", "onnxruntime", "litert")
# Cases timed in int8 too, and the engines that run int8.
INT8_CASES = ("digits", "resnet18-d30", "resnet18-d10", *DEPLOY_ONLY_CASES)
INT8_ENGINES = ("spaedge", "onnxruntime", "litert")
SWITCH_CASES = ("digits", "resnet18-d30", "resnet18-d10")
# An int8 engine's logits on the timed input within this share of the largest
# fp32 |logit| (seen during development: 1-8 %, the peers the higher); top-1
# agreement is recorded.
INT8_TOLERANCE = 0.1
CHECK_IMAGES = 16


def latency_params() -> list[tuple[str, int, str, str]]:
    """(case, threads, engine, precision), engines innermost (fp32, then int8)
    so one case's engines run back to back."""
    out = []
    for case in CASES:
        for t in THREADS:
            for e in ENGINES:
                if e == "spaedge-lowrank" and case not in LOWRANK_CASES:
                    continue
                if case in DEPLOY_ONLY_CASES and e not in DEPLOY_ENGINES:
                    continue
                out.append((case, t, e, "fp32"))
            if case in INT8_CASES:
                out += [(case, t, e, "int8") for e in INT8_ENGINES]
    return out


def switch_params() -> list[tuple[str, int, str, str]]:
    """(case, threads, what, precision): the runtime's switch (merged, and
    low-rank in fp32) and an onnxruntime session of the same model."""
    out = []
    for c in SWITCH_CASES:
        for t in THREADS:
            for e in ("spaedge-switch", "spaedge-lowrank-switch", "onnxruntime-session"):
                out.append((c, t, e, "fp32"))
            for e in ("spaedge-switch", "onnxruntime-session"):
                out.append((c, t, e, "int8"))
    return out


class Cases:
    """Builds each case's bundles (and a second task per case for switching) once."""

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = Path(workdir)
        self._tasks: dict[str, BenchTask] = {}
        self._refs: dict[str, np.ndarray] = {}

    def task(self, case: str, variant: int = 0, precision: str = "fp32") -> BenchTask:
        """The case's task (``variant`` 1: a second task on the same base, for
        switching); int8: its int8 pair, quantized on first use."""
        key = f"{case}#{variant}#{precision}"
        if key not in self._tasks:
            if precision == "int8":
                self._tasks[key] = self._build_int8(case, variant)
            else:
                self._tasks[key] = self._build(case, variant)
        return self._tasks[key]

    def _build_int8(self, case: str, variant: int) -> BenchTask:
        fp32 = self.task(case, variant)
        packed = os.environ.get("SPAEDGE_BENCH_INT8_BUNDLES")
        if case == "digits" and packed and variant == 0 and os.environ.get("SPAEDGE_BENCH_BUNDLES"):
            pair = find_int8_pair(packed, "digits")
            if pair is None:
                raise FileNotFoundError(
                    f"SPAEDGE_BENCH_INT8_BUNDLES={packed} holds no int8 pair of digits "
                    "(base.int8.safetensors and digits.int8.safetensors: spaedge quantize)"
                )
            return bench_task_from_bundles(*pair, fp32.workdir, fp32=fp32)
        return make_int8_pair(fp32)

    def check_images(self, case: str) -> np.ndarray:
        """Seeded random inputs on which an int8 engine's top-1 is compared with fp32."""
        size = self.task(case).input_size
        return np.random.default_rng(1).standard_normal((CHECK_IMAGES, *size)).astype(np.float32)

    def check_reference(self, case: str) -> np.ndarray:
        """PyTorch's fp32 logits for ``check_images``."""
        key = f"{case}#check"
        if key not in self._refs:
            import torch

            with torch.inference_mode():
                self._refs[key] = (
                    self.task(case)
                    .torch_model()(torch.from_numpy(self.check_images(case)))
                    .double()
                    .numpy()
                )
        return self._refs[key]

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


def latency_body(
    benchmark, cases: Cases, case: str, threads: int, engine: str, precision: str = "fp32"
) -> None:
    """One latency benchmark: check the engine's logits against PyTorch's fp32
    (int8: within INT8_TOLERANCE, and its top-1 agreement recorded), then time it."""
    import pytest

    task = cases.task(case, precision=precision)
    x = cases.input(case)
    kw = {"mode": "lowrank"} if engine == "spaedge-lowrank" else {}
    try:
        run = make_runner(
            engine.replace("-lowrank", ""), task, threads, x, precision=precision, **kw
        )
    except EngineUnavailable as e:
        pytest.skip(str(e))
    ref = cases.reference(case)
    got = np.asarray(run(), dtype=np.float64).reshape(ref.shape)
    scale = float(np.abs(ref).max())
    rel = float(np.abs(got - ref).max()) / scale
    agreement = None
    if precision == "int8":
        assert rel <= INT8_TOLERANCE, (
            f"{engine} int8 is not the fp32 model on {case}: max difference {rel:.1e} of the "
            "logits' scale"
        )
        agreement = top1_agreement(
            run.predict(cases.check_images(case)), cases.check_reference(case)
        )
    else:
        assert rel <= 1e-3, (
            f"{engine} disagrees with PyTorch on {case}: max difference {rel:.1e} of the logits' scale"
        )
        assert (got.argmax(-1) == ref.argmax(-1)).all()
    benchmark.group = f"{case} {threads}t"
    benchmark.extra_info.update(
        kind="latency",
        case=case,
        engine=engine,
        # What the engine computes in: the runner says.
        precision=getattr(run, "precision", "fp32"),
        threads=threads,
        input_size="x".join(map(str, task.input_size)),
        macs=task.macs,
        params=task.params,
        bundle_bytes=task.bundle_bytes,
        base_bytes=task.base_bytes,
        whole_model_bytes=task.whole_bytes,
        density=task.density,
        max_rel_diff=rel,
        top1_agreement=agreement,
        check_images=CHECK_IMAGES if agreement is not None else None,
        isa=getattr(run, "isa", None),
    )
    benchmark.pedantic(run, rounds=_rounds(run), warmup_rounds=3, iterations=1)


def switch_body(
    benchmark, cases: Cases, case: str, threads: int, engine: str, precision: str = "fp32"
) -> None:
    """Task switch in the runtime (two loaded tasks, alternating) or creating an
    onnxruntime session for the same task model, at ``precision`` (int8: the
    int8 pairs, and a session of onnxruntime's int8 model)."""
    import pytest

    a, b = cases.task(case, precision=precision), cases.task(case, 1, precision=precision)
    benchmark.group = f"switch {case} {threads}t"
    benchmark.extra_info.update(
        kind="switch",
        case=case,
        engine=engine,
        precision=precision,
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
        tol = INT8_TOLERANCE if precision == "int8" else 1e-3
        assert float(np.abs(got - ref).max()) <= tol * float(np.abs(ref).max())
    else:
        try:
            import onnxruntime as ort
        except ImportError as e:
            pytest.skip(f"onnxruntime not installed: {e}")
        from spaedge.bench import ort_session

        try:
            path = a.onnx_int8_path() if precision == "int8" else a.onnx_path()
        except EngineUnavailable as e:
            pytest.skip(str(e))
        benchmark.pedantic(
            lambda: ort_session(ort, path, threads), rounds=8, warmup_rounds=1, iterations=1
        )
