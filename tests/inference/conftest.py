"""Hand-set model packages whose output is known: class 1 = voxels brighter than a threshold.

The network is a ViT with 1-voxel patches (4 channels, one block zeroed out, no position embedding) under a
linear segmentation probe. The patch embedding maps a voxel ``v`` (after the package's intensity window) to
``[K (v - t), -K (v - t), 0, 0]``; the final LayerNorm turns that into ``±[sqrt 2, -sqrt 2, 0, 0]``, and the
probe's 1x1 convolution gives class 1 the logit ``+8`` where ``v > t`` and ``-8`` elsewhere. So the mask a
package predicts is exactly ``image > threshold`` on the preprocessed grid: windows, flips and blending
cannot change it, and any shift, flip or misalignment on the way back to the input grid shows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medvit.models import build_model
from medvit.package import PackageSpec, save_package

GAIN = 1000.0
LOGIT = 8.0 / 2**0.5


def bright_spec(*, dims: int = 3, spacing=None, orientation="RAS", window=(-200.0, 400.0), roi=None, resize=None,
                labels=None, mode=None, in_channels: int = 1, tta_axes=None) -> PackageSpec:  # fmt: skip
    labels = labels or {0: "background", 1: "bright"}
    roi = roi or [8] * dims
    if dims == 3:
        backbone = dict(name="vit_tiny_patch8_3d", img_size=list(roi))
        intensity = dict(kind="window", a_min=window[0], a_max=window[1])
    else:
        backbone = dict(name="vit_tiny_patch16", img_size=list(resize or roi))
        intensity = dict(kind="scale", scale=255)
    backbone["options"] = dict(
        patch_size=1, embed_dim=4, depth=1, num_heads=1, pos_embed="none", in_chans=in_channels
    )
    mode = mode or ("sliding_window" if dims == 3 else "whole")
    return PackageSpec.model_validate(
        dict(
            name=f"bright{dims}d",
            task="segmentation",
            labels=labels,
            model=dict(backbone=backbone, head=dict(name="linear_seg", options={}), num_classes=len(labels)),
            preprocessing=dict(
                spatial_dims=dims,
                in_channels=in_channels,
                orientation=orientation if dims == 3 else None,
                spacing=list(spacing) if spacing else None,
                intensity=intensity,
                resize=list(resize) if resize else None,
            ),
            inference=dict(
                mode=mode,
                roi_size=list(roi) if mode == "sliding_window" else None,
                sw_batch_size=8,
                tta_axes=list(range(dims)) if tta_axes is None else tta_axes,
            ),  # fmt: skip
        )
    )


def bright_model(spec: PackageSpec, threshold: float):
    """The network of ``spec`` with weights set so that class 1 = intensity above ``threshold`` (input units);
    further classes never win."""
    model = build_model(spec.model, load_weights=False)
    it = spec.preprocessing.intensity
    t = (threshold - it.a_min) / (it.a_max - it.a_min) if it.kind == "window" else threshold / it.scale
    c = spec.preprocessing.in_channels
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        bb = model.backbone
        w = bb.patch_embed.proj.weight  # [4, C, 1, 1(, 1)]
        w[0] = GAIN / c
        w[1] = -GAIN / c
        bb.patch_embed.proj.bias[0] = -GAIN * t
        bb.patch_embed.proj.bias[1] = GAIN * t
        bb.norm.weight.fill_(1.0)
        model.bn.weight.fill_(1.0)
        model.bn.running_var.fill_(1.0)
        model.bn.running_mean.zero_()
        conv = model.conv.weight  # [K, 4, 1, 1(, 1)]
        conv[1, 0] = LOGIT
        conv[0, 0] = -LOGIT
        model.conv.bias[2:] = -100.0
    return model.eval()


@pytest.fixture
def bright_package(tmp_path):
    """``bright_package(threshold=100, **spec options) -> folder``: a saved hand-set threshold package."""
    count = 0

    def make(threshold: float = 100.0, **options) -> Path:
        nonlocal count
        count += 1
        spec = bright_spec(**options)
        return save_package(bright_model(spec, threshold), spec, tmp_path / f"bright{count}")

    return make
