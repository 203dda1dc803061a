"""MLflow model registry for medvit model packages.

A package becomes an MLflow Model with a ``medvit`` flavour and a ``python_function`` flavour (so
``mlflow.pyfunc.load_model`` and ``mlflow models serve`` run it), is registered as a model version with
descriptive tags, is addressed as ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``, and is downloaded once
per version into a local cache for ``medvit predict``.

Modules: ``uri`` (addresses, default tracking URI), ``session`` (MLflow calls: URI, quiet, fast failure,
one-line errors), ``flavor`` (the MLflow flavour and pyfunc), ``tags``, ``register`` (register packages),
``models`` (look up, alias, list, show), ``cache`` (resolve URIs to cached packages).
``import medvit.registry`` imports neither MLflow nor torch: they load inside the functions that use them.
"""

from __future__ import annotations

from medvit.registry.cache import cache_root, resolve_model_uri
from medvit.registry.models import list_models, set_alias, show_model
from medvit.registry.register import register_package
from medvit.registry.uri import ModelRef, default_tracking_uri, is_model_uri, parse_model_uri

__all__ = [
    "ModelRef",
    "cache_root",
    "default_tracking_uri",
    "is_model_uri",
    "list_models",
    "parse_model_uri",
    "register_package",
    "resolve_model_uri",
    "set_alias",
    "show_model",
]
