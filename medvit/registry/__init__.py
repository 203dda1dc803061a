"""MLflow model registry for medvit model packages.

A package becomes an MLflow Model with a ``medvit`` flavour and a ``python_function`` flavour (so
``mlflow.pyfunc.load_model`` and ``mlflow models serve`` run it), is registered as a model version with
descriptive tags, is addressed as ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``, and is downloaded once
per version into a local cache for ``medvit predict``.

Modules: ``uri`` (addresses, default tracking URI), ``session`` (MLflow calls: URI, quiet, fast failure,
one-line errors), ``flavor`` (the MLflow flavour and pyfunc), ``tags``, ``register`` (register packages),
``models`` (look up, alias, list, show), ``cache`` (resolve URIs to cached packages).
``import medvit.registry`` does not import MLflow.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "default_tracking_uri": "medvit.registry.uri",
    "is_model_uri": "medvit.registry.uri",
    "parse_model_uri": "medvit.registry.uri",
    "ModelRef": "medvit.registry.uri",
    "register_package": "medvit.registry.register",
    "set_alias": "medvit.registry.models",
    "list_models": "medvit.registry.models",
    "show_model": "medvit.registry.models",
    "resolve_model_uri": "medvit.registry.cache",
    "cache_root": "medvit.registry.cache",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'medvit.registry' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
