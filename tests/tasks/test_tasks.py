"""Task registry and loaders: every loader on a fixture the test writes itself,
Fashion-MNIST also on the real files (required in CI)."""

import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from spaedge.tasks import (
    DatasetNotFound,
    Task,
    UnknownTask,
    get_task,
    list_tasks,
    read_idx,
    stratified_split,
    write_idx,
)

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(autouse=True)
def _no_env_data(monkeypatch):
    # Tests must not depend on the developer's SPAEDGE_DATA.
    monkeypatch.delenv("SPAEDGE_DATA", raising=False)


def _indices(ds):
    return set(ds.indices.tolist())


def _check_split_basics(task, sizes=None):
    c, h, w = task.input_size
    for split in ("train", "val", "test"):
        ds = task.split(split)
        if sizes is not None:
            assert len(ds) == sizes[split], split
        x, y = ds[0]
        assert x.shape == (c, h, w) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and 0 <= int(y) < task.num_classes
        assert ds.targets.dtype == torch.int64 and len(ds.targets) == len(ds)


# --------------------------------------------------------------------- digits


def test_digits_shapes_sizes_and_disjoint_splits():
    t = get_task("digits")
    assert t.name == "digits" and t.labels == [str(i) for i in range(10)]
    assert t.num_classes == 10 and t.input_size == (1, 28, 28)
    assert len(t.mean) == len(t.std) == 1
    _check_split_basics(t, {"train": 1079, "val": 359, "test": 359})
    tr, va, te = (_indices(t.split(s)) for s in ("train", "val", "test"))
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert len(tr | va | te) == 1797
    # stratified: every class in every split, in ~60/20/20 proportion
    for s in ("val", "test"):
        counts = torch.bincount(t.split(s).targets, minlength=10)
        assert counts.min() >= 35 and counts.max() <= 37


def test_digits_normalisation_and_arrays():
    t = get_task("digits")
    X, y = t.arrays("train")
    assert X.shape == (1079, 1, 28, 28) and X.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(X.mean().item()) < 1e-4 and abs(X.std().item() - 1) < 1e-3
    # pixel 0 (background) maps to -mean/std
    assert X.min().item() == pytest.approx(-t.mean[0] / t.std[0], abs=1e-5)
    ds = t.split("train")
    for i in (0, 5, len(ds) - 1):
        assert torch.equal(ds[i][0], X[i]) and int(ds[i][1]) == int(y[i])
    assert torch.equal(ds[-1][0], X[-1])
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert sum(1 for _ in ds) == len(ds)  # iteration protocol stops


def test_digits_deterministic():
    a, b = get_task("digits"), get_task("digits")
    for s in ("train", "val", "test"):
        assert np.array_equal(a.split(s).indices, b.split(s).indices)
    Xa, ya = a.arrays("val")
    Xb, yb = b.arrays("val")
    assert torch.equal(Xa, Xb) and torch.equal(ya, yb)
    assert a.mean == b.mean and a.std == b.std
    # pinned: the split must not change between versions (bundles record it)
    assert a.split("val").indices[:5].tolist() == [0, 5, 6, 7, 17]
    assert a.split("test").indices[:5].tolist() == [8, 12, 16, 19, 25]


def test_digits_input_sizes():
    t = get_task("digits", input_size=(3, 32, 32))
    x, _ = t.split("train")[0]
    assert x.shape == (3, 32, 32) and len(t.mean) == 3
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # gray repeated
    assert get_task("digits", input_size=16).input_size == (1, 16, 16)
    assert get_task("digits", input_size=(20, 24)).input_size == (1, 20, 24)
    with pytest.raises(ValueError):
        get_task("digits", input_size=(2, 28, 28))


def test_dataloader_and_pickle():
    t = get_task("digits")
    ds = t.split("val")
    x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=16)))
    assert x.shape == (16, 1, 28, 28) and y.shape == (16,)
    clone = pickle.loads(pickle.dumps(ds))  # spawn-started workers pickle it
    assert torch.equal(clone[3][0], ds[3][0])


def test_input_spec_matches_format_doc():
    t = get_task("digits")
    spec = t.input_spec()
    assert spec == {
        "channels": 1,
        "height": 28,
        "width": 28,
        "mean": list(t.mean),
        "std": list(t.std),
    }


