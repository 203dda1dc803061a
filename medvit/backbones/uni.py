"""UNI (Chen et al., "Towards a general-purpose foundation model for computational pathology",
Nature Medicine 2024), the ViT-L/16 backbone CellVTA builds on.

The file is timm's flat ``pytorch_model.bin`` (no head): LayerScale ``ls1/ls2.gamma``, learned
``pos_embed [1, 197, 1024]`` resampled to the input grid (CellVTA runs at 256, i.e. 16x16 tokens). The
export writes that flat state dict back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medvit.backbones.checkpoints import strip_prefix, unwrap
from medvit.backbones.registry import Family, PretrainedCfg, register

UNI_DROPS = ("mask_token",)


def normalise(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Unwrap an optional ``{'model': ...}`` and strip ``module.``/``encoder.`` prefixes; pure."""
    return strip_prefix(strip_prefix(unwrap(obj), "module."), "encoder.")


def export(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The flat timm state dict of ``pytorch_model.bin`` (medvit's keys are timm's); extra tensors as-is."""
    return dict(state)


UNI = Family("UNI", normalise, UNI_DROPS, export=export)  # pos embed resampled bicubically to the model grid


@register(
    arch="vit_large_patch16",
    cfg=PretrainedCfg(
        name="vit_large_patch16.uni",
        input_size=(3, 224, 224),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        license="CC BY-NC-ND 4.0 (UNI weights; gated access)",
        paper="Chen et al., Towards a general-purpose foundation model for computational pathology, Nat. Med. "
        "2024; used by CellVTA (Yang et al., 2025)",
        source="https://huggingface.co/MahmoodLab/UNI (gated), code https://github.com/mahmoodlab/UNI",
        file_names=("uni/pytorch_model.bin", "UNI/pytorch_model.bin", "uni_vitl16.bin"),
        layout="flat timm state_dict (pytorch_model.bin), no head",
        notes="mean=std=0.5 is CellVTA's normalisation; CellVTA runs at 256x256",
    ),
    family=UNI,
)
def uni_vitl16() -> dict[str, Any]:
    """UNI ViT-L/16 for H&E pathology (LayerScale 1e-5, learned position embedding), CellVTA's backbone."""
    return dict(embed_dim=1024, depth=24, num_heads=16, patch_size=16, init_values=1e-5)
