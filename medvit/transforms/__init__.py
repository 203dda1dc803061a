"""Transforms: the recorded preprocessing (replayed by predict) and training presets, built from MONAI."""

from __future__ import annotations

import importlib
from typing import Any

from medvit.transforms.preprocess import Intensity, PreprocessSpec, preprocess_transforms
from medvit.transforms.presets import TransformsSpec, build_transforms, parse_transforms, preprocess_spec

# MONAI-based transforms load on first use, so that importing the preprocessing spec stays light
_LAZY = {
    "LoadImage": "medvit.transforms.io",
    "LoadImaged": "medvit.transforms.io",
    "HoverTargets": "medvit.transforms.hover",
    "HoverTargetsd": "medvit.transforms.hover",
    "hover_maps": "medvit.transforms.hover",
    "ClassLabel": "medvit.transforms.labels",
    "ClassLabeld": "medvit.transforms.labels",
}

__all__ = [
    "Intensity",
    "PreprocessSpec",
    "TransformsSpec",
    "build_transforms",
    "parse_transforms",
    "preprocess_spec",
    "preprocess_transforms",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'medvit.transforms' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
