"""Paths checked before any work: an output directory that can be written, input
files that are regular files. A command checks its paths first, so a bad path
costs a second, not the training time before it (docs/reliability.md)."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path

__all__ = [
    "PathProblem",
    "check_path_text",
    "check_output_dir",
    "check_output_file",
    "check_input_file",
    "FileProblem",
    "MissingFile",
    "MAX_JSON_BYTES",
    "MAX_BUNDLE_BYTES",
    "MAX_JSON_DEPTH",
    "read_regular",
    "parse_json",
    "read_json",
    "json_depth_ok",
    "pid_alive",
    "remove_stale",
    "WriteProblem",
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


# ------------------------------------------------------------------ bounded reads

#: Size limits of what the toolchain reads whole (docs/reliability.md, "Bounded reads").
MAX_JSON_BYTES = 64 << 20  # plans, manifests, configs, metrics, $SPAEDGE_CHECKSUMS
MAX_BUNDLE_BYTES = 4 << 30  # task bundles in run directories, weight files, checkpoints
#: Nesting limit of every JSON document read (a plan nests 3 deep, a checkpoint's optimizer 5).
MAX_JSON_DEPTH = 64


class FileProblem(PathProblem):
    """A file that cannot be read as what it should be: the message names the
    file (and the field, for bad content) and says what to do."""


class MissingFile(FileProblem, FileNotFoundError):
    """A file that does not exist (also a FileNotFoundError, as ``open`` raises)."""


def _show(p) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in os.fspath(p))


def read_regular(path: str | os.PathLike, what: str = "file", limit: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``limit``
    bytes. A FIFO, device (``/dev/zero``), socket or directory is refused
    without blocking: the file is opened with ``O_NONBLOCK`` and checked with
    ``fstat`` before anything is read, and never more than ``limit + 1`` bytes
    are read (a file that grows while read is refused too)."""
    p = check_path_text(path, what)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(p, flags)
    except FileNotFoundError:
        raise MissingFile(f"{what} {_show(p)} does not exist") from None
    except IsADirectoryError:
        raise FileProblem(f"{what} {_show(p)} is a directory, not a file") from None
    except OSError as e:
        raise FileProblem(f"{what} {_show(p)} cannot be opened ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise FileProblem(f"{what} {_show(p)} is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise FileProblem(
                f"{what} {_show(p)} is not a regular file (a FIFO, device or socket): "
                "give the file itself"
            )
        if st.st_size > limit:
            raise FileProblem(
                f"{what} {_show(p)} is {st.st_size} bytes, more than the {limit} this file can "
                "hold: not the right file"
            )
        chunks, total = [], 0
        while total <= limit:
            block = os.read(fd, min(1 << 24, limit + 1 - total))
            if not block:
                break
            chunks.append(block)
            total += len(block)
        if total > limit:
            raise FileProblem(f"{what} {_show(p)} grew past {limit} bytes while being read")
        return b"".join(chunks)
    except OSError as e:
        raise FileProblem(f"{what} {_show(p)} cannot be read ({e.strerror or e})") from None
    finally:
        os.close(fd)


def json_depth_ok(text: bytes | str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether no array or object in the JSON ``text`` nests deeper than ``limit``
    (strings are skipped; brackets are counted without parsing, so no recursion)."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if data.count(b"[") + data.count(b"{") <= limit:  # cannot nest deeper: no scan needed
        return True
    depth = 0
    for m in re.finditer(rb'"(?:[^"\\]|\\.)*"?|[\[{]|[\]}]', data, re.S):
        c = m.group()[:1]
        if c in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return False
        elif c in (b"]", b"}"):
            depth -= 1
    return True


def parse_json(
    data: bytes | str, where: str, depth: int = MAX_JSON_DEPTH, pairs_hook=None
) -> object:
    """``data`` parsed as JSON, nested at most ``depth`` deep; bad JSON raises
    FileProblem naming ``where`` (a file, or a file and a field)."""
    if not json_depth_ok(data, depth):
        raise FileProblem(f"{where}: not valid JSON (nested deeper than {depth} levels)")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text, object_pairs_hook=pairs_hook)
    except UnicodeDecodeError as e:
        raise FileProblem(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise FileProblem(f"{where}: not valid JSON (nested too deeply)") from None
    except ValueError as e:
        raise FileProblem(f"{where}: not valid JSON ({e})") from None


def read_json(
    path: str | os.PathLike,
    what: str = "file",
    limit: int = MAX_JSON_BYTES,
    depth: int = MAX_JSON_DEPTH,
) -> object:
    """A JSON file read through ``read_regular`` (regular, at most ``limit``
    bytes) and ``parse_json`` (at most ``depth`` deep)."""
    data = read_regular(path, what, limit)
    return parse_json(data, f"{what} {_show(path)}", depth)


# ------------------------------------------------------------------ temporary files


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (this one always does; on Windows every
    process is taken to, so nothing is ever cleaned there)."""
    if pid == os.getpid():
        return True
    if pid <= 0 or os.name == "nt":
        return pid > 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def _unlocked(path: str) -> bool:
    """Nobody holds an flock on ``path`` (a writer holds one while it writes)."""
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fd = os.open(
            path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
        )
    except OSError:
        return True  # a link, or gone: nothing to ask
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def remove_stale(directory: str | os.PathLike, pattern: str) -> list[Path]:
    """Remove the entries of ``directory`` whose names match ``pattern`` (a
    regular expression with a ``pid`` group) left by processes that are gone:
    the temporary files and directories a killed writer (SIGKILL, power loss)
    leaves behind. An entry whose process runs, or which a writer still holds
    locked, is left alone. Returns what was removed; errors are ignored (the
    next writer tries again)."""
    rx = re.compile(pattern)
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        m = rx.fullmatch(entry.name)
        if not m or pid_alive(int(m.group("pid"))):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                import shutil

                shutil.rmtree(entry.path)
            elif _unlocked(entry.path):
                os.unlink(entry.path)
            else:
                continue
            removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


class WriteProblem(OSError):
    """A file could not be written (disk full, read-only, no permission): the
    message names the file, the reason and what to do; nothing half-written
    is left."""

    def __init__(self, path: str | os.PathLike, error: OSError):
        reason = error.strerror or str(error) or type(error).__name__
        hint = {
            errno.ENOSPC: "free some space or write elsewhere",
            errno.EDQUOT: "free some space or write elsewhere",
            errno.EROFS: "the file system is read-only: write elsewhere",
            errno.EACCES: "make it writable by this user or write elsewhere",
            errno.EPERM: "make it writable by this user or write elsewhere",
        }.get(error.errno, "write elsewhere")
        super().__init__(
            error.errno, f"cannot write {_show(path)}: {reason}; {hint} (nothing was half-written)"
        )
        self.filename = os.fspath(path)
        self.error = error

    def __str__(self) -> str:
        return self.strerror
