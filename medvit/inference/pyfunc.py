"""The ``python_function`` loader of the ``medvit`` MLflow flavour (``loader_module`` in the MLmodel).

``mlflow.pyfunc.load_model(uri)`` imports this module and calls :func:`_load_pyfunc`, which loads the package
under the MLflow Model into a :class:`medvit.Predictor`; nothing is pickled. ``predict`` takes a batch of
channel-first images ``(N, C, *spatial)`` (float32) and the ``spacing`` parameter (mm per spatial axis,
default 1) and returns what :meth:`medvit.Predictor.predict` returns for each image: the label mask on the
input grid (segmentation) or the class probabilities (classification), stacked. The MLflow Model itself is
written by :func:`medvit.registry.flavor.save_model`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medvit.errors import InputError
from medvit.inference.predictor import Predictor
from medvit.package import load_package
from medvit.registry.flavor import PREDICTOR_OPTIONS


class MedvitPyfunc:
    """What ``mlflow.pyfunc`` wraps: a :class:`medvit.Predictor` over the package, batch in, batch out.

    Args:
        package: The loaded :class:`~medvit.package.ModelPackage`.
        options: :class:`medvit.Predictor` options (``device``, ``precision``, ``overlap``, ``batch_size``,
            ``tta``), e.g. from ``mlflow.pyfunc.load_model(uri, model_config={...})``.
    """

    def __init__(self, package, **options: Any) -> None:
        unknown = sorted(set(options) - set(PREDICTOR_OPTIONS))
        if unknown:
            allowed = ", ".join(PREDICTOR_OPTIONS)
            raise InputError(f"{package.path}: unknown model_config key(s) {unknown} (allowed: {allowed})")
        self.package = package
        self.predictor = Predictor(package, **options)

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        """Predict every image of the batch ``data`` ``(N, C, *spatial)``; ``params["spacing"]`` in mm."""
        spec = self.package.spec
        batch = np.asarray(data, dtype=np.float32)
        dims = spec.spatial_dims
        if batch.ndim != dims + 2 or batch.shape[0] == 0:
            raise InputError(f"expected images of shape (N, C, {', '.join('?' * dims)}), got {batch.shape}")
        spacing = [float(s) for s in (params or {}).get("spacing") or [1.0] * dims]
        if len(spacing) != dims or min(spacing) <= 0:
            raise InputError(f"spacing must be {dims} positive numbers, got {spacing}")
        return np.stack([self._one(image, tuple(spacing)) for image in batch])

    def _one(self, image: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
        result = self.predictor.predict(image, spacing=spacing)
        return result.class_probabilities if self.package.spec.kind.prediction == "probabilities" else result.mask


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> MedvitPyfunc:
    """``mlflow.pyfunc`` entry point: the package under the MLflow Model's ``data`` path as a pyfunc model."""
    return MedvitPyfunc(load_package(data_path), **(model_config or {}))
