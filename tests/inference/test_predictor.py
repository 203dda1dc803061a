"""Predictor on real files (nibabel's NIfTI volumes, pydicom's CT series and slices) and on arrays, with the
hand-set threshold packages of conftest.py: the mask lands on the input grid, where the bright region is in
the world, as an independent reader (nibabel, SimpleITK) sees it."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from medvit import Predictor
from medvit.device import resolve_device, resolve_precision
from medvit.errors import ConfigError, InputError, MedvitWarning

OBLIQUE = np.array(
    [[0.96, -0.17, 0.22, -20.0], [0.2, 0.97, -0.1, 15.0], [-0.19, 0.14, 1.2, -8.0], [0.0, 0.0, 0.0, 1.0]]
)
LPS = np.diag([-1.1, -0.9, 1.3, 1.0]) + np.array([[0, 0, 0, 30.0], [0, 0, 0, 25.0], [0, 0, 0, -20.0], [0] * 4])


def _ball(shape, affine, centre, radius):
    import nibabel as nib

    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    world = nib.affines.apply_affine(affine, ijk)
    return np.linalg.norm(world - np.asarray(centre), axis=-1) <= radius


def _dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def test_real_las_nifti_mask_is_the_threshold_exactly(nibabel_files, bright_package):
    """nibabel's anatomical.nii (LAS, 2 mm): reoriented to RAS for the model and back, voxel for voxel."""
    import nibabel as nib

    ref = nib.load(str(nibabel_files / "anatomical.nii"))
    data = np.asarray(ref.dataobj)
    pred = Predictor(bright_package(9000.5, window=(0.0, 30000.0)), precision="32").predict(
        nibabel_files / "anatomical.nii"
    )
    assert pred.mask.shape == data.shape and pred.mask.dtype == np.uint8
    np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-6)
    np.testing.assert_array_equal(pred.mask, data > 9000.5)
    assert 0.2 < pred.mask.mean() < 0.8
    assert pred.volumes_ml["bright"] == pytest.approx(pred.mask.sum() * 8 / 1000)  # 2 mm isotropic voxels


def test_real_oblique_nifti_mask_is_the_threshold_exactly(nibabel_files, bright_package, tmp_path):
    """The first volume of nibabel's example4d.nii.gz (an oblique grid, as written by the scanner)."""
    import nibabel as nib

    src = nib.load(str(nibabel_files / "example4d.nii.gz"))
    data = np.asarray(src.dataobj)[..., 0]
    nib.save(nib.Nifti1Image(data, src.affine, src.header), tmp_path / "oblique.nii.gz")
    assert abs(src.affine[1, 2]) > 0.1  # oblique: voxel axes are not world axes
    threshold = float(np.percentile(data[data > 0], 50)) + 0.5
    pred = Predictor(bright_package(threshold, window=(0.0, 4000.0)), precision="32").predict(
        tmp_path / "oblique.nii.gz"
    )
    np.testing.assert_allclose(pred.affine, nib.load(tmp_path / "oblique.nii.gz").affine, atol=1e-5)
    np.testing.assert_array_equal(pred.mask, data > threshold)


def test_real_dicom_series_against_simpleitk(ct_series, bright_package, sitk_affine):
    """pydicom's CT series: the mask is the thresholded series as SimpleITK reads it, on SimpleITK's grid."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(ct_series)))
    ref = reader.Execute()
    hu = np.transpose(sitk.GetArrayFromImage(ref), (2, 1, 0))  # [z, y, x] -> [i, j, k]
    pred = Predictor(bright_package(-41.5), precision="32").predict(ct_series)
    np.testing.assert_allclose(pred.affine, sitk_affine(ref), atol=1e-4)
    np.testing.assert_array_equal(pred.mask, hu > -41.5)
    assert pred.input["modality"] == "CT" and pred.input["shape"] == [1, 16, 16, 5]


@pytest.mark.parametrize("affine", [LPS, OBLIQUE], ids=["lps", "oblique"])
def test_resampled_mask_lands_where_the_bright_region_is(tmp_path, bright_package, affine):
    """A bright ball on an LPS or oblique grid, resampled to 1.5 x 1.2 x 1.7 mm RAS for the model and back:
    the mask covers the ball (Dice) and its centre is the ball's centre in world millimetres (nibabel)."""
    import nibabel as nib

    shape, centre = (40, 44, 30), nib.affines.apply_affine(affine, [21.0, 20.0, 14.0])
    ball = _ball(shape, affine, centre, 9.0)
    nib.save(nib.Nifti1Image(np.where(ball, 300, -50).astype(np.int16), affine), tmp_path / "ball.nii.gz")
    pred = Predictor(bright_package(100.0, spacing=[1.5, 1.2, 1.7]), precision="32").predict(
        tmp_path / "ball.nii.gz"
    )
    assert pred.mask.shape == shape
    np.testing.assert_allclose(pred.affine, affine, atol=1e-6)
    assert _dice(pred.mask, ball) > 0.93
    found = nib.affines.apply_affine(affine, np.argwhere(pred.mask == 1).mean(0))
    assert np.linalg.norm(found - centre) < 0.5
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000
    assert pred.volumes_ml["bright"] == pytest.approx(ball.sum() * voxel_ml, rel=0.1)


