"""Data card schema: every shipped card validates; bad cards are rejected with the key and the file."""

from __future__ import annotations

import copy

import pytest
import yaml

from medvit.data.cards import list_cards, load_card, parse_card
from medvit.errors import ConfigError

SHIPPED = sorted(list_cards())


def test_the_expected_cards_ship():
    for name in ("refuge", "drishti_gs", "pannuke", "conic", "btcv", "msd_spleen", "aptos2019", "synthetic_ct"):
        assert name in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_card_validates(name):
    card = load_card(name)
    assert card.name == name and card.license and card.limitations
    assert card.synthetic == name.startswith("synthetic")


@pytest.fixture
def good() -> dict:
    return yaml.safe_load(load_card("btcv").model_dump_json())


def test_round_trip_of_plain_data(good):
    assert parse_card(good, "btcv.yaml").name == "btcv"


def test_missing_licence(good):
    del good["license"]
    with pytest.raises(ConfigError, match=r"^my\.yaml: license: Field required$"):
        parse_card(good, "my.yaml")


def test_unknown_layout(good):
    good["layout"] = {"type": "dicomweb", "url": "x"}
    with pytest.raises(
        ConfigError, match=r"my\.yaml: layout: unknown layout type 'dicomweb'; known: folder_pairs"
    ):
        parse_card(good, "my.yaml")


@pytest.mark.parametrize(
    "task, labels, message",
    [
        ("segmentation", {1: "liver", 2: "spleen"}, "needs 0 \\(background\\)"),
        ("segmentation", {0: "bg", 1: "a", 3: "b"}, "without gaps"),
        ("classification", {0: "only"}, "at least 2 classes"),
        ("classification", {1: "a", 2: "b"}, "class indices must be 0..1"),
    ],
)
def test_label_map_must_match_task(good, task, labels, message):
    bad = copy.deepcopy(good)
    bad["task"], bad["labels"] = task, labels
    with pytest.raises(ConfigError, match=f"my.yaml: labels: .*{message}"):
        parse_card(bad, "my.yaml")


def test_unknown_key_and_wrong_type(good):
    good["licence"] = "typo"
    good["spatial_dims"] = 4
    with pytest.raises(ConfigError) as err:
        parse_card(good, "my.yaml")
    assert "licence: unknown key" in str(err.value) and "spatial_dims" in str(err.value)


def test_remap_targets_must_be_labels(good):
    good["layout"]["label_remap"] = {255: 0, 128: 99}
    with pytest.raises(ConfigError, match=r"layout\.label_remap: targets \[99\] not in labels"):
        parse_card(good, "my.yaml")


def test_card_file_errors(tmp_path):
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_card(tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match=r"data card 'nope' not found in .*known: .*btcv"):
        load_card("nope")
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(load_card("btcv").model_dump(mode="json")))
    with pytest.raises(ConfigError, match=r"other\.yaml: name: 'btcv' must match the file name 'other'"):
        load_card(tmp_path / "other.yaml")
