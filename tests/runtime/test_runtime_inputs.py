"""Runtime inputs and concurrency beyond tests/test_runtime.py.

test_runtime.py covers wrong shapes, dtypes, non-contiguous, NaN and one
runner-vs-switcher pair. Here: the same input rules checked against the
numpy reference, read-only and unaligned buffers, and several threads calling
run / switch / load / unload on one Runtime, where every result must be the
exact output of some task (never a mix or uninitialised memory) and every
failure a clear error. numpy + safetensors + the extension only (no torch).
"""

from __future__ import annotations

import sys
import threading

import _numpy_reference as ref  # noqa: E402
import numpy as np
import pytest

import spaedge.runtime as runtime

Runtime, BundleError = runtime.Runtime, runtime.BundleError


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """A toy base and three tasks with the SAME input size: 5, 3 and 5 classes."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(7)
    graph, base, h = ref.toy_base(d, rng)
    out = {"dir": d, "graph": graph, "base": base, "base_path": d / "base.safetensors", "t": {}}
    for name, classes, keep in (("five", 5, 0.6), ("three", 3, 0.5), ("other5", 5, 0.8)):
        t = ref.task_tensors(graph, rng, keep_frac=keep, rank=2, method="splora", classes=classes)
        p = d / f"{name}.safetensors"
        ref.write(p, t, ref.task_meta(h, name, classes, (3, 16, 16)))
        out["t"][name] = (p, t)
    return out


def x_of(n=2, seed=3):
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


def want(tasks, name, x):
    return ref.reference_logits(tasks["graph"], tasks["base"], tasks["t"][name][1], x)


def loaded(tasks, threads=1, names=("five", "three", "other5")):
    rt = Runtime(tasks["base_path"], threads=threads)
    for n in names:
        rt.load_task(tasks["t"][n][0])
    return rt


# ---- inputs ------------------------------------------------------------------------------


def test_read_only_and_unaligned_input(tasks):
    rt = loaded(tasks, names=("five",))
    x = x_of()
    ro = x.copy()
    ro.setflags(write=False)
    assert np.array_equal(rt.run(ro), rt.run(x))
    raw = np.zeros(x.nbytes + 4, np.uint8)
    unaligned = raw[2 : 2 + x.nbytes].view(np.float32).reshape(x.shape)  # not 4-byte aligned
    unaligned[...] = x
    assert not unaligned.flags.aligned or unaligned.ctypes.data % 4
    assert np.array_equal(rt.run(unaligned), rt.run(x))
    assert ref.close(rt.run(x), want(tasks, "five", x))


def test_input_is_not_modified_and_output_is_fresh(tasks):
    rt = loaded(tasks, names=("five",))
    x = x_of()
    keep = x.copy()
    a = rt.run(x)
    b = rt.run(x)
    assert np.array_equal(x, keep)
    assert a is not b and not np.shares_memory(a, b) and np.array_equal(a, b)


def test_big_endian_and_fortran_input(tasks):
    rt = loaded(tasks, names=("five",))
    x = x_of()
    assert np.array_equal(rt.run(x.astype(">f4")), rt.run(x))
    assert np.array_equal(rt.run(np.asfortranarray(x)), rt.run(x))


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_values_anywhere(tasks, bad):
    rt = loaded(tasks, names=("five",))
    for where in [(0, 0, 0, 0), (1, 2, 15, 15)]:
        x = x_of()
        x[where] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            rt.run(x)


def test_run_without_a_task_and_after_unload(tasks):
    rt = Runtime(tasks["base_path"], threads=1)
    with pytest.raises(RuntimeError, match="no active task"):
        rt.run(x_of())
    rt.load_task(tasks["t"]["five"][0])
    rt.unload("five")
    with pytest.raises(RuntimeError, match="no active task"):
        rt.run(x_of())


def test_raw_extension_checks_buffer_sizes(tasks):
    """The binding itself (below the Python checks) refuses mismatched buffers."""
    rt = loaded(tasks, names=("five",))
    raw = rt._rt
    x = x_of(2)
    with pytest.raises(BundleError, match="input has"):
        raw.run(x, 3, np.empty((3, 5), np.float32))
    with pytest.raises(BundleError, match="logits buffer has"):
        raw.run(x, 2, np.empty((2, 4), np.float32))
    with pytest.raises(TypeError):
        raw.run(x.astype(np.float64), 2, np.empty((2, 5), np.float32))  # noconvert: no silent copy
    # A misaligned float view (found by the UBSan run of these tests): refused, not read.
    buf = np.zeros(x.nbytes + 4, np.uint8)
    misaligned = buf[2 : 2 + x.nbytes].view(np.float32).reshape(x.shape)
    misaligned[...] = x
    with pytest.raises(ValueError, match="aligned"):
        raw.run(misaligned, 2, np.empty((2, 5), np.float32))


# ---- several threads ------------------------------------------------------------------------


def test_parallel_runs_give_the_single_thread_result(tasks):
    rt = loaded(tasks, threads=2, names=("five",))
    xs = [x_of(2, seed) for seed in range(4)]
    expect = [rt.run(x) for x in xs]
    errors = []

    def worker(i):
        try:
            for _ in range(15):
                got = rt.run(xs[i])
                if not np.array_equal(got, expect[i]):
                    errors.append(f"thread {i}: result changed")
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors


def test_switch_during_runs_never_mixes_tasks(tasks):
    """Runs race with switches between tasks of the same input size but
    different class counts: each run returns exactly the logits of the task it
    ran, with that task's class count, or raises a clear error -- never
    uninitialised columns or another task's numbers under the wrong shape."""
    rt = loaded(tasks, threads=1)
    x = x_of(1, 11)
    exact = {n: rt.run(x) for n in ("five", "three", "other5") if rt.switch(n) >= 0}
    for n in exact:
        assert ref.close(exact[n], want(tasks, n, x))
    bad = []
    stop = threading.Event()

    def runner():
        while not stop.is_set():
            try:
                got = rt.run(x)
            except (ValueError, RuntimeError) as e:
                if (
                    "logits buffer" not in str(e)
                    and "input has" not in str(e)
                    and "no active task" not in str(e)
                ):
                    bad.append(repr(e))
                continue
            if not any(got.shape == v.shape and np.array_equal(got, v) for v in exact.values()):
                bad.append(f"result of no task: {got}")

    def switcher():
        for i in range(1500):
            rt.switch(("five", "three", "other5")[i % 3])
        stop.set()

    # Switch threads as often as possible so a switch lands between the shape
    # lookup and the run (it did before Runtime.run held a lock over both).
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        ts = [threading.Thread(target=runner) for _ in range(2)] + [
            threading.Thread(target=switcher)
        ]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not bad, bad[:5]


