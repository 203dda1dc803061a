"""Tiny model packages (random weights) for predict and registry tests: ``make_package(folder, kind)``."""

from __future__ import annotations

from pathlib import Path

import torch

from medvit.models import build_model
from medvit.package import PackageSpec, save_package

_TINY = dict(embed_dim=48, depth=4, num_heads=2)
# photographs: /255, ImageNet mean/std, resized to the network input
PHOTO = dict(
    spatial_dims=2,
    in_channels=3,
    intensity=dict(kind="scale", scale=255),
    mean=[0.485, 0.456, 0.406],
    std=[0.229, 0.224, 0.225],
    resize=[64, 64],
)

SPECS = {
    "seg3d": dict(
        name="tiny_seg3d",
        task="segmentation",
        labels={0: "background", 1: "liver_like", 2: "kidney_like"},
        model=dict(
            backbone=dict(name="vit_tiny_patch8_3d", img_size=[32, 32, 32], options=_TINY),
            head=dict(name="unetr", options=dict(feature_size=8)),
            num_classes=3,
        ),
        preprocessing=dict(
            spatial_dims=3,
            in_channels=1,
            orientation="RAS",
            spacing=[1.5, 1.5, 2.0],
            intensity=dict(kind="window", a_min=-175, a_max=250),
        ),
        inference=dict(mode="sliding_window", roi_size=[32, 32, 32], tta_axes=[0, 1, 2]),
    ),
    "seg2d": dict(
        name="tiny_seg2d",
        task="segmentation",
        labels={0: "background", 1: "optic_disc", 2: "optic_cup"},
        model=dict(
            backbone=dict(
                name="vit_tiny_patch16", img_size=[64, 64], options=dict(embed_dim=32, depth=2, num_heads=2)
            ),
            head=dict(name="linear_seg", options={}),
            num_classes=3,
        ),
        preprocessing=PHOTO,
        inference=dict(mode="whole", tta_axes=[1]),
    ),
    "cls2d": dict(
        name="tiny_cls2d",
        task="classification",
        labels={0: "none", 1: "mild", 2: "severe"},
        model=dict(
            backbone=dict(
                name="vit_tiny_patch16", img_size=[64, 64], options=dict(embed_dim=32, depth=2, num_heads=2)
            ),
            head=dict(name="linear", options={}),
            num_classes=3,
        ),
        preprocessing=PHOTO,
        inference=dict(mode="whole"),
    ),
    "cells": dict(
        name="tiny_cells",
        task="cells",
        labels={0: "background", 1: "large_nucleus", 2: "small_nucleus", 3: "pale_nucleus"},
        model=dict(
            backbone=dict(
                name="vit_tiny_patch16", img_size=[128, 128], options=dict(embed_dim=32, depth=4, num_heads=2)
            ),
            head=dict(
                name="cellvta",
                options=dict(num_tissues=0, deform_heads=2, deform_points=2, spm_width=8, decoder_width=8),
            ),
            num_classes=4,
        ),
        preprocessing=dict(
            spatial_dims=2,
            in_channels=3,
            intensity=dict(kind="scale", scale=255),
            mean=[0.5],
            std=[0.5],
            resize=[128, 128],
            mpp=0.5,
        ),
        inference=dict(mode="whole"),
    ),
}


def make_package(folder: str | Path, kind: str = "seg3d", *, seed: int = 0, model=None) -> Path:
    """Write a tiny package of ``kind`` (``seg3d``, ``seg2d``, ``cls2d``, ``cells``) with random (seeded) weights,
    or with ``model``'s weights when given."""
    spec = PackageSpec.model_validate(SPECS[kind])
    if model is None:
        torch.manual_seed(seed)
        model = build_model(spec.model)
    return save_package(model, spec, folder)
