"""Transforms: the recorded preprocessing (replayed by predict) and training presets, built from MONAI."""

from medvit.transforms.preprocess import Intensity, PreprocessSpec, preprocess_transforms

__all__ = ["Intensity", "PreprocessSpec", "preprocess_transforms"]
