"""``spaedge run``: classify images, or score a test set, with the C++ runtime.

The device side: numpy, the compiled runtime and (for image files) Pillow;
no torch. An image is preprocessed as the task's data was in training
(``spaedge.images``, crops as ``spaedge.tasks.image`` says), normalised with the mean/std the bundle records.
Scoring the task's own split (``--eval`` alone) builds the task with its
loader, which needs the toolchain; a device scores stored arrays
(``--eval FILE.npz``, written on the workstation with ``--save-arrays``) or an
image folder (``--eval DIR``, one subfolder per label).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from spaedge.argtypes import path_text, positive_int
from spaedge.cli.common import CliError
from spaedge.cli.info import clean
from spaedge.pack.layout import base_bundle_path, task_bundle_path

# Images run through the runtime at a time (bounds the memory of a big folder).
CHUNK = 256


def add_parser(sub) -> None:
    r = sub.add_parser(
        "run",
        help="run a packed task in the C++ runtime",
        description="Classify images, or score a test set (--eval), with the C++ runtime.",
    )
    r.add_argument(
        "--bundles", type=path_text, default="bundles", help="bundle directory (default ./bundles)"
    )
    r.add_argument("--task", default="digits", help="task name (default digits)")
    r.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "int8"],
        help="which pair of DIR to run: fp32 (base.safetensors, TASK.safetensors; default) or "
        "int8 (base.int8.safetensors, TASK.int8.safetensors: spaedge pack --precision int8 or "
        "spaedge quantize)",
    )
    r.add_argument(
        "--eval",
        nargs="?",
        const=True,
        type=path_text,
        metavar="SOURCE",
        help="score instead of classifying: the task's --split (needs the toolchain and the "
        "task's data), or SOURCE: stored arrays (.npz with X and y, see --save-arrays) or an "
        "image folder (SOURCE/<label>/*.png ...), which need neither",
    )
    r.add_argument(
        "--split", default="test", choices=["train", "val", "test"], help="split for --eval"
    )
    r.add_argument("--data-dir", type=path_text, help="where the task's data is (for --eval)")
    r.add_argument(
        "--save-arrays",
        type=path_text,
        metavar="FILE",
        help="with --eval of the task's split: also write the arrays scored (X normalised, y) "
        "to FILE (.npz), for `spaedge run --eval FILE` on a device",
    )
    r.add_argument("--threads", type=positive_int, help="runtime threads (default: all cores)")
    r.add_argument(
        "--top", type=positive_int, default=3, help="labels to print per image (default 3)"
    )
    r.add_argument(
        "images",
        nargs="*",
        type=path_text,
        metavar="IMAGE",
        help="image files (jpg, png, ...), or .npy arrays already normalised: "
        "(C,H,W) or (N,C,H,W) float32",
    )
    r.set_defaults(func=main)


def main(args) -> int:
    bundles = Path(args.bundles)
    precision = getattr(args, "precision", "fp32")
    base_path = base_bundle_path(bundles, precision)
    task_path = task_bundle_path(bundles, args.task, precision)
    for p in (base_path, task_path):
        if not p.exists():
            how = " --precision int8" if precision == "int8" else ""
            raise CliError(
                f"{p} does not exist: pack the task first (spaedge pack --task {args.task}{how} "
                f"--out {bundles})"
            )
    if args.save_arrays and args.eval is not True:
        raise CliError("--save-arrays goes with --eval alone (scoring the task's own split)")
    from spaedge.runtime import Runtime

    rt = Runtime(str(base_path), threads=args.threads)
    name = rt.load_task(str(task_path))
    info = rt.task_info(name)
    if args.eval is not None:
        if args.eval is True:
            X, y = _task_split(args, info)
            what = args.split
        else:
            X, y, what = _stored(Path(args.eval), info, args.split)
        logits = _run(rt, X)
        acc = float((logits.argmax(1) == y).mean()) if len(y) else 0.0
        print(
            f"{clean(name)}: {what} accuracy {acc:.2%} on {len(y)} images ({rt.isa} kernels, {rt.threads} threads)"
        )
        if args.save_arrays:
            _save_arrays(args.save_arrays, X, y)
        return 0
    if not args.images:
        raise CliError(
            "give IMAGE files (or .npy arrays) to classify, or --eval to score a test set"
        )
    labels = info["labels"]
    for path in args.images:
        for label, x in _inputs(path, info):
            logits = rt.run(x)
            p = np.exp(logits - logits.max())
            p /= p.sum()
            top = np.argsort(-p, kind="stable")[: args.top]
            # labels come from the bundle: written escaped, as spaedge info does
            print(f"{clean(label)}: " + ", ".join(f"{clean(labels[i])} {p[i]:.1%}" for i in top))
    return 0


def _run(rt, X: np.ndarray) -> np.ndarray:
    parts = [rt.run(X[i : i + CHUNK]) for i in range(0, len(X), CHUNK)]
    return np.concatenate(parts) if parts else np.empty((0, rt.task_info()["classes"]), np.float32)


def _task_split(args, info) -> tuple[np.ndarray, np.ndarray]:
    """The task's own split, built by its loader (the toolchain)."""
    try:
        from spaedge.tasks import get_task

        task = get_task(args.task, data_dir=args.data_dir, input_size=info["input_shape"])
        X, y = task.arrays(args.split)
    except ImportError as e:
        raise CliError(
            f"scoring the task's own split needs the toolchain ({e}); on a device, score "
            "stored arrays (spaedge run --eval FILE.npz, written on the workstation with "
            "--eval --save-arrays FILE.npz) or an image folder (spaedge run --eval DIR)"
        ) from None
    return np.ascontiguousarray(X.numpy()), y.numpy()


