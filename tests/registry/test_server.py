"""Against real processes on loopback ports: an ``mlflow server`` (own SQLite backend and artifact folder)
for register / alias / load / predict / move the alias, and ``mlflow models serve`` answering a prediction for
a registered 2D model."""

from __future__ import annotations

import time

import mlflow
import numpy as np
import pytest
import requests
from servers import CLEAN_ENV, MLFLOW, mlflow_server, start, stop, wait_until_up
from typer.testing import CliRunner

from medvit import Predictor
from medvit.cli import app
from medvit.package import load_package
from medvit.registry import register_package, resolve_model_uri

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A tracking server on a loopback port with its own SQLite store and proxied artifact folder."""
    root = tmp_path_factory.mktemp("server")
    with mlflow_server(root, f"sqlite:///{root / 'srv.db'}") as url:
        yield url


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
    proc = start(cmd, env={**CLEAN_ENV, "MLFLOW_TRACKING_URI": server}, cwd=tmp_path, log=tmp_path / "serve.log")
    try:
        wait_until_up(proc, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log")
        body = {"inputs": images.tolist(), "params": {"spacing": [0.5, 0.5]}}
        reply = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        got = np.asarray(reply.json()["predictions"])
        want = np.stack([Predictor(pkg).predict(x, spacing=(0.5, 0.5)).mask for x in images])
        np.testing.assert_array_equal(got, want)

        bad = requests.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": [[1.0, 2.0]]}, timeout=60)
        assert bad.status_code == 400 and "shape" in bad.json()["message"]
    finally:
        stop(proc)


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
