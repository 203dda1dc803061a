"""DICOMweb (PACS) inputs and outputs: QIDO-RS to list a study's series, WADO-RS to download one, STOW-RS to
send outputs back.

``-i http(s)://HOST/PREFIX/studies/STUDY_UID[/series/SERIES_UID]`` names a study or one series; a series is
downloaded into a folder (file names from a counter) and read like a local DICOM folder. ``--stow ROOT`` (the
DICOMweb root, ``http(s)://HOST/PREFIX``) receives one case's DICOM outputs in one multipart request.

Credentials never come from the command line: a URL with ``user:pass@`` is refused. They come from
``MEDVIT_DICOMWEB_TOKEN`` (a bearer token), or ``MEDVIT_DICOMWEB_USER`` and ``MEDVIT_DICOMWEB_PASSWORD``, or
else a netrc file (``$NETRC`` or ``~/.netrc``) entry for the host. Requests time out
(``MEDVIT_DICOMWEB_CONNECT_TIMEOUT``, default 10 s; ``MEDVIT_DICOMWEB_READ_TIMEOUT``, default 120 s) and are
retried a bounded number of times with backoff on connection errors and 5xx answers
(``MEDVIT_DICOMWEB_RETRIES``, default 3). A series is refused before download when it declares more than
``MEDVIT_DICOMWEB_MAX_INSTANCES`` instances (default 5000) or more pixel data than the image budget
(:mod:`medvit.io.limits`), and the download stops once the files written exceed that budget.

Errors are one line (:class:`~medvit.errors.InputError`, :class:`~medvit.errors.ConfigError`) naming the URL,
which never holds credentials; patient attributes the server sends are never logged or returned.
"""

from __future__ import annotations

import contextlib
import math
import netrc
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from medvit.errors import ConfigError, InputError, MedvitError, one_line
from medvit.io.limits import BUDGET_ENV, image_budget

TOKEN_ENV = "MEDVIT_DICOMWEB_TOKEN"
USER_ENV = "MEDVIT_DICOMWEB_USER"
PASSWORD_ENV = "MEDVIT_DICOMWEB_PASSWORD"
CONNECT_TIMEOUT_ENV = "MEDVIT_DICOMWEB_CONNECT_TIMEOUT"
READ_TIMEOUT_ENV = "MEDVIT_DICOMWEB_READ_TIMEOUT"
RETRIES_ENV = "MEDVIT_DICOMWEB_RETRIES"
MAX_INSTANCES_ENV = "MEDVIT_DICOMWEB_MAX_INSTANCES"
DEFAULT_MAX_INSTANCES = 5000

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
# series that hold no image to segment (earlier SEG / RTSTRUCT outputs stored in the same study among them)
NON_IMAGE_MODALITIES = frozenset(
    {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "KO", "PR", "REG", "DOC", "FID", "AU", "ECG"}
)


@dataclass(frozen=True)
class DicomwebUrl:
    """A parsed DICOMweb URL: the service ``root`` (``http(s)://HOST/PREFIX``) and, for inputs, the study and
    optionally the series it names."""

    root: str
    study: str | None = None
    series: str | None = None

    def __str__(self) -> str:
        url = self.root
        if self.study:
            url += f"/studies/{self.study}"
        if self.series:
            url += f"/series/{self.series}"
        return url


@dataclass(frozen=True)
class RemoteSeries:
    """One series on a DICOMweb server: its URL, UIDs, modality and declared number of instances."""

    url: str
    study: str
    series: str
    modality: str
    instances: int | None


def is_dicomweb_url(text: object) -> bool:
    """Whether ``text`` is an ``http://`` or ``https://`` URL (and so not a local path)."""
    return isinstance(text, str) and text.strip().lower().startswith(("http://", "https://"))


def _checked(text: str, what: str) -> str:
    """``text`` without a trailing slash, refused when it carries credentials, a query or a fragment."""
    text = text.strip()
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InputError(f"{what}: expected an http:// or https:// URL")
    if "@" in parts.netloc:  # never echo the URL itself: it holds the secret
        safe = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
        raise ConfigError(
            f"{what} {safe}: credentials in the URL are refused; set {USER_ENV} and {PASSWORD_ENV} "
            f"(or {TOKEN_ENV}), or use a netrc file"
        )
    if parts.query or parts.fragment:
        raise InputError(f"{what} {parts.scheme}://{parts.netloc}{parts.path}: a query or fragment is not allowed")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise InputError(f"{what} {text}: bad port") from None
    return text.rstrip("/")


