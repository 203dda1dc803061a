"""Synthetic demo sets: deterministic, complete or absent, and valid against their cards."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from medvit.cli import app
from medvit.data import build_datalist, load_card, validate_card
from medvit.data.synthetic import ensure
from medvit.errors import InputError


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDVIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _small(name):
    card = load_card(name)
    size = [24, 24, 16] if card.spatial_dims == 3 else [48, 48]
    return card.model_copy(update={"layout": card.layout.model_copy(update={"num_cases": 6, "size": size})})


@pytest.mark.parametrize("name", ["synthetic_ct", "synthetic_fundus", "synthetic_cells", "synthetic_cls"])
def test_synthetic_sets_validate_and_are_deterministic(name, tmp_path):
    card = _small(name)
    report = validate_card(card, tmp_path / "a")
    assert report.ok, report.problems
    assert report.summary["cases"] == 6
    assert all(n > 0 for n in report.summary["classes"].values())
    first = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    validate_card(card, tmp_path / "b")
    second = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert first == second
    for rel in first:
        if rel.suffix == ".npy":
            np.testing.assert_array_equal(np.load(tmp_path / "a" / rel), np.load(tmp_path / "b" / rel))
        elif rel.suffix == ".png" or rel.suffix == ".csv":
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_ct_labels_sit_on_the_image_grid(tmp_path):
    from medvit.io import read_image

    data = build_datalist(_small("synthetic_ct"), tmp_path / "ct")
    case = data["train"][0]
    img, lab = read_image(case["image"]), read_image(case["label"])
    np.testing.assert_allclose(np.asarray(img.affine), np.asarray(lab.affine))
    organ = lab[0].numpy() == 1
    assert float(img[0].numpy()[organ].mean()) > 30  # liver-like HU inside the label
    assert float(img[0].numpy()[lab[0].numpy() == 0].mean()) < 0


def test_default_root_is_the_cache(cache):
    card = _small("synthetic_fundus")
    build_datalist(card, None)
    assert any(cache.rglob("synthetic.json"))


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    import medvit.data.synthetic as syn

    def boom(out, layout, rng):
        (out / "half.png").write_bytes(b"x")
        raise KeyboardInterrupt

    monkeypatch.setitem(syn.GENERATORS, "fundus", boom)
    with pytest.raises(KeyboardInterrupt):
        ensure(_small("synthetic_fundus").layout, tmp_path / "set")
    assert not (tmp_path / "set").exists()
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.docx").write_text("x")
    with pytest.raises(InputError, match=r"mine: folder exists and is not this synthetic set"):
        ensure(_small("synthetic_fundus").layout, tmp_path / "mine")


def test_cards_cli_list_show_validate(tmp_path):
    runner = CliRunner()
    listed = runner.invoke(app, ["cards", "list"])
    assert listed.exit_code == 0 and "pannuke" in listed.stdout and "CC BY-NC-SA 4.0" in listed.stdout
    shown = runner.invoke(app, ["cards", "show", "refuge"])
    assert shown.exit_code == 0 and "label_remap" in shown.stdout and "Orlando" in shown.stdout
    missing = runner.invoke(app, ["cards", "show", "nope"])
    assert missing.exit_code == 2 and "data card 'nope' not found" in missing.stderr
    no_root = runner.invoke(app, ["cards", "validate", "btcv"])
    assert no_root.exit_code == 2 and "needs --root DIR" in no_root.stderr
    ok = runner.invoke(app, ["cards", "validate", "synthetic_cls", "--root", str(tmp_path / "cls")])
    assert ok.exit_code == 0, ok.output
    assert "card synthetic_cls: 24 case(s) (train 18, val 6, test 0)" in ok.stdout
