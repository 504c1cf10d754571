"""``spaedge bench``: latency of a packed task, spaedge vs onnxruntime, LiteRT and PyTorch,
in fp32 and int8.

Works on a device without torch (the PyTorch column is then left out and
exports made elsewhere are reused, ``--exports``).

int8 (``--precision int8`` or ``both``, the default): the int8 pair is
``--int8-bundles DIR8`` (``spaedge quantize --out DIR8``), or the one
``spaedge quantize`` / ``spaedge pack --precision int8`` wrote beside the
fp32 pair in ``--bundles`` (``base.int8.safetensors`` and
``TASK.int8.safetensors``, ``spaedge.pack.layout``,
``spaedge.bench.engines.find_int8_pair``); without either, a synthetic speed task's pair is made here,
calibrated on seeded random images (``spaedge.bench.synthetic.make_int8_pair``),
and a trained task's int8 rows are left out by default (asked for with
``--precision int8``/``both``, it is an error saying how to make the pair).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from spaedge.argtypes import path_text, positive_int
from spaedge.pack.format import atomic_write_bytes, read_metadata
from spaedge.pack.layout import base_bundle_path, task_bundle_path


def add_parser(subparsers) -> None:
    from spaedge.bench import ENGINES

    b = subparsers.add_parser(
        "bench",
        help="latency of a packed task: spaedge vs onnxruntime, LiteRT, PyTorch (fp32 and int8)",
        description="Time a packed task at batch 1 in the C++ runtime and, on the same pruned model, in "
        "onnxruntime, the LiteRT interpreter and PyTorch eager (those that are installed), in fp32 "
        "and in int8 (spaedge's int8 pair, onnxruntime static QDQ int8, LiteRT full-integer int8, "
        "calibrated on the same images); print median/p90 latency, GFLOP/s, the ratio to "
        "onnxruntime at the same precision and each engine's top-1 agreement with fp32, and the "
        "task-switch time against creating an onnxruntime session.",
    )
    b.add_argument(
        "--bundles", type=path_text, default="bundles", help="bundle directory (default ./bundles)"
    )
    b.add_argument("--task", default="digits", help="task name (default digits)")
    b.add_argument(
        "--threads",
        type=positive_int,
        nargs="+",
        default=[1],
        help="thread counts to measure, e.g. --threads 1 2 (default 1)",
    )
    b.add_argument(
        "--runs",
        type=positive_int,
        default=50,
        help="timed runs per engine and thread count (default 50)",
    )
    b.add_argument(
        "--engines",
        nargs="+",
        choices=ENGINES,
        default=list(ENGINES),
        help="engines to time (default: all that are installed)",
    )
    b.add_argument(
        "--mode", choices=["merged", "lowrank"], default="merged", help="spaedge runtime mode"
    )
    b.add_argument(
        "--switches", type=positive_int, default=20, help="task switches to time (default 20)"
    )
    b.add_argument(
        "--precision",
        choices=["fp32", "int8", "both"],
        default=None,
        help="which models to time: fp32, int8 (spaedge's int8 pair, onnxruntime static QDQ int8, "
        "LiteRT full-integer int8, all calibrated on the same images) or both (default: both when "
        "an int8 pair is given, found in --bundles (spaedge quantize wrote it) or can be made "
        "here, i.e. for synthetic tasks; else fp32)",
    )
    b.add_argument(
        "--int8-bundles",
        type=path_text,
        metavar="DIR8",
        help="directory of the task's int8 pair: base.int8.safetensors and TASK.int8.safetensors, "
        "as `spaedge quantize --out DIR8` and `spaedge pack --precision int8` write them (or "
        "int8 bundles named base.safetensors and TASK.safetensors); default: that pair in "
        "--bundles when it is there, else made here for a synthetic task",
    )
    b.add_argument(
        "--check-images",
        type=positive_int,
        default=256,
        metavar="N",
        help="before timing, every engine runs N images and its top-1 is compared with the fp32 "
        "model's: the task's first N test images when its data is here (accuracy is then "
        "reported too), else 16 seeded random inputs (default 256)",
    )
    b.add_argument("--json", type=path_text, metavar="FILE", help="write the results as JSON")
    b.add_argument(
        "--png", type=path_text, metavar="FILE", help="write a bar chart of the latencies (PNG)"
    )
    b.add_argument(
        "--exports",
        type=path_text,
        metavar="DIR",
        help="keep the ONNX/TFLite exports here, and reuse those newer than the task bundle "
        "(default: a temporary directory); lets a device without torch time the peers",
    )
    b.set_defaults(func=main)


def main(args) -> int:
    from spaedge.bench import bench_task_from_bundles, report_text, run_bench
    from spaedge.bench.report import png_chart

    bundles = Path(args.bundles)
    base_path, task_path = base_bundle_path(bundles), task_bundle_path(bundles, args.task)
    for p in (base_path, task_path):
        if not p.exists():
            raise FileNotFoundError(
                f"{p} does not exist: pack the task first "
                f"(spaedge pack --task {args.task} --out {bundles})"
            )
    with tempfile.TemporaryDirectory(prefix="spaedge-bench-") as tmp:
        workdir = Path(args.exports) if args.exports else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        task = bench_task_from_bundles(base_path, task_path, workdir)
        precisions, int8, note = _int8_task(args, task, workdir)
        check, check_name = _check_set(task, args.check_images)
        result = run_bench(
            task,
            threads=args.threads,
            runs=args.runs,
            engines=args.engines,
            mode=args.mode,
            switches=args.switches,
            other_tasks=_other_tasks(bundles, base_path, task_path),
            int8=int8,
            precisions=precisions,
            check=check,
            check_name=check_name,
        )
    if note:
        print(note)
    print(report_text(result))
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(result, indent=2) + "\n").encode())
        print(f"wrote {args.json}")
    if args.png:
        t = result["task"]
        png_chart(
            args.png,
            f"{t['name']} ({t['base_model']}, {t['input_size']}, batch 1) on {result['machine']['cpu']}",
            result["latency"],
        )
        print(f"wrote {args.png}")
    return 0


def _int8_task(args, task, workdir: Path):
    """(precisions to time, the int8 BenchTask or None, a note to print)."""
    from spaedge.bench import bench_task_from_bundles
    from spaedge.bench.engines import find_int8_pair

    asked = args.precision
    if asked == "fp32":
        return ("fp32",), None, ""
    precisions = ("int8",) if asked == "int8" else ("fp32", "int8")
    pair, where = None, ""
    if args.int8_bundles:
        d = Path(args.int8_bundles)
        pair, where = find_int8_pair(d, args.task), f"--int8-bundles {d}"
        if pair is None:
            raise FileNotFoundError(
                f"no int8 pair of {args.task} in {d} ({base_bundle_path(d, 'int8').name} and "
                f"{task_bundle_path(d, args.task, 'int8').name}): make it first "
                f"(spaedge quantize --bundles {args.bundles} --task {args.task} --out {d})"
            )
    else:
        pair, where = find_int8_pair(args.bundles, args.task), f"{args.bundles}"
    if pair is not None:
        base8, task8 = pair
        _check_int8_pair(task, base8, task8, args)
        note = f"int8: the pair {base8.name} + {task8.name} in {where}"
        return precisions, bench_task_from_bundles(base8, task8, workdir, fp32=task), note
    if _is_synthetic(task.task_path):
        note = "int8: the pair was made here, calibrated on seeded random images (a synthetic task)"
        try:
            from spaedge.bench.synthetic import make_int8_pair
        except ImportError:  # a device: the pair made by the toolchain in --exports DIR/int8
            cached = workdir / "int8"
            base8, task8 = cached / Path(task.base_path).name, cached / Path(task.task_path).name
            if base8.exists() and task8.exists():
                note = f"int8: the pair in {cached} (made by the toolchain)"
                return precisions, bench_task_from_bundles(base8, task8, workdir, fp32=task), note
        else:
            return precisions, make_int8_pair(task), note
    hint = (
        f"make the int8 pair with `spaedge quantize --bundles {args.bundles} --task {args.task}` "
        "(bench then finds it beside the fp32 pair) or with --out DIR8 and pass --int8-bundles DIR8"
    )
    if asked is not None:
        raise ValueError(f"{args.task} is a trained task with no int8 pair given: {hint}")
    return ("fp32",), None, f"int8 rows left out: {hint}"


def _check_int8_pair(task, base8: Path, task8: Path, args) -> None:
    """The int8 pair must be the int8 of the fp32 pair being timed: its base
    quantized from the fp32 base, its task on that int8 base."""
    meta8 = read_metadata(task8)
    if meta8.get("precision") != "int8":
        raise ValueError(
            f"{task8} is not an int8 task bundle (precision {meta8.get('precision', 'fp32')!r}): "
            "--int8-bundles names the directory `spaedge quantize --out` wrote"
        )
    base_meta = read_metadata(base8)
    fp32_hash = read_metadata(task.base_path).get("content_hash")
    if base_meta.get("quantized_from") != fp32_hash or meta8.get("base_hash") != base_meta.get(
        "content_hash"
    ):
        raise ValueError(
            f"{base8} + {task8} is not the int8 pair of {task.base_path} + {task.task_path}: "
            f"make it again (spaedge quantize --bundles {args.bundles} --task {args.task})"
        )


def _check_set(task, n: int):
    """(images, labels) of a trained task's first ``n`` test images and their
    description, or (None, default) when the task is synthetic or its data or
    the toolchain is not here."""
    if _is_synthetic(task.task_path):
        return None, "seeded random inputs"
    try:
        from spaedge.tasks import get_task

        t = get_task(task.name, input_size=tuple(task.input_size))
        ds = t.split("test")
        x, y = ds.batch(list(range(min(n, len(ds)))))[:2]
        return (x.numpy(), y.numpy()), f"{task.name} test images"
    except Exception:  # noqa: BLE001 - no data, no torch, an unknown task: random inputs
        return None, "seeded random inputs"


def _is_synthetic(task_path) -> bool:
    try:
        return bool(json.loads(read_metadata(task_path).get("info") or "{}").get("synthetic"))
    except (ValueError, AttributeError):
        return False


def _other_tasks(bundles: Path, base_path: Path, task_path: Path) -> list[str]:
    """Other task bundles of the directory made for the same base (for switch timing)."""
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