def parse_dicomweb_url(text: str, *, what: str = "-i") -> DicomwebUrl:
    """Parse ``http(s)://HOST/PREFIX/studies/STUDY_UID[/series/SERIES_UID]``.

    Raises:
        ConfigError: Credentials in the URL.
        InputError: Not such a URL (bad scheme, no study, malformed UIDs, a query string).
    """
    url = _checked(text, what)
    root, sep, rest = url.rpartition("/studies/")
    parts = rest.split("/")
    ok = sep and len(parts) in (1, 3) and (len(parts) == 1 or parts[1] == "series")
    uids = parts[::2] if ok else []
    if not ok or not all(_is_uid(u) for u in uids):
        raise InputError(f"{what} {url}: expected a DICOMweb URL .../studies/STUDY_UID[/series/SERIES_UID]")
    return DicomwebUrl(root, uids[0], uids[1] if len(uids) == 2 else None)


def stow_root(text: str) -> str:
    """The DICOMweb root of ``--stow`` (``http(s)://HOST/PREFIX``), checked.

    Raises:
        ConfigError: Credentials in the URL, or not an http(s) URL.
    """
    try:
        return _checked(text, "--stow")
    except InputError as exc:
        raise ConfigError(str(exc)) from None


def _is_uid(text: str) -> bool:
    return len(text) <= 64 and _UID.fullmatch(text) is not None


def _env_number(name: str, default: float, *, minimum: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= minimum):
        raise ConfigError(f"{name}={text!r}: expected a number >= {minimum:g}")
    return value


def timeouts() -> tuple[float, float]:
    """(connect, read) timeouts in seconds (``$MEDVIT_DICOMWEB_CONNECT_TIMEOUT``, ``..._READ_TIMEOUT``)."""
    return (
        _env_number(CONNECT_TIMEOUT_ENV, 10.0, minimum=0.1),
        _env_number(READ_TIMEOUT_ENV, 120.0, minimum=0.1),
    )


def _credentials(host: str) -> tuple[str, Any] | None:
    """``("bearer", token)``, ``("basic", (user, password))`` or ``None``, from the environment or netrc."""
    token = os.environ.get(TOKEN_ENV, "")
    if token:
        return "bearer", token
    user, password = os.environ.get(USER_ENV, ""), os.environ.get(PASSWORD_ENV, "")
    if user or password:
        if not (user and password):
            raise ConfigError(f"set both {USER_ENV} and {PASSWORD_ENV} (or neither)")
        return "basic", (user, password)
    explicit = os.environ.get("NETRC", "")
    file = explicit or os.path.join(os.path.expanduser("~"), ".netrc")
    if not os.path.exists(file):
        if explicit:
            raise ConfigError(f"NETRC={explicit}: no such file")
        return None
    try:
        entry = netrc.netrc(file).authenticators(host)
    except netrc.NetrcParseError as exc:  # its message may quote a token: name the file and line only
        if "permissive" in exc.msg or "owner" in exc.msg:  # ~/.netrc readable by others, or not the user's
            raise ConfigError(f"{file}: must be owned by you and readable by you only (chmod 600)") from None
        raise ConfigError(f"{file}: not a valid netrc file (line {exc.lineno})") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot be read ({exc.strerror})") from None
    if entry and entry[0] and entry[2]:
        return "basic", (entry[0], entry[2])
    return None


def _client(root: str, on_response=None):
    """A DICOMweb client for ``root``: credentials, timeouts and bounded retries with backoff on its session
    (``on_response(response)`` sees every answer)."""
    import requests  # lazy: only DICOMweb inputs and --stow need HTTP
    from dicomweb_client import DICOMwebClient  # lazy: only DICOMweb inputs and --stow need it
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retries = int(_env_number(RETRIES_ENV, 3, minimum=0))
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=0.5,
        status_forcelist=(500, 502, 503, 504),
        raise_on_status=False,  # the last answer comes back and is reported with its status
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    creds = _credentials(urlsplit(root).hostname or "")
    if creds and creds[0] == "bearer":
        session.headers["Authorization"] = f"Bearer {creds[1]}"
    elif creds:
        session.auth = creds[1]
    if on_response is not None:
        session.hooks["response"].append(lambda response, *args, **kwargs: on_response(response))
    client = DICOMwebClient(root, session=session, timeout=timeouts())
    client.set_http_retry_params(retry=False)  # retries are the session's, bounded above
    return client


