"""The device side of spaedge: the C++ runtime behind a small numpy API.

    from spaedge.runtime import Runtime
    rt = Runtime("base.safetensors")            # read + validate the base once
    name = rt.load_task("digits.safetensors")   # validate, keep, switch to it
    logits = rt.run(rt.normalize(images))       # (N, classes) float32
    ms = rt.switch("flowers")                   # another loaded task, ~ms

Needs numpy and the compiled ``spaedge._runtime`` only (no torch).

Input contract of :meth:`Runtime.run`
-------------------------------------
- A normalised image batch in NCHW order of exactly the active task's size:
  ``(C, H, W)`` (one image; returns ``(classes,)``) or ``(N, C, H, W)``
  (returns ``(N, classes)``).
- dtype float32. Other *floating* dtypes (float16, float64) are converted to
  float32 silently (the values mean the same thing). Integer, bool and complex
  arrays are refused with a ValueError: raw uint8 pixels must be normalised
  first with :meth:`Runtime.normalize`.
- Non-contiguous arrays (slices, transposes) are copied to C order.
- A numpy masked array with masked values is refused (ValueError): fill them
  explicitly (``x.filled(value)``); one with no masked value runs its data.
- NaN or Inf in the input raise ValueError by default (``check_finite=True``;
  the check costs one pass over the input). With ``check_finite=False`` they
  are passed through and the logits are then unspecified.
- Logits are returned finite or not at all: a non-finite logit (an input
  too large for float32 to carry through the network, or NaN let through)
  raises ValueError naming the image.

Errors: a bad, corrupt or mismatched bundle raises :class:`BundleError` (a
ValueError) whose message names the file and the field; bad arguments raise
ValueError; an unknown task name raises KeyError.

Thread safety: one Runtime serves one call at a time (an internal mutex), so it
may be shared between threads; :meth:`run` releases the GIL while it computes.
A run that races with a switch/load/unload in another thread runs wholly
before or wholly after it: it returns exactly the logits (and class count) of
the task that was active when it ran, or raises RuntimeError if none was.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from spaedge import _runtime

# spaedge.errors.BundleError (shared with the toolchain), as the extension raises it.
BundleError = _runtime.BundleError

__all__ = [
    "Runtime",
    "BundleError",
    "inspect_bundle",
    "check_task_metadata",
    "FORMAT_VERSION",
    "LIMITS",
    "FAMILIES",
]

#: The bundle format version the runtime reads (docs/format.md).
FORMAT_VERSION: str = _runtime.FORMAT_VERSION
#: The runtime's limits, from the compiled module (csrc/runtime/limits.h):
#: max_header_bytes, max_input_channels, max_input_side, max_channels,
#: max_kernel, max_rank, max_prototypes, max_classes, max_arena_bytes. The
#: toolchain reads them here instead of restating them.
LIMITS: dict[str, int] = dict(_runtime.LIMITS)
#: The task bundle's tensor families as the runtime lists them
#: (csrc/runtime/families/families.inc): name, conv_tensors (suffixes of
#: ``<conv>.<suffix>``), model_tensors (patterns), metadata (key or "").
FAMILIES: list[dict] = [dict(f) for f in _runtime.FAMILIES]


def check_task_metadata(metadata: dict[str, str], where: str) -> dict:
    """A task bundle's metadata checked by the runtime's own validator, as it
    checks it when loading (labels, input, method, base_hash, info, rank, the
    families' metadata keys), without a base. Raises BundleError naming
    ``where`` and the field; returns ``{"rank": metadata 'rank' or 0}``."""
    return _runtime.check_task_metadata(dict(metadata), where)


def inspect_bundle(path: str | os.PathLike, verify: bool = True) -> dict:
    """A bundle's header and metadata, checked by the C++ reader without
    loading its data (what ``spaedge info`` shows).

    Regular files only (a FIFO or device is refused without blocking); reads
    the header (at most 100,000,000 bytes) and, with ``verify``, streams the
    data section through the content hash in constant memory. Checks the
    container, the hash and the metadata of the bundle's kind (a base's graph
    and weight table; a task's base_hash, labels, input, info...), not tensor
    values or a task's fit to a base (load it for that). Raises BundleError
    naming the file and the field.

    Keys: path, format, version, content_hash, hash_verified, file_bytes,
    header_bytes, metadata (every key, as stored), tensors ([(name, dtype,
    shape)] in file order), numbers; a base adds model, input_channels, nodes,
    convs; a task adds task, method, base_hash, labels, input (channels,
    height, width, mean, std), info (the parsed JSON object), shared_adapters."""
    return _runtime.inspect_bundle(os.fspath(path), bool(verify))


class Runtime:
    """One frozen base with any number of loaded tasks, one of them active.

    ``threads``: worker threads for the kernels; None or 0 = all hardware threads.
    ``mode``: how low-rank adapters are applied, see :attr:`mode`.
    """

    def __init__(
        self, base_path: str | os.PathLike, threads: int | None = None, mode: str = "merged"
    ):
        self._rt = _runtime.Runtime(os.fspath(base_path), _threads_arg(threads))
        if mode != "merged":
            self.mode = mode
        self._info: dict[
            str, dict
        ] = {}  # task name -> task_info (bundles are immutable once loaded)
        # Makes "look up the active task's shape, then run it" atomic with respect to
        # switches in other threads (the C++ mutex covers each call, not the pair).
        # The C++ side serialises every call anyway, so this costs no parallelism.
        self._lock = threading.RLock()

    # ---- tasks ---------------------------------------------------------------
    def load_task(self, path: str | os.PathLike) -> str:
        """Validate a task bundle against the base, keep it, make it active; returns its name.

        A task with the same name is replaced."""
        with self._lock:
            name = self._rt.load_task(os.fspath(path))
            self._info.pop(name, None)
            return name

    def switch(self, name: str) -> float:
        """Make a loaded task active (gather + merge + fold + pack); returns milliseconds."""
        with self._lock:
            self._check_name(name)
            return self._rt.switch_to(name)

    def unload(self, name: str) -> None:
        """Forget a loaded task (if it was active, no task is active afterwards)."""
        with self._lock:
            self._check_name(name)
            self._rt.unload_task(name)
            self._info.pop(name, None)

    @property
    def tasks(self) -> list[str]:
        """Names of the loaded tasks, in load order."""
        return self._rt.tasks()

    @property
    def active_task(self) -> str | None:
        """Name of the active task, or None."""
        return self._rt.active_task() or None

    def task_info(self, name: str | None = None) -> dict:
        """Facts about a loaded task (the active one by default).

        Keys: name, path, method, info (JSON text), labels, channels, height,
        width, mean, std, classes, bundle_bytes, macs, params, input_shape
        ((C, H, W)) and input (the bundle's 'input' metadata as a dict:
        channels, height, width, mean, std)."""
        return _with_input(self._rt.task_info(self._resolve(name)))

    # ---- facts about the runtime -----------------------------------------------
    @property
    def isa(self) -> str:
        """Kernel path in use: 'scalar', 'avx2', 'avx512' or 'neon' (csrc/kernels/isas.inc;
        the highest this build and CPU support, or the one SPAEDGE_ISA forces)."""
        return self._rt.isa()

    @property
    def threads(self) -> int:
        return self._rt.threads()

    @threads.setter
    def threads(self, n: int | None) -> None:
        self._rt.set_threads(_threads_arg(n))

    @property
    def mode(self) -> str:
        """'merged' (default): adapters are merged into the weights at switch time,
        fastest inference. 'lowrank': weights and adapter factors are packed
        separately and each conv computes conv(W', x) + B'(A' x_centre) in one
        kernel pass. Setting it re-applies the active task."""
        return self._rt.mode()

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in ("merged", "lowrank"):
            raise ValueError(f"mode must be 'merged' or 'lowrank', got {mode!r}")
        self._rt.set_mode(mode)

    @property
    def base_hash(self) -> str:
        return self._rt.base_hash()

    @property
    def base_model(self) -> str:
        return self._rt.base_model()

    @property
    def base_path(self) -> str:
        return self._rt.base_path()

    # ---- inference -------------------------------------------------------------
    def run(self, x, check_finite: bool = True) -> np.ndarray:
        """Logits of the active task for a normalised NCHW batch (see the module doc)."""
        with self._lock:
            return self._run_locked(x, check_finite)

    def _run_locked(self, x, check_finite: bool) -> np.ndarray:
        info = self._active_info()
        c, h, w = info["channels"], info["height"], info["width"]
        expect = f"float32 array of shape ({c}, {h}, {w}) or (N, {c}, {h}, {w}) (NCHW) for task {info['name']!r}"
        if isinstance(x, np.ma.MaskedArray):
            # np.asarray would drop the mask and run whatever hides under it (NaN, say)
            masked = int(np.ma.count_masked(x))
            if masked:
                raise ValueError(
                    f"Runtime.run: a masked array with {masked} masked values: fill them "
                    "explicitly first (x.filled(value)), the runtime will not guess"
                )
            x = np.ma.getdata(x)
        a = np.asarray(x) if not isinstance(x, np.ndarray) else x
        if a.dtype.kind != "f":
            hint = (
                " (raw pixels must be normalised first: use Runtime.normalize(images))"
                if a.dtype.kind in "ui"
                else ""
            )
            raise ValueError(f"Runtime.run: expected a {expect}, got dtype {a.dtype}{hint}")
        if a.ndim not in (3, 4):
            raise ValueError(f"Runtime.run: expected a {expect}, got {a.ndim}-D shape {a.shape}")
        single = a.ndim == 3
        if a.shape[-3:] != (c, h, w):
            hint = ""
            if a.shape[-3:] == (h, w, c):
                hint = " (that looks like NHWC: transpose to NCHW, or use Runtime.normalize)"
            raise ValueError(f"Runtime.run: expected a {expect}, got shape {a.shape}{hint}")
        # C order, native float32 and 4-byte aligned: the kernels read floats
        # directly (a view into a byte buffer can be misaligned; it is copied).
        a = np.require(a, dtype=np.float32, requirements=["C", "A"])
        if single:
            a = a[None]
        n = a.shape[0]
        out = np.empty((n, info["classes"]), dtype=np.float32)
        if n == 0:
            return out[0] if single else out
        if check_finite and not np.isfinite(a).all():
            raise ValueError(
                "Runtime.run: input contains NaN or Inf "
                "(pass check_finite=False to run it anyway; the logits are then unspecified)"
            )
        self._rt.run(a, n, out)
        return out[0] if single else out

    def predict(self, x, k: int = 1) -> list:
        """Top-k (label, logit) pairs per image of a normalised batch (a list per image)."""
        with self._lock:  # the labels of the task that produced the logits
            logits = self.run(x)
            labels = self._active_info()["labels"]
        rows = logits[None] if logits.ndim == 1 else logits
        k = max(1, min(int(k), rows.shape[1]))
        result = []
        for row in rows:
            order = np.argsort(-row, kind="stable")[:k]
            result.append([(labels[i], float(row[i])) for i in order])
        return result[0] if logits.ndim == 1 else result

    def normalize(self, images, task: str | None = None) -> np.ndarray:
        """Images to the normalised float32 NCHW input of a task (the active one by default).

        ``images``: uint8 in 0..255 or floats in 0..1, one image or a batch, in
        CHW/NCHW or HWC/NHWC order (found from where the channel count sits;
        CHW wins if both fit), or (H, W) / (N, H, W) for a one-channel task.
        The size must already be the task's input size (no resizing). Returns
        (C, H, W) for one image, (N, C, H, W) for a batch."""
        info = self.task_info(task)
        c, h, w = info["channels"], info["height"], info["width"]
        a = np.asarray(images)
        if a.dtype == np.uint8:
            a = a.astype(np.float32) / np.float32(255.0)
        elif a.dtype.kind == "f":
            a = a.astype(np.float32, copy=False)
        else:
            raise ValueError(
                f"Runtime.normalize: expected uint8 (0..255) or float (0..1) images, got dtype {a.dtype}"
            )
        if (
            c == 1
            and a.ndim in (2, 3)
            and a.shape[-2:] == (h, w)
            and not (a.ndim == 3 and a.shape == (1, h, w))
        ):
            a = a[..., None, :, :]  # (H, W) or (N, H, W) grayscale
        if a.ndim not in (3, 4):
            raise ValueError(
                f"Runtime.normalize: expected one image or a batch of ({c}, {h}, {w}) or "
                f"({h}, {w}, {c}) images, got shape {a.shape}"
            )
        if a.shape[-3:] == (c, h, w):
            pass
        elif a.shape[-3:] == (h, w, c):
            a = np.moveaxis(a, -1, -3)
        else:
            raise ValueError(
                f"Runtime.normalize: images must be {c}x{h}x{w} (CHW) or {h}x{w}x{c} (HWC) "
                f"for task {info['name']!r}, got shape {a.shape}; resize them first"
            )
        mean = np.asarray(info["mean"], dtype=np.float32).reshape(c, 1, 1)
        std = np.asarray(info["std"], dtype=np.float32).reshape(c, 1, 1)
        return np.ascontiguousarray((a - mean) / std, dtype=np.float32)

    # ---- helpers ---------------------------------------------------------------
    def _resolve(self, name: str | None) -> str:
        if name is None:
            active = self._rt.active_task()
            if not active:
                raise RuntimeError("no active task: call Runtime.load_task first")
            return active
        self._check_name(name)
        return name

    def _check_name(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"task name must be a str, got {type(name).__name__}")
        if not self._rt.has_task(name):
            loaded = ", ".join(self._rt.tasks()) or "none"
            raise KeyError(f"no task named {name!r} is loaded (loaded: {loaded})")

    def _active_info(self) -> dict:
        active = self._rt.active_task()
        if not active:
            raise RuntimeError("no active task: call Runtime.load_task first")
        info = self._info.get(active)
        if info is None:
            info = self._info[active] = _with_input(self._rt.task_info(active))
        return info

    def __repr__(self) -> str:
        return (
            f"Runtime(base={self.base_path!r}, model={self.base_model!r}, isa={self.isa!r}, "
            f"threads={self.threads}, mode={self.mode!r}, tasks={self.tasks}, active={self.active_task!r})"
        )


def _with_input(d: dict) -> dict:
    d["input_shape"] = (d["channels"], d["height"], d["width"])
    d["input"] = {k: d[k] for k in ("channels", "height", "width", "mean", "std")}
    return d


def _threads_arg(n: int | None) -> int:
    if n is None:
        return 0
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"threads must be an int or None, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"threads must be >= 0 (0 or None = all hardware threads), got {n}")
    return int(n)
