"""2D photographs and tiles: scikit-image's real fundus photograph, grey, 16-bit, TIFF, BMP; PNG masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medvit.errors import InputError
from medvit.io import read_image, write_png


@pytest.fixture(scope="session")
def skimage_data() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def test_fundus_photograph_rgb(skimage_data):
    from PIL import Image

    img = read_image(skimage_data / "retina.jpg")
    ref = np.asarray(Image.open(skimage_data / "retina.jpg"))
    assert img.shape == (3, *ref.shape[:2])
    np.testing.assert_array_equal(img.numpy(), np.moveaxis(ref, -1, 0))
    assert img.meta["spacing_known"] is False
    assert img.meta["format"] == "jpeg"


def test_grey_png_and_tiff(skimage_data):
    grey = read_image(skimage_data / "camera.png")
    assert grey.shape == (1, 512, 512)
    with pytest.warns(UserWarning, match="pages; only the first is read"):
        tif = read_image(skimage_data / "multipage.tif")
    assert tif.ndim == 3


@pytest.mark.parametrize("suffix", [".bmp", ".tiff", ".png"])
def test_formats_round_trip_pixels(skimage_data, tmp_path, suffix):
    from PIL import Image

    rgb = np.asarray(Image.open(skimage_data / "retina.jpg"))[:64, :80]
    Image.fromarray(rgb).save(tmp_path / f"tile{suffix}")
    img = read_image(tmp_path / f"tile{suffix}")
    np.testing.assert_array_equal(img.numpy(), np.moveaxis(rgb, -1, 0))


def test_sixteen_bit_values_kept(tmp_path):
    from PIL import Image

    data = (np.arange(48 * 32).reshape(48, 32) * 40).astype(np.uint16)
    Image.fromarray(data).save(tmp_path / "xray.png")
    img = read_image(tmp_path / "xray.png")
    np.testing.assert_array_equal(img[0].numpy(), data.astype(np.int64))


def test_png_mask_round_trip(tmp_path):
    mask = np.zeros((1, 30, 40), np.int64)
    mask[0, 5:10, 8:20] = 1
    mask[0, 20:25, 30:35] = 2
    out = write_png(mask, tmp_path / "masks" / "case.png")
    back = read_image(out)
    np.testing.assert_array_equal(back.numpy(), mask)
    wide = write_png(np.full((4, 4), 300), tmp_path / "wide.png")
    assert read_image(wide).max() == 300


def test_png_mask_bad_values(tmp_path):
    with pytest.raises(InputError, match=r"m\.png: label values -1\.\.-1 do not fit a PNG"):
        write_png(np.full((4, 4), -1), tmp_path / "m.png")
    with pytest.raises(InputError, match=r"m\.png: PNG masks need integer labels"):
        write_png(np.full((4, 4), 0.5), tmp_path / "m.png")
    with pytest.raises(InputError, match=r"m\.png: PNG needs a 2D mask or an RGB image"):
        write_png(np.zeros((2, 3, 4, 5)), tmp_path / "m.png")
    assert list(tmp_path.iterdir()) == []


def test_truncated_jpeg(skimage_data, tmp_path):
    data = (skimage_data / "retina.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:2000])
    with pytest.raises(InputError, match=r"cut\.jpg: image data is truncated or corrupt"):
        read_image(tmp_path / "cut.jpg")


def test_text_named_png(tmp_path):
    (tmp_path / "fake.png").write_text("hello" * 100)
    with pytest.raises(InputError, match=r"fake\.png: not a readable 2D image"):
        read_image(tmp_path / "fake.png")
