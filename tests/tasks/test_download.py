"""spaedge.download, pretrained weights by name and datasets by name, against a
loopback mirror (tests/_mirror.py): nothing here leaves 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
import time

import numpy as np
import pytest
from _mirror import (
    MirrorServer,
    cifar_archive,
    dead_port,
    flowers_files,
    mirror_path,
    resnet18_pth,
    sha256,
    tar_gz,
    use_mirror,
)

from spaedge import download as dl
from spaedge.download import (
    DigestMismatch,
    DownloadError,
    UnsafeArchive,
    extract_tar,
    fetch,
    mirrored_url,
)

URL = "https://files.example.org/some/dir/blob.bin"
BLOB = np.random.default_rng(1).integers(0, 256, 300_000, dtype=np.uint8).tobytes()


@pytest.fixture
def server():
    with MirrorServer() as s:
        yield s


@pytest.fixture
def blob_server(server, monkeypatch, tmp_path):
    """A mirror serving BLOB at URL's mirror path, spaedge pointed at it."""
    server.add(URL, BLOB)
    use_mirror(monkeypatch, server, tmp_path, {URL: BLOB})
    return server


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


# ------------------------------------------------------------------ fetch


def test_places_and_mirror_layout(monkeypatch, tmp_path):
    monkeypatch.delenv("SPAEDGE_HOME", raising=False)
    monkeypatch.delenv("SPAEDGE_DATA", raising=False)
    assert dl.spaedge_home() == dl.Path.home() / ".cache" / "spaedge"
    monkeypatch.setenv("SPAEDGE_HOME", str(tmp_path / "h"))
    assert dl.spaedge_home() == tmp_path / "h" and dl.data_home() == tmp_path / "h" / "data"
    monkeypatch.setenv("SPAEDGE_DATA", str(tmp_path / "d"))
    assert dl.data_home() == tmp_path / "d"
    url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    monkeypatch.delenv("SPAEDGE_MIRROR", raising=False)
    assert mirrored_url(url) == url
    monkeypatch.setenv("SPAEDGE_MIRROR", "http://127.0.0.1:9/m/")
    assert (
        mirrored_url(url)
        == "http://127.0.0.1:9/m/download.pytorch.org/models/resnet18-f37072fd.pth"
    )


def test_first_download_then_cache(blob_server, tmp_path):
    dest = tmp_path / "out" / "blob.bin"
    seen = []
    got = fetch(URL, dest, digest=sha256(BLOB), progress=lambda d, t: seen.append((d, t)))
    assert got == dest and dest.read_bytes() == BLOB
    assert blob_server.count(URL) == 1
    assert seen[-1] == (len(BLOB), len(BLOB)) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert not dest.with_name("blob.bin.part").exists()
    # cached: verified, returned, no second request (also with the network forbidden)
    assert fetch(URL, dest, digest=sha256(BLOB), progress=False) == dest
    assert fetch(URL, dest, digest=sha256(BLOB), allow_download=False) == dest
    assert blob_server.count(URL) == 1


def test_default_progress_off_a_terminal_says_one_line(blob_server, tmp_path, capsys):
    fetch(URL, tmp_path / "b", digest=sha256(BLOB))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "downloading" in err and mirror_path(URL) in err


def test_cut_off_download_resumes_with_range(blob_server, tmp_path):
    cut = len(BLOB) // 3
    blob_server.cut_after(URL, cut)
    dest = fetch(URL, tmp_path / "blob.bin", digest=sha256(BLOB), progress=False)
    assert dest.read_bytes() == BLOB
    hdrs = blob_server.headers_of(URL)
    assert len(hdrs) == 2 and "Range" not in hdrs[0]
    assert hdrs[1]["Range"] == f"bytes={cut}-"
    sent = blob_server.sent[mirror_path(URL)]
    assert sent == len(BLOB) and sent < 2 * len(BLOB)  # cut part + the rest, nothing twice


def test_interrupted_run_resumes_on_the_next_run(blob_server, tmp_path):
    cut = 100_000
    blob_server.cut_after(URL, cut)
    dest = tmp_path / "blob.bin"
    with pytest.raises(DownloadError) as e:
        fetch(URL, dest, digest=sha256(BLOB), progress=False, retries=0)
    msg = _one_line(e.value)
    assert "partial file" in msg and str(dest) in msg
    part = dest.with_name("blob.bin.part")
    assert part.stat().st_size == cut and not dest.exists()
    fetch(URL, dest, digest=sha256(BLOB), progress=False)
    assert dest.read_bytes() == BLOB and not part.exists()
    assert blob_server.headers_of(URL)[-1]["Range"] == f"bytes={cut}-"
    assert blob_server.sent[mirror_path(URL)] == len(BLOB)


