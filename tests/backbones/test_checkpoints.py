"""Safe reading, weights lookup, strict loading, head dropping, and the purity of the family filters."""

from __future__ import annotations

import argparse
import json
import re
import shutil

import pytest
import torch
from layouts import (
    example_input,
    randomise,
    tiny_kwargs,
    write_dinov3_hf_from_medvit,
    write_mae,
    write_official,
    write_urfound,
)
from safetensors.torch import load_file, save_file

import medvit
from medvit.backbones import CheckpointError, get_entry, read_checkpoint, save_backbone
from medvit.errors import InputError


def tiny(name: str, **extra):
    return medvit.create_backbone(name, **{**tiny_kwargs(name), **extra})


def test_pickled_args_are_refused_naming_trust_pickle(tmp_path):
    src = randomise(tiny("urfound")).eval()
    path = write_urfound(src, tmp_path / "urfound.pth")
    with pytest.raises(CheckpointError, match=r"urfound\.pth.*argparse\.Namespace.*trust_pickle=True"):
        tiny("urfound", weights=path)
    model = tiny("urfound", weights=path, trust_pickle=True).eval()
    x = example_input(src)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), src.forward_features(x))
    assert "bert_mlp.weight" in model.load_report.dropped and "decoder_pred.weight" in model.load_report.dropped


def test_retfound_finetuned_file_with_args_and_head(tmp_path):
    """A fine-tuned RETFound file: {'model','epoch','args'}, fc_norm + head, no final norm."""
    src = randomise(tiny("retfound_cfp", num_classes=5, global_pool="avg", fc_norm=True)).eval()
    sd = src.state_dict()
    assert "norm.weight" not in sd and "fc_norm.weight" in sd
    torch.save({"model": sd, "epoch": 9, "args": argparse.Namespace(nb_classes=5)}, tmp_path / "ft.pth")
    with pytest.raises(CheckpointError, match="trust_pickle=True"):
        tiny("retfound_cfp", weights=tmp_path / "ft.pth")
    same = tiny(
        "retfound_cfp",
        weights=tmp_path / "ft.pth",
        trust_pickle=True,
        num_classes=5,
        global_pool="avg",
        fc_norm=True,
    )
    x = example_input(src)
    with torch.no_grad():
        torch.testing.assert_close(same.eval()(x), src(x))
    # a different class count: the head is dropped and reported, the rest loads strictly
    other = tiny(
        "retfound_cfp",
        weights=tmp_path / "ft.pth",
        trust_pickle=True,
        num_classes=3,
        global_pool="avg",
        fc_norm=True,
    )
    assert other.load_report.head_dropped and "head" in other.load_report.notes[0]
    assert other(x).shape == (2, 3)


def test_head_in_file_but_not_in_model_is_dropped_and_reported(tmp_path):
    src = randomise(tiny("uni_vitl16", num_classes=4))
    torch.save(src.state_dict(), tmp_path / "w.bin")
    model = tiny("uni_vitl16", weights=tmp_path / "w.bin")
    assert model.head is None and model.load_report.head_dropped


def test_weights_dir_lookup(tmp_path, monkeypatch):
    src = tiny("retfound_cfp")
    write_mae(src, tmp_path / "RETFound_mae_natureCFP.pth")
    monkeypatch.setenv("MEDVIT_WEIGHTS_DIR", str(tmp_path))
    assert tiny("retfound_cfp", weights=True).load_report.path == str(tmp_path / "RETFound_mae_natureCFP.pth")
    assert tiny("retfound_cfp", weights="RETFound_mae_natureCFP.pth").load_report is not None
    with pytest.raises(
        CheckpointError, match=r"RETFound_mae_natureOCT\.pth.*MEDVIT_WEIGHTS_DIR=.*huggingface\.co"
    ):
        tiny("retfound_oct", weights=True)


