"""One precision resolver for training and predict: on the same machine, validation and predict agree."""

from __future__ import annotations

import pytest
import torch

from medvit import device
from medvit.errors import ConfigError

LIGHTNING = {None: "32-true", torch.bfloat16: "bf16-mixed", torch.float16: "16-mixed"}


@pytest.mark.parametrize("native_bf16", [True, False])
def test_auto_precision_is_the_same_for_training_and_predict(monkeypatch, native_bf16):
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: native_bf16)
    predict = device.resolve_precision("auto", torch.device("cpu"))
    assert predict == (torch.bfloat16 if native_bf16 else None)
    assert device.trainer_precision("auto", "cpu") == LIGHTNING[predict]


def test_pipeline_and_predictor_pick_the_same_precision_here(tmp_path):
    """The quick start's resolved training precision equals what a Predictor picks with ``auto``."""
    from medvit.engine import resolve_hardware
    from medvit.pipeline import load_pipeline

    cfg, _ = load_pipeline("quickstart", ["trainer.accelerator=auto", "trainer.precision=auto"])
    hw = resolve_hardware(cfg)
    dev, _ = device.resolve_device("auto")
    assert hw.precision == LIGHTNING[device.resolve_precision("auto", dev)]
    assert hw.accelerator == ("gpu" if dev.type == "cuda" else "cpu")


def test_explicit_precisions_pass_through():
    assert device.trainer_precision("32", "cpu") == "32-true"
    assert device.trainer_precision("bf16-mixed", "cpu") == "bf16-mixed"


def test_gpu_asked_for_on_a_machine_without_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.resolve_accelerator("auto") == "cpu"
    with pytest.raises(ConfigError, match="trainer.accelerator gpu: no CUDA device"):
        device.resolve_accelerator("gpu")


def test_loader_workers_are_capped_by_the_cpus(monkeypatch):
    from medvit.engine import resolve_hardware
    from medvit.pipeline import load_pipeline

    monkeypatch.setattr(device, "cpu_count", lambda: 2)
    cfg, _ = load_pipeline("funduseg_refuge", ["data.card=synthetic_fundus"])
    hw = resolve_hardware(cfg)
    assert cfg.data.num_workers == 8 and hw.num_workers == 2
    assert "2 loader workers (8 asked, 2 CPUs)" in hw.note