def _save_arrays(path, X: np.ndarray, y: np.ndarray) -> None:
    """X and y as one .npz, written whole or not at all."""
    from spaedge.pack.format import atomic_write_bytes

    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise CliError(f"{path}: --save-arrays writes a .npz file; name it FILE.npz")
    buf = io.BytesIO()
    np.savez(buf, X=X.astype(np.float32), y=y.astype(np.int64))
    atomic_write_bytes(path, buf.getvalue())
    print(f"wrote {path} ({len(y)} images; score it on a device with spaedge run --eval {path})")


def _stored(source: Path, info, split: str) -> tuple[np.ndarray, np.ndarray, str]:
    if source.is_dir():
        X, y = _folder(source, info, split)
        return X, y, str(source)
    if not source.is_file():
        raise CliError(f"{source}: no such file or folder to score (--eval)")
    if source.suffix != ".npz":
        raise CliError(
            f"{source}: --eval scores stored arrays (.npz with X and y) or an image folder"
        )
    try:
        with np.load(source, allow_pickle=False) as z:
            if "X" not in z.files or "y" not in z.files:
                raise CliError(
                    f"{source}: needs arrays X and y (has {', '.join(z.files) or 'none'})"
                )
            X, y = z["X"], z["y"]
    except (ValueError, OSError, EOFError) as e:
        raise CliError(f"{source}: not a readable .npz of arrays ({e})") from None
    c, h, w = info["input_shape"]
    if X.ndim != 4 or X.shape[1:] != (c, h, w) or X.dtype.kind != "f":
        raise CliError(
            f"{source}: X must be float (N, {c}, {h}, {w}) for task {info['name']!r}, "
            f"got {X.dtype} {X.shape}"
        )
    if y.ndim != 1 or len(y) != len(X) or y.dtype.kind not in "iu":
        raise CliError(f"{source}: y must be {len(X)} integer labels, got {y.dtype} {y.shape}")
    if len(y) and not (y.min() >= 0 and y.max() < info["classes"]):
        raise CliError(
            f"{source}: labels must be 0..{info['classes'] - 1}, got {y.min()}..{y.max()}"
        )
    return np.ascontiguousarray(X, dtype=np.float32), y.astype(np.int64), str(source)


def _folder(root: Path, info, split: str) -> tuple[np.ndarray, np.ndarray]:
    """An image folder: root/<label>/**/image (or root/<split>/<label>/...)."""
    labels = info["labels"]
    index = {l: i for i, l in enumerate(labels)}
    if (root / split).is_dir() and split not in index:
        root = root / split
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    unknown = [c for c in classes if c not in index]
    if unknown:
        raise CliError(
            f"{root}: folder {unknown[0]!r} is not a label of task {info['name']!r} "
            f"(labels: {', '.join(labels[:12])}{' ...' if len(labels) > 12 else ''})"
        )
    from spaedge.tasks.image import EXTENSIONS

    files, y = [], []
    for c in classes:
        for dirpath, dirnames, filenames in os.walk(root / c):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if not f.startswith(".") and f.lower().endswith(EXTENSIONS):
                    files.append(os.path.join(dirpath, f))
                    y.append(index[c])
    if not files:
        raise CliError(
            f"{root}: no images (one subfolder per label, {'/'.join(e[1:] for e in EXTENSIONS)} files)"
        )
    X = np.stack([_image(f, info) for f in files])
    return X, np.asarray(y, dtype=np.int64)


def _image(path: str, info) -> np.ndarray:
    """One image file preprocessed like the task's data and normalised: (C, H, W)."""
    from spaedge.images import read_image
    from spaedge.tasks.image import crop_fraction_for

    c = info["channels"]
    try:  # by value range; too many pixels, a strip or an unknown mode refused
        x = read_image(path, info["input_shape"], crop_fraction_for(info["name"]))
    except ImportError as e:
        raise CliError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many kinds for bad files
        raise CliError(f"{clean(path)}: cannot read the image ({clean(e)})") from None
    mean = np.asarray(info["mean"], dtype=np.float32).reshape(c, 1, 1)
    std = np.asarray(info["std"], dtype=np.float32).reshape(c, 1, 1)
    return (x - mean) / std


def _inputs(path: str, info):
    """(label, normalised (C, H, W) input) for each image an IMAGE argument holds."""
    if not Path(path).is_file():
        raise CliError(f"{clean(path)}: no such image file")
    if not str(path).lower().endswith(".npy"):
        yield str(path), _image(path, info)
        return
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise CliError(f"{path}: not a readable .npy array ({e})") from None
    c, h, w = info["input_shape"]
    if a.dtype.kind != "f" or a.ndim not in (3, 4) or a.shape[-3:] != (c, h, w):
        raise CliError(
            f"{path}: a .npy input must be normalised float32 ({c}, {h}, {w}) or (N, {c}, {h}, {w}) "
            f"for task {info['name']!r}, got {a.dtype} {a.shape}"
        )
    if a.ndim == 3:
        yield str(path), a
        return
    for i in range(len(a)):
        yield f"{path}[{i}]", a[i]
