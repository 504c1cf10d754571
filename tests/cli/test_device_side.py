"""The device side needs no torch (issue: the Raspberry Pi, for real).

`spaedge --help`, `spaedge run`/`info`/`bench` and `spaedge.runtime` import
nothing that imports torch: checked with torch blocked in a subprocess, and
by running the commands in a venv that has numpy, safetensors, Pillow and
spaedge but no torch. The device's image preprocessing is the task's own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

from spaedge.cli import COMMANDS, build_parser

sys.path.insert(0, str(Path(__file__).parents[1] / "device"))
from make_fixtures import make  # noqa: E402

BLOCK_TORCH = "import sys; sys.modules['torch'] = None\n"


def blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True, timeout=120
    )


def test_device_modules_import_with_torch_blocked():
    r = blocked(
        "import spaedge.cli, spaedge.cli.run, spaedge.cli.info, spaedge.cli.bench\n"
        "import spaedge.runtime, spaedge.tasks, spaedge.tasks.image\n"
        "from spaedge.runtime import Runtime\n"
        "print('ok')"
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.parametrize(
    "args", [["--help"], ["run", "--help"], ["info", "--help"], ["bench", "--help"]]
)
def test_help_builds_with_torch_blocked(args):
    r = blocked(f"from spaedge.cli import main\nmain({args!r})")
    assert r.returncode == 0, r.stderr
    assert "usage: spaedge" in r.stdout and "unavailable here" not in r.stdout, r.stdout
    if args == ["--help"]:
        for name in COMMANDS:
            assert f"\n    {name}" in r.stdout


def test_help_never_imports_torch():
    """Even where torch is installed, the top-level help does not load it."""
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\nfrom spaedge.cli import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and r.stdout.strip().endswith("False"), r.stdout + r.stderr


def test_command_lines_are_the_commands_own():
    """COMMANDS' help lines (what `spaedge --help` shows) are the modules' own."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert helps == COMMANDS


def test_toolchain_commands_still_parse_in_full():
    args = build_parser(["train", "--task", "digits"]).parse_args(["train", "--task", "digits"])
    assert args.command == "train" and callable(args.func)


@pytest.mark.parametrize("task_kind", ["digits", "imagefolder"])
def test_device_preprocessing_is_the_tasks_own(tmp_path, task_kind):
    """`spaedge run IMAGE` on a device gives exactly Task.load_image's input."""
    from _toolchain_helpers import tiny_image_folder
    from PIL import Image

    from spaedge.cli.run import _image
    from spaedge.tasks import get_task

    g = np.random.default_rng(1)
    png = tmp_path / "x.png"
    Image.fromarray((g.random((40, 30, 3)) * 255).astype(np.uint8), "RGB").save(png)
    if task_kind == "digits":
        task = get_task("digits")
    else:
        task = get_task(f"imagefolder:{tiny_image_folder(tmp_path / 'imgs')}", input_size=32)
    c, h, w = task.input_size
    info = {
        "name": task.name,
        "channels": c,
        "input_shape": (c, h, w),
        "mean": list(task.mean),
        "std": list(task.std),
    }
    np.testing.assert_array_equal(_image(str(png), info), task.load_image(str(png)).numpy())


@pytest.fixture(scope="module")
def no_torch_python(tmp_path_factory) -> Path:
    """A venv without the system's packages: numpy, safetensors, Pillow and the
    installed spaedge (with its compiled runtime) linked in; no torch."""
    import numpy
    import PIL
    import safetensors

    import spaedge

    root = tmp_path_factory.mktemp("no-torch-venv")
    venv.EnvBuilder(system_site_packages=False, with_pip=False, symlinks=True).create(root)
    py = root / "bin" / "python"
    site = Path(
        subprocess.run(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    for mod in (numpy, PIL, safetensors, spaedge):
        pkg = Path(mod.__file__).parent
        (site / pkg.name).symlink_to(pkg)
        for libs in pkg.parent.glob("*.libs"):  # numpy.libs, pillow.libs: their shared libraries
            if not (site / libs.name).exists():
                (site / libs.name).symlink_to(libs)
    r = subprocess.run([py, "-c", "import torch"], capture_output=True, text=True)
    assert r.returncode != 0 and "No module named 'torch'" in r.stderr
    return py


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    return make(tmp_path_factory.mktemp("device"))


def spaedge_cli(py, *args, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [py, "-m", "spaedge.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )


def test_device_commands_run_without_torch(no_torch_python, fixtures, tmp_path):
    py, b = no_torch_python, fixtures / "bundles"
    r = spaedge_cli(py, "--help")
    assert r.returncode == 0 and "unavailable here" not in r.stdout, r.stdout + r.stderr
    r = spaedge_cli(py, "run", "--bundles", b, "--eval", fixtures / "test.npz")
    assert r.returncode == 0 and "accuracy 100.00% on 64 images" in r.stdout, r.stderr
    r = spaedge_cli(py, "run", "--bundles", b, "--eval", fixtures / "images")
    assert r.returncode == 0 and "accuracy 100.00% on 6 images" in r.stdout, r.stderr
    r = spaedge_cli(py, "run", "--bundles", b, fixtures / "digit.png", fixtures / "x.npy")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 3, r.stderr
    r = spaedge_cli(py, "info", b / "digits.safetensors")
    assert r.returncode == 0 and "spaedge-task" in r.stdout, r.stderr
    out = tmp_path / "pi.json"
    r = spaedge_cli(py, "bench", "--bundles", b, "--runs", "3", "--switches", "2", "--json", out)
    assert r.returncode == 0 and out.exists(), r.stderr
    assert "torch is not installed" in r.stdout  # the PyTorch column is left out, said so


def test_task_split_without_torch_says_what_to_do(no_torch_python, fixtures):
    r = spaedge_cli(no_torch_python, "run", "--bundles", fixtures / "bundles", "--eval")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "needs the toolchain" in r.stderr and "--save-arrays" in r.stderr
    r = spaedge_cli(no_torch_python, "train", "--task", "digits")
    assert r.returncode == 2 and "install the toolchain" in r.stderr, r.stderr


def test_save_arrays_round_trip(fixtures, tmp_path, capsys):
    """--eval --save-arrays on the workstation, --eval FILE on the device: same score."""
    from spaedge.cli import main

    dest = tmp_path / "digits-test.npz"
    bundles = str(fixtures / "bundles")
    args = ["run", "--bundles", bundles, "--task", "digits", "--eval"]
    assert main([*args, "--save-arrays", str(dest)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    with np.load(dest) as z:
        assert z["X"].dtype == np.float32 and z["X"].shape[1:] == (1, 28, 28)
        assert z["y"].dtype == np.int64 and len(z["y"]) == len(z["X"])
    assert main(["run", "--bundles", bundles, "--eval", str(dest)]) == 0
    second = capsys.readouterr().out.splitlines()[0]
    assert first.split(" accuracy ")[1] == second.split(" accuracy ")[1]
