"""Datasets that spaedge can download: Flowers-102 and CIFAR-10 (binary).

    from spaedge.tasks import fetch_data, get_task
    data_dir = fetch_data("flowers", args.data_dir, allow_download=not args.no_download)
    task = get_task("flowers", data_dir=data_dir)

``fetch_data`` returns a directory holding the task's data, downloading it
(through ``spaedge.download``: ``$SPAEDGE_MIRROR``, ``$SPAEDGE_CHECKSUMS``,
resume, verification) into ``data_home()/<dataset>`` on first use. Tasks whose
data cannot be downloaded get their ``data_dir`` back unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from spaedge.download import data_home, extract_tar, fetch

from .core import DatasetNotFound

__all__ = ["DOWNLOADABLE", "fetch_data"]

# Published checksums (SHA-256 preferred; MD5 where that is what the publisher
# gives, kept here for reference):
#
# Flowers-102, https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ (the page
# publishes no checksums):
#   102flowers.tgz   344,862,509 B  sha256 2d01ecc8...f783b246  md5 52808999861908f626f3c1f4e79d11fa
#   imagelabels.mat          502 B  sha256 4903e942...2656651d  md5 e0620be6f572b9609742df49c70aed4d
#   setid.mat             14,989 B  sha256 46b8678f...5c8dccd   md5 a5357ecc9cb78c4bef273ce3793fc85c
#   SHA-256 and sizes: TensorFlow Datasets' recorded checksums
#   (tensorflow/datasets, tensorflow_datasets/url_checksums/oxford_flowers102.txt),
#   the same digests pinned by other public projects. MD5: torchvision
#   (torchvision/datasets/flowers102.py, _file_dict).
# CIFAR-10 binary, https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz:
#   170,052,171 B  sha256 c4a38c50...59bca1dd  (TensorFlow Datasets,
#   tensorflow_datasets/url_checksums/cifar10.txt; pinned alike elsewhere)
#   md5 c32a1d4ab5d03f1284b67883e8d87530 (published on the dataset's page).
# None of these could be checked against the real hosts here.
FLOWERS_BASE = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
FLOWERS_FILES = {
    "imagelabels.mat": "sha256:4903e94206bac23bf772aadf06451916df56b58fc483a62db32a97b82656651d",
    "setid.mat": "sha256:46b8678f91fd95d3c8f4feab80d271a6c834a1dd896fe29fd3e6ad9ce5c8dccd",
    "102flowers.tgz": "sha256:2d01ecc807db462958cfe3d92f57a8c252b4abd240eb955770201e45f783b246",
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_DIGEST = "sha256:c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
# Sizes in bytes, recorded with the digests above: a download stops there.
FLOWERS_SIZES = {"imagelabels.mat": 502, "setid.mat": 14_989, "102flowers.tgz": 344_862_509}
CIFAR10_SIZE = 170_052_171


@dataclass(frozen=True)
class _Dataset:
    dir_name: str  # under data_home()
    own_names: tuple[str, ...]  # entries a (partial) copy of it holds
    find: Callable[[str | None], str]  # the loader's own search; raises DatasetNotFound
    download: Callable[[Path, bool, object], None]


def _flowers_find(d):
    from .flowers import find_flowers

    return find_flowers(d)


def _flowers_download(target: Path, allow: bool, progress) -> None:
    for name, digest in FLOWERS_FILES.items():
        if name == "102flowers.tgz":
            continue
        fetch(
            FLOWERS_BASE + name,
            target / name,
            digest=digest,
            size=FLOWERS_SIZES[name],
            allow_download=allow,
            progress=progress,
        )
    if not (target / "jpg").is_dir():
        tgz = fetch(
            FLOWERS_BASE + "102flowers.tgz",
            target / "102flowers.tgz",
            digest=FLOWERS_FILES["102flowers.tgz"],
            size=FLOWERS_SIZES["102flowers.tgz"],
            allow_download=allow,
            progress=progress,
        )
        extract_tar(tgz, target)  # -> target/jpg/image_00001.jpg ...
        tgz.unlink()


def _cifar_find(d):
    from .cifar import find_cifar10

    return find_cifar10(d)


def _cifar_download(target: Path, allow: bool, progress) -> None:
    tgz = fetch(
        CIFAR10_URL,
        target / "cifar-10-binary.tar.gz",
        digest=CIFAR10_DIGEST,
        size=CIFAR10_SIZE,
        allow_download=allow,
        progress=progress,
    )
    extract_tar(tgz, target)  # -> target/cifar-10-batches-bin/data_batch_1.bin ...
    tgz.unlink()


DOWNLOADABLE: dict[str, _Dataset] = {
    "flowers": _Dataset(
        "flowers102",
        ("jpg", *FLOWERS_FILES, "102flowers.tgz.part"),
        _flowers_find,
        _flowers_download,
    ),
    "cifar10": _Dataset(
        "cifar10",
        ("cifar-10-batches-bin", "cifar-10-binary.tar.gz", "cifar-10-binary.tar.gz.part"),
        _cifar_find,
        _cifar_download,
    ),
}


def _found(ds: _Dataset, d) -> str | None:
    try:
        return ds.find(d)
    except DatasetNotFound:
        return None


def fetch_data(
    task_name: str, data_dir=None, *, allow_download: bool = True, progress=None
) -> str | None:
    """A directory holding ``task_name``'s data, downloaded there if need be.

    For ``flowers`` and ``cifar10`` (and class subsets such as ``flowers:0-9``):
    ``data_dir`` itself when it already has the data; otherwise the data is
    downloaded and unpacked into ``data_dir`` (when it is missing, empty, or a
    partial copy) or ``data_dir/<dataset>`` (when it holds other things), or
    with no ``data_dir`` into ``data_home()/flowers102`` / ``cifar10`` (unless
    ``$SPAEDGE_DATA`` already has it), and that directory is returned. Pass it
    to ``get_task(..., data_dir=...)``. For other tasks ``data_dir`` is returned
    unchanged.

    allow_download: False (``--no-download``) never touches the network: files
    already there are used (a hand-placed archive is unpacked), missing ones
    raise DownloadError naming where to put them. progress: as for
    ``spaedge.download.fetch``.
    """
    head = str(task_name).strip().partition(":")[0]
    ds = DOWNLOADABLE.get(head)
    if ds is None:
        return data_dir
    if data_dir is not None:
        if _found(ds, data_dir):
            return data_dir
        d = Path(os.path.expanduser(os.fspath(data_dir))).absolute()
        entries = set(os.listdir(d)) if d.is_dir() else set()
        target = d if not entries or entries & set(ds.own_names) else d / ds.dir_name
    else:
        target = data_home() / ds.dir_name
        if _found(ds, str(target)):
            return str(target)
        found = _found(
            ds, None
        )  # the loader's own search (data home under another name, system copies)
        if found:
            return found
    target.mkdir(parents=True, exist_ok=True)
    ds.download(target, allow_download, progress)
    ds.find(
        str(target)
    )  # raises DatasetNotFound if what arrived is not the layout the loader reads
    return str(target)
