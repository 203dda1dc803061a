"""NIfTI reading and writing: nibabel's real volumes, round trips in RAS, LPS and oblique grids."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from medvit.errors import GeometryError, InputError
from medvit.io import read_image, write_nifti


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


AFFINES = {
    "ras": np.array([[0.9, 0, 0, -80.0], [0, 1.1, 0, -120.0], [0, 0, 2.5, -60.0], [0, 0, 0, 1]]),
    "lps": np.array([[-0.7, 0, 0, 90.0], [0, -0.7, 0, 110.0], [0, 0, 3.0, -40.0], [0, 0, 0, 1]]),
    "oblique": np.vstack(
        [np.hstack([_rotation(0.2, -0.35, 0.5) * [0.8, 0.9, 2.0], [[12.5], [-30.25], [7.0]]]), [0, 0, 0, 1]]
    ),
}


@pytest.mark.parametrize("name", ["anatomical.nii", "standard.nii.gz", "functional.nii", "example_nifti2.nii.gz"])
def test_real_nifti_matches_nibabel(nibabel_files, name):
    import nibabel as nib

    ref = nib.load(str(nibabel_files / name))
    img = read_image(nibabel_files / name)
    data = np.asanyarray(ref.dataobj)
    expected = data[None] if data.ndim == 3 else np.moveaxis(data, -1, 0)
    assert tuple(img.shape) == expected.shape
    np.testing.assert_array_equal(img.numpy(), expected)
    np.testing.assert_allclose(np.asarray(img.affine), ref.affine)
    assert img.meta["format"] == ("nifti2" if "nifti2" in name else "nifti1")


def test_4d_becomes_channels(nibabel_files):
    img = read_image(nibabel_files / "example4d.nii.gz")
    assert img.shape[0] == 2 and img.ndim == 4  # two time points -> two channels


@pytest.mark.parametrize("orientation", sorted(AFFINES))
def test_round_trip_keeps_affine_shape_and_data(tmp_path, nibabel_files, orientation):
    import nibabel as nib

    data = np.asanyarray(nib.load(str(nibabel_files / "anatomical.nii")).dataobj).astype(np.int16)
    affine = AFFINES[orientation]
    src = tmp_path / f"{orientation}.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(src))

    img = read_image(src)
    out = write_nifti(img, tmp_path / "out" / "copy.nii.gz")
    back = nib.load(str(out))
    assert back.shape == data.shape
    np.testing.assert_allclose(back.affine, nib.load(str(src)).affine, atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), data)
    assert back.get_data_dtype() == np.int16


def test_round_trip_4d(tmp_path, nibabel_files):
    import nibabel as nib

    src = nibabel_files / "example4d.nii.gz"
    out = write_nifti(read_image(src), tmp_path / "copy.nii.gz")
    ref, back = nib.load(str(src)), nib.load(str(out))
    assert back.shape == ref.shape
    np.testing.assert_allclose(back.affine, ref.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), np.asanyarray(ref.dataobj))


def test_sheared_affine_is_kept_in_the_sform(tmp_path):
    import nibabel as nib

    affine = np.array([[0.5, 0, 0, 0], [0, 0.5, 0.4, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]])  # gantry tilt
    out = write_nifti(np.zeros((4, 5, 6), np.uint8), tmp_path / "tilt.nii.gz", affine=affine)
    back = nib.load(str(out))
    np.testing.assert_allclose(back.affine, affine, atol=1e-6)
    assert int(back.header["qform_code"]) == 0 and int(back.header["sform_code"]) == 1


def test_dicom_converted_to_nifti_sits_where_simpleitk_puts_the_series(ct_series, tmp_path, sitk_affine):
    import nibabel as nib
    import SimpleITK as sitk

    out = write_nifti(read_image(ct_series), tmp_path / "ct.nii.gz")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(ct_series)))
    ref = reader.Execute()
    back = nib.load(str(out))
    np.testing.assert_allclose(back.affine, sitk_affine(ref), atol=1e-4)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), sitk.GetArrayFromImage(ref).transpose(2, 1, 0))
    # and SimpleITK reading our NIfTI agrees with SimpleITK reading the DICOM
    again = sitk.ReadImage(str(out))
    np.testing.assert_allclose(again.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(again.GetDirection(), ref.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(again.GetSpacing(), ref.GetSpacing(), atol=1e-5)


# -------------------------------------------------------------------------------------------- bad input


def test_hdr_without_img(tmp_path, nibabel_files):
    shutil.copy(nibabel_files / "analyze.hdr", tmp_path / "scan.hdr")
    with pytest.raises(InputError, match=r"scan\.hdr: header/image pair is incomplete: scan\.img is missing"):
        read_image(tmp_path / "scan.hdr")


@pytest.mark.parametrize(
    "source, name, message",
    [
        ("anatomical.nii", "cut.nii", r"cut\.nii: .*(truncated|corrupt|readable)"),
        ("example4d.nii.gz", "cut.nii.gz", r"cut\.nii\.gz: "),
    ],
)
def test_truncated_nifti(tmp_path, nibabel_files, source, name, message):
    data = (nibabel_files / source).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=message):
        read_image(path)


def test_garbage_named_nifti(tmp_path):
    path = tmp_path / "fake.nii.gz"
    path.write_bytes(b"this is not gzip at all" * 30)
    with pytest.raises(InputError, match=r"fake\.nii\.gz: not a readable NIfTI"):
        read_image(path)


def test_write_refuses_wrong_name_and_missing_affine(tmp_path):
    with pytest.raises(InputError, match=r"out\.nrrd: NIfTI output needs a \.nii or \.nii\.gz name"):
        write_nifti(np.zeros((2, 2, 2)), tmp_path / "out.nrrd", affine=np.eye(4))
    with pytest.raises(InputError, match="no affine given"):
        write_nifti(np.zeros((2, 2, 2)), tmp_path / "out.nii.gz")
    with pytest.raises(GeometryError, match="degenerate"):
        write_nifti(np.zeros((2, 2, 2)), tmp_path / "out.nii.gz", affine=np.zeros((4, 4)))
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import nibabel as nib

    def broken_save(img, name):
        with open(name, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_nifti(np.zeros((2, 2, 2)), tmp_path / "out.nii.gz", affine=np.eye(4))
    assert list(tmp_path.iterdir()) == []


def test_failed_grid_check_leaves_nothing(tmp_path, monkeypatch):
    import medvit.io.nifti as nifti_mod

    monkeypatch.setattr(nifti_mod, "same_grid", lambda *a, **k: False)
    with pytest.raises(GeometryError, match="written grid differs from the input grid"):
        write_nifti(np.zeros((2, 2, 2)), tmp_path / "out.nii.gz", affine=np.eye(4))
    assert list(tmp_path.iterdir()) == []
