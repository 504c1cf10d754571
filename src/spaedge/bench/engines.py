"""The engines a task is timed in, each behind one ``Runner``, and the task they run.

- ``spaedge``: the C++ runtime (``spaedge.runtime.Runtime``) on the bundles;
- ``onnxruntime``: its CPU provider on ``spaedge.pack.export.export_onnx``;
- ``litert``: the LiteRT interpreter (XNNPACK) on ``export_tflite`` (NHWC input);
- ``torch``: PyTorch eager on the materialised model.

Each engine runs at a precision (``PRECISIONS``): ``fp32`` is the float
model above; ``int8`` is, for spaedge, the int8 bundle pair (docs/int8.md);
for onnxruntime, static QDQ quantization of the ONNX export (per-channel s8
weights, u8 activations, calibrated on the same images as spaedge's int8
task with the same range statistic family where it has one, else MinMax:
``int8_statistic``, ``onnxruntime.quantization.quantize_static`` after
``quant_pre_process``); for LiteRT, a full-integer model (s8 activations,
per-channel s8 weights, int32 biases; float input and logits through QUANTIZE
and DEQUANTIZE) written by ``export_tflite_int8`` from the same images.
An int8 ``BenchTask`` (``synthetic.make_int8_pair`` or
``bench_task_from_bundles`` on an int8 pair) knows its fp32 twin, the
calibration images and where its exports go.

Engines other than spaedge and their exports are optional: a missing one
raises ``EngineUnavailable`` saying what to install, and a device without torch
times the peers on exports made by the toolchain elsewhere.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spaedge.pack.format import atomic_write_bytes, precision_of, read_metadata
from spaedge.pack.quantize import RANDOM_CALIBRATION_SELECTION, random_calibration_images
from spaedge.runtime import Runtime

__all__ = [
    "ENGINES",
    "REFERENCE",
    "PRECISIONS",
    "INT8_ENGINES",
    "EngineUnavailable",
    "BenchTask",
    "bench_task_from_bundles",
    "Runner",
    "make_runner",
    "check_agreement",
    "ort_session",
    "top1_agreement",
    "calibration_of",
    "find_int8_pair",
    "int8_statistic",
]

ENGINES = ("spaedge", "onnxruntime", "litert", "torch")
REFERENCE = "onnxruntime"
PRECISIONS = ("fp32", "int8")
#: Engines that have an int8 runner.
INT8_ENGINES = ("spaedge", "onnxruntime", "litert")


class EngineUnavailable(RuntimeError):
    """An engine cannot run here (package missing); the message says why."""


@dataclass
class BenchTask:
    """One task's bundles and the facts every report needs.

    An int8 task (``precision="int8"``) is an int8 bundle pair; ``fp32`` is the
    fp32 task it was quantized from (its torch model and ONNX export are the
    float model the int8 peers quantize), ``calibration`` the images its
    activations were calibrated on (NCHW float32, normalised) and
    ``statistic`` the range statistic they were taken with (each peer's own
    is ``int8_statistic``)."""

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
    precision: str = "fp32"
    base_bytes: int = 0  # the base bundle's file
    fp32: BenchTask | None = field(default=None, repr=False, compare=False)
    calibration: np.ndarray | None = field(default=None, repr=False, compare=False)
    statistic: str = ""  # int8: the range statistic of its info.calibration
    _exports: dict = field(default_factory=dict, repr=False)

    def torch_model(self):
        """The materialised pruned fp32 model (plain torch), built once; an
        int8 task's is its fp32 twin's."""
        if self.fp32 is not None:
            return self.fp32.torch_model()
        if "torch" not in self._exports:
            from spaedge.pack.bundle import load_task_model
            from spaedge.pack.materialize import materialize

            model, _, _ = load_task_model(self.base_path, self.task_path)
            self._exports["torch"] = materialize(model).eval()
        return self._exports["torch"]

    def onnx_path(self) -> str:
        """The fp32 ONNX export (an int8 task: its fp32 twin's)."""
        if self.fp32 is not None:
            return self.fp32.onnx_path()
        return self._export("onnx")

    def tflite_path(self) -> str:
        """The fp32 TFLite export (an int8 task: its fp32 twin's)."""
        if self.fp32 is not None:
            return self.fp32.tflite_path()
        return self._export("tflite")

    def onnx_int8_path(self) -> str:
        """WORKDIR/NAME.int8.onnx: the fp32 export quantized by onnxruntime (static QDQ)."""
        return self._export("int8.onnx")

    def tflite_int8_path(self) -> str:
        """WORKDIR/NAME.int8.tflite: the full-integer LiteRT model."""
        return self._export("int8.tflite")

    def _int8_only(self, what: str) -> None:
        if self.precision != "int8" or self.fp32 is None:
            raise ValueError(
                f"{what} needs an int8 task and its fp32 twin "
                "(spaedge.bench.synthetic.make_int8_pair or bench_task_from_bundles with fp32=...)"
            )
        if self.calibration is None:
            raise EngineUnavailable(
                f"{what} is calibrated on the images spaedge's int8 task was, and they cannot be "
                f"rebuilt here from {Path(self.task_path).name}'s info.calibration (the task's "
                "data or the toolchain is missing): make the exports where they can be "
                "(spaedge bench --exports DIR) and copy DIR here"
            )

    def _export(self, kind: str) -> str:
        """WORKDIR/NAME.<kind>: exported here, or reused when it is newer than
        the task bundle (so a device without torch can time the peers on
        exports made by the toolchain elsewhere)."""
        if kind not in self._exports:
            p = Path(self.workdir) / f"{self.name}.{kind}"
            if not (p.exists() and p.stat().st_mtime >= Path(self.task_path).stat().st_mtime):
                if kind == "int8.onnx":
                    self._int8_only("the onnxruntime int8 model")
                    quantize_onnx(
                        self.fp32.onnx_path(), p, self.calibration, self.statistic or "minmax"
                    )
                else:
                    self._export_toolchain(kind, p)
            self._exports[kind] = str(p)
        return self._exports[kind]

    def _export_toolchain(self, kind: str, p: Path) -> None:
        try:
            from spaedge.pack import export
        except ImportError as e:
            raise EngineUnavailable(
                f"no {p.name} to reuse and exporting it needs the toolchain (torch): run "
                f"`spaedge bench --exports DIR` where spaedge[train,export] is installed and copy DIR "
                f"here ({e})"
            ) from None
        try:
            if kind == "int8.tflite":
                self._int8_only("the LiteRT int8 model")
                export.export_tflite_int8(self.torch_model(), p, self.calibration, self.input_size)
            else:
                fn = export.export_onnx if kind == "onnx" else export.export_tflite
                fn(self.torch_model(), p, self.input_size)
        except ImportError as e:  # e.g. the LiteRT schema for the TFLite writer
            raise EngineUnavailable(str(e)) from None

    def facts(self) -> dict:
        d = {
            k: getattr(self, k)
            for k in self.__dataclass_fields__
            if not k.startswith("_") and k not in ("fp32", "calibration")
        }
        d["input_size"] = "x".join(str(v) for v in self.input_size)
        if not self.statistic:
            del d["statistic"]
        if self.calibration is not None:
            d["calibration_images"] = int(len(self.calibration))
        return d


def int8_statistic(engine: str, statistic: str) -> str:
    """The range statistic ``engine``'s int8 model takes its activation
    ranges with when spaedge's int8 task used ``statistic`` (on the same
    images): spaedge its own; onnxruntime the same family where it has it
    (``minmax``: ``CalibrationMethod.MinMax``; ``percentile-P``:
    ``CalibrationMethod.Percentile`` at P, two-sided, cutting (100 - P) / 2 %
    of all the values at each end where spaedge cuts the top 100 - P % of
    each sign), else ``minmax``; LiteRT always ``minmax`` (``export_tflite_int8``)."""
    if engine == "spaedge":
        return statistic
    if engine == "onnxruntime" and (statistic == "minmax" or statistic.startswith("percentile-")):
        return statistic
    return "minmax"


def _ort_calibration(statistic: str):
    """(CalibrationMethod name, extra_options) of ``int8_statistic("onnxruntime", statistic)``."""
    ours = int8_statistic("onnxruntime", statistic)
    if ours.startswith("percentile-"):
        p = float(ours.removeprefix("percentile-"))
        return "Percentile", {"CalibPercentile": p, "CalibTensorRangeSymmetric": False}
    return "MinMax", {}


def quantize_onnx(
    fp32_path: str | os.PathLike,
    out: str | os.PathLike,
    images: np.ndarray,
    statistic: str = "minmax",
) -> None:
    """onnxruntime's static quantization of an fp32 ONNX model, as its docs
    recommend for CNNs on x86 and ARM: ``quant_pre_process`` (shape inference,
    graph optimisation), then QDQ with per-channel s8 weights and u8
    activations (over ``images``, one image per call at batch 1, with the
    calibration method of ``int8_statistic("onnxruntime", statistic)``).
    Written atomically to ``out``."""
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        raise EngineUnavailable(
            f"onnxruntime's quantization tools are not installed (pip install onnx onnxruntime): {e}"
        ) from None

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(np.asarray(images, dtype=np.float32))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": np.ascontiguousarray(x[None])}

    method, extra = _ort_calibration(statistic)
    out = Path(out)
    # the histogram calibrators print to stdout: kept out of the bench's report
    with (
        tempfile.TemporaryDirectory(prefix="spaedge-ortq-") as d,
        contextlib.redirect_stdout(io.StringIO()),
    ):
        pre = Path(d) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        tmp = Path(d) / "int8.onnx"
        quantize_static(
            str(pre),
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, method),
            extra_options=extra,
        )
        atomic_write_bytes(out, tmp.read_bytes())


