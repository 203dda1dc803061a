"""Layered config: merge order, overrides, environment interpolation, errors naming key and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from medvit.config import (
    compose,
    compose_pipeline,
    config_dirs,
    deep_merge,
    find_pipeline,
    interpolate,
    load_yaml,
    parse_override,
)
from medvit.errors import ConfigError
from medvit.resources import shipped_dir


def test_merge_order_and_lists_replace():
    defaults = {"trainer": {"max_epochs": 10, "precision": "32"}, "tags": ["a"]}
    fragment = {"trainer": {"precision": "bf16-mixed"}}
    pipeline = {"trainer": {"max_epochs": 3}, "tags": ["b", "c"]}
    out = compose([("defaults", defaults), ("gpu.yaml", fragment), ("x.yaml", pipeline)], ["trainer.max_epochs=1"])
    assert out == {"trainer": {"max_epochs": 1, "precision": "bf16-mixed"}, "tags": ["b", "c"]}
    assert defaults["trainer"]["max_epochs"] == 10  # inputs untouched


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a.b=3", {"a": {"b": 3}}),
        ("a=true", {"a": True}),
        ("a.b=[1, 2]", {"a": {"b": [1, 2]}}),
        ("a=hello world", {"a": "hello world"}),
        ("a=", {"a": ""}),
        ("data.root=/x/y:z", {"data": {"root": "/x/y:z"}}),
    ],
)
def test_parse_override(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["noequals", "=3", "a..b=1", ".a=1"])
def test_bad_override(text):
    with pytest.raises(ConfigError, match=f"override '{text}': expected key.sub=value"):
        parse_override(text)


def test_interpolation():
    env = {"MEDVIT_DATA": "/data"}
    data = {"data": {"root": "${MEDVIT_DATA}/REFUGE", "extra": ["${NOPE:-fallback}", 3]}}
    assert interpolate(data, source="p.yaml", env=env) == {
        "data": {"root": "/data/REFUGE", "extra": ["fallback", 3]}
    }
    with pytest.raises(ConfigError, match=r"p\.yaml: model\.weights: environment variable WEIGHTS is not set"):
        interpolate({"model": {"weights": "${WEIGHTS}/x.pth"}}, source="p.yaml", env={})


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"absent\.yaml: no such config file"):
        load_yaml(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: expected a mapping at the top level, got list"):
        load_yaml(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(tmp_path / "empty.yaml") == {}


def test_deep_merge_replaces_mapping_with_scalar():
    assert deep_merge({"a": {"b": 1}}, {"a": None}) == {"a": None}


def test_pipeline_by_name_from_anywhere(tmp_path, monkeypatch):
    """A bare name is ``<name>.yaml`` in ./pipelines, then in medvit's shipped pipelines; fragments follow."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MEDVIT_CONFIGS", raising=False)
    shipped = shipped_dir("pipelines") / "quickstart.yaml"
    assert find_pipeline("quickstart") == find_pipeline("quickstart.yaml") == shipped
    assert config_dirs()[-1] == shipped_dir("configs")
    merged, _ = compose_pipeline("quickstart", ["trainer.max_epochs=1"])
    assert merged["name"] == "quickstart" and merged["trainer"]["max_epochs"] == 1
    assert merged["trainer"]["accelerator"] == "cpu"  # from the shipped configs/trainer/cpu.yaml

    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "quickstart.yaml").write_text("name: mine\n")
    assert find_pipeline("quickstart") == Path("pipelines/quickstart.yaml").resolve()
    (tmp_path / "own.yaml").write_text("name: own\n")
    assert find_pipeline("own.yaml") == Path("own.yaml")


@pytest.mark.parametrize("name", ["no_such_pipeline", "sub/quickstart.yaml", "sub/quickstart"])
def test_unknown_pipeline_lists_the_known_names(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=rf"{name}: no such pipeline file or name .*known: .*quickstart") as err:
        find_pipeline(name)
    assert "\n" not in str(err.value)


def test_shipped_dir_names():
    assert (shipped_dir("data_cards") / "synthetic_ct.yaml").is_file()
    assert (shipped_dir("configs") / "trainer" / "cpu.yaml").is_file()
    with pytest.raises(ValueError, match="unknown shipped folder 'models'"):
        shipped_dir("models")
