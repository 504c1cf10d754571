"""int8 in the benchmarks: the int8 pair of a synthetic task, the int8 peers
(onnxruntime static QDQ, LiteRT full-integer) calibrated on the same images,
and `spaedge bench --precision`. No timing is asserted."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnx
import pytest

from spaedge import bench
from spaedge.bench.engines import calibration_of
from spaedge.bench.synthetic import make_int8_pair, make_synthetic_task
from spaedge.cli import main
from spaedge.pack.format import read_bundle, read_metadata, write_bundle
from spaedge.pack.layout import base_bundle_path, task_bundle_path
from spaedge.pack.quantize import RANDOM_CALIBRATION_SELECTION

# An int8 engine agrees with the fp32 model when, on CHECK seeded random
# inputs like the calibration images, its top-1 class is fp32's on at least
# AGREE of them (84 %) and every logit is within LOGITS of the largest fp32
# |logit|. Measured on this task: spaedge 32/32, onnxruntime 29/32, LiteRT
# 31/32; logits within 1.7 %, 8.0 % and 8.0 % (the peers quantize the logits
# to 8 bits too, spaedge's head is float). This random task's top-2 margins
# are small: the accuracy targets are checked on trained tasks.
CHECK, AGREE, LOGITS = 32, 27, 0.15


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A digits-like synthetic task on the built-in base (30 % density), a
    second task for switching, and the int8 pair of the first."""
    d = tmp_path_factory.mktemp("int8-bench")
    kw = dict(base="tiny", input_size=(1, 28, 28), base_file="base.safetensors")
    fp32 = make_synthetic_task(d, "digits", density=0.3, classes=10, **kw)
    make_synthetic_task(d, "other", density=0.5, classes=4, seed=1, **kw)
    return d, fp32, make_int8_pair(fp32)


def test_the_int8_pair_is_quantized_from_the_fp32_one(pair):
    d, fp32, int8 = pair
    base8, task8 = read_metadata(int8.base_path), read_metadata(int8.task_path)
    assert base8["precision"] == task8["precision"] == "int8"
    assert base8["quantized_from"] == read_metadata(fp32.base_path)["content_hash"]
    assert task8["base_hash"] == base8["content_hash"]
    cal = json.loads(task8["info"])["calibration"]
    assert cal == {
        "images": 32,
        "split": "random",
        "selection": RANDOM_CALIBRATION_SELECTION,
        "seed": 0,
        "statistic": "minmax",
    }
    # the images are rebuilt from the bundle's info, byte for byte (a device
    # without torch calibrates the peers on them)
    assert calibration_of(json.loads(task8["info"]), "digits", (1, 28, 28)).tobytes() == (
        int8.calibration.tobytes()
    )
    # without its seed the random images cannot be rebuilt: none, not others
    del cal["seed"]
    assert calibration_of({"calibration": cal}, "digits", (1, 28, 28)) is None
    assert int8.precision == "int8" and int8.fp32 is fp32 and int8.base_bytes < fp32.base_bytes / 3
    # made once: the same fp32 bundles and calibration reuse the pair
    mtime = os.stat(int8.task_path).st_mtime_ns
    again = make_int8_pair(fp32)
    assert os.stat(again.task_path).st_mtime_ns == mtime
    # another seed is another calibration, written in its place
    before = read_bundle(int8.task_path)[0]["x.act_scale"]
    other = make_int8_pair(fp32, seed=1)
    assert other.task_path == int8.task_path
    assert read_bundle(other.task_path)[0]["x.act_scale"] != before
    make_int8_pair(fp32)  # back to seed 0 for the other tests
    assert read_bundle(int8.task_path)[0]["x.act_scale"] == before
    with pytest.raises(ValueError, match=r"calibration images must be \[N, 1, 28, 28\]"):
        make_int8_pair(fp32, np.zeros((4, 3, 28, 28), np.float32))


def test_an_int8_pair_read_from_bundles_is_the_same_task(pair):
    d, fp32, int8 = pair
    t = bench.bench_task_from_bundles(int8.base_path, int8.task_path, d, fp32=fp32)
    assert t.precision == "int8" and t.fp32 is fp32
    assert t.calibration.tobytes() == int8.calibration.tobytes()
    with pytest.raises(ValueError, match="pass its fp32 twin"):
        bench.bench_task_from_bundles(int8.base_path, int8.task_path, d)