def calibration_of(info: dict, task: str, input_size: Sequence[int]) -> np.ndarray | None:
    """The images an int8 task bundle was calibrated on, rebuilt from its
    ``info["calibration"]`` (what the int8 peers are calibrated on): the seeded
    random ones of a synthetic task (``spaedge quantize --calibration random``,
    ``synthetic.make_int8_pair``: ``spaedge.pack.quantize.random_calibration_images``
    of its ``images`` and ``seed``), or the task's own training images chosen
    as ``spaedge pack --precision int8`` chose them (needs the toolchain and
    the task's data). None when they cannot be rebuilt here."""
    cal = info.get("calibration") or {}
    n = cal.get("images")
    if not isinstance(n, int) or n < 1:
        return None
    if cal.get("selection") == RANDOM_CALIBRATION_SELECTION:
        seed = cal.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int):
            return None
        return random_calibration_images(input_size, n, seed)
    if cal.get("split") == "train":
        try:
            from spaedge.pack.calibrate import calibration_images
            from spaedge.pack.quantize import CALIBRATION_SELECTION
            from spaedge.tasks import get_task

            if cal.get("selection") != CALIBRATION_SELECTION:
                return None
            t = get_task(task, input_size=tuple(input_size))
            return calibration_images(t, n).numpy().astype(np.float32)
        except (ImportError, OSError, KeyError, ValueError):
            return None
    return None