def test_server_ignoring_range_restarts_from_zero(blob_server, tmp_path):
    blob_server.ignore_range = True
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(b"\xff" * 5000)  # would corrupt if appended to
    fetch(URL, dest, digest=sha256(BLOB), progress=False)
    assert dest.read_bytes() == BLOB
    assert blob_server.count(URL) == 1 and blob_server.headers_of(URL)[0]["Range"] == "bytes=5000-"


def test_bad_partial_file_is_dropped_and_fetched_again(blob_server, tmp_path):
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(b"\xff" * 5000)  # honoured Range: wrong result
    fetch(URL, dest, digest=sha256(BLOB), progress=False)
    assert dest.read_bytes() == BLOB
    hdrs = blob_server.headers_of(URL)
    assert len(hdrs) == 2 and hdrs[0]["Range"] == "bytes=5000-" and "Range" not in hdrs[1]


def test_whole_partial_file_is_finished_without_a_body(blob_server, tmp_path):
    dest = tmp_path / "blob.bin"  # a run that stopped between the last byte and the rename
    dest.with_name("blob.bin.part").write_bytes(BLOB)
    fetch(URL, dest, digest=sha256(BLOB), progress=False)
    assert dest.read_bytes() == BLOB and blob_server.count(URL) == 1  # answered 416
    assert blob_server.headers_of(URL)[0]["Range"] == f"bytes={len(BLOB)}-"
    assert blob_server.sent[mirror_path(URL)] == 0


def test_digest_mismatch_refused_and_partial_removed(server, monkeypatch, tmp_path):
    server.add(URL, BLOB)
    monkeypatch.setenv("SPAEDGE_MIRROR", server.url)
    monkeypatch.delenv("SPAEDGE_CHECKSUMS", raising=False)
    want = sha256(b"something else")
    dest = tmp_path / "blob.bin"
    with pytest.raises(DigestMismatch) as e:
        fetch(URL, dest, digest=want, progress=False)
    msg = _one_line(e.value)
    assert "mismatch" in msg and want in msg and sha256(BLOB) in msg
    assert URL in msg and server.url + mirror_path(URL) in msg and "deleted" in msg
    assert not dest.exists() and not dest.with_name("blob.bin.part").exists()
    assert isinstance(e.value, DownloadError) and isinstance(e.value, OSError)


def test_md5_digest_accepted(blob_server, monkeypatch, tmp_path):
    import hashlib

    monkeypatch.delenv("SPAEDGE_CHECKSUMS")  # the digest given here is the one checked
    dest = fetch(URL, tmp_path / "b", digest="md5:" + hashlib.md5(BLOB).hexdigest(), progress=False)
    assert dest.read_bytes() == BLOB
    with pytest.raises(DigestMismatch, match="expected md5:"):
        fetch(
            URL, tmp_path / "x", digest="md5:" + hashlib.md5(b"other").hexdigest(), progress=False
        )
    with pytest.raises(ValueError, match="bad digest"):
        fetch(URL, tmp_path / "c", digest="sha1:" + "0" * 40)


def test_checksums_file_overrides_and_errors(server, monkeypatch, tmp_path):
    server.add(URL, BLOB)
    use_mirror(monkeypatch, server, tmp_path, {URL: BLOB})
    # the file's entry replaces a wrong built-in digest
    assert fetch(URL, tmp_path / "b", digest=sha256(b"old"), progress=False).read_bytes() == BLOB
    bad = tmp_path / "bad.json"
    monkeypatch.setenv("SPAEDGE_CHECKSUMS", str(bad))
    for text, what in [
        ("{not json", "not valid JSON"),
        ('["x"]', "JSON object"),
        (json.dumps({URL: "sha256:abc"}), URL),
        (json.dumps({URL: 5}), URL),
    ]:
        bad.write_text(text)
        with pytest.raises(dl.ChecksumsFileError) as e:
            fetch(URL, tmp_path / "c", progress=False)
        msg = _one_line(e.value)
        assert str(bad) in msg and what in msg
    assert server.count(URL) == 1


