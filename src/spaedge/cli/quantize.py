"""``spaedge quantize``: an fp32 base + task pair made an int8 pair (docs/int8.md).

The int8 base is the fp32 base's conv weights in s8 with per-channel scales
(written once per base, reused while its ``quantized_from`` names the fp32
base); the int8 task bundle is the fp32 task's plus the activation
parameters, calibrated on the task's training images with the range
statistic that agrees best with the fp32 model on the validation split.
``spaedge pack --precision int8`` runs the same steps after packing.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from spaedge.argtypes import path_text, positive_int
from spaedge.cli.common import CliError, human_bytes

RANDOM = "random"


def parse_calibration(text: str) -> int | str:
    """``--calibration``: a positive number of training images, or ``random``."""
    if text.strip().lower() == RANDOM:
        return RANDOM
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(
            f"expected a number of training images (a positive integer) or 'random', got {text!r}"
        )
    return n


def parse_statistic(text: str) -> str:
    """``--calibration-statistic``: ``auto`` or a range statistic."""
    from spaedge.pack.quantize import check_statistic

    if text == "auto":
        return text
    try:
        return check_statistic(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}, or auto") from None


def add_calibration_flags(parser, random: bool) -> None:
    """``--calibration`` and ``--calibration-statistic`` (``spaedge quantize``
    and ``spaedge pack --precision int8``)."""
    from spaedge.pack.quantize import CALIBRATION_IMAGES, RANDOM_CALIBRATION_IMAGES, STATISTICS

    if random:
        parser.add_argument(
            "--calibration",
            type=parse_calibration,
            default=CALIBRATION_IMAGES,
            metavar="N|random",
            help=f"calibrate on N training images of the task (default {CALIBRATION_IMAGES}, "
            f"chosen reproducibly), or on {RANDOM_CALIBRATION_IMAGES} seeded N(0,1) random images "
            "of its input size (the ones spaedge bench calibrates its int8 peers on): 'random' is "
            "for synthetic speed tasks only (bundles made without data, info 'synthetic'), whose "
            "accuracy means nothing; it is recorded in the bundle's info.calibration",
        )
    else:
        parser.add_argument(
            "--calibration",
            type=positive_int,
            default=CALIBRATION_IMAGES,
            metavar="N",
            help="with --precision int8: training images the activation ranges are calibrated "
            f"on (default {CALIBRATION_IMAGES}, chosen reproducibly)",
        )
    parser.add_argument(
        "--calibration-statistic",
        type=parse_statistic,
        default="auto",
        metavar="STAT",
        help="how each activation's range is taken from the calibration images: "
        f"{', '.join(STATISTICS)} or percentile-P (P in (50, 100)); default auto: the one "
        "whose int8 model agrees best with fp32 on the validation split (never the test "
        "split), recorded in the bundle's info.calibration",
    )


def add_parser(sub) -> None:
    q = sub.add_parser(
        "quantize",
        help="turn a packed fp32 base + task pair into int8",
        description="Turn the fp32 pair DIR/base.safetensors + DIR/TASK.safetensors (spaedge pack) "
        "into an int8 pair OUT/base.int8.safetensors + OUT/TASK.int8.safetensors: s8 conv "
        "weights with per-channel scales (a quarter of the base's bytes) and u8 activations "
        "calibrated on the task's training images. Then print the int8 accuracy in the C++ "
        "runtime and its agreement with the fp32 model in PyTorch on the test split. Run it "
        "with spaedge run --precision int8.",
        epilog="The int8 base is written once per base (reused while its quantized_from names "
        "the fp32 base). An fp32 base of another name in DIR (base-resnet18.safetensors, say) is "
        "found by the task's base_hash; its int8 base is named after it (base-resnet18.int8."
        "safetensors).",
    )
    q.add_argument(
        "--bundles",
        type=path_text,
        default="bundles",
        metavar="DIR",
        help="directory of the fp32 bundles (default ./bundles)",
    )
    q.add_argument("--task", required=True, help="the task to quantize (its bundle's name)")
    q.add_argument(
        "--out",
        type=path_text,
        metavar="DIR2",
        help="directory the int8 bundles are written to (default: --bundles)",
    )
    add_calibration_flags(q, random=True)
    q.add_argument("--data-dir", type=path_text, help="where the task's data is")
    q.add_argument(
        "--no-download",
        dest="download",
        action="store_false",
        help="use only local data; never download (missing files are named in the error)",
    )
    q.add_argument(
        "--threads", type=positive_int, help="runtime threads for the checks (default: all cores)"
    )
    q.set_defaults(func=main)


# ---------------------------------------------------------------- the steps pack shares


def find_fp32_base(bundles: Path, base_hash: str, task_path: Path) -> Path:
    """The fp32 base bundle in ``bundles`` a task names (``base_hash``):
    ``base.safetensors``, else any ``base*.safetensors`` of that hash."""
    from spaedge.pack.format import read_metadata
    from spaedge.pack.layout import base_bundle_path

    plain = base_bundle_path(bundles)
    others = sorted(p for p in bundles.glob("base*.safetensors") if p != plain)
    for p in [plain, *others]:
        if p.name.endswith(".int8.safetensors") or not p.is_file():
            continue
        try:
            meta = read_metadata(p)
        except ValueError:
            continue
        if meta.get("content_hash") == base_hash:
            if meta.get("precision", "fp32") != "fp32":
                raise CliError(f"{p} is an {meta['precision']} base already: quantize an fp32 pair")
            return p
    raise CliError(
        f"no base bundle in {bundles} is the base {task_path} was packed on "
        f"({base_hash[:12]}...): put that fp32 base beside it (spaedge pack writes base.safetensors)"
    )


def int8_base_state(fp32_base: Path, out: Path, fp32_hash: str | None = None) -> tuple[Path, bool]:
    """Where the int8 base of ``fp32_base`` goes in ``out`` (``X.int8.safetensors``
    for ``X.safetensors``) and whether it is there already (its
    ``quantized_from`` the fp32 base's hash); a file there of another base is
    an error (its int8 tasks would be orphaned). Writes nothing."""
    from spaedge.pack.format import read_metadata
    from spaedge.pack.layout import int8_name
    from spaedge.paths import check_output_file

    path = check_output_file(out / int8_name(fp32_base.name), "the int8 base bundle")
    if fp32_hash is None:
        fp32_hash = read_metadata(fp32_base)["content_hash"]
    if not path.exists():
        return path, False
    meta = read_metadata(path)
    if meta.get("precision") == "int8" and meta.get("quantized_from") == fp32_hash:
        return path, True
    raise CliError(
        f"{path} holds another base than the int8 of {fp32_base} ({fp32_hash[:12]}...): "
        "its int8 tasks would be orphaned; write into another --out directory"
    )


def check_rows(logits, ref_logits, labels, isa: str, accuracy_row: str, agreement_row: str):
    """``(rows, agreement, relative difference)``: the runtime's ``logits`` on
    the test images against PyTorch's ``ref_logits`` as pack's table shows
    them (accuracy with the kernels, then top-1 agreement and the largest
    logit difference relative to the largest |reference logit|)."""
    import numpy as np

    agree = float((logits.argmax(1) == ref_logits.argmax(1)).mean())
    scale = float(np.abs(ref_logits).max()) or 1.0
    rel = float(np.abs(logits - ref_logits).max()) / scale
    rows = [
        (accuracy_row, f"{(logits.argmax(1) == labels).mean():.2%} ({isa} kernels)"),
        (agreement_row, f"{agree:.2%} same predictions, max logit difference {rel:.1e} of scale"),
    ]
    return rows, agree, rel


def install_int8_base(fp32_base: Path, out: Path, called: str | None = None) -> Path:
    """The int8 base of ``fp32_base`` in ``out``: reused when it is there
    (:func:`int8_base_state`), else written atomically; prints which, naming
    the fp32 base ``called`` (default: its file name)."""
    from spaedge.pack.format import read_bundle, write_bundle
    from spaedge.pack.quantize import int8_base_bundle

    path, there = int8_base_state(fp32_base, out)
    if there:
        print(f"{path} already holds the int8 of {called or fp32_base.name}; left as it is")
    else:
        write_bundle(path, *int8_base_bundle(*read_bundle(fp32_base)))
        print(f"wrote {path} (int8 of {fp32_base.name})")
    return path


def calibration_data(task, n, spec):
    """``(images, split, selection, seed)``: ``n`` training images of ``task``
    (a Task; seed None), or, when ``task`` is None, ``n`` seeded random
    images of the spec's input size
    (:func:`spaedge.pack.quantize.random_calibration_images`, seed 0: the
    images ``spaedge.bench.synthetic.make_int8_pair`` calibrates on, rebuilt
    for the int8 peers by ``spaedge.bench.engines.calibration_of``)."""
    from spaedge.pack.quantize import CALIBRATION_SELECTION, RANDOM_CALIBRATION_SELECTION

    if task is None:
        import torch

        from spaedge.pack.quantize import random_calibration_images

        seed = 0
        images = torch.from_numpy(random_calibration_images(spec.input_size, n, seed))
        return images, RANDOM, RANDOM_CALIBRATION_SELECTION, seed
    from spaedge.pack.calibrate import calibration_images

    return calibration_images(task, n), "train", CALIBRATION_SELECTION, None


def write_int8_task(
    fp32_base: Path,
    fp32_task: Path,
    int8_base: Path,
    int8_task: Path,
    images,
    *,
    statistic: str,
    val,
    split: str,
    selection: str,
    seed: int | None = None,
    test=None,
    ref_logits=None,
    threads: int | None = None,
) -> list[tuple[str, str]]:
    """Calibrate and write the int8 task bundle ``int8_task`` of the fp32 pair,
    checked beside the old one and installed only when the runtime loads
    and runs it; an interrupt or error leaves the old one as it was and no
    partial file. With ``test`` = (X, labels) and the fp32 model's logits on
    it, the rows printed: int8 accuracy in the runtime and agreement with
    fp32."""
    import numpy as np

    from spaedge.cli.common import clean_killed_packs
    from spaedge.pack.calibrate import int8_task_from_bundles
    from spaedge.pack.format import atomic_write_bytes, serialise
    from spaedge.paths import WriteProblem
    from spaedge.runtime import Runtime

    tensors, meta, choice = int8_task_from_bundles(
        fp32_base,
        fp32_task,
        int8_base,
        images,
        statistic=statistic,
        val=val,
        split=split,
        selection=selection,
        seed=seed,
        threads=threads,
    )
    payload, _ = serialise(tensors, meta)
    stat = choice.statistic if choice else statistic
    if split == RANDOM:
        how = f"{len(images)} random N(0,1) images (seed {seed}), {stat}"
    else:
        how = f"{len(images)} training images, {stat}"
    if choice is not None:
        how += (
            f" (chosen on {choice.images} validation images: "
            f"{choice.agreement[stat]:.2%} same predictions as fp32)"
        )
    rows = [("int8 calibration", how)]
    new_path = int8_task.with_name(f".{int8_task.name}.new-{os.getpid()}")
    clean_killed_packs(int8_task)
    try:
        try:
            atomic_write_bytes(new_path, payload)
        except WriteProblem as e:
            raise WriteProblem(int8_task, e.error) from None
        rt = Runtime(str(int8_base), threads=threads)
        rt.load_task(str(new_path))
        if test is not None:
            X, labels = test
            logits = rt.run(np.ascontiguousarray(X, dtype=np.float32))
            check, _, _ = check_rows(
                logits,
                ref_logits,
                labels,
                rt.isa,
                "int8 test accuracy, runtime",
                "int8 vs fp32 PyTorch",
            )
            rows += check
        try:
            os.replace(new_path, int8_task)
        except OSError as e:
            raise WriteProblem(int8_task, e) from None
    finally:
        new_path.unlink(missing_ok=True)
    return rows


def size_row(fp32_base: Path, fp32_task: Path, int8_base: Path, int8_task: Path):
    t32, t8 = fp32_task.stat().st_size, int8_task.stat().st_size
    b32, b8 = fp32_base.stat().st_size, int8_base.stat().st_size
    return (
        "int8 bundles",
        f"task {human_bytes(t8)} ({t8 / t32:.2f}x fp32), base {human_bytes(b8)} "
        f"({b8 / b32:.2f}x fp32)",
    )


# ---------------------------------------------------------------- the command


def main(args) -> int:
    import json

    from spaedge.cli.common import print_table
    from spaedge.pack.bundle import TaskSpec
    from spaedge.pack.format import precision_of, read_metadata
    from spaedge.pack.layout import task_bundle_path
    from spaedge.paths import check_output_dir, check_output_file

    bundles = Path(args.bundles)
    task_path = task_bundle_path(bundles, args.task)
    if not task_path.is_file():
        raise CliError(
            f"{task_path} does not exist: pack the task first "
            f"(spaedge pack --task {args.task} --out {bundles})"
        )
    meta = read_metadata(task_path)
    if meta.get("format") != "spaedge-task":
        raise CliError(f"{task_path} is not a task bundle (format {meta.get('format')!r})")
    if precision_of(meta) != "fp32":
        raise CliError(
            f"{task_path} is {precision_of(meta)} already: quantize its fp32 bundle "
            f"(spaedge pack --task {args.task} writes it)"
        )
    base_path = find_fp32_base(bundles, meta.get("base_hash", ""), task_path)
    out = check_output_dir(args.out if args.out is not None else bundles, "--out")
    int8_task = check_output_file(task_bundle_path(out, args.task, "int8"), "the int8 task bundle")
    spec = TaskSpec.from_metadata(meta, str(task_path))
    info = json.loads(meta.get("info", "{}") or "{}")

    int8_base_state(base_path, out)  # another base there: said before any work
    task = test = ref_logits = val = None
    if args.calibration == RANDOM:
        if not (isinstance(info, dict) and info.get("synthetic") is True):
            raise CliError(
                f"--calibration random is for synthetic speed tasks only, and {task_path} is a "
                "trained task (its info has no 'synthetic'): calibrate on its training images "
                "(--calibration N)"
            )
        if args.calibration_statistic == "auto":
            args.calibration_statistic = "minmax"  # no validation data to choose on
        from spaedge.pack.quantize import RANDOM_CALIBRATION_IMAGES

        n = RANDOM_CALIBRATION_IMAGES
    else:
        n = args.calibration
        task, test, ref_logits, val = _task_data(args, spec, base_path, task_path)

    int8_base = install_int8_base(base_path, out)
    images, split, selection, seed = calibration_data(task, n, spec)
    rows = write_int8_task(
        base_path,
        task_path,
        int8_base,
        int8_task,
        images,
        statistic=args.calibration_statistic,
        val=val,
        split=split,
        selection=selection,
        seed=seed,
        test=test,
        ref_logits=ref_logits,
        threads=args.threads,
    )
    rows.append(size_row(base_path, task_path, int8_base, int8_task))
    print(f"wrote {int8_task}")
    print(f"quantized {args.task}:")
    print_table(rows)
    return 0


def _task_data(args, spec, base_path: Path, task_path: Path):
    """The task (its data made local as ``pack`` does), its test split with
    the fp32 model's logits in PyTorch, and its validation images."""
    from spaedge.pack.bundle import load_task_model
    from spaedge.pack.calibrate import validation_images
    from spaedge.tasks import get_task
    from spaedge.tasks.fetch import fetch_data
    from spaedge.train import predict
    from spaedge.train.device import TrainEnv

    try:
        data_dir = fetch_data(args.task, args.data_dir, allow_download=args.download)
        task = get_task(args.task, data_dir=data_dir, input_size=spec.input_size)
    except KeyError as e:  # UnknownTask: the message lists the tasks
        raise CliError(
            f"{e}; a task without data (a synthetic speed task) takes --calibration random"
        ) from None
    except FileNotFoundError as e:
        raise CliError(
            f"{e} (--calibration needs the task's training images; --data-dir says where they are)"
        ) from None
    model, _, _ = load_task_model(base_path, task_path)
    ref_logits, labels = predict(model, task.split("test"), env=TrainEnv(device="cpu"))
    X, _ = task.arrays("test")
    return task, (X.numpy(), labels), ref_logits, validation_images(task)