def find_int8_pair(directory: str | os.PathLike, task: str) -> tuple[Path, Path] | None:
    """``(base, task)`` paths of ``task``'s int8 pair in ``directory``:
    ``base.int8.safetensors`` and ``TASK.int8.safetensors``, the names
    ``spaedge quantize`` and ``spaedge pack --precision int8`` write
    (``spaedge.pack.layout``), else ``base.safetensors`` and
    ``TASK.safetensors`` when that task bundle is an int8 one. None when
    neither pair is there. Reads only metadata; checks nothing else."""
    from spaedge.pack.layout import base_bundle_path, task_bundle_path

    d = Path(directory)
    for precision in ("int8", "fp32"):
        base, t = base_bundle_path(d, precision), task_bundle_path(d, task, precision)
        if not (base.is_file() and t.is_file()):
            continue
        if precision == "int8" or precision_of(read_metadata(t)) == "int8":
            return base, t
    return None


def bench_task_from_bundles(
    base_path: str | os.PathLike,
    task_path: str | os.PathLike,
    workdir: str | os.PathLike,
    fp32: BenchTask | None = None,
) -> BenchTask:
    """A BenchTask for packed bundles (MACs and sizes from the runtime; the
    torch-side facts when torch is installed). An int8 pair needs ``fp32``,
    the BenchTask of the fp32 pair it was quantized from; its calibration
    images are rebuilt from the task bundle's info (``calibration_of``)."""
    rt = Runtime(str(base_path), threads=1)
    name = rt.load_task(str(task_path))
    info = rt.task_info(name)
    density = None
    meta: dict = {}
    with contextlib.suppress(ValueError, AttributeError):
        meta = json.loads(info.get("info") or "{}")
        density = meta.get("density")
    precision = precision_of(read_metadata(task_path))
    if precision == "int8" and fp32 is None:
        raise ValueError(f"{task_path} is an int8 task: pass its fp32 twin (fp32=...)")
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
        precision=precision,
        base_bytes=Path(base_path).stat().st_size,
    )
    if precision == "int8":
        t.fp32, t.params = fp32, fp32.params
        t.calibration = calibration_of(meta, name, t.input_size)
        t.statistic = str((meta.get("calibration") or {}).get("statistic") or "minmax")
        return t
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
    """Runs one engine on one prepared input; ``__call__`` returns NCHW-order
    logits. ``predict(x)`` runs any batch of NCHW inputs (one call per image
    where the engine's model has batch 1), for the top-1 check."""

    engine = ""
    precision = "fp32"

    def __call__(self) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([self._one(x[i : i + 1]) for i in range(len(x))])

    def _one(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError


def _check_precision(task: BenchTask, precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    if task.precision != precision:
        raise ValueError(
            f"task {task.name} is {task.precision}, the runner was asked for {precision}: pass the "
            f"{precision} task (an int8 one from spaedge.bench.synthetic.make_int8_pair)"
        )


class SpaedgeRunner(Runner):
    engine = "spaedge"

    def __init__(
        self,
        task: BenchTask,
        threads: int,
        x: np.ndarray,
        mode: str = "merged",
        precision: str = "fp32",
    ):
        _check_precision(task, precision)
        self.precision = precision
        self.rt = Runtime(task.base_path, threads=threads, mode=mode)
        self.name = self.rt.load_task(task.task_path)
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.isa = self.rt.isa

    def __call__(self) -> np.ndarray:
        return self.rt.run(self.x, check_finite=False)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.rt.run(np.ascontiguousarray(x, dtype=np.float32), check_finite=False)


class OrtRunner(Runner):
    engine = "onnxruntime"

    def __init__(self, task: BenchTask, threads: int, x: np.ndarray, precision: str = "fp32"):
        _check_precision(task, precision)
        self.precision = precision
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise EngineUnavailable(
                f"onnxruntime is not installed (pip install 'spaedge[export]'): {e}"
            ) from None
        path = task.onnx_int8_path() if precision == "int8" else task.onnx_path()
        self.session = ort_session(ort, path, threads)
        self.feed = {"input": np.ascontiguousarray(x, dtype=np.float32)}

    def __call__(self) -> np.ndarray:
        return self.session.run(["logits"], self.feed)[0]

    def _one(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {"input": np.ascontiguousarray(x, np.float32)})[0]


def ort_session(ort, path: str, threads: int):
    """An onnxruntime CPU session as the benchmarks use it (intra-op threads, sequential, all graph optimisations)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def litert_interpreter():
    """The LiteRT ``Interpreter`` class (ai-edge-litert, or tflite-runtime on
    some devices); EngineUnavailable when neither is installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter  # what some devices have
        except ImportError as e:
            raise EngineUnavailable(
                f"the LiteRT interpreter is not installed (pip install ai-edge-litert): {e}"
            ) from None
    return Interpreter


class LiteRTRunner(Runner):
    engine = "litert"

    def __init__(self, task: BenchTask, threads: int, x: np.ndarray, precision: str = "fp32"):
        _check_precision(task, precision)
        self.precision = precision
        Interpreter = litert_interpreter()
        path = task.tflite_int8_path() if precision == "int8" else task.tflite_path()
        # XNNPACK is the interpreter's default CPU delegate, for float models
        # and for signed int8 ones (the int8 export: s8 activations).
        self.it = Interpreter(model_path=path, num_threads=threads)
        self.it.allocate_tensors()
        self.inp = self.it.get_input_details()[0]["index"]
        self.out = self.it.get_output_details()[0]["index"]
        self.x = self._nhwc(x)  # both exports take NHWC float32

    @staticmethod
    def _nhwc(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)), dtype=np.float32)

    def __call__(self) -> np.ndarray:
        self.it.set_tensor(self.inp, self.x)
        self.it.invoke()
        return self.it.get_tensor(self.out)

    def _one(self, x: np.ndarray) -> np.ndarray:
        self.it.set_tensor(self.inp, self._nhwc(x))
        self.it.invoke()
        return self.it.get_tensor(self.out).copy()


