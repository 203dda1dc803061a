"""Write test fixtures in each family's official file layout (as the authors' code saves them).

Everything here is written from the published key facts (see REFERENCES.md), independently of the
medvit filters it exercises.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

D_DEC = 16  # width of the fake decoders


def _decoder(dim: int, prefix: str = "") -> dict[str, torch.Tensor]:
    return {
        f"{prefix}mask_token": torch.zeros(1, 1, D_DEC),
        f"{prefix}decoder_embed.weight": torch.randn(D_DEC, dim),
        f"{prefix}decoder_pos_embed": torch.randn(1, 5, D_DEC),
        f"{prefix}decoder_blocks.0.attn.qkv.weight": torch.randn(3 * D_DEC, D_DEC),
        f"{prefix}decoder_norm.weight": torch.ones(D_DEC),
        f"{prefix}decoder_pred.weight": torch.randn(48, D_DEC),
    }


def medvit_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def write_mae(model, path: Path) -> Path:
    """RETFound MAE pre-training file: ``{'model': encoder + decoder + mask_token}``."""
    sd = medvit_state(model)
    torch.save({"model": {**sd, **_decoder(model.embed_dim)}}, path)
    return path


def write_urfound(model, path: Path) -> Path:
    """UrFound ``save_model_pretrain``: model/optimizer/epoch/scaler and a pickled argparse ``args``."""
    sd = medvit_state(model)
    sd.update(_decoder(model.embed_dim))
    sd["bert_encoder.embeddings.word_embeddings.weight"] = torch.randn(10, D_DEC)
    sd["bert_mlp.weight"] = torch.randn(D_DEC, model.embed_dim)
    args = argparse.Namespace(model="urmodel", mask_ratio=0.75)
    torch.save({"model": sd, "optimizer": {"state": {}}, "epoch": 3, "scaler": {}, "args": args}, path)
    return path


def write_retfound_dinov2(model, path: Path) -> Path:
    """RETFound DINOv2 teacher: ``{'teacher': {'backbone.*' with mlp.w12/w3, dino_head.*, ibot_head.*}}``."""
    sd = {}
    for k, v in medvit_state(model).items():
        k = k.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")
        sd["backbone." + k] = v
    sd["backbone.mask_token"] = torch.zeros(1, model.embed_dim)
    sd["dino_head.mlp.0.weight"] = torch.randn(8, model.embed_dim)
    sd["ibot_head.mlp.0.weight"] = torch.randn(8, model.embed_dim)
    torch.save({"teacher": sd}, path)
    return path


def write_hiendmae(model, path: Path) -> Path:
    """Hi-End-MAE: ``{'epoch', 'state_dict': {'module.encoder.*', 'module.encoder_pos_embed', decoder}}``."""
    sd = {}
    for k, v in medvit_state(model).items():
        sd["module.encoder_pos_embed" if k == "pos_embed" else "module.encoder." + k] = v
    sd["module.mask_token"] = torch.zeros(1, 1, D_DEC)
    sd["module.decoder_pos_embed"] = torch.randn(1, 8, D_DEC)
    sd["module.decoder.blocks.0.norm1.weight"] = torch.ones(D_DEC)
    sd["module.encoder_to_decoder.0.weight"] = torch.randn(D_DEC, model.embed_dim)
    torch.save({"epoch": 999, "state_dict": sd, "optimizer": {"state": {}}, "scaler": {"scale": 1.0}}, path)
    return path


def write_uni(model, path: Path) -> Path:
    """UNI ``pytorch_model.bin``: the flat timm state dict."""
    torch.save(medvit_state(model), path)
    return path


def dinov3_original_from_medvit(model) -> dict[str, torch.Tensor]:
    """The original DINOv3 ``.pth`` layout from a medvit model (qkv bias with its k third zero + bias_mask)."""
    out = {}
    dim = model.embed_dim
    for k, v in medvit_state(model).items():
        if k == "reg_token":
            out["storage_tokens"] = v
        elif k.endswith(".mlp.w12.weight") or k.endswith(".mlp.w12.bias"):
            stem, part = k.rsplit(".w12.", 1)
            out[f"{stem}.w1.{part}"], out[f"{stem}.w2.{part}"] = v.chunk(2)
        elif k.endswith(".attn.qkv.bias"):
            mask = torch.ones(3 * dim)
            mask[dim : 2 * dim] = 0
            out[k] = v
            out[k + "_mask"] = mask
        else:
            out[k] = v
    out["mask_token"] = torch.zeros(1, dim)
    out["rope_embed.periods"] = model.rope_embed.periods.clone()
    return out


def dinov3_original_from_hf(hf_sd: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """The original DINOv3 ``.pth`` layout from a Hugging Face ``DINOv3ViTModel`` state dict."""
    out = {
        "cls_token": hf_sd["embeddings.cls_token"],
        "storage_tokens": hf_sd["embeddings.register_tokens"],
        "mask_token": hf_sd["embeddings.mask_token"].reshape(1, -1),
        "patch_embed.proj.weight": hf_sd["embeddings.patch_embeddings.weight"],
        "patch_embed.proj.bias": hf_sd["embeddings.patch_embeddings.bias"],
        "norm.weight": hf_sd["norm.weight"],
        "norm.bias": hf_sd["norm.bias"],
    }
    head_dim = config.hidden_size // config.num_attention_heads
    out["rope_embed.periods"] = config.rope_theta ** (torch.arange(head_dim // 4) / (head_dim // 4))
    dim = config.hidden_size
    for i in range(config.num_hidden_layers):
        h, b = f"model.layer.{i}.", f"blocks.{i}."
        if h + "norm1.weight" not in hf_sd:
            h = f"layer.{i}."
        out[b + "attn.qkv.weight"] = torch.cat([hf_sd[h + f"attention.{n}_proj.weight"] for n in "qkv"])
        # the original stores a random K bias and masks it; make it non-zero so the mask matters
        k_bias = torch.randn(dim)
        out[b + "attn.qkv.bias"] = torch.cat(
            [hf_sd[h + "attention.q_proj.bias"], k_bias, hf_sd[h + "attention.v_proj.bias"]]
        )
        mask = torch.ones(3 * dim)
        mask[dim : 2 * dim] = 0
        out[b + "attn.qkv.bias_mask"] = mask
        for part in ("weight", "bias"):
            out[b + f"attn.proj.{part}"] = hf_sd[h + f"attention.o_proj.{part}"]
            out[b + f"norm1.{part}"] = hf_sd[h + f"norm1.{part}"]
            out[b + f"norm2.{part}"] = hf_sd[h + f"norm2.{part}"]
            if config.use_gated_mlp:
                out[b + f"mlp.w1.{part}"] = hf_sd[h + f"mlp.gate_proj.{part}"]
                out[b + f"mlp.w2.{part}"] = hf_sd[h + f"mlp.up_proj.{part}"]
                out[b + f"mlp.w3.{part}"] = hf_sd[h + f"mlp.down_proj.{part}"]
            else:
                out[b + f"mlp.fc1.{part}"] = hf_sd[h + f"mlp.up_proj.{part}"]
                out[b + f"mlp.fc2.{part}"] = hf_sd[h + f"mlp.down_proj.{part}"]
        out[b + "ls1.gamma"] = hf_sd[h + "layer_scale1.lambda1"]
        out[b + "ls2.gamma"] = hf_sd[h + "layer_scale2.lambda1"]
    return out


def write_dinov3_hf_from_medvit(model, folder: Path) -> Path:
    """A Hugging Face DINOv3 folder (config.json + model.safetensors) from a medvit model."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = medvit_state(model)
    dim = model.embed_dim
    gated = hasattr(model.blocks[0].mlp, "w12")
    out = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.register_tokens": sd["reg_token"],
        "embeddings.mask_token": torch.zeros(1, 1, dim),
        "embeddings.patch_embeddings.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.bias": sd["patch_embed.proj.bias"],
        "norm.weight": sd["norm.weight"],
        "norm.bias": sd["norm.bias"],
    }
    for i in range(model.depth):
        b, h = f"blocks.{i}.", f"layer.{i}."
        q, k, v = sd[b + "attn.qkv.weight"].chunk(3)
        out |= {
            h + "attention.q_proj.weight": q,
            h + "attention.k_proj.weight": k,
            h + "attention.v_proj.weight": v,
        }
        if b + "attn.qkv.bias" in sd:
            qb, _, vb = sd[b + "attn.qkv.bias"].chunk(3)
            out |= {h + "attention.q_proj.bias": qb, h + "attention.v_proj.bias": vb}
        for part in ("weight", "bias"):
            out[h + f"attention.o_proj.{part}"] = sd[b + f"attn.proj.{part}"]
            out[h + f"norm1.{part}"] = sd[b + f"norm1.{part}"]
            out[h + f"norm2.{part}"] = sd[b + f"norm2.{part}"]
            if gated:
                g, u = sd[b + f"mlp.w12.{part}"].chunk(2)
                out |= {h + f"mlp.gate_proj.{part}": g, h + f"mlp.up_proj.{part}": u}
                out[h + f"mlp.down_proj.{part}"] = sd[b + f"mlp.w3.{part}"]
            else:
                out[h + f"mlp.up_proj.{part}"] = sd[b + f"mlp.fc1.{part}"]
                out[h + f"mlp.down_proj.{part}"] = sd[b + f"mlp.fc2.{part}"]
        out[h + "layer_scale1.lambda1"] = sd[b + "ls1.gamma"]
        out[h + "layer_scale2.lambda1"] = sd[b + "ls2.gamma"]
    hidden = model.blocks[0].mlp.hidden_dim if gated else model.blocks[0].mlp.fc1.out_features
    config = {
        "model_type": "dinov3_vit",
        "hidden_size": dim,
        "num_hidden_layers": model.depth,
        "num_attention_heads": model.num_heads,
        "intermediate_size": hidden,
        "num_register_tokens": model.num_reg_tokens,
        "patch_size": model.patch_size[0],
        "use_gated_mlp": gated,
        "hidden_act": "silu" if gated else "gelu",
        "rope_theta": 100.0,
        "layer_norm_eps": 1e-5,
        "key_bias": False,
        "query_bias": b + "attn.qkv.bias" in sd,
        "value_bias": b + "attn.qkv.bias" in sd,
    }
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in out.items()}, str(folder / "model.safetensors"))
    return folder


