"""Inference: ``Predictor`` (read, preprocess, sliding window / TTA, back to the input grid), output writers,
case discovery and the run manifest behind ``medvit predict``."""

from medvit.inference.predictor import InputGrid, Prediction, Predictor

__all__ = ["InputGrid", "Prediction", "Predictor"]
