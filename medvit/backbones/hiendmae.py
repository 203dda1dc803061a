"""Hi-End-MAE (Tang et al., "Hi-End-MAE: Hierarchical encoder-driven masked autoencoders are stronger vision
learners for medical image segmentation", Medical Image Analysis 2025): the 3D ViT encoder.

The released ``hi_end_mae_10k.pth`` is ``{'epoch', 'state_dict', 'optimizer', 'scaler'}``; the state dict has
a DDP ``module.`` prefix, the encoder under ``encoder.``, its position embedding outside the encoder as
``encoder_pos_embed [1, 512, 1536]`` (8x8x8 grid for 96^3 crops, no CLS entry: the CLS token gets a zero
position), and the decoder (``decoder*``, ``encoder_to_decoder*``, ``mask_token``), which is dropped. The
export writes ``{'state_dict': ...}`` in that layout back.

Patch-embedding order. The authors apply ``Conv3d(k=s=12)`` to patchified voxels laid out channel-last,
``[ph, pw, pd, C]`` per token. Reshaping such a token back to ``[ph, pw, pd, C]`` and moving ``C`` first gives
exactly the voxel block ``x[:, h*12:(h+1)*12, w*12:(w+1)*12, d*12:(d+1)*12]``, so the stored
``Conv3d`` weight ``[1536, C, 12, 12, 12]`` applies tap ``(i, j, k)`` to voxel offset ``(i, j, k)``: a plain
Conv3d on ``[B, C, H, W, D]`` with the weight as stored reproduces it, with tokens row-major over
``(H, W, D)``. With ``in_chans=1`` (the released model) the channel position cannot matter at all: the
flattened ``[ph, pw, pd, 1]`` and ``[1, ph, pw, pd]`` vectors are the same, which is also why the authors'
MONAI loader may use ``weight.flatten(1)`` as a linear patch embedding. ``tests/backbones`` checks both facts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medvit.backbones.checkpoints import strip_prefix, unwrap
from medvit.backbones.registry import Family, PretrainedCfg, register

HIENDMAE_DROPS = ("mask_token", "decoder.*", "decoder_*", "encoder_to_decoder*")


def normalise(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Unwrap ``{'state_dict': ...}``, strip ``module.`` and ``encoder.``, ``encoder_pos_embed -> pos_embed``."""
    state = strip_prefix(unwrap(obj, ("state_dict", "model")), "module.")
    if "encoder_pos_embed" in state:
        state = {("pos_embed" if k == "encoder_pos_embed" else k): v for k, v in state.items()}
    return strip_prefix(state, "encoder.")


def export(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, Any]:
    """``{'state_dict': {'module.encoder.<key>', 'module.encoder_pos_embed'}}``; extra tensors (the decoder,
    ``mask_token``, ``encoder_to_decoder``) get the DDP ``module.`` prefix only."""
    own = set(model.state_dict())
    out = {}
    for key, value in state.items():
        if key == "pos_embed":
            out["module.encoder_pos_embed"] = value
        elif key in own:
            out["module.encoder." + key] = value
        else:
            out["module." + key] = value
    return {"state_dict": out}


# the decoder is dropped; ``pos_embed`` is resampled trilinearly when the model's crop differs from 96^3
HIENDMAE = Family("Hi-End-MAE", normalise, HIENDMAE_DROPS, export=export)


@register(
    arch="vit_large_patch12_96_3d",
    cfg=PretrainedCfg(
        name="vit_large_patch12_96_3d.hiendmae_ct",
        input_size=(1, 96, 96, 96),
        hu_window=(-175.0, 250.0),
        spacing=(1.5, 1.5, 1.5),
        interpolation="trilinear",
        license="see https://github.com/FengheTan9/Hi-End-MAE (weights shared for research)",
        paper="Tang et al., Hi-End-MAE: Hierarchical encoder-driven masked autoencoders are stronger vision "
        "learners for medical image segmentation, Medical Image Analysis 2025",
        source="https://github.com/FengheTan9/Hi-End-MAE (Google Drive / Baidu links in the README)",
        file_names=("hi_end_mae_10k.pth",),
        layout="{'state_dict': ...} with 'module.' prefix, encoder.*, encoder_pos_embed, decoder keys",
        notes="RAS orientation, HU clipped to [-175, 250] and scaled to [0, 1]; UNETR taps blocks 3, 6, 9",
    ),
    family=HIENDMAE,
)
def hiendmae_ct() -> dict[str, Any]:
    """Hi-End-MAE 3D ViT encoder (1536 dim, 12 blocks, 12^3 patches) pre-trained on 10k CT volumes."""
    return dict(
        spatial_dims=3,
        in_chans=1,
        embed_dim=1536,
        depth=12,
        num_heads=16,
        patch_size=12,
        pos_embed="sincos",
        pos_embed_prefix=False,
        feature_indices=(3, 6, 9, 11),
    )