def test_404_is_one_line_naming_url_and_cache_path(server, monkeypatch, tmp_path):
    monkeypatch.setenv("SPAEDGE_MIRROR", server.url)
    dest = tmp_path / "cache" / "blob.bin"
    with pytest.raises(DownloadError) as e:
        fetch(URL, dest, progress=False)
    msg = _one_line(e.value)
    assert "404" in msg and URL in msg and str(dest) in msg
    assert "--no-download" in msg and "--data-dir" in msg
    assert server.count(URL) == 1 and not dest.exists()


def test_dead_port_fails_fast_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("SPAEDGE_MIRROR", f"http://127.0.0.1:{dead_port()}")
    dest = tmp_path / "blob.bin"
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as e:
        fetch(URL, dest, timeout=(2, 2), progress=False)
    assert time.monotonic() - t0 < 5
    msg = _one_line(e.value)
    assert "connection refused" in msg and URL in msg and str(dest) in msg


def test_silent_server_hits_the_read_timeout(monkeypatch, tmp_path):
    listener = socket.socket()  # accepts connections (kernel backlog) but never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    try:
        monkeypatch.setenv("SPAEDGE_MIRROR", f"http://127.0.0.1:{listener.getsockname()[1]}")
        t0 = time.monotonic()
        with pytest.raises(DownloadError) as e:
            fetch(URL, tmp_path / "b", timeout=(5, 0.3), progress=False)
        assert time.monotonic() - t0 < 4
        assert "no data for 0.3 s" in _one_line(e.value)
    finally:
        listener.close()


def test_no_download_with_empty_cache(blob_server, tmp_path):
    dest = tmp_path / "cache" / "blob.bin"
    with pytest.raises(DownloadError) as e:
        fetch(URL, dest, digest=sha256(BLOB), allow_download=False)
    msg = _one_line(e.value)
    assert "forbidden" in msg and "--no-download" in msg and str(dest) in msg and URL in msg
    assert blob_server.requests == [] and not dest.exists()
    # a wrong file placed by hand is not taken either
    dest.parent.mkdir()
    dest.write_bytes(b"wrong")
    with pytest.raises(DigestMismatch, match="--no-download"):
        fetch(URL, dest, digest=sha256(BLOB), allow_download=False)
    assert blob_server.requests == []


def test_file_mirror(monkeypatch, tmp_path):
    mirror = tmp_path / "mirror"
    f = mirror / "files.example.org" / "some" / "dir" / "blob.bin"
    f.parent.mkdir(parents=True)
    f.write_bytes(BLOB)
    monkeypatch.setenv("SPAEDGE_MIRROR", mirror.as_uri())
    assert fetch(URL, tmp_path / "b", digest=sha256(BLOB), progress=False).read_bytes() == BLOB


# ------------------------------------------------------------------ extract_tar


def _link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return (info, None)


def _device(name):
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return (info, None)


@pytest.mark.parametrize(
    "bad,what",
    [
        (("../evil.txt", b"x"), "outside"),
        (("sub/../../evil.txt", b"x"), "outside"),
        (("ABS/evil-abs.txt", b"x"), "absolute"),  # ABS: this test's tmp_path
        (_link("link", "../evil.txt"), "symbolic link"),
        (_link("link", "/etc/passwd"), "symbolic link"),
        (_link("link", "first.txt"), "symbolic link"),  # even one that stays inside
        (_link("hard", "../evil.txt", tarfile.LNKTYPE), "hard link"),
        (_link("hard", "first.txt", tarfile.LNKTYPE), "hard link"),
        (_device("dev"), "device"),
    ],
)
def test_extract_tar_refuses_unsafe_members(tmp_path, bad, what):
    if isinstance(bad[0], str):
        bad = (bad[0].replace("ABS", str(tmp_path)), bad[1])
    archive = tmp_path / "a.tgz"
    archive.write_bytes(tar_gz([("first.txt", b"ok"), ("d/second.txt", b"ok"), bad]))
    dest = tmp_path / "root" / "dest"
    with pytest.raises(UnsafeArchive) as e:
        extract_tar(archive, dest)
    msg = _one_line(e.value)
    assert isinstance(e.value, DownloadError)
    assert what in msg and str(archive) in msg and "nothing was extracted" in msg
    assert sorted(os.listdir(dest.parent)) == ["dest"] and os.listdir(dest) == []  # no temp left
    assert sorted(os.listdir(tmp_path)) == ["a.tgz", "root"]  # no evil.txt, no evil-abs.txt


