"""Data sets: cards (what a data set is), layouts (how it sits on disk), splits and synthetic demo sets."""

from medvit.data.cards import DataCard, list_cards, load_card, parse_card
from medvit.data.layouts import build_datalist, discover, split_cases
from medvit.data.validate import validate_card

__all__ = [
    "DataCard",
    "build_datalist",
    "discover",
    "list_cards",
    "load_card",
    "parse_card",
    "split_cases",
    "validate_card",
]
