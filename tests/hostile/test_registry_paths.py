"""Issue #13, class 1: a server's or file's string never becomes a path. A tracking server on 127.0.0.1 that
answers like MLflow with hostile values (versions that are paths, a local download location, another model)
gets one line and exit 2; nothing outside medvit's cache changes and the cache keeps no partial entry."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from typer.testing import CliRunner

from medvit.cli import app


class _Hostile(BaseHTTPRequestHandler):
    """MLflow's REST answers for registered model ``m``, with the values of ``self.server.answers``."""

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        a = self.server.answers
        self.server.seen.append(url.path)
        version = {
            "name": a.get("answer_name", query.get("name", "m")),
            "version": a.get("version_answer", query.get("version", "1")),
            "creation_timestamp": 0,
            "last_updated_timestamp": 0,
            "source": a.get("source", "models:/m-0123456789abcdef"),
            "run_id": "",
            "status": "READY",
            "current_stage": "None",
        }
        if url.path.endswith("/registered-models/get"):
            body = {
                "registered_model": {
                    "name": query.get("name", "m"),
                    "creation_timestamp": 0,
                    "last_updated_timestamp": 0,
                    "latest_versions": [{**version, "version": a.get("latest", "1")}],
                    "aliases": [{"alias": "champion", "version": a.get("alias_version", "1")}],
                }
            }
        elif url.path.endswith("/model-versions/get"):
            body = {"model_version": version}
        elif url.path.endswith("/model-versions/get-download-uri"):
            body = {"artifact_uri": a.get("download", "mlflow-artifacts:/0/models/m-0123456789abcdef/artifacts")}
        else:
            self.send_response(404)
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    server.answers, server.seen = {}, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("MEDVIT_CACHE", str(tmp_path / "home" / ".cache" / "medvit"))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.chdir(tmp_path)
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def victim(tmp_path):
    """Folders a hostile answer would point at: beside the cache, inside it, and its parents."""
    cache = tmp_path / "home" / ".cache"
    folders = [tmp_path / "victim", cache / "victim", cache / "medvit"]
    for f in folders:
        f.mkdir(parents=True, exist_ok=True)
        (f / "keep.txt").write_text("precious")
    return folders


def _snapshot(root: Path) -> list[str]:
    """Every path under ``root``, but the empty folders of the cache (where a download's lock was taken)."""
    cache = root / "home" / ".cache" / "medvit" / "models"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or cache not in (p, *p.parents))


def _image(tmp_path: Path) -> Path:
    import nibabel as nib
    import numpy as np

    image = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), image)
    return image


def _predict(uri: str, tracking: str, image: Path, tmp_path: Path):
    env = {"MLFLOW_TRACKING_URI": tracking}
    return CliRunner().invoke(app, ["predict", "-m", uri, "-i", str(image), "-o", str(tmp_path / "out")], env=env)


@pytest.mark.parametrize(
    ("answers", "uri", "needle"),
    [
        ({"alias_version": "../../../../victim"}, "models:/m@champion", "not a version number"),
        ({"alias_version": "/tmp"}, "models:/m@champion", "not a version number"),
        ({"alias_version": ".."}, "models:/m@champion", "not a version number"),
        ({"alias_version": "1/../../victim"}, "models:/m@champion", "not a version number"),
        ({"alias_version": "0"}, "models:/m@champion", "not a version number"),
        ({"version_answer": "../../../victim"}, "models:/m/1", "not a version number"),
        ({"version_answer": "7"}, "models:/m/1", "answered version 7 for version 1"),
        ({"latest": "../victim"}, "models:/m/latest", "not a version number"),
        ({"answer_name": "../../other"}, "models:/m/1", "answered model '../../other'"),
        ({"download": "file:///etc"}, "models:/m/1", "local download location"),
        ({"download": "/etc"}, "models:/m/1", "local download location"),
        ({"download": "FILE:///tmp/victim"}, "models:/m/1", "local download location"),
    ],
)
def test_hostile_registry_answers_touch_nothing(hostile, victim, tmp_path, answers, uri, needle):
    server, url = hostile
    server.answers.update(answers)
    if "download" in answers and answers["download"].lower().startswith("file:///tmp/victim"):
        server.answers["download"] = (victim[0]).as_uri().replace("file:", "FILE:")
    image = _image(tmp_path)
    before = _snapshot(tmp_path)
    result = _predict(uri, url, image, tmp_path)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and uri in lines[0], result.output
    assert "Traceback" not in result.output
    assert server.seen, "the request never reached the server"
    assert _snapshot(tmp_path) == before  # nothing outside (or inside) the cache changed; no output folder
    for folder in victim:
        assert (folder / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("sub", ["../../victim", "/etc", "..", "a/../../b", "package/../../x", "~root"])
def test_mlmodel_naming_a_path_for_its_package_is_refused(tmp_path, victim, sub):
    """The MLmodel file is the server's (or a colleague's) too: its package folder must be a plain name."""
    from types import SimpleNamespace

    import yaml

    from medvit.errors import InputError
    from medvit.registry.cache import _fetch_package

    root = tmp_path / "artifacts"
    root.mkdir()
    (root / "MLmodel").write_text(yaml.safe_dump({"flavors": {"medvit": {"package": sub}}}))
    before = _snapshot(tmp_path)
    mv = SimpleNamespace(version="1", tags={})
    with pytest.raises(InputError, match="not a plain folder name"):
        _fetch_package(root.as_uri(), tmp_path / "scratch", mv, "models:/m/1")
    assert [p for p in _snapshot(tmp_path) if p not in before and not p.startswith("scratch")] == []
    for folder in victim:
        assert (folder / "keep.txt").read_text() == "precious"
