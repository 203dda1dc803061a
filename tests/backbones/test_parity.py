"""Parity with independent implementations from ``transformers`` (a test-only dependency).

DINOv3: ``DINOv3ViTModel`` with random weights, saved as an HF folder and converted to the original ``.pth``
layout; medvit's tokens must match ``last_hidden_state`` to 1e-4. MAE family: ``ViTModel`` (LayerNorm eps
1e-6) written in RETFound's key layout. LayerScale family: ``Dinov2Model`` written in RETFound-DINOv2's and
UNI's layouts.
"""

from __future__ import annotations

import re

import pytest
import torch
from layouts import dinov3_original_from_hf, randomise

import medvit

transformers = pytest.importorskip("transformers")

ATOL = 1e-4


@torch.no_grad()
def _randomise_hf(model, seed: int = 0) -> None:
    """Random biases, norms and layer scales too, so the comparison exercises every parameter."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "mask_token" in name:
            continue
        if "lambda1" in name or "norm" in name and name.endswith("weight"):
            p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.1 * torch.randn(p.shape, generator=g) + (0.05 if name.endswith("bias") else 0.0))


def _dinov3_reference(*, gated: bool, registers: int = 4, seed: int = 0):
    cfg = transformers.DINOv3ViTConfig(
        hidden_size=64,
        intermediate_size=96 if gated else 128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_register_tokens=registers,
        use_gated_mlp=gated,
        hidden_act="silu" if gated else "gelu",
        patch_size=16,
        image_size=64,
    )
    torch.manual_seed(seed)
    ref = transformers.DINOv3ViTModel(cfg).eval()
    _randomise_hf(ref, seed)
    return ref


def _dinov3_medvit(name: str, weights, *, gated: bool, registers: int = 4):
    return medvit.create_backbone(
        name,
        weights=weights,
        embed_dim=64,
        depth=3,
        num_heads=4,
        num_reg_tokens=registers,
        mlp_hidden_dim=96 if gated else 128,
        img_size=64,
    ).eval()


@pytest.mark.parametrize(("name", "gated"), [("dinov3_vits16", False), ("dinov3_vits16plus", True)])
def test_dinov3_matches_transformers_hf_folder_and_original_pth(name, gated, tmp_path):
    ref = _dinov3_reference(gated=gated)
    folder = tmp_path / "hf"
    ref.save_pretrained(folder)
    pth = tmp_path / "orig.pth"
    torch.save(dinov3_original_from_hf(ref.state_dict(), ref.config), pth)
    x = torch.randn(2, 3, 48, 80)  # non-square, 3 x 5 patches
    with torch.no_grad():
        want = ref(pixel_values=x, output_hidden_states=True)
        for weights in (folder, pth):
            model = _dinov3_medvit(name, weights, gated=gated)
            assert model.num_prefix_tokens == 5
            got = model.forward_features(x)
            torch.testing.assert_close(got, want.last_hidden_state, rtol=0, atol=ATOL)
            # intermediate patch maps are the per-layer hidden states without prefix tokens
            maps = model.forward_intermediates(x, indices=[0, 2], output_fmt="NLC")
            for i, m in zip([0, 2], maps, strict=True):
                torch.testing.assert_close(m, want.hidden_states[i + 1][:, 5:], rtol=0, atol=ATOL)
    assert sorted(model.load_report.dropped)[:2] == ["blocks.0.attn.qkv.bias_mask", "blocks.1.attn.qkv.bias_mask"]


def test_dinov3_without_registers(tmp_path):
    ref = _dinov3_reference(gated=False, registers=0, seed=3)
    ref.save_pretrained(tmp_path)
    model = _dinov3_medvit("dinov3_vits16", tmp_path, gated=False, registers=0)
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            model.forward_features(x), ref(pixel_values=x).last_hidden_state, rtol=0, atol=ATOL
        )


def test_dinov3_hf_config_mismatch_is_refused(tmp_path):
    ref = _dinov3_reference(gated=False)
    ref.save_pretrained(tmp_path)
    with pytest.raises(medvit.backbones.CheckpointError, match="config.json.*num_hidden_layers=3"):
        medvit.create_backbone("dinov3_vits16", weights=tmp_path, embed_dim=64, depth=2, num_heads=4)


def test_dinov3_train_mode_rescales_rope_like_reference():
    model = randomise(medvit.create_backbone("dinov3_vits16", embed_dim=64, depth=1, num_heads=4)).train()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a, b = model.forward_features(x), model.forward_features(x)
        assert not torch.allclose(a, b)  # random coordinate rescale in training mode
        model.eval()
        torch.testing.assert_close(model.forward_features(x), model.forward_features(x))


# -- helpers for the timm-layout families -----------------------------------------------------------------

_LAYER = re.compile(r"^(?:encoder\.)?layers?\.(\d+)\.(.+)$")
_SUB = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.o_proj": "attn.proj",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_QKV = {
    "attention.q_proj": 0,
    "attention.k_proj": 1,
    "attention.v_proj": 2,
    "attention.attention.query": 0,
    "attention.attention.key": 1,
    "attention.attention.value": 2,
}


def hf_vit_to_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ViT/Dinov2 keys -> timm keys (what RETFound, UNI and DINOv2 files use)."""
    out, qkv = {}, {}
    for key, v in sd.items():
        m = _LAYER.match(key)
        if not m:
            out[
                {
                    "embeddings.cls_token": "cls_token",
                    "embeddings.position_embeddings": "pos_embed",
                    "embeddings.mask_token": "mask_token",
                    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
                    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
                    "layernorm.weight": "norm.weight",
                    "layernorm.bias": "norm.bias",
                }[key]
            ] = v
            continue
        i, rest = m.group(1), m.group(2)
        stem, part = rest.rsplit(".", 1)
        if stem in _QKV:
            qkv.setdefault((i, part), [None] * 3)[_QKV[stem]] = v
        elif stem.startswith("layer_scale"):
            out[f"blocks.{i}.ls{stem[-1]}.gamma"] = v
        else:
            out[f"blocks.{i}.{_SUB[stem]}.{part}"] = v
    for (i, part), parts in qkv.items():
        out[f"blocks.{i}.attn.qkv.{part}"] = torch.cat(parts)
    return out


