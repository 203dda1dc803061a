"""Registered models: look one up, move an alias, list them, show one with its versions."""

from __future__ import annotations

import re
import time
from typing import Any

from medvit.errors import InputError
from medvit.registry.session import display_uri, is_not_found, mlflow_session, registry_errors
from medvit.registry.tags import MARKER
from medvit.registry.uri import check_alias, check_model_name


def registered_model(client, name: str, *, subject: str):
    """The registered model ``name``.

    Raises:
        InputError: No such model (one line starting with ``subject``).
    """
    try:
        return client.get_registered_model(name)
    except registry_errors() as exc:
        if is_not_found(exc):
            where = display_uri(client.tracking_uri)
            raise InputError(f"{subject}: no registered model {name!r} in {where}") from None
        raise


def model_version(client, name: str, version: str, *, subject: str):
    """Version ``version`` of registered model ``name``.

    Raises:
        InputError: No such version (one line starting with ``subject``).
    """
    try:
        return client.get_model_version(name, version)
    except registry_errors() as exc:
        if is_not_found(exc):
            raise InputError(f"{subject}: model {name!r} has no version {version}") from None
        raise


_CONFLICT = re.compile(r"UniqueViolation|duplicate key|UNIQUE constraint failed|IntegrityError", re.IGNORECASE)


def point_alias(client, name: str, alias: str, version: str | int, *, attempts: int = 5) -> None:
    """``client.set_registered_model_alias``, again when another process created the same new alias at the
    same moment (MLflow's store inserts a new alias row, and the second insert violates its key; the retry
    finds the row and updates it)."""
    for attempt in range(attempts):
        try:
            client.set_registered_model_alias(name, alias, str(version))
            return
        except registry_errors() as exc:
            if attempt == attempts - 1 or not _CONFLICT.search(str(exc)):
                raise
            time.sleep(0.05 * (attempt + 1))


def set_alias(name: str, alias: str, version: str | int, *, tracking_uri: str | None = None) -> dict[str, Any]:
    """Point ``alias`` of registered model ``name`` at ``version`` (moving it if set elsewhere).

    Returns:
        ``name``, ``alias``, ``version``, ``previous`` (the version it pointed at, or ``None``), ``uri``.

    Raises:
        InputError: Unknown model or version, bad alias, unreachable server.
    """
    check_model_name(name)
    check_alias(alias)
    version = str(version)
    if not version.isdigit():
        raise InputError(f"models:/{name}: version must be a number, got {version!r}")
    with mlflow_session(tracking_uri, subject=f"models:/{name}@{alias}") as client:
        rm = registered_model(client, name, subject=f"models:/{name}")
        model_version(client, name, version, subject=f"models:/{name}/{version}")
        previous = (rm.aliases or {}).get(alias)
        point_alias(client, name, alias, version)
    return {
        "name": name,
        "alias": alias,
        "version": version,
        "previous": None if previous is None else str(previous),
        "uri": f"models:/{name}@{alias}",
    }


def list_models(*, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Registered models: ``name``, ``latest_version``, ``aliases`` ({alias: version}), ``task``, ``medvit``."""
    with mlflow_session(tracking_uri, subject="models") as client:
        models = _all(client.search_registered_models)
    rows = []
    for rm in sorted(models, key=lambda m: m.name):
        versions = [int(v.version) for v in rm.latest_versions or []]
        tags = rm.tags or {}
        rows.append(
            {
                "name": rm.name,
                "latest_version": str(max(versions)) if versions else None,
                "aliases": _aliases(rm),
                "task": tags.get("task"),
                "medvit": tags.get(MARKER) == "1",
            }
        )
    return rows


def show_model(name: str, *, tracking_uri: str | None = None) -> dict[str, Any]:
    """A registered model: ``name``, ``aliases``, ``tags`` and its ``versions`` (newest first) with their tags.

    Raises:
        InputError: Unknown model, unreachable server.
    """
    check_model_name(name)
    with mlflow_session(tracking_uri, subject=f"models:/{name}") as client:
        rm = registered_model(client, name, subject=f"models:/{name}")
        escaped = name.replace("'", "\\'")
        versions = _all(client.search_model_versions, filter_string=f"name = '{escaped}'")
    aliases = _aliases(rm)
    by_version: dict[str, list[str]] = {}
    for a, v in aliases.items():
        by_version.setdefault(v, []).append(a)
    rows = [
        {
            "version": str(mv.version),
            "created": mv.creation_timestamp,
            "status": mv.status,
            "run_id": mv.run_id,
            "source": mv.source,
            "aliases": by_version.get(str(mv.version), []),
            "tags": dict(sorted((mv.tags or {}).items())),
        }
        for mv in sorted(versions, key=lambda m: -int(m.version))
    ]
    return {"name": rm.name, "aliases": aliases, "tags": dict(rm.tags or {}), "versions": rows}


def _aliases(rm) -> dict[str, str]:
    return {a: str(v) for a, v in sorted((rm.aliases or {}).items())}


def _all(search, **kwargs) -> list[Any]:
    """Every page of an MLflow ``search_*`` call."""
    out, token = [], None
    while True:
        page = search(max_results=200, page_token=token, **kwargs)
        out.extend(page)
        token = page.token
        if not token:
            return out
