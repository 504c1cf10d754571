"""Images are read by value range, never clipped; unusable ones are refused or
skipped with a note (docs/reliability.md, "Images"; issue 18 items 4, 8, 11).
Every image is made here, with known values."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from spaedge.images import MAX_ASPECT, ImageRefused, read_image
from spaedge.tasks import get_task

PATTERN = (np.arange(16 * 16).reshape(16, 16) % 17 / 16.0).astype(np.float32)  # 0..1


def _same(path):
    return read_image(path, (1, 16, 16), 1.0)[0]


def test_a_16_bit_png_is_scaled_from_its_bit_depth(tmp_path):
    Image.fromarray(np.round(PATTERN * 65535).astype(np.uint16)).save(tmp_path / "i16.png")
    Image.fromarray(np.round(PATTERN * 255).astype(np.uint8), "L").save(tmp_path / "l8.png")
    assert Image.open(tmp_path / "i16.png").mode == "I;16"
    x16, x8 = _same(tmp_path / "i16.png"), _same(tmp_path / "l8.png")
    np.testing.assert_allclose(x16, PATTERN, atol=1e-5)  # not clipped at 255/65535
    np.testing.assert_allclose(x16, x8, atol=1 / 255)


def test_32_bit_integer_pixels_in_16_bit_range_are_scaled_others_refused(tmp_path):
    Image.fromarray(np.round(PATTERN * 65535).astype(np.int32), "I").save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    np.testing.assert_allclose(_same(tmp_path / "i.tif"), PATTERN, atol=1e-5)
    Image.fromarray(np.full((16, 16), -5, np.int32), "I").save(tmp_path / "neg.tif")
    with pytest.raises(ImageRefused, match=r"mode 'I'.* -5 to -5"):
        _same(tmp_path / "neg.tif")


@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_a_float_tiff_keeps_its_range(tmp_path, scale):
    Image.fromarray(PATTERN * np.float32(scale), "F").save(tmp_path / "f.tif")
    np.testing.assert_allclose(_same(tmp_path / "f.tif"), PATTERN, atol=1e-6)


@pytest.mark.parametrize("value", [np.nan, 300.0, -1.0])
def test_a_float_image_of_unknown_range_is_refused(tmp_path, value):
    a = PATTERN.copy()
    a[3, 3] = value
    Image.fromarray(a, "F").save(tmp_path / "f.tif")
    with pytest.raises(ImageRefused, match="mode 'F'"):
        _same(tmp_path / "f.tif")


def test_alpha_is_composited_over_black_and_palettes_are_expanded(tmp_path):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 0
    rgba[:8, :, 3] = 255  # top half opaque, bottom half transparent (white hidden)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    x = read_image(tmp_path / "a.png", (3, 16, 16), 1.0)
    np.testing.assert_allclose(x[:, :8], 200 / 255, atol=1e-6)
    np.testing.assert_allclose(x[:, 8:], 0.0, atol=1e-6)
    p = Image.fromarray(np.round(PATTERN * 255).astype(np.uint8), "L").convert("P")
    p.save(tmp_path / "p.png")
    np.testing.assert_allclose(_same(tmp_path / "p.png"), PATTERN, atol=1 / 255 + 1e-6)


def test_an_unsupported_mode_is_refused_naming_it(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((16, 16), np.uint8), "L").save(tmp_path / "x.png")
    import spaedge.images as images

    monkeypatch.setattr(images, "_EIGHT_BIT", ())  # as if 'L' were a mode nobody knows
    with pytest.raises(ImageRefused, match="pixel mode 'L' is not supported"):
        _same(tmp_path / "x.png")


def test_a_strip_image_is_refused_before_it_is_decoded(tmp_path):
    Image.new("L", (2_000_000, 1)).save(tmp_path / "strip.png")
    assert (tmp_path / "strip.png").stat().st_size < 10_000
    with pytest.raises(ImageRefused, match=f"aspect ratio above the {MAX_ASPECT}:1 limit"):
        read_image(tmp_path / "strip.png", (3, 224, 224), 0.875)
    Image.new("L", (20 * 64, 64)).save(tmp_path / "ok.png")  # 20:1 is still read
    assert read_image(tmp_path / "ok.png", (1, 28, 28)).shape == (1, 28, 28)


def _folder(root, classes, n=6):
    for i, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            Image.fromarray(np.full((28, 28), 40 * i + k, np.uint8), "L").save(
                root / c / f"{k}.png"
            )


def test_an_image_folder_skips_a_strip_image_with_a_note(tmp_path):
    _folder(tmp_path, ["a", "b"])
    Image.new("L", (2_000_000, 1)).save(tmp_path / "a" / "strip.png")
    task = get_task(f"imagefolder:{tmp_path}")
    assert any("strip.png" in n and "aspect ratio" in n for n in task.notes)
    assert sum(len(task.split(s)) for s in ("train", "val", "test")) == 12


def test_an_image_folder_reads_16_bit_images_by_value(tmp_path):
    _folder(tmp_path, ["a", "b"])
    Image.fromarray(np.full((28, 28), 40000, np.uint16)).save(tmp_path / "a" / "deep.png")
    task = get_task(f"imagefolder:{tmp_path}", input_size=(1, 28, 28))
    x = (task.load_image(str(tmp_path / "a" / "deep.png")) * task.std[0] + task.mean[0]).numpy()
    np.testing.assert_allclose(x, 40000 / 65535, atol=1e-5)


def test_a_one_class_image_folder_is_refused(tmp_path):
    _folder(tmp_path, ["only"])
    with pytest.raises(ValueError, match="only one class \\('only'\\).*nothing to classify"):
        get_task(f"imagefolder:{tmp_path}")


def test_an_empty_class_folder_is_noted(tmp_path):
    _folder(tmp_path, ["a", "b"])
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "readme.txt").write_text("no images")
    task = get_task(f"imagefolder:{tmp_path}")
    assert task.labels == ["a", "b"]
    assert any(
        "class folder without a usable image" in n and str(tmp_path / "c") in n for n in task.notes
    )
