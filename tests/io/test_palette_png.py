"""2D masks as palette PNGs: the pixel values are the labels (PIL and medvit read them back), and the palette
shows them in distinct colours (0 black) in any viewer; the label colours are the ones previews and RTSTRUCT
use."""

from __future__ import annotations

import numpy as np

from medvit.io import read_image, write_png
from medvit.io.palette import label_colour, png_palette


def test_label_colours_are_distinct_and_background_black():
    colours = [label_colour(v) for v in range(256)]
    assert colours[0] == (0, 0, 0)
    assert len(set(colours[1:])) == 255 and (0, 0, 0) not in colours[1:]
    assert all(0 <= c <= 255 and isinstance(c, int) for rgb in colours for c in rgb)
    assert png_palette()[:9] == [0, 0, 0, *label_colour(1), *label_colour(2)]


def test_palette_png_keeps_the_label_values(tmp_path):
    from PIL import Image

    mask = np.zeros((30, 40), np.uint8)
    mask[5:10, 8:20] = 1
    mask[20:25, 30:35] = 2
    mask[0, 0] = 255
    out = write_png(mask, tmp_path / "case.png", palette=True)
    with Image.open(out) as img:
        assert img.mode == "P"
        np.testing.assert_array_equal(np.asarray(img), mask)  # indices are the labels
        rgb = np.asarray(img.convert("RGB"))  # what a viewer shows
    assert tuple(rgb[0, 1]) == (0, 0, 0)
    assert tuple(rgb[7, 10]) == label_colour(1) and tuple(rgb[22, 32]) == label_colour(2)
    assert tuple(rgb[0, 0]) == label_colour(255)
    back = read_image(out)  # medvit's own reader keeps the labels (not the colours)
    assert back.shape == (1, 30, 40)
    np.testing.assert_array_equal(back[0].numpy(), mask)


def test_other_palette_images_still_read_as_colour(tmp_path):
    from PIL import Image

    img = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8))
    img.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    img.save(tmp_path / "photo.png")
    back = read_image(tmp_path / "photo.png")
    assert back.shape == (3, 2, 2) and back[:, 0, 1].tolist() == [200, 100, 50]


def test_labels_above_255_fall_back_to_sixteen_bit_grey(tmp_path):
    from PIL import Image

    mask = np.array([[0, 300], [2, 65535]])
    out = write_png(mask, tmp_path / "wide.png", palette=True)
    with Image.open(out) as img:
        assert img.mode.startswith("I")
        np.testing.assert_array_equal(np.asarray(img), mask)
