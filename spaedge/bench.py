"""Side-by-side latency of one task in spaedge and the engines users would pick instead.

    spaedge bench --bundles DIR --task T [--threads N ...] [--runs N] [--json F] [--png F]

Engines, all on the same pruned model at batch 1:

- ``spaedge``: the C++ runtime (``spaedge.runtime.Runtime``) on the bundles;
- ``onnxruntime``: its CPU provider on :func:`spaedge.pack.export.export_onnx`;
- ``litert``: the LiteRT interpreter (XNNPACK) on
  :func:`spaedge.pack.export.export_tflite` (NHWC input);
- ``torch``: PyTorch eager on the materialised model.

Each engine's output is checked against PyTorch before it is timed. Runs are
interleaved in blocks (a few runs of each engine in turn, the first of each
block discarded) so that load changes on a shared machine hit every engine
alike; ratios to onnxruntime are what carry over between machines.

This module also builds synthetic tasks (random adapters on a base, pruned to
a density) for the benchmark suite in ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

__all__ = ["ENGINES", "BenchTask", "EngineUnavailable", "make_runner", "measure", "summarise",
           "switch_times", "session_times", "ort_session", "make_synthetic_task", "bench_task_from_bundles",
           "bench_main", "add_bench_parser", "machine_info", "format_table"]

ENGINES = ("spaedge", "onnxruntime", "litert", "torch")
REFERENCE = "onnxruntime"


class EngineUnavailable(RuntimeError):
    """An engine cannot run here (package missing); the message says why."""


@dataclass
class BenchTask:
    """One task's bundles and the facts every report needs."""

    name: str
    base_path: str
    task_path: str
    input_size: tuple  # (C, H, W)
    macs: int
    params: int  # parameters of the pruned model as it runs
    bundle_bytes: int
    whole_bytes: int  # the same pruned model stored whole (safetensors)
    workdir: str  # where exports are written
    base_model: str = ""
    density: Optional[float] = None
    _exports: dict = field(default_factory=dict, repr=False)

    def torch_model(self):
        """The materialised pruned model (plain torch), built once."""
        if "torch" not in self._exports:
            from spaedge.pack.bundle import load_task_model
            from spaedge.pack.materialize import materialize

            model, _, _ = load_task_model(self.base_path, self.task_path)
            self._exports["torch"] = materialize(model).eval()
        return self._exports["torch"]

    def onnx_path(self) -> str:
        return self._export("onnx")

    def tflite_path(self) -> str:
        return self._export("tflite")

    def _export(self, kind: str) -> str:
        """WORKDIR/NAME.onnx or .tflite: exported here, or reused when it is
        newer than the task bundle (so a device without torch can time the
        peers on exports made by the toolchain elsewhere)."""
        if kind not in self._exports:
            p = Path(self.workdir) / f"{self.name}.{kind}"
            if not (p.exists() and p.stat().st_mtime >= Path(self.task_path).stat().st_mtime):
                try:
                    from spaedge.pack.export import export_onnx, export_tflite
                except ImportError as e:
                    raise EngineUnavailable(
                        f"no {p.name} to reuse and exporting it needs the toolchain (torch): run "
                        f"`spaedge bench --exports DIR` where spaedge[train,export] is installed and copy DIR "
                        f"here ({e})") from None
                export = export_onnx if kind == "onnx" else export_tflite
                try:
                    export(self.torch_model(), p, self.input_size)
                except ImportError as e:  # e.g. the LiteRT schema for the TFLite writer
                    raise EngineUnavailable(str(e)) from None
            self._exports[kind] = str(p)
        return self._exports[kind]

    def facts(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        d["input_size"] = "x".join(str(v) for v in self.input_size)
        return d


# ------------------------------------------------------------------- engines
class Runner:
    """Runs one engine on one prepared input; ``__call__`` returns NCHW-order logits."""

    engine = ""

    def __call__(self) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError


class SpaedgeRunner(Runner):
    engine = "spaedge"

    def __init__(self, task: BenchTask, threads: int, x: np.ndarray, mode: str = "merged"):
        from spaedge.runtime import Runtime

        self.rt = Runtime(task.base_path, threads=threads, mode=mode)
        self.name = self.rt.load_task(task.task_path)
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.isa = self.rt.isa

    def __call__(self) -> np.ndarray:
        return self.rt.run(self.x, check_finite=False)


class OrtRunner(Runner):
    engine = "onnxruntime"

    def __init__(self, task: BenchTask, threads: int, x: np.ndarray):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise EngineUnavailable(f"onnxruntime is not installed (pip install 'spaedge[export]'): {e}") from None
        self.session = ort_session(ort, task.onnx_path(), threads)
        self.feed = {"input": np.ascontiguousarray(x, dtype=np.float32)}

    def __call__(self) -> np.ndarray:
        return self.session.run(["logits"], self.feed)[0]


def ort_session(ort, path: str, threads: int):
    """An onnxruntime CPU session as the benchmarks use it (intra-op threads, sequential, all graph optimisations)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


class LiteRTRunner(Runner):
    engine = "litert"

    def __init__(self, task: BenchTask, threads: int, x: np.ndarray):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            try:
                from tflite_runtime.interpreter import Interpreter  # what some devices have
            except ImportError as e:
                raise EngineUnavailable("the LiteRT interpreter is not installed "
                                        f"(pip install ai-edge-litert): {e}") from None
        # XNNPACK is the interpreter's default CPU delegate for float models.
        self.it = Interpreter(model_path=task.tflite_path(), num_threads=threads)
        self.it.allocate_tensors()
        self.inp = self.it.get_input_details()[0]["index"]
        self.out = self.it.get_output_details()[0]["index"]
        self.x = np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)), dtype=np.float32)  # the export is NHWC

    def __call__(self) -> np.ndarray:
        self.it.set_tensor(self.inp, self.x)
        self.it.invoke()
        return self.it.get_tensor(self.out)


class TorchRunner(Runner):
    engine = "torch"

    def __init__(self, task: BenchTask, threads: int, x: np.ndarray):
        import torch

        self.torch = torch
        torch.set_num_threads(threads)
        self.model = task.torch_model()
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def __call__(self) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.x).numpy()


_RUNNERS = {"spaedge": SpaedgeRunner, "onnxruntime": OrtRunner, "litert": LiteRTRunner, "torch": TorchRunner}


def make_runner(engine: str, task: BenchTask, threads: int, x: np.ndarray, **kw) -> Runner:
    """A ready-to-time runner; raises EngineUnavailable when the engine is not installed."""
    if engine not in _RUNNERS:
        raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    if engine == "torch":
        try:
            import torch  # noqa: F401
        except ImportError as e:
            raise EngineUnavailable(f"torch is not installed: {e}") from None
    return _RUNNERS[engine](task, threads, x, **kw)


def check_agreement(outputs: dict[str, np.ndarray], reference: np.ndarray) -> dict[str, float]:
    """Max |difference| to the reference logits relative to their scale, per engine."""
    scale = float(np.abs(reference).max()) or 1.0
    return {e: float(np.abs(np.asarray(o, dtype=np.float64).reshape(reference.shape) - reference).max()) / scale
            for e, o in outputs.items()}


# -------------------------------------------------------------------- timing
def measure(runners: dict[str, Callable[[], object]], runs: int, block: int = 5,
            warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of each runner, ``runs`` timed calls each.

    Runners take turns in blocks of ``block`` calls; each block starts with one
    untimed call (the previous engine's threads may still be spinning), and
    ``warmup`` untimed calls per runner come first."""
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in runners}
    clock = time.perf_counter
    while any(len(v) < runs for v in times.values()):
        for k, fn in runners.items():
            todo = min(block, runs - len(times[k]))
            if todo <= 0:
                continue
            fn()
            for _ in range(todo):
                t0 = clock()
                fn()
                times[k].append(clock() - t0)
    return times


