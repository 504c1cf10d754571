"""Every download spaedge makes goes through this module.

    from spaedge.download import fetch, extract_tar, spaedge_home, data_home
    path = fetch(url, dest, digest="sha256:...")     # cached, resumable, verified

Where files go: ``spaedge_home()`` is ``$SPAEDGE_HOME`` or ``~/.cache/spaedge``
(pretrained weights in ``weights/``); ``data_home()`` is ``$SPAEDGE_DATA`` or
``spaedge_home()/data`` (datasets).

Environment:

- ``SPAEDGE_MIRROR=URL``: fetch ``URL/<upstream host>/<upstream path>`` instead
  of each upstream URL, e.g.
  ``URL/download.pytorch.org/models/resnet18-f37072fd.pth``. ``file://`` mirrors
  work too.
- ``SPAEDGE_CHECKSUMS=FILE``: a JSON object ``{"<upstream URL>": "sha256:<hex>"}``
  that adds or replaces expected digests.
- ``SPAEDGE_TIMEOUT=CONNECT[,READ]``: seconds (default 15 and 60).

A cached file that verifies is returned without touching the network. A
download goes to ``<dest>.part``, resumes from there with an HTTP ``Range``
request after an interruption, is verified, then renamed into place. Every
failure is one ``DownloadError`` whose message is one line naming the URL and
the path where the file can be placed by hand.

Only the standard library is used here (``rich`` for the progress bar when it
is installed); there is no torch import, so the device side can use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional, Union

from spaedge.progress import ByteProgress

__all__ = [
    "CONNECT_TIMEOUT",
    "READ_TIMEOUT",
    "DigestMismatch",
    "DownloadError",
    "UnsafeArchive",
    "data_home",
    "expected_digest",
    "extract_tar",
    "fetch",
    "file_digest",
    "file_lock",
    "mirrored_url",
    "parse_digest",
    "spaedge_home",
]

CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 60.0
RETRIES = 3  # resumptions after a transfer is cut off, within one fetch()
CHUNK = 1 << 20
USER_AGENT = "spaedge/0.1 (python urllib)"

PathLike = Union[str, "os.PathLike[str]"]
Progress = Callable[[int, Optional[int]], None]
_DIGEST_LEN = {"sha256": 64, "md5": 32}


class DownloadError(OSError):
    """A file could not be fetched or verified. ``str()`` is one line naming the
    URL and where the file can be placed by hand."""

    def __init__(self, message: str, url: str = "", dest: PathLike = ""):
        super().__init__(" ".join(str(message).split()))  # one line, always
        self.url = url
        self.dest = os.fspath(dest) if dest else ""

    def __str__(self) -> str:  # OSError would format errno style
        return self.args[0]


class DigestMismatch(DownloadError):
    """The downloaded bytes do not have the expected digest (the partial file is deleted)."""


class ChecksumsFileError(DownloadError, ValueError):
    """``$SPAEDGE_CHECKSUMS`` is unreadable, not JSON, or has a bad entry."""


class UnsafeArchive(DownloadError, ValueError):
    """A tar member would land outside the destination, or is a link out of it or a device file."""


# ------------------------------------------------------------------ places


def spaedge_home() -> Path:
    """``$SPAEDGE_HOME``, else ``~/.cache/spaedge``."""
    env = os.environ.get("SPAEDGE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "spaedge"


def data_home() -> Path:
    """``$SPAEDGE_DATA``, else ``spaedge_home()/data``: where datasets are downloaded."""
    env = os.environ.get("SPAEDGE_DATA")
    return Path(env).expanduser() if env else spaedge_home() / "data"


# ------------------------------------------------------------------ digests


def parse_digest(digest: str, where: str = "") -> tuple[str, str]:
    """``"sha256:<hex>"`` or ``"md5:<hex>"`` -> (algorithm, lower-case hex)."""
    algo, sep, hexd = str(digest).strip().partition(":")
    algo, hexd = algo.lower(), hexd.lower()
    if (
        not sep
        or algo not in _DIGEST_LEN
        or not re.fullmatch(f"[0-9a-f]{{{_DIGEST_LEN[algo]}}}", hexd)
    ):
        raise ValueError(
            f"{where}bad digest {digest!r}: expected 'sha256:' and 64 hex digits "
            "(or 'md5:' and 32 where only an MD5 is published)"
        )
    return algo, hexd


def file_digest(path: PathLike, algo: str = "sha256") -> str:
    """``"<algo>:<hex>"`` of a file's bytes."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return f"{algo}:{h.hexdigest()}"


