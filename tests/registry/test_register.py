"""Registering packages as model versions: tags, runs, aliases, list/show, and every bad input."""

from __future__ import annotations

import json
import logging
import os
import shutil

import mlflow
import pytest
import torch

from medvit.errors import InputError
from medvit.package import load_package
from medvit.registry import list_models, register_package, resolve_model_uri, set_alias, show_model

PROVENANCE = {
    "pipeline": "funduseg_refuge",
    "data_card": "refuge",
    "run_id": "0123456789abcdef0123456789abcdef",  # not in this store: a new run is made
    "metrics": {"val/dice": 0.8123456, "test/dice": 0.79, "epoch": 3, "bad": float("nan"), "flag": True},
    "patient_id": "PAT-12345",  # free-form provenance is never copied
    "notes": "Jane Doe",
}


def test_register_tags_run_and_alias(package_factory, model_name, tracking_uri):
    pkg = package_factory("seg2d", provenance=PROVENANCE)
    info = register_package(pkg, name=model_name, alias="champion")
    assert (info["name"], info["version"], info["alias"]) == (model_name, "1", "champion")
    assert info["uri"] == f"models:/{model_name}/1" and info["tracking_uri"] == tracking_uri
    tags = show_model(model_name)["versions"][0]["tags"]
    assert tags == info["tags"]
    expected = {
        "medvit.package": "1",
        "task": "segmentation",
        "backbone": "vit_tiny_patch16",
        "adapter": "none",
        "head": "linear_seg",
        "spatial_dims": "2",
        "labels": "background,optic_disc,optic_cup",
        "data_card": "refuge",
        "pipeline": "funduseg_refuge",
        "package_sha256": load_package(pkg).sha256,
        "metric.val/dice": "0.812346",
        "metric.test/dice": "0.79",
        "metric.epoch": "3",
    }
    assert expected.items() <= tags.items()
    assert "metric.bad" not in tags  # nan is no metric
    assert "PAT-12345" not in json.dumps(tags) and "Jane" not in json.dumps(tags)

    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(info["run_id"])  # a new run in the medvit-registry experiment
    assert client.get_experiment(run.info.experiment_id).name == "medvit-registry"
    assert "PAT-12345" not in json.dumps({**run.data.params, **run.data.tags})
    assert [o.model_id for o in run.outputs.model_outputs] == [info["model_id"]]
    assert {a: str(v) for a, v in client.get_registered_model(model_name).aliases.items()} == {"champion": "1"}


def test_register_into_the_pipeline_run_takes_its_metrics(package_factory, model_name, tracking_uri):
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.create_experiment(f"pipeline-{model_name}")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "test/dice", 0.91)
    client.log_artifacts(run.info.run_id, str(package_factory("cls2d")), artifact_path="package")

    info = register_package(package_factory("cls2d"), name=model_name, run_id=run.info.run_id)
    assert info["run_id"] == run.info.run_id and info["alias"] is None
    assert info["tags"]["metric.test/dice"] == "0.91" and info["tags"]["task"] == "classification"
    version = client.get_model_version(model_name, info["version"])
    assert version.run_id == run.info.run_id
    assert client.get_logged_model(info["model_id"]).experiment_id == exp

    # a package whose provenance names a run of this store is logged there without --run-id
    own = package_factory("cls2d", provenance={"run_id": run.info.run_id})
    assert register_package(own, name=model_name)["run_id"] == run.info.run_id


def test_versions_count_up_and_alias_moves(package_factory, model_name):
    first = register_package(package_factory("seg2d"), name=model_name, alias="champion")
    second = register_package(package_factory("seg2d", seed=1), name=model_name)
    assert (first["version"], second["version"]) == ("1", "2")
    assert show_model(model_name)["aliases"] == {"champion": "1"}  # registering without --alias keeps it

    moved = set_alias(model_name, "champion", 2)
    assert moved == {
        "name": model_name,
        "alias": "champion",
        "version": "2",
        "previous": "1",
        "uri": f"models:/{model_name}@champion",
    }
    assert set_alias(model_name, "staging", "1")["previous"] is None
    shown = show_model(model_name)
    assert shown["aliases"] == {"champion": "2", "staging": "1"}
    assert [(v["version"], v["aliases"]) for v in shown["versions"]] == [("2", ["champion"]), ("1", ["staging"])]
    assert all(v["status"] == "READY" for v in shown["versions"])

    rows = {r["name"]: r for r in list_models()}
    assert rows[model_name] == {
        "name": model_name,
        "latest_version": "2",
        "aliases": {"champion": "2", "staging": "1"},
        "task": "segmentation",
        "medvit": True,
    }


def test_register_a_checkpoint_of_a_run_folder(package_factory, model_name, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(package_factory("seg2d"), run_dir / "package")
    trained = load_package(package_factory("seg2d", seed=1)).build().state_dict()
    (run_dir / "checkpoints").mkdir()
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in trained.items()}}, ckpt)

    info = register_package(ckpt, name=model_name)
    folder, _ = resolve_model_uri(info["uri"])
    got = load_package(folder).build().state_dict()
    assert all(torch.equal(got[k], v) for k, v in trained.items())


def test_user_tags(package_factory, model_name):
    info = register_package(package_factory("seg2d"), name=model_name, tags={"team": "retina", "reviewed": 1})
    assert info["tags"]["team"] == "retina" and info["tags"]["reviewed"] == "1"


