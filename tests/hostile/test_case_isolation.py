"""Issue #13, class 4: one bad case never aborts a folder run. Unexpected errors are that case's failure (one
line; the traceback only in OUT/predict-errors.log), later cases run and the manifest is written; two
predicts into one folder: the second is refused in one line; staging a killed predict left is removed."""

from __future__ import annotations

import fcntl
import json
import os

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medvit.cli import app


@pytest.fixture
def package(tmp_path):
    from packages import make_package

    return make_package(tmp_path / "pkg", "seg3d")


def _ct(path, shape=(24, 24, 16), dtype=np.int16, value=40):
    nib.save(nib.Nifti1Image(np.full(shape, value, dtype), np.diag([1.5, 1.5, 2.0, 1.0])), path)
    return path


def _rgb24(path):
    rgb = np.zeros((8, 8, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), path)
    return path


def _predict(package, inp, out):
    return CliRunner().invoke(app, ["predict", "-m", str(package), "-i", str(inp), "-o", str(out)])


def test_unexpected_errors_fail_their_case_and_the_run_goes_on(package, tmp_path, monkeypatch):
    cases = tmp_path / "cases"
    cases.mkdir()
    _ct(cases / "a.nii.gz")
    _rgb24(cases / "b_rgb24.nii.gz")  # a real file that medvit cannot turn into a volume
    _ct(cases / "c.nii.gz")
    _ct(cases / "d_boom.nii.gz")
    from medvit.inference.predictor import Predictor

    original = Predictor.predict

    def flaky(self, path, *args, **kwargs):
        if "boom" in str(path):
            raise ZeroDivisionError("simulated bug")
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict", flaky)
    out = tmp_path / "out"
    result = _predict(package, cases, out)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert any("d_boom" in e and "unexpected ZeroDivisionError: simulated bug" in e for e in errors), errors
    assert any("b_rgb24" in e for e in errors), errors
    manifest = json.loads((out / "manifest.json").read_text())
    status = {c["case"]: c["status"] for c in manifest["cases"]}
    assert status == {"a": "ok", "b_rgb24": "failed", "c": "ok", "d_boom": "failed"}
    assert (out / "a.nii.gz").is_file() and (out / "c.nii.gz").is_file()
    log = (out / "predict-errors.log").read_text()
    assert "d_boom" in log and "ZeroDivisionError" in log and "Traceback" in log
    assert not list(out.glob(".*"))  # no lock, no staging left


def test_a_single_unexpected_failure_is_one_line_and_writes_nothing(package, tmp_path):
    out = tmp_path / "out"
    result = _predict(package, _rgb24(tmp_path / "rgb.nii.gz"), out)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "rgb.nii.gz" in result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()


def test_a_second_predict_into_the_same_folder_is_refused(package, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out / ".medvit-predict.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running predict holds it
        result = _predict(package, _ct(tmp_path / "ct.nii.gz"), out)
    finally:
        os.close(fd)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "another medvit predict is writing to this folder" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == [".medvit-predict.lock"]  # nothing of ours written


def test_staging_left_by_a_killed_predict_is_removed(package, tmp_path):
    out = tmp_path / "out"
    stale = out / ".ct.abc123.partial"
    stale.mkdir(parents=True)
    (stale / "ct.nii.gz").write_bytes(b"half written")
    outside = tmp_path / ".elsewhere.partial"  # not in the output folder: never touched
    outside.mkdir()
    result = _predict(package, _ct(tmp_path / "ct.nii.gz"), out)
    assert result.exit_code == 0, result.output
    assert not stale.exists() and outside.exists()
    assert sorted(p.name for p in out.iterdir()) == ["ct.json", "ct.nii.gz", "manifest.json", "statistics.csv"]


def test_an_output_folder_that_cannot_be_written_is_found_before_any_work(package, tmp_path):
    result = _predict(package, _ct(tmp_path / "ct.nii.gz"), "/proc/medvit-cannot-write/out")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write there" in lines[0] and "Traceback" not in result.output


def test_a_full_disk_is_one_line_and_leaves_nothing_partial(package, tmp_path, monkeypatch):
    import errno

    import medvit.io

    def full(image, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(medvit.io, "write_nifti", full)
    out = tmp_path / "out"
    result = _predict(package, _ct(tmp_path / "ct.nii.gz"), out)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0] and "Traceback" not in result.output
    assert not out.exists() or not [p for p in out.rglob("*")]


def test_package_weights_of_the_wrong_shape_are_one_line(package, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    weights = package / "model.safetensors"
    state = load_file(weights)
    key = next(iter(state))
    state[key] = torch.zeros(3, 3)
    save_file(state, str(weights))
    result = _predict(package, _ct(tmp_path / "ct.nii.gz"), tmp_path / "out")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "wrong shape" in lines[0] and key in lines[0]
