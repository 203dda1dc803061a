"""Case discovery (names, folders, DICOM folders, zips) and the all-or-nothing writing of one case's outputs."""

from __future__ import annotations

import os
import shutil
import stat
import zipfile

import numpy as np
import pytest

from medvit.errors import ConfigError, GeometryError, InputError
from medvit.inference.cases import case_name, discover_cases
from medvit.inference.outputs import check_grid, parse_output_types


def test_case_names(tmp_path):
    assert case_name(tmp_path / "a.nii.gz") == "a" and case_name(tmp_path / "b.PNG") == "b"
    assert case_name(tmp_path / "scan.dcm") == "scan" and case_name(tmp_path / "study.zip") == "study"
    assert case_name(tmp_path / ".nii.gz") == ".nii.gz" and case_name(tmp_path / "CT5N") == "CT5N"


def test_folder_of_cases(tmp_path, ct_series, nibabel_files):
    (tmp_path / "a.nii.gz").write_bytes((nibabel_files / "example4d.nii.gz").read_bytes())
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "a_2.nii").write_bytes(b"x")
    (tmp_path / ".hidden.nii.gz").write_bytes(b"x")
    (tmp_path / "readme.txt").write_text("notes")
    shutil.copytree(ct_series, tmp_path / "series")
    (tmp_path / "emptydir").mkdir()
    with zipfile.ZipFile(tmp_path / "study.zip", "w") as zf:
        zf.write(next(ct_series.iterdir()), "one.dcm")
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.nii.gz").write_bytes(b"x")
    cases = discover_cases(tmp_path, exclude=[out])
    assert [(c.name, c.path.name, c.kind) for c in cases] == [
        ("a", "a.nii.gz", "nifti"),
        ("a_2", "a.png", "image2d"),
        ("a_2_2", "a_2.nii", "nifti"),
        ("series", "series", "dicom"),
        ("study", "study.zip", "dicom"),
    ]


def test_dicom_folder_is_one_case(ct_series, pydicom_files):
    (case,) = discover_cases(ct_series)
    assert (case.name, case.kind, case.path) == ("CT5N", "dicom", ct_series)
    study = pydicom_files / "dicomdirtests" / "98892001"
    assert [c.name for c in discover_cases(study)] == ["CT2N", "CT5N"]  # series subfolders: one case each
    assert [c.name for c in discover_cases(study, series="1.2.3")] == ["98892001"]  # --series: the folder
    (case,) = discover_cases(pydicom_files / "CT_small.dcm")
    assert case.kind == "dicom"


def test_discovery_errors(tmp_path):
    with pytest.raises(InputError, match="nope: no such file or directory"):
        discover_cases(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="no NIfTI, DICOM, 2D image or slide cases in this folder"):
        discover_cases(tmp_path)


def test_output_types():
    assert parse_output_types(None, task="segmentation", spatial_dims=3) == ["nifti", "json"]
    assert parse_output_types(None, task="segmentation", spatial_dims=2) == ["png", "json"]
    assert parse_output_types(None, task="classification", spatial_dims=2) == ["json"]
    assert parse_output_types(" DICOM-SEG , nifti", task="segmentation", spatial_dims=3) == [
        "nifti",
        "dicom-seg",
        "json",
    ]
    with pytest.raises(ConfigError, match="--output-type png: needs a 2D segmentation model"):
        parse_output_types("png", task="segmentation", spatial_dims=3)


def test_grid_check_after_writing(tmp_path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.uint8), np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "m.nii.gz")
    check_grid(tmp_path / "m.nii.gz", (4, 5, 6), np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(
        GeometryError, match=r"m\.nii\.gz: written grid \(shape \(4, 5, 6\)\) differs from the input"
    ):
        check_grid(tmp_path / "m.nii.gz", (4, 5, 6), np.diag([-2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(GeometryError, match="differs from the input grid"):
        check_grid(tmp_path / "m.nii.gz", (4, 5, 7), np.diag([2.0, 2.0, 2.0, 1.0]))


def test_a_failing_writer_leaves_no_output(tmp_path, ct_series, bright_package, monkeypatch):
    """The NIfTI is written, then DICOM-SEG fails: neither file, nor the staging folder, is left behind."""
    import medvit.io
    from medvit import Predictor
    from medvit.inference.outputs import write_outputs

    def broken(*args, **kwargs):
        raise InputError("case_seg.dcm: cannot build a DICOM-SEG for this input (simulated)")

    monkeypatch.setattr(medvit.io, "write_dicom_seg", broken)
    pred = Predictor(bright_package(-41.5)).predict(ct_series)
    out = tmp_path / "out"
    with pytest.raises(InputError, match="simulated"):
        write_outputs(pred, out, "case", ["nifti", "dicom-seg", "json"])
    assert list(out.iterdir()) == []
    written = write_outputs(pred, out, "case", ["nifti", "json"])
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written) == ["case.json", "case.nii.gz"]


def test_predict_outputs_are_readable_by_colleagues(tmp_path, ct_series, bright_package):
    """Under umask 022 every file ``predict`` writes (case outputs and manifest) is 0644, no staging is left."""
    from medvit import Predictor
    from medvit.inference.run import run_predict

    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        run_predict(Predictor(bright_package(-41.5)), ct_series, out, output_type="nifti,dicom-seg", echo=str)
    finally:
        os.umask(old)
    names = sorted(p.name for p in out.iterdir())
    assert "manifest.json" in names and any(n.endswith(".nii.gz") for n in names), names
    assert not [n for n in names if n.startswith(".")]
    assert {n: stat.S_IMODE((out / n).stat().st_mode) for n in names} == dict.fromkeys(names, 0o644)