def _dir(name):
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return (info, None)


def _path_max_escape(ups: int) -> list:
    """The CVE-2025-4517 pattern: nested directories of long names, each
    reachable through a one-letter symbolic link, so that a short path resolves
    to one longer than PATH_MAX; non-strict os.path.realpath stops resolving
    there and takes the rest as plain names, inside. A link past that point
    climbs back to the unpacking root, and ``escape`` links ``ups`` levels above
    it: members written under ``escape/`` land outside the destination."""
    comp = "d" * 247
    steps = "abcdefghijklmnop"  # 16 x 248 characters, and the last name: past PATH_MAX (4096)
    members, path = [], ""
    for c in steps:
        members.append(_dir(os.path.join(path, comp)))
        members.append(_link(os.path.join(path, c), comp))
        path = os.path.join(path, comp)
    chain = "/".join(steps) + "/" + "l" * 254
    members.append(_link(chain, "../" * len(steps)))  # -> the unpacking root
    members.append(_link("escape", chain + "/.." * ups))
    return members


def test_extract_tar_path_max_symlink_chain_writes_nothing_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("original")
    # unpacked into data/.flowers102.extract-*/out: three levels up is tmp_path
    members = _path_max_escape(3)
    members.append(("escape/outside/created.txt", b"pwned"))
    members.append(_link("h", "escape/outside/victim.txt", tarfile.LNKTYPE))
    members.append(("h", b"overwritten"))  # through the hard link
    members.append(_link("jpg", "escape/outside"))  # a link left pointing outside
    archive = tmp_path / "102flowers.tgz"
    archive.write_bytes(tar_gz(members))
    dest = tmp_path / "data" / "flowers102"
    try:
        with pytest.raises(UnsafeArchive) as e:
            extract_tar(archive, dest)
    finally:
        assert victim.read_text() == "original" and sorted(os.listdir(outside)) == ["victim.txt"]
        assert sorted(os.listdir(tmp_path)) == ["102flowers.tgz", "data", "outside"]
        assert os.listdir(tmp_path / "data") == ["flowers102"] and os.listdir(dest) == []
    msg = _one_line(e.value)
    assert "symbolic link" in msg and "nothing was extracted" in msg and str(archive) in msg


