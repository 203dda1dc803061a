"""``models:/`` URIs to cached packages: once per version and registry, alias moves, and bad URIs that leave
nothing in the cache."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from medvit.errors import InputError
from medvit.package import load_package
from medvit.registry import register_package, resolve_model_uri, set_alias
from medvit.registry.cache import RECORD


def test_resolve_alias_version_and_latest(package_factory, model_name, tracking_uri, tmp_path):
    pkg0, pkg1 = package_factory("seg2d"), package_factory("seg2d", seed=1)
    v1 = register_package(pkg0, name=model_name, alias="champion")
    v2 = register_package(pkg1, name=model_name)

    folder, info = resolve_model_uri(f"models:/{model_name}@champion")
    assert folder.is_relative_to(tmp_path / "cache" / "models") and folder.name == "1"
    assert load_package(folder).sha256 == load_package(pkg0).sha256
    assert info["name"] == model_name and info["version"] == "1" and info["alias"] == "champion"
    assert info["uri"] == f"models:/{model_name}@champion" and info["resolved_uri"] == f"models:/{model_name}/1"
    assert info["run_id"] == v1["run_id"] and info["model_id"] == v1["model_id"]
    assert info["tracking_uri"] == tracking_uri and info["cached"] is False
    assert sorted(p.name for p in folder.iterdir()) == ["medvit.yaml", "model.safetensors", RECORD]

    again, info = resolve_model_uri(f"models:/{model_name}/1")
    assert again == folder and info["cached"] is True and info["alias"] is None

    latest, info = resolve_model_uri(f"models:/{model_name}/latest")
    assert info["version"] == "2" and info["run_id"] == v2["run_id"]
    assert load_package(latest).sha256 == load_package(pkg1).sha256

    set_alias(model_name, "champion", 2)  # the alias moves: the new version is used
    moved, info = resolve_model_uri(f"models:/{model_name}@champion")
    assert moved == latest and info["version"] == "2" and info["cached"] is True


def test_each_version_is_downloaded_once(package_factory, model_name, monkeypatch):
    import mlflow.artifacts

    register_package(package_factory("cls2d"), name=model_name, alias="champion")
    calls = []
    real = mlflow.artifacts.download_artifacts
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", lambda **kw: calls.append(kw) or real(**kw))
    for _ in range(3):
        resolve_model_uri(f"models:/{model_name}@champion")
    assert len(calls) == 2  # MLmodel, then the package; later calls hit the cache


def test_same_name_in_two_registries_does_not_collide(package_factory, model_name, other_tracking_uri):
    other = other_tracking_uri
    register_package(package_factory("seg2d"), name=model_name)
    register_package(package_factory("seg2d", seed=1), name=model_name, tracking_uri=other)
    a, _ = resolve_model_uri(f"models:/{model_name}/1")
    b, info = resolve_model_uri(f"models:/{model_name}/1", tracking_uri=other)
    assert a != b and info["tracking_uri"] == other
    assert load_package(a).sha256 != load_package(b).sha256


def test_a_stale_entry_is_replaced(package_factory, model_name):
    register_package(package_factory("seg2d"), name=model_name)
    folder, _ = resolve_model_uri(f"models:/{model_name}/1")
    record = json.loads((folder / RECORD).read_text())
    (folder / RECORD).write_text(json.dumps({**record, "source": "models:/m-gone"}))  # e.g. the model re-created
    (folder / "model.safetensors").write_bytes(b"junk")
    again, info = resolve_model_uri(f"models:/{model_name}/1")
    assert again == folder and info["cached"] is False
    load_package(folder).build()  # a whole package again


def _register_foreign_model(tracking_uri: str, name: str, tmp_path, *, mlmodel: bool = True) -> None:
    """A registered model version that is an MLflow model of some other flavour (not medvit), or no MLflow
    model at all (no ``MLmodel``)."""
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.create_experiment(f"foreign-{name}", artifact_location=(tmp_path / "foreign").as_uri())
    logged = client.create_logged_model(experiment_id=exp, name="model")
    model_dir = tmp_path / "foreign_model"
    model_dir.mkdir()
    if mlmodel:
        flavors = {"python_function": {"loader_module": "sklearn_like", "data": "model.pkl"}}
        (model_dir / "MLmodel").write_text(yaml.safe_dump({"flavors": flavors}))
    (model_dir / "model.pkl").write_bytes(b"not a medvit package")
    client.log_model_artifacts(logged.model_id, str(model_dir))
    client.create_registered_model(name)
    mv = client.create_model_version(name, source=f"models:/{logged.model_id}", model_id=logged.model_id)
    client.set_registered_model_alias(name, "champion", mv.version)


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown_model", "models:/nobody@champion: no registered model 'nobody' in sqlite:///"),
        ("unknown_alias", "models:/{name}@nope: model '{name}' has no alias 'nope' (aliases: champion)"),
        ("unknown_version", "models:/{name}/9: model '{name}' has no version 9"),
        ("not_medvit", "models:/{name}_foreign@champion: not a medvit model (version 1 has no 'medvit' flavour)"),
        ("no_mlmodel", "models:/{name}_foreign@champion: not a medvit model (version 1 has no 'medvit' flavour: "),
        ("tampered", "models:/{name}@champion: downloaded package does not match the version's package_sha256"),
        ("broken", "models:/{name}@champion: the registered package does not load (package/medvit.yaml: task: "),
        ("bad_uri", "models:/{name}: expected models:/NAME@ALIAS or models:/NAME/VERSION"),
    ],
)
def test_bad_uri_is_one_line_and_leaves_no_cache_entry(
    case, message, package_factory, model_name, tracking_uri, tmp_path, cache_files
):
    register_package(package_factory("seg2d"), name=model_name, alias="champion")
    uri = {
        "unknown_model": "models:/nobody@champion",
        "unknown_alias": f"models:/{model_name}@nope",
        "unknown_version": f"models:/{model_name}/9",
        "not_medvit": f"models:/{model_name}_foreign@champion",
        "no_mlmodel": f"models:/{model_name}_foreign@champion",
        "tampered": f"models:/{model_name}@champion",
        "broken": f"models:/{model_name}@champion",
        "bad_uri": f"models:/{model_name}",
    }[case]
    client = mlflow.MlflowClient(tracking_uri)
    if case in ("not_medvit", "no_mlmodel"):
        _register_foreign_model(tracking_uri, f"{model_name}_foreign", tmp_path, mlmodel=case == "not_medvit")
    if case == "broken":  # the stored package no longer validates
        stored = Path(client.get_model_version_download_uri(model_name, "1").removeprefix("file://"))
        (stored / "package" / "medvit.yaml").write_text("format: medvit-package\nname: x\n")
    if case == "tampered":
        client.set_model_version_tag(model_name, "1", "package_sha256", "0" * 64)
    with pytest.raises(InputError) as err:
        resolve_model_uri(uri)
    text = str(err.value)
    assert text.startswith(message.format(name=model_name).split(": ")[0] + ": ")
    assert message.format(name=model_name) in text and "\n" not in text
    assert cache_files() == []


def test_missing_database_and_unreachable_server(free_port, tmp_path, cache_files):
    with pytest.raises(InputError, match="models:/disc@champion: no registry database sqlite:///"):
        resolve_model_uri("models:/disc@champion", tracking_uri=f"sqlite:///{tmp_path / 'none.db'}")
    assert not (tmp_path / "none.db").exists()

    server = f"http://127.0.0.1:{free_port()}"
    start = time.perf_counter()
    with pytest.raises(InputError) as err:
        resolve_model_uri("models:/disc@champion", tracking_uri=server)
    assert time.perf_counter() - start < 10  # no minutes of retries
    expected = f"models:/disc@champion: cannot reach the MLflow tracking server {server} (is it running?)"
    assert str(err.value) == expected
    assert cache_files() == []
