"""Errors that reach the user as one line.

Every error medvit raises on bad input derives from :class:`MedvitError`; the CLI prints its message on
one line and exits with code 2. Messages name the file or key and the reason, and never carry patient
identifiers.
"""

from __future__ import annotations


class MedvitError(Exception):
    """Base class of the errors medvit reports to the user as one line (CLI exit code 2)."""

    exit_code = 2


class InputError(MedvitError, ValueError):
    """An input file, folder or array that cannot be used (missing, corrupt, unsupported, inconsistent)."""


class NotDicomError(InputError):
    """A single file given as DICOM whose content is not DICOM."""


class GeometryError(InputError):
    """Geometry that cannot be represented or trusted (mixed orientations, missing spacing, grid mismatch)."""


class ConfigError(MedvitError, ValueError):
    """A configuration key or value that is wrong; the message names the key and the file."""


class MedvitWarning(UserWarning):
    """Something the user should know about an input that medvit could still read (uneven spacing, tilt)."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message folded onto one line (whitespace collapsed), at most ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validation_line(err, source: str, *, messages: dict | None = None, tags=()) -> str:
    """One line naming every offending key of a pydantic ``ValidationError`` and the ``source`` file.

    Args:
        err: The ``ValidationError``.
        source: What was validated (a file, or ``file < overrides``).
        messages: ``{error type: fn(error dict) -> message}`` for messages clearer than pydantic's.
        tags: Discriminated-union tags to leave out of key paths (``task.hd95``, not
            ``task.segmentation.hd95``).
    """
    parts = []
    for e in err.errors():
        path = [str(p) for p in e["loc"] if not str(p).startswith("function-after")]
        loc = ".".join(p for i, p in enumerate(path) if not (i == 1 and p in tags))
        msg = e["msg"].removeprefix("Value error, ")
        if messages and e["type"] in messages:
            msg = messages[e["type"]](e)
        elif e["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return f"{source}: " + "; ".join(parts)
