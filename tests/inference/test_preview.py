"""Previews decoded back: the label's colour blended over the image where the structure is, the plain image
elsewhere, the planes in the radiological convention at the true aspect, the legend's colours; 2D over the
photograph. The layout is the module's (panels from the top left, :data:`GAP` apart, one scale in mm)."""

from __future__ import annotations

import numpy as np
import pytest

from medvit.inference.predictor import InputGrid, Prediction
from medvit.inference.preview import ALPHA, GAP, PANEL_PX, write_preview
from medvit.io.palette import label_colour


def _read(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        assert img.mode == "RGB"
        assert not {k for k in img.info if k not in ("dpi", "gamma")}  # no text chunks: nothing about the case
        return np.asarray(img).astype(int)


def _blend(grey: float, value: int) -> np.ndarray:
    return np.rint((1 - ALPHA) * grey + ALPHA * np.asarray(label_colour(value)))


def _volume_prediction():
    """40 x 30 x 20 voxels stored as DICOM stores axial CT (i to the patient's left, j to the back, k up; 1 x 1 x
    2 mm), a box of label 1 and a smaller one of label 2, a bright strip along the patient's right side."""
    shape = (40, 30, 20)
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])
    affine[:3, 3] = [20.0, 15.0, -10.0]
    image = np.full((1, *shape), 100, np.int16)  # grey 127.5 in the window below
    image[0, :3] = 300  # i < 3: x largest in RAS, the patient's right: white
    mask = np.zeros(shape, np.uint8)
    mask[5:15, 18:26, 6:14] = 1
    mask[30:33, 2:5, 15:17] = 2
    grid = InputGrid((1, *shape), affine, {"spacing_known": True, "modality": "CT"})
    labels = {0: "background", 1: "liver", 2: "lesion", 3: "absent"}
    return Prediction(
        task="segmentation", labels=labels, grid=grid, mask=mask, image=image, window=(-100.0, 300.0)
    )


def test_three_planes_radiological_at_true_aspect(tmp_path):
    pred = _volume_prediction()
    pixels = _read(write_preview(pred, tmp_path / "p.png"))
    # extents 40, 30 and 40 mm: 8 pixels a millimetre; axial 320 x 240, coronal 320 x 320, sagittal 240 x 320
    assert PANEL_PX == 320
    axial, coronal, sagittal = GAP, GAP + 320 + GAP, GAP + 320 + GAP + 320 + GAP
    top = GAP
    grey = 128
    # axial (k = 10, the box's centroid): columns follow i (patient's right on the left), rows follow j
    np.testing.assert_allclose(pixels[top + 22 * 8 + 4, axial + 10 * 8 + 4], _blend(127.5, 1), atol=1)
    assert np.all(pixels[top + 5 * 8, axial + 30 * 8] == grey)  # background
    assert np.all(pixels[top + 5 * 8, axial + 4] == 255)  # the bright strip: the patient's right, on the left
    assert np.all(pixels[top + 5 * 8, axial + 319 - 4] == grey)
    # coronal (j = 22): columns follow i, superior (k large) at the top: k in [6, 14) -> rows [48, 112) mm*8
    np.testing.assert_allclose(pixels[top + (19 - 10) * 16 + 8, coronal + 10 * 8 + 4], _blend(127.5, 1), atol=1)
    assert np.all(pixels[top + (19 - 17) * 16 + 8, coronal + 10 * 8 + 4] == grey)  # above the box
    # sagittal (i = 10): columns follow j (anterior on the left), superior at the top
    np.testing.assert_allclose(pixels[top + (19 - 10) * 16 + 8, sagittal + 22 * 8 + 4], _blend(127.5, 1), atol=1)
    assert np.all(pixels[top + (19 - 10) * 16 + 8, sagittal + 5 * 8] == grey)
    assert pixels.shape[1] == sagittal + 240 + GAP
    # the legend: the labels found, in their colours
    legend = top + 320 + 2 * GAP
    assert tuple(pixels[legend + 8, GAP + 4]) == label_colour(1)
    assert tuple(pixels[legend + 16 + 8, GAP + 4]) == label_colour(2)
    assert pixels.shape[0] == legend + 2 * 16 + GAP  # "absent" is not in the legend


def test_nothing_found_shows_the_middle(tmp_path):
    pred = _volume_prediction()
    pred.mask = np.zeros_like(pred.mask)
    pixels = _read(write_preview(pred, tmp_path / "p.png"))
    panels = pixels[GAP + 20 : GAP + 220, GAP + 20 : GAP + 300]  # the axial plane, inside its letters
    assert np.all(panels[..., 0] == panels[..., 1]) and np.all(panels[..., 1] == panels[..., 2])  # no colour


def test_2d_mask_over_the_photograph(tmp_path):
    from skimage import data as skdata

    photo = np.moveaxis(skdata.astronaut()[::2, ::2], -1, 0)  # [3, 256, 256] uint8
    mask = np.zeros((256, 256), np.uint8)
    mask[40:120, 150:200] = 2
    grid = InputGrid((3, 256, 256), np.eye(4), {"spacing_known": False})
    pred = Prediction(task="segmentation", labels={0: "bg", 1: "disc", 2: "cup"}, grid=grid, mask=mask,
                      image=photo, window=(0.0, 255.0))  # fmt: skip
    pixels = _read(write_preview(pred, tmp_path / "p.png"))
    inside = pixels[GAP + 80, GAP + 175]
    np.testing.assert_allclose(
        inside, np.rint((1 - ALPHA) * photo[:, 80, 175] + ALPHA * np.array(label_colour(2)))
    )
    np.testing.assert_array_equal(pixels[GAP + 200, GAP + 50], photo[:, 200, 50])  # the photograph itself
    np.testing.assert_array_equal(pixels[GAP + 40, GAP + 160], label_colour(2))  # the outline, opaque


def test_preview_needs_the_image(tmp_path):
    pred = _volume_prediction()
    pred.image = None
    with pytest.raises(ValueError, match="keep_image=True"):
        write_preview(pred, tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()