def test_mae_family_matches_transformers_vit(tmp_path):
    cfg = transformers.ViTConfig(
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=32,
        patch_size=16,
        layer_norm_eps=1e-6,
        qkv_bias=True,
    )
    torch.manual_seed(0)
    ref = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
    _randomise_hf(ref)
    sd = hf_vit_to_timm(ref.state_dict())
    sd |= {"mask_token": torch.zeros(1, 1, 16), "decoder_embed.weight": torch.randn(16, 64)}
    torch.save({"model": sd}, tmp_path / "RETFound_mae_natureCFP.pth")
    kw = dict(embed_dim=64, depth=3, num_heads=4, mlp_ratio=2.0, img_size=32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = ref(pixel_values=x).last_hidden_state
        for name in ("retfound_cfp", "retfound_oct", "urfound"):
            model = medvit.create_backbone(name, weights=tmp_path / "RETFound_mae_natureCFP.pth", **kw).eval()
            torch.testing.assert_close(model.forward_features(x), want, rtol=0, atol=ATOL)
    assert model.load_report.dropped == ["decoder_embed.weight", "mask_token"]


@pytest.mark.parametrize("name", ["retfound_dinov2_cfp", "uni_vitl16"])
def test_layerscale_family_matches_transformers_dinov2(name, tmp_path):
    cfg = transformers.Dinov2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=56, patch_size=14
    )
    torch.manual_seed(0)
    ref = transformers.Dinov2Model(cfg).eval()
    _randomise_hf(ref)
    sd = hf_vit_to_timm(ref.state_dict())
    if name == "retfound_dinov2_cfp":
        renamed = {k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3"): v for k, v in sd.items()}
        torch.save({"teacher": {f"backbone.{k}": v for k, v in renamed.items()}}, tmp_path / "w.pth")
    else:
        sd.pop("mask_token")
        torch.save(sd, tmp_path / "w.pth")
    model = medvit.create_backbone(
        name,
        weights=tmp_path / "w.pth",
        embed_dim=64,
        depth=2,
        num_heads=4,
        mlp_ratio=2.0,
        patch_size=14,
        img_size=56,
    ).eval()
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(
            model.forward_features(x), ref(pixel_values=x).last_hidden_state, atol=ATOL, rtol=0
        )