def test_stratified_split_partitions():
    targets = np.repeat(np.arange(4), [1, 2, 7, 50])
    parts = stratified_split(targets, (0.6, 0.2, 0.2), "seed")
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(len(targets)))
    assert np.bincount(targets[parts[1]], minlength=4)[3] == 10
    again = stratified_split(targets, (0.6, 0.2, 0.2), "seed")
    assert all(np.array_equal(p, q) for p, q in zip(parts, again))
    other = stratified_split(targets, (0.6, 0.2, 0.2), "other seed")
    assert not np.array_equal(parts[1], other[1])


# -------------------------------------------------------------- fashion_mnist


def _write_fashion(d, per_class=(10, 3), hw=6, gz=True):
    """Tiny Fashion-MNIST: every image of class c is the constant 20*c + 10."""
    os.makedirs(d, exist_ok=True)
    for part, n in zip(("train", "t10k"), per_class):
        y = np.repeat(np.arange(10, dtype=np.uint8), n)
        x = np.broadcast_to((20 * y + 10).astype(np.uint8)[:, None, None], (len(y), hw, hw)).copy()
        ext = ".gz" if gz else ""
        write_idx(os.path.join(d, f"{part}-images-idx3-ubyte{ext}"), x)
        write_idx(os.path.join(d, f"{part}-labels-idx1-ubyte{ext}"), y)


def _class_of(x, task):
    """Recover the original class from a constant fixture image."""
    raw = x.mean().item() * task.std[0] + task.mean[0]
    return int(round((raw * 255 - 10) / 20))