@contextlib.contextmanager
def _errors(url: str, what: str = "") -> Iterator[None]:
    """HTTP and client errors as one line naming ``url`` (which holds no credentials)."""
    import requests  # lazy: only DICOMweb inputs and --stow need HTTP

    name = f"{what} {url}" if what else url
    try:
        yield
    except MedvitError:
        raise
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else 0
        reason = exc.response.reason if exc.response is not None else ""
        if code in (401, 403):
            raise ConfigError(
                f"{name}: the server refused the credentials (HTTP {code}); set {USER_ENV} and {PASSWORD_ENV}, "
                f"or {TOKEN_ENV}, or a netrc entry for the host"
            ) from None
        if code == 404:
            raise InputError(f"{name}: not found on the server (HTTP 404)") from None
        raise InputError(f"{name}: the server answered HTTP {code} {reason}".rstrip()) from None
    except requests.ConnectionError as exc:
        if "Read timed out" in str(exc):  # read retries used up: urllib3 reports them as a connection error
            raise InputError(f"{name}: no answer within {timeouts()[1]:g} s (set {READ_TIMEOUT_ENV})") from None
        timed_out = isinstance(exc, requests.ConnectTimeout)
        why = "connection timed out" if timed_out else "connection refused or host unreachable"
        raise InputError(f"{name}: cannot connect to the server ({why})") from None
    except requests.Timeout:
        raise InputError(f"{name}: no answer within {timeouts()[1]:g} s (set {READ_TIMEOUT_ENV})") from None
    except requests.RequestException as exc:
        raise InputError(f"{name}: request failed ({type(exc).__name__})") from None
    except (ValueError, KeyError, TypeError) as exc:  # a malformed answer the client could not decode
        raise InputError(f"{name}: unexpected answer from the server ({one_line(exc, 120)})") from None


def _value(item: dict, tag: str, default: Any = None) -> Any:
    """The first value of ``tag`` in a DICOM JSON object."""
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else default


def list_series(url: str, *, series: str | None = None) -> list[RemoteSeries]:
    """The image series that a study or series URL names (QIDO-RS), in series-UID order.

    Args:
        url: ``.../studies/STUDY_UID`` (every image series of the study; SEG, RTSTRUCT, SR and other non-image
            series are left out) or ``.../studies/STUDY_UID/series/SERIES_UID``.
        series: A series UID (or unique prefix; ``UID#k`` picks a sub-series later) to keep.

    Raises:
        InputError: An unknown study or series, a study without image series, or a server error.
        ConfigError: Credentials refused.
    """
    where = parse_dicomweb_url(url)
    client = _client(where.root)
    filters = {"SeriesInstanceUID": where.series} if where.series else None
    with _errors(str(where), "-i"):
        found = client.search_for_series(where.study, search_filters=filters)
    items = []
    for item in found:
        uid = str(_value(item, "0020000E", ""))
        if not _is_uid(uid) or where.series and uid != where.series:
            continue  # a server answer that is not a series of this query
        count = _value(item, "00201209")
        items.append(
            RemoteSeries(
                url=str(DicomwebUrl(where.root, where.study, uid)),
                study=where.study or "",
                series=uid,
                modality=str(_value(item, "00080060", "")).upper(),
                instances=int(count) if count is not None else None,
            )
        )
    if not items:
        kind = "series" if where.series else "study"
        raise InputError(f"-i {where}: no such {kind} on the server")
    if not where.series:
        items = [s for s in items if s.modality not in NON_IMAGE_MODALITIES]
        if not items:
            raise InputError(f"-i {where}: the study holds no image series")
    if series is not None:
        prefix = series.partition("#")[0]
        items = [s for s in items if s.series.startswith(prefix)]
        if len(items) != 1:
            many = "matches several series" if items else "matches no series"
            raise InputError(f"--series {series}: {many} of {where}")
    return sorted(items, key=lambda s: s.series)


def max_instances() -> int:
    """Instances one downloaded series may hold (``$MEDVIT_DICOMWEB_MAX_INSTANCES``, default 5000)."""
    return int(_env_number(MAX_INSTANCES_ENV, DEFAULT_MAX_INSTANCES, minimum=1))


def _declared_bytes(item: dict) -> int:
    rows, cols = int(_value(item, "00280010", 0) or 0), int(_value(item, "00280011", 0) or 0)
    samples, bits = int(_value(item, "00280002", 1) or 1), int(_value(item, "00280100", 16) or 16)
    frames = int(_value(item, "00280008", 1) or 1)
    return rows * cols * samples * frames * max(1, math.ceil(bits / 8))


