"""Self-supervised pre-training end to end: what a run leaves loads strictly into create_backbone and into the
fine-tune pipelines, ExPLoRA keeps frozen weights bit-identical, a resumed DINO run continues its teacher and
schedules, the probe and MLflow get their numbers, and DDP makes one run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medvit.backbones import create_backbone, save_backbone
from medvit.engine import check_pipeline, run_pipeline
from medvit.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
PIPES = REPO / "pipelines"
QUIET = ["trainer.progress=none"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDVIT_CACHE", str(REPO / ".pytest_cache" / "medvit"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MEDVIT_RUN_DIR", raising=False)


def _info(result) -> dict:
    return json.loads((result.package / "backbone.json").read_text())


def _load(info: dict, folder: Path, which: str = "medvit", **extra):
    weights = folder / info["files"][which]
    return create_backbone(
        info["backbone"], weights=weights, img_size=tuple(info["img_size"]), **info["options"], **extra
    )


def test_mae_export_loads_strictly_everywhere(tmp_path):
    result = run_pipeline(
        PIPES / "pretrain_mae_retfound.yaml", ["task.image_every_n_epochs=1", *QUIET], smoke=True
    )
    folder = result.package
    info = _info(result)
    assert info["files"] == {"medvit": "retfound_cfp.safetensors", "official": "retfound_cfp_official.pth"}
    ours = _load(info, folder)  # strict: any missing or unexpected key is an error
    official = _load(info, folder, "official")
    trained = load_file(folder / "retfound_cfp.safetensors")
    for k, v in ours.state_dict().items():
        assert torch.equal(v, trained[k]) and torch.equal(v, official.state_dict()[k]), k
    # RETFound's layout keeps the decoder: a later MAE run starts from it again
    raw = torch.load(folder / "retfound_cfp_official.pth", weights_only=True)
    assert set(raw) == {"model"} and "decoder_pred.weight" in raw["model"] and "mask_token" in raw["model"]
    # the fine-tune pipeline takes it as its backbone weights (--check builds the model and loads them)
    dims = [f"model.backbone.options.{k}={v}" for k, v in info["options"].items()]
    checked = check_pipeline(PIPES / "retfound_cls.yaml", [
        "data.card=synthetic_cls", "data.root=null", "data.num_workers=0", "transforms.resize=[64,64]",
        "model.backbone.img_size=[64,64]", f"model.backbone.weights={folder / 'retfound_cfp.safetensors'}", *dims,
    ])  # fmt: skip
    assert checked.task.model.backbone.load_report is not None
    # MLflow: losses, the picture, the backbone
    import mlflow

    client = mlflow.MlflowClient(result.tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert {"train/loss_step", "val/loss", "params/backbone_trainable_pct"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"backbone", "reconstructions"} <= artifacts
    pictures = [a.path for a in client.list_artifacts(run.info.run_id, "reconstructions")]
    assert pictures == ["reconstructions/epoch_0001.png"]
    assert run.info.status == "FINISHED"


def test_hiendmae_3d_export_in_the_authors_layout(tmp_path):
    result = run_pipeline(
        PIPES / "pretrain_mae_hiendmae_ct.yaml", [*QUIET, "task.image_every_n_epochs=1"], smoke=True
    )
    info = _info(result)
    raw = torch.load(result.package / info["files"]["official"], weights_only=True)
    assert "module.encoder_pos_embed" in raw["state_dict"]
    _load(info, result.package, "official")


@pytest.mark.parametrize("pipeline", ["pretrain_dino_dinov3", "explora_dinov3"])
def test_dino_export_is_the_teacher_in_dinov3_layout(pipeline, tmp_path):
    result = run_pipeline(PIPES / f"{pipeline}.yaml", QUIET, smoke=True)
    info = _info(result)
    raw = torch.load(result.package / info["files"]["official"], weights_only=True)
    assert "storage_tokens" in raw and "blocks.0.attn.qkv.bias_mask" in raw and "mask_token" in raw
    teacher = _load(info, result.package, "official")
    last = torch.load(result.run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for k, v in teacher.state_dict().items():
        key = "teacher.backbone." + k
        if key in last:  # LoRA'd layers are merged in the export
            assert torch.equal(v, last[key].float()), k


def test_explora_leaves_frozen_weights_bit_identical(tmp_path):
    start = create_backbone("dinov3_vitb16", img_size=(64, 64), embed_dim=48, depth=4, num_heads=2)
    torch.manual_seed(1)
    for p in start.parameters():
        p.data.normal_(0, 0.1)  # every tensor distinct from its init
    initial = save_backbone(start, tmp_path / "start.safetensors")
    result = run_pipeline(
        PIPES / "explora_dinov3.yaml",
        [
            *QUIET,
            f"model.backbone.weights={initial}",
            "trainer.limit_train_batches=3",
            "optimizer.weight_decay=0.5",
        ],
        smoke=True,
    )
    before = load_file(initial)
    after = load_file(result.package / "dinov3_vitb16.safetensors")
    assert set(before) == set(after)
    dim, last = 48, 3
    trained = {k for k in before if not torch.equal(before[k], after[k])}
    frozen = set(before) - trained
    for k in before:
        block = int(k.split(".")[1]) if k.startswith("blocks.") else None
        is_norm = ".norm" in k or k.startswith("norm.")
        if block == last or is_norm:
            continue  # unfrozen: may change
        if k.endswith("attn.qkv.weight"):  # LoRA on q and v only: the key rows never move
            assert torch.equal(before[k][dim : 2 * dim], after[k][dim : 2 * dim]), k
            continue
        assert k in frozen, f"{k} changed but ExPLoRA freezes it"
    assert any(k.startswith(f"blocks.{last}.") for k in trained)  # the unfrozen block trained
    assert any(k.endswith("attn.qkv.weight") and not k.startswith(f"blocks.{last}.") for k in trained)  # LoRA
    import mlflow

    metrics = mlflow.MlflowClient(result.tracking_uri).get_run(result.mlflow_run_id).data.metrics
    pct = metrics["params/backbone_trainable_pct"]
    assert 0 < pct < 60  # the tiny model's share; ViT-B's is in tests/adapters/test_explora.py


def test_resume_continues_the_teacher_and_the_schedules(tmp_path, monkeypatch):
    from medvit.ssl.dino import momentum_schedule
    from medvit.tasks.modules.dino import DINOTask

    first = run_pipeline(PIPES / "pretrain_dino_dinov3.yaml", [*QUIET, "trainer.max_epochs=1"], smoke=True)
    ckpt = torch.load(first.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    seen = {}

    def record(self):
        seen["step"] = self.global_step
        seen["momentum"] = self.current_momentum()
        seen["total"] = int(self.trainer.estimated_stepping_batches)
        seen["teacher"] = {k: v.detach().clone() for k, v in self.teacher.state_dict().items()}
        seen["student"] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        seen["center"] = self.dino_loss.center.detach().clone()

    monkeypatch.setattr(DINOTask, "on_train_start", record, raising=False)
    run_pipeline(None, ["trainer.max_epochs=2"], resume=first.run_dir)
    state = ckpt["state_dict"]
    assert seen["step"] == 2  # the smoke run's two steps
    assert seen["momentum"] == momentum_schedule(2, seen["total"]) and seen["momentum"] > 0.992
    for k, v in seen["teacher"].items():
        assert torch.equal(v, state["teacher." + k]), k
    assert torch.equal(seen["center"], state["dino_loss.center"])
    assert any(not torch.equal(seen["teacher"][k], seen["student"][k]) for k in seen["student"])  # not re-copied


def test_probe_measures_before_and_after(tmp_path):
    result = run_pipeline(
        PIPES / "pretrain_mae_retfound.yaml",
        [*QUIET, "task.probe.card=synthetic_cls", "task.probe.limit_cases=8", "task.probe.batch_size=4"],
        smoke=True,
    )
    assert 0.0 <= result.metrics["probe/knn_acc"] <= 1.0
    assert "probe/knn_acc_start" in result.metrics
    assert "probe/knn_acc" in _info(result)["metrics"]


def test_pretraining_refuses_registration(tmp_path):
    with pytest.raises(ConfigError, match="tracking.register_as: a mae run leaves an adapted backbone"):
        check_pipeline(PIPES / "pretrain_mae_retfound.yaml", ["tracking.register_as=x"], smoke=True)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_makes_one_pretraining_run(tmp_path):
    import mlflow

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for key in ("MLFLOW_TRACKING_URI", "MEDVIT_RUN_DIR", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"):
        env.pop(key, None)
    medvit = str(Path(sys.executable).parent / "medvit")
    out = subprocess.run(
        [medvit, "run", "pretrain_dino_dinov3", "--smoke", "defaults=[trainer/ddp-cpu]", "trainer.devices=2",
         "trainer.strategy=ddp", "trainer.accelerator=cpu", *QUIET],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    run_dirs = list((tmp_path / "runs" / "pretrain_dino_dinov3").iterdir())
    assert len(run_dirs) == 1 and "devices: 2" in (run_dirs[0] / "config.yaml").read_text()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert (run_dirs[0] / "backbone" / "dinov3_vitb16.safetensors").is_file()


@pytest.mark.parametrize(
    ("card", "message"),
    [("no_such_card", "no_such_card"), ("synthetic_fundus", "the k-NN probe needs a classification card")],
)
def test_a_bad_probe_card_fails_before_anything_is_written(tmp_path, card, message):
    from typer.testing import CliRunner

    from medvit.cli import app

    result = CliRunner().invoke(
        app, ["run", "pretrain_mae_retfound", "--smoke", f"task.probe.card={card}", *QUIET]
    )
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns.db").exists()


def test_dino_on_3d_volumes(tmp_path):
    result = run_pipeline(
        PIPES / "pretrain_dino_dinov3.yaml",
        [*QUIET, "data.card=synthetic_ct", "transforms.preset=ct", "transforms.resize=null",
         "transforms.patch_size=[32,32,32]", "model.backbone.name=vit_tiny_patch8_3d",
         "model.backbone.img_size=[32,32,32]", "task.local_crops=2"],
        smoke=True,
    )  # fmt: skip
    info = _info(result)
    assert info["backbone"] == "vit_tiny_patch8_3d"
    _load(info, result.package)
