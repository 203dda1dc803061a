"""LoadImage(d): files, per-channel lists and .npy slices; label class maps, remaps and grid checks."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medvit.errors import InputError
from medvit.transforms import ClassLabel, ClassLabeld, LoadImage, LoadImaged


def _nifti(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 2.0, 1.0]) if affine is None else affine), str(path))
    return str(path)


@pytest.fixture
def volume(tmp_path):
    rng = np.random.default_rng(0)
    image = _nifti(tmp_path / "img.nii.gz", rng.integers(-100, 100, (6, 5, 4)).astype(np.int16))
    label = _nifti(tmp_path / "lab.nii.gz", (rng.random((6, 5, 4)) > 0.5).astype(np.uint8))
    return {"id": "case7", "image": image, "label": label, "split": None, "group": "case7"}


def test_reads_image_and_label_on_one_grid(volume):
    d = LoadImaged(["image", "label"])(volume)
    assert d["image"].shape == (1, 6, 5, 4) and d["label"].shape == (1, 6, 5, 4)
    assert not d["label"].is_floating_point()
    np.testing.assert_allclose(np.asarray(d["image"].affine), np.diag([1.5, 1.5, 2.0, 1.0]))
    assert d["id"] == "case7" and d["split"] is None  # other keys pass through
    assert all(v is not None for v in d["image"].meta.values())  # collatable meta


def test_label_on_another_grid_names_the_case(volume, tmp_path):
    volume["label"] = _nifti(tmp_path / "small.nii.gz", np.zeros((6, 5, 3), np.uint8))
    with pytest.raises(InputError, match=r"case case7: label small\.nii\.gz has grid \(6, 5, 3\)"):
        LoadImaged(["image", "label"])(volume)
    volume["label"] = _nifti(tmp_path / "moved.nii.gz", np.zeros((6, 5, 4), np.uint8),
                             np.diag([1.5, 1.5, 2.5, 1.0]))  # fmt: skip
    with pytest.raises(InputError, match=r"case case7: label moved\.nii\.gz geometry \(affine\) differs"):
        LoadImaged(["image", "label"])(volume)


def test_missing_file_names_the_case(volume, tmp_path):
    volume["image"] = str(tmp_path / "gone.nii.gz")
    with pytest.raises(InputError, match=r"^case case7: .*gone\.nii\.gz: no such file"):
        LoadImaged(["image", "label"])(volume)


def test_label_values_must_be_classes(tmp_path):
    path = _nifti(tmp_path / "soft.nii.gz", np.full((4, 4, 2), 0.5, np.float32))
    with pytest.raises(InputError, match="not whole numbers"):
        LoadImage(label=True)(path)
    whole = _nifti(tmp_path / "whole.nii.gz", np.full((4, 4, 2), 2.0, np.float32))
    out = LoadImage(label=True)(whole)
    assert out.dtype == torch.int32 and int(out.max()) == 2


def test_rgb_masks(tmp_path):
    grey = np.zeros((6, 7), np.uint8)
    grey[2:4, 2:5] = 2
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "same.png")
    assert torch.equal(
        LoadImage(label=True)(str(tmp_path / "same.png"))[0], torch.as_tensor(grey, dtype=torch.int32)
    )
    colours = np.stack([grey, grey * 0, grey], -1)
    Image.fromarray(colours).save(tmp_path / "colour.png")
    with pytest.raises(InputError, match=r"colour\.png: label image has 3 different channels"):
        LoadImage(label=True)(str(tmp_path / "colour.png"))


def test_remap(tmp_path):
    mask = np.array([[255, 128], [0, 255]], np.uint8)
    Image.fromarray(mask).save(tmp_path / "m.png")
    out = LoadImage(label=True, label_remap={255: 0, 128: 1, 0: 2})(str(tmp_path / "m.png"))
    np.testing.assert_array_equal(out[0].numpy(), [[0, 1], [2, 0]])
    with pytest.raises(ValueError, match="labels only"):
        LoadImage(label_remap={1: 2})


def test_npy_items(tmp_path):
    images = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    np.save(tmp_path / "images.npy", images)
    out = LoadImage()(str(tmp_path / "images.npy"), 1)
    assert out.shape == (3, 4, 5)
    np.testing.assert_array_equal(out.numpy(), np.moveaxis(images[1], -1, 0))
    with pytest.raises(InputError, match="needs an 'index'"):
        LoadImage()(str(tmp_path / "images.npy"))
    with pytest.raises(InputError, match="cannot take item 2"):
        LoadImage()(str(tmp_path / "images.npy"), 2)
    labels = np.zeros((2, 4, 5, 2), np.int32)
    labels[1, 1:3, 1:3] = [4, 2]
    np.save(tmp_path / "labels.npy", labels)
    d = LoadImaged(["image", "label"])({"id": "p1", "image": str(tmp_path / "images.npy"),
                                        "label": str(tmp_path / "labels.npy"), "index": 1})  # fmt: skip
    assert d["label"].shape == (2, 4, 5) and int(d["label"][0].max()) == 4 and int(d["label"][1].max()) == 2


def test_per_channel_files_are_stacked(tmp_path):
    a = _nifti(tmp_path / "c0.nii.gz", np.zeros((4, 4, 2), np.int16))
    b = _nifti(tmp_path / "c1.nii.gz", np.ones((4, 4, 2), np.int16))
    out = LoadImage()([a, b])
    assert out.shape == (2, 4, 4, 2) and float(out[1].float().mean()) == 1.0
    np.testing.assert_allclose(np.asarray(out.affine), np.diag([1.5, 1.5, 2.0, 1.0]))
    c = _nifti(tmp_path / "c2.nii.gz", np.ones((4, 4, 3), np.int16))
    with pytest.raises(InputError, match=r"c2\.nii\.gz: channel image shape"):
        LoadImage()([a, c])


def test_class_indices_pass_through(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "x.png")
    d = LoadImaged(["image", "label"])({"id": "x", "image": str(tmp_path / "x.png"), "label": 2})
    assert d["label"] == 2 and d["image"].shape == (3, 4, 4)


def test_class_labels():
    assert ClassLabel()(2).dtype == torch.long and int(ClassLabel()("1")) == 1
    assert torch.equal(ClassLabel(num_classes=3)([2]), torch.tensor([0.0, 0.0, 1.0]))
    assert torch.equal(ClassLabel(num_classes=3)([1, 0, 1]), torch.tensor([1.0, 0.0, 1.0]))  # multi-hot as is
    with pytest.raises(ValueError, match="outside 0..2"):
        ClassLabel(num_classes=3)([3])
    with pytest.raises(ValueError, match="not a class index"):
        ClassLabel()(0.5)
    with pytest.raises(ValueError, match="not a class index"):
        ClassLabel()("benign")
    with pytest.raises(InputError, match="case c1: label: expected one class index"):
        ClassLabeld("label")({"id": "c1", "label": [0, 1]})
    with pytest.raises(InputError, match="case c2: no label"):
        ClassLabeld("label")({"id": "c2", "label": None})
