"""The command line: version, info, convert; bad input gives one line, exit code 2 and no output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from typer.testing import CliRunner

from medvit.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_help_imports_nothing_heavy():
    code = (
        "import sys, medvit.cli; heavy = [m for m in ('torch', 'monai', 'pydicom', 'nibabel', 'SimpleITK', "
        "'mlflow', 'lightning') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    result = run("--help")
    assert result.exit_code == 0
    for command in ("version", "info", "convert"):
        assert command in result.stdout


def test_version():
    result = run("version")
    assert result.exit_code == 0
    for name in ("medvit", "torch", "monai", "lightning", "mlflow", "cuda"):
        assert name in result.stdout


def test_info_dicom_series_text_and_json(ct_series):
    from medvit.io import read_image

    text = run("info", ct_series)
    assert text.exit_code == 0, text.output
    for key in ("format: dicom", "shape: [1, 16, 16, 5]", "spacing:", "origin:", "direction:", "affine:", "CT"):
        assert key in text.stdout
    data = json.loads(run("info", ct_series, "--json").stdout)
    np.testing.assert_allclose(data["affine"], np.asarray(read_image(ct_series).affine), atol=1e-5)
    assert data["modality"] == "CT" and data["series"]["num_slices"] == 5
    assert len(data["series_list"]) == 1


def test_info_lists_several_series(pydicom_files):
    result = run("info", pydicom_files / "dicomdirtests" / "98892001")
    assert result.exit_code == 0
    assert "SmartScore" not in result.stdout and "CT 5 slice(s)" in result.stdout  # free text stays out
    assert "pass --series UID" in result.stdout
    shown = run("info", pydicom_files / "dicomdirtests" / "98892001", "--show-descriptions")
    assert "SmartScore - Gated 0.5 sec' CT 5 slice(s)" in shown.stdout


def test_convert_dicom_folder_and_zip(ct_series, tmp_path):
    import nibabel as nib

    from medvit.io import read_image

    result = run("convert", ct_series, tmp_path / "ct.nii.gz")
    assert result.exit_code == 0, result.output
    ref = read_image(ct_series)
    back = nib.load(str(tmp_path / "ct.nii.gz"))
    np.testing.assert_allclose(back.affine, np.asarray(ref.affine), atol=1e-4)

    archive = tmp_path / "exam.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in ct_series.iterdir():
            zf.write(f, f"DICOM/{f.name}")
    uid = "1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.6"
    result = run("convert", archive, tmp_path / "z.nii.gz", "--series", uid[:-3])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(tmp_path / "z.nii.gz")).dataobj), ref[0].numpy())


def test_convert_missing_spacing_with_explicit_spacing(ct_series, tmp_path):
    import pydicom

    folder = tmp_path / "s"
    shutil.copytree(ct_series, folder)
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        del ds.PixelSpacing
        ds.save_as(f)
    result = run("convert", folder, tmp_path / "out" / "a.nii.gz")
    assert result.exit_code == 2
    assert "has no PixelSpacing" in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    result = run("convert", folder, tmp_path / "out" / "a.nii.gz", "--spacing", "0.5,0.5")
    assert result.exit_code == 0, result.output


# -------------------------------------------------------------------------------------------- bad input


def _bad_inputs(tmp_path, pydicom_files, nibabel_files):
    (tmp_path / "empty.dcm").touch()
    (tmp_path / "notes.txt").write_text("not an image\n" * 10)
    shutil.copy(nibabel_files / "analyze.hdr", tmp_path / "scan.hdr")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "a.txt").write_text("x")
    return {
        "missing": (tmp_path / "absent.nii.gz", "no such file or directory"),
        "empty": (tmp_path / "empty.dcm", "empty file"),
        "not an image": (tmp_path / "notes.txt", "not a DICOM, NIfTI or 2D image file"),
        "truncated": (pydicom_files / "MR_truncated.dcm", "corrupt or truncated DICOM pixel data"),
        "no pixels": (pydicom_files / "rtplan.dcm", "has no pixel data"),
        "hdr without img": (tmp_path / "scan.hdr", "scan.img is missing"),
        "no images": (tmp_path / "nothing", "no readable images"),
        "several series": (pydicom_files / "dicomdirtests" / "98892001", "holds 3 series; pick one"),
        "mixed orientations": (pydicom_files / "dicomdirtests" / "98892003" / "MR700", "mixes 7 orientations"),
    }


BAD = [
    "missing",
    "empty",
    "not an image",
    "truncated",
    "no pixels",
    "hdr without img",
    "no images",
    "several series",
    "mixed orientations",
]


@pytest.mark.parametrize("case", BAD)
@pytest.mark.parametrize("command", ["info", "convert"])
def test_bad_input_one_line_exit_2_no_output(case, command, tmp_path, pydicom_files, nibabel_files):
    path, reason = _bad_inputs(tmp_path, pydicom_files, nibabel_files)[case]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = ["info", path] if command == "info" else ["convert", path, out_dir / "x.nii.gz"]
    result = run(*args)
    if command == "info" and case in ("several series", "mixed orientations"):
        assert result.exit_code == 0  # info lists the series (and sub-series #k) to choose from instead
        assert "pass --series UID" in result.stdout
        return
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and reason in lines[0] and path.name in lines[0]
    assert "Traceback" not in result.output
    assert list(out_dir.iterdir()) == []


def test_bad_options(ct_series, tmp_path):
    result = run("convert", ct_series, tmp_path / "x.mha")
    assert result.exit_code == 2 and "output must end in .nii.gz or .nii" in result.stderr
    result = run("convert", ct_series, tmp_path / "x.nii.gz", "--spacing", "a,b")
    assert result.exit_code == 2 and "--spacing 'a,b'" in result.stderr
    result = run("info", ct_series, "--series", "4.5.6")
    assert result.exit_code == 2 and "no series matches '4.5.6'" in result.stderr
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------- privacy


def test_no_patient_identifiers_anywhere(ct_series, tmp_path, caplog):
    import logging

    import pydicom

    caplog.set_level(logging.DEBUG)
    folder = tmp_path / "identified"
    shutil.copytree(ct_series, folder)
    secrets = ["Doe^Jane", "PID-778899", "19610101", "ACC-12345", "St Elsewhere Hospital", "Dr^Who"]
    for i, f in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(f)
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = secrets[0], secrets[1], secrets[2]
        ds.AccessionNumber, ds.InstitutionName, ds.ReferringPhysicianName = secrets[3], secrets[4], secrets[5]
        if i == 2:
            ds.ImagePositionPatient = [-72.2, -143.0, 3.2]  # uneven spacing: a warning is printed too
        ds.save_as(f)
    outputs = [run("info", folder), run("info", folder, "--json"), run("convert", folder, tmp_path / "o.nii.gz")]
    assert all(r.exit_code == 0 for r in outputs)
    assert "uneven slice spacing" in outputs[2].stderr
    blob = "".join(r.output for r in outputs) + caplog.text
    blob += (tmp_path / "o.nii.gz").read_bytes().decode("latin-1")
    import gzip

    blob += gzip.decompress((tmp_path / "o.nii.gz").read_bytes()).decode("latin-1")
    for secret in secrets:
        assert secret not in blob


@pytest.mark.gpu
def test_version_names_the_cuda_device():
    import torch

    result = run("version")
    assert result.exit_code == 0
    assert torch.cuda.get_device_name(torch.cuda.current_device()) in result.stdout
