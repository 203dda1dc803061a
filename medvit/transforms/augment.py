"""Training augmentation recipes, one per kind of data, as lists of MONAI random dictionary transforms.

Geometric transforms move the image and its labels together (labels by nearest neighbour); intensity
transforms touch the image only. They run on the preprocessed (normalised) image, after the deterministic
part that predict replays, so a cached data set stores that part once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai.transforms import (
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandRotate90d,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
)


def _intensity(image: list[str], *, scale: float, shift: float, channel_wise: bool, p: float = 0.5) -> list:
    return [
        RandScaleIntensityd(image, factors=scale, prob=p, channel_wise=channel_wise),  # contrast
        RandShiftIntensityd(image, offsets=shift, prob=p, channel_wise=channel_wise),  # brightness
    ]


def _flips(keys: list[str], axes: Sequence[int], p: float = 0.5) -> list:
    return [RandFlipd(keys, prob=p, spatial_axis=a) for a in axes]


def volume_augment(image: Sequence[str], labels: Sequence[str]) -> list:
    """3D CT/MRI (MONAI's UNETR/Swin-UNETR recipe): flips over each axis, intensity scale and shift."""
    image, both = list(image), list(image) + list(labels)
    return _flips(both, (0, 1, 2)) + _intensity(image, scale=0.1, shift=0.1, channel_wise=False)


def fundus_augment(image: Sequence[str], labels: Sequence[str]) -> list:
    """2D segmentation (FunduSegmenter's ``designed_transform``): rotate +-15 degrees, flips,
    brightness/contrast, gamma, Gaussian noise and blur."""
    image, labels = list(image), list(labels)
    both = image + labels
    modes = ["bilinear"] * len(image) + ["nearest"] * len(labels)
    return [
        RandRotated(both, range_x=math.radians(15), prob=0.5, mode=modes, padding_mode="zeros"),
        *_flips(both, (0, 1)),
        *_intensity(image, scale=0.2, shift=0.2, channel_wise=False),
        RandAdjustContrastd(image, prob=0.3, gamma=(0.7, 1.5)),
        RandGaussianNoised(image, prob=0.2, std=0.05),
        RandGaussianSmoothd(image, prob=0.2, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0)),
    ]


def photo_augment(image: Sequence[str], labels: Sequence[str] = ()) -> list:
    """2D classification (RETFound-like): horizontal flip, a small affine (rotate +-10 degrees, scale +-10 %),
    per-channel brightness/contrast (colour jitter) and gamma."""
    image, labels = list(image), list(labels)
    both = image + labels
    modes = ["bilinear"] * len(image) + ["nearest"] * len(labels)
    return [
        *_flips(both, (1,)),
        RandAffined(
            both,
            prob=0.5,
            rotate_range=math.radians(10),
            scale_range=(0.1, 0.1),
            translate_range=None,
            mode=modes,
            padding_mode="zeros",
        ),  # fmt: skip
        *_intensity(image, scale=0.1, shift=0.1, channel_wise=True),
        RandAdjustContrastd(image, prob=0.2, gamma=(0.8, 1.25)),
    ]


def he_augment(image: Sequence[str], labels: Sequence[str]) -> list:
    """H&E tiles (HoVer-Net/CellViT recipe): rot90 and flips (exact on instance maps), then blur, noise and
    per-channel colour jitter on the image. Compute the HoVer targets after these."""
    image, both = list(image), list(image) + list(labels)
    return [
        RandRotate90d(both, prob=0.75, max_k=3, spatial_axes=(0, 1)),
        *_flips(both, (0, 1)),
        RandGaussianSmoothd(image, prob=0.2, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0)),
        RandGaussianNoised(image, prob=0.2, std=0.05),
        *_intensity(image, scale=0.1, shift=0.1, channel_wise=True),
        RandAdjustContrastd(image, prob=0.2, gamma=(0.8, 1.25)),
    ]
