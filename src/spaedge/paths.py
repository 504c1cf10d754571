"""Paths checked before any work: an output directory that can be written, input
files that are regular files. A command checks its paths first, so a bad path
costs a second, not the training time before it (docs/reliability.md)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = [
    "PathProblem",
    "check_path_text",
    "check_output_dir",
    "check_output_file",
    "check_input_file",
]


class PathProblem(ValueError):
    """A path that cannot serve: the message names it and says why."""


def check_path_text(path: str | os.PathLike, what: str = "path") -> Path:
    text = os.fspath(path)
    if "\x00" in text:
        raise PathProblem(f"{what} {text!r} contains a NUL byte: no file can have that name")
    if not text:
        raise PathProblem(f"{what} is empty")
    return Path(text)


def check_output_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """``path`` is a directory, or can be made one, and this process may write in it."""
    p = check_path_text(path, what).expanduser()
    if p.exists() and not p.is_dir():
        raise PathProblem(f"{what} {p} is a file, not a directory: give another path")
    probe = p
    while not probe.exists():
        if probe.is_symlink():  # a dangling link
            raise PathProblem(f"{what} {p}: {probe} is a broken symbolic link")
        probe = probe.parent
    if not probe.is_dir():
        raise PathProblem(f"{what} {p}: {probe} is a file, so nothing can be made under it")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PathProblem(f"{what} {p}: {probe} is not writable by this user")
    return p


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """``path`` may be written: its directory passes ``check_output_dir`` and, if
    it exists, it is a regular file (never a directory, FIFO or device)."""
    p = check_path_text(path, what).expanduser()
    check_output_dir(p.parent, f"the directory of {what} {p}")
    if p.exists() or p.is_symlink():
        mode = os.stat(p, follow_symlinks=False).st_mode if p.is_symlink() else p.stat().st_mode
        if not stat.S_ISREG(mode) and not stat.S_ISLNK(mode):
            raise PathProblem(
                f"{what} {p} exists and is not a regular file: move it away or pick another path"
            )
        if stat.S_ISLNK(mode) and p.exists() and not p.is_file():
            raise PathProblem(f"{what} {p} links to something that is not a regular file")
    return p


def check_input_file(path: str | os.PathLike, what: str = "input file") -> Path:
    """``path`` is an existing regular file this process can read."""
    p = check_path_text(path, what).expanduser()
    if not p.exists():
        raise PathProblem(f"{what} {p} does not exist")
    if not p.is_file():
        raise PathProblem(f"{what} {p} is not a regular file")
    if not os.access(p, os.R_OK):
        raise PathProblem(f"{what} {p} is not readable by this user")
    return p