def summarise(seconds: Sequence[float]) -> dict:
    """Median, p90, min and count of a list of durations, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "min_ms": float(ms.min()), "runs": int(ms.size)}


def switch_times(base_path: str, task_paths: Sequence[str], threads: int, n: int,
                 mode: str = "merged") -> list[float]:
    """Milliseconds of ``Runtime.switch`` cycling through the loaded tasks (n switches).

    With one task, each switch re-applies it (a switch always rebuilds the
    weights, so the cost is the same as switching from another task)."""
    from spaedge.runtime import Runtime

    rt = Runtime(base_path, threads=threads, mode=mode)
    names = [rt.load_task(p) for p in task_paths]
    out = []
    for i in range(n + 1):
        ms = rt.switch(names[i % len(names)] if len(names) > 1 else names[0])
        if i:  # the first switch after loading warms the caches
            out.append(ms)
    return out


def session_times(onnx_path: str, threads: int, n: int) -> list[float]:
    """Milliseconds to create an onnxruntime InferenceSession for the model file."""
    import onnxruntime as ort

    ort_session(ort, onnx_path, threads)  # first one pays file-system and library warm-up
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        s = ort_session(ort, onnx_path, threads)
        out.append((time.perf_counter() - t0) * 1e3)
        del s
    return out


# -------------------------------------------------------------- task making
def make_synthetic_task(workdir: str | os.PathLike, name: str, *, base: str = "resnet18",
                        density: float = 1.0, rank: int = 8, classes: int = 10,
                        input_size: Sequence[int] = (3, 224, 224), seed: int = 0,
                        labels: Sequence[str] | None = None, mean: Sequence[float] | None = None,
                        std: Sequence[float] | None = None, prune_step: float = 0.1,
                        base_seed: int = 0, base_file: str | None = None) -> BenchTask:
    """Bundles of a task with random SPLoRA adapters, BatchNorm and head on ``base``,
    pruned (magnitude criterion, no training) to ``density``; fine for speed.

    The base is the built-in weights for ``tiny``, random weights (seeded by
    ``base_seed``) otherwise; its bundle (``base_file``, default
    ``base-BASE.safetensors``) is written once per directory."""
    import torch

    from spaedge.adapters import adapt
    from spaedge.models import get_base
    from spaedge.models.stats import count_macs, count_parameters
    from spaedge.pack.bundle import TaskSpec, base_hash, write_base, write_task
    from spaedge.pack.format import read_metadata
    from spaedge.pack.materialize import materialize, whole_model_bytes
    from spaedge.pruning.prune import density as density_of
    from spaedge.pruning.prune import prune_to_density

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    size = tuple(int(v) for v in input_size)
    torch.manual_seed(base_seed)
    model = get_base(base).eval()
    base_path = workdir / (base_file or f"base-{base}.safetensors")
    bhash = base_hash(model)
    if not base_path.exists() or read_metadata(base_path).get("content_hash") != bhash:
        write_base(model, base_path)
    g = torch.Generator().manual_seed(seed)
    model.replace_head(classes)
    model = adapt(model, "splora", rank=rank)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_a" in n or "lora_b" in n or n.startswith("fc."):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(1 + 0.1 * torch.randn(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
    if density < 1.0:
        # The channel structure does not depend on the image size: prune at a small one.
        small = (size[0], min(size[1], 64), min(size[2], 64))
        prune_to_density(model, torch.zeros(1, *small), density, step_fraction=prune_step)
    model.eval()
    spec = TaskSpec(name, labels or [f"class{i}" for i in range(classes)], size,
                    mean or [0.0] * size[0], std or [1.0] * size[0])
    task_path = workdir / f"{name}.safetensors"
    info = {"rank": rank, "density": density_of(model), "synthetic": True}
    write_task(model, spec, bhash, task_path, info=info)
    plain = materialize(model)
    return BenchTask(name=name, base_path=str(base_path), task_path=str(task_path), input_size=size,
                     macs=count_macs(plain, size), params=count_parameters(plain),
                     bundle_bytes=task_path.stat().st_size, whole_bytes=whole_model_bytes(model),
                     workdir=str(workdir), base_model=model.arch, density=density_of(model))


def bench_task_from_bundles(base_path: str | os.PathLike, task_path: str | os.PathLike,
                            workdir: str | os.PathLike) -> BenchTask:
    """A BenchTask for packed bundles (MACs and sizes from the runtime; the
    torch-side facts when torch is installed)."""
    from spaedge.runtime import Runtime

    rt = Runtime(str(base_path), threads=1)
    name = rt.load_task(str(task_path))
    info = rt.task_info(name)
    density = None
    try:
        density = json.loads(info.get("info") or "{}").get("density")
    except (ValueError, AttributeError):
        pass
    t = BenchTask(name=name, base_path=str(base_path), task_path=str(task_path),
                  input_size=tuple(info["input_shape"]), macs=int(info["macs"]), params=0,
                  bundle_bytes=int(info["bundle_bytes"]), whole_bytes=0, workdir=str(workdir),
                  base_model=rt.base_model, density=density)
    try:
        from spaedge.models.stats import count_parameters
        from spaedge.pack.bundle import load_task_model
        from spaedge.pack.materialize import whole_model_bytes
    except ImportError:
        return t  # a device install: no torch
    model, _, _ = load_task_model(base_path, task_path)
    t.params = count_parameters(t.torch_model())
    t.whole_bytes = whole_model_bytes(model)
    return t


def machine_info() -> dict:
    """CPU model, core count, ISA of the runtime; for reports."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "machine": platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "system": platform.system()}
    try:
        info["loadavg"] = [round(v, 2) for v in os.getloadavg()]  # others' work skews a shared machine's times
    except OSError:
        pass
    for mod, key in (("onnxruntime", "onnxruntime"), ("torch", "torch"), ("ai_edge_litert", "ai_edge_litert")):
        try:
            info[key] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a version is nice to have only
            pass
    return info


