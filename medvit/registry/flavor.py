"""The ``medvit`` MLflow flavour: a model package as an MLflow Model that ``mlflow.pyfunc`` can load and serve.

An MLflow Model written here is a folder::

    MLmodel                 flavours ``medvit`` (package folder, task, format) and ``python_function``
    package/                the medvit model package (medvit.yaml + model.safetensors), unchanged
    input_example.json      one small image (and its spacing), serving_input_example.json
    requirements.txt, conda.yaml, python_env.yaml

``mlflow.pyfunc.load_model(uri)`` imports the ``loader_module`` named in the MLmodel,
:mod:`medvit.inference.pyfunc`, which loads the package into a :class:`medvit.Predictor`; nothing is
pickled. This module only writes the MLflow Model (it never imports :mod:`medvit.inference`): the signature
(a batch of channel-first float32 images and a ``spacing`` parameter in; the label mask or the class
probabilities out), the input example, the environment files and the MLmodel.
"""

from __future__ import annotations

import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import medvit
from medvit.errors import InputError

FLAVOR_NAME = "medvit"
PACKAGE_DIR = "package"
EXAMPLE_SIZE = {2: 32, 3: 16}
PREDICTOR_DEFAULTS = {"device": "auto", "precision": "auto", "overlap": None, "batch_size": None, "tta": False}
PREDICTOR_OPTIONS = tuple(PREDICTOR_DEFAULTS)
LOADER_MODULE = "medvit.inference.pyfunc"  # imported by mlflow.pyfunc.load_model, never from here
_REQUIREMENTS = ("torch", "monai", "safetensors", "pydantic", "PyYAML", "numpy", "nibabel", "mlflow")


def signature(spec) -> Any:
    """The model signature of a package spec: a float32 ``(-1, C, *spatial)`` image tensor and a ``spacing``
    parameter in; the label mask ``(-1, *spatial)`` or class probabilities ``(-1, K)`` (float32) out."""
    from mlflow.models import ModelSignature  # lazy: MLflow only for registry commands
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec  # lazy: MLflow only for registry commands

    dims = spec.spatial_dims
    image = TensorSpec(np.dtype(np.float32), (-1, spec.preprocessing.in_channels, *([-1] * dims)))
    if spec.kind.prediction == "probabilities":
        out = TensorSpec(np.dtype(np.float32), (-1, len(spec.labels)))
    else:
        out = TensorSpec(mask_dtype(spec), (-1, *([-1] * dims)))
    spacing = ParamSpec("spacing", "double", [1.0] * dims, shape=(-1,))
    return ModelSignature(inputs=Schema([image]), outputs=Schema([out]), params=ParamSchema([spacing]))


def mask_dtype(spec) -> np.dtype:
    """The dtype of :attr:`medvit.inference.Prediction.mask` for this package (uint8, uint16 above 255)."""
    return np.dtype(np.uint8 if max(spec.labels) <= 255 else np.uint16)


def input_example(spec) -> tuple[np.ndarray, dict[str, Any]]:
    """A small seeded image batch of one (photograph-like values for 0..255 inputs, HU-like otherwise)."""
    dims, prep = spec.spatial_dims, spec.preprocessing
    size = [EXAMPLE_SIZE[dims]] * dims
    if dims == 2 and prep.resize is None:
        size = list(spec.inference.roi_size or spec.model.backbone.img_size or size)
    rng = np.random.default_rng(0)
    low, high = (0, 255) if prep.intensity.kind == "scale" else (-100, 200)
    image = rng.uniform(low, high, size=(1, prep.in_channels, *size)).round().astype(np.float32)
    return image, {"spacing": [1.0] * dims}


def pip_requirements() -> list[str]:
    """What a serving environment needs: medvit itself (pinned) and its main dependencies (pinned as here)."""
    reqs = [f"medvit=={medvit.__version__}"]
    for name in _REQUIREMENTS:
        try:
            reqs.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            reqs.append(name)
    return reqs


def save_model(path: str | Path, *, package: str | Path, mlflow_model=None, **_: Any) -> None:
    """Write the package at ``package`` as an MLflow Model at ``path`` (``mlflow.models.Model.log`` calls this).

    Args:
        path: New folder for the MLflow Model.
        package: Model package folder (validated with :func:`medvit.load_package`).
        mlflow_model: The ``Model`` being logged (its run and model ids); a new one when ``None``.
    """
    from mlflow import pyfunc  # lazy: MLflow only for registry commands
    from mlflow.models import Model  # lazy: MLflow only for registry commands
    from mlflow.models.utils import _save_example  # lazy: MLflow only for registry commands
    from mlflow.utils.environment import _mlflow_conda_env, _PythonEnv  # lazy: MLflow only for registry commands

    from medvit.package import SPEC_FILE, WEIGHTS_FILE, load_package  # lazy: keeps models list free of torch

    pkg = load_package(package)
    if pkg.state_dict is not None:
        raise InputError(f"{package}: a checkpoint, not a package folder (write a package first)")
    path = Path(path)
    path.mkdir(parents=True)
    (path / PACKAGE_DIR).mkdir()
    for name in (SPEC_FILE, WEIGHTS_FILE):
        shutil.copy2(pkg.path / name, path / PACKAGE_DIR / name)
    mlflow_model = mlflow_model if mlflow_model is not None else Model()
    mlflow_model.signature = signature(pkg.spec)
    _save_example(mlflow_model, input_example(pkg.spec), str(path))
    mlflow_model.add_flavor(
        FLAVOR_NAME,
        package=PACKAGE_DIR,
        task=pkg.spec.task,
        spatial_dims=pkg.spec.spatial_dims,
        format_version=pkg.spec.format_version,
        package_sha256=pkg.sha256,
        medvit_version=_medvit_version(),
    )
    pyfunc.add_to_model(
        mlflow_model,
        loader_module=LOADER_MODULE,
        data=PACKAGE_DIR,
        model_config=dict(PREDICTOR_DEFAULTS),  # load_model(model_config=...), MLFLOW_PYFUNC_INFERENCE_CONFIG
        conda_env="conda.yaml",
        python_env="python_env.yaml",
    )
    mlflow_model.save(str(path / "MLmodel"))
    reqs = pip_requirements()
    conda_env = _mlflow_conda_env(additional_pip_deps=reqs, install_mlflow=False)
    (path / "conda.yaml").write_text(yaml.safe_dump(conda_env, default_flow_style=False))
    (path / "requirements.txt").write_text("\n".join(reqs) + "\n")
    _PythonEnv.current().to_yaml(str(path / "python_env.yaml"))


def _medvit_version() -> str:
    return medvit.__version__
