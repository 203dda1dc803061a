"""PACS over DICOMweb against a real Orthanc on loopback (Debian's ``orthanc`` and ``orthanc-dicomweb``):
``medvit predict -i .../studies/UID[/series/UID]`` downloads with WADO-RS, ``--stow`` sends the DICOM-SEG and
RTSTRUCT back with STOW-RS, credentials come from the environment or netrc; every failure is one line.

Orthanc runs with authentication on (a registered user), remote access off, its DICOM port on a free port
that is not used, and storage in a temporary folder; where it or the plugin is not installed, the tests skip.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from servers import free_port, start, stop, wait_until_up
from typer.testing import CliRunner

from medvit.cli import app
from medvit.errors import ConfigError, InputError
from medvit.io import dicomweb

ORTHANC = Path("/usr/sbin/Orthanc")
PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))
USER, PASSWORD = "medvit", "pacs-secret-1"
runner = CliRunner()


def _plugin() -> Path | None:
    for folder in PLUGIN_DIRS:
        found = sorted(folder.glob("libOrthancDicomWeb.so*"))
        if found:
            return found[0]
    return None


@contextlib.contextmanager
def orthanc(folder: Path) -> Iterator[str]:
    """A throw-away Orthanc with the DICOMweb plugin on a loopback port; yields its REST root URL."""
    plugin = _plugin()
    if not ORTHANC.exists():
        pytest.skip("Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb)")
    if plugin is None:
        pytest.skip("Orthanc's DICOMweb plugin is not installed (Debian: apt-get install orthanc-dicomweb)")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "Name": "medvit-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "DicomPort": free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = folder / "orthanc.log"
    proc = start([str(ORTHANC), str(folder / "orthanc.json")], env={"PATH": "/usr/bin:/bin"}, cwd=folder, log=log)
    try:  # requests takes the credentials from the URL here; medvit refuses such URLs
        wait_until_up(proc, f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/system", log, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, pydicom_files):
    """Orthanc holding pydicom's 5-slice CT series; yields ``(rest_url, study_uid, series_uid)``."""
    ct = pydicom_files / "dicomdirtests" / "98892001" / "CT5N"
    with orthanc(tmp_path_factory.mktemp("orthanc")) as url:
        for f in sorted(ct.iterdir()):
            requests.post(
                f"{url}/instances", data=f.read_bytes(), auth=(USER, PASSWORD), timeout=30
            ).raise_for_status()
        import pydicom

        first = pydicom.dcmread(sorted(ct.iterdir())[0], stop_before_pixels=True)
        yield url, str(first.StudyInstanceUID), str(first.SeriesInstanceUID)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    from packages import make_package

    return make_package(tmp_path_factory.mktemp("pkg") / "seg3d", "seg3d")


