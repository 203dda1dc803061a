"""The memory budget for one image: declared sizes are checked against it (and against the file's real size)
before anything is allocated, so a small file that claims a huge image is a one-line error, not an
out-of-memory kill.

The budget is ``MEDVIT_MAX_IMAGE_BYTES`` (bytes; default 4 GiB, enough for a 1024 x 1024 x 1000 float32
volume or a 32768^2 RGB tile), the size of the array a reader would hold for one input.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from medvit.errors import ConfigError, InputError

BUDGET_ENV = "MEDVIT_MAX_IMAGE_BYTES"
DEFAULT_BUDGET = 4 << 30


def env_bytes(name: str, default: int) -> int:
    """A byte budget from environment variable ``name`` (``default`` when unset).

    Raises:
        ConfigError: A value that is not a positive number.
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(float(text))
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{name}={text!r}: expected a positive number of bytes")
    return value


def image_budget() -> int:
    """Bytes one image may take in memory (``$MEDVIT_MAX_IMAGE_BYTES``, default 4 GiB)."""
    return env_bytes(BUDGET_ENV, DEFAULT_BUDGET)


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_declared(source: object, shape: Sequence[int], itemsize: int, *, stored: int | None = None) -> int:
    """Check a header's declared array before reading it; returns its size in bytes.

    Args:
        source: The file (for the message).
        shape: Declared dimensions.
        itemsize: Bytes per element (after any conversion the reader makes).
        stored: Bytes of voxel data the file actually holds (uncompressed formats), to catch truncation
            before reading.

    Raises:
        InputError: A dimension below 1, an array above the budget, or more declared than stored.
    """
    dims = [int(d) for d in shape]
    if not dims or min(dims) < 1:
        raise InputError(f"{source}: header declares dimensions {dims}; every dimension must be at least 1")
    size = math.prod(dims) * int(itemsize)
    budget = image_budget()
    if size > budget:
        raise InputError(
            f"{source}: header declares a {' x '.join(map(str, dims))} image of {_gib(size)}, above the "
            f"{_gib(budget)} image budget (set {BUDGET_ENV} to allow more)"
        )
    if stored is not None and stored < size:
        raise InputError(
            f"{source}: truncated: header declares {size} bytes of image data, the file holds {max(stored, 0)}"
        )
    return size
