"""Layered configuration as plain data: defaults < ``configs/`` fragments < pipeline < CLI overrides.

This module does the merging, ``key.sub=value`` overrides and ``${ENV_VAR}`` interpolation; the
pipeline schema that validates the merged result lives with the pipelines. Every error names the key
and the file it came from. Nothing is ever evaluated: values are YAML scalars, lists and mappings.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from medvit.errors import ConfigError
from medvit.resources import shipped_dir
from medvit.yamlfile import read_yaml

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file, bad YAML or a non-mapping is a one-line error naming the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"trainer.max_epochs=3"`` -> ``{"trainer": {"max_epochs": 3}}`` (the value is parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node: dict[str, Any] = {}
    cursor = node
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cursor[part] = {}
        cursor = cursor[part]
    cursor[parts[-1]] = value
    return node


def interpolate(data: Any, *, source: str, env: Mapping[str, str] | None = None, _path: str = "") -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string; an unset variable without a default is
    an error naming the key and ``source``."""
    env = os.environ if env is None else env
    if isinstance(data, Mapping):
        return {
            k: interpolate(v, source=source, env=env, _path=f"{_path}.{k}" if _path else str(k))
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [interpolate(v, source=source, env=env, _path=f"{_path}[{i}]") for i, v in enumerate(data)]
    if not isinstance(data, str):
        return data

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"{source}: {_path}: environment variable {name} is not set (used as ${{{name}}})")

    return _ENV.sub(substitute, data)


def compose(
    layers: list[tuple[str, Mapping[str, Any]]], overrides: list[str] | None = None, *, env=None
) -> dict[str, Any]:
    """Merge ``(source, mapping)`` layers in order, then CLI overrides, then interpolate the environment.

    The source of each layer is kept only for error messages.
    """
    merged: dict[str, Any] = {}
    for _, layer in layers:
        merged = deep_merge(merged, layer)
    for text in overrides or []:
        merged = deep_merge(merged, parse_override(text))
    source = " < ".join(s for s, _ in layers) or "<config>"
    return interpolate(merged, source=source, env=env)


# ------------------------------------------------------------------------------------------ pipeline schema

CONFIGS_ENV = "MEDVIT_CONFIGS"


def config_dirs(pipeline: Path | None = None) -> list[Path]:
    """Where ``defaults:`` fragments are looked up: ``$MEDVIT_CONFIGS`` entries, ``configs/`` beside the
    pipeline's folder, ``./configs``, then medvit's shipped ``configs/``."""
    dirs = [Path(p) for p in os.environ.get(CONFIGS_ENV, "").split(os.pathsep) if p]
    if pipeline is not None:
        dirs.append(pipeline.resolve().parent.parent / "configs")
    dirs += [Path.cwd() / "configs", shipped_dir("configs")]
    seen, out = set(), []
    for d in dirs:
        if d not in seen:
            seen.add(d)
            out.append(d)
    return out


def find_fragment(name: str, pipeline: Path | None = None) -> Path:
    """``"trainer/cpu"`` -> ``configs/trainer/cpu.yaml`` (first match in :func:`config_dirs`)."""
    if ".." in Path(name).parts or Path(name).is_absolute():
        raise ConfigError(f"{pipeline}: defaults: {name!r} must be a fragment name such as 'trainer/cpu'")
    rel = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
    for d in config_dirs(pipeline):
        if (d / rel).is_file():
            return d / rel
    where = ", ".join(str(d) for d in config_dirs(pipeline))
    raise ConfigError(f"{pipeline}: defaults: no config fragment {name!r} (looked in {where})")


def pipeline_dirs() -> list[Path]:
    """Where a pipeline given by name is looked up: ``./pipelines``, then medvit's shipped pipelines."""
    return [Path.cwd() / "pipelines", shipped_dir("pipelines")]


def list_pipelines() -> dict[str, Path]:
    """Pipeline name -> file in :func:`pipeline_dirs`, first found wins."""
    out: dict[str, Path] = {}
    for d in pipeline_dirs():
        for f in sorted(d.glob("*.y*ml")) if d.is_dir() else []:
            out.setdefault(f.stem, f)
    return out


def find_pipeline(name_or_path: str | Path) -> Path:
    """A pipeline file: ``name_or_path`` itself when it is a file, else, for a bare name such as
    ``quickstart``, ``<name>.yaml`` in :func:`pipeline_dirs`."""
    path = Path(name_or_path)
    if path.exists() and not path.is_dir():
        return path  # a pipe or device is refused when read, never opened
    if path.parent == Path(".") and path.name:
        stem = path.stem if path.suffix in (".yaml", ".yml") else path.name
        for d in pipeline_dirs():
            for suffix in (".yaml", ".yml"):
                if (d / f"{stem}{suffix}").is_file():
                    return d / f"{stem}{suffix}"
    where = ", ".join(str(d) for d in pipeline_dirs())
    known = ", ".join(list_pipelines()) or "none"
    raise ConfigError(f"{path}: no such pipeline file or name (names are looked up in {where}); known: {known}")


def compose_pipeline(path: str | Path, overrides: list[str] | None = None, *, env=None) -> tuple[dict, str]:
    """The merged plain-data pipeline (fragments < pipeline < overrides, environment interpolated) and a
    description of its sources for error messages. ``path`` is a file or a name (see :func:`find_pipeline`)."""
    path = find_pipeline(path)
    data = load_yaml(path)
    defaults = data.get("defaults", [])
    override_layer: dict[str, Any] = {}
    for text in overrides or []:
        override_layer = deep_merge(override_layer, parse_override(text))
    defaults = override_layer.get("defaults", defaults)
    if not isinstance(defaults, list) or not all(isinstance(d, str) for d in defaults):
        raise ConfigError(f"{path}: defaults: expected a list of fragment names, got {defaults!r}")
    layers = [(str(f), load_yaml(f)) for f in (find_fragment(d, path) for d in defaults)]
    layers.append((str(path), data))
    merged = compose(layers, overrides, env=env)
    source = str(path) + (" with overrides " + " ".join(overrides) if overrides else "")
    return merged, source