def test_extract_tar_hard_link_cannot_overwrite_a_file_outside(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("original")
    rel = os.path.relpath(outside, tmp_path / "data" / "dest")
    archive = tmp_path / "a.tgz"
    for target in (str(outside), rel, "../" * 12 + str(outside).lstrip("/")):
        archive.write_bytes(
            tar_gz(
                [
                    ("ok.txt", b"fine"),
                    _link("innocent", target, tarfile.LNKTYPE),
                    ("innocent", b"overwritten"),  # written through the link if it were made
                ]
            )
        )
        with pytest.raises(UnsafeArchive, match="hard link"):
            extract_tar(archive, tmp_path / "data" / "dest")
        assert outside.read_text() == "original"
        assert os.listdir(tmp_path / "data" / "dest") == []
    assert sorted(os.listdir(tmp_path)) == ["a.tgz", "data", "outside.txt"]


def test_extract_tar_walk_never_follows_a_link_on_disk(tmp_path):
    """The component-by-component walk (O_NOFOLLOW) refuses to go through a
    link even if one were on disk in the unpacking root."""
    outside, root = tmp_path / "outside", tmp_path / "root"
    outside.mkdir()
    root.mkdir()
    os.symlink(outside, root / "top")
    with pytest.raises(UnsafeArchive, match="not a directory"):
        dl._open_dir(None, os.fspath(root), ["top", "sub"], "top/sub/x.txt")
    assert os.listdir(outside) == []


def test_extract_tar_unpacks_and_replaces(tmp_path):
    archive = tmp_path / "a.tgz"
    archive.write_bytes(
        tar_gz(
            [
                ("top/a.txt", b"A"),
                ("top/sub/b.txt", b"B"),
                _dir("top/empty"),
                ("./single.txt", b"S"),
            ]
        )
    )
    dest = tmp_path / "dest"
    (dest / "top").mkdir(parents=True)
    (dest / "top" / "stale.txt").write_text("old")
    (dest / "keep.txt").write_text("mine")
    assert extract_tar(archive, dest) == dest
    assert (dest / "top" / "a.txt").read_bytes() == b"A" and (
        dest / "top" / "sub" / "b.txt"
    ).read_bytes() == b"B"
    assert (dest / "top" / "empty").is_dir() and (dest / "single.txt").read_bytes() == b"S"
    assert not (dest / "top" / "stale.txt").exists() and (dest / "keep.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["a.tgz", "dest"]


def test_extract_tar_disk_full_names_the_file(tmp_path, monkeypatch):
    import errno

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dl, "_copy", full)
    archive = tmp_path / "a.tgz"
    archive.write_bytes(tar_gz([("top/a.txt", b"A")]))
    with pytest.raises(DownloadError) as e:
        extract_tar(archive, tmp_path / "dest")
    msg = _one_line(e.value)
    assert "No space left on device" in msg and str(tmp_path / "dest" / "top" / "a.txt") in msg
    assert "not a readable" not in msg
    assert sorted(os.listdir(tmp_path)) == ["a.tgz", "dest"] and os.listdir(tmp_path / "dest") == []


def test_extract_tar_corrupt_archive(tmp_path):
    archive = tmp_path / "a.tgz"
    archive.write_bytes(tar_gz([("a.txt", b"A" * 10000)])[:-100])
    with pytest.raises(DownloadError, match="not a readable tar archive"):
        extract_tar(archive, tmp_path / "dest")
    assert sorted(os.listdir(tmp_path)) == ["a.tgz", "dest"] and os.listdir(tmp_path / "dest") == []


# ------------------------------------------------------------------ pretrained weights


R18 = "https://download.pytorch.org/models/resnet18-f37072fd.pth"


def test_recorded_digests_match_the_file_names():
    from spaedge.models.pretrained import PRETRAINED

    assert set(PRETRAINED) == {"resnet18", "resnet34", "resnet50"}
    for w in PRETRAINED.values():
        algo, hexd = dl.parse_digest(w.digest)
        assert algo == "sha256" and hexd[:8] == w.filename.rsplit("-", 1)[1][:8]
    assert PRETRAINED["resnet18"].digest.endswith(
        "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec"
    )


def test_unreachable_weights_raise_instead_of_random(monkeypatch, tmp_path):
    from spaedge.models import get_base
    from spaedge.models.pretrained import pretrained_weights

    monkeypatch.setenv("SPAEDGE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SPAEDGE_MIRROR", f"http://127.0.0.1:{dead_port()}")
    monkeypatch.setenv("SPAEDGE_TIMEOUT", "2,2")
    monkeypatch.delenv("SPAEDGE_CHECKSUMS", raising=False)
    for call in (pretrained_weights, get_base):  # a ResNet base never falls back to random weights
        with pytest.raises(DownloadError) as e:
            call("resnet18", progress=False)
        msg = _one_line(e.value)
        assert R18 in msg and str(tmp_path / "home" / "weights" / "resnet18-f37072fd.pth") in msg
    with pytest.raises(DownloadError, match="--no-download"):
        pretrained_weights("resnet34", allow_download=False)
    assert not list((tmp_path / "home" / "weights").glob("*.safetensors"))
    with pytest.raises(ValueError, match="no pretrained weights for base 'tiny'"):
        pretrained_weights("tiny")


def test_pretrained_resnet18_converted_once_and_loads(server, monkeypatch, tmp_path):
    import torch
    from safetensors.torch import load_file

    from spaedge.models import load_weights
    from spaedge.models.pretrained import pretrained_weights
    from spaedge.models.resnet import resnet18

    data, sd = resnet18_pth()
    server.add(R18, data)
    env = use_mirror(monkeypatch, server, tmp_path, {R18: data})
    path = pretrained_weights("resnet18", progress=False)
    weights = os.path.join(env["SPAEDGE_HOME"], "weights")
    assert str(path) == os.path.join(weights, "resnet18-f37072fd.safetensors")
    assert sorted(p for p in os.listdir(weights) if not p.startswith(".")) == [
        "resnet18-f37072fd.pth",
        "resnet18-f37072fd.safetensors",
    ]
    model = resnet18()
    load_weights(model, path)
    own = model.state_dict()
    assert set(own) == set(sd) and all(torch.equal(own[k], sd[k]) for k in sd)
    assert set(load_file(str(path))) == set(sd)
    # cached: same file, no request, no conversion (also for -cifar, which names the same file)
    mtime = path.stat().st_mtime_ns
    assert pretrained_weights("resnet18", allow_download=False) == path
    assert pretrained_weights("resnet18-cifar") == path and path.stat().st_mtime_ns == mtime
    assert server.count(R18) == 1
    path.unlink()  # the .pth is kept: converted again with the network forbidden
    assert pretrained_weights("resnet18", allow_download=False) == path and path.is_file()
    assert server.count(R18) == 1


def test_pretrained_conversion_runs_no_pickle_code(server, monkeypatch, tmp_path):
    from spaedge.models.pretrained import pretrained_weights

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    import torch

    buf = io.BytesIO()
    torch.save({"conv1.weight": Boom()}, buf)
    server.add(R18, buf.getvalue())
    use_mirror(monkeypatch, server, tmp_path, {R18: buf.getvalue()})
    with pytest.raises(DownloadError, match="cannot read it as a state dict"):
        pretrained_weights("resnet18", progress=False)
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------ datasets


FLOWERS = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
CIFAR = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"


@pytest.fixture
def flowers_server(server, monkeypatch, tmp_path):
    files, sizes, labels = flowers_files()
    urls = {FLOWERS + name: data for name, data in files.items()}
    for url, data in urls.items():
        server.add(url, data)
    env = use_mirror(monkeypatch, server, tmp_path, urls)
    return server, sizes, labels, env


def test_flowers_downloaded_then_read(flowers_server):
    from spaedge.tasks import fetch_data, get_task

    server, sizes, labels, env = flowers_server
    d = fetch_data("flowers", progress=False)
    assert d == os.path.join(env["SPAEDGE_HOME"], "data", "flowers102")
    assert sorted(p for p in os.listdir(d) if not p.startswith(".")) == [
        "imagelabels.mat",
        "jpg",
        "setid.mat",
    ]
    task = get_task("flowers", data_dir=d, input_size=(3, 16, 16))
    assert (
        {s: len(task.split(s)) for s in ("train", "val", "test")}
        == sizes
        == {"train": 6, "val": 6, "test": 6}
    )
    X, y = task.arrays("test")
    assert X.shape == (6, 3, 16, 16) and sorted(y.tolist()) == sorted(
        labels[i] for i in range(len(labels)) if i % 6 >= 4
    )
    # a second call (and a class subset) finds it: no request
    assert fetch_data("flowers:0-1", allow_download=False) == d
    assert sum(server.counts.values()) == 3


def test_flowers_into_given_empty_dir_and_passthrough(flowers_server, tmp_path):
    from spaedge.tasks import fetch_data, get_task

    server, sizes, _, _ = flowers_server
    given = tmp_path / "mine"
    assert fetch_data("flowers:0,2", str(given), progress=False) == str(given)
    assert (
        len(get_task("flowers:0,2", data_dir=str(given), input_size=(3, 8, 8)).split("train")) == 4
    )
    assert fetch_data("flowers", str(given)) == str(given)  # already there: unchanged
    assert fetch_data("digits", "anything") == "anything" and fetch_data("fashion_mnist") is None
    assert sum(server.counts.values()) == 3


def test_data_no_download_with_nothing_there(flowers_server, tmp_path):
    from spaedge.tasks import fetch_data

    server = flowers_server[0]
    with pytest.raises(DownloadError) as e:
        fetch_data("flowers", str(tmp_path / "empty"), allow_download=False)
    assert "--no-download" in _one_line(e.value) and str(tmp_path / "empty") in str(e.value)
    assert server.requests == []


def test_cifar10_downloaded_then_read(server, monkeypatch, tmp_path):
    from spaedge.tasks import fetch_data, get_task

    data = cifar_archive(per_batch=20, n_test=10)
    server.add(CIFAR, data)
    env = use_mirror(monkeypatch, server, tmp_path, {CIFAR: data})
    d = fetch_data("cifar10:0,1", progress=False)
    assert d == os.path.join(env["SPAEDGE_HOME"], "data", "cifar10")
    assert [p for p in os.listdir(d) if not p.startswith(".")] == [
        "cifar-10-batches-bin"
    ]  # archive removed
    task = get_task("cifar10", data_dir=d)
    assert (
        len(task.split("train")) + len(task.split("val")) == 100 and len(task.split("test")) == 10
    )
    assert fetch_data("cifar10") == d and server.count(CIFAR) == 1


def test_dataset_digest_mismatch_leaves_nothing(server, monkeypatch, tmp_path):
    from spaedge.tasks import fetch_data

    files, _, _ = flowers_files()
    files["imagelabels.mat"] = files["imagelabels.mat"].ljust(502, b"\0")  # the recorded size
    for name, data in files.items():
        server.add(FLOWERS + name, data)
    monkeypatch.setenv("SPAEDGE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SPAEDGE_MIRROR", server.url)
    monkeypatch.delenv("SPAEDGE_CHECKSUMS", raising=False)
    monkeypatch.delenv("SPAEDGE_DATA", raising=False)
    with pytest.raises(DigestMismatch) as e:  # the stand-ins are not the real files
        fetch_data("flowers", progress=False)
    assert "sha256:4903e94206bac23bf772aadf06451916df56b58fc483a62db32a97b82656651d" in str(e.value)
    d = tmp_path / "home" / "data" / "flowers102"
    assert [p for p in os.listdir(d) if not p.startswith(".")] == []


# ------------------------------------------------------------------ size caps


def _no_mirror_sums(server, monkeypatch, tmp_path):
    monkeypatch.setenv("SPAEDGE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SPAEDGE_MIRROR", server.url)
    monkeypatch.delenv("SPAEDGE_CHECKSUMS", raising=False)
    monkeypatch.delenv("SPAEDGE_DATA", raising=False)


def test_endless_body_stops_at_the_recorded_size(server, monkeypatch, tmp_path):
    """imagelabels.mat is 502 bytes: a mirror sending 3 MB with no length is
    stopped at 502 (never more written), the partial file deleted."""
    from spaedge.tasks import fetch_data

    _no_mirror_sums(server, monkeypatch, tmp_path)
    server.stream(FLOWERS + "imagelabels.mat", 3 << 20)
    seen = []
    with pytest.raises(DownloadError) as e:
        fetch_data("flowers", progress=lambda done, total: seen.append(done))
    msg = _one_line(e.value)
    assert "imagelabels.mat" in msg and "502 bytes" in msg and "stopped" in msg
    assert max(seen) <= 502
    part = tmp_path / "home" / "data" / "flowers102" / "imagelabels.mat.part"
    assert not part.exists() or part.stat().st_size <= 502


def test_unknown_size_stops_at_the_cap(server, monkeypatch, tmp_path):
    _no_mirror_sums(server, monkeypatch, tmp_path)
    server.stream(URL, 1 << 20)
    seen = []
    with pytest.raises(DownloadError) as e:
        fetch(URL, tmp_path / "b", max_bytes=100_000, progress=lambda d, t: seen.append(d))
    msg = _one_line(e.value)
    assert "100000-byte limit" in msg and str(tmp_path / "b") in msg
    assert max(seen) <= 100_000 and not (tmp_path / "b.part").exists()
    assert not (tmp_path / "b").exists()


def test_announced_length_past_the_size_refused_before_the_body(server, monkeypatch, tmp_path):
    _no_mirror_sums(server, monkeypatch, tmp_path)
    server.add(URL, BLOB)
    with pytest.raises(DownloadError, match=f"announced {len(BLOB)} bytes but the file is 1000"):
        fetch(URL, tmp_path / "b", digest=None, size=1000, progress=False)
    assert not (tmp_path / "b.part").exists() and not (tmp_path / "b").exists()


def test_checksums_entry_with_a_size(server, monkeypatch, tmp_path):
    """A replaced digest drops the recorded size; an entry may give its own."""
    _no_mirror_sums(server, monkeypatch, tmp_path)
    server.add(URL, BLOB)
    sums = tmp_path / "sums.json"
    sums.write_text(json.dumps({URL: {"digest": sha256(BLOB), "size": len(BLOB)}}))
    monkeypatch.setenv("SPAEDGE_CHECKSUMS", str(sums))
    # recorded size 10 is replaced by the entry's: the download succeeds
    assert fetch(URL, tmp_path / "b", digest=None, size=10, progress=False).read_bytes() == BLOB
    sums.write_text(json.dumps({URL: {"digest": sha256(BLOB), "size": 10}}))
    with pytest.raises(DownloadError, match="but the file is 10 bytes"):
        fetch(URL, tmp_path / "c", size=len(BLOB), progress=False)
    sums.write_text(json.dumps({URL: {"digest": sha256(BLOB), "size": -1}}))
    with pytest.raises(DownloadError, match="'size' must be a non-negative integer"):
        fetch(URL, tmp_path / "d", progress=False)
