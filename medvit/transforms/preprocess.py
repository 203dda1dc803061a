"""The deterministic preprocessing a model was trained with, recorded in its package and replayed by predict.

A :class:`PreprocessSpec` says how an image read by :func:`medvit.io.read_image` becomes network input:
channel count, orientation, voxel spacing, intensity mapping (HU window, z-score or 0..255 scaling),
per-channel normalisation and (2D) resize. :func:`preprocess_transforms` turns it into MONAI dictionary
transforms (all invertible, so a prediction can be taken back to the input grid with ``Invertd``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Intensity(_Strict):
    """``window``: clip ``[a_min, a_max]`` (HU for CT) and map to ``[b_min, b_max]``; ``zscore``: per channel
    mean/std (``nonzero`` voxels only when set, MRI); ``scale``: divide by ``scale`` (255 for photographs);
    ``none``: leave values as read."""

    kind: Literal["window", "zscore", "scale", "none"] = "none"
    a_min: float | None = None
    a_max: float | None = None
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = True
    nonzero: bool = False
    scale: float = 255.0

    @model_validator(mode="after")
    def _check(self) -> Intensity:
        if self.kind == "window":
            if self.a_min is None or self.a_max is None:
                raise ValueError("intensity window needs a_min and a_max")
            if self.a_max <= self.a_min:
                raise ValueError(f"intensity window: a_max ({self.a_max}) must exceed a_min ({self.a_min})")
        if self.kind == "scale" and self.scale <= 0:
            raise ValueError("intensity scale must be positive")
        return self


class PreprocessSpec(_Strict):
    """How a read image becomes network input (and how a prediction goes back).

    Attributes:
        spatial_dims: 2 or 3.
        in_channels: Channels the network takes; grey images are repeated to 3, alpha is dropped.
        orientation: Axis codes to reorient to (``"RAS"``), or ``None`` to keep the stored order (2D).
        spacing: Target voxel spacing in mm, or ``None`` to keep it.
        intensity: Value mapping, see :class:`Intensity`.
        mean: Per-channel mean subtracted after ``intensity`` (ImageNet for photographs), or ``None``.
        std: Per-channel std divided by after ``mean``.
        resize: 2D only: resize the whole image to ``[H, W]`` (predict resizes logits back).
        mpp: 2D pathology: micrometres per pixel the network was trained at (PanNuke: 0.25 at 40x); predict
            reads slides and tiles at this resolution.
    """

    spatial_dims: Literal[2, 3]
    in_channels: int = Field(1, ge=1)
    orientation: str | None = None
    spacing: list[float] | None = None
    intensity: Intensity = Field(default_factory=Intensity)
    mean: list[float] | None = None
    std: list[float] | None = None
    resize: list[int] | None = None
    mpp: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> PreprocessSpec:
        sd = self.spatial_dims
        if self.spacing is not None and (len(self.spacing) != sd or min(self.spacing) <= 0):
            raise ValueError(f"spacing must be {sd} positive numbers, got {self.spacing}")
        if self.resize is not None and (len(self.resize) != sd or min(self.resize) < 1):
            raise ValueError(f"resize must be {sd} positive sizes, got {self.resize}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std go together")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and len(value) not in (1, self.in_channels):
                raise ValueError(f"{name} needs 1 or in_channels ({self.in_channels}) values, got {len(value)}")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError("std values must be positive")
        if self.orientation is not None and (len(self.orientation) != sd or not self.orientation.isalpha()):
            raise ValueError(f"orientation must be {sd} axis codes such as 'RAS', got {self.orientation!r}")
        return self


# (image channels, network channels) that the channel fitting converts: grey -> RGB, RGBA -> RGB, RGB -> grey
CHANNEL_FITS = {(1, 3), (4, 3), (3, 1)}


def _ensure_channels(spec: PreprocessSpec, keys: Sequence[str]):
    from monai.transforms import Lambdad  # lazy: keeps medvit cards list free of MONAI

    want = spec.in_channels

    def fit(img):
        c = img.shape[0]
        if c == want:
            return img
        if (c, want) not in CHANNEL_FITS:
            raise ValueError(f"image has {c} channels; the model takes {want}")
        if c == 1:
            return img.repeat(3, *([1] * (img.ndim - 1)))
        if c == 4:
            return img[:3]
        return img.float().mean(0, keepdim=True)  # RGB -> grey

    return Lambdad(keys, fit, overwrite=True)


def preprocess_transforms(
    spec: PreprocessSpec | dict[str, Any],
    *,
    keys: Sequence[str] = ("image",),
    label_keys: Sequence[str] = (),
) -> list:
    """MONAI dictionary transforms replaying ``spec`` on already-read images (channel-first MetaTensors).

    Images are resampled bilinearly, labels (``label_keys``) by nearest neighbour; only images get the
    channel fitting and intensity mapping. Images come out as float32.
    """
    from monai.transforms import (  # lazy: keeps medvit cards list free of MONAI
        CastToTyped,
        NormalizeIntensityd,
        Orientationd,
        Resized,
        ScaleIntensityd,
        ScaleIntensityRanged,
        Spacingd,
    )

    spec = spec if isinstance(spec, PreprocessSpec) else PreprocessSpec.model_validate(spec)
    keys, label_keys = list(keys), list(label_keys)
    both = keys + label_keys
    out: list = [_ensure_channels(spec, keys), CastToTyped(keys, dtype="float32")]
    if spec.orientation:
        out.append(Orientationd(both, axcodes=spec.orientation, labels=None))
    if spec.spacing:
        modes = ["bilinear"] * len(keys) + ["nearest"] * len(label_keys)
        out.append(Spacingd(both, pixdim=spec.spacing, mode=modes))
    if spec.resize:
        modes = ["bilinear" if spec.spatial_dims == 2 else "trilinear"] * len(keys) + ["nearest"] * len(label_keys)
        out.append(Resized(both, spatial_size=spec.resize, mode=modes))
    it = spec.intensity
    if it.kind == "window":
        out.append(ScaleIntensityRanged(keys, a_min=it.a_min, a_max=it.a_max, b_min=it.b_min, b_max=it.b_max,
                                        clip=it.clip))  # fmt: skip
    elif it.kind == "zscore":
        out.append(NormalizeIntensityd(keys, nonzero=it.nonzero, channel_wise=True))
    elif it.kind == "scale":
        out.append(ScaleIntensityd(keys, minv=None, maxv=None, factor=1.0 / it.scale - 1.0))
    if spec.mean is not None:
        c = spec.in_channels
        mean = spec.mean * c if len(spec.mean) == 1 else spec.mean
        std = spec.std * c if len(spec.std) == 1 else spec.std
        out.append(NormalizeIntensityd(keys, subtrahend=mean, divisor=std, channel_wise=True))
    return out
