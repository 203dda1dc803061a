"""What ``-m`` names: a model package folder, a run folder or checkpoint, or an MLflow registry URI."""

from __future__ import annotations

import os
from typing import Any

from medvit.errors import InputError
from medvit.package import ModelPackage, load_package

REGISTRY_PREFIX = "models:/"
_KEEP = {"name": "registered_name", "alias": "alias", "resolved_uri": "resolved_uri", "run_id": "run_id"}


def resolve_model(model: ModelPackage | str | os.PathLike) -> tuple[ModelPackage, dict[str, Any]]:
    """Load the package ``model`` names and say where it came from.

    Args:
        model: A loaded :class:`~medvit.package.ModelPackage`, a package or run folder, a run's ``.ckpt``,
            or ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` (through :mod:`medvit.registry`).

    Returns:
        ``(package, source)`` where ``source`` holds ``uri`` (what was asked for), ``version`` (the registry
        version it resolved to, else ``None``) and ``package`` (the package folder); for registry URIs also
        ``registered_name``, ``alias``, ``resolved_uri`` and ``run_id`` where the registry gives them.

    Raises:
        InputError: No such package, or a registry URI that cannot be resolved (one line).
    """
    if isinstance(model, ModelPackage):
        return model, {"uri": str(model.path), "version": None, "package": str(model.path)}
    uri = os.fspath(model)
    if not uri.startswith(REGISTRY_PREFIX):
        package = load_package(uri)
        return package, {"uri": uri, "version": None, "package": str(package.path)}
    try:
        from medvit.registry import resolve_model_uri  # lazy: predict from a package folder loads no MLflow

        package_dir, info = resolve_model_uri(uri)
    except ModuleNotFoundError as exc:
        if exc.name not in ("medvit.registry", "mlflow"):
            raise
        missing = "mlflow is not installed" if exc.name == "mlflow" else "medvit.registry is not available"
        raise InputError(
            f"{uri}: cannot resolve a registry URI ({missing}); pass a model package folder"
        ) from None
    info = dict(info or {})
    package = load_package(package_dir)
    version = info.get("version")
    return package, {
        "uri": uri,
        "version": None if version is None else str(version),
        "package": str(package.path),
        **{_KEEP[k]: v for k, v in info.items() if k in _KEEP and v is not None},
    }
