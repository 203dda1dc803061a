"""``medvit predict``: outputs on the input grid (NIfTI read back with nibabel), DICOM-SEG that highdicom opens
and that matches the NIfTI mask, PNG/JSON for 2D, the manifest, folders, skip-existing, and every bad input:
one line, exit code 2, no traceback and no output file."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medvit.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _no_files(folder):
    return not folder.exists() or not any(folder.rglob("*"))


def _ball_nifti(path, affine=None, shape=(24, 22, 16), value=300):
    import nibabel as nib

    affine = np.diag([-1.2, -1.0, 1.5, 1.0]) if affine is None else affine  # LPS, like DICOM exports
    data = np.full(shape, -50, np.int16)
    data[6:14, 5:15, 4:11] = value
    nib.save(nib.Nifti1Image(data, affine), path)
    return data


def test_nifti_in_nifti_out_on_the_input_grid(tmp_path, bright_package):
    import nibabel as nib

    data = _ball_nifti(tmp_path / "case1.nii.gz")
    out = tmp_path / "out"
    result = run(
        "predict", "-i", tmp_path / "case1.nii.gz", "-o", out, "-m", bright_package(100.5), "--precision", "32"
    )
    assert result.exit_code == 0, result.output
    assert "case1: bright 1.0 mL -> case1.nii.gz, case1.json" in result.stdout
    src, mask = nib.load(tmp_path / "case1.nii.gz"), nib.load(out / "case1.nii.gz")
    assert mask.shape == src.shape
    np.testing.assert_allclose(mask.affine, src.affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(mask.dataobj), data > 100)
    sidecar = json.loads((out / "case1.json").read_text())
    assert sidecar["labels"] == {"0": "background", "1": "bright"}
    assert sidecar["volumes_ml"]["bright"] == pytest.approx(8 * 10 * 7 * 1.8 / 1000)
    manifest = json.loads((out / "manifest.json").read_text())
    import medvit

    assert manifest["medvit_version"] == medvit.__version__
    assert manifest["model"]["sha256"] and manifest["model"]["version"] is None
    assert manifest["device"] == "cpu" and manifest["precision"] == "32"
    assert manifest["options"]["overlap"] == 0.5 and manifest["options"]["output_types"] == ["nifti", "json"]
    (case,) = manifest["cases"]
    assert case["status"] == "ok" and case["outputs"] == ["case1.nii.gz", "case1.json"]
    assert case["description"]["shape"] == [1, 24, 22, 16] and case["volumes_ml"] == sidecar["volumes_ml"]
    assert set(case["timing_s"]) >= {"read_s", "preprocess_s", "infer_s", "invert_s"}
    written = ["case1.json", "case1.nii.gz", "manifest.json", "statistics.csv"]
    assert sorted(p.name for p in out.iterdir()) == written


def test_dicom_series_to_nifti_and_dicom_seg(tmp_path, ct_series, bright_package):
    """DICOM-SEG opens with highdicom, references the source series, and its frames equal the NIfTI mask;
    no patient identifier of the source reaches any output."""
    import highdicom as hd
    import nibabel as nib
    import pydicom

    out = tmp_path / "out"
    package = bright_package(-41.5, spacing=[0.6, 0.6, 2.0])
    result = run("predict", "-i", ct_series, "-o", out, "-m", package, "--output-type", "nifti,dicom-seg")
    assert result.exit_code == 0, result.output
    mask = np.asarray(nib.load(out / "CT5N.nii.gz").dataobj)
    assert mask.shape == (16, 16, 5) and 0 < mask.sum() < mask.size

    seg = hd.seg.segread(out / "CT5N_seg.dcm")
    sources = sorted(ct_series.iterdir())
    first = pydicom.dcmread(sources[0], stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["bright"]
    from medvit.io import read_image

    order = read_image(ct_series).meta["dicom_sources"]
    uids = [pydicom.dcmread(s, stop_before_pixels=True).SOPInstanceUID for s in order]
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, skip_overlap_checks=True
    )
    np.testing.assert_array_equal(np.transpose(frames, (2, 1, 0)), mask)

    texts = [result.output] + [(out / f).read_text() for f in ("manifest.json", "CT5N.json")]
    for value in (str(first.PatientName), str(first.PatientID), "Doe", str(first.get("PatientBirthDate", "-"))):
        if value and value != "-":
            assert all(value not in text for text in texts), value


def test_empty_prediction_still_writes_valid_outputs(tmp_path, ct_series, bright_package):
    import highdicom as hd
    import nibabel as nib

    out = tmp_path / "out"
    result = run(
        "predict", "-i", ct_series, "-o", out, "-m", bright_package(5000.0), "--output-type", "dicom-seg,nifti"
    )
    assert result.exit_code == 0, result.output
    assert "CT5N: nothing found" in result.stdout
    assert not np.asarray(nib.load(out / "CT5N.nii.gz").dataobj).any()
    seg = hd.seg.segread(out / "CT5N_seg.dcm")
    assert len(seg.SegmentSequence) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cases"][0]["volumes_ml"] == {"bright": 0.0}


def test_2d_png_probabilities_and_classification(tmp_path, bright_package):
    from PIL import Image
    from skimage import data as skdata

    Image.fromarray(skdata.camera()[::4, ::4]).save(tmp_path / "camera.png")  # a real 128x128 photograph
    out = tmp_path / "out"
    package = bright_package(128.0, dims=2, resize=[32, 32])
    result = run("predict", "-i", tmp_path / "camera.png", "-o", out, "-m", package, "--save-probabilities")
    assert result.exit_code == 0, result.output
    mask = np.asarray(Image.open(out / "camera.png"))
    assert mask.shape == (128, 128) and set(np.unique(mask)) == {0, 1}
    bright = skdata.camera()[::4, ::4] > 128
    assert 2 * (bright & (mask == 1)).sum() / (bright.sum() + (mask == 1).sum()) > 0.85
    probs = np.load(out / "camera_probabilities.npz")
    assert probs["probabilities"].shape == (2, 128, 128) and list(probs["labels"]) == [0, 1]
    np.testing.assert_array_equal(probs["probabilities"].argmax(0), mask)
    assert json.loads((out / "camera.json").read_text())["volumes_ml"] is None  # pixels have no size

    from packages import make_package

    result = run(
        "predict",
        "-i",
        tmp_path / "camera.png",
        "-o",
        tmp_path / "cls",
        "-m",
        make_package(tmp_path / "c", "cls2d"),
    )
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "cls" / "camera.json").read_text())
    assert (
        set(scores["probabilities"]) == {"none", "mild", "severe"}
        and scores["predicted"] in scores["probabilities"]
    )
    assert sum(scores["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_save_probabilities_3d(tmp_path, bright_package):
    import nibabel as nib

    _ball_nifti(tmp_path / "c.nii.gz")
    out = tmp_path / "out"
    result = run(
        "predict",
        "-i",
        tmp_path / "c.nii.gz",
        "-o",
        out,
        "-m",
        bright_package(100.5, spacing=[1.5, 1.5, 1.5]),
        "--save-probabilities",
    )
    assert result.exit_code == 0, result.output
    probs, mask = nib.load(out / "c_probabilities.nii.gz"), nib.load(out / "c.nii.gz")
    assert probs.shape == (24, 22, 16, 2)
    np.testing.assert_allclose(probs.affine, mask.affine)
    p = np.asarray(probs.dataobj)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(p.argmax(-1), np.asarray(mask.dataobj))


def test_folder_reports_bad_cases_and_predicts_the_rest(tmp_path, ct_series, bright_package, nibabel_files):
    cases = tmp_path / "cases"
    cases.mkdir()
    _ball_nifti(cases / "good.nii.gz")
    shutil.copytree(ct_series, cases / "series1")
    (cases / "broken.nii.gz").write_bytes((nibabel_files / "example4d.nii.gz").read_bytes()[:400])
    (cases / "notes.txt").write_text("not an image")
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(cases / "photo.png")  # 2D image for a 3D model
    out = cases / "out"  # inside the input folder: not taken for a case
    result = run("predict", "-i", cases, "-o", out, "-m", bright_package(100.5), "--no-progress")
    assert result.exit_code == 1
    assert "error: broken: " in result.stderr and "error: photo: " in result.stderr
    assert "a 2D image (8x8) for a 3D model (bright3d)" in result.stderr
    assert "error: 2 case(s) failed: broken, photo" in result.stderr
    assert "Traceback" not in result.output
    names = sorted(p.name for p in out.iterdir())
    cases_written = ["good.json", "good.nii.gz", "series1.json", "series1.nii.gz"]
    assert names == sorted([*cases_written, "manifest.json", "statistics.csv"])
    manifest = json.loads((out / "manifest.json").read_text())
    status = {c["case"]: c["status"] for c in manifest["cases"]}
    assert status == {"broken": "failed", "good": "ok", "photo": "failed", "series1": "ok"}
    assert manifest["summary"]["failed"] == 2 and "error" in manifest["cases"][0]

    again = run("predict", "-i", cases, "-o", out, "-m", bright_package(100.5), "--skip-existing")
    assert "good: skipped (outputs exist)" in again.stdout and "series1: skipped" in again.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert {c["case"]: c["status"] for c in manifest["cases"]}["good"] == "skipped"


def test_series_option_picks_one_series(tmp_path, pydicom_files, bright_package):
    from medvit.io import list_series

    folder = pydicom_files / "dicomdirtests" / "98892001"
    uid = next(s["series_uid"] for s in list_series(folder) if s["num_slices"] == 5)
    out = tmp_path / "out"
    result = run("predict", "-i", folder, "-o", out, "-m", bright_package(-41.5), "--series", uid)
    assert result.exit_code == 0, result.output
    assert (out / "98892001.nii.gz").exists()
    assert json.loads((out / "manifest.json").read_text())["options"]["series"] == uid


def test_registry_uri_in_the_manifest(tmp_path, monkeypatch, bright_package):
    import types

    package = bright_package(100.5)
    fake = types.ModuleType("medvit.registry")
    fake.resolve_model_uri = lambda uri: (package, {"version": "3"})
    monkeypatch.setitem(sys.modules, "medvit.registry", fake)
    _ball_nifti(tmp_path / "c.nii.gz")
    result = run("predict", "-i", tmp_path / "c.nii.gz", "-o", tmp_path / "out", "-m", "models:/bright/3")
    assert result.exit_code == 0, result.output
    model = json.loads((tmp_path / "out" / "manifest.json").read_text())["model"]
    assert model["uri"] == "models:/bright/3" and model["version"] == "3" and len(model["sha256"]) == 64


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_device_auto_says_cpu(tmp_path, bright_package):
    _ball_nifti(tmp_path / "c.nii.gz")
    result = run("predict", "-i", tmp_path / "c.nii.gz", "-o", tmp_path / "out", "-m", bright_package())
    assert result.exit_code == 0 and result.stdout.startswith("no CUDA device: predicting on CPU\n")


BAD = {
    "missing input": (lambda t, p, f: ["-i", t / "nope.nii.gz"], r"nope\.nii\.gz: no such file or directory"),
    "unreadable": (
        lambda t, p, f: ["-i", f["broken"]],
        r"broken\.nii\.gz: (image data is truncated|not a readable)",
    ),
    "2D for 3D": (lambda t, p, f: ["-i", f["png"]], r"photo\.png: a 2D image \(8x8\) for a 3D model \(bright3d\)"),
    "3D for 2D": (lambda t, p, f: ["-i", f["nifti"], "-m", p["2d"]], r"a 3D volume \(24x22x16\) for a 2D model"),
    "channels": (lambda t, p, f: ["-i", f["4d"]], r"example4d\.nii\.gz: image has 2 channel\(s\); the model"),
    "several series": (lambda t, p, f: ["-i", f["ct2n"]], r"CT2N: series .* mixes 2 orientations"),
    "missing model": (lambda t, p, f: ["-i", f["nifti"], "-m", t / "nomodel"], r"nomodel: no such model package"),
    "dicom-seg for NIfTI": (
        lambda t, p, f: ["-i", f["nifti"], "--output-type", "dicom-seg"],
        r"--output-type dicom-seg: .*c\.nii\.gz is not a DICOM input",
    ),
    "png for 3D": (lambda t, p, f: ["-i", f["nifti"], "--output-type", "png"], r"--output-type png: needs a 2D"),
    "unknown type": (lambda t, p, f: ["-i", f["nifti"], "--output-type", "stl"], r"--output-type 'stl': unknown"),
    "json only for classes": (
        lambda t, p, f: ["-i", f["png"], "-m", p["cls"], "--output-type", "nifti"],
        r"--output-type nifti: a classification model writes json only",
    ),
    "bad device": (lambda t, p, f: ["-i", f["nifti"], "--device", "gpu"], r"--device 'gpu': expected auto, cpu"),
    "bad precision": (lambda t, p, f: ["-i", f["nifti"], "--precision", "16"], r"--precision '16': expected one"),
    "bad overlap": (lambda t, p, f: ["-i", f["nifti"], "--overlap", "1.5"], r"--overlap 1.5: must be at least 0"),
    "bad spacing": (lambda t, p, f: ["-i", f["nifti"], "--spacing", "1,x"], r"--spacing '1,x': expected 2 or 3"),
    "no registry": (lambda t, p, f: ["-i", f["nifti"], "-m", "models:/x@prod"], r"models:/x@prod: cannot resolve"),
    "empty folder": (lambda t, p, f: ["-i", f["empty"]], r"empty: no NIfTI, DICOM, 2D image or slide cases"),
}


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, nibabel_files, pydicom_files):
    from PIL import Image

    folder = tmp_path_factory.mktemp("bad")
    files = {
        "broken": folder / "broken.nii.gz",
        "png": folder / "photo.png",
        "nifti": folder / "c.nii.gz",
        "4d": nibabel_files / "example4d.nii.gz",
        "ct2n": pydicom_files / "dicomdirtests" / "98892001" / "CT2N",
        "empty": folder / "empty",
    }
    files["broken"].write_bytes((nibabel_files / "example4d.nii.gz").read_bytes()[:400])
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(files["png"])
    _ball_nifti(files["nifti"])
    files["empty"].mkdir()
    return files


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_one_line_exit_2_nothing_written(name, tmp_path, bright_package, bad_inputs, monkeypatch):
    from packages import make_package

    monkeypatch.setitem(sys.modules, "medvit.registry", None)  # the registry cannot be imported
    packages = {"3d": bright_package(), "2d": bright_package(dims=2, resize=[8, 8])}
    if name == "json only for classes":
        packages["cls"] = make_package(tmp_path / "cls", "cls2d")
    args_fn, message = BAD[name]
    args = args_fn(tmp_path, packages, bad_inputs)
    if "-m" not in args:
        args += ["-m", packages["3d"]]
    out = tmp_path / "out"
    result = run("predict", *args, "-o", out)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    import re

    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in result.output
    assert _no_files(out)


def test_output_folder_must_not_overwrite_inputs(tmp_path, bright_package):
    folder = tmp_path / "cases"
    folder.mkdir()
    data = _ball_nifti(folder / "c.nii.gz")
    result = run("predict", "-i", folder, "-o", folder, "-m", bright_package())
    assert result.exit_code == 2
    assert result.stderr.strip().endswith("c.nii.gz would overwrite an input; choose another output folder")
    import nibabel as nib

    np.testing.assert_array_equal(np.asarray(nib.load(folder / "c.nii.gz").dataobj), data)
    assert sorted(p.name for p in folder.iterdir()) == ["c.nii.gz"]