def _checksum_overrides() -> dict:
    name = os.environ.get("SPAEDGE_CHECKSUMS")
    if not name:
        return {}
    try:
        with open(name, encoding="utf-8") as f:
            table = json.load(f)
    except OSError as e:
        raise ChecksumsFileError(
            f"SPAEDGE_CHECKSUMS={name}: cannot read it ({e.strerror or e})"
        ) from e
    except ValueError as e:
        raise ChecksumsFileError(f"SPAEDGE_CHECKSUMS={name}: not valid JSON ({e})") from e
    if not isinstance(table, dict):
        raise ChecksumsFileError(
            f"SPAEDGE_CHECKSUMS={name}: expected a JSON object "
            '{"<upstream URL>": "sha256:<hex>"}, found ' + type(table).__name__
        )
    out = {}
    for url, digest in table.items():
        if not isinstance(digest, str):
            raise ChecksumsFileError(f"SPAEDGE_CHECKSUMS={name}: entry {url!r} is not a string")
        try:
            parse_digest(digest)
        except ValueError as e:
            raise ChecksumsFileError(f"SPAEDGE_CHECKSUMS={name}: entry {url!r}: {e}") from None
        out[url] = digest
    return out


def expected_digest(url: str, digest: str | None = None) -> str | None:
    """The digest to check ``url``'s file against: ``$SPAEDGE_CHECKSUMS``'s entry
    for ``url`` if there is one, else ``digest``."""
    return _checksum_overrides().get(url, digest)


def mirrored_url(url: str) -> str:
    """``url`` as fetched: ``$SPAEDGE_MIRROR/<host>/<path>`` when a mirror is set."""
    mirror = os.environ.get("SPAEDGE_MIRROR", "").strip()
    if not mirror:
        return url
    u = urllib.parse.urlsplit(url)
    tail = u.netloc + u.path + (f"?{u.query}" if u.query else "")
    return mirror.rstrip("/") + "/" + tail


def _verify(path: Path, digest: str | None) -> tuple[bool, str]:
    """(matches, "<algo>:<hex>" found). No digest: any existing file matches."""
    if digest is None:
        return True, ""
    algo, want = parse_digest(digest)
    got = file_digest(path, algo)
    return got == f"{algo}:{want}", got


# ------------------------------------------------------------------ HTTP


def _timeouts(timeout) -> tuple[float, float]:
    if timeout is None:
        env = os.environ.get("SPAEDGE_TIMEOUT", "").strip()
        if env:
            try:
                parts = [float(x) for x in env.split(",")]
                return (parts[0], parts[1] if len(parts) > 1 else parts[0])
            except (ValueError, IndexError):
                raise ValueError(
                    f"SPAEDGE_TIMEOUT={env!r}: expected CONNECT[,READ] in seconds"
                ) from None
        return CONNECT_TIMEOUT, READ_TIMEOUT
    if isinstance(timeout, (int, float)):
        return float(timeout), float(timeout)
    connect, read = timeout
    return float(connect), float(read)


def _opener(read_timeout: float) -> urllib.request.OpenerDirector:
    """urllib with its proxies and redirects, but a separate read timeout: the
    opener's ``timeout`` bounds connecting (and TLS), ``read_timeout`` every read."""

    class HTTP(http.client.HTTPConnection):
        def connect(self):
            super().connect()
            self.sock.settimeout(read_timeout)

    class HTTPS(http.client.HTTPSConnection):
        def connect(self):
            super().connect()
            self.sock.settimeout(read_timeout)

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(HTTP, req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(HTTPS, req, context=self._context)

    return urllib.request.build_opener(HTTPHandler, HTTPSHandler)


def _reason(e: BaseException, connect: float, read: float) -> str:
    """A short human reason for a network failure."""
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    inner = e.reason if isinstance(e, urllib.error.URLError) else e
    if isinstance(inner, ConnectionRefusedError):
        return "connection refused"
    if isinstance(inner, socket.gaierror):
        return f"host not found ({inner.strerror or inner})"
    if isinstance(inner, (socket.timeout, TimeoutError)):
        if isinstance(e, urllib.error.URLError):
            return f"no connection within {connect:g} s"
        return f"no data for {read:g} s"
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror.lower() if inner.strerror[:1].isupper() else inner.strerror
    return str(inner) or type(inner).__name__


def _by_hand(url: str, dest: Path, offline: bool = False) -> str:
    return f"place the file by hand at {dest}" + (
        " (datasets can also be given with --data-dir DIR)"
        if offline
        else " (or run with --no-download to use local files only; datasets can also be given with "
        "--data-dir DIR)"
    )


def _describe(upstream: str, actual: str) -> str:
    return upstream if actual == upstream else f"{actual} (mirror of {upstream})"


class _Cut(Exception):
    """The transfer stopped early; what arrived is kept in the partial file."""


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)", value or "")
    return int(m.group(1)) if m else None


