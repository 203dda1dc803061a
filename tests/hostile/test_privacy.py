"""Issue #13, class 7: DICOM free text (SeriesDescription, ProtocolName, StudyDescription, ImageComments) can
hold names and IDs; medvit leaves it out of everything it prints or writes by default (info text and JSON,
convert, predict's manifest, sidecars and outputs, error lines). ``info --show-descriptions`` shows
SeriesDescription on the terminal only."""

from __future__ import annotations

import json
import shutil

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from medvit.cli import app

SECRET = {
    "SeriesDescription": "Jane Roe 1957-03-02 MRN 4455",
    "ProtocolName": "Protocol for J Roe",
    "StudyDescription": "Roe follow-up",
    "ImageComments": "call Mrs Roe 555-0199",
}
NEEDLES = ("Roe", "MRN 4455", "555-0199", "1957-03-02")


def _series(folder, n_series=1):
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(n_series):
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        for key, value in SECRET.items():
            setattr(ds, key, value)
        ds.SeriesInstanceUID = generate_uid()
        ds.save_as(folder / f"s{s}.dcm")
    return folder


def _clean(text: str) -> None:
    for needle in NEEDLES:
        assert needle not in text, f"{needle!r} leaked: {text[:500]}"


def _files_clean(folder) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            _clean(f.read_bytes().decode("latin-1"))


@pytest.mark.parametrize("args", [[], ["--json"]])
def test_info_leaves_free_text_out(tmp_path, args):
    folder = _series(tmp_path / "study", 2)
    result = CliRunner().invoke(app, ["info", str(folder), *args])
    assert result.exit_code == 0, result.output
    _clean(result.output)
    one = CliRunner().invoke(app, ["info", str(folder / "s0.dcm"), *args])
    assert one.exit_code == 0, one.output
    _clean(one.output)


def test_show_descriptions_is_terminal_text_only(tmp_path):
    folder = _series(tmp_path / "study", 2)
    shown = CliRunner().invoke(app, ["info", str(folder), "--show-descriptions"])
    assert shown.exit_code == 0 and SECRET["SeriesDescription"] in shown.output
    as_json = CliRunner().invoke(app, ["info", str(folder), "--show-descriptions", "--json"])
    assert as_json.exit_code == 0
    _clean(as_json.output)


def test_convert_and_errors_leave_free_text_out(tmp_path):
    folder = _series(tmp_path / "study", 2)
    several = CliRunner().invoke(app, ["convert", str(folder), str(tmp_path / "o.nii.gz")])
    assert several.exit_code == 2  # several series and no --series: the error lists them
    _clean(several.output)
    one = _series(tmp_path / "one", 1)
    result = CliRunner().invoke(app, ["convert", str(one), str(tmp_path / "o.nii.gz")])
    assert result.exit_code == 0, result.output
    _clean(result.output)


def test_predict_outputs_and_manifest_leave_free_text_out(tmp_path):
    from packages import make_package

    package = make_package(tmp_path / "pkg", "seg3d")
    folder = _series(tmp_path / "study", 1)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", "-m", str(package), "-i", str(folder), "-o", str(out)])
    assert result.exit_code == 0, result.output
    _clean(result.output)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cases"][0]["status"] == "ok"
    for f in out.glob("*.json"):
        _clean(f.read_text())
    shutil.rmtree(package)
    _files_clean(out)


IDENTIFIERS = {
    "PatientName": "Roe^Jane",
    "PatientID": "MRN4455",
    "PatientBirthDate": "19570302",
    "PatientSex": "F",
    "PatientAge": "067Y",
    "AccessionNumber": "ACC98765",
    "StudyID": "ST4711",
    "StudyDate": "20240117",
    "ReferringPhysicianName": "Who^Doctor",
    "InstitutionName": "Roe Memorial Hospital",
    "OtherPatientIDs": "ALT-4455",
}


@pytest.mark.parametrize("deidentify", [False, True])
def test_dicom_seg_copies_the_patient_module_unless_deidentified(tmp_path, deidentify):
    """By the standard a DICOM-SEG carries its source's patient and study modules (so PACS files it with the
    study); ``--deidentify`` writes it without them (PS3.15 basic profile) and still references the source."""
    from packages import make_package

    package = make_package(tmp_path / "pkg", "seg3d")
    folder = _series(tmp_path / "study", 1)
    src = dcmread(folder / "s0.dcm")
    for key, value in IDENTIFIERS.items():
        setattr(src, key, value)
    src.add_new(0x00111001, "LO", "private Roe note")  # a private element (group 0011 is odd)
    src.save_as(folder / "s0.dcm")
    out = tmp_path / "out"
    args = ["predict", "-m", str(package), "-i", str(folder), "-o", str(out), "--output-type", "dicom-seg"]
    result = CliRunner().invoke(app, args + (["--deidentify"] if deidentify else []))
    assert result.exit_code == 0, result.output
    seg_file = out / "study_seg.dcm"
    seg = dcmread(seg_file)
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == src.SeriesInstanceUID and seg.StudyInstanceUID == src.StudyInstanceUID
    assert ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    raw = seg_file.read_bytes().decode("latin-1")
    if not deidentify:
        assert seg.PatientName == "Roe^Jane" and seg.PatientID == "MRN4455"  # what the standard asks for
        return
    for key, value in IDENTIFIERS.items():
        assert len(value) < 3 or value not in raw, f"{key} {value!r} left in the de-identified SEG"
        assert getattr(seg, key, "") in ("", "Anonymous", "ANONYMOUS"), key
    _clean(raw)
    assert seg.PatientName == "Anonymous" and seg.PatientID == "ANONYMOUS" and seg.PatientBirthDate == ""
    assert seg.PatientIdentityRemoved == "YES" and "Retain UIDs" in seg.DeidentificationMethod
    codes = [item.CodeValue for item in seg.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113110"]
    assert json.loads((out / "manifest.json").read_text())["options"]["deidentify"] is True
    import highdicom as hd

    assert hd.seg.Segmentation.from_dataset(seg).number_of_segments >= 1  # still a valid SEG
