"""Registry test fixtures: tiny packages (built once), a tracking store per module, a cache per test.

Nothing reaches the network: every test runs against ``sqlite:///`` files under pytest's tmp folders (or a
loopback ``mlflow server`` in ``test_server.py``), with ``MEDVIT_CACHE`` in the test's own tmp folder.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
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


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    """One sqlite tracking store per test module (tests use their own model names)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlruns.db'}"


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

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return pick


@pytest.fixture
def cache_files(tmp_path):
    """``cache_files()`` -> every path under the test's cache folder (failures must leave nothing there)."""

    def listing() -> list[Path]:
        root = tmp_path / "cache"
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []

    return listing
