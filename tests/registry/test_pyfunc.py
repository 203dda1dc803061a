"""The pyfunc flavour: loaded by alias with ``mlflow.pyfunc.load_model``, it predicts what ``medvit.Predictor``
predicts on the same arrays (2D segmentation, classification, 3D with spacing)."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from mlflow.models import Model

from medvit import Predictor
from medvit.errors import InputError
from medvit.registry import register_package


@pytest.fixture
def images():
    rng = np.random.default_rng(7)
    return rng.uniform(0, 255, size=(2, 3, 48, 40)).astype(np.float32)


def test_segmentation_2d_by_alias_equals_predictor(package_factory, model_name, images):
    pkg = package_factory("seg2d")
    register_package(pkg, name=model_name, alias="champion")
    model = mlflow.pyfunc.load_model(f"models:/{model_name}@champion")
    out = model.predict(images)
    predictor = Predictor(pkg)
    expected = np.stack([predictor.predict(x).mask for x in images])
    assert out.dtype == expected.dtype == np.uint8 and out.shape == (2, 48, 40)
    np.testing.assert_array_equal(out, expected)

    meta = model.metadata
    assert meta.flavors["python_function"]["loader_module"] == "medvit.inference.pyfunc"
    assert meta.flavors["medvit"]["task"] == "segmentation" and meta.flavors["medvit"]["package"] == "package"
    assert meta.get_input_schema().inputs[0].shape == (-1, 3, -1, -1)
    assert meta.get_input_schema().inputs[0].type == np.dtype(np.float32)
    assert meta.get_output_schema().inputs[0].shape == (-1, -1, -1)
    assert meta.get_params_schema().to_dict() == [
        {"name": "spacing", "type": "double", "default": [1.0, 1.0], "shape": (-1,)}
    ]


def test_classification_probabilities_equal_predictor(package_factory, model_name, images):
    pkg = package_factory("cls2d")
    info = register_package(pkg, name=model_name, alias="champion")
    model = mlflow.pyfunc.load_model(info["uri"])
    out = model.predict(images)
    predictor = Predictor(pkg)
    expected = np.stack([predictor.predict(x).class_probabilities for x in images])
    assert out.dtype == np.float32 and out.shape == (2, 3)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_volume_with_spacing_equals_predictor(package_factory, model_name):
    pkg = package_factory("seg3d")
    register_package(pkg, name=model_name, alias="champion")
    model = mlflow.pyfunc.load_model(f"models:/{model_name}@champion")
    volume = np.random.default_rng(3).uniform(-300, 300, size=(1, 1, 30, 26, 12)).astype(np.float32)
    spacing = [1.0, 1.2, 3.0]
    out = model.predict(volume, params={"spacing": spacing})
    expected = Predictor(pkg).predict(volume[0], spacing=tuple(spacing)).mask
    assert out.shape == (1, 30, 26, 12)
    np.testing.assert_array_equal(out[0], expected)
    assert model.metadata.get_params_schema().to_dict()[0]["default"] == [1.0, 1.0, 1.0]


def test_input_example_is_a_valid_request(package_factory, model_name):
    info = register_package(package_factory("seg2d"), name=model_name)
    local = mlflow.artifacts.download_artifacts(artifact_uri=info["uri"])
    meta = Model.load(local)
    example = meta.load_input_example(local)
    params = meta.load_input_example_params(local)
    assert example.shape == (1, 3, 32, 32) and example.dtype == np.float32 and params == {"spacing": [1.0, 1.0]}
    out = mlflow.pyfunc.load_model(local).predict(example, params=params)
    assert out.shape == (1, 32, 32)
    requirements = mlflow.pyfunc.get_model_dependencies(info["uri"]) and open(f"{local}/requirements.txt").read()
    assert "medvit==" in requirements and "torch==" in requirements


def test_model_config_sets_predictor_options(package_factory, model_name, images):
    pkg = package_factory("seg2d")
    register_package(pkg, name=model_name, alias="champion")
    uri = f"models:/{model_name}@champion"
    model = mlflow.pyfunc.load_model(uri, model_config={"tta": True, "device": "cpu"})
    expected = Predictor(pkg, tta=True, device="cpu").predict(images[0]).mask
    np.testing.assert_array_equal(model.predict(images[:1])[0], expected)
    config = {"device": "cpu", "precision": "auto", "overlap": None, "batch_size": None, "tta": True}
    assert model.model_config == config

    from medvit.inference.pyfunc import MedvitPyfunc
    from medvit.package import load_package

    with pytest.raises(InputError, match=r"unknown model_config key\(s\) \['threads'\]"):
        MedvitPyfunc(load_package(pkg), threads=4)


@pytest.mark.parametrize(
    "data, params, message",
    [
        (np.zeros((3, 16, 16), np.float32), None, "shape"),
        (np.zeros((0, 3, 16, 16), np.float32), None, "expected images of shape"),
        (np.zeros((1, 3, 16, 16), np.float32), {"spacing": [1.0, -1.0]}, "spacing must be 2 positive numbers"),
    ],
)
def test_bad_request(package_factory, model_name, data, params, message):
    register_package(package_factory("seg2d"), name=model_name, alias="champion")
    model = mlflow.pyfunc.load_model(f"models:/{model_name}@champion")
    with pytest.raises(Exception, match=message):
        model.predict(data, params=params)


@pytest.mark.gpu
def test_on_cuda_equals_predictor_on_cuda(package_factory, model_name, images):
    pkg = package_factory("cls2d")
    register_package(pkg, name=model_name, alias="champion")
    model = mlflow.pyfunc.load_model(f"models:/{model_name}@champion", model_config={"device": "cuda"})
    predictor = Predictor(pkg, device="cuda")
    expected = np.stack([predictor.predict(x).class_probabilities for x in images])
    np.testing.assert_array_equal(model.predict(images), expected)