@pytest.mark.parametrize(
    "source, kwargs, message",
    [
        ("missing", {}, "missing: no such model package"),
        ("empty", {}, "empty: not a medvit model package"),
        ("pkg", {"name": "a/b"}, "bad model name 'a/b'"),
        ("pkg", {"alias": "latest"}, "alias 'latest'"),
        ("pkg", {"tags": {"medvit.package": "0"}}, "tag 'medvit.package': empty or reserved"),
        ("pkg", {"run_id": "feedfacefeedfacefeedfacefeedface"}, "run 'feedfacefeedfacefeedfacefeedface': no such"),
    ],
)
def test_bad_register_input(package_factory, model_name, tmp_path, source, kwargs, message):
    (tmp_path / "empty").mkdir()
    path = package_factory("seg2d") if source == "pkg" else tmp_path / source
    with pytest.raises(InputError) as err:
        register_package(path, **{"name": model_name, **kwargs})
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="no registered model"):
        show_model(model_name)  # nothing was registered


def test_register_into_a_missing_folder(package_factory, model_name, tmp_path):
    uri = f"sqlite:///{tmp_path / 'nope' / 'mlruns.db'}"
    with pytest.raises(InputError, match=r"folder .*nope of the registry database does not exist"):
        register_package(package_factory("seg2d"), name=model_name, tracking_uri=uri)


def test_alias_and_show_errors(package_factory, model_name):
    register_package(package_factory("seg2d"), name=model_name)
    with pytest.raises(InputError, match=f"models:/{model_name}/7: model '{model_name}' has no version 7"):
        set_alias(model_name, "champion", 7)
    with pytest.raises(InputError, match="version must be a number"):
        set_alias(model_name, "champion", "two")
    with pytest.raises(InputError, match="alias 'v2'"):
        set_alias(model_name, "v2", 1)
    with pytest.raises(InputError, match="models:/nobody: no registered model 'nobody'"):
        set_alias("nobody", "champion", 1)
    with pytest.raises(InputError, match="models:/nobody: no registered model 'nobody'"):
        show_model("nobody")


def test_reading_a_registry_that_does_not_exist(tmp_path):
    uri = f"sqlite:///{tmp_path / 'none.db'}"
    for call in (lambda: list_models(tracking_uri=uri), lambda: show_model("x", tracking_uri=uri)):
        with pytest.raises(InputError, match="no registry database"):
            call()
    assert not (tmp_path / "none.db").exists()  # reading never creates a database


def test_list_models_of_an_empty_registry(empty_tracking_uri):
    assert list_models(tracking_uri=empty_tracking_uri) == []


def test_session_restores_the_callers_mlflow_settings(package_factory, model_name, tmp_path, tracking_uri):
    other = f"sqlite:///{tmp_path / 'other.db'}"
    mlflow.set_tracking_uri(other)  # MLflow also exports it as MLFLOW_TRACKING_URI
    try:
        register_package(package_factory("seg2d"), name=model_name, tracking_uri=tracking_uri)
        assert mlflow.get_tracking_uri() == other and os.environ["MLFLOW_TRACKING_URI"] == other
        assert not {"MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_REGISTRY_URI"} & set(os.environ)
        assert logging.getLogger("mlflow").level != logging.ERROR
    finally:
        mlflow.set_tracking_uri(None)


def test_registry_experiment_created_meanwhile_by_another_process(package_factory, model_name, tracking_uri):
    """Two processes registering into a store without the registry experiment both try to create it: the one
    that loses uses the one that won."""
    import mlflow

    from medvit.registry import register

    client = mlflow.MlflowClient(tracking_uri)
    if client.get_experiment_by_name(register.EXPERIMENT) is None:
        client.create_experiment(register.EXPERIMENT)  # what the other process did
    won = client.get_experiment_by_name(register.EXPERIMENT).experiment_id
    real, calls = client.get_experiment_by_name, []

    def stale(name):  # this process looked just before the other created it
        calls.append(name)
        return None if len(calls) == 1 else real(name)

    client.get_experiment_by_name = stale
    assert register._registry_experiment(client, tracking_uri) == won
    assert len(calls) == 2


def test_a_new_alias_set_by_two_processes_at_once_is_retried():
    """Two processes setting a new alias at once: the store's second insert violates the alias key (seen
    against PostgreSQL); the retry finds the row and updates it. Other errors are not retried."""
    from mlflow.exceptions import MlflowException

    from medvit.registry.models import point_alias

    class Client:
        def __init__(self, errors):
            self.errors, self.calls = list(errors), 0

        def set_registered_model_alias(self, name, alias, version):
            self.calls += 1
            if self.errors:
                raise self.errors.pop(0)

    conflict = MlflowException("(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint")
    client = Client([conflict])
    point_alias(client, "m", "champion", 3)
    assert client.calls == 2
    other = MlflowException("RESOURCE_DOES_NOT_EXIST: no version 3")
    with pytest.raises(MlflowException, match="no version 3"):
        point_alias(Client([other]), "m", "champion", 3)
    with pytest.raises(MlflowException, match="UniqueViolation"):
        point_alias(Client([conflict] * 5), "m", "champion", 3)