# ---------------------------------------------------------------- reporting
def _fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(rows: list[dict]) -> str:
    """Rows with engine, threads, median_ms, p90_ms, gflops, ratio (and optional note) as text."""
    header = ("engine", "threads", "median ms", "p90 ms", "GFLOP/s", f"vs {REFERENCE}")
    lines = [header]
    for r in rows:
        if r.get("error"):
            lines.append((r["engine"], str(r["threads"]), "unavailable", "", "", ""))
            continue
        ratio = r.get("ratio")
        lines.append((r["engine"], str(r["threads"]), _fmt(r["median_ms"], ".3f"), _fmt(r["p90_ms"], ".3f"),
                      _fmt(r.get("gflops"), ".1f"), "-" if ratio is None else f"{ratio:.2f}x"))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = []
    for j, row in enumerate(lines):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        out.append("  ".join(cells).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    notes = [f"  {r['engine']} ({r['threads']} threads): {r['error']}" for r in rows if r.get("error")]
    return "\n".join(out + notes)


def _png(path: str, title: str, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if not r.get("error")]
    threads = sorted({r["threads"] for r in ok})
    engines = [e for e in ENGINES if any(r["engine"] == e for r in ok)]
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(threads) * max(len(engines), 1) / 2, 3.6), dpi=120)
    width = 0.8 / max(len(engines), 1)
    for i, e in enumerate(engines):
        xs, med, err = [], [], []
        for j, t in enumerate(threads):
            r = next((r for r in ok if r["engine"] == e and r["threads"] == t), None)
            if r is None:
                continue
            xs.append(j + (i - (len(engines) - 1) / 2) * width)
            med.append(r["median_ms"])
            err.append(max(r["p90_ms"] - r["median_ms"], 0.0))
        bars = ax.bar(xs, med, width * 0.9, yerr=[[0] * len(err), err], capsize=3, label=e)
        for b, m in zip(bars, med):
            ax.annotate(f"{m:.2f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                        va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    top = max((r["median_ms"] for r in ok), default=1.0)
    ax.set_ylim(0, top * 1.4)  # a p90 whisker of a noisy run may leave the chart; the medians stay readable
    ax.set_xticks(range(len(threads)))
    ax.set_xticklabels([f"{t} thread{'s' if t > 1 else ''}" for t in threads])
    ax.set_ylabel("median latency, ms (bar: p90)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


# ------------------------------------------------------------------- the CLI
def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``spaedge bench`` on the ``spaedge`` command's subparsers."""
    b = subparsers.add_parser(
        "bench", help="latency of a packed task: spaedge vs onnxruntime, LiteRT, PyTorch",
        description="Time a packed task at batch 1 in the C++ runtime and, on the same pruned model, in "
                    "onnxruntime, the LiteRT interpreter and PyTorch eager (those that are installed); "
                    "print median/p90 latency, GFLOP/s and the ratio to onnxruntime, and the task-switch "
                    "time against creating an onnxruntime session.")
    b.add_argument("--bundles", default="bundles", help="bundle directory (default ./bundles)")
    b.add_argument("--task", default="digits", help="task name (default digits)")
    b.add_argument("--threads", type=_positive, nargs="+", default=[1],
                   help="thread counts to measure, e.g. --threads 1 2 (default 1)")
    b.add_argument("--runs", type=_positive, default=50, help="timed runs per engine and thread count (default 50)")
    b.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES),
                   help="engines to time (default: all that are installed)")
    b.add_argument("--mode", choices=["merged", "lowrank"], default="merged", help="spaedge runtime mode")
    b.add_argument("--switches", type=_positive, default=20, help="task switches to time (default 20)")
    b.add_argument("--json", metavar="FILE", help="write the results as JSON")
    b.add_argument("--png", metavar="FILE", help="write a bar chart of the latencies (PNG)")
    b.add_argument("--exports", metavar="DIR",
                   help="keep the ONNX/TFLite exports here, and reuse those newer than the task bundle "
                        "(default: a temporary directory); lets a device without torch time the peers")
    b.set_defaults(func=bench_main)
    return b


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return v


