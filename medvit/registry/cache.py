"""Resolve ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` to a local package, downloaded once per version.

Cache layout: ``$MEDVIT_CACHE/models/<registry>/<name>/<version>/`` (``MEDVIT_CACHE`` default
``~/.cache/medvit``), where ``<registry>`` is a short hash of the tracking URI so that two servers holding
the same model name do not collide. An entry is the package folder (``medvit.yaml``,
``model.safetensors``) plus ``registry.json`` (where it came from). It is downloaded into a temporary folder
beside it, checked with :func:`medvit.load_package` (and the version's ``package_sha256`` tag), then renamed
into place: an error never leaves a partial entry. Processes sharing a cache download a version once: the
download runs under a lock beside the entry (``.<version>.lock``), and a process that waited for it finds the
entry complete. A complete entry is never rewritten, so a reader's package never changes under it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from medvit.errors import InputError, one_line
from medvit.io.atomic import atomic_dir, file_lock
from medvit.registry.flavor import FLAVOR_NAME
from medvit.registry.models import model_version, registered_model
from medvit.registry.session import display_uri, mlflow_session, registry_errors, resolve_tracking_uri, unreachable
from medvit.registry.uri import ModelRef, is_http, parse_model_uri
from medvit.resources import cache_dir
from medvit.yamlfile import read_yaml

RECORD = "registry.json"
_VERSION = re.compile(r"[1-9][0-9]{0,9}")  # MLflow model versions are positive integers
_ARTIFACT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_LOCAL_SCHEMES = ("", "file")


def checked_version(version: Any, uri: str) -> str:
    """A version the registry answered, as the decimal number it must be: it names a cache folder, so anything
    else (``..``, a path, a URL) is refused.

    Raises:
        InputError: Not a positive integer (one line naming the URI and the value).
    """
    text = str(version)
    if not _VERSION.fullmatch(text):
        raise InputError(f"{uri}: the registry answered version {text[:80]!r}, which is not a version number")
    return text


def checked_download_root(root: str, tracking_uri: str, uri: str) -> str:
    """The download location a registry answered: a server may not point medvit at local files.

    Raises:
        InputError: A ``file:`` URI or plain path from an HTTP(S) tracking server.
    """
    scheme = urlparse(root).scheme.lower()
    if is_http(tracking_uri) and (scheme in _LOCAL_SCHEMES or len(scheme) == 1):  # "C:" is a drive
        raise InputError(f"{uri}: the registry server answered a local download location; refusing to read it")
    return root


def cache_root() -> Path:
    """``$MEDVIT_CACHE/models`` (``MEDVIT_CACHE`` default ``~/.cache/medvit``)."""
    return cache_dir("models")


def cache_entry(tracking_uri: str, name: str, version: str | int) -> Path:
    """The cache folder of one registered model version in one registry."""
    registry = hashlib.sha256(tracking_uri.encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    if safe != name:
        safe = f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return cache_root() / registry / safe / str(version)


def resolve_model_uri(uri: str, *, tracking_uri: str | None = None) -> tuple[Path, dict[str, Any]]:
    """The local package folder of a registry URI, downloaded into the cache on first use.

    Args:
        uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``models:/NAME/latest``.
        tracking_uri: Tracking (registry) URI; default :func:`~medvit.registry.default_tracking_uri`.

    Returns:
        The package folder and ``name``, ``version``, ``uri`` (as given), ``resolved_uri``
        (``models:/NAME/VERSION``), ``alias``, ``run_id``, ``model_id``, ``source``, ``tracking_uri``,
        ``package_sha256`` and ``cached`` (whether it was already in the cache).

    Raises:
        InputError: Malformed URI, unknown model, version or alias, not a medvit model, unreachable server,
            a download that fails or is not a valid package (one line naming the URI).
    """
    ref = parse_model_uri(uri)
    turi = resolve_tracking_uri(tracking_uri)
    with mlflow_session(turi, subject=uri) as client:
        mv = _lookup(client, ref, uri)
        entry = cache_entry(turi, ref.name, mv.version)
        cached = _valid_entry(entry, mv.source)
        if not cached:
            with _entry_lock(entry, uri):
                if not _valid_entry(entry, mv.source):  # else another process downloaded it while we waited
                    _download(client, mv, entry, uri)
    record = json.loads((entry / RECORD).read_text())
    return entry, {**record, "uri": uri, "alias": ref.alias, "cached": cached}


def _lookup(client, ref: ModelRef, uri: str):
    """The model version ``ref`` names; unknown model, alias or version become one-line errors."""
    rm = registered_model(client, ref.name, subject=uri)
    version = ref.version
    if ref.alias is not None:
        aliases = rm.aliases or {}
        if ref.alias not in aliases:
            known = ", ".join(sorted(aliases)) or "none"
            raise InputError(f"{uri}: model {ref.name!r} has no alias {ref.alias!r} (aliases: {known})")
        version = checked_version(aliases[ref.alias], uri)
    elif version == "latest":
        versions = [int(checked_version(v.version, uri)) for v in rm.latest_versions or []]
        if not versions:
            raise InputError(f"{uri}: model {ref.name!r} has no versions")
        version = str(max(versions))
    mv = model_version(client, ref.name, version, subject=uri)
    if checked_version(mv.version, uri) != str(version):
        raise InputError(f"{uri}: the registry answered version {mv.version} for version {version}")
    if mv.name != ref.name:
        raise InputError(f"{uri}: the registry answered model {str(mv.name)[:80]!r} for {ref.name!r}")
    return mv


def _model_id(source: str) -> str | None:
    """``m-...`` of a ``models:/m-...`` source (MLflow 3 logged models), else ``None``."""
    rest = source[len("models:/") :] if source.startswith("models:/") else ""
    return rest if rest.startswith("m-") and "/" not in rest else None


def _valid_entry(entry: Path, source: str) -> bool:
    """Whether ``entry`` is a complete download of the version whose MLflow Model is at ``source``."""
    try:
        record = json.loads((entry / RECORD).read_text())
    except (OSError, ValueError):
        return False
    return record.get("source") == source and (entry / "medvit.yaml").is_file()


@contextlib.contextmanager
def _entry_lock(entry: Path, uri: str) -> Iterator[None]:
    """Hold the lock of cache entry ``entry`` (one download of a version at a time, across processes)."""
    with contextlib.ExitStack() as held:
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            held.enter_context(file_lock(entry.parent / f".{entry.name}.lock"))
        except OSError as exc:
            raise InputError(f"{uri}: cannot write to the model cache {cache_root()} ({one_line(exc)})") from None
        yield


def _download(client, mv, entry: Path, uri: str) -> None:
    """Download version ``mv``'s package into ``entry`` atomically (temp folder beside it, then rename).

    A stale entry (the registered model was re-created) is replaced; nothing outside the cache is touched.
    """
    root = client.get_model_version_download_uri(mv.name, mv.version).rstrip("/")
    root = checked_download_root(root, client.tracking_uri, uri)
    cache = Path(os.path.abspath(cache_root()))
    if cache not in Path(os.path.abspath(entry)).parents:  # lexical: a linked cache folder stays allowed
        raise InputError(f"{uri}: version {mv.version!r} does not name a folder inside the cache {cache}")
    with atomic_dir(entry, overwrite=True) as tmp:  # overwrite: a stale entry of a re-created model
        scratch = tmp / ".download"
        got, sha256 = _fetch_package(root, scratch, mv, uri)
        for item in got.iterdir():
            item.rename(tmp / item.name)
        shutil.rmtree(scratch)
        (tmp / RECORD).write_text(json.dumps(_record(client, mv, sha256), indent=2))


def _fetch_package(root: str, tmp: Path, mv, uri: str) -> tuple[Path, str]:
    """The MLflow Model at ``root``: check it is a medvit model, download its package into ``tmp``, check that;
    returns the package folder and its hash."""
    from mlflow.artifacts import download_artifacts  # lazy: MLflow only for registry commands

    from medvit.package import load_package  # lazy: keeps models list free of torch

    not_medvit = f"{uri}: not a medvit model (version {mv.version} has no '{FLAVOR_NAME}' flavour)"
    try:
        mlmodel = Path(download_artifacts(artifact_uri=f"{root}/MLmodel", dst_path=str(tmp / "meta")))
        flavors = (read_yaml(mlmodel, error=InputError) or {}).get("flavors") or {}
    except (*registry_errors(), InputError, AttributeError) as exc:
        if unreachable(exc):
            raise
        raise InputError(f"{not_medvit[:-1]}: no readable MLmodel)") from None
    if not isinstance(flavors, dict) or not isinstance(flavors.get(FLAVOR_NAME), dict):
        raise InputError(not_medvit)
    sub = str(flavors[FLAVOR_NAME].get("package", "package"))
    if not _ARTIFACT_NAME.fullmatch(sub) or sub.strip(".") == "":
        raise InputError(f"{uri}: the MLmodel names package folder {sub[:80]!r}, not a plain folder name")
    got = Path(download_artifacts(artifact_uri=f"{root}/{sub}", dst_path=str(tmp / "dl")))
    try:
        pkg = load_package(got)
    except InputError as exc:
        reason = str(exc).replace(str(got), "package")
        raise InputError(f"{uri}: the registered package does not load ({reason})") from None
    expected = (mv.tags or {}).get("package_sha256")
    if expected and expected != pkg.sha256:
        raise InputError(f"{uri}: downloaded package does not match the version's package_sha256 tag")
    return got, pkg.sha256


def _record(client, mv, sha256: str) -> dict[str, Any]:
    """What ``registry.json`` keeps about a cache entry (and :func:`resolve_model_uri` returns)."""
    return {
        "name": mv.name,
        "version": str(mv.version),
        "resolved_uri": f"models:/{mv.name}/{mv.version}",
        "run_id": mv.run_id or None,
        "model_id": getattr(mv, "model_id", None) or _model_id(mv.source),
        "source": mv.source,
        "tracking_uri": display_uri(client.tracking_uri),
        "package_sha256": sha256,
    }
