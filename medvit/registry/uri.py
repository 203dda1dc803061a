"""Model registry addresses: ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION``, and the default tracking URI.

Pure string handling; nothing here imports MLflow.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from medvit.errors import InputError

SCHEME = "models:/"
DEFAULT_DB = "mlruns.db"
_NAME_OK = re.compile(r"^[^/@:\s][^/@:]*$")
_ALIAS_OK = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class ModelRef:
    """A parsed registry address: a registered model ``name`` and either a ``version`` or an ``alias``."""

    name: str
    version: str | None = None
    alias: str | None = None

    @property
    def uri(self) -> str:
        """The address written back as ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""
        return f"{SCHEME}{self.name}@{self.alias}" if self.alias else f"{SCHEME}{self.name}/{self.version}"


def is_model_uri(text: str | os.PathLike) -> bool:
    """Whether ``text`` is a registry address (``models:/...``) rather than a local path."""
    return isinstance(text, str) and text.startswith(SCHEME)


def parse_model_uri(uri: str) -> ModelRef:
    """Split ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (``VERSION`` a number or ``latest``).

    Raises:
        InputError: Not of either form (one line naming the URI).
    """
    if not is_model_uri(uri):
        raise InputError(f"{uri}: not a registry URI (expected models:/NAME@ALIAS or models:/NAME/VERSION)")
    rest = uri[len(SCHEME) :]
    if "@" in rest:
        name, _, alias = rest.rpartition("@")
        if not _ALIAS_OK.match(alias):
            raise InputError(f"{uri}: bad alias {alias!r} (letters, digits, '_' and '-' only)")
        ref = ModelRef(name=name, alias=alias)
    else:
        name, _, version = rest.rpartition("/")
        if not (version.isdigit() and int(version) > 0) and version != "latest":
            raise InputError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION (VERSION a number)")
        ref = ModelRef(name=name, version=version)
    check_model_name(ref.name, source=uri)
    return ref


def check_model_name(name: str, *, source: str | None = None) -> str:
    """Return ``name`` when it can be a registered model name (no ``/``, ``@``, ``:``, not blank).

    Raises:
        InputError: Unusable name (one line naming ``source`` or the name).
    """
    if not name or not _NAME_OK.match(name) or name != name.strip():
        where = source or repr(name)
        raise InputError(f"{where}: bad model name {name!r} (no '/', '@' or ':', not blank)")
    return name


def check_alias(alias: str) -> str:
    """Return ``alias`` when MLflow accepts it as an alias (``champion``, ``staging-2``; not ``v3`` or ``latest``).

    Raises:
        InputError: Unusable alias.
    """
    if not _ALIAS_OK.match(alias) or re.fullmatch(r"[vV]\d+", alias) or alias.lower() == "latest":
        raise InputError(f"alias {alias!r}: use letters, digits, '_' and '-' (not 'latest' or v<number>)")
    return alias


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///mlruns.db`` in the current folder (as pipelines use)."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return env or f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI, or ``None`` for any other kind."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri[len("sqlite:///") :].split("?", 1)[0])


def is_http(tracking_uri: str) -> bool:
    """Whether the tracking URI is a tracking server (``http(s)://``)."""
    return tracking_uri.startswith(("http://", "https://"))
