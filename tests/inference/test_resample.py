"""Back to the input grid: the slab-wise axis-by-axis resampling equals MONAI's ``Invertd`` of the package's
preprocessing (oblique, LPS and 2D-resized inputs), and ``grid_sample`` gives the same values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvit.inference.resample import _grid_sample_slabs, index_map, labels_on_grid, resample_slabs


def _invert_with_monai(image, spec, k=3):
    from monai.data import MetaTensor
    from monai.transforms import Compose, Invertd

    from medvit.transforms import preprocess_transforms

    transform = Compose(preprocess_transforms(spec))
    pre = transform({"image": image})["image"]
    g = torch.Generator().manual_seed(0)
    probs = torch.rand((k, *pre.shape[1:]), generator=g).softmax(0)
    pred = MetaTensor(probs.clone(), meta=dict(pre.meta))
    pred.applied_operations = list(pre.applied_operations)
    inverse = Invertd("pred", transform=transform, orig_keys="image", nearest_interp=False)
    back = inverse({"pred": pred, "image": pre})["pred"]
    return pre, probs, np.asarray(back)


def _spec(**kw):
    from medvit.transforms.preprocess import PreprocessSpec

    return PreprocessSpec.model_validate(kw)


@pytest.mark.parametrize("name", ["anatomical.nii", "example4d.nii.gz"])  # LAS 2 mm; oblique
def test_equals_monai_invertd_3d(nibabel_files, name):
    from medvit.io import read_image

    image = read_image(nibabel_files / name)[:1]
    spec = _spec(spatial_dims=3, orientation="RAS", spacing=[1.5, 1.7, 2.2])
    pre, probs, expected = _invert_with_monai(image, spec)
    t = index_map(np.asarray(pre.affine), np.asarray(image.affine), 3)
    mask, kept = labels_on_grid(probs, t, image.shape[1:], values=[0, 1, 2], keep_probabilities=True)
    assert kept.shape == expected.shape == (3, *image.shape[1:])
    np.testing.assert_allclose(kept, expected, atol=1e-5)
    np.testing.assert_array_equal(mask, expected.argmax(0))
    slabs = np.concatenate([s.numpy() for _, _, s in _grid_sample_slabs(probs, t, image.shape[1:], 5)], axis=1)
    np.testing.assert_allclose(slabs, kept, atol=1e-5)


def test_equals_monai_invertd_2d_resize(tmp_path):
    from medvit.io import read_image

    rng = np.random.default_rng(0)
    from PIL import Image

    Image.fromarray(rng.integers(0, 255, (50, 77, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    image = read_image(tmp_path / "x.png")
    pre, probs, expected = _invert_with_monai(image, _spec(spatial_dims=2, in_channels=3, resize=[32, 32]))
    t = index_map(np.asarray(pre.affine), np.asarray(image.affine), 2)
    _, kept = labels_on_grid(probs, t, image.shape[1:], values=[0, 1, 2], keep_probabilities=True)
    np.testing.assert_allclose(kept, expected, atol=1e-5)


def test_identity_and_slabs():
    probs = torch.rand(2, 30, 4, 5)
    slabs = list(resample_slabs(probs, np.eye(4), (30, 4, 5), slab_bytes=2 * 4 * 5 * 4 * 7))
    assert [(a, b) for a, b, _ in slabs] == [(0, 7), (7, 14), (14, 21), (21, 28), (28, 30)]
    torch.testing.assert_close(torch.cat([s for _, _, s in slabs], 1), probs)


def test_label_values_from_the_label_map():
    probs = torch.zeros(3, 2, 2)
    probs[0, 0, 0] = probs[1, 0, 1] = probs[2, 1, :] = 1
    mask, kept = labels_on_grid(probs, np.eye(3), (2, 2), values=[0, 7, 300])
    assert kept is None and mask.dtype == np.uint16
    np.testing.assert_array_equal(mask, [[0, 7], [300, 300]])
    mask, _ = labels_on_grid(probs, np.eye(3), (2, 2), values=[0, 1, 2])
    assert mask.dtype == np.uint8
