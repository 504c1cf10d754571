"""The device side as a Raspberry Pi runs it: the runtime and `spaedge run`,
`info` and `bench` on bundles packed elsewhere, numpy (and Pillow for image
files) only. Runs on x86 in the ordinary test run and, in CI, under
qemu-aarch64 with Debian's arm64 CPython and the aarch64 wheel
(.ci/aarch64_device.sh), where the NEON kernels must be the ones in use.

The emulated Python cannot start processes (no binfmt_misc): everything is
called in-process, never through a subprocess.
"""

from __future__ import annotations

import json
import platform

import numpy as np
import pytest

from spaedge.cli import main
from spaedge.runtime import Runtime

# The fastest kernels each machine must pick (a broken or missing NEON build
# falls back to scalar, and fails here).
EXPECTED_ISA = {"aarch64": {"neon"}, "x86_64": {"avx2", "avx512"}}


def runtime(fixtures, threads=1):
    rt = Runtime(fixtures / "bundles" / "base.safetensors", threads=threads)
    rt.load_task(fixtures / "bundles" / "digits.safetensors")
    return rt


def test_the_machines_fastest_kernels_are_in_use(fixtures):
    rt = runtime(fixtures)
    want = EXPECTED_ISA.get(platform.machine())
    assert want is not None, f"no expected ISA for {platform.machine()}"
    assert rt.isa in want


@pytest.mark.parametrize("threads", [1, 2])
def test_logits_match_pytorch(fixtures, threads):
    """Against the logits PyTorch gave on the workstation for the same inputs."""
    rt = runtime(fixtures, threads)
    ref = np.load(fixtures / "expected.npz")
    with np.load(fixtures / "test.npz") as z:
        got = rt.run(z["X"])
    np.testing.assert_allclose(got, ref["logits_x"], rtol=1e-4, atol=1e-4)
    assert (got.argmax(1) == ref["logits_x"].argmax(1)).all()


def test_run_eval_scores_stored_arrays(fixtures, capsys):
    assert (
        main(["run", "--bundles", str(fixtures / "bundles"), "--eval", str(fixtures / "test.npz")])
        == 0
    )
    out = capsys.readouterr().out
    assert "accuracy 100.00% on 64 images" in out, out


def test_run_eval_scores_an_image_folder(fixtures, capsys):
    folder = fixtures / "images"
    assert main(["run", "--bundles", str(fixtures / "bundles"), "--eval", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "accuracy 100.00% on 6 images" in out, out


def test_run_classifies_images_like_pytorch(fixtures, capsys):
    ref = np.load(fixtures / "expected.npz")
    paths = [str(fixtures / "images" / n) for n in ref["names"]]
    assert main(["run", "--bundles", str(fixtures / "bundles"), "--top", "1", *paths]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(paths)
    for line, path, row in zip(lines, paths, ref["logits_images"]):
        p = np.exp(row - row.max())
        p /= p.sum()
        assert line == f"{path}: {row.argmax()} {p.max():.1%}"


def test_run_classifies_npy_arrays(fixtures, capsys):
    ref = np.load(fixtures / "expected.npz")["logits_x"][:2]
    x = fixtures / "x.npy"
    assert main(["run", "--bundles", str(fixtures / "bundles"), "--top", "2", str(x)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [l.split(":")[0] for l in lines] == [f"{x}[0]", f"{x}[1]"]
    for line, row in zip(lines, ref):
        assert line.split(": ")[1].split(" ")[0] == str(row.argmax())


def test_run_refuses_bad_arrays_in_one_line(fixtures, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, X=np.zeros((2, 3, 28, 28), np.float32), y=np.zeros(2, np.int64))
    assert main(["run", "--bundles", str(fixtures / "bundles"), "--eval", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "X must be float (N, 1, 28, 28)" in err and len(err.strip().splitlines()) == 1


def test_info(fixtures, capsys):
    assert main(["info", str(fixtures / "bundles" / "digits.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "spaedge-task" in out and "content hash checked" in out and "1x28x28" in out


def test_bench_writes_json(fixtures, tmp_path, capsys):
    out = tmp_path / "pi.json"
    args = ["bench", "--bundles", str(fixtures / "bundles"), "--engines", "spaedge"]
    assert main([*args, "--runs", "3", "--switches", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["task"]["name"] == "digits"
    rows = [r for r in result["latency"] if r["engine"] == "spaedge"]
    assert rows and rows[0]["median_ms"] > 0
