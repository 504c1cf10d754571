"""Bounded reads, bad content and failed writes (issue 18, items 9, 10, 11):
every JSON or bundle-like file the toolchain reads is a regular file of
bounded size parsed with a depth limit, and bad content is one line naming
the file and the field; a failed write names the file and leaves nothing
half-written; temporary files of killed processes are cleaned.

A FIFO or /dev/zero would hang or exhaust memory in code that reads it
blindly: those cases run in a subprocess with a timeout and a memory limit,
so a regression fails instead of hanging the test run."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest

from spaedge.cli import main
from spaedge.paths import FileProblem, WriteProblem, parse_json, read_json, read_regular
from spaedge.pruning.similar import Plan
from spaedge.train import library
from spaedge.train.rundir import write_run

LAYERS = {"layer1.0.conv1": 4, "layer1.0.conv2": 4}


def plan_json(**change) -> dict:
    plan = Plan(
        task="t",
        base="tiny",
        base_hash="ab" * 32,
        density=0.5,
        kept={"layer1.0.conv1": [0, 2], "layer1.0.conv2": [1, 3]},
        base_channels=dict(LAYERS),
        embedding=[0.1, 0.2, 0.3],
    )
    d = library.plan_to_json(plan)
    for k, v in change.items():
        if v is DROP:
            d.pop(k)
        else:
            d[k] = v
    return d


DROP = object()


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def in_subprocess(code: str, env=None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python with a 3 GB address-space limit: a blind
    read of /dev/zero fails there with MemoryError, a FIFO read by the timeout."""
    prelude = "import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


# ------------------------------------------------------------ the helper


