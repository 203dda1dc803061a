"""Issue #13, classes 5 and 6: values medvit used to drop, invent or crash on are one-line errors naming the
file or option (exit 2): RGB24 and complex NIfTI, a zero voxel size with no transform, a degenerate affine,
a NaN rescale slope, non-finite --spacing; dangling links, loops and pipes inside a DICOM folder are skipped."""

from __future__ import annotations

import os
import shutil
import struct

import nibabel as nib
import numpy as np
import pytest
from hostile_checks import one_line_exit_2
from pydicom import dcmread
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from medvit.cli import app


def _invoke(*args):
    return CliRunner().invoke(app, list(map(str, args)))


def _nifti(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def _patch(path, fmt, offset, *values):
    raw = bytearray(path.read_bytes())
    struct.pack_into(fmt, raw, offset, *values)
    path.write_bytes(bytes(raw))
    return path


def test_rgb24_nifti(tmp_path):
    rgb = np.zeros((8, 8, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    one_line_exit_2(_invoke("info", _nifti(tmp_path / "rgb.nii.gz", rgb)), "rgb.nii.gz", "RGB")


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_nifti(tmp_path, dtype):
    path = _nifti(tmp_path / "c.nii.gz", np.ones((8, 8, 4), dtype))
    one_line_exit_2(_invoke("info", path), "c.nii.gz", "complex voxels")


def test_zero_voxel_size_without_a_transform_is_not_turned_into_1_mm(tmp_path):
    path = _nifti(tmp_path / "z.nii", np.ones((8, 8, 4), np.int16))
    _patch(path, "<3f", 80, 0.0, 0.0, 0.0)  # pixdim[1:4]
    _patch(path, "<hh", 252, 0, 0)  # qform_code, sform_code: no transform
    one_line_exit_2(_invoke("info", path), "z.nii", "voxel size", "does not invent a spacing")


def test_zero_voxel_size_beside_a_valid_sform_is_fine(tmp_path):
    path = _nifti(tmp_path / "s.nii", np.ones((8, 8, 4), np.int16), np.diag([0.8, 0.8, 2.0, 1.0]))
    _patch(path, "<3f", 80, 0.0, 0.0, 0.0)  # the sform gives the grid
    assert _invoke("info", path).exit_code == 0


@pytest.mark.parametrize("values", [[0.0] * 12, [float("nan")] * 12])
def test_degenerate_or_non_finite_affine(tmp_path, values):
    path = _nifti(tmp_path / "d.nii", np.ones((8, 8, 4), np.int16))
    _patch(path, "<12f", 280, *values)  # srow_x, srow_y, srow_z
    one_line_exit_2(_invoke("info", path), "d.nii", "affine")


@pytest.mark.parametrize("slope", ["NaN", "inf"])
def test_dicom_rescale_slope_not_finite(tmp_path, slope):
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.RescaleSlope = slope
    ds.save_as(tmp_path / "ct.dcm")
    one_line_exit_2(_invoke("info", tmp_path / "ct.dcm"), "ct.dcm", "not a finite number")


@pytest.mark.parametrize("spacing", ["nan,nan,nan", "inf,1,1", "1,-1,1", "0,1,1", "1,1"])
def test_spacing_option_must_be_finite_and_positive(tmp_path, spacing):
    ct = tmp_path / "ct.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), ct)
    if spacing == "1,1":  # two values are fine for 2D; the option is then used
        assert _invoke("info", ct, "--spacing", spacing).exit_code == 0
        return
    one_line_exit_2(_invoke("convert", ct, tmp_path / "o.nii.gz", "--spacing", spacing), "--spacing")
    assert not (tmp_path / "o.nii.gz").exists()


def test_dicom_folder_with_loops_dangling_links_and_a_pipe(tmp_path):
    folder = tmp_path / "study"
    folder.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    (folder / "self").symlink_to(folder)  # a loop
    (folder / "dangling.dcm").symlink_to(tmp_path / "nowhere.dcm")
    os.mkfifo(folder / "pipe.dcm")  # opening it would block
    result = _invoke("info", folder)
    assert result.exit_code == 0, result.output
    assert "rows=128" in result.output


def test_predict_refuses_a_series_with_a_gap_and_records_a_resampling_it_was_asked_for(tmp_path, uneven_series):
    import json

    import nibabel as nib
    from packages import make_package

    package = make_package(tmp_path / "pkg", "seg3d")
    out = tmp_path / "out"
    refused = _invoke("predict", "-m", package, "-i", uneven_series, "-o", out)
    one_line_exit_2(refused, "202.5 mm step", "--resample-uneven")
    assert not out.exists()
    done = _invoke("predict", "-m", package, "-i", uneven_series, "-o", out, "--resample-uneven")
    assert done.exit_code == 0, done.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["resample_uneven"] is True
    resampled = manifest["cases"][0]["description"]["series"]["resampled"]
    assert resampled == {"from_slices": 4, "to_slices": 165, "step_mm": 1.25, "largest_gap_mm": 202.5}
    mask = nib.load(next(out.glob("*.nii.gz")))
    assert mask.shape == (16, 16, 165)