def test_bf16_and_tta_give_the_same_threshold_mask(ct_series, bright_package):
    package = bright_package(-41.5, spacing=[0.6, 0.6, 2.0])
    fp32 = Predictor(package, precision="32").predict(ct_series)
    bf16 = Predictor(package, precision="bf16", tta=True, batch_size=3).predict(ct_series)
    assert bf16.mask.sum() > 0
    assert _dice(fp32.mask, bf16.mask) > 0.99


def test_2d_model_on_a_one_slice_dicom(pydicom_files, bright_package):
    """CT_small.dcm is a 128x128x1 grid: a 2D model predicts it and the mask keeps the third axis."""
    from medvit.io import read_image

    image = read_image(pydicom_files / "CT_small.dcm")
    package = bright_package(51.5, dims=2, mode="sliding_window", roi=[16, 16])
    pred = Predictor(package, precision="32").predict(pydicom_files / "CT_small.dcm")
    assert pred.mask.shape == (128, 128, 1)
    np.testing.assert_array_equal(pred.mask, np.asarray(image[0]) > 51.5)
    assert pred.volumes_ml is not None  # a DICOM slice has a real voxel size


def test_empty_prediction(ct_series, bright_package):
    pred = Predictor(bright_package(5000.0)).predict(ct_series)
    assert not pred.mask.any() and pred.volumes_ml == {"bright": 0.0}


def test_numpy_and_tensor_inputs_without_files(bright_package):
    """The array path the MLflow pyfunc uses: channel-first arrays, identity or given affine, no files."""
    package = bright_package(100.5)  # no resampling: the mask is the threshold exactly
    volume = np.full((1, 20, 18, 12), -50.0, np.float32)
    volume[0, 5:12, 4:10, 3:9] = 300
    predictor = Predictor(package, precision="32")
    pred = predictor.predict(volume)
    np.testing.assert_array_equal(pred.mask, volume[0] > 100)
    assert pred.volumes_ml is None and pred.input["format"] == "array"  # no spacing: no volumes
    pred = predictor.predict(torch.from_numpy(volume[0]), spacing=(1.0, 1.0, 2.0))  # [*S] gets a channel
    np.testing.assert_array_equal(pred.mask, volume[0] > 100)
    assert pred.volumes_ml["bright"] == pytest.approx(7 * 6 * 6 * 2 / 1000)
    with pytest.raises(InputError, match=r"array of shape \(2, 1, 20, 18, 12\): expected \[C, I, J, K\] for a 3D"):
        predictor.predict(volume[None].repeat(2, 0))


def test_2d_array_with_a_3x3_affine(bright_package):
    package = bright_package(128.0, dims=2, resize=[32, 32])
    image = np.zeros((1, 40, 50), np.float32)
    image[0, 10:30, 20:45] = 255
    pred = Predictor(package).predict(image, affine=np.diag([0.5, 0.5, 1.0]))
    assert pred.mask.shape == (40, 50)
    assert _dice(pred.mask, image[0] > 128) > 0.95
    np.testing.assert_allclose(pred.affine, np.diag([0.5, 0.5, 1.0, 1.0]))


def test_classification(tmp_path):
    from packages import make_package

    pred = Predictor(make_package(tmp_path / "cls", "cls2d")).predict(np.random.rand(3, 40, 50) * 255)
    assert pred.task == "classification" and pred.mask is None
    assert pred.class_probabilities.shape == (3,) and pred.class_probabilities.sum() == pytest.approx(1, abs=1e-5)
    assert list(pred.class_scores()) == ["none", "mild", "severe"]


