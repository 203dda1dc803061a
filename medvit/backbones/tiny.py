"""Small random-init variants for tests, demos and CPU smoke runs (no published weights)."""

from __future__ import annotations

from typing import Any

from medvit.backbones.registry import PretrainedCfg, register
from medvit.backbones.retfound import IMAGENET_MEAN, IMAGENET_STD

_PAPER = "Dosovitskiy et al., An Image is Worth 16x16 Words, ICLR 2021"


@register(
    arch="vit_tiny_patch16",
    cfg=PretrainedCfg(
        name="vit_tiny_patch16.random",
        input_size=(3, 224, 224),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        paper=_PAPER,
    ),
)
def vit_tiny_patch16() -> dict[str, Any]:
    """A ViT-Ti/16 (192 dim, 12 blocks) with random weights, for demos."""
    return dict(embed_dim=192, depth=12, num_heads=3, patch_size=16, pos_embed="sincos")


@register(
    arch="vit_tiny_patch8_3d",
    cfg=PretrainedCfg(
        name="vit_tiny_patch8_3d.random",
        input_size=(1, 64, 64, 64),
        hu_window=(-175.0, 250.0),
        spacing=(1.5, 1.5, 1.5),
        interpolation="trilinear",
        paper=_PAPER,
    ),
)
def vit_tiny_patch8_3d() -> dict[str, Any]:
    """A 3D ViT-Ti with 8^3 patches (192 dim, 12 blocks) and random weights, for CT demos."""
    return dict(spatial_dims=3, in_chans=1, embed_dim=192, depth=12, num_heads=3, patch_size=8, pos_embed="sincos")
