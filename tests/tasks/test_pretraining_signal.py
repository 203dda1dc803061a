"""An honest signal that pre-training works: from random init, on a synthetic set, DINO raises the k-NN probe
accuracy of the frozen features and MAE's reconstruction loss falls (the README's figures come from longer runs
of the same commands)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from medvit.engine import run_pipeline

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def card(tmp_path, monkeypatch) -> Path:
    """``synthetic_cls`` with 240 images (its 24 give a 6-image query set: too coarse to measure)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDVIT_CACHE", str(REPO / ".pytest_cache" / "medvit"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    text = (REPO / "data_cards" / "synthetic_cls.yaml").read_text()
    path = tmp_path / "synthetic_cls240.yaml"
    path.write_text(
        text.replace("name: synthetic_cls", "name: synthetic_cls240").replace("num_cases: 24,", "num_cases: 240,")
    )
    return path


def _common(card: Path, epochs: int) -> list[str]:
    return [f"data.card={card}", "data.limit_cases=null", "data.batch_size=16", "trainer.limit_train_batches=null",
            "trainer.limit_val_batches=null", "trainer.progress=none", f"trainer.max_epochs={epochs}",
            "optimizer.warmup_epochs=1", "trainer.log_every_n_steps=5"]  # fmt: skip


@pytest.mark.slow
def test_dino_from_random_init_raises_the_knn_probe(card):
    probe = [f"task.probe.card={card}", "task.probe.every_n_epochs=5", "task.probe.batch_size=32"]
    result = run_pipeline(
        REPO / "pipelines" / "pretrain_dino_dinov3.yaml",
        [
            *_common(card, 5),
            *probe,
            "task.local_crops=2",
            "optimizer.lr=5e-4",
            "task.warmup_teacher_temp_epochs=1",
        ],
        smoke=True,
    )
    before, after = result.metrics["probe/knn_acc_start"], result.metrics["probe/knn_acc"]
    print(f"DINO k-NN probe: {before:.3f} -> {after:.3f}")
    assert after > before + 0.1


@pytest.mark.slow
def test_mae_loss_falls(card):
    result = run_pipeline(
        REPO / "pipelines" / "pretrain_mae_retfound.yaml", [*_common(card, 4), "optimizer.lr=1e-3"], smoke=True
    )
    history = mlflow.MlflowClient(result.tracking_uri).get_metric_history(result.mlflow_run_id, "train/loss_epoch")
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    print("MAE train loss per epoch:", [round(v, 3) for v in losses])
    assert len(losses) == 4 and losses[-1] < 0.6 * losses[0]
