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
  work too. A ``user:password@`` in it is sent as HTTP Basic authorization
  (never on to a redirect) and shown as ``user:***@`` in every message.
- ``SPAEDGE_CHECKSUMS=FILE``: a JSON object ``{"<upstream URL>": "sha256:<hex>"}``
  (or ``{"<upstream URL>": {"digest": "sha256:<hex>", "size": <bytes>}}``)
  that adds or replaces expected digests (and sizes).
- ``SPAEDGE_TIMEOUT=CONNECT[,READ]``: seconds (default 15 and 60).

A cached file that verifies is returned without touching the network. A
download goes to ``<dest>.part``, resumes from there with an HTTP ``Range``
request after an interruption, is verified, then renamed into place. It
stops at the file's recorded size (or a cap when the size is unknown) and
refuses what goes past. Every
failure is one ``DownloadError`` whose message is one line naming the URL and
the path where the file can be placed by hand.

Only the standard library is used here (``rich`` for the progress bar when it
is installed); there is no torch import, so the device side can use it.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import http.client
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
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional, Union

from spaedge.paths import FileProblem, read_json, remove_stale
from spaedge.progress import ByteProgress

__all__ = [
    "CONNECT_TIMEOUT",
    "READ_TIMEOUT",
    "DigestMismatch",
    "DownloadError",
    "UnsafeArchive",
    "data_home",
    "expected_digest",
    "expected_file",
    "extract_tar",
    "fetch",
    "file_digest",
    "file_lock",
    "mirrored_url",
    "parse_digest",
    "redact",
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
#: The largest download whose size is not known (no size recorded, no Content-Length below it).
MAX_DOWNLOAD_BYTES = 8 << 30
MAX_CHECKSUMS_BYTES = 16 << 20
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*):[^/\s]*@")


class DownloadError(OSError):
    """A file could not be fetched or verified. ``str()`` is one line naming the
    URL and where the file can be placed by hand."""

    def __init__(self, message: str, url: str = "", dest: PathLike = ""):
        # one line, always, and never a mirror's password
        super().__init__(redact(" ".join(str(message).split())))
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
    """``$SPAEDGE_CHECKSUMS`` as {url: (digest, size or None)}."""
    name = os.environ.get("SPAEDGE_CHECKSUMS")
    if not name:
        return {}
    where = f"SPAEDGE_CHECKSUMS={name}"
    try:
        table = read_json(name, "SPAEDGE_CHECKSUMS file", MAX_CHECKSUMS_BYTES, depth=4)
    except FileProblem as e:
        raise ChecksumsFileError(str(e)) from None
    if not isinstance(table, dict):
        raise ChecksumsFileError(
            f"{where}: expected a JSON object "
            '{"<upstream URL>": "sha256:<hex>"}, found ' + type(table).__name__
        )
    out = {}
    for url, entry in table.items():
        size = None
        if isinstance(entry, dict):  # {"digest": "sha256:<hex>", "size": <bytes>}
            digest, size = entry.get("digest"), entry.get("size")
            if size is not None and (
                not isinstance(size, int) or isinstance(size, bool) or size < 0
            ):
                raise ChecksumsFileError(
                    f"{where}: entry {url!r}: field 'size' must be a non-negative integer"
                )
        else:
            digest = entry
        if not isinstance(digest, str):
            raise ChecksumsFileError(
                f"{where}: entry {url!r} is not a string "
                '(or an object {"digest": "sha256:<hex>", "size": <bytes>})'
            )
        try:
            parse_digest(digest)
        except ValueError as e:
            raise ChecksumsFileError(f"{where}: entry {url!r}: {e}") from None
        out[url] = (digest, size)
    return out


def expected_digest(url: str, digest: str | None = None) -> str | None:
    """The digest to check ``url``'s file against: ``$SPAEDGE_CHECKSUMS``'s entry
    for ``url`` if there is one, else ``digest``."""
    entry = _checksum_overrides().get(url)
    return entry[0] if entry else digest


