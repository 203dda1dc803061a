"""``medvit backbones``: lists every registered backbone with its metadata."""

from __future__ import annotations

import json

from typer.testing import CliRunner

import medvit
from medvit.cli import app

runner = CliRunner()


def test_backbones_text_lists_every_name_with_metadata():
    result = runner.invoke(app, ["backbones"])
    assert result.exit_code == 0, result.output
    for name in medvit.list_backbones():
        assert name in result.output
    assert "RETFound_mae_natureCFP.pth" in result.output
    assert "HU clip -175..250" in result.output
    assert "license:" in result.output and "paper:" in result.output


def test_backbones_json():
    result = runner.invoke(app, ["backbones", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert set(rows) == set(medvit.list_backbones())
    h = rows["hiendmae_ct"]
    assert (h["spatial_dims"], h["embed_dim"], h["depth"], h["patch_size"]) == (3, 1536, 12, 12)
    assert h["input_size"] == [1, 96, 96, 96] and h["hu_window"] == [-175.0, 250.0]
    assert rows["dinov3_vitb16"]["position"] == "rope" and rows["dinov3_vitb16"]["prefix_tokens"] == 5
    assert rows["retfound_cfp"]["pretrained_name"] == "vit_large_patch16.retfound_cfp"
    assert all(r["license"] and r["source"] for r in rows.values())