def _safe(task: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task).strip("_") or "task"


def bench_main(args) -> int:
    """``spaedge bench``: see :func:`add_bench_parser`."""
    bundles = Path(args.bundles)
    base_path = bundles / "base.safetensors"
    task_path = bundles / f"{_safe(args.task)}.safetensors"
    for p in (base_path, task_path):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist: pack the task first "
                                    f"(spaedge pack --task {args.task} --out {bundles})")
    with tempfile.TemporaryDirectory(prefix="spaedge-bench-") as tmp:
        workdir = Path(args.exports) if args.exports else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        result = run_bench(bench_task_from_bundles(base_path, task_path, workdir), threads=args.threads,
                           runs=args.runs, engines=args.engines, mode=args.mode, switches=args.switches,
                           other_tasks=_other_tasks(bundles, base_path, task_path))
    print(report_text(result))
    if args.json:
        from spaedge.pack.format import atomic_write_bytes

        atomic_write_bytes(args.json, (json.dumps(result, indent=2) + "\n").encode())
        print(f"wrote {args.json}")
    if args.png:
        t = result["task"]
        _png(args.png, f"{t['name']} ({t['base_model']}, {t['input_size']}, batch 1) on {result['machine']['cpu']}",
             result["latency"])
        print(f"wrote {args.png}")
    return 0


