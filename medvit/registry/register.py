"""Register model packages as MLflow model versions (logged as MLflow Models of the ``medvit`` flavour)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from medvit.errors import InputError
from medvit.registry import flavor
from medvit.registry.models import point_alias
from medvit.registry.session import (
    display_uri,
    error_code,
    is_not_found,
    mlflow_session,
    registry_errors,
    resolve_tracking_uri,
)
from medvit.registry.tags import MARKER, package_tags, user_tags
from medvit.registry.uri import check_alias, check_model_name, sqlite_path

EXPERIMENT = "medvit-registry"
MODEL_NAME = "model"
_EXISTS = ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")


def register_package(
    source: str | os.PathLike,
    *,
    name: str,
    alias: str | None = None,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    tags: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Log a model package as an MLflow Model (``medvit`` + ``python_function`` flavours) and register it.

    The MLflow Model is logged to ``run_id`` when given (the pipeline run that trained the package), else to
    the run named in the package's provenance when this tracking store has it, else to a new run in the
    ``medvit-registry`` experiment. The new version carries the tags of
    :func:`~medvit.registry.tags.package_tags` (backbone, adapter, head, task, data card, metrics, ...).

    Args:
        source: Package folder, its ``medvit.yaml``, a run folder holding ``package/`` or a run's ``.ckpt``.
        name: Registered model name (created when new).
        alias: Alias to point at the new version (``champion``), moved there if it exists.
        tracking_uri: Tracking and registry URI; default :func:`~medvit.registry.default_tracking_uri`.
        run_id: MLflow run to log the model to.
        tags: Extra version tags (keys under ``medvit.`` are reserved).

    Returns:
        ``name``, ``version``, ``uri`` (``models:/NAME/VERSION``), ``alias``, ``run_id``, ``model_id``,
        ``source``, ``tracking_uri`` and ``tags``.

    Raises:
        InputError: Bad package, name, alias or tag; unknown run; unreachable server (one line).
    """
    from medvit.package import load_package  # lazy: keeps models list free of torch

    check_model_name(name)
    if alias is not None:
        check_alias(alias)
    extra = user_tags(tags)
    pkg = load_package(source)
    uri = resolve_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="medvit-register-") as tmp:
        pkg = _as_package_folder(pkg, Path(tmp))  # a .ckpt becomes a package folder
        with mlflow_session(uri, subject=f"models:/{name}", create=True) as client:
            return _register(client, pkg, name=name, alias=alias, run_id=run_id, extra=extra, uri=uri)


def _register(client, pkg, *, name, alias, run_id, extra, uri) -> dict[str, Any]:
    run_id, exp_id, run_metrics = _pick_run(client, run_id, pkg, name=name, uri=uri)
    version_tags = {**package_tags(pkg, run_metrics=run_metrics), **extra}
    model_id = _log_model(client, pkg.path, run_id=run_id, exp_id=exp_id, tags=version_tags)
    try:
        client.create_registered_model(name, tags={MARKER: "1", "task": pkg.spec.task})
    except registry_errors() as exc:
        if error_code(exc) not in _EXISTS:  # created meanwhile by another process: use it
            raise
    mv = client.create_model_version(
        name, source=f"models:/{model_id}", run_id=run_id, tags=version_tags, model_id=model_id
    )
    if alias is not None:
        point_alias(client, name, alias, mv.version)
    return {
        "name": name,
        "version": str(mv.version),
        "uri": f"models:/{name}/{mv.version}",
        "alias": alias,
        "run_id": run_id,
        "model_id": model_id,
        "source": mv.source,
        "tracking_uri": display_uri(uri),
        "tags": version_tags,
    }


def _log_model(client, folder: Path, *, run_id: str, exp_id: str, tags: dict[str, str]) -> str:
    """Log the package as an MLflow (logged) Model of ``run_id``; returns its model id."""
    from mlflow.entities import LoggedModelOutput  # lazy: MLflow only for registry commands
    from mlflow.models import Model  # lazy: MLflow only for registry commands

    logged = client.create_logged_model(
        experiment_id=exp_id, name=MODEL_NAME, source_run_id=run_id, tags=tags, model_type=flavor.FLAVOR_NAME
    )
    try:
        with tempfile.TemporaryDirectory(prefix="medvit-mlmodel-") as tmp:
            meta = Model(
                artifact_path=logged.artifact_location,
                model_uuid=logged.model_id,
                run_id=run_id,
                model_id=logged.model_id,
            )
            flavor.save_model(Path(tmp) / "model", package=folder, mlflow_model=meta)
            client.log_model_artifacts(logged.model_id, str(Path(tmp) / "model"))
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    client.finalize_logged_model(logged.model_id, "READY")
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    return logged.model_id


def _as_package_folder(pkg, tmp: Path):
    """``pkg``, or for a checkpoint the package written from the run's spec and the checkpoint's weights."""
    if pkg.state_dict is None:
        return pkg
    from medvit.package import load_package, save_package  # lazy: keeps models list free of torch

    return load_package(save_package(pkg.build(), pkg.spec, tmp / "package"))


def _pick_run(client, run_id: str | None, pkg, *, name: str, uri: str) -> tuple[str, str, dict[str, float]]:
    """The run to log to, its experiment and metrics: ``run_id``, else the package's own run if this store
    has it, else a new run in the ``medvit-registry`` experiment."""
    if run_id is not None:
        try:
            run = client.get_run(run_id)
        except registry_errors() as exc:
            if is_not_found(exc):
                raise InputError(f"run {run_id!r}: no such MLflow run in {display_uri(uri)}") from None
            raise
        return run_id, run.info.experiment_id, dict(run.data.metrics)
    own = pkg.spec.provenance.run_id
    if own:
        try:
            run = client.get_run(own)
            return own, run.info.experiment_id, dict(run.data.metrics)
        except registry_errors() as exc:
            if not is_not_found(exc):
                raise
    exp_id = _registry_experiment(client, uri)
    run = client.create_run(exp_id, run_name=f"register-{name}", tags={MARKER: "1"})
    client.set_terminated(run.info.run_id)
    return run.info.run_id, exp_id, {}


def _registry_experiment(client, uri: str) -> str:
    """The id of the ``medvit-registry`` experiment, created when missing (by this process or, at the same
    moment, by another: then the one that won is used)."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    db = sqlite_path(uri)  # artifacts beside a sqlite database (not in whatever folder register ran from)
    location = (db.resolve().parent / "mlruns" / EXPERIMENT).as_uri() if db is not None else None
    try:
        return client.create_experiment(EXPERIMENT, artifact_location=location)
    except registry_errors() as exc:
        if error_code(exc) not in _EXISTS:
            raise
    return client.get_experiment_by_name(EXPERIMENT).experiment_id