def test_unet_package_sliding_window_grid(tmp_path, nibabel_files):
    """The tiny UNETR package (roi 32^3 at 1.5 x 1.5 x 2 mm) on a real NIfTI: labels from its map, input grid."""
    from packages import make_package

    pred = Predictor(make_package(tmp_path / "seg", "seg3d")).predict(nibabel_files / "anatomical.nii")
    assert pred.mask.shape == (33, 41, 25) and set(np.unique(pred.mask)) <= {0, 1, 2}
    assert set(pred.volumes_ml) == {"liver_like", "kidney_like"}
    assert set(pred.timing) == {"read_s", "preprocess_s", "infer_s", "invert_s", "total_s"}


@pytest.mark.parametrize(
    "case,message",
    [
        ("2d_for_3d", r"a 2D image \(30x40\) for a 3D model \(bright3d\); give a 3D volume"),
        ("3d_for_2d", r"a 3D volume \(10x10x4\) for a 2D model \(bright2d\); give a 2D image"),
        ("channels", r"image has 2 channel\(s\); the model \(bright3d\) takes 1"),
    ],
)
def test_wrong_input_for_the_model(bright_package, case, message):
    from medvit.inference.predictor import array_image

    if case == "2d_for_3d":
        predictor, image = Predictor(bright_package()), array_image(np.zeros((1, 30, 40)), 2)
    elif case == "3d_for_2d":
        predictor, image = (
            Predictor(bright_package(dims=2, resize=[8, 8])),
            array_image(np.zeros((1, 10, 10, 4)), 3),
        )
    else:
        predictor, image = Predictor(bright_package()), np.zeros((2, 10, 10, 10))
    with pytest.raises(InputError, match=message):
        predictor.predict(image)


def test_registry_uri(tmp_path, monkeypatch, bright_package):
    import types

    package = bright_package()
    fake = types.ModuleType("medvit.registry")
    fake.resolve_model_uri = lambda uri: (package, {"version": 7, "name": "bright", "alias": "prod"})
    monkeypatch.setitem(sys.modules, "medvit.registry", fake)
    predictor = Predictor("models:/bright@prod")
    assert predictor.source["uri"] == "models:/bright@prod" and predictor.source["version"] == "7"
    assert predictor.source["alias"] == "prod" and predictor.source["registered_name"] == "bright"

    monkeypatch.setitem(sys.modules, "medvit.registry", None)  # as before the registry issue landed
    with pytest.raises(InputError, match=r"^models:/bright@prod: cannot resolve a registry URI \(medvit.registry"):
        Predictor("models:/bright@prod")


def test_bad_options(bright_package, tmp_path):
    package = bright_package()
    with pytest.raises(ConfigError, match="--overlap 1.0: must be at least 0 and below 1"):
        Predictor(package, overlap=1.0)
    with pytest.raises(ConfigError, match="--batch-size 0"):
        Predictor(package, batch_size=0)
    with pytest.raises(ConfigError, match="--precision 'fp8'"):
        Predictor(package, precision="fp8")
    with pytest.raises(ConfigError, match="--device 'tpu'"):
        Predictor(package, device="tpu")
    with pytest.raises(InputError, match="no such model package"):
        Predictor(tmp_path / "nothing")
    with pytest.warns(MedvitWarning, match="allows no TTA axes"):
        Predictor(bright_package(tta_axes=[]), tta=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_device_and_precision_resolution():
    device, note = resolve_device("auto")
    assert device.type == "cpu" and note == "no CUDA device: predicting on CPU"
    assert resolve_device("cpu") == (torch.device("cpu"), None)
    with pytest.raises(ConfigError, match="--device cuda: no CUDA device is available"):
        resolve_device("cuda")
    assert resolve_precision("32", device) is None and resolve_precision("bf16", device) is torch.bfloat16


@pytest.mark.gpu
def test_cuda_equals_cpu(ct_series, bright_package):
    package = bright_package(-41.5, spacing=[0.6, 0.6, 2.0])
    cpu = Predictor(package, device="cpu", precision="32").predict(ct_series)
    gpu = Predictor(package, device="cuda", precision="auto").predict(ct_series)
    assert _dice(cpu.mask, gpu.mask) > 0.99
