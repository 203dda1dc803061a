"""One MLflow conversation: the tracking URI in force, quiet logging, fast failure, errors as one line.

Every registry function runs its MLflow calls inside :func:`mlflow_session`, which

* points MLflow (client, fluent ``Model.log``, artifact downloads) at one tracking URI and restores the
  caller's settings afterwards,
* fails fast when a tracking server is down (no retries, a short timeout) unless the user set
  ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``MLFLOW_HTTP_REQUEST_TIMEOUT`` themselves,
* keeps MLflow's log lines and warnings off the console,
* turns MLflow and connection errors into :class:`~medvit.errors.InputError` with one line naming the URI.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator
from typing import Any

from medvit.errors import InputError, one_line
from medvit.registry.uri import default_tracking_uri, is_http, sqlite_path

SESSION_ENV = {  # unless the user set them: fail fast, print nothing besides medvit's own lines
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
_QUIET_LOGGERS = ("mlflow", "alembic")
_UNREACHABLE = re.compile(
    r"Max retries exceeded|Connection refused|Failed to establish|NewConnectionError|Name or service not known"
    r"|timed out|RemoteDisconnected|Connection aborted|ConnectionResetError|nodename nor servname",
    re.IGNORECASE,
)


def display_uri(uri: str) -> str:
    """``uri`` without any ``user:password@`` part, for messages."""
    return re.sub(r"(://)[^/@\s]*@", r"\1", uri)


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    """``tracking_uri`` when given, else :func:`~medvit.registry.uri.default_tracking_uri`; a relative
    ``sqlite:///`` path is made absolute (so one database has one cache key wherever it is named from)."""
    uri = (tracking_uri or "").strip() or default_tracking_uri()
    db = sqlite_path(uri)
    if db is not None and not db.is_absolute():
        query = uri.partition("?")[1:]
        uri = f"sqlite:///{db.resolve()}{''.join(query)}"
    return uri


@contextlib.contextmanager
def mlflow_session(tracking_uri: str | None = None, *, subject: str, create: bool = False) -> Iterator[Any]:
    """Run MLflow calls against ``tracking_uri`` (default: :func:`default_tracking_uri`); yields a client.

    MLflow, connection and database errors raised in the ``with`` body come out as one-line
    :class:`~medvit.errors.InputError` about ``subject``.

    Args:
        tracking_uri: Tracking (and registry) URI.
        subject: What the calls are about (a ``models:/`` URI or model name), to start error messages with.
        create: Whether a missing ``sqlite:///`` database may be created (registering); reading
            (resolve, list, show, alias) from a database that does not exist is an error instead.

    Raises:
        InputError: Missing database or folder, unreachable server, any MLflow error (one line).
    """
    uri = resolve_tracking_uri(tracking_uri)
    db = sqlite_path(uri)
    if db is not None:
        if not create and not db.is_file():
            raise InputError(f"{subject}: no registry database {uri} (nothing registered there yet?)")
        if create and not db.parent.is_dir():
            raise InputError(f"{subject}: folder {db.parent} of the registry database does not exist")
    saved_env = {k: os.environ.get(k) for k in (*SESSION_ENV, "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"mlflow(\..*)?$")
        warnings.filterwarnings("ignore", category=FutureWarning)
        # lazy, and under these filters: MLflow configures its loggers on first import (quieted below)
        import mlflow  # lazy: MLflow only for registry commands
        from mlflow.tracking._model_registry import utils as registry_utils  # lazy: as mlflow
        from mlflow.tracking._tracking_service import utils as tracking_utils  # lazy: as mlflow

        levels = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
        for key, value in SESSION_ENV.items():
            os.environ.setdefault(key, value)
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        saved_globals = (tracking_utils._tracking_uri, registry_utils._registry_uri)
        try:
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            yield mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        except InputError:
            raise
        except registry_errors() as exc:
            raise as_input_error(exc, subject=subject, tracking_uri=uri) from None
        finally:
            mlflow.set_tracking_uri(saved_globals[0])
            registry_utils._registry_uri = saved_globals[1]
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def registry_errors() -> tuple[type[BaseException], ...]:
    """The exception types an MLflow call raises for a bad store, server, name or artifact (not for bugs)."""
    import requests  # lazy: registry commands only (MLflow's HTTP stack)
    import sqlalchemy.exc  # lazy: registry commands only (MLflow's SQL store)
    from mlflow.exceptions import MlflowException  # lazy: MLflow only for registry commands

    return MlflowException, requests.exceptions.RequestException, sqlalchemy.exc.SQLAlchemyError, OSError


def error_code(exc: BaseException) -> str | None:
    """MLflow's error code of ``exc`` (``RESOURCE_DOES_NOT_EXIST``, ...), or ``None``."""
    return getattr(exc, "error_code", None)


def is_not_found(exc: BaseException) -> bool:
    """Whether ``exc`` says that the registered model, version, alias or run does not exist."""
    return error_code(exc) in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection failure (server down, wrong host or port, timeout)."""
    import requests  # lazy: registry commands only (MLflow's HTTP stack)

    return isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout) or bool(
        _UNREACHABLE.search(str(exc))
    )


def as_input_error(exc: BaseException, *, subject: str, tracking_uri: str | None) -> InputError:
    """One-line :class:`InputError` for an MLflow failure about ``subject`` (a URI or model name)."""
    uri = display_uri(resolve_tracking_uri(tracking_uri))
    if unreachable(exc):
        return InputError(f"{subject}: cannot reach the MLflow tracking server {uri} (is it running?)")
    text = one_line(exc, 200)
    if is_http(uri):
        text = re.sub(r"API request to \S+ failed with exception ", "", text)
    return InputError(f"{subject}: {text} (tracking URI {uri})")