def write_official(name: str, model, tmp: Path) -> tuple[Path, dict]:
    """The fixture for a registry entry in its official layout, plus the create_backbone kwargs it needs."""
    if name.startswith("retfound_dinov2"):
        return write_retfound_dinov2(model, tmp / "RETFound_dinov2_meh.pth"), {}
    if name.startswith("retfound"):
        return write_mae(model, tmp / "RETFound_mae.pth"), {}
    if name == "urfound":
        return write_urfound(model, tmp / "urfound.pth"), {"trust_pickle": True}
    if name == "hiendmae_ct":
        return write_hiendmae(model, tmp / "hi_end_mae_10k.pth"), {}
    if name == "uni_vitl16":
        return write_uni(model, tmp / "pytorch_model.bin"), {}
    if name.startswith("dinov3"):
        path = tmp / f"{name}.pth"
        torch.save(dinov3_original_from_medvit(model), path)
        return path, {}
    from medvit.backbones import save_backbone

    return save_backbone(model, tmp / f"{name}.safetensors"), {}


def tiny_kwargs(name: str) -> dict:
    """Overrides that shrink a registry entry to a test-sized model, keeping its family's structure."""
    from medvit.backbones import get_entry

    dims = get_entry(name).dims
    kw: dict = dict(embed_dim=64, depth=2, num_heads=4)
    if dims.get("mlp_hidden_dim"):
        kw["mlp_hidden_dim"] = 96
    else:
        kw["mlp_ratio"] = 2.0
    if dims.get("feature_indices"):
        kw["feature_indices"] = (0, 1)
    patch, spatial = dims.get("patch_size", 16), dims.get("spatial_dims", 2)
    kw["img_size"] = (3 * patch, 2 * patch) if spatial == 2 else (2 * patch,) * 3
    if spatial == 3:
        kw["embed_dim"] = 48  # a 3D sin-cos embedding needs a multiple of 6
    return kw


def example_input(model, batch: int = 2) -> torch.Tensor:
    """A random input at the model's own size."""
    c = model.patch_embed.proj.in_channels
    return torch.randn(batch, c, *model.img_size)


@torch.no_grad()
def randomise(model, seed: int = 0):
    """Give every parameter a non-trivial random value (biases, norms, LayerScale included)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("gamma") or "norm" in name and name.endswith("weight"):
            p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model
