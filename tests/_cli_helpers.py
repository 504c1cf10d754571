"""The `spaedge` command as a user runs it (a subprocess), and the short
training schedule the command-line tests share."""

from __future__ import annotations

import subprocess
import sys


def spaedge(*args, cwd, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "spaedge.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"spaedge {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


# A short schedule: the same code path as the default, fewer epochs.
QUICK = [
    "--epochs",
    "2",
    "--recovery-epochs",
    "0",
    "--final-epochs",
    "1",
    "--density",
    "0.5",
    "--prune-step",
    "0.2",
]
