"""Layered config: merge order, overrides, environment interpolation, errors naming key and file."""

from __future__ import annotations

import pytest

from medvit.config import compose, deep_merge, interpolate, load_yaml, parse_override
from medvit.errors import ConfigError


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
