"""Registry test fixtures: tiny packages (built once), tracking stores per session, a cache per test.

Nothing reaches the network: every test runs against ``sqlite:///`` files under pytest's tmp folders (or a
loopback ``mlflow server`` in ``test_server.py``), with ``MEDVIT_CACHE`` in the test's own tmp folder.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import pytest
import servers
import yaml
from packages import make_package


@pytest.fixture(scope="session")
def package_factory(tmp_path_factory):
    """``package_factory(kind, seed=0, provenance=None)`` -> a tiny package folder, built once per arguments."""
    root = tmp_path_factory.mktemp("packages")
    built: dict[tuple, Path] = {}

    def build(kind: str = "seg2d", *, seed: int = 0, provenance: dict | None = None) -> Path:
        key = (kind, seed, yaml.safe_dump(provenance, sort_keys=True))
        if key not in built:
            folder = make_package(root / f"{kind}-{seed}-{len(built)}", kind, seed=seed)
            if provenance is not None:
                spec_file = folder / "medvit.yaml"
                data = yaml.safe_load(spec_file.read_text())
                data["provenance"] = provenance
                spec_file.write_text(yaml.safe_dump(data, sort_keys=False))
            built[key] = folder
        return built[key]

    return build


def _store(tmp_path_factory, name: str) -> str:
    import mlflow

    folder = tmp_path_factory.mktemp(name)
    uri = f"sqlite:///{folder / 'mlruns.db'}"
    cwd = os.getcwd()
    os.chdir(folder)  # MLflow roots default artifact locations (./mlruns) where the store is first opened
    try:
        with warnings.catch_warnings():  # SQLAlchemy deprecations inside MLflow's store
            warnings.simplefilter("ignore")
            mlflow.MlflowClient(uri).search_experiments()  # creates the tables (the slow part), once
    finally:
        os.chdir(cwd)
    return uri


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    """The sqlite tracking store of the session (tests register under their own model names)."""
    return _store(tmp_path_factory, "mlflow")


@pytest.fixture(scope="session")
def other_tracking_uri(tmp_path_factory) -> str:
    """A second sqlite store, for what differs between registries."""
    return _store(tmp_path_factory, "mlflow_other")


@pytest.fixture(scope="session")
def empty_tracking_uri(tmp_path_factory) -> str:
    """A store that nothing is ever registered in."""
    return _store(tmp_path_factory, "mlflow_empty")


@pytest.fixture(autouse=True)
def registry_env(tmp_path, monkeypatch, tracking_uri):
    """The module's store as the default tracking URI, the cache and cwd in the test's tmp folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("MEDVIT_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture
def model_name(request) -> str:
    """A registered model name unique to the test."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)[:60]


@pytest.fixture(scope="session")
def free_port():
    """``free_port()`` -> a loopback TCP port nobody listens on (now)."""
    return servers.free_port


@pytest.fixture
def cache_files(tmp_path):
    """``cache_files()`` -> every path under the test's cache folder (failures must leave nothing there)."""

    def listing() -> list[Path]:
        root = tmp_path / "cache"
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []

    return listing
