"""A loopback stand-in for the hosts spaedge downloads from, and small stand-in
files to serve (pytest puts tests/ on sys.path through tests/conftest.py).

    with MirrorServer() as server:
        server.add(UPSTREAM_URL, data)                      # served as /<host>/<path>
        use_mirror(monkeypatch, server, tmp_path, {UPSTREAM_URL: data})
        ...                                                 # spaedge fetches from 127.0.0.1 only
        server.count(UPSTREAM_URL), server.requests         # what was asked

The server (http.server.ThreadingHTTPServer on 127.0.0.1, port 0) serves a
dict of path -> bytes in the SPAEDGE_MIRROR layout, honours Range (206) unless
told to ignore it (200), answers 404 for unknown paths, counts requests and
body bytes per path, and can cut a response off after N bytes by closing the
connection (`cut_after`), so interruptions happen by construction, not timing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import socket
import tarfile
import threading
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np


def mirror_path(upstream_url: str) -> str:
    """The path an upstream URL has under SPAEDGE_MIRROR: /<host>/<path>."""
    u = urllib.parse.urlsplit(upstream_url)
    return "/" + u.netloc + u.path


class _Handler(BaseHTTPRequestHandler):
    server_version = "spaedge-test-mirror"

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        m: MirrorServer = self.server.mirror
        path = urllib.parse.urlsplit(self.path).path
        with m.lock:
            m.requests.append((path, dict(self.headers.items())))
            m.counts[path] += 1
            data = m.files.get(path)
            endless = m.endless.get(path)
            cuts = m.cuts.get(path)
            cut = cuts.pop(0) if cuts else None
        if endless is not None:
            self._endless(m, path, endless)
            return
        if data is None or path in m.not_found:
            self.send_error(404, "Not Found")
            return
        start, end = 0, len(data)
        rng = self.headers.get("Range")
        partial = False
        if rng and not m.ignore_range:
            r = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if r:
                start = int(r.group(1))
                end = min(int(r.group(2)) + 1, len(data)) if r.group(2) else len(data)
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                partial = True
        body = data[start:end]
        self.send_response(206 if partial else 200)
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if cut is not None:
            body = body[:cut]
        with (
            m.lock
        ):  # counted before the client can have read it: a test may look as soon as it has the file
            m.sent[path] += len(body)
        try:
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:  # the client went away
            return
        if cut is not None:  # hang up before the promised length
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _endless(self, m, path: str, nbytes: int) -> None:
        """A body of ``nbytes`` with no Content-Length (ended by closing): as
        endless as the client lets it be, bounded by construction."""
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        self.close_connection = True
        block = b"\xab" * 65536
        left = nbytes
        try:
            while left > 0:
                n = min(left, len(block))
                self.wfile.write(block[:n])
                left -= n
                with m.lock:
                    m.sent[path] += n
            self.wfile.flush()
        except OSError:  # the client stopped reading and hung up
            pass


class MirrorServer:
    """A threaded HTTP server on 127.0.0.1 (port 0) serving ``files`` (path -> bytes)."""

    def __init__(self, files=None):
        self.files: dict = {}
        self.not_found: set = set()
        self.cuts: dict = {}
        self.endless: dict = {}  # path -> bytes sent with no Content-Length
        self.ignore_range = False
        self.requests: list = []  # (path, headers) in arrival order
        self.counts: Counter = Counter()
        self.sent: Counter = Counter()  # body bytes written per path
        self.lock = threading.Lock()
        for url, data in (files or {}).items():
            self.add(url, data)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.mirror = self
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @staticmethod
    def _path(url_or_path: str) -> str:
        return url_or_path if url_or_path.startswith("/") else mirror_path(url_or_path)

    def add(self, upstream_url: str, data: bytes) -> str:
        path = self._path(upstream_url)
        self.files[path] = bytes(data)
        return path

    def stream(self, upstream_url: str, nbytes: int) -> str:
        """Serve ``nbytes`` of filler for this file, with no Content-Length."""
        path = self._path(upstream_url)
        self.endless[path] = int(nbytes)
        return path

    def cut_after(self, upstream_url: str, nbytes: int, times: int = 1) -> None:
        """The next ``times`` responses for this file stop after ``nbytes`` body bytes."""
        self.cuts[self._path(upstream_url)] = [nbytes] * times

    def count(self, upstream_url: str) -> int:
        return self.counts[self._path(upstream_url)]

    def headers_of(self, upstream_url: str) -> list:
        p = self._path(upstream_url)
        return [h for path, h in self.requests if path == p]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def dead_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def mirror_env(server: MirrorServer, tmp_path, checksums: dict) -> dict:
    """Environment for spaedge to use ``server``: SPAEDGE_MIRROR, a
    SPAEDGE_CHECKSUMS file with the SHA-256 of ``checksums`` ({upstream URL:
    bytes}), a fresh SPAEDGE_HOME, short timeouts. Good for subprocesses too."""
    tmp_path = os.fspath(tmp_path)
    sums = os.path.join(tmp_path, "checksums.json")
    with open(sums, "w") as f:
        json.dump({url: sha256(data) for url, data in checksums.items()}, f)
    return {
        "SPAEDGE_MIRROR": server.url,
        "SPAEDGE_CHECKSUMS": sums,
        "SPAEDGE_HOME": os.path.join(tmp_path, "spaedge-home"),
        "SPAEDGE_TIMEOUT": "5,10",
    }


def use_mirror(monkeypatch, server: MirrorServer, tmp_path, checksums: dict) -> dict:
    """``mirror_env`` applied with monkeypatch (and SPAEDGE_DATA unset)."""
    env = mirror_env(server, tmp_path, checksums)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("SPAEDGE_DATA", raising=False)
    return env


# ------------------------------------------------------------------ stand-ins


def tar_gz(members) -> bytes:
    """A .tar.gz of ``members``: (name, bytes) for files, or ready TarInfo
    objects (links, devices) as (TarInfo, None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members:
            if isinstance(name, tarfile.TarInfo):
                tf.addfile(name)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def flowers_files(classes=(1, 2, 3), per_split=2):
    """Stand-ins for Flowers-102's 102flowers.tgz, imagelabels.mat and setid.mat:
    for each class ``per_split`` train, val and test images (tiny JPEGs), labels
    1-based for every image. Returns ({file name: bytes}, {split: size},
    0-based labels of all images in file order)."""
    from PIL import Image
    from scipy.io import savemat

    labels, split_ids = [], {"trnid": [], "valid": [], "tstid": []}
    members = []
    for c in classes:
        for key in split_ids:
            for _ in range(per_split):
                labels.append(c)
                i = len(labels)
                split_ids[key].append(i)
                img = np.zeros((20, 24, 3), np.uint8)
                img[..., 0] = 40 * c
                img[:, :12, 1] = 200
                b = io.BytesIO()
                Image.fromarray(img).save(b, format="JPEG", quality=95)
                members.append((f"jpg/image_{i:05d}.jpg", b.getvalue()))

    def mat(d) -> bytes:
        b = io.BytesIO()
        savemat(b, d)
        return b.getvalue()

    files = {
        "102flowers.tgz": tar_gz(members),
        "imagelabels.mat": mat({"labels": np.array(labels, np.uint8)[None, :]}),
        "setid.mat": mat({k: np.array(v, np.uint16)[None, :] for k, v in split_ids.items()}),
    }
    sizes = {
        "train": len(split_ids["trnid"]),
        "val": len(split_ids["valid"]),
        "test": len(split_ids["tstid"]),
    }
    return files, sizes, [l - 1 for l in labels]


def cifar_archive(per_batch=20, n_test=10) -> bytes:
    """A tiny cifar-10-binary.tar.gz: cifar-10-batches-bin/ with five training
    batches of ``per_batch`` records and a test batch of ``n_test``."""
    rng = np.random.default_rng(0)

    def records(n):
        labels = np.arange(n, dtype=np.uint8) % 10
        pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        return np.concatenate([labels[:, None], pixels], axis=1).tobytes()

    members = [
        (f"cifar-10-batches-bin/data_batch_{i}.bin", records(per_batch)) for i in range(1, 6)
    ]
    members.append(("cifar-10-batches-bin/test_batch.bin", records(n_test)))
    members.append(("cifar-10-batches-bin/batches.meta.txt", b"airplane\nautomobile\n"))
    return tar_gz(members)


def resnet18_pth():
    """A state dict in torchvision's ResNet-18 layout, as torch.save writes it:
    (file bytes, the state dict)."""
    import torch

    from spaedge.models.resnet import resnet18

    torch.manual_seed(0)
    model = resnet18()
    with torch.no_grad():  # BN statistics that are not the defaults, so loading shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    sd = model.state_dict()
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue(), sd