def test_read_regular_refuses_fifo_device_directory_and_big_files(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(FileProblem, match="not a regular file"):
        read_regular(tmp_path / "fifo", "plan file")  # refused without blocking
    with pytest.raises(FileProblem, match="not a regular file"):
        read_regular("/dev/zero", "plan file")
    with pytest.raises(FileProblem, match="is a directory"):
        read_regular(tmp_path, "plan file")
    with pytest.raises(FileProblem, match="does not exist"):
        read_regular(tmp_path / "none", "plan file")
    (tmp_path / "big").write_bytes(b"x" * 101)
    with pytest.raises(FileProblem, match=f"{tmp_path / 'big'} is 101 bytes, more than the 100"):
        read_regular(tmp_path / "big", "plan file", limit=100)
    assert read_regular(tmp_path / "big", "plan file", limit=101) == b"x" * 101


def test_json_depth_limit_and_bad_json_name_the_file(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(FileProblem, match=r"deep.json: not valid JSON \(nested deeper than 64"):
        read_json(deep, "plan file")
    # brackets inside strings are not nesting
    assert parse_json(json.dumps({"a": "[[[[" * 100}), "x") == {"a": "[[[[" * 100}
    (tmp_path / "bad.json").write_bytes(b'{"a": \xff}')
    with pytest.raises(FileProblem, match="bad.json: not UTF-8"):
        read_json(tmp_path / "bad.json", "plan file")
    (tmp_path / "cut.json").write_text('{"a": [1, 2')
    with pytest.raises(FileProblem, match="cut.json: not valid JSON"):
        read_json(tmp_path / "cut.json", "plan file")


# ------------------------------------------------------------ plans (item 9)

BAD_PLANS = {
    "missing key": (dict(kept=DROP), "field 'kept' is missing"),
    "kept a list": (dict(kept=[0, 1]), "field 'kept' must be an object"),
    "kept not ints": (
        dict(kept={"layer1.0.conv1": ["a"], "layer1.0.conv2": [1]}),
        "field 'kept'",
    ),
    "density 1e999": (dict(density=float("inf")), "field 'density' must be a number in (0, 1]"),
    "density a string": (dict(density="half"), "field 'density'"),
    "kept out of range": (
        dict(kept={"layer1.0.conv1": [0, 99999], "layer1.0.conv2": [1]}),
        "channel index 99999 is outside [0, 3]",
    ),
    "kept negative": (
        dict(kept={"layer1.0.conv1": [-1, 2], "layer1.0.conv2": [1]}),
        "channel index -1 is outside [0, 3]",
    ),
    "kept other layers": (dict(kept={"fc": [0]}), "field 'kept' does not name the layers"),
    "embedding nan": (dict(embedding=[0.1, float("nan")]), "field 'embedding'"),
    "base_channels zero": (dict(base_channels={**LAYERS, "layer1.0.conv1": 0}), "base_channels"),
}


def _write_plan_text(path, d) -> None:
    path.write_text(json.dumps(d).replace("Infinity", "1e999"))  # as a hand edit would


@pytest.mark.parametrize("case", sorted(BAD_PLANS))
def test_library_list_refuses_a_damaged_plan_naming_file_and_field(tmp_path, capsys, case):
    change, what = BAD_PLANS[case]
    lib = tmp_path / "lib"
    lib.mkdir()
    _write_plan_text(lib / "t.json", plan_json(**change))
    assert main(["library", "list", str(lib)]) == 2
    err = one_error_line(capsys)
    assert str(lib / "t.json") in err and what in err


@pytest.mark.parametrize("case", ["missing key", "kept a list", "density 1e999", "kept negative"])
def test_library_add_refuses_a_damaged_plan_naming_file_and_field(tmp_path, capsys, case):
    change, what = BAD_PLANS[case]
    run = tmp_path / "run"
    d = plan_json(**change)
    write_run(run, {"plan.json": json.dumps(d).replace("Infinity", "1e999").encode()})
    assert main(["library", "add", str(run), "--to", str(tmp_path / "lib")]) == 2
    err = one_error_line(capsys)
    assert f"{run}/plan.json" in err and what in err
    assert not (tmp_path / "lib").exists() or os.listdir(tmp_path / "lib") == []


def test_a_good_plan_still_reads(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "t.json").write_text(json.dumps(plan_json()))
    (lib / "notes.json").write_text('["not a plan"]')  # other JSON in a library is skipped
    (plans,) = [library.load_library(lib)]
    assert len(plans) == 1 and plans[0].kept["layer1.0.conv1"] == [0, 2]


def test_schedule_similar_refuses_a_kept_index_out_of_range(tmp_path, capsys):
    """A plan for the real base and layers, with kept index 99999: an IndexError
    in the vote before; now refused as the library is read."""
    from spaedge.adapters.base import AdaptedLayer
    from spaedge.train import TrainConfig
    from spaedge.train.setup import build_task_model

    _, model, bhash = build_task_model(TrainConfig(task="digits"))
    layers = {
        n: int(m.base_out_channels) for n, m in model.named_modules() if isinstance(m, AdaptedLayer)
    }
    kept = {n: list(range(c // 2)) for n, c in layers.items()}
    first = sorted(kept)[0]
    kept[first] = [0, 99999]
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "p.json").write_text(
        json.dumps(
            plan_json(base_hash=bhash, base_channels=layers, kept=kept, embedding=[1.0] * 128)
        )
    )
    args = ["train", "--task", "digits", "--schedule", "similar", "--library", str(lib)]
    assert main([*args, "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    err = one_error_line(capsys)
    assert str(lib / "p.json") in err and "channel index 99999" in err


def test_library_add_with_a_fifo_or_dev_zero_plan_does_not_hang(tmp_path):
    for kind in ("fifo", "zero"):
        run = tmp_path / kind
        write_run(run, {"plan.json": json.dumps(plan_json()).encode()})
        (run / "plan.json").unlink()
        if kind == "fifo":
            os.mkfifo(run / "plan.json")
        else:
            os.symlink("/dev/zero", run / "plan.json")
        proc = in_subprocess(
            f"""
            from spaedge.cli import main
            raise SystemExit(main(["library", "add", {str(run)!r}, "--to", {str(tmp_path / "lib")!r}]))
            """
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and "not a regular file" in proc.stderr
        assert f"{run}/plan.json" in proc.stderr


def test_pack_with_a_fifo_task_bundle_in_the_run_does_not_hang(tmp_path):
    """A run directory whose task.safetensors is a FIFO: pack refuses it in one
    line instead of waiting for a writer."""
    from spaedge.pack.layout import run_dir_path
    from spaedge.train import TrainConfig

    runs = tmp_path / "runs"
    run = run_dir_path(runs, "digits")
    config = json.dumps(TrainConfig(task="digits", base="tiny").to_json()).encode()
    write_run(run, {"config.json": config, "task.safetensors": b"x"})
    (run / "task.safetensors").unlink()
    os.mkfifo(run / "task.safetensors")
    proc = in_subprocess(
        f"""
        from spaedge.cli import main
        raise SystemExit(main(["pack", "--task", "digits", "--base", "tiny",
                               "--runs", {str(runs)!r}, "--out", {str(tmp_path / "b")!r}]))
        """
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "not a regular file" in proc.stderr
    assert "task.safetensors" in proc.stderr


def test_pack_refuses_a_run_with_bad_metrics_naming_the_field(tmp_path):
    from spaedge.cli.common import CliError
    from spaedge.cli.pack import _metrics

    with pytest.raises(CliError, match="metrics.json: field 'density' must be a non-negative"):
        _metrics(
            tmp_path,
            json.dumps(
                dict(
                    whole_model_bytes=1, density="x", macs=1, macs_unpruned=1, learned_parameters=1
                )
            ).encode(),
        )
    with pytest.raises(ValueError, match="metrics.json: not valid JSON"):
        _metrics(tmp_path, b"[" * 1000)


# ------------------------------------------------------ weights (item 10)


@pytest.mark.parametrize("case", ["garbage", "truncated", "deep header", "empty"])
def test_bad_base_weights_safetensors_is_one_line(tmp_path, capsys, case):
    from safetensors.torch import save_file

    from spaedge.models import get_base

    good = tmp_path / "good.safetensors"
    save_file({k: v.contiguous() for k, v in get_base("tiny").state_dict().items()}, str(good))
    data = good.read_bytes()
    bad = tmp_path / "w.safetensors"
    if case == "garbage":
        bad.write_bytes(os.urandom(5000))
    elif case == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif case == "deep header":
        header = b"[" * 50_000 + b"]" * 50_000
        bad.write_bytes(len(header).to_bytes(8, "little") + header)
    else:
        bad.write_bytes(b"")
    args = ["train", "--task", "digits", "--base", "tiny", "--base-weights", str(bad)]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    err = one_error_line(capsys)
    assert str(bad) in err and "SafetensorError" not in err


def test_base_weights_fifo_refused_without_blocking(tmp_path):
    from spaedge.models import read_state_dict

    os.mkfifo(tmp_path / "w.safetensors")
    with pytest.raises(FileProblem, match="not a regular file"):
        read_state_dict(tmp_path / "w.safetensors")


# ------------------------------------------------- SPAEDGE_CHECKSUMS (item 10)


@pytest.mark.parametrize("case", ["dev zero", "fifo", "deep", "huge"])
def test_checksums_file_bounded(tmp_path, case):
    sums = tmp_path / "sums.json"
    if case == "dev zero":
        os.symlink("/dev/zero", sums)
        what = "not a regular file"
    elif case == "fifo":
        os.mkfifo(sums)
        what = "not a regular file"
    elif case == "deep":
        sums.write_text("[" * 200_000 + "]" * 200_000)
        what = "nested deeper than"
    else:
        with open(sums, "wb") as f:
            f.truncate(20 << 20)  # sparse: 20 MB of nothing
        what = "more than the"
    proc = in_subprocess(
        """
        import sys
        from spaedge.download import ChecksumsFileError, fetch
        try:
            fetch("https://example.org/x.bin", "x.bin", progress=False)
        except ChecksumsFileError as e:
            print(e, file=sys.stderr)
            raise SystemExit(2)
        """,
        env={"SPAEDGE_CHECKSUMS": str(sums)},
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and what in proc.stderr and str(sums) in proc.stderr


# ------------------------------------------------ passwords (item 11)


def test_mirror_password_never_printed(tmp_path, monkeypatch, capsys):
    from _mirror import dead_port

    monkeypatch.setenv("SPAEDGE_MIRROR", f"http://ann:s3cret-pw@127.0.0.1:{dead_port()}/m")
    monkeypatch.setenv("SPAEDGE_TIMEOUT", "5,5")
    assert main(["train", "--task", "flowers", "--data-dir", str(tmp_path / "d")]) == 2
    err = one_error_line(capsys)
    assert "s3cret-pw" not in err and "ann:***@127.0.0.1" in err


def test_mirror_credentials_sent_as_basic_auth(tmp_path, monkeypatch):
    import base64

    from _mirror import MirrorServer, sha256

    from spaedge.download import fetch

    url = "https://files.example.org/a.bin"
    with MirrorServer() as server:
        server.add(url, b"payload")
        monkeypatch.setenv("SPAEDGE_MIRROR", server.url.replace("//", "//ann:s3cret@"))
        got = fetch(url, tmp_path / "a.bin", digest=sha256(b"payload"), progress=False)
        assert got.read_bytes() == b"payload"
        (headers,) = server.headers_of(url)
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"ann:s3cret").decode()


# ------------------------------------------- killed writers (item 11)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_atomic_write_removes_temp_files_of_dead_processes(tmp_path):
    from spaedge.pack.format import atomic_write_bytes

    dead = _dead_pid()
    stale = tmp_path / f"task.safetensors.tmp-{dead}"
    stale.write_bytes(b"half")
    live = tmp_path / f"task.safetensors.tmp-{os.getppid()}"  # a running process's: kept
    live.write_bytes(b"being written")
    other = tmp_path / f"other.safetensors.tmp-{dead}"  # another file's: not this write's
    other.write_bytes(b"half")
    atomic_write_bytes(tmp_path / "task.safetensors", b"new")
    assert (tmp_path / "task.safetensors").read_bytes() == b"new"
    assert not stale.exists() and live.exists() and other.exists()


def test_pack_removes_its_checked_copies_left_by_a_killed_pack(tmp_path):
    """`.TASK.safetensors.new-PID` (and its temporary) of a pack killed by
    SIGKILL are removed by the next pack; a running pack's are kept."""
    dead = _dead_pid()
    left = [
        tmp_path / f".digits.safetensors.new-{dead}",
        tmp_path / f".digits.safetensors.new-{dead}.tmp-{dead}",
    ]
    for p in left:
        p.write_bytes(b"x")
    running = tmp_path / f".digits.safetensors.new-{os.getppid()}"
    running.write_bytes(b"x")
    mine = tmp_path / f".other.safetensors.new-{dead}"  # another task's: not this pack's
    mine.write_bytes(b"x")
    from spaedge.cli.pack import clean_killed_packs

    assert sorted(clean_killed_packs(tmp_path / "digits.safetensors")) == sorted(left)
    assert running.exists() and mine.exists() and not any(p.exists() for p in left)


# ----------------------------------------------- failed writes (item 11)


def _failing_open(err):
    real = open

    class Failing:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])  # half of it, then the disk is full
            raise OSError(err, os.strerror(err))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *a, **k):
        f = real(path, mode, *a, **k)
        return Failing(f) if "w" in mode else f

    return fake_open


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_failed_write_names_the_file_and_leaves_nothing_half_written(tmp_path, monkeypatch, err):
    from spaedge.pack import format as fmt
    from spaedge.train.rundir import read_run

    run = tmp_path / "run"
    write_run(run, {"config.json": b"{}", "plan.json": b"old"})
    monkeypatch.setattr(fmt, "open", _failing_open(err), raising=False)
    with pytest.raises(WriteProblem) as e:
        write_run(run, {"config.json": b"{}", "plan.json": b"new" * 1000})
    msg = str(e.value)
    assert isinstance(e.value, OSError) and e.value.errno == err
    assert f"cannot write {run / 'config.json'}: {os.strerror(err)}" in msg
    assert sorted(os.listdir(run)) == ["config.json", "plan.json"]  # no temporary left
    assert (run / "plan.json").read_bytes() == b"old"
    monkeypatch.undo()
    with pytest.raises(ValueError, match="not a finished run"):
        read_run(run)  # the manifest went first: never read half


def test_library_add_on_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    from spaedge.pack import format as fmt

    run = tmp_path / "run"
    write_run(run, {"plan.json": json.dumps(plan_json()).encode()})
    monkeypatch.setattr(fmt, "open", _failing_open(errno.ENOSPC), raising=False)
    assert main(["library", "add", str(run), "--to", str(tmp_path / "lib")]) == 2
    err = one_error_line(capsys)
    assert f"cannot write {tmp_path / 'lib'}/" in err and "No space left on device" in err
    assert os.listdir(tmp_path / "lib") == []


# ------------------------------------------------------------ checkpoints


def test_checkpoint_with_a_deeply_nested_field_is_a_checkpoint_error(tmp_path):
    import torch
    from safetensors.torch import save

    from spaedge.train.checkpoint import FORMAT, CheckpointError, load

    meta = {"format": FORMAT, "config": "{}", "rng": "{}", "position": "[" * 5000 + "]" * 5000}
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(save({"x": torch.zeros(1)}, metadata=meta))
    with pytest.raises(CheckpointError, match="field 'position': not valid JSON"):
        load(path, {})


def test_a_fifo_checkpoint_does_not_hang(tmp_path):
    os.mkfifo(tmp_path / "checkpoint.safetensors")
    proc = in_subprocess(
        f"""
        import sys
        from pathlib import Path
        from spaedge.train.checkpoint import CheckpointError, load
        try:
            load(Path({str(tmp_path / "checkpoint.safetensors")!r}), {{}})
        except CheckpointError as e:
            print(e, file=sys.stderr)
            raise SystemExit(2)
        """,
        timeout=60,
    )
    assert (
        proc.returncode == 2 and "not a regular file" in proc.stderr and "--restart" in proc.stderr
    )


def test_a_read_only_run_directory_names_the_run(tmp_path, monkeypatch):
    from pathlib import Path

    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(WriteProblem, match=f"cannot write {tmp_path / 'run' / 'run.json'}: "):
        write_run(tmp_path / "run", {"plan.json": b"{}"})
