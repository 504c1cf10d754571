"""Nothing silent, nothing lost: runs and packs are transactions, paths are
checked before any work, hostile folders and names do no harm
(docs/reliability.md, "Runs and packs"). Every event (an interrupt, a
diverging run, a bad file) is made to happen by construction, never raced."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import zlib

import pytest
from _toolchain_helpers import STOP_AFTER_FIRST_CHECKPOINT, tiny_image_folder

from spaedge.cli import main
from spaedge.pack.layout import run_dir_path, task_bundle_name
from spaedge.train import TrainConfig, library, run
from spaedge.train.rundir import MANIFEST, IncompleteRun, read_run

QUICK = [
    "--epochs",
    "1",
    "--recovery-epochs",
    "0",
    "--final-epochs",
    "1",
    "--density",
    "0.6",
    "--prune-step",
    "0.5",
    "--train-limit",
    "96",
    "--test-limit",
    "64",
]
QUICK_CFG = dict(
    epochs=1,
    recovery_epochs=0,
    final_epochs=1,
    density=0.6,
    prune_step=0.5,
    train_limit=96,
    test_limit=64,
)


def cli(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "spaedge.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )


def error_line(proc) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if ": error: " in l]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    work = tmp_path_factory.mktemp("packed")
    proc = cli("pack", "--task", "digits", *QUICK, cwd=work)
    assert proc.returncode == 0, proc.stderr
    return work


# ----------------------------------------------------------- runs and packs
@pytest.mark.slow
def test_a_diverging_run_stops_and_pack_keeps_the_working_bundle(packed):
    bundle = packed / "bundles" / "digits.safetensors"
    good = bundle.read_bytes()
    proc = cli("pack", "--task", "digits", *QUICK, "--lr", "inf", "--retrain", cwd=packed)
    assert proc.returncode == 2
    assert "the loss became nan" in error_line(proc) and "lower --lr" in error_line(proc)
    assert bundle.read_bytes() == good  # the working bundle was not touched
    assert not [
        p for p in (packed / "bundles").iterdir() if p.name.startswith(".") or ".tmp-" in p.name
    ]


@pytest.mark.slow
def test_pack_on_a_full_disk_names_the_bundle_and_cleans_a_killed_packs_copy(
    packed, monkeypatch, capsys
):
    """A pack killed by SIGKILL left `.digits.safetensors.new-PID`: the next pack
    removes it. Its own copy cannot be written (ENOSPC): one line naming the
    bundle, the old bundle kept, no hidden file left."""
    import builtins
    import errno

    from spaedge.pack import format as fmt

    bundles = packed / "bundles"
    good = (bundles / "digits.safetensors").read_bytes()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (bundles / f".digits.safetensors.new-{dead.pid}").write_bytes(b"left by a killed pack")
    (bundles / f".digits.safetensors.new-{dead.pid}.tmp-{dead.pid}").write_bytes(b"half")

    def full_open(path, mode="r", *a, **k):
        if ".new-" in os.fspath(path) and "w" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return builtins.open(path, mode, *a, **k)

    monkeypatch.setattr(fmt, "open", full_open, raising=False)
    runs, out = str(packed / "runs"), str(bundles)
    assert main(["pack", "--task", "digits", *QUICK, "--runs", runs, "--out", out]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if ": error: " in l]
    assert len(err) == 1 and f"cannot write {bundles / 'digits.safetensors'}: " in err[0]
    assert "No space left on device" in err[0]
    assert (bundles / "digits.safetensors").read_bytes() == good
    assert not [p for p in bundles.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
@pytest.mark.parametrize("lr", ["inf", "1e30"])
def test_train_with_a_diverging_learning_rate_exits_nonzero(tmp_path, lr):
    proc = cli("train", "--task", "digits", *QUICK, "--lr", lr, cwd=tmp_path)
    assert proc.returncode == 2 and "lower --lr" in error_line(proc)
    assert not (tmp_path / "runs" / "digits" / MANIFEST).exists()  # no finished run was written


@pytest.mark.slow
def test_pack_refuses_a_run_trained_with_other_settings(packed):
    proc = cli("pack", "--task", "digits", *QUICK[:-2], "--test-limit", "32", cwd=packed)
    assert proc.returncode == 2
    line = error_line(proc)
    assert "other settings (test_limit 64 there, 32 now)" in line and "--retrain" in line


def test_distinct_tasks_never_share_a_run_directory_or_a_bundle_name(tmp_path):
    a, b = "imagefolder:imgs/good", "imagefolder:imgs_good"
    assert run_dir_path(tmp_path, a) != run_dir_path(tmp_path, b)
    assert task_bundle_name(a) != task_bundle_name(b)
    assert run_dir_path(tmp_path, "digits") == tmp_path / "digits"  # plain names stay plain
    for hostile in ("..", "../x", "a/../../b", ".hidden", "/etc/passwd", "\x00"):
        assert run_dir_path(tmp_path, hostile).parent == tmp_path


@pytest.fixture
def finished_run(tmp_path):
    folder = tiny_image_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    run(TrainConfig(task=f"imagefolder:{folder}", **QUICK_CFG), out)
    return out


@pytest.mark.slow
def test_a_run_interrupted_while_its_files_are_replaced_is_never_read_half(
    finished_run, monkeypatch
):
    from spaedge.train import rundir

    before = read_run(finished_run)
    real = rundir.atomic_write_bytes
    written = []

    def interrupted_after_one(
        path, data
    ):  # Ctrl-C after the new bundle, before config/metrics/plan
        if written:
            raise KeyboardInterrupt
        written.append(path)
        real(path, data)

    monkeypatch.setattr(rundir, "atomic_write_bytes", interrupted_after_one)
    with pytest.raises(KeyboardInterrupt):
        rundir.write_run(
            finished_run, {**{k: v for k, v in before.items()}, "task.safetensors": b"new bundle"}
        )
    monkeypatch.setattr(rundir, "atomic_write_bytes", real)
    with pytest.raises(IncompleteRun, match="not a finished run"):
        read_run(finished_run)
    with pytest.raises(IncompleteRun):
        library.plan_from_run(finished_run)


@pytest.mark.slow
def test_library_add_keeps_hostile_plan_fields_inside_the_library(finished_run, tmp_path):
    files = read_run(finished_run)
    plan = json.loads(files["plan.json"])
    plan["extra"]["seed"] = "0/../../../escaped"
    plan["task"] = "../../outside"
    files["plan.json"] = json.dumps(plan).encode()
    from spaedge.train.rundir import write_run

    write_run(finished_run, files)  # a hand-edited run, with a matching manifest
    lib = tmp_path / "lib"
    dest = library.add_to_library(finished_run, lib)
    assert dest.parent == lib and dest.exists()
    assert [p for p in tmp_path.rglob("*escaped*")] == [dest] and not (
        tmp_path.parent / "escaped"
    ).exists()


# ------------------------------------------------------- paths before work
@pytest.mark.parametrize(
    "case", ["out is a file", "out under a file", "bundle is a fifo", "runs is a file"]
)
def test_bad_output_paths_are_refused_before_any_work(tmp_path, capsys, case):
    (tmp_path / "file").write_text("x")
    args = {
        "out is a file": ["--out", str(tmp_path / "file")],
        "out under a file": ["--out", str(tmp_path / "file" / "bundles")],
        "runs is a file": ["--runs", str(tmp_path / "file")],
        "bundle is a fifo": ["--out", str(tmp_path / "b")],
    }[case]
    if case == "bundle is a fifo":
        (tmp_path / "b").mkdir()
        os.mkfifo(tmp_path / "b" / "digits.safetensors")
    # had the paths not been checked first, training would start
    assert main(["pack", "--task", "digits", "--runs", str(tmp_path / "runs"), *args, *QUICK]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path) in err
    assert not (tmp_path / "runs" / "digits").exists()  # nothing trained


def test_nul_bytes_huge_ranks_and_early_interrupts_are_one_clear_line(
    tmp_path, capsys, monkeypatch
):
    with pytest.raises(SystemExit) as e:
        main(["train", "--out", "a\x00b"])
    assert e.value.code == 2 and "NUL byte" in capsys.readouterr().err
    assert (
        main(
            ["train", "--task", "digits", "--rank", "100000", "--out", str(tmp_path / "r"), *QUICK]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--rank 100000" in err and "widest layer" in err and "MemoryError" not in err

    import spaedge.cli

    def interrupted(*args):  # Ctrl-C while the commands' modules (torch...) load
        raise KeyboardInterrupt

    monkeypatch.setattr(spaedge.cli, "build_parser", interrupted)
    assert main(["tasks"]) == 130
    assert "interrupted" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    """The child stops itself after its first checkpoint (as in train/test_resume.py); the
    parent sends SIGTERM, then SIGCONT: a clean exit, no temporary files, resumable."""
    folder = tiny_image_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    args = ["train", "--task", f"imagefolder:{folder}", "--out", str(out), *QUICK[:-4]]
    proc = subprocess.Popen(
        [sys.executable, "-c", STOP_AFTER_FIRST_CHECKPOINT, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and b"terminated" in err and b"Traceback" not in err
    assert (
        not [p for p in out.iterdir() if ".tmp-" in p.name]
        and (out / "checkpoint.safetensors").exists()
    )
    done = cli(*args, cwd=tmp_path)
    assert done.returncode == 0 and "resuming from" in done.stdout + done.stderr


# ---------------------------------------------------------- hostile folders
def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds no pixel data."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_hostile_image_folders_are_read_safely(tmp_path):
    from spaedge.tasks import get_task

    root = tiny_image_folder(tmp_path / "imgs")
    bright = root / "train" / "bright"
    good = sorted(bright.glob("*.png"))
    (bright / "zip.png").write_bytes(b"PK\x03\x04" + b"\x00" * 200)  # a zip renamed .png
    (bright / "truncated.png").write_bytes(good[0].read_bytes()[:60])
    (bright / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))
    (bright / "huge.png").write_bytes(_png_header_only(30000, 30000))
    os.symlink(".", bright / "loop1")  # two links back to the folder itself
    os.symlink(".", bright / "loop2")
    os.symlink(str(root / "train"), root / "test" / "dark" / "up")  # test/ reaching into train/
    task = get_task(f"imagefolder:{root}")
    n = {s: len(task.split(s)) for s in ("train", "val", "test")}
    assert n == {
        "train": 48,
        "val": 16,
        "test": 16,
    }  # as without the hostile files: each image once
    assert task.notes and "skipped 4 files" in task.notes[0]
    for name in ("zip.png", "truncated.png", "corrupt.jpg", "huge.png"):
        assert name in task.notes[0] or "..." in task.notes[0]
    paths = [
        p
        for s in ("train", "val", "test")
        for p in (task.split(s).source.paths[i] for i in task.split(s).indices)
    ]
    assert len({os.path.realpath(p) for p in paths}) == len(
        paths
    )  # no file twice, in one split or two
