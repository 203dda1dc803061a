"""Every shipped pipeline validates and runs a few steps on its synthetic set; bad pipelines fail before
anything is written; the resolved config, params and metrics reach MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medvit.cli import app
from medvit.errors import ConfigError
from medvit.pipeline import load_pipeline

REPO = Path(__file__).resolve().parent.parent
PIPELINES = sorted((REPO / "pipelines").glob("*.yaml"))

# the synthetic set each shipped pipeline's --smoke run trains on
SMOKE_CARDS = {
    "quickstart": "synthetic_ct",
    "retfound_cls": "synthetic_cls",
    "urfound_cls": "synthetic_cls",
    "lora_retfound_cls": "synthetic_cls",
    "dinov3_linear_cls": "synthetic_cls",
    "funduseg_refuge": "synthetic_fundus",
    "dinov3_linear_seg": "synthetic_fundus",
    "cellvta_pannuke": "synthetic_cells",
    "hiendmae_btcv": "synthetic_ct",
    "pretrain_mae_retfound": "synthetic_fundus",
    "pretrain_mae_hiendmae_ct": "synthetic_ct",
    "pretrain_dino_dinov3": "synthetic_cls",
    "explora_dinov3": "synthetic_cls",
}
CPU = ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32", "trainer.progress=none"]
TINY = [
    "model.backbone.weights=null",
    "model.backbone.options.embed_dim=48",
    "model.backbone.options.depth=4",
    "model.backbone.options.num_heads=2",
    "data.num_workers=0",
    "data.batch_size=2",
]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Runs write their folders, mlruns.db and synthetic sets under tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDVIT_CACHE", str(Path(__file__).parent.parent / ".pytest_cache" / "medvit"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MEDVIT_RUN_DIR", raising=False)


def test_every_pipeline_is_listed_here():
    assert {p.stem for p in PIPELINES} == set(SMOKE_CARDS)


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_pipeline_validates(path):
    cfg, resolved = load_pipeline(path)
    assert cfg.name == path.stem
    assert resolved["data"]["card"] == cfg.data.card


def _size_mb(*paths: Path) -> float:
    return sum(f.stat().st_size for p in paths for f in p.rglob("*") if f.is_file()) / 2**20


@pytest.mark.slow
@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_smoke_run_of_every_pipeline_trains_and_writes_a_package(path, tmp_path):
    """The README's smoke command: ``medvit run PIPELINE --smoke`` on this CPU, by name, no traceback."""
    from medvit.backbones import create_backbone
    from medvit.package import load_package

    result = _run([path.stem, "--smoke"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "hardware: cpu" in result.output
    run_dir = next((tmp_path / "runs" / path.stem).iterdir())
    if load_pipeline(path)[0].kind.artifact == "backbone":  # self-supervised: an adapted backbone, no package
        info = json.loads((run_dir / "backbone" / "backbone.json").read_text())
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["data"]["card"] == SMOKE_CARDS[path.stem] and not (run_dir / "package").exists()
        weights = run_dir / "backbone" / info["files"]["medvit"]
        create_backbone(info["backbone"], weights=weights, img_size=tuple(info["img_size"]), **info["options"])
        assert _size_mb(tmp_path / "runs", tmp_path / "mlruns") < 60
        return
    pkg = load_package(run_dir / "package")
    assert pkg.spec.provenance.data_card == SMOKE_CARDS[path.stem]
    assert pkg.spec.provenance.run_id == json.loads((run_dir / "run.json").read_text())["mlflow_run_id"]
    assert pkg.build() is not None
    assert _size_mb(tmp_path / "runs", tmp_path / "mlruns") < 60  # tens of MB at most


def _run(args):
    return CliRunner().invoke(app, ["run", *args])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.backbone.nmae=x"], "model.backbone.nmae: unknown key"),
        (["trainer.max_epochs=many"], "trainer.max_epochs: Input should be a valid integer"),
        (
            ["task.kind=detection"],
            "task: unknown task kind 'detection' (known: classification, segmentation, cells, mae, dino)",
        ),
        (["task.label_smoothing=0.1"], "task.label_smoothing: unknown key"),
        (["model.head.name=linear"], "model.head.name 'linear' does not fit task.kind 'segmentation'"),
        (["data.card=synthetic_cls"], "task: 'segmentation' does not fit data card 'synthetic_cls'"),
        (["model.backbone.name=vit_huge_nope"], "vit_huge_nope"),
        (["model.backbone.weights=/nonexistent/weights.pth"], "/nonexistent/weights.pth"),
        (["data.card=no_such_card"], "no_such_card"),
        (["defaults=[trainer/none]"], "no config fragment 'trainer/none'"),
        (["model.head.options.bogus=1"], "bogus"),
        (["transforms.preset=xray"], "transforms.preset"),
    ],
)
def test_bad_pipeline_fails_before_anything_is_written(tmp_path, overrides, message):
    result = _run([str(REPO / "pipelines" / "quickstart.yaml"), *overrides])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns.db").exists()


