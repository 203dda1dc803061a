"""DINOv3 (Siméoni et al., "DINOv3", arXiv:2508.10104, 2025): the ViT backbones, from both the original flat
``.pth`` and the Hugging Face folder (``config.json`` + ``model.safetensors``).

Original keys: ``cls_token``, ``storage_tokens``, ``mask_token``, ``rope_embed.periods``,
``blocks.N.attn.qkv.{weight,bias,bias_mask}``, ``blocks.N.ls1.gamma``, ``mlp.fc1/fc2`` or ``mlp.w1/w2/w3``.
Hugging Face keys: ``embeddings.{cls_token,register_tokens,mask_token,patch_embeddings}``,
``layer.N.attention.{q,k,v,o}_proj`` (no key bias), ``layer.N.layer_scale{1,2}.lambda1``,
``layer.N.mlp.{gate,up,down}_proj``. Both map onto the medvit ViT with fused ``attn.qkv`` (key bias held at
zero), ``reg_token``, ``ls*.gamma`` and fused SwiGLU ``mlp.w12``. The export writes the original ``.pth``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medvit.backbones.checkpoints import CheckpointError, drop, strip_prefix, unwrap
from medvit.backbones.registry import Family, PretrainedCfg, register
from medvit.backbones.retfound import IMAGENET_MEAN, IMAGENET_STD

DINOV3_DROPS = ("mask_token", "rope_embed.periods", "blocks.*.attn.qkv.bias_mask", "local_cls_norm.*")

_HF_LAYER = re.compile(r"^(?:model\.)?layer\.(\d+)\.(.+)$")
_HF_RENAMES = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.o_proj": "attn.proj",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
}


def _from_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = _HF_LAYER.match(key)
        if m:
            layers.setdefault(int(m.group(1)), {})[m.group(2)] = value
        elif key.startswith("embeddings."):
            name = key[len("embeddings.") :]
            name = {"register_tokens": "reg_token", "patch_embeddings.weight": "patch_embed.proj.weight"}.get(
                name, name
            )
            out["patch_embed.proj.bias" if name == "patch_embeddings.bias" else name] = value
        else:
            out[key] = value
    for i, sub in layers.items():
        p = f"blocks.{i}."
        q, k, v = (sub.pop(f"attention.{n}_proj.weight") for n in "qkv")
        out[p + "attn.qkv.weight"] = torch.cat([q, k, v])
        if "attention.q_proj.bias" in sub:
            qb, vb = sub.pop("attention.q_proj.bias"), sub.pop("attention.v_proj.bias")
            kb = sub.pop("attention.k_proj.bias", torch.zeros_like(qb))
            out[p + "attn.qkv.bias"] = torch.cat([qb, kb, vb])
        gated = "mlp.gate_proj.weight" in sub
        for key, value in sub.items():
            for part in ("weight", "bias"):
                if key.endswith("." + part):
                    stem = key[: -len(part) - 1]
                    if stem == "mlp.up_proj" and not gated:
                        out[p + "mlp.fc1." + part] = value
                    elif stem == "mlp.down_proj":
                        out[p + ("mlp.w3." if gated else "mlp.fc2.") + part] = value
                    elif stem in ("mlp.gate_proj", "mlp.up_proj"):
                        pass  # fused below
                    else:
                        out[p + _HF_RENAMES.get(stem, stem) + "." + part] = value
            if key in _HF_RENAMES:
                out[p + _HF_RENAMES[key]] = value
        if gated:
            for part in ("weight", "bias"):
                if f"mlp.gate_proj.{part}" in sub:
                    out[p + f"mlp.w12.{part}"] = torch.cat(
                        [sub[f"mlp.gate_proj.{part}"], sub[f"mlp.up_proj.{part}"]]
                    )
    return out


def _from_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(state)
    if "storage_tokens" in out:
        out["reg_token"] = out.pop("storage_tokens")
    for key in [k for k in out if k.endswith(".attn.qkv.bias_mask")]:
        bias_key = key[: -len("_mask")]
        mask = out[key]
        if bias_key in out:
            if not torch.isfinite(mask).all():  # never initialised: the standard mask zeroes the key third
                mask = torch.ones_like(out[bias_key])
                mask[mask.numel() // 3 : 2 * mask.numel() // 3] = 0
            out[bias_key] = out[bias_key] * mask.to(out[bias_key].dtype)
    for key in [k for k in out if k.endswith(".mlp.w1.weight") or k.endswith(".mlp.w1.bias")]:
        stem, part = key.rsplit(".w1.", 1)
        out[f"{stem}.w12.{part}"] = torch.cat([out.pop(key), out.pop(f"{stem}.w2.{part}")])
    return out


def normalise(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Either layout (and medvit's own) to medvit names; pure and idempotent."""
    state = strip_prefix(unwrap(obj, ("model", "teacher", "state_dict")), "module.")
    if "embeddings.patch_embeddings.weight" in state:
        return _from_hf(state)
    state = strip_prefix(state, "backbone.")
    return _from_original(state)