def test_missing_file_names_where_it_looked_and_the_source(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDVIT_WEIGHTS_DIR", raising=False)
    with pytest.raises(CheckpointError, match=r"nope\.pth.*github\.com/FengheTan9/Hi-End-MAE"):
        tiny("hiendmae_ct", weights=tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match=r"MEDVIT_WEIGHTS_DIR, which is not set.*dinov3"):
        tiny("dinov3_vitb16", weights=True)


def test_unreadable_files(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"junk\.pth: not a readable PyTorch checkpoint"):
        read_checkpoint(tmp_path / "junk.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad")
    with pytest.raises(CheckpointError, match=r"junk\.safetensors: not a readable safetensors"):
        read_checkpoint(tmp_path / "junk.safetensors")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a dict"):
        read_checkpoint(tmp_path / "list.pth")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        read_checkpoint(tmp_path / "folder")
    assert issubclass(CheckpointError, InputError)


def test_non_finite_weights_are_refused(tmp_path):
    src = tiny("vit_tiny_patch16")
    sd = src.state_dict()
    sd["blocks.0.norm1.weight"][0] = float("nan")
    torch.save(sd, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match="non-finite"):
        tiny("vit_tiny_patch16", weights=tmp_path / "nan.pth")


def test_dinov3_periods_from_another_config_are_refused(tmp_path):
    src = tiny("dinov3_vits16")
    path, _ = write_official("dinov3_vits16", src, tmp_path)
    sd = torch.load(path)
    sd["rope_embed.periods"] = sd["rope_embed.periods"] * 2
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="rope_embed.periods"):
        tiny("dinov3_vits16", weights=path)


@pytest.mark.parametrize(
    "name", ["retfound_cfp", "retfound_dinov2_cfp", "urfound", "hiendmae_ct", "dinov3_vits16plus"]
)
def test_filters_are_pure_and_idempotent(name, tmp_path):
    model = tiny(name)
    path, kwargs = write_official(name, model, tmp_path)
    raw = read_checkpoint(path, **kwargs).obj
    snapshot = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in raw.items()}
    fam = get_entry(name).family
    once = fam.checkpoint_filter(raw, model)
    twice = fam.checkpoint_filter(once, model)
    assert once.keys() == twice.keys() == model.state_dict().keys()
    assert all(torch.equal(once[k], twice[k]) for k in once)
    assert raw.keys() == snapshot.keys()  # the input is not modified


def test_hiendmae_layout_facts(tmp_path):
    model = tiny("hiendmae_ct")
    path, _ = write_official("hiendmae_ct", model, tmp_path)
    loaded = tiny("hiendmae_ct", weights=path)
    assert loaded.pos_embed.shape[1] == 8  # no CLS entry: the CLS token gets a zero position
    assert {"decoder_pos_embed", "mask_token"} <= set(loaded.load_report.dropped)
    assert any(k.startswith("encoder_to_decoder") for k in loaded.load_report.dropped)


def _sharded_hf_folder(tmp_path):
    """A DINOv3 HF folder whose weights are split over two shards named by model.safetensors.index.json."""
    src = randomise(tiny("dinov3_vits16")).eval()
    folder = write_dinov3_hf_from_medvit(src, tmp_path / "hf")
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for shard, names in shards.items():
        save_file({k: state[k] for k in names}, str(folder / shard))
    weight_map = {k: shard for shard, names in shards.items() for k in names}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return src, folder


def test_hf_folder_with_shard_index_loads(tmp_path):
    src, folder = _sharded_hf_folder(tmp_path)
    model = tiny("dinov3_vits16", weights=folder).eval()
    x = example_input(src)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), src.forward_features(x))


def test_hf_index_naming_a_missing_shard_is_refused(tmp_path):
    _, folder = _sharded_hf_folder(tmp_path)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"hf: shard model-00002-of-00002\.safetensors .*missing") as err:
        read_checkpoint(folder)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("stray", ["model_ema.safetensors", "pytorch_model.bin", "extra.pth"])
def test_hf_folder_with_a_stray_weight_file_is_refused(stray, tmp_path):
    folder = write_dinov3_hf_from_medvit(tiny("dinov3_vits16"), tmp_path / "hf")
    shutil.copy(folder / "model.safetensors", folder / stray)
    with pytest.raises(CheckpointError, match=rf"hf: stray weight file {re.escape(stray)}") as err:
        read_checkpoint(folder)
    assert "\n" not in str(err.value)
    _, sharded = _sharded_hf_folder(tmp_path / "sharded")
    shutil.copy(folder / "model.safetensors", sharded / "model.safetensors")  # not in the index: refused too
    with pytest.raises(CheckpointError, match=r"stray weight file model\.safetensors.*index\.json"):
        read_checkpoint(sharded)


def test_failed_save_leaves_no_temporary_file_and_no_target(tmp_path, monkeypatch):
    import safetensors.torch

    def broken(state, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_backbone(tiny("vit_tiny_patch16"), tmp_path / "out" / "w.safetensors")
    assert [f for f in tmp_path.rglob("*") if not f.is_dir()] == []
