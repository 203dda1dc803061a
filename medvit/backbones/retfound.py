"""RETFound (Zhou et al., "A foundation model for generalizable disease detection from retinal images",
Nature 2023): the MAE ViT-L/16 checkpoints and the DINOv2 ViT-L/14 variant.

MAE files are ``{'model': state_dict}`` with the MAE decoder; the encoder keys are timm's. The DINOv2 file is
``{'teacher': state_dict}`` with a ``backbone.`` prefix, DINO/iBOT heads and ``mlp.w12``/``mlp.w3`` names for
what timm calls ``mlp.fc1``/``mlp.fc2`` (RETFound's ``main_finetune.py`` renames them the same way).
``export_mae`` and ``export_dinov2`` write those layouts back (:func:`~medvit.backbones.save_official`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medvit.backbones.checkpoints import matches, strip_prefix, unwrap
from medvit.backbones.registry import Family, PretrainedCfg, register

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RETFOUND_PAPER = (
    "Zhou et al., A foundation model for generalizable disease detection from retinal images, "
    "Nature 622, 156-163 (2023)"
)
RETFOUND_LICENSE = "CC BY-NC 4.0 (RETFound weights; gated access on the Hugging Face Hub)"

# ViT-L/16 as MAE pre-trains it: sin-cos init, LayerNorm eps 1e-6, no LayerScale
VIT_LARGE_PATCH16 = dict(embed_dim=1024, depth=24, num_heads=16, patch_size=16, pos_embed="sincos")


# -- MAE --------------------------------------------------------------------------------------------------

MAE_DROPS = ("mask_token", "decoder_*", "decoder.*")


def normalise_mae(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Unwrap ``{'model': ...}`` and strip a DDP ``module.`` prefix; pure and idempotent."""
    return strip_prefix(unwrap(obj), "module.")


def export_mae(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, Any]:
    """``{'model': state_dict}`` with timm keys (medvit's own); extra tensors (decoder, ``mask_token``) as-is."""
    return {"model": dict(state)}


# the decoder and ``mask_token`` are dropped; ``pos_embed`` is resampled (bicubic, CLS kept) to the model grid
MAE = Family("RETFound MAE", normalise_mae, MAE_DROPS, export=export_mae)


def _retfound_cfg(tag: str, modality: str) -> PretrainedCfg:
    return PretrainedCfg(
        name=f"vit_large_patch16.{tag}",
        input_size=(3, 224, 224),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        license=RETFOUND_LICENSE,
        paper=RETFOUND_PAPER,
        source=f"https://huggingface.co/YukunZhou/RETFound_mae_nature{modality} (gated), "
        "code https://github.com/rmaphoh/RETFound_MAE",
        file_names=(f"RETFound_mae_nature{modality}.pth",),
        layout="{'model': state_dict} with MAE decoder keys",
        notes="authors fine-tune with global average pooling + fc_norm (fc_norm=True, global_pool='avg')",
    )


@register(arch="vit_large_patch16", cfg=_retfound_cfg("retfound_cfp", "CFP"), family=MAE)
def retfound_cfp() -> dict[str, Any]:
    """RETFound MAE ViT-L/16 pre-trained on colour fundus photographs."""
    return VIT_LARGE_PATCH16


@register(arch="vit_large_patch16", cfg=_retfound_cfg("retfound_oct", "OCT"), family=MAE)
def retfound_oct() -> dict[str, Any]:
    """RETFound MAE ViT-L/16 pre-trained on OCT B-scans."""
    return VIT_LARGE_PATCH16


# -- DINOv2 variant -----------------------------------------------------------------------------------------

DINOV2_DROPS = ("mask_token", "dino_head.*", "ibot_head.*", "dino_loss.*", "ibot_patch_loss.*")
_DINOV2_RENAMES = ((".mlp.w12.", ".mlp.fc1."), (".mlp.w3.", ".mlp.fc2."))


def normalise_dinov2(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Unwrap ``{'teacher': ...}``, strip ``module.``/``backbone.``, rename ``mlp.w12/w3`` to ``mlp.fc1/fc2``."""
    state = strip_prefix(strip_prefix(unwrap(obj, ("teacher", "model", "state_dict")), "module."), "backbone.")
    out = {}
    for key, value in state.items():
        for old, new in _DINOV2_RENAMES:
            key = key.replace(old, new)
        out[key] = value
    return out


_DINOV2_TOP_LEVEL = ("dino_head.*", "ibot_head.*", "dino_loss.*", "ibot_patch_loss.*")  # not under backbone.


def export_dinov2(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, Any]:
    """``{'teacher': {'backbone.' + key}}`` with ``mlp.fc1/fc2`` named ``mlp.w12/w3``; extra DINO/iBOT heads stay
    at the top of the teacher dict, other extra tensors (``mask_token``) go under ``backbone.``."""
    teacher = {}
    for key, value in state.items():
        if matches(key, _DINOV2_TOP_LEVEL):
            teacher[key] = value
            continue
        for official, ours in _DINOV2_RENAMES:
            key = key.replace(ours, official)
        teacher["backbone." + key] = value
    return {"teacher": teacher}


DINOV2 = Family("RETFound DINOv2", normalise_dinov2, DINOV2_DROPS, export=export_dinov2)


@register(
    arch="vit_large_patch14",
    cfg=PretrainedCfg(
        name="vit_large_patch14.retfound_dinov2_cfp",
        input_size=(3, 224, 224),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        license=RETFOUND_LICENSE,
        paper=RETFOUND_PAPER + "; Oquab et al., DINOv2, TMLR 2024",
        source="https://huggingface.co/YukunZhou/RETFound_dinov2_meh (gated), "
        "code https://github.com/rmaphoh/RETFound_MAE",
        file_names=("RETFound_dinov2_meh.pth",),
        layout="{'teacher': state_dict}, 'backbone.' prefix, mlp.w12/mlp.w3, DINO/iBOT heads",
    ),
    family=DINOV2,
)
def retfound_dinov2_cfp() -> dict[str, Any]:
    """RETFound DINOv2 ViT-L/14 (LayerScale, learned position embedding) on colour fundus photographs."""
    return dict(embed_dim=1024, depth=24, num_heads=16, patch_size=14, init_values=1e-5)