def test_load_unload_during_runs(tasks, tmp_path):
    """Loading (good and corrupt bundles) and unloading while other threads run."""
    rt = loaded(tasks, threads=1, names=("five",))
    x = x_of(1, 5)
    five = rt.run(x)
    corrupt = tmp_path / "corrupt.safetensors"
    b = bytearray(tasks["t"]["three"][0].read_bytes())
    b[-1] ^= 1
    corrupt.write_bytes(bytes(b))
    bad = []
    stop = threading.Event()

    def runner():
        while not stop.is_set():
            try:
                got = rt.run(x)
            except (ValueError, RuntimeError, KeyError) as e:
                msg = str(e)
                if not any(s in msg for s in ("logits buffer", "input has", "no active task")):
                    bad.append(repr(e))
                continue
            if (
                got.shape == (1, 5)
                and not np.array_equal(got, five)
                and not ref.close(got, want(tasks, "other5", x))
            ):
                bad.append("wrong logits")

    def loader():
        try:
            for _i in range(20):
                with pytest.raises(BundleError, match="content_hash"):
                    rt.load_task(corrupt)
                rt.load_task(tasks["t"]["three"][0])
                rt.unload("three")
                rt.load_task(tasks["t"]["other5"][0])
                rt.switch("five")
                rt.unload("other5")
        except Exception as e:  # noqa: BLE001
            bad.append(repr(e))
        finally:
            stop.set()

    ts = [threading.Thread(target=runner), threading.Thread(target=loader)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not bad, bad[:5]
    assert rt.tasks == ["five"] and rt.active_task == "five"
    assert np.array_equal(rt.run(x), five)
