"""Small synthetic sets (generated into a temporary cache) for the preset and HoVer tests."""

from __future__ import annotations

import pytest

from medvit.data import build_datalist, load_card

SMALL = {"synthetic_ct": [24, 24, 16], "synthetic_fundus": [48, 48], "synthetic_cells": [48, 48],
         "synthetic_cls": [32, 32]}  # fmt: skip


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MEDVIT_CACHE", str(tmp_path_factory.getbasetemp() / "medvit-cache"))


@pytest.fixture
def small_cases():
    """``name -> datalist`` of a 6-case miniature of a synthetic card (generated once per session)."""

    def make(name: str) -> dict[str, list[dict]]:
        card = load_card(name)
        layout = card.layout.model_copy(update={"num_cases": 6, "size": SMALL[name]})
        return build_datalist(card.model_copy(update={"layout": layout}), None)

    return make
