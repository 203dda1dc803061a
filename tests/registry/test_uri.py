"""Registry addresses, names, aliases, the default tracking URI and cache keys (no MLflow calls)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medvit.errors import InputError
from medvit.registry.cache import cache_entry, cache_root
from medvit.registry.session import display_uri, resolve_tracking_uri
from medvit.registry.uri import (
    ModelRef,
    check_alias,
    check_model_name,
    default_tracking_uri,
    is_model_uri,
    parse_model_uri,
)


@pytest.mark.parametrize(
    "uri, ref",
    [
        ("models:/disc@champion", ModelRef("disc", alias="champion")),
        ("models:/disc/3", ModelRef("disc", version="3")),
        ("models:/disc/latest", ModelRef("disc", version="latest")),
        ("models:/liver seg v2@staging-2", ModelRef("liver seg v2", alias="staging-2")),
    ],
)
def test_parse_model_uri(uri, ref):
    assert parse_model_uri(uri) == ref
    assert ref.uri == uri
    assert is_model_uri(uri)


@pytest.mark.parametrize(
    "uri",
    [
        "models:/",
        "models:/disc",
        "models:/disc/0",
        "models:/disc/abc",
        "models:/disc/",
        "models:/@champion",
        "models:/disc@",
        "models:/disc@bad alias",
        "models:/a/b/1",
        "runs:/abc/model",
        "/tmp/package",
    ],
)
def test_bad_model_uri_is_one_line_naming_it(uri):
    with pytest.raises(InputError) as err:
        parse_model_uri(uri)
    assert str(err.value).startswith(f"{uri}: ")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("alias", ["latest", "Latest", "v3", "V12", "bad alias", "a/b", ""])
def test_reserved_or_bad_alias(alias):
    with pytest.raises(InputError, match="alias"):
        check_alias(alias)


@pytest.mark.parametrize("name", ["", " disc", "a/b", "a:b", "a@b"])
def test_bad_model_name(name):
    with pytest.raises(InputError, match="bad model name"):
        check_model_name(name)


def test_default_tracking_uri_env_else_sqlite_here(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert default_tracking_uri() == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert default_tracking_uri() == f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert resolve_tracking_uri("sqlite:///mlruns.db") == f"sqlite:///{tmp_path / 'mlruns.db'}"


def test_display_uri_hides_credentials():
    assert display_uri("https://user:secret@mlflow.example.org/") == "https://mlflow.example.org/"
    assert display_uri("postgresql://u:p@db:5432/mlflow") == "postgresql://db:5432/mlflow"
    assert display_uri("sqlite:////tmp/mlruns.db") == "sqlite:////tmp/mlruns.db"


def test_cache_is_keyed_by_registry_name_and_version(tmp_path):
    a = cache_entry("sqlite:////a/mlruns.db", "disc", 1)
    b = cache_entry("http://127.0.0.1:5000", "disc", 1)
    assert a.parent.parent != b.parent.parent and a.name == b.name == "1"
    assert a.is_relative_to(cache_root()) and cache_root() == tmp_path / "cache" / "models"
    odd = cache_entry("http://127.0.0.1:5000", "liver seg/../x", 2)
    assert odd.parent.parent == b.parent.parent and ".." not in odd.parts


def test_import_does_not_load_mlflow():
    code = "import sys, medvit.registry; print('mlflow' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
