"""Issue #13, class 2: no pickle runs. Every load of a file medvit did not just write pins
``weights_only=True``, whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says; a file that needs more is refused in
one line (exit 2), before anything is written."""

from __future__ import annotations

import pathlib

import pytest
import torch
import yaml
from hostile_checks import one_line_exit_2
from typer.testing import CliRunner

from medvit.cli import app
from medvit.pipeline import load_pipeline


class _Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """A run folder as `medvit run` leaves it (resolved config), without training."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # the environment tries to allow pickle
    _, resolved = load_pipeline("quickstart")
    folder = tmp_path / "runs" / "quickstart" / "20260101-000000"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(resolved))
    return folder


def _resume(folder):
    return CliRunner().invoke(app, ["run", "--resume", str(folder)])


def _no_new_files(folder, before):
    assert sorted(p.name for p in folder.rglob("*")) == before


@pytest.mark.parametrize(
    "layout",
    [
        lambda marker: {"state_dict": {}, "callbacks": _Payload(marker)},  # beside valid keys
        lambda marker: _Payload(marker),  # the whole file
        lambda marker: {"state_dict": {"model.w": torch.zeros(1)}, "hyper_parameters": [_Payload(marker)]},
    ],
)
def test_crafted_last_ckpt_never_runs_on_resume(run_dir, tmp_path, layout):
    marker = tmp_path / "PWNED"
    torch.save(layout(marker), run_dir / "checkpoints" / "last.ckpt")
    before = sorted(p.name for p in run_dir.rglob("*"))
    result = _resume(run_dir)
    one_line_exit_2(result, "last.ckpt", "pickled Python objects")
    assert not marker.exists()
    _no_new_files(run_dir, before)  # no run.json, no error.log: nothing started


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "not a readable checkpoint"),
        (b"\x00" * 64, "not a readable checkpoint"),
        (b"PK\x03\x04 truncated zip", "not a readable checkpoint"),
    ],
)
def test_damaged_last_ckpt_is_one_line(run_dir, content, needle):
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(content)
    one_line_exit_2(_resume(run_dir), "last.ckpt", needle)


def test_truncated_and_foreign_checkpoints_are_one_line(run_dir, tmp_path):
    real = tmp_path / "real.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(1000)}}, real)
    data = real.read_bytes()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(data[: len(data) // 2])
    one_line_exit_2(_resume(run_dir), "not a readable checkpoint")
    torch.save({"weights": torch.zeros(3)}, run_dir / "checkpoints" / "last.ckpt")
    one_line_exit_2(_resume(run_dir), "not a Lightning checkpoint")


def test_package_checkpoint_and_backbone_files_refuse_pickle_too(tmp_path, monkeypatch):
    """Predict from a run's .ckpt and backbone weights: the same pin, whatever the environment says."""
    from medvit.backbones import create_backbone
    from medvit.errors import MedvitError
    from medvit.package import _checkpoint_state

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(1)}, "extra": _Payload(marker)}, evil)
    with pytest.raises(MedvitError):
        _checkpoint_state(evil)
    weights = tmp_path / "RETFound_mae_natureCFP.pth"
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 1024)}, "args": _Payload(marker)}, weights)
    with pytest.raises(MedvitError, match="trust_pickle"):
        create_backbone("retfound_cfp", weights=str(weights))
    assert not marker.exists()