class TorchRunner(Runner):
    engine = "torch"

    def __init__(self, task: BenchTask, threads: int, x: np.ndarray, precision: str = "fp32"):
        if precision != "fp32":
            raise EngineUnavailable("the torch engine runs the fp32 model only")
        import torch

        self.torch = torch
        torch.set_num_threads(threads)
        self.model = task.torch_model()
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def __call__(self) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.x).numpy()

    def predict(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()


_RUNNERS = {
    "spaedge": SpaedgeRunner,
    "onnxruntime": OrtRunner,
    "litert": LiteRTRunner,
    "torch": TorchRunner,
}


def make_runner(
    engine: str, task: BenchTask, threads: int, x: np.ndarray, precision: str = "fp32", **kw
) -> Runner:
    """A ready-to-time runner of ``engine`` at ``precision`` (``task`` must be of
    that precision); raises EngineUnavailable when the engine is not installed
    or has no runner at that precision."""
    if engine not in _RUNNERS:
        raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    if precision == "int8" and engine not in INT8_ENGINES:
        raise EngineUnavailable(
            f"{engine} has no int8 runner here (int8: {', '.join(INT8_ENGINES)})"
        )
    if engine == "torch":
        try:
            import torch  # noqa: F401
        except ImportError as e:
            raise EngineUnavailable(f"torch is not installed: {e}") from None
    return _RUNNERS[engine](task, threads, x, precision=precision, **kw)


def top1_agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    """Share of the images (rows) whose top-1 class is the reference's."""
    a = np.asarray(logits).reshape(len(reference), -1).argmax(1)
    return float((a == np.asarray(reference).argmax(1)).mean())


def check_agreement(outputs: dict[str, np.ndarray], reference: np.ndarray) -> dict[str, float]:
    """Max |difference| to the reference logits relative to their scale, per engine."""
    scale = float(np.abs(reference).max()) or 1.0
    return {
        e: float(np.abs(np.asarray(o, dtype=np.float64).reshape(reference.shape) - reference).max())
        / scale
        for e, o in outputs.items()
    }
