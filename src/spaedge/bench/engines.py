"""The engines a task is timed in, each behind one ``Runner``, and the task they run.

- ``spaedge``: the C++ runtime (``spaedge.runtime.Runtime``) on the bundles;
- ``onnxruntime``: its CPU provider on ``spaedge.pack.export.export_onnx``;
- ``litert``: the LiteRT interpreter (XNNPACK) on ``export_tflite`` (NHWC input);
- ``torch``: PyTorch eager on the materialised model.

Engines other than spaedge and their exports are optional: a missing one
raises ``EngineUnavailable`` saying what to install, and a device without torch
times the peers on exports made by the toolchain elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from spaedge.runtime import Runtime

__all__ = [
    "ENGINES",
    "REFERENCE",
    "EngineUnavailable",
    "BenchTask",
    "bench_task_from_bundles",
    "Runner",
    "make_runner",
    "check_agreement",
    "ort_session",
]

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
    density: float | None = None
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
                        f"here ({e})"
                    ) from None
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


def bench_task_from_bundles(
    base_path: str | os.PathLike, task_path: str | os.PathLike, workdir: str | os.PathLike
) -> BenchTask:
    """A BenchTask for packed bundles (MACs and sizes from the runtime; the
    torch-side facts when torch is installed)."""
    rt = Runtime(str(base_path), threads=1)
    name = rt.load_task(str(task_path))
    info = rt.task_info(name)
    density = None
    with contextlib.suppress(ValueError, AttributeError):
        density = json.loads(info.get("info") or "{}").get("density")
    t = BenchTask(
        name=name,
        base_path=str(base_path),
        task_path=str(task_path),
        input_size=tuple(info["input_shape"]),
        macs=int(info["macs"]),
        params=0,
        bundle_bytes=int(info["bundle_bytes"]),
        whole_bytes=0,
        workdir=str(workdir),
        base_model=rt.base_model,
        density=density,
    )
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


class Runner:
    """Runs one engine on one prepared input; ``__call__`` returns NCHW-order logits."""

    engine = ""

    def __call__(self) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError


class SpaedgeRunner(Runner):
    engine = "spaedge"

    def __init__(self, task: BenchTask, threads: int, x: np.ndarray, mode: str = "merged"):
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
            raise EngineUnavailable(
                f"onnxruntime is not installed (pip install 'spaedge[export]'): {e}"
            ) from None
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
                raise EngineUnavailable(
                    f"the LiteRT interpreter is not installed (pip install ai-edge-litert): {e}"
                ) from None
        # XNNPACK is the interpreter's default CPU delegate for float models.
        self.it = Interpreter(model_path=task.tflite_path(), num_threads=threads)
        self.it.allocate_tensors()
        self.inp = self.it.get_input_details()[0]["index"]
        self.out = self.it.get_output_details()[0]["index"]
        self.x = np.ascontiguousarray(
            np.transpose(x, (0, 2, 3, 1)), dtype=np.float32
        )  # the export is NHWC

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


_RUNNERS = {
    "spaedge": SpaedgeRunner,
    "onnxruntime": OrtRunner,
    "litert": LiteRTRunner,
    "torch": TorchRunner,
}


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
    return {
        e: float(np.abs(np.asarray(o, dtype=np.float64).reshape(reference.shape) - reference).max())
        / scale
        for e, o in outputs.items()
    }