def test_idx_roundtrip_and_errors(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    with gzip.open(tmp_path / "a.gz") as f:
        assert f.read(4) == b"\x00\x00\x08\x03"
    assert np.array_equal(read_idx(tmp_path / "a.gz"), a)
    f32 = np.linspace(0, 1, 5, dtype=np.float32)
    write_idx(tmp_path / "f", f32)
    assert np.array_equal(read_idx(tmp_path / "f"), f32)
    raw = (tmp_path / "f").read_bytes()
    (tmp_path / "short").write_bytes(raw[:-1])
    with pytest.raises(ValueError, match="short"):
        read_idx(tmp_path / "short")
    (tmp_path / "junk").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(tmp_path / "junk")


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_fixture(tmp_path, gz):
    _write_fashion(tmp_path, gz=gz)
    t = get_task("fashion_mnist", data_dir=str(tmp_path))
    assert t.labels[0] == "T-shirt/top" and t.labels[9] == "Ankle boot"
    assert t.input_size == (1, 28, 28)
    _check_split_basics(t, {"train": 90, "val": 10, "test": 30})
    assert not (_indices(t.split("train")) & _indices(t.split("val")))
    X, y = t.arrays("test")
    assert X.shape == (30, 1, 28, 28)
    assert [_class_of(x, t) for x in X] == y.tolist()


def test_fashion_class_subsets_renumber(tmp_path):
    _write_fashion(tmp_path)
    new = get_task("fashion_mnist_new", data_dir=str(tmp_path))
    assert new.name == "fashion_mnist_new"
    assert new.labels == ["Shirt", "Sneaker", "Bag", "Ankle boot"] and new.num_classes == 4
    X, y = new.arrays("train")
    assert sorted(set(y.tolist())) == [0, 1, 2, 3] and len(y) == 36
    assert all(_class_of(x, new) == 6 + int(c) for x, c in zip(X, y))

    base = get_task("fashion_mnist_base", data_dir=str(tmp_path))
    assert base.labels == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal"]
    assert set(base.split("test").targets.tolist()) == set(range(6))
    assert not (_indices(base.split("train")) & _indices(new.split("train")))

    sub = get_task("fashion_mnist:9,6", data_dir=str(tmp_path))  # order given = label order
    assert sub.name == "fashion_mnist:9,6" and sub.labels == ["Ankle boot", "Shirt"]
    X, y = sub.arrays("test")
    assert all(_class_of(x, sub) == (9, 6)[int(c)] for x, c in zip(X, y))
    assert get_task("fashion_mnist:6-9", data_dir=str(tmp_path)).name == "fashion_mnist:6,7,8,9"
    assert get_task("fashion_mnist:bag,SHIRT", data_dir=str(tmp_path)).labels == ["Bag", "Shirt"]
    # the same image is in the same split whatever the subset
    full = get_task("fashion_mnist", data_dir=str(tmp_path))
    assert _indices(new.split("val")) <= _indices(full.split("val"))
    for bad in ("fashion_mnist:6,6", "fashion_mnist:10", "fashion_mnist:hat", "fashion_mnist:"):
        with pytest.raises(ValueError):
            get_task(bad, data_dir=str(tmp_path))


@pytest.fixture
def real_fashion():
    files = [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    if not all(os.path.isfile(os.path.join(FASHION_DIR, f)) for f in files):
        pytest.fail(
            f"Fashion-MNIST is not installed in {FASHION_DIR}: apt-get install dataset-fashion-mnist "
            "(.ci/run does)"
        )
    return FASHION_DIR


def test_fashion_real_files(real_fashion):
    t = get_task("fashion_mnist")  # default location, no data_dir
    assert t.mean == (0.286,) and t.std == (0.353,)
    _check_split_basics(t, {"train": 54000, "val": 6000, "test": 10000})
    assert torch.bincount(t.split("val").targets).tolist() == [600] * 10
    assert int(t.split("test")[0][1]) == 9  # first test image is an ankle boot
    X, y = t.arrays("test")
    assert X.shape == (10000, 1, 28, 28)
    assert abs(X.mean().item()) < 0.05 and abs(X.std().item() - 1) < 0.05

    new = get_task("fashion_mnist_new", data_dir=real_fashion)
    assert [len(new.split(s)) for s in ("train", "val", "test")] == [21600, 2400, 4000]
    assert torch.bincount(new.split("test").targets).tolist() == [1000] * 4
    base = get_task("fashion_mnist_base")
    assert [len(base.split(s)) for s in ("train", "val", "test")] == [32400, 3600, 6000]


# -------------------------------------------------------------------- flowers


def _write_flowers(root, n=12, classes=(1, 2, 3)):
    from PIL import Image
    from scipy.io import savemat

    os.makedirs(os.path.join(root, "jpg"))
    labels = np.array([classes[i % len(classes)] for i in range(n)], dtype=np.uint8)
    for i in range(n):
        w, h = (40, 30) if i % 2 else (30, 44)
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 0] = 60 * labels[i]
        img[:, : w // 2, 1] = 200  # left half green: flips are visible
        Image.fromarray(img).save(os.path.join(root, "jpg", f"image_{i + 1:05d}.jpg"), quality=95)
    savemat(os.path.join(root, "imagelabels.mat"), {"labels": labels[None, :]})
    ids = np.arange(1, n + 1)
    savemat(
        os.path.join(root, "setid.mat"),
        {"trnid": ids[None, :6], "valid": ids[None, 6:9], "tstid": ids[None, 9:]},
    )
    return labels.astype(int) - 1


def test_flowers_fixture(tmp_path):
    labels = _write_flowers(tmp_path)
    t = get_task("flowers", data_dir=str(tmp_path), input_size=(3, 16, 16))
    assert (
        t.num_classes == 102
        and t.labels[0] == "pink primrose"
        and t.labels[-1] == "blackberry lily"
    )
    assert t.mean == (0.485, 0.456, 0.406) and t.std == (0.229, 0.224, 0.225)
    _check_split_basics(t, {"train": 6, "val": 3, "test": 3})
    X, y = t.arrays("train")
    assert X.shape == (6, 3, 16, 16)
    assert y.tolist() == labels[:6].tolist()  # 1-based .mat labels -> 0-based
    red = X[:, 0].mean(dim=(1, 2)) * t.std[0] + t.mean[0]
    assert torch.allclose(red, 60.0 * (y + 1).float() / 255, atol=0.03)
    assert get_task("flowers", data_dir=str(tmp_path)).input_size == (3, 224, 224)


def test_flowers_augment_flip_and_env(tmp_path, monkeypatch):
    _write_flowers(tmp_path / "flowers102")
    monkeypatch.setenv("SPAEDGE_DATA", str(tmp_path))
    t = get_task("flowers", input_size=(3, 16, 16))
    plain = t.split("train")
    aug = t.split("train", augment=True)
    assert aug.flip and not t.split("val").flip
    x = plain[0][0]
    torch.manual_seed(0)
    seen = {bool(torch.equal(aug[0][0], x)) for _ in range(20)}
    assert seen == {True, False}  # sometimes flipped, sometimes not
    torch.manual_seed(0)
    flipped = [aug[0][0] for _ in range(5)]
    torch.manual_seed(0)
    assert all(torch.equal(a, aug[0][0]) for a in flipped)  # reproducible under a seed
    assert any(torch.equal(f, x.flip(-1)) for f in flipped)


def test_flowers_gray_and_missing_image(tmp_path):
    _write_flowers(tmp_path)
    g = get_task("flowers", data_dir=str(tmp_path), input_size=(1, 8, 8))
    assert g.split("val")[0][0].shape == (1, 8, 8) and len(g.mean) == 1
    os.remove(tmp_path / "jpg" / "image_00011.jpg")
    t = get_task("flowers", data_dir=str(tmp_path), input_size=(3, 8, 8))
    with pytest.raises(DatasetNotFound, match="image_00011.jpg"):
        t.split("train")


# -------------------------------------------------------------------- cifar10


def _cifar_records(labels):
    recs = []
    for _i, c in enumerate(labels):
        img = np.zeros((3, 32, 32), np.uint8)
        img[0] = 25 * c  # red plane first in the binary layout
        img[2, 0, :] = 255  # top row of blue
        recs.append(np.concatenate([[c], img.reshape(-1)]).astype(np.uint8))
    return np.stack(recs).tobytes()


def _write_cifar(d):
    os.makedirs(d, exist_ok=True)
    for i in range(1, 6):
        (d / f"data_batch_{i}.bin").write_bytes(_cifar_records(list(range(10)) * 2))
    (d / "test_batch.bin").write_bytes(_cifar_records(list(range(10))))


def test_cifar10_binary_fixture(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-bin")
    t = get_task("cifar10", data_dir=str(tmp_path))  # finds the unpacked subdirectory
    assert t.labels[0] == "airplane" and t.labels[9] == "truck" and t.input_size == (3, 32, 32)
    _check_split_basics(t, {"train": 90, "val": 10, "test": 10})
    assert torch.bincount(t.split("val").targets).tolist() == [1] * 10
    X, y = t.arrays("test")
    raw = X * torch.tensor(t.std).view(1, 3, 1, 1) + torch.tensor(t.mean).view(1, 3, 1, 1)
    assert torch.allclose(raw[:, 0].mean(dim=(1, 2)) * 255, 25.0 * y.float(), atol=1e-3)
    assert torch.allclose(raw[:, 2, 0], torch.ones(10, 32), atol=1e-5)
    assert torch.allclose(raw[:, 2, 1:], torch.zeros(10, 31, 32), atol=1e-5)
    sub = get_task("cifar10:3,5", data_dir=str(tmp_path))
    assert sub.labels == ["cat", "dog"] and len(sub.split("train")) == 18


def test_cifar10_python_version_refused(tmp_path):
    py = tmp_path / "cifar-10-batches-py"
    py.mkdir()
    (py / "data_batch_1").write_bytes(b"not unpickled")
    with pytest.raises(DatasetNotFound, match="binary version") as e:
        get_task("cifar10", data_dir=str(tmp_path))
    assert "cifar-10-binary.tar.gz" in str(e.value)


def test_cifar10_corrupt_batch(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "test_batch.bin").write_bytes(b"\x00" * 100)
    t = get_task("cifar10", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="test_batch.bin"):
        t.split("test")


# ---------------------------------------------------------------- imagefolder


def _write_folder(root, classes=("cat", "dog", "emu"), n=10, size=(20, 14)):
    from PIL import Image

    for ci, c in enumerate(classes):
        d = root / c
        d.mkdir(parents=True)
        for i in range(n):
            ext = "png" if i % 2 else "jpg"
            Image.new("RGB", size, (80 * ci, 10 * i, 0)).save(d / f"img{i}.{ext}")
        (d / "notes.txt").write_text("ignored")


def test_imagefolder_flat(tmp_path):
    _write_folder(tmp_path)
    t = get_task(f"imagefolder:{tmp_path}", input_size=(3, 12, 12))
    assert t.name == f"imagefolder:{tmp_path}"
    assert t.labels == ["cat", "dog", "emu"] and t.mean == (0.485, 0.456, 0.406)
    _check_split_basics(t, {"train": 18, "val": 6, "test": 6})
    parts = [_indices(t.split(s)) for s in ("train", "val", "test")]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    for s in ("val", "test"):
        assert torch.bincount(t.split(s).targets).tolist() == [2, 2, 2]
    again = get_task(f"imagefolder:{tmp_path}", input_size=(3, 12, 12))
    X1, y1 = t.arrays("val")
    X2, y2 = again.arrays("val")
    assert torch.equal(X1, X2) and torch.equal(y1, y2)
    red = X1[:, 0].mean(dim=(1, 2)) * t.std[0] + t.mean[0]
    assert torch.allclose(red, 80 * y1.float() / 255, atol=0.03)
    assert get_task("imagefolder", data_dir=str(tmp_path)).labels == ["cat", "dog", "emu"]
    assert get_task(f"imagefolder:{tmp_path}").input_size == (3, 224, 224)


def test_imagefolder_split_folders(tmp_path):
    _write_folder(tmp_path / "train", n=6)
    _write_folder(tmp_path / "val", n=2)
    _write_folder(tmp_path / "test", classes=("cat", "emu"), n=3)
    t = get_task(f"imagefolder:{tmp_path}", input_size=(1, 10, 10))
    assert t.labels == ["cat", "dog", "emu"] and t.mean == (0.449,)
    _check_split_basics(t, {"train": 18, "val": 6, "test": 6})
    assert sorted(set(t.split("test").targets.tolist())) == [0, 2]

    only = tmp_path / "two"
    _write_folder(only / "train", n=10)
    _write_folder(only / "test", n=2)
    t2 = get_task(f"imagefolder:{only}", input_size=(3, 8, 8))
    sizes = [len(t2.split(s)) for s in ("train", "val", "test")]
    assert sizes == [24, 6, 6]  # val carved from train

    bad = tmp_path / "bad"
    _write_folder(bad / "train", classes=("cat",), n=2)
    _write_folder(bad / "test", classes=("dog",), n=2)
    with pytest.raises(ValueError, match="dog"):
        get_task(f"imagefolder:{bad}")


def test_arrays_refuses_huge_lazy_split(tmp_path):
    _write_folder(tmp_path)
    t = get_task(f"imagefolder:{tmp_path}", input_size=(3, 64, 64))
    with pytest.raises(ValueError, match="DataLoader"):
        t.arrays("train", max_bytes=1000)


# ----------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["fashion_mnist", "fashion_mnist_new", "flowers", "cifar10"])
def test_missing_dataset_names_path(tmp_path, name):
    missing = tmp_path / "nothing-here"
    with pytest.raises(DatasetNotFound) as e:
        get_task(name, data_dir=str(missing))
    assert isinstance(e.value, FileNotFoundError)
    msg = str(e.value)
    assert str(missing) in msg and "--data-dir" in msg
    assert str(missing) in e.value.searched


def test_missing_without_data_dir_says_how(monkeypatch):
    with pytest.raises(DatasetNotFound, match="SPAEDGE_DATA"):
        get_task("flowers")
    monkeypatch.setenv("SPAEDGE_DATA", "/no/such/root")
    with pytest.raises(DatasetNotFound, match="/no/such/root/flowers102"):
        get_task("flowers")


def test_missing_imagefolder(tmp_path):
    with pytest.raises(DatasetNotFound, match=str(tmp_path / "gone")):
        get_task(f"imagefolder:{tmp_path / 'gone'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFound, match="no class subdirectories"):
        get_task(f"imagefolder:{tmp_path / 'empty'}")


def test_unknown_task_lists_known():
    with pytest.raises(UnknownTask) as e:
        get_task("mnist")
    msg = str(e.value)
    for n in list_tasks():
        assert n in msg
    assert "imagefolder:PATH" in msg
    assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)
    with pytest.raises(UnknownTask):
        get_task("mnist:1,2")


def test_list_tasks_and_bad_split():
    assert {
        "digits",
        "fashion_mnist",
        "fashion_mnist_base",
        "fashion_mnist_new",
        "flowers",
        "cifar10",
    } <= set(list_tasks())
    t = get_task("digits")
    assert isinstance(t, Task)
    with pytest.raises(ValueError, match="train, val, test"):
        t.split("validation")


def test_task_load_image_matches_task_data(tmp_path):
    from PIL import Image

    _write_folder(tmp_path / "f")
    t = get_task(f"imagefolder:{tmp_path / 'f'}", input_size=(3, 12, 12))
    val = t.split("val")
    path = val.source.paths[int(val.indices[0])]
    assert torch.allclose(t.load_image(path), val[0][0], atol=1e-6)
    assert t.crop_fraction == 0.875

    _write_fashion(tmp_path / "fm", hw=28)
    fm = get_task("fashion_mnist_new", data_dir=str(tmp_path / "fm"))
    assert fm.crop_fraction == 1.0  # whole small images: no centre crop
    x, y = fm.split("test")[0]
    raw = np.uint8(20 * (6 + int(y)) + 10)
    Image.fromarray(np.full((28, 28), raw, np.uint8)).save(tmp_path / "one.png")
    assert torch.allclose(fm.load_image(str(tmp_path / "one.png")), x, atol=1e-6)
