"""The pipelines, config fragments and data cards that come with medvit.

In the repository they are the top-level ``pipelines/``, ``configs/`` and ``data_cards/`` folders; the
build ships them inside the wheel as ``medvit/_resources/<folder>/`` (see ``setup.py``). This module is
the one place that knows both homes.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import Literal

Shipped = Literal["pipelines", "configs", "data_cards"]


def shipped_dir(name: Shipped) -> Path:
    """The folder of medvit's own ``pipelines``, ``configs`` or ``data_cards``.

    An installed wheel holds them as package data; an editable install or a source checkout reads the
    repository's top-level folder. The returned folder may not exist (e.g. medvit imported from a zip);
    callers skip it then.
    """
    if name not in ("pipelines", "configs", "data_cards"):
        raise ValueError(f"unknown shipped folder {name!r}: expected pipelines, configs or data_cards")
    packaged = files("medvit") / "_resources" / name
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file():  # not a site-packages folder that happens to hold `configs/`
        return checkout / name
    return Path(str(packaged))


def cache_dir(name: str) -> Path:
    """``$MEDVIT_CACHE/<name>`` (``MEDVIT_CACHE`` default ``~/.cache/medvit``): the user's cache of synthetic
    sets, registry downloads and exports."""
    return Path(os.environ.get("MEDVIT_CACHE", Path.home() / ".cache" / "medvit")) / name