def download_series(url: str, folder: str | os.PathLike) -> list[Path]:
    """Download the instances of the series that ``url`` names into ``folder`` (WADO-RS).

    Sizes are checked first: the declared number of instances against ``$MEDVIT_DICOMWEB_MAX_INSTANCES`` and
    the declared pixel data (from the series metadata) against the image budget; the download stops when the
    files written exceed that budget. Files are named ``00001.dcm``, ``00002.dcm``, ... (nothing the server
    sends names a file).

    Returns:
        The files written.

    Raises:
        InputError: Not a series URL, an unknown series, a series above the bounds, or a server error.
        ConfigError: Credentials refused.
    """
    import pydicom  # lazy: pydicom is a dependency, but loading it is not free

    where = parse_dicomweb_url(url)
    if where.series is None:
        raise InputError(f"-i {where}: names a study; a series URL (.../series/SERIES_UID) is needed here")
    folder = Path(folder)
    limit, budget = max_instances(), image_budget()
    client = _client(where.root)
    name = str(where)
    with _errors(name, "-i"):
        found = client.search_for_series(where.study, search_filters={"SeriesInstanceUID": where.series})
        if not any(_value(item, "0020000E") == where.series for item in found):
            raise InputError(f"-i {name}: no such series on the server")
        count = next((_value(i, "00201209") for i in found if _value(i, "0020000E") == where.series), None)
        too_many = f"above {limit} (set {MAX_INSTANCES_ENV} to allow more)"
        if count is not None and int(count) > limit:
            raise InputError(f"-i {name}: {count} instances, {too_many}")
        metadata = client.retrieve_series_metadata(where.study, where.series)
        if len(metadata) > limit:
            raise InputError(f"-i {name}: {len(metadata)} instances, {too_many}")
        declared = sum(_declared_bytes(item) for item in metadata)
        if declared > budget:
            raise InputError(
                f"-i {name}: declares {declared / 2**30:.3g} GiB of pixel data, above the "
                f"{budget / 2**30:.3g} GiB image budget (set {BUDGET_ENV} to allow more)"
            )
        files: list[Path] = []
        total = 0
        for n, dataset in enumerate(client.iter_series(where.study, where.series), start=1):
            if n > limit:
                raise InputError(f"-i {name}: more than {limit} instances (set {MAX_INSTANCES_ENV} to allow more)")
            path = folder / f"{n:05d}.dcm"
            pydicom.dcmwrite(path, dataset, enforce_file_format=True)
            total += path.stat().st_size
            if total > budget + 64 * len(files) * 1024:  # pixel data plus a generous header allowance
                raise InputError(
                    f"-i {name}: more than {budget / 2**30:.3g} GiB downloaded (set {BUDGET_ENV} to allow more)"
                )
            files.append(path)
    if not files:
        raise InputError(f"-i {name}: the series holds no instances")
    return files


def stow(url: str, files: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """Send ``files`` to the DICOMweb root ``url`` in one STOW-RS request (one multipart POST).

    Returns:
        ``{"url": root, "instances": n, "stored": k, "status": HTTP status}`` (no patient attributes).

    Raises:
        InputError: The server refused the request or failed to store some of the objects.
        ConfigError: Credentials refused, or credentials in ``url``.
    """
    import pydicom  # lazy: pydicom is a dependency, but loading it is not free

    root = stow_root(url)
    datasets = [pydicom.dcmread(f) for f in files]
    if not datasets:
        return {"url": root, "instances": 0, "stored": 0, "status": None}
    statuses: list[int] = []
    client = _client(root, on_response=lambda response: statuses.append(response.status_code))
    with _errors(root, "--stow"):
        answer = client.store_instances(datasets)
    failed = list(getattr(answer, "FailedSOPSequence", None) or [])
    stored = list(getattr(answer, "ReferencedSOPSequence", None) or [])
    status = statuses[-1] if statuses else None
    if failed:
        reasons = sorted({f"0x{int(getattr(f, 'FailureReason', 0)):04X}" for f in failed})
        raise InputError(
            f"--stow {root}: the server stored {len(stored)} of {len(datasets)} object(s) "
            f"(HTTP {status}; failure reason {', '.join(reasons)})"
        )
    return {"url": root, "instances": len(datasets), "stored": len(stored) or len(datasets), "status": status}