def expected_file(
    url: str, digest: str | None = None, size: int | None = None
) -> tuple[str | None, int | None]:
    """(digest, size in bytes or None) ``url``'s file is checked against: the
    ``$SPAEDGE_CHECKSUMS`` entry for ``url`` if there is one (its size, or None:
    a replaced digest means another file, so the recorded size does not hold),
    else ``digest`` and ``size`` as recorded."""
    entry = _checksum_overrides().get(url)
    return entry if entry else (digest, size)


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` replaced by ``***``."""
    return _USERINFO.sub(lambda m: m.group(1) + ":***@", text)


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


class _TooBig(Exception):
    """The server sent (or announced) more bytes than the file can have."""


def _split_auth(url: str) -> tuple[str, str | None]:
    """(url without ``user:password@``, the Basic authorization header or None)."""
    u = urllib.parse.urlsplit(url)
    if u.username is None and u.password is None:
        return url, None
    host = u.netloc.rpartition("@")[2]
    plain = urllib.parse.urlunsplit((u.scheme, host, u.path, u.query, u.fragment))
    pair = f"{urllib.parse.unquote(u.username or '')}:{urllib.parse.unquote(u.password or '')}"
    return plain, "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def _transfer(
    opener,
    url: str,
    part: Path,
    connect: float,
    read: float,
    report: Callable[[int, int | None], None],
    cap: int,
    exact: bool,
) -> int:
    """One request: append to ``part`` (resuming with Range) until the body ends.
    Returns the offset it wrote from (0: a fresh start). Raises _Cut if the body
    ended early, _TooBig past ``cap`` bytes (or a length that cannot be right:
    not ``cap`` when ``exact``), network errors as they come. Never more than
    ``cap`` bytes are written to ``part``."""
    have = part.stat().st_size if part.exists() else 0
    if have > cap:  # left by an older run: cannot be the file
        part.unlink()
        have = 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    plain, auth = _split_auth(url)
    req = urllib.request.Request(plain, headers=headers)
    if auth is not None:  # never sent on to where a redirect points
        req.add_unredirected_header("Authorization", auth)
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
        if total is not None and (total > cap or (exact and total != cap)):
            raise _TooBig(f"announced {total} bytes")
        report(done, total)
        with open(part, mode) as f:
            while True:
                block = resp.read(min(CHUNK, cap + 1 - done))
                if not block:
                    break
                if done + len(block) > cap:
                    f.write(block[: cap - done])
                    raise _TooBig(f"sent more than {cap} bytes")
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
    size: int | None = None,
    max_bytes: int | None = None,
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

    size: the file's size in bytes, recorded with its digest: the download
    stops there (a server announcing or sending more is refused, and the
    partial file deleted). A ``$SPAEDGE_CHECKSUMS`` entry for ``url`` replaces
    it (with its ``size``, or none). Without a size the download stops at
    ``max_bytes`` (default: twice the recorded size plus 1 MiB when its digest
    was replaced, else ``MAX_DOWNLOAD_BYTES``).

    allow_download: False (``--no-download``) makes a missing file an error
    instead of a request. progress: ``progress(bytes_done, total_or_None)``;
    None shows a bar when stderr is a terminal (a line otherwise); False is
    silent. timeout: seconds, or (connect, read); default ``$SPAEDGE_TIMEOUT`` or
    15 and 60.

    Raises DownloadError (an OSError) with a one-line message.
    """
    dest = Path(dest).expanduser()
    recorded = size
    digest, size = expected_file(url, digest, size)
    if digest is not None:
        parse_digest(digest, f"{url}: ")
    if max_bytes is None:
        max_bytes = 2 * recorded + (1 << 20) if recorded is not None else MAX_DOWNLOAD_BYTES
    cap = size if size is not None else max_bytes
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
        return _download(url, dest, digest, progress, timeout, retries, cap, size is not None)


def _download(url, dest: Path, digest, progress, timeout, retries, cap, exact) -> Path:
    actual = mirrored_url(url)
    where = _describe(url, redact(actual))
    connect, read = _timeouts(timeout)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shown = None
    if progress is None:
        shown = _default_progress(redact(actual), dest)
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
                start = _transfer(opener, actual, part, connect, read, report, cap, exact)
            except _TooBig as e:
                part.unlink(missing_ok=True)
                want = (
                    f"but the file is {cap} bytes"
                    if exact
                    else f"more than the {cap}-byte limit for a file of unknown size"
                )
                raise DownloadError(
                    f"{where} {e} {want}: stopped, and the partial file was deleted (a wrong "
                    "file or a broken mirror); " + _by_hand(url, dest),
                    url,
                    dest,
                ) from None
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


def _member_parts(m: tarfile.TarInfo) -> list[str]:
    """The path components of a member's name, or UnsafeArchive: only regular
    files and directories, under relative names without ``..``."""
    name = m.name
    shown = name if name.isprintable() else repr(name)
    if m.issym() or m.islnk():
        kind = "a symbolic link" if m.issym() else "a hard link"
        raise UnsafeArchive(
            f"member {shown!r} is {kind} (to {m.linkname!r}); the archives spaedge unpacks hold "
            "only files and directories"
        )
    if not (m.isreg() or m.isdir()):
        raise UnsafeArchive(f"member {shown!r} is a device, FIFO or other special file")
    if name.startswith(("/", "\\")) or os.path.isabs(name) or re.match(r"[A-Za-z]:", name):
        raise UnsafeArchive(f"member {shown!r} has an absolute path")
    if "\0" in name:
        raise UnsafeArchive(f"member {shown!r} has a NUL byte in its name")
    parts = [c for c in name.replace("\\", "/").split("/") if c not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"member {shown!r} would be written outside the destination (..)")
    if not parts:
        if m.isdir():
            return []
        raise UnsafeArchive(f"member {shown!r} has no file name")
    return parts


_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
_STRICT = os.open in os.supports_dir_fd and os.mkdir in os.supports_dir_fd


def _open_dir(parent: int | None, root: str, parts: list[str], name: str) -> int:
    """A descriptor of the directory ``parts`` under the descriptor ``parent``
    (``root`` when None), made where missing, walked one component at a time
    without following a symbolic link (O_NOFOLLOW at every step): nothing
    outside ``root`` can be reached, whatever is on disk."""
    fd = os.open(root, _DIR_FLAGS) if parent is None else os.dup(parent)
    try:
        for c in parts:
            with contextlib.suppress(FileExistsError):
                os.mkdir(c, 0o755, dir_fd=fd)
            try:
                nxt = os.open(c, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise UnsafeArchive(
                        f"member {name!r}: {c!r} on its path is not a directory"
                    ) from None
                raise
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def _lexical_check(root: str, parts: list[str], name: str) -> None:
    """Where there are no ``dir_fd`` calls (Windows): every existing component
    of the path is checked not to be a link before anything is written."""
    p = root
    for c in parts:
        p = os.path.join(p, c)
        if os.path.islink(p):
            raise UnsafeArchive(f"member {name!r}: {c!r} on its path is a link")


def _copy(tf: tarfile.TarFile, m: tarfile.TarInfo, out, path: str) -> None:
    """Member ``m``'s bytes into ``out``: a failed read is the archive's
    (tarfile.ReadError), a failed write the disk's (_WriteFailed)."""
    try:
        src = tf.extractfile(m)
    except OSError as e:
        raise tarfile.ReadError(str(e)) from None
    with src:
        while True:
            try:
                block = src.read(CHUNK)
            except OSError as e:
                raise tarfile.ReadError(str(e)) from None
            if not block:
                return
            try:
                out.write(block)
            except OSError as e:
                raise _WriteFailed(path, e) from None


def _write_member(tf: tarfile.TarFile, m: tarfile.TarInfo, root: str, parts: list[str]) -> None:
    """Create directory or regular file ``m`` at ``root/parts`` (see ``_open_dir``)."""
    mode = (m.mode & 0o755) | (0o700 if m.isdir() else 0o600)
    shown = "/".join(parts)
    try:
        if not _STRICT:
            _lexical_check(root, parts, m.name)
            target = os.path.join(root, *parts)
            if m.isdir():
                os.makedirs(target, exist_ok=True)
                return
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as out:
                _copy(tf, m, out, shown)
            os.chmod(target, mode)
            return
        if m.isdir():
            os.close(_open_dir(None, root, parts, m.name))
            return
        d = _open_dir(None, root, parts[:-1], m.name)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
            try:
                fd = os.open(parts[-1], flags | getattr(os, "O_CLOEXEC", 0), 0o600, dir_fd=d)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.EISDIR):
                    raise UnsafeArchive(
                        f"member {m.name!r} would replace a link or a directory"
                    ) from None
                raise
            with os.fdopen(fd, "wb") as out:
                _copy(tf, m, out, shown)
                os.fchmod(out.fileno(), mode)
        finally:
            os.close(d)
    except (UnsafeArchive, _WriteFailed):
        raise
    except OSError as e:  # making a directory or a file, closing it
        raise _WriteFailed(shown, e) from None


class _WriteFailed(Exception):
    """Writing an extracted file failed (disk full, read-only...): not the archive's fault."""

    def __init__(self, path: str, error: OSError):
        super().__init__(path, error)
        self.path, self.error = path, error


def extract_tar(archive: PathLike, dest: PathLike) -> Path:
    """Unpack ``archive`` (any tar compression) into directory ``dest`` safely.

    Only regular files and directories are unpacked: a symbolic or hard link,
    a device, a FIFO, an absolute name or a name with ``..`` refuses the whole
    archive (the datasets spaedge downloads hold none). Every file is created
    by walking its path one component at a time from the destination with
    ``O_NOFOLLOW`` (``openat``), never through a link and never by resolving
    a path with ``os.path.realpath`` (which gives up past PATH_MAX), so no
    member can be written outside. Members go into a temporary directory beside
    ``dest``; only when all are out are the archive's top-level entries renamed
    into ``dest`` (replacing entries of the same name). An unsafe member raises
    UnsafeArchive (a DownloadError) and nothing is left behind; so does an
    unreadable archive (DownloadError) or a failed write (DownloadError naming
    the file and the reason).
    """
    archive, dest = Path(archive), Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    remove_stale(dest.parent, re.escape(f".{dest.name}.extract-") + r"(?P<pid>\d+)-.*")
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-{os.getpid()}-", dir=dest.parent))
    out, old = work / "out", work / "old"
    out.mkdir()
    old.mkdir()
    root = os.fspath(out)
    try:
        try:
            with tarfile.open(archive, "r:*") as tf:
                for m in tf:
                    _write_member(tf, m, root, _member_parts(m))
        except UnsafeArchive as e:
            raise UnsafeArchive(f"{archive}: refused, {e}; nothing was extracted") from None
        except _WriteFailed as e:
            raise DownloadError(
                f"{archive}: cannot write {dest / e.path} ({e.error.strerror or e.error}) while "
                "unpacking; nothing was extracted: free space or make the directory writable"
            ) from None
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
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