def _other_tasks(bundles: Path, base_path: Path, task_path: Path) -> list[str]:
    """Other task bundles of the directory made for the same base (for switch timing)."""
    from spaedge.pack.format import read_metadata

    want = read_metadata(base_path).get("content_hash")
    out = []
    for p in sorted(bundles.glob("*.safetensors")):
        if p in (base_path, task_path):
            continue
        try:
            meta = read_metadata(p)
        except Exception:  # noqa: BLE001 - not a bundle: not a candidate
            continue
        if meta.get("format") == "spaedge-task" and meta.get("base_hash") == want:
            out.append(str(p))
    return out[:1]


def run_bench(task: BenchTask, *, threads: Sequence[int] = (1,), runs: int = 50,
              engines: Sequence[str] = ENGINES, mode: str = "merged", switches: int = 20,
              other_tasks: Sequence[str] = (), seed: int = 0) -> dict:
    """Everything ``spaedge bench`` reports, as a JSON-able dict."""
    x = np.random.default_rng(seed).standard_normal((1, *task.input_size)).astype(np.float32)
    reference = None
    latency: list[dict] = []
    for n in threads:
        runners: dict[str, Runner] = {}
        errors: dict[str, str] = {}
        for e in engines:
            try:
                runners[e] = make_runner(e, task, n, x, **({"mode": mode} if e == "spaedge" else {}))
            except EngineUnavailable as err:
                errors[e] = str(err)
        if not runners:
            raise ValueError("no engine can run here: " + "; ".join(f"{e}: {m}" for e, m in errors.items()))
        outputs = {e: r() for e, r in runners.items()}
        if reference is None:
            if "torch" in outputs:
                reference, reference_engine = np.asarray(outputs["torch"], dtype=np.float64), "torch"
            else:
                try:
                    reference = np.asarray(make_runner("torch", task, n, x)(), dtype=np.float64)
                    reference_engine = "torch"
                except EngineUnavailable:  # a device without torch: compare with the first engine
                    reference_engine = next(iter(outputs))
                    reference = np.asarray(outputs[reference_engine], dtype=np.float64)
        agree = check_agreement(outputs, reference)
        times = measure(runners, runs)
        for e in engines:
            if e in errors:
                latency.append({"engine": e, "threads": n, "error": errors[e]})
                continue
            s = summarise(times[e])
            s.update(engine=e, threads=n, gflops=2 * task.macs / (s["median_ms"] * 1e-3) / 1e9,
                     max_rel_diff=agree[e])
            latency.append(s)
        ref = next((r for r in latency if r["engine"] == REFERENCE and r["threads"] == n and "error" not in r), None)
        for r in latency:
            if r["threads"] == n and "error" not in r:
                r["ratio"] = r["median_ms"] / ref["median_ms"] if ref else None
    switch = {}
    if "spaedge" in engines:
        paths = [task.task_path, *other_tasks]
        st = summarise(np.asarray(switch_times(task.base_path, paths, threads[-1], switches, mode)) * 1e-3)
        switch = {"spaedge_switch": st, "threads": threads[-1],
                  "between": [Path(p).stem for p in paths] if len(paths) > 1 else [Path(task.task_path).stem]}
        try:
            ses = summarise(np.asarray(session_times(task.onnx_path(), threads[-1], max(3, switches // 4))) * 1e-3)
            switch["onnxruntime_session"] = ses
            switch["speedup"] = ses["median_ms"] / st["median_ms"]
        except (ImportError, EngineUnavailable):
            pass
    import spaedge

    return {"task": task.facts(), "machine": machine_info(), "spaedge_version": spaedge.__version__,
            "mode": mode, "isa": _isa(task), "latency": latency, "switch": switch, "runs": runs,
            "outputs_checked_against": reference_engine}


def _isa(task: BenchTask) -> str:
    try:
        from spaedge.runtime import Runtime

        return Runtime(task.base_path, threads=1).isa
    except Exception:  # noqa: BLE001
        return "?"


def report_text(result: dict) -> str:
    t, m = result["task"], result["machine"]
    macs = t["macs"]
    lines = [f"{t['name']}: {t['base_model']} task, input {t['input_size']}, batch 1, "
             f"{macs / 1e6:.1f} MMACs" + (f", {t['params'] / 1e6:.2f}M parameters" if t["params"] else "")
             + (f", density {t['density']:.0%}" if t.get("density") else ""),
             f"machine: {m['cpu']} ({m['cores']} cores"
             + (f", load average {m['loadavg'][0]:.1f}" if m.get("loadavg") else "")
             + f"), spaedge {result['isa']} kernels, mode {result['mode']}",
             "", format_table(result["latency"]), ""]
    sw = result.get("switch") or {}
    if sw:
        s = sw["spaedge_switch"]
        line = (f"task switch ({' <-> '.join(sw['between'])}, {sw['threads']} threads): "
                f"spaedge {s['median_ms']:.3f} ms median (p90 {s['p90_ms']:.3f}, {s['runs']} switches)")
        if "onnxruntime_session" in sw:
            o = sw["onnxruntime_session"]
            line += (f"; creating an onnxruntime session {o['median_ms']:.1f} ms median "
                     f"-> switch is {sw['speedup']:.0f}x faster")
        lines.append(line)
    if t["whole_bytes"]:
        lines.append(f"bundle: {t['bundle_bytes']:,} bytes; the same pruned model stored whole: "
                     f"{t['whole_bytes']:,} bytes ({t['whole_bytes'] / t['bundle_bytes']:.1f}x larger)")
    else:
        lines.append(f"bundle: {t['bundle_bytes']:,} bytes")
    return "\n".join(lines)
