"""Dice and 95th-percentile Hausdorff distance from label maps, through MONAI's implementations."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.networks.utils import one_hot


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    if labels.ndim < 3:
        raise ValueError(f"labels must be [B, *spatial] or [B, 1, *spatial], got shape {tuple(labels.shape)}")
    if labels.shape[1] != 1:
        labels = labels.unsqueeze(1)
    return one_hot(labels.long(), num_classes=num_classes, dim=1)


def dice(
    pred: torch.Tensor, target: torch.Tensor, *, num_classes: int, include_background: bool = False
) -> torch.Tensor:
    """Per-image, per-class Dice ``[B, K]`` of two label maps ``[B, *spatial]`` (NaN where both are empty)."""
    return compute_dice(
        _one_hot(pred, num_classes),
        _one_hot(target, num_classes),
        include_background=include_background,
        ignore_empty=True,
    )


def hd95(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    num_classes: int,
    include_background: bool = False,
    spacing: float | Sequence[float] | None = None,
) -> torch.Tensor:
    """Per-image, per-class 95th-percentile Hausdorff distance ``[B, K]`` (in ``spacing`` units if given)."""
    return compute_hausdorff_distance(
        _one_hot(pred, num_classes),
        _one_hot(target, num_classes),
        include_background=include_background,
        percentile=95,
        spacing=spacing,
    )
