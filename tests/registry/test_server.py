"""Against real processes on loopback ports: an ``mlflow server`` (own SQLite backend and artifact folder)
for register / alias / load / predict / move the alias, and ``mlflow models serve`` answering a prediction for
a registered 2D model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
from typer.testing import CliRunner

from medvit import Predictor
from medvit.cli import app
from medvit.package import load_package
from medvit.registry import register_package, resolve_model_uri

pytestmark = pytest.mark.slow

MLFLOW = str(Path(sys.executable).with_name("mlflow"))
_CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
_CLEAN_ENV["PATH"] = (
    f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # uvicorn, as in a venv
)


def _wait_until_up(proc: subprocess.Popen, url: str, log: Path, *, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[:3]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or still starting
            pass
        time.sleep(0.3)
    pytest.fail(f"{url} not up after {timeout} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the workers it started
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _start(cmd: list[str], *, env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:  # own session: stopping it stops the workers it starts too
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory, free_port):
    """A tracking server on a loopback port with its own SQLite store and proxied artifact folder."""
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    cmd = [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    cmd += ["--backend-store-uri", f"sqlite:///{root / 'srv.db'}", "--artifacts-destination", str(root / "art")]
    proc = _start(cmd, env=_CLEAN_ENV, cwd=root, log=root / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(proc, f"{url}/health", root / "server.log")
        yield url
    finally:
        _stop(proc)


@pytest.fixture
def images():
    return np.random.default_rng(11).uniform(0, 255, size=(2, 3, 40, 36)).astype(np.float32)


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_register_alias_load_predict_and_move_alias(server, package_factory, model_name, monkeypatch, images):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)  # what `medvit predict -m models:/...` and pyfunc read
    old, new = package_factory("cls2d"), package_factory("cls2d", seed=1)
    out = cli("register", old, "--name", model_name, "--alias", "champion", "--tracking-uri", server)
    assert out.startswith(f"registered {model_name} version 1: models:/{model_name}/1\n")

    uri = f"models:/{model_name}@champion"
    predictor = Predictor(uri)  # through resolve_model_uri and the cache
    assert predictor.source["version"] == "1" and predictor.package.sha256 == load_package(old).sha256
    model = mlflow.pyfunc.load_model(uri)
    want_old = np.stack([Predictor(old).predict(x).class_probabilities for x in images])
    np.testing.assert_array_equal(model.predict(images), want_old)

    cli("register", new, "--name", model_name, "--tracking-uri", server)
    moved = cli("models", "alias", model_name, "champion", "2", "--tracking-uri", server)
    assert moved.strip() == f"{uri} -> version 2 (was version 1)"

    folder, info = resolve_model_uri(uri, tracking_uri=server)
    assert info["version"] == "2" and info["tracking_uri"] == server and info["cached"] is False
    assert load_package(folder).sha256 == load_package(new).sha256
    assert Predictor(uri).source["version"] == "2"
    got = mlflow.pyfunc.load_model(uri).predict(images)
    want_new = np.stack([Predictor(new).predict(x).class_probabilities for x in images])
    np.testing.assert_array_equal(got, want_new)
    assert not np.array_equal(want_new, want_old)  # the new version is really what answered

    listing = cli("models", "list", "--tracking-uri", server)
    assert f"{model_name} 2 classification champion->2" in " ".join(listing.split())


def test_scoring_server_answers_for_a_registered_2d_model(
    server, package_factory, model_name, tmp_path, images, free_port
):
    pkg = package_factory("seg2d")
    register_package(pkg, name=model_name, alias="champion", tracking_uri=server)
    port = free_port()
    cmd = [MLFLOW, "models", "serve", "-m", f"models:/{model_name}@champion", "--env-manager", "local"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    proc = _start(cmd, env={**_CLEAN_ENV, "MLFLOW_TRACKING_URI": server}, cwd=tmp_path, log=tmp_path / "serve.log")
    try:
        _wait_until_up(proc, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log")
        body = {"inputs": images.tolist(), "params": {"spacing": [0.5, 0.5]}}
        reply = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        got = np.asarray(reply.json()["predictions"])
        want = np.stack([Predictor(pkg).predict(x, spacing=(0.5, 0.5)).mask for x in images])
        np.testing.assert_array_equal(got, want)

        bad = requests.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": [[1.0, 2.0]]}, timeout=60)
        assert bad.status_code == 400 and "shape" in bad.json()["message"]
    finally:
        _stop(proc)


def test_server_down_is_a_one_line_error(server, package_factory, model_name, free_port, tmp_path):
    down = f"http://127.0.0.1:{free_port()}"
    start = time.perf_counter()
    for args in (
        ["register", package_factory("seg2d"), "--name", model_name, "--tracking-uri", down],
        ["models", "show", model_name, "--tracking-uri", down],
    ):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 2
        assert result.stderr.strip().splitlines() == [
            f"error: models:/{model_name}: cannot reach the MLflow tracking server {down} (is it running?)"
        ]
    assert time.perf_counter() - start < 20
    assert not (tmp_path / "cache").exists()