@pytest.mark.parametrize("engine", bench.INT8_ENGINES)
def test_int8_engines_agree_with_fp32(pair, engine):
    """Every int8 engine on CHECK inputs: top-1 as fp32's on >= AGREE, logits
    within LOGITS (a model quantized wrongly, e.g. a misplaced weight layout or
    bias scale, is far outside both)."""
    _, fp32, int8 = pair
    x = np.random.default_rng(5).standard_normal((CHECK, *fp32.input_size)).astype(np.float32)
    want = bench.make_runner("torch", fp32, 1, x[:1]).predict(x).astype(np.float64)
    run = bench.make_runner(engine, int8, 1, x[:1], precision="int8")
    assert run.precision == "int8"
    got = np.asarray(run.predict(x), np.float64)
    agree = bench.top1_agreement(got, want)
    err = float(np.abs(got - want).max()) / float(np.abs(want).max())
    print(f"{engine} int8: top-1 {agree:.3f} of {CHECK}, logits within {err:.2%}")
    assert agree * CHECK >= AGREE and err <= LOGITS
    assert (run() == run()).all()  # the timed call runs the prepared input


def test_onnxruntime_int8_is_static_qdq_per_channel(pair):
    _, _, int8 = pair
    m = onnx.load(int8.onnx_int8_path())
    ops = [n.op_type for n in m.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and "Conv" in ops
    assert "DynamicQuantizeLinear" not in ops
    inits = {i.name: i for i in m.graph.initializer}
    weights = [
        n
        for n in m.graph.node
        if n.op_type == "DequantizeLinear"
        and inits.get(n.input[0]) is not None
        and inits[n.input[0]].data_type == onnx.TensorProto.INT8
    ]
    assert weights and all(
        len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1
        for n in weights
        if len(inits[n.input[0]].dims) == 4
    )
    acts = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    assert all(inits[n.input[2]].data_type == onnx.TensorProto.UINT8 for n in acts)


def test_a_runner_refuses_a_task_of_another_precision(pair):
    _, fp32, int8 = pair
    x = np.zeros((1, *fp32.input_size), np.float32)
    with pytest.raises(ValueError, match="task digits is fp32, the runner was asked for int8"):
        bench.make_runner("spaedge", fp32, 1, x, precision="int8")
    with pytest.raises(bench.EngineUnavailable, match="no int8 runner"):
        bench.make_runner("torch", int8, 1, x, precision="int8")


def _bench(d, tmp_path, *extra):
    j = tmp_path / "r.json"
    args = ["bench", "--bundles", str(d), "--task", "digits", "--runs", "3", "--switches", "3"]
    if "--task" in extra:
        args = args[:3] + args[5:]
    assert main([*args, "--json", str(j), *extra]) == 0
    return json.loads(j.read_text())


def test_bench_times_both_precisions_by_default(pair, tmp_path, capsys):
    d, _, _ = pair
    r = _bench(d, tmp_path, "--exports", str(tmp_path / "exports"))
    out = capsys.readouterr().out
    head = next(line for line in out.splitlines() if line.startswith("engine "))
    assert head.split()[:3] == ["engine", "precision", "threads"] and "top-1 vs fp32" in head
    assert r["precisions"] == ["fp32", "int8"]
    rows = {(x["engine"], x["precision"]): x for x in r["latency"]}
    assert {("spaedge", "int8"), ("onnxruntime", "int8"), ("litert", "int8")} <= set(rows)
    assert {("spaedge", "fp32"), ("onnxruntime", "fp32"), ("torch", "fp32")} <= set(rows)
    assert all("precision" in x for x in r["latency"])
    # ratios within a precision: each onnxruntime row is its precision's 1.0
    assert rows["onnxruntime", "int8"]["ratio"] == pytest.approx(1.0)
    assert rows["spaedge", "int8"]["ratio"] == pytest.approx(
        rows["spaedge", "int8"]["median_ms"] / rows["onnxruntime", "int8"]["median_ms"]
    )
    for (e, p), x in rows.items():
        assert x["top1_agreement"] >= 0.8, (e, p, x["top1_agreement"])
    assert r["switch"]["int8"]["spaedge_switch"]["runs"] == 3
    assert (
        r["task"]["int8"]["precision"] == "int8" and r["task"]["int8"]["calibration_images"] == 32
    )
    assert "task switch, int8 (digits" in out and "int8: task bundle" in out


def test_bench_precision_fp32_times_fp32_only(pair, tmp_path):
    d, _, _ = pair
    r = _bench(d, tmp_path, "--precision", "fp32", "--engines", "spaedge", "onnxruntime")
    assert {x["precision"] for x in r["latency"]} == {"fp32"} and "int8" not in r["switch"]


def test_bench_int8_of_a_trained_task_needs_its_pair(pair, tmp_path, capsys):
    """A task that is not synthetic is never calibrated on random images: int8
    asked for without --int8-bundles is a one-line error saying how; by
    default its int8 rows are left out with a note. (The task is renamed so
    that no dataset is looked for to check on.)"""
    d, fp32, int8 = pair
    trained, trained8 = tmp_path / "trained", tmp_path / "trained8"
    for src, dst in ((d, trained), (d / "int8", trained8)):
        dst.mkdir()
        tensors, meta = read_bundle(src / "base.safetensors")
        h = write_bundle(dst / "base.safetensors", tensors, _fresh(meta))
        tensors, meta = read_bundle(src / "digits.safetensors")
        info = json.loads(meta["info"])
        del info["synthetic"]
        meta.update(info=json.dumps(info), task="mine", base_hash=h)
        write_bundle(dst / "mine.safetensors", tensors, _fresh(meta))
    args = ["bench", "--bundles", str(trained), "--task", "mine", "--runs", "2"]
    args += ["--engines", "spaedge", "onnxruntime"]
    assert main([*args, "--precision", "int8"]) == 2
    err = capsys.readouterr().err
    assert "spaedge quantize --bundles" in err and "--int8-bundles" in err
    assert main(args) == 0
    assert "int8 rows left out" in capsys.readouterr().out
    r = _bench(
        trained,
        tmp_path,
        "--task",
        "mine",
        "--engines",
        "spaedge",
        "onnxruntime",
        "--int8-bundles",
        str(trained8),
    )
    assert {(x["engine"], x["precision"]) for x in r["latency"]} == {
        ("spaedge", "fp32"),
        ("onnxruntime", "fp32"),
        ("spaedge", "int8"),
        ("onnxruntime", "int8"),
    }
    # onnxruntime int8 was calibrated on the images the int8 task names (random, seed 0)
    assert r["task"]["int8"]["calibration_images"] == 32


def test_bench_finds_the_int8_pair_spaedge_quantize_wrote(pair, tmp_path, capsys):
    """Without --int8-bundles, `spaedge bench --bundles DIR` times the int8
    pair `spaedge quantize` wrote beside the fp32 one (spaedge.pack.layout's
    names), not one of its own; --int8-bundles reads the same names; a pair
    of another base is refused."""
    d, _, _ = pair
    b = tmp_path / "b"
    b.mkdir()
    for n in ("base.safetensors", "digits.safetensors"):
        shutil.copy(d / n, b / n)
    quantize = ["quantize", "--bundles", str(b), "--task", "digits", "--calibration", "random"]
    assert main(quantize) == 0
    assert main([*quantize, "--out", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    base8, task8 = base_bundle_path(b, "int8"), task_bundle_path(b, "digits", "int8")
    r = _bench(b, tmp_path, "--engines", "spaedge", "onnxruntime")
    assert f"int8: the pair {base8.name} + {task8.name} in {b}" in capsys.readouterr().out
    assert r["task"]["int8"]["task_path"] == str(task8)
    assert r["task"]["int8"]["base_path"] == str(base8)
    assert r["task"]["int8"]["calibration_images"] == 32
    assert {x["engine"]: x.get("statistic") for x in r["latency"] if x["precision"] == "int8"} == {
        "spaedge": "minmax",
        "onnxruntime": "minmax",
    }
    c = tmp_path / "c"
    r = _bench(b, tmp_path, "--engines", "spaedge", "--int8-bundles", str(c))
    assert r["task"]["int8"]["task_path"] == str(task_bundle_path(c, "digits", "int8"))
    # an int8 base that is not the fp32 base's: a one-line error, not a silent wrong pair
    tensors, meta = read_bundle(base8)
    meta["quantized_from"] = "0" * 64
    write_bundle(base8, tensors, _fresh(meta))
    args = ["bench", "--bundles", str(b), "--task", "digits", "--engines", "spaedge"]
    assert main([*args, "--runs", "2"]) == 2
    assert "is not the int8 pair of" in capsys.readouterr().err
    help_text = " ".join(_help(capsys).split())
    assert "base.int8.safetensors and TASK.int8.safetensors" in help_text
    assert "that pair in --bundles when it is there" in help_text


def test_the_onnxruntime_peer_takes_the_same_statistic_family(pair, tmp_path, capsys):
    """onnxruntime quantizes with the range statistic of spaedge's int8 task
    where it has one of that family (MinMax, Percentile at the same P), else
    MinMax; every int8 row and the report say which each engine used."""
    from spaedge.bench.engines import _ort_calibration, int8_statistic, quantize_onnx

    assert _ort_calibration("minmax") == ("MinMax", {})
    assert _ort_calibration("percentile-99.9") == (
        "Percentile",
        {"CalibPercentile": 99.9, "CalibTensorRangeSymmetric": False},
    )
    assert _ort_calibration("mse") == ("MinMax", {})
    assert [int8_statistic(e, "mse") for e in ("spaedge", "onnxruntime", "litert")] == [
        "mse",
        "minmax",
        "minmax",
    ]
    assert int8_statistic("litert", "percentile-99.9") == "minmax"
    _, fp32, int8 = pair
    scales = {}
    for stat in ("minmax", "percentile-99"):
        out = tmp_path / f"{stat}.onnx"
        quantize_onnx(fp32.onnx_path(), out, int8.calibration, stat)
        m = onnx.load(str(out))
        scales[stat] = {
            i.name: onnx.numpy_helper.to_array(i).tobytes()
            for i in m.graph.initializer
            if i.name.endswith("_scale") and "weight" not in i.name
        }
    assert scales["minmax"].keys() == scales["percentile-99"].keys() and scales["minmax"]
    assert scales["minmax"] != scales["percentile-99"]  # the percentile ranges are others
    assert "Percentile" not in capsys.readouterr().out  # the calibrator's prints kept out
    # a pair quantized with percentile-99.9: each engine's row says what it used
    b = tmp_path / "b"
    b.mkdir()
    d = pair[0]
    for n in ("base.safetensors", "digits.safetensors"):
        shutil.copy(d / n, b / n)
    q = ["quantize", "--bundles", str(b), "--task", "digits", "--calibration", "random"]
    assert main([*q, "--calibration-statistic", "percentile-99.9"]) == 0
    capsys.readouterr()
    r = _bench(b, tmp_path, "--engines", "spaedge", "onnxruntime", "--precision", "int8")
    assert r["task"]["int8"]["statistic"] == "percentile-99.9"
    assert {x["engine"]: x["statistic"] for x in r["latency"]} == {
        "spaedge": "percentile-99.9",
        "onnxruntime": "percentile-99.9",
    }
    assert "int8 range statistic: spaedge percentile-99.9, onnxruntime percentile-99.9" in (
        capsys.readouterr().out
    )


def _help(capsys) -> str:
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    return capsys.readouterr().out


def _fresh(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k not in ("version", "content_hash")}


def test_accuracy_on_labelled_check_images(pair):
    """With labelled check images (a trained task's test split) every row has
    its accuracy next to its top-1 agreement."""
    _, fp32, int8 = pair
    x = np.random.default_rng(9).standard_normal((24, *fp32.input_size)).astype(np.float32)
    labels = bench.make_runner("torch", fp32, 1, x[:1]).predict(x).argmax(1)
    labels[:6] = (labels[:6] + 1) % 10  # a quarter wrong: fp32 scores 75 %
    r = bench.run_bench(
        fp32,
        runs=2,
        switches=2,
        engines=("spaedge", "onnxruntime"),
        int8=int8,
        precisions=("fp32", "int8"),
        check=(x, labels),
        check_name="labelled",
    )
    rows = {(x["engine"], x["precision"]): x for x in r["latency"]}
    assert (
        rows["spaedge", "fp32"]["accuracy"] == 0.75
        and rows["spaedge", "fp32"]["check_images"] == 24
    )
    for row in rows.values():
        assert abs(row["accuracy"] - 0.75) <= 1 - row["top1_agreement"]
    text = bench.report_text(r)
    assert "accuracy" in text.splitlines()[3] and "24 labelled" in text