def checkpoint_filter(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map a DINOv3 file (original ``.pth`` or HF layout) onto the medvit ViT; pure.

    ``rope_embed.periods`` is checked against the model's ``rope_theta`` and dropped; ``bias_mask`` is folded
    into the qkv bias; ``mask_token`` and ``local_cls_norm`` (7B) are dropped. No position resampling is needed
    (RoPE works on any grid).
    """
    state = normalise(state_dict)
    periods = state.get("rope_embed.periods")
    rope = getattr(model, "rope_embed", None)
    if periods is not None and rope is not None:
        if periods.shape != rope.periods.shape or not torch.allclose(periods.float(), rope.periods, rtol=1e-4):
            raise CheckpointError(
                f"rope_embed.periods in the file {tuple(periods.shape)} do not match rope_theta={rope.theta} "
                f"for head dim {rope.head_dim}: the file belongs to another DINOv3 configuration"
            )
    reg = state.get("reg_token")
    if reg is not None and reg.shape[1] == 0 and getattr(model, "reg_token", None) is None:
        state = {k: v for k, v in state.items() if k != "reg_token"}  # HF stores an empty tensor
    return drop(state, DINOV3_DROPS)


def check_config(config: dict, model: nn.Module, path: str) -> None:
    """Refuse a Hugging Face ``config.json`` whose architecture differs from the model built here."""
    mlp = model.blocks[0].mlp
    gated = hasattr(mlp, "w12")
    hidden = mlp.hidden_dim if gated else mlp.fc1.out_features
    patch = config.get("patch_size", 16)
    want = {
        "model_type": ("dinov3_vit", config.get("model_type")),
        "hidden_size": (model.embed_dim, config.get("hidden_size")),
        "num_hidden_layers": (model.depth, config.get("num_hidden_layers")),
        "num_attention_heads": (model.num_heads, config.get("num_attention_heads")),
        "intermediate_size": (hidden, config.get("intermediate_size")),
        "num_register_tokens": (model.num_reg_tokens, config.get("num_register_tokens", 0)),
        "patch_size": (model.patch_size[0], patch if isinstance(patch, int) else patch[0]),
        "use_gated_mlp": (gated, config.get("use_gated_mlp", False)),
        "hidden_act": ("silu" if gated else "gelu", config.get("hidden_act", "gelu")),
        "rope_theta": (
            float(model.rope_embed.theta) if model.rope_embed else None,
            config.get("rope_theta", 100.0),
        ),
        "layer_norm_eps": (model.norm.eps, config.get("layer_norm_eps", 1e-5)),
        "key_bias": (False, config.get("key_bias", False)),
    }
    bad = [
        f"{k}={got!r} (expected {exp!r})" for k, (exp, got) in want.items() if got != exp and not _close(exp, got)
    ]
    if bad:
        raise CheckpointError(f"{path}: config.json does not describe this backbone: {', '.join(bad)}")


def _close(a: Any, b: Any) -> bool:
    return isinstance(a, float) and isinstance(b, int | float) and abs(a - b) <= 1e-9 * max(1.0, abs(a))


def export_original(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The original flat ``.pth``: ``storage_tokens``, qkv bias with its key third zero plus a float
    ``bias_mask``, SwiGLU ``mlp.w1``/``mlp.w2``, ``rope_embed.periods`` and ``mask_token [1, D]``.

    Extra tensors are written as-is after these; an extra ``mask_token`` replaces the zero one (reshaped to
    ``[1, D]`` when it holds ``D`` values, e.g. a ``[1, 1, D]`` iBOT token).
    """
    own = set(model.state_dict())
    masked = any(getattr(b.attn, "k_bias_mask", None) is not None for b in model.blocks)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in own:
            continue
        if key == "reg_token":
            out["storage_tokens"] = value
        elif key.endswith((".mlp.w12.weight", ".mlp.w12.bias")):
            stem, part = key.rsplit(".w12.", 1)
            w1, w2 = value.chunk(2)
            out[f"{stem}.w1.{part}"], out[f"{stem}.w2.{part}"] = w1.clone(), w2.clone()
        elif key.endswith(".attn.qkv.bias") and masked:
            mask = torch.ones_like(value)
            mask[value.numel() // 3 : 2 * value.numel() // 3] = 0
            out[key] = value * mask  # the key bias the model holds at zero
            out[key + "_mask"] = mask
        else:
            out[key] = value
    dtype = state["cls_token"].dtype if "cls_token" in state else torch.float32
    out["mask_token"] = torch.zeros(1, model.embed_dim, dtype=dtype)
    rope = getattr(model, "rope_embed", None)
    if rope is not None:
        out["rope_embed.periods"] = rope.periods.detach().cpu().clone()
    out.update({k: v for k, v in state.items() if k not in own})
    if out["mask_token"].numel() == model.embed_dim:
        out["mask_token"] = out["mask_token"].reshape(1, model.embed_dim)
    return out


DINOV3 = Family(
    "DINOv3", normalise, DINOV3_DROPS, check_config, custom_filter=checkpoint_filter, export=export_original
)

_HASHES = {
    "vits16": "08c60483",
    "vits16plus": "4057cbaa",
    "vitb16": "73cec8be",
    "vitl16": "8aa4cbdd",
    "vith16plus": "7c1da9a5",
    "vit7b16": "a955f4ea",
}
_ARCH = {
    "vits16": "vit_small_patch16",
    "vits16plus": "vit_small_plus_patch16",
    "vitb16": "vit_base_patch16",
    "vitl16": "vit_large_patch16",
    "vith16plus": "vit_huge_plus_patch16",
    "vit7b16": "vit_7b_patch16",
}


def _cfg(size: str) -> PretrainedCfg:
    return PretrainedCfg(
        name=f"{_ARCH[size]}.dinov3_lvd1689m",
        input_size=(3, 224, 224),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        interpolation="bilinear",
        license="DINOv3 License (Meta; https://ai.meta.com/resources/models-and-libraries/dinov3-license/)",
        paper="Siméoni et al., DINOv3, arXiv:2508.10104 (2025)",
        source=f"https://github.com/facebookresearch/dinov3 (download links after request) or "
        f"https://huggingface.co/facebook/dinov3-{size}-pretrain-lvd1689m (gated)",
        file_names=(f"dinov3_{size}_pretrain_lvd1689m-{_HASHES[size]}.pth", f"dinov3-{size}-pretrain-lvd1689m"),
        layout="flat state_dict .pth (storage_tokens, qkv + bias_mask, ls1.gamma) or HF folder",
        notes="RoPE: any H, W divisible by 16 without interpolation; tokens are [CLS, 4 storage, patches]",
    )


_DINOV3 = dict(
    patch_size=16,
    pos_embed="none",
    rope=True,
    rope_theta=100.0,
    rope_rescale_coords=2.0,
    num_reg_tokens=4,
    init_values=1e-5,
    norm_eps=1e-5,
    mask_k_bias=True,
)


@register(arch=_ARCH["vits16"], cfg=_cfg("vits16"), family=DINOV3)
def dinov3_vits16() -> dict[str, Any]:
    """DINOv3 ViT-S/16 (21M) distilled on LVD-1689M."""
    return _DINOV3 | dict(embed_dim=384, depth=12, num_heads=6)


@register(arch=_ARCH["vits16plus"], cfg=_cfg("vits16plus"), family=DINOV3)
def dinov3_vits16plus() -> dict[str, Any]:
    """DINOv3 ViT-S+/16 (29M, SwiGLU) distilled on LVD-1689M."""
    return _DINOV3 | dict(embed_dim=384, depth=12, num_heads=6, ffn_layer="swiglu", mlp_hidden_dim=1536)


@register(arch=_ARCH["vitb16"], cfg=_cfg("vitb16"), family=DINOV3)
def dinov3_vitb16() -> dict[str, Any]:
    """DINOv3 ViT-B/16 (86M) distilled on LVD-1689M."""
    return _DINOV3 | dict(embed_dim=768, depth=12, num_heads=12)


@register(arch=_ARCH["vitl16"], cfg=_cfg("vitl16"), family=DINOV3)
def dinov3_vitl16() -> dict[str, Any]:
    """DINOv3 ViT-L/16 (300M) distilled on LVD-1689M."""
    return _DINOV3 | dict(embed_dim=1024, depth=24, num_heads=16)


@register(arch=_ARCH["vith16plus"], cfg=_cfg("vith16plus"), family=DINOV3)
def dinov3_vith16plus() -> dict[str, Any]:
    """DINOv3 ViT-H+/16 (840M, SwiGLU) distilled on LVD-1689M."""
    return _DINOV3 | dict(embed_dim=1280, depth=32, num_heads=20, ffn_layer="swiglu", mlp_hidden_dim=5120)


@register(arch=_ARCH["vit7b16"], cfg=_cfg("vit7b16"), family=DINOV3)
def dinov3_vit7b16() -> dict[str, Any]:
    """DINOv3 ViT-7B/16 (6.7B, SwiGLU, no qkv bias), the teacher trained on LVD-1689M."""
    return _DINOV3 | dict(
        embed_dim=4096, depth=40, num_heads=32, ffn_layer="swiglu", mlp_hidden_dim=8192, qkv_bias=False
    )