@pytest.fixture
def creds(monkeypatch, tmp_path):
    """Credentials in the environment; no netrc, fast retries and timeouts."""
    monkeypatch.setenv("MEDVIT_DICOMWEB_USER", USER)
    monkeypatch.setenv("MEDVIT_DICOMWEB_PASSWORD", PASSWORD)
    monkeypatch.delenv("MEDVIT_DICOMWEB_TOKEN", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("MEDVIT_DICOMWEB_RETRIES", "1")
    monkeypatch.setenv("MEDVIT_DICOMWEB_CONNECT_TIMEOUT", "3")
    (tmp_path / "no-netrc").write_text("")


@pytest.fixture
def scratch(monkeypatch, tmp_path):
    """A private temporary root for this test: the downloads medvit makes land (and must vanish) here."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _predict(*args):
    return runner.invoke(
        app, ["predict", *[str(a) for a in args], "--precision", "32", "--device", "cpu", "--no-progress"]
    )


def _series_in(url: str, study: str) -> dict[str, str]:
    """``{SeriesInstanceUID: Modality}`` of ``study`` in Orthanc (QIDO-RS)."""
    answer = requests.get(f"{url}/dicom-web/studies/{study}/series", auth=(USER, PASSWORD), timeout=30)
    answer.raise_for_status()
    return {s["0020000E"]["Value"][0]: s["00080060"]["Value"][0] for s in answer.json()}


def _delete_outputs(url: str, study: str, keep: str) -> None:
    """Remove every series of ``study`` but ``keep`` (the source CT) from Orthanc."""
    found = requests.post(
        f"{url}/tools/find",
        json={"Level": "Series", "Query": {"StudyInstanceUID": study}, "Expand": True},
        auth=(USER, PASSWORD),
        timeout=30,
    ).json()
    for series in found:
        if series["MainDicomTags"]["SeriesInstanceUID"] != keep:
            requests.delete(f"{url}/series/{series['ID']}", auth=(USER, PASSWORD), timeout=30).raise_for_status()


def _one_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


# --------------------------------------------------------------------------------------------- URLs, offline


def test_parse_urls():
    u = dicomweb.parse_dicomweb_url("https://pacs.example/dicom-web/studies/1.2.3/series/4.5.6/")
    assert (u.root, u.study, u.series) == ("https://pacs.example/dicom-web", "1.2.3", "4.5.6")
    assert str(u) == "https://pacs.example/dicom-web/studies/1.2.3/series/4.5.6"
    assert dicomweb.parse_dicomweb_url("http://h:8042/studies/1.2").series is None
    assert dicomweb.is_dicomweb_url("HTTP://x/") and not dicomweb.is_dicomweb_url("folder/http:")
    for bad in ("http://h/dicom-web/series/1.2", "http://h/studies/1.2/instances/3", "http://h/studies/x.y"):
        with pytest.raises(InputError, match="expected a DICOMweb URL"):
            dicomweb.parse_dicomweb_url(bad)
    with pytest.raises(InputError, match="query"):
        dicomweb.parse_dicomweb_url("http://h/studies/1.2?user=a")


def test_credentials_in_a_url_are_refused_without_echoing_them(tmp_path):
    with pytest.raises(ConfigError) as err:
        dicomweb.parse_dicomweb_url("http://bob:hunter2@h/studies/1.2")
    assert "hunter2" not in str(err.value) and "bob" not in str(err.value) and "netrc" in str(err.value)
    result = _predict("-i", "http://bob:hunter2@127.0.0.1:1/studies/1.2", "-o", tmp_path / "out", "-m", "x")
    assert result.exit_code == 2 and "hunter2" not in result.output
    assert "credentials in the URL are refused" in _one_line(result)
    result = _predict("-i", tmp_path, "-o", tmp_path / "out", "-m", "x", "--stow", "http://b:hunter2@h/dicom-web")
    assert result.exit_code == 2 and "hunter2" not in result.output and "--stow" in _one_line(result)
    assert not (tmp_path / "out").exists()


def test_credentials_from_netrc_and_token(monkeypatch, tmp_path):
    for name in ("MEDVIT_DICOMWEB_USER", "MEDVIT_DICOMWEB_PASSWORD", "MEDVIT_DICOMWEB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine pacs.example login alice password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert dicomweb._credentials("pacs.example") == ("basic", ("alice", "s3cret"))
    assert dicomweb._credentials("other.example") is None
    monkeypatch.setenv("MEDVIT_DICOMWEB_TOKEN", "tok")
    assert dicomweb._credentials("pacs.example") == ("bearer", "tok")
    monkeypatch.delenv("MEDVIT_DICOMWEB_TOKEN")
    monkeypatch.setenv("MEDVIT_DICOMWEB_USER", "only-user")
    with pytest.raises(ConfigError, match="both"):
        dicomweb._credentials("pacs.example")
    monkeypatch.delenv("MEDVIT_DICOMWEB_USER")
    netrc.write_text("machine pacs.example login alice pasword s3cret\n")  # a typo: the error must not echo it
    with pytest.raises(ConfigError, match="not a valid netrc file") as err:
        dicomweb._credentials("pacs.example")
    assert "s3cret" not in str(err.value)


def test_timeouts_and_retries_from_the_environment(monkeypatch):
    monkeypatch.setenv("MEDVIT_DICOMWEB_CONNECT_TIMEOUT", "2.5")
    monkeypatch.setenv("MEDVIT_DICOMWEB_READ_TIMEOUT", "30")
    assert dicomweb.timeouts() == (2.5, 30.0)
    monkeypatch.setenv("MEDVIT_DICOMWEB_READ_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="MEDVIT_DICOMWEB_READ_TIMEOUT='soon'"):
        dicomweb.timeouts()
    monkeypatch.setenv("MEDVIT_DICOMWEB_RETRIES", "-1")
    with pytest.raises(ConfigError, match="MEDVIT_DICOMWEB_RETRIES"):
        dicomweb._client("http://pacs.example/dicom-web")


def test_a_server_that_is_down_is_one_line(creds, package, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/dicom-web/studies/1.2.3"
    result = _predict("-i", url, "-o", tmp_path / "out", "-m", package)
    assert result.exit_code == 2
    line = _one_line(result)
    assert "cannot connect" in line and url in line
    assert not (tmp_path / "out").exists()


def test_a_server_that_never_answers_times_out_in_one_line(creds, monkeypatch, package, tmp_path):
    """A listener that accepts and stays silent: the read timeout ends the wait, bounded retries, one line."""
    import socket
    import threading

    monkeypatch.setenv("MEDVIT_DICOMWEB_READ_TIMEOUT", "0.5")
    monkeypatch.setenv("MEDVIT_DICOMWEB_RETRIES", "0")
    held: list[socket.socket] = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(10)
        threading.Thread(target=lambda: held.append(server.accept()[0]), daemon=True).start()
        url = f"http://127.0.0.1:{server.getsockname()[1]}/dicom-web/studies/1.2.3"
        result = _predict("-i", url, "-o", tmp_path / "out", "-m", package)
    for conn in held:
        conn.close()
    assert result.exit_code == 2
    assert "no answer within 0.5 s (set MEDVIT_DICOMWEB_READ_TIMEOUT)" in _one_line(result)


# --------------------------------------------------------------------------------------------- real Orthanc


def test_predict_from_study_and_series_urls_and_stow_back(creds, scratch, pacs, package, pydicom_files, tmp_path):
    """From the study URL and from the series URL: outputs like a local predict's, SEG and RTSTRUCT stored in
    Orthanc referencing the source study, the manifest naming the URL and the STOW result, no identifiers."""
    import pydicom

    url, study, series = pacs
    root = f"{url}/dicom-web"
    local = tmp_path / "local"
    ct = pydicom_files / "dicomdirtests" / "98892001" / "CT5N"
    assert _predict("-i", ct, "-o", local, "-m", package).exit_code == 0
    expected = np.asarray(nib.load(local / "CT5N.nii.gz").dataobj)
    assert len(np.unique(expected)) > 1  # the tiny package finds something: SEG and RTSTRUCT hold segments
    try:
        for i, source in enumerate((f"{root}/studies/{study}", f"{root}/studies/{study}/series/{series}")):
            out = tmp_path / f"out{i}"
            types = "nifti,dicom-seg,rtstruct"
            result = _predict("-i", source, "-o", out, "-m", package, "--output-type", types, "--stow", root)
            assert result.exit_code == 0, result.output
            assert f"{series}: stored 2 object(s) at {root} (HTTP 200)" in result.output
            mask = nib.load(out / f"{series}.nii.gz")
            np.testing.assert_array_equal(np.asarray(mask.dataobj), expected)
            np.testing.assert_allclose(mask.affine, nib.load(local / "CT5N.nii.gz").affine)
            stored = _series_in(url, study)
            assert sorted(stored.values()) == ["CT", "RTSTRUCT", "SEG"]
            for uid, modality in stored.items():
                if modality != "CT":
                    answer = requests.get(
                        f"{root}/studies/{study}/series/{uid}/metadata", auth=(USER, PASSWORD), timeout=30
                    ).json()
                    assert answer[0]["0020000D"]["Value"] == [study]
            seg = pydicom.dcmread(out / f"{series}_seg.dcm")
            assert seg.StudyInstanceUID == study
            manifest = json.loads((out / "manifest.json").read_text())
            (case,) = manifest["cases"]
            assert case["input"] == f"{root}/studies/{study}/series/{series}" and case["status"] == "ok"
            assert case["stow"] == {"url": root, "instances": 2, "stored": 2, "status": 200}
            assert manifest["options"]["stow"] == root
            text = (out / "manifest.json").read_text()
            assert "Doe^Peter" not in text and "98890234" not in text and PASSWORD not in text
            assert "medvit-dicomweb-" not in text
            assert not list(scratch.glob("medvit-dicomweb-*"))  # downloads removed
            _delete_outputs(url, study, series)  # the second round stores into a clean study
    finally:
        _delete_outputs(url, study, series)


def test_series_option_picks_a_series_of_a_study(creds, pacs, package, tmp_path):
    url, study, series = pacs
    source = f"{url}/dicom-web/studies/{study}"
    result = _predict("-i", source, "-o", tmp_path / "out", "-m", package, "--series", series[:-2])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / f"{series}.nii.gz").exists()
    result = _predict("-i", source, "-o", tmp_path / "out2", "-m", package, "--series", "9.9.9")
    assert result.exit_code == 2 and "matches no series" in _one_line(result)


def test_wrong_password_is_one_line_and_writes_nothing(creds, monkeypatch, pacs, package, tmp_path):
    url, study, series = pacs
    monkeypatch.setenv("MEDVIT_DICOMWEB_PASSWORD", "wrong")
    for source in (f"{url}/dicom-web/studies/{study}", f"{url}/dicom-web/studies/{study}/series/{series}"):
        result = _predict("-i", source, "-o", tmp_path / "out", "-m", package)
        assert result.exit_code == 2
        line = _one_line(result)
        assert "refused the credentials (HTTP 401)" in line and "wrong" not in line
        assert not (tmp_path / "out").exists()


def test_netrc_credentials_reach_orthanc(creds, monkeypatch, pacs, tmp_path):
    url, study, series = pacs
    for name in ("MEDVIT_DICOMWEB_USER", "MEDVIT_DICOMWEB_PASSWORD"):
        monkeypatch.delenv(name)
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    (found,) = dicomweb.list_series(f"{url}/dicom-web/studies/{study}")
    assert found.series == series and found.modality == "CT" and found.instances == 5
    files = dicomweb.download_series(found.url, tmp_path)
    assert [f.name for f in files] == [f"{i:05d}.dcm" for i in range(1, 6)]


def test_unknown_study_and_series_are_one_line(creds, pacs, package, tmp_path):
    url, study, _ = pacs
    for source, what in (
        (f"{url}/dicom-web/studies/1.2.3.4", "study"),
        (f"{url}/dicom-web/studies/{study}/series/1.2", "series"),
    ):
        result = _predict("-i", source, "-o", tmp_path / "out", "-m", package)
        assert result.exit_code == 2
        assert f"no such {what} on the server" in _one_line(result)
        assert not (tmp_path / "out").exists()


def test_series_above_the_bounds_is_refused_before_download(creds, scratch, monkeypatch, pacs, package, tmp_path):
    url, study, series = pacs
    source = f"{url}/dicom-web/studies/{study}/series/{series}"
    monkeypatch.setenv("MEDVIT_DICOMWEB_MAX_INSTANCES", "4")
    with pytest.raises(InputError, match="5 instances, above 4"):
        dicomweb.download_series(source, tmp_path)
    result = _predict("-i", source, "-o", tmp_path / "out", "-m", package)
    assert result.exit_code == 2 and "5 instances, above 4" in _one_line(result)
    assert not (tmp_path / "out").exists() and not any(scratch.iterdir())  # the download folder is gone too
    monkeypatch.delenv("MEDVIT_DICOMWEB_MAX_INSTANCES")
    monkeypatch.setenv("MEDVIT_MAX_IMAGE_BYTES", "1000")
    with pytest.raises(InputError, match="image budget"):
        dicomweb.download_series(source, tmp_path)
    assert not any(tmp_path.glob("*.dcm"))


def test_a_rejected_stow_is_one_line_and_stores_nothing(creds, pacs, package, tmp_path):
    """--stow at a path that 404s: exit 2, one line naming the URL, no outputs, nothing new in Orthanc."""
    url, study, series = pacs
    source = f"{url}/dicom-web/studies/{study}/series/{series}"
    bad = f"{url}/no-such-dicom-web"
    out = tmp_path / "out"
    result = _predict("-i", source, "-o", out, "-m", package, "--output-type", "dicom-seg,rtstruct", "--stow", bad)
    assert result.exit_code == 2
    line = _one_line(result)
    assert bad in line and "HTTP 404" in line and PASSWORD not in line
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]
    assert _series_in(url, study) == {series: "CT"}


def test_a_stow_to_a_stopped_server_fails_the_case_in_a_folder_run(creds, pacs, package, tmp_path):
    """A study URL is a folder of series: a STOW that cannot reach its server fails that case (exit 1),
    recorded in the manifest, without outputs; the source server holds nothing new."""
    url, study, series = pacs
    with orthanc(tmp_path / "second") as other:
        pass  # started and stopped: nothing listens there now
    out = tmp_path / "out"
    source = f"{url}/dicom-web/studies/{study}"
    result = _predict(
        "-i", source, "-o", out, "-m", package, "--output-type", "dicom-seg", "--stow", f"{other}/dicom-web"
    )
    assert result.exit_code == 1
    assert f"error: {series}: --stow {other}/dicom-web: cannot connect to the server" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cases"][0]["status"] == "failed" and "stow" not in manifest["cases"][0]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "manifest.json",
        "statistics.csv",
    ]
    assert _series_in(url, study) == {series: "CT"}


def test_stow_needs_dicom_outputs(creds, pacs, package, tmp_path):
    url, study, series = pacs
    source = f"{url}/dicom-web/studies/{study}/series/{series}"
    result = _predict("-i", source, "-o", tmp_path / "out", "-m", package, "--stow", f"{url}/dicom-web")
    assert result.exit_code == 2 and "dicom-seg" in _one_line(result)
