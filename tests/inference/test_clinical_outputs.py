"""``medvit predict`` with the clinical outputs: RTSTRUCT and previews from a real DICOM CT series next to the
NIfTI mask, statistics in ``<case>.json`` and ``statistics.csv``, the 2D palette PNG and preview; RTSTRUCT for an
input that is not DICOM refused in one line before any work; no patient identifier in what is not DICOM."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from medvit.cli import app
from medvit.errors import ConfigError
from medvit.inference.outputs import parse_output_types
from medvit.io.palette import label_colour

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_output_types_of_a_segmentation():
    assert parse_output_types("preview,rtstruct,nifti", task="segmentation", spatial_dims=3) == [
        "nifti",
        "rtstruct",
        "preview",
        "json",
    ]
    assert parse_output_types("png,preview", task="segmentation", spatial_dims=2) == ["png", "preview", "json"]
    with pytest.raises(ConfigError, match="--output-type preview: a classification model writes json only"):
        parse_output_types("preview", task="classification", spatial_dims=2)


def test_dicom_ct_to_rtstruct_preview_and_statistics(tmp_path, ct_series, bright_package):
    import nibabel as nib
    import pydicom
    from PIL import Image

    out = tmp_path / "out"
    package = bright_package(0.5)
    result = run("predict", "-i", ct_series, "-o", out, "-m", package, "--precision", "32",
                 "--output-type", "nifti,rtstruct,preview", "--deidentify")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "CT5N_rtstruct.dcm, CT5N_preview.png, CT5N.json" in result.stdout
    mask = np.asarray(nib.load(out / "CT5N.nii.gz").dataobj)
    assert 0 < mask.sum() < mask.size

    rt = pydicom.dcmread(out / "CT5N_rtstruct.dcm")
    first = pydicom.dcmread(next(ct_series.iterdir()), stop_before_pixels=True)
    assert [r.ROIName for r in rt.StructureSetROISequence] == ["bright"]
    assert tuple(rt.ROIContourSequence[0].ROIDisplayColor) == label_colour(1)
    slices_with_mask = int(mask.any(axis=(0, 1)).sum())
    contoured = {
        c.ContourImageSequence[0].ReferencedSOPInstanceUID for c in rt.ROIContourSequence[0].ContourSequence
    }
    assert len(contoured) == slices_with_mask
    assert rt.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == first.FrameOfReferenceUID
    assert rt.PatientName == "Anonymous" and rt.PatientIdentityRemoved == "YES"  # --deidentify

    with Image.open(out / "CT5N_preview.png") as img:
        assert img.mode == "RGB" and img.width > 300
        shown = np.asarray(img)
    assert np.any(np.all(np.abs(shown.astype(int) - label_colour(1)) <= 1, axis=-1))  # the outline is drawn

    sidecar = json.loads((out / "CT5N.json").read_text())
    (stats,) = sidecar["statistics"]["labels"]
    assert stats["voxels"] == int(mask.sum()) and stats["min"] > 0  # HU > 0, in HU
    assert sidecar["statistics"]["intensity_unit"] == "HU"
    with open(out / "statistics.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["case"] == "CT5N" and int(row["voxels"]) == stats["voxels"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cases"][0]["outputs"] == ["CT5N.nii.gz", "CT5N_rtstruct.dcm", "CT5N_preview.png", "CT5N.json"]

    texts = [result.output, (out / "statistics.csv").read_text(), json.dumps(sidecar), json.dumps(manifest)]
    for value in (str(first.PatientName), str(first.PatientID), "Doe", first.StudyInstanceUID):
        assert all(value not in text for text in texts), value
    assert b"Doe" not in (out / "CT5N_rtstruct.dcm").read_bytes()


def test_rtstruct_needs_a_dicom_input(tmp_path, bright_package, nibabel_files):
    out = tmp_path / "out"
    result = run("predict", "-i", nibabel_files / "anatomical.nii", "-o", out, "-m", bright_package(100.0),
                 "--output-type", "rtstruct")  # fmt: skip
    assert result.exit_code == 2
    assert (
        "--output-type rtstruct: " in result.output
        and "is not a DICOM input (RTSTRUCT needs one)" in result.output
    )
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not out.exists()


def test_2d_palette_png_and_preview(tmp_path, bright_package):
    from PIL import Image
    from skimage import data as skdata

    photo = skdata.camera()[::4, ::4]
    Image.fromarray(photo).save(tmp_path / "camera.png")
    out = tmp_path / "out"
    package = bright_package(128.0, dims=2, resize=[32, 32])
    result = run(
        "predict", "-i", tmp_path / "camera.png", "-o", out, "-m", package, "--output-type", "png,preview"
    )
    assert result.exit_code == 0, result.output
    with Image.open(out / "camera.png") as img:
        assert img.mode == "P"
        mask = np.asarray(img)
        shown = np.asarray(img.convert("RGB"))
    assert set(np.unique(mask)) == {0, 1}
    assert np.all(shown[mask == 1] == label_colour(1)) and np.all(shown[mask == 0] == 0)
    with Image.open(out / "camera_preview.png") as img:
        preview = np.asarray(img).astype(int)
    gap = 8
    panel = preview[gap : gap + 128, gap : gap + 128]
    grey = np.repeat(photo[..., None], 3, -1).astype(int)
    np.testing.assert_array_equal(panel[mask == 0], grey[mask == 0])  # the photograph, where nothing was found
    assert np.all(np.abs(panel[mask == 1] - grey[mask == 1]).max(-1) > 0)  # coloured where something was