def _transfer(
    opener,
    url: str,
    part: Path,
    connect: float,
    read: float,
    report: Callable[[int, int | None], None],
) -> int:
    """One request: append to ``part`` (resuming with Range) until the body ends.
    Returns the offset it wrote from (0: a fresh start). Raises _Cut if the body
    ended early, network errors as they come."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = opener.open(req, timeout=connect)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing past what we have: the partial is whole (or wrong)
            e.close()
            return have
        raise
    with resp:
        status = getattr(resp, "status", None) or resp.getcode()
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if (
            have
            and status == 206
            and _content_range_start(resp.headers.get("Content-Range")) == have
        ):
            mode, done = "ab", have
        else:  # the server ignored the Range (200): start again from byte 0
            mode, done = "wb", 0
        start = done
        total = done + length if length is not None else None
        report(done, total)
        with open(part, mode) as f:
            while True:
                block = resp.read(CHUNK)
                if not block:
                    break
                f.write(block)
                done += len(block)
                report(done, total)
            f.flush()
            os.fsync(f.fileno())
    if total is not None and done < total:
        raise _Cut(f"connection closed after {done} of {total} bytes")
    return start


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An advisory lock on ``.<name>.lock`` beside ``path`` (POSIX), so that processes started
    together (torchrun ranks) do not write the same partial file."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# ------------------------------------------------------------------ progress


def _default_progress(url: str, dest: Path):
    if sys.stderr is not None and sys.stderr.isatty():
        return ByteProgress(dest.name)
    print(f"spaedge: downloading {url} to {dest}", file=sys.stderr, flush=True)
    return None


# ------------------------------------------------------------------ fetch


def fetch(
    url: str,
    dest: PathLike,
    *,
    digest: str | None = None,
    allow_download: bool = True,
    progress: Progress | None | bool = None,
    timeout: None | float | tuple[float, float] = None,
    retries: int = RETRIES,
) -> Path:
    """Make ``dest`` hold the file at ``url`` and return it as a Path.

    digest: ``"sha256:<hex>"``, or ``"md5:<hex>"`` for files whose publishers give
    only an MD5 (MD5 catches corruption but not a deliberate substitute: prefer
    SHA-256). ``$SPAEDGE_CHECKSUMS`` may add or replace it. None: not verified.

    If ``dest`` exists and verifies it is returned with no network request.
    Otherwise the file is downloaded (from ``$SPAEDGE_MIRROR`` if set) into
    ``dest.part``, resuming a partial file left by an interrupted run with an
    HTTP Range request (a server that ignores Range sends it all again), and up
    to ``retries`` times within this call when the transfer is cut off. Then it
    is verified, synced and renamed onto ``dest``. A digest mismatch deletes the
    partial file and raises DigestMismatch.

    allow_download: False (``--no-download``) makes a missing file an error
    instead of a request. progress: ``progress(bytes_done, total_or_None)``;
    None shows a bar when stderr is a terminal (a line otherwise); False is
    silent. timeout: seconds, or (connect, read); default ``$SPAEDGE_TIMEOUT`` or
    15 and 60.

    Raises DownloadError (an OSError) with a one-line message.
    """
    dest = Path(dest).expanduser()
    digest = expected_digest(url, digest)
    if digest is not None:
        parse_digest(digest, f"{url}: ")
    if dest.is_file():
        ok, got = _verify(dest, digest)
        if ok:
            return dest
        if not allow_download:
            raise DigestMismatch(
                f"{dest} does not match {url}: expected {digest}, got {got}, and downloading is "
                f"forbidden (--no-download); replace it with the right file or allow downloads",
                url,
                dest,
            )
    if not allow_download:
        raise DownloadError(
            f"{url} is not cached and network access is forbidden (--no-download): "
            + _by_hand(url, dest, offline=True),
            url,
            dest,
        )

    with file_lock(dest):
        if dest.is_file() and _verify(dest, digest)[0]:  # another process fetched it meanwhile
            return dest
        return _download(url, dest, digest, progress, timeout, retries)


def _download(url, dest: Path, digest, progress, timeout, retries) -> Path:
    actual = mirrored_url(url)
    where = _describe(url, actual)
    connect, read = _timeouts(timeout)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shown = None
    if progress is None:
        shown = _default_progress(actual, dest)
        report = shown if shown is not None else (lambda done, total: None)
    elif progress is False:
        report = lambda done, total: None  # noqa: E731
    else:
        report = progress

    opener = _opener(read)
    fresh_retry = True  # one restart from byte 0 when a resumed file fails its check
    try:
        attempts = 0
        while True:
            before = part.stat().st_size if part.exists() else 0
            try:
                start = _transfer(opener, actual, part, connect, read, report)
            except _Cut as e:
                grown = (part.stat().st_size if part.exists() else 0) > before
                attempts += 1
                if attempts > retries or not grown:
                    raise DownloadError(
                        f"cannot download {where}: {e} (tries: {attempts}); the "
                        f"partial file {part} resumes on the next run, or " + _by_hand(url, dest),
                        url,
                        dest,
                    ) from None
                continue
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                kept = part.exists() and part.stat().st_size > before
                if kept and not isinstance(e, urllib.error.HTTPError) and attempts < retries:
                    attempts += 1  # cut off mid-body by an error rather than an early end
                    continue
                msg = f"cannot download {where}: {_reason(e, connect, read)}; "
                raise DownloadError(msg + _by_hand(url, dest), url, dest) from None

            ok, got = _verify(part, digest)
            if ok:
                break
            part.unlink()
            if start > 0 and fresh_retry:
                fresh_retry = False  # the old partial may be what was wrong
                continue
            raise DigestMismatch(
                f"digest mismatch for {where}: expected {digest}, got {got}; the download was "
                f"refused and deleted. If the file changed upstream, put its digest in "
                f"$SPAEDGE_CHECKSUMS, or " + _by_hand(url, dest),
                url,
                dest,
            )
    finally:
        if shown is not None:
            shown.close()

    os.replace(part, dest)
    _fsync_dir(dest.parent)
    return dest


# ------------------------------------------------------------------ archives


def _inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def _check_member(m: tarfile.TarInfo, root: str) -> None:
    """Refuse what Python's tarfile 'data' filter refuses (for Pythons without
    it, and for one clear message on all): absolute names, names or links that
    resolve outside ``root`` (following links already extracted), devices and
    FIFOs."""
    name = m.name
    if name.startswith(("/", "\\")) or os.path.isabs(name) or re.match(r"[A-Za-z]:", name):
        raise UnsafeArchive(f"member {name!r} has an absolute path")
    target = os.path.realpath(os.path.join(root, name))
    if not _inside(root, target):
        raise UnsafeArchive(f"member {name!r} would be written outside the destination")
    if (
        m.ischr()
        or m.isblk()
        or m.isfifo()
        or not (m.isfile() or m.isdir() or m.issym() or m.islnk())
    ):
        raise UnsafeArchive(f"member {name!r} is a device, FIFO or other special file")
    if m.issym() or m.islnk():
        link = m.linkname
        if os.path.isabs(link) or link.startswith(("/", "\\")):
            raise UnsafeArchive(f"link {name!r} points at an absolute path {link!r}")
        base = os.path.dirname(target) if m.issym() else root
        if not _inside(root, os.path.realpath(os.path.join(base, link))):
            raise UnsafeArchive(f"link {name!r} -> {link!r} points outside the destination")


def extract_tar(archive: PathLike, dest: PathLike) -> Path:
    """Unpack ``archive`` (any tar compression) into directory ``dest`` safely.

    Members are extracted into a temporary directory beside ``dest`` with
    tarfile's ``data`` filter (and, where Python lacks it, the same checks done
    here): no absolute paths, no ``..`` out of the destination, no links out of
    it, no device files. Only when all members are out are the archive's
    top-level entries renamed into ``dest`` (replacing entries of the same name).
    An unsafe member raises UnsafeArchive (a DownloadError) and nothing is left
    behind; so does an unreadable archive (DownloadError).
    """
    archive, dest = Path(archive), Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    out, old = work / "out", work / "old"
    out.mkdir()
    old.mkdir()
    root = os.path.realpath(out)
    refused = (UnsafeArchive,) + ((tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ())
    try:
        try:
            with tarfile.open(archive, "r:*") as tf:
                for m in tf:
                    _check_member(m, root)
                    if hasattr(tarfile, "data_filter"):
                        tf.extract(m, root, filter="data")
                    else:  # as the data filter would: no owners, no special mode bits
                        m.mode = (m.mode & 0o755) | (0o700 if m.isdir() else 0o600)
                        tf.extract(m, root, set_attrs=False)
        except refused as e:
            raise UnsafeArchive(f"{archive}: refused, {e}; nothing was extracted") from None
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DownloadError(
                f"{archive}: not a readable tar archive ({e}); delete it and download it again"
            ) from None
        moved = []
        try:
            for entry in sorted(os.listdir(root)):
                target = dest / entry
                if target.is_dir() and not target.is_symlink():
                    os.replace(target, old / entry)  # same filesystem: a rename
                    moved.append(entry)
                elif target.exists() or target.is_symlink():
                    target.unlink()
                os.replace(out / entry, target)
        except OSError:
            for entry in moved:  # put back what was moved aside
                if not (dest / entry).exists():
                    os.replace(old / entry, dest / entry)
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _fsync_dir(dest)
    return dest
