"""Make the fixture writers in ``layouts.py`` importable from the backbone tests (pytest's importlib mode)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