def test_gpu_asked_for_without_one_fails_before_anything_is_written(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    result = _run(["quickstart", "trainer.accelerator=gpu"])
    assert result.exit_code == 2 and "trainer.accelerator gpu: no CUDA device" in result.stderr, result.output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns.db").exists()


def test_missing_data_root_is_named(tmp_path):
    result = _run([str(REPO / "pipelines" / "funduseg_refuge.yaml"), "data.root=/nonexistent/refuge", *CPU])
    assert result.exit_code == 2 and "/nonexistent/refuge" in result.stderr, result.output
    assert not (tmp_path / "runs").exists()


def test_card_that_does_not_match_its_files(tmp_path):
    root = tmp_path / "refuge"
    (root / "Images").mkdir(parents=True)
    (root / "Images" / "notes.txt").write_text("not an image")
    result = _run([str(REPO / "pipelines" / "funduseg_refuge.yaml"), f"data.root={root}", *CPU])
    assert result.exit_code == 2 and str(root) in result.stderr
    assert not (tmp_path / "runs").exists()


def test_unset_environment_variable_names_the_key(tmp_path):
    pipeline = tmp_path / "p.yaml"
    data = yaml.safe_load((REPO / "pipelines" / "quickstart.yaml").read_text())
    data["data"]["root"] = "${MEDVIT_TEST_UNSET_ROOT}"
    pipeline.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"data\.root: environment variable MEDVIT_TEST_UNSET_ROOT is not set"):
        load_pipeline(pipeline)


def test_check_flag_validates_without_training(tmp_path):
    result = _run([str(REPO / "pipelines" / "quickstart.yaml"), "--check"])
    assert result.exit_code == 0, result.output
    assert "ok:" in result.output and not (tmp_path / "runs").exists()


def test_run_logs_config_params_metrics_and_package_to_mlflow(tmp_path):
    import mlflow

    overrides = [*CPU, *TINY, "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1", "data.limit_cases=6"]
    result = _run([str(REPO / "pipelines" / "quickstart.yaml"), *overrides])
    assert result.exit_code == 0, result.output
    assert "model package:" in result.output and "medvit predict -m" in result.output
    run_dir = next((tmp_path / "runs" / "quickstart").iterdir())
    info = json.loads((run_dir / "run.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    run = client.get_run(info["mlflow_run_id"])
    params = run.data.params  # the resolved config once, flattened by Lightning's logger
    assert params["model/backbone/name"] == "vit_tiny_patch8_3d" and params["task/kind"] == "segmentation"
    assert not [k for k in params if "." in k.split("/")[0]], "a second spelling of the config"
    assert params["inference/mode"] == "None"  # as configured (the package records the resolved mode)
    assert "val/dice" in run.data.metrics and "test/dice" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "package", "data_card", "metrics.json"} <= artifacts
    logged = yaml.safe_load(
        Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text()
    )
    assert logged == yaml.safe_load((run_dir / "config.yaml").read_text())
    assert run.info.status == "FINISHED"


def test_epochs_without_validation_keep_quiet_and_best_is_saved_after_validation(tmp_path):
    """Validation every 2nd epoch: no 'could not find the monitored key' warning on the epoch without one,
    and best.ckpt holds the validated epoch."""
    import warnings

    import torch

    from medvit.engine import run_pipeline

    small = ["data.limit_cases=4", "transforms.patch_size=[16,16,16]", "model.backbone.img_size=[16,16,16]"]
    epochs = ["trainer.max_epochs=2", "trainer.check_val_every_n_epoch=2", "tracking.enabled=false"]
    overrides = [*CPU, *TINY, *small, *epochs]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_pipeline(REPO / "pipelines" / "quickstart.yaml", overrides)
    assert not [w for w in caught if "monitored key" in str(w.message)]
    best = torch.load(result.run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["epoch"] == 1


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("name", ["quickstart", "funduseg_refuge"])
def test_mixed_precision_on_cuda(name, precision, tmp_path):
    """A few optimiser steps in mixed precision on the GPU: finite losses and a loadable package."""
    import math

    from medvit.engine import run_pipeline
    from medvit.package import load_package

    overrides = [f"trainer.precision={precision}", "trainer.accelerator=gpu", "trainer.progress=none"]
    result = run_pipeline(REPO / "pipelines" / f"{name}.yaml", overrides, smoke=True)
    assert math.isfinite(result.metrics["train/loss_epoch"])
    assert load_package(result.package).build() is not None


def test_register_of_an_engine_written_package_attaches_to_its_training_run(tmp_path):
    import mlflow

    from medvit.engine import run_pipeline
    from medvit.registry import register_package

    result = run_pipeline("quickstart", ["trainer.progress=none"], smoke=True)
    assert result.mlflow_run_id
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"  # absolute: MLflow caches stores by URI within a process
    info = register_package(result.package, name="liver", tracking_uri=uri)
    assert info["run_id"] == result.mlflow_run_id  # logged into the run that trained it
    client = mlflow.MlflowClient(tracking_uri=uri)
    version = client.get_model_version("liver", info["version"])
    assert version.run_id == result.mlflow_run_id
    assert client.get_run(result.mlflow_run_id).info.status == "FINISHED"
