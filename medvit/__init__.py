"""medvit: medical-imaging pipelines on ViT foundation backbones.

The public API is small and imported lazily, so that ``import medvit`` (and the CLI's ``--help``)
stays fast: torch, MONAI and the format libraries load only when something that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "read_image": "medvit.io",
    "write_nifti": "medvit.io",
    "write_png": "medvit.io",
    "write_dicom_seg": "medvit.io",
    "write_rtstruct": "medvit.io",
    "create_backbone": "medvit.backbones",
    "list_backbones": "medvit.backbones",
    "load_package": "medvit.package",
    "Predictor": "medvit.inference",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'medvit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
