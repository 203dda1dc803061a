"""Modality presets: the pipeline's ``transforms:`` section -> MONAI pipelines for training and evaluation.

Every pipeline is read (:class:`~medvit.transforms.io.LoadImaged`) -> the deterministic preprocessing of
:func:`preprocess_spec`, built by :func:`medvit.transforms.preprocess.preprocess_transforms` exactly as
``medvit predict`` replays it from the model package -> (training) cropping and augmentation -> targets.

Presets:

- ``ct``: RAS, optional resampling, HU window (default [-175, 250], Hi-End-MAE) mapped to [0, 1].
- ``mri``: RAS, optional resampling, per-channel z-score over the non-zero voxels (nnU-Net).
- ``fundus`` / ``photo``: pixel values / 255, ImageNet mean/std (RETFound, UrFound, FunduSegmenter, DINOv3).
- ``he``: pixel values / 255, mean = std = 0.5 (CellVTA, UNI).

Every sample is a dict with ``image`` (float32 ``[C, *S]``; a MetaTensor for 3D), ``id`` and the targets:
``label`` long ``[1, *S]`` (segmentation), ``label`` long scalar or float multi-hot ``[K]``
(classification), or ``np_map``/``hv_map``/``tp_map``/``inst_map`` (cells, see
:class:`~medvit.transforms.hover.HoverTargets`); ``unlabelled`` samples (self-supervised pre-training) have
none. 3D segmentation and unlabelled training yield ``samples_per_volume`` crops per case as a list of such
dicts; collate with :func:`monai.data.list_data_collate`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medvit.errors import ConfigError, validation_line
from medvit.transforms.preprocess import Intensity, PreprocessSpec, preprocess_transforms

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
CT_WINDOW = [-175.0, 250.0]
PATCH_3D = [96, 96, 96]
# what a data card's labels are (its ``task``): the targets these presets build for each (none for unlabelled)
CARD_TASKS = ("segmentation", "classification", "multilabel", "instance", "unlabelled")
SPLITS = ("train", "val", "test")

_VOLUME = ("ct", "mri")


class TransformsSpec(BaseModel):
    """The ``transforms:`` section of a pipeline.

    Attributes:
        preset: ``ct``, ``mri``, ``fundus``, ``he`` or ``photo``.
        spacing: Voxel spacing to resample to (mm; pixels for 2D), or ``None`` to keep the data's.
        orientation: Axis codes to reorient to; default ``"RAS"`` for 3D data, none for 2D.
        window: CT only: HU window ``[a_min, a_max]`` mapped to [0, 1]; default [-175, 250].
        resize: Resize every image to this size (2D network input, e.g. ``[224, 224]``).
        patch_size: Training crop (and the inference window): default ``[96, 96, 96]`` for 3D, none for 2D.
        samples_per_volume: Crops taken per case and epoch by 3D segmentation and unlabelled training.
        pos_fraction: Probability that a segmentation crop is centred on a foreground voxel.
        normalisation: ``imagenet``, ``half`` (mean = std = 0.5) or ``none``; default ImageNet for
            ``fundus``/``photo``, ``half`` for ``he``, ``none`` for ``ct``/``mri``.
        augment: Apply the preset's random augmentation to training samples.
        in_channels: Channels the network takes; default 1 for ``ct``/``mri``, 3 otherwise.
    """

    model_config = ConfigDict(extra="forbid")

    preset: Literal["ct", "mri", "fundus", "he", "photo"]
    spacing: list[float] | None = None
    orientation: str | None = None
    window: list[float] | None = None
    resize: list[int] | None = None
    patch_size: list[int] | None = None
    samples_per_volume: int = Field(2, ge=1)
    pos_fraction: float = Field(0.67, ge=0.0, le=1.0)
    normalisation: Literal["imagenet", "half", "none"] | None = None
    augment: bool = True
    in_channels: int | None = Field(None, ge=1)

    @field_validator("spacing")
    @classmethod
    def _positive_spacing(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or min(v) <= 0):
            raise ValueError(f"must be positive numbers, got {v}")
        return v

    @field_validator("resize", "patch_size")
    @classmethod
    def _positive_size(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or min(v) < 1):
            raise ValueError(f"must be positive sizes, got {v}")
        return v

    @field_validator("window")
    @classmethod
    def _window(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (len(v) != 2 or v[1] <= v[0]):
            raise ValueError(f"must be [a_min, a_max] with a_max > a_min, got {v}")
        return v

    @model_validator(mode="after")
    def _window_is_ct(self) -> TransformsSpec:
        if self.window is not None and self.preset != "ct":
            raise ValueError(f"window: only the ct preset applies a HU window (preset is {self.preset!r})")
        return self

    def resolve(self, spatial_dims: int) -> TransformsSpec:
        """This spec with every default filled in for ``spatial_dims`` data (what a model package records).

        Raises:
            ConfigError: sizes that do not fit ``spatial_dims``, naming the ``transforms.`` key.
        """
        if spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        defaults: dict[str, Any] = {
            "orientation": "RAS" if spatial_dims == 3 else None,
            "window": CT_WINDOW if self.preset == "ct" else None,
            "patch_size": PATCH_3D if spatial_dims == 3 else None,
            "normalisation": {"fundus": "imagenet", "photo": "imagenet", "he": "half"}.get(self.preset, "none"),
            "in_channels": 1 if self.preset in _VOLUME else 3,
        }
        update = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        out = self.model_copy(update=update)
        for key in ("spacing", "resize", "patch_size"):
            value = getattr(out, key)
            if value is not None and len(value) != spatial_dims:
                raise ConfigError(
                    f"transforms.{key}: needs {spatial_dims} values for {spatial_dims}D data, got {value}"
                )
        if out.orientation is not None and len(out.orientation) != spatial_dims:
            raise ConfigError(f"transforms.orientation: needs {spatial_dims} axis codes, got {out.orientation!r}")
        return out


class _Section(BaseModel):
    """Wraps the spec so that validation errors are located at ``transforms.<key>``."""

    transforms: TransformsSpec


def parse_transforms(data: Mapping[str, Any] | TransformsSpec, source: str | None = None) -> TransformsSpec:
    """Validate a ``transforms:`` mapping; errors name ``transforms.<key>`` (and ``source``) on one line."""
    if isinstance(data, TransformsSpec):
        return data
    if not isinstance(data, Mapping):
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}transforms: must be a mapping, got {type(data).__name__}")
    try:
        return _Section.model_validate({"transforms": dict(data)}).transforms
    except ValidationError as err:
        line = validation_line(err, source or "")
        raise ConfigError(line if source else line.removeprefix(": ")) from None


def preprocess_spec(spec: TransformsSpec, *, spatial_dims: int, mpp: float | None = None) -> PreprocessSpec:
    """The deterministic preprocessing of a preset (recorded in the model package, replayed by predict);
    ``mpp``: the training images' micrometres per pixel (pathology), from the data card."""
    spec = spec.resolve(spatial_dims)
    if spec.preset == "ct":
        intensity = Intensity(kind="window", a_min=spec.window[0], a_max=spec.window[1], b_min=0.0, b_max=1.0)
    elif spec.preset == "mri":
        intensity = Intensity(kind="zscore", nonzero=True)
    else:
        intensity = Intensity(kind="scale", scale=255.0)
    mean = std = None
    if spec.normalisation == "imagenet":
        if spec.in_channels != 3:
            raise ConfigError(
                f"transforms.normalisation: imagenet needs 3 channels, in_channels is {spec.in_channels}"
            )
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif spec.normalisation == "half":
        mean, std = [0.5], [0.5]
    try:
        return PreprocessSpec(
            spatial_dims=spatial_dims,
            in_channels=spec.in_channels,
            orientation=spec.orientation,
            spacing=spec.spacing,
            intensity=intensity,
            mean=mean,
            std=std,
            resize=spec.resize,
            mpp=mpp if spatial_dims == 2 else None,
        )
    except ValidationError as err:
        raise ConfigError(validation_line(err, "transforms")) from None


def _task(task: str) -> str:
    if task not in CARD_TASKS:
        raise ConfigError(f"task: unknown label type {task!r}; known: {', '.join(CARD_TASKS)}")
    return task


def build_transforms(
    spec: TransformsSpec,
    *,
    task: str,
    split: str,
    spatial_dims: int,
    label_remap: Mapping[int, int] | None = None,
    num_classes: int | None = None,
):
    """The MONAI pipeline turning a datalist case into a training or evaluation sample.

    Args:
        spec: The ``transforms:`` section.
        task: The data card's label type (:data:`CARD_TASKS`): ``segmentation`` (label maps),
            ``classification``, ``multilabel`` (multi-hot), ``instance`` (nuclei: HoVer targets) or
            ``unlabelled`` (images only, for self-supervised pre-training).
        split: ``train`` (cropping and augmentation), ``val`` or ``test`` (deterministic; 3D volumes whole,
            except unlabelled ones: centre-cropped to ``patch_size`` so that any volume batches).
        spatial_dims: 2 or 3.
        label_remap: The card's stored value -> class mapping for label images (REFUGE).
        num_classes: Classes of the task: the multi-hot size for multi-label classification (required
            there), and class-balanced crop centres for segmentation.

    Returns:
        A :class:`monai.transforms.Compose`; seed it with ``set_random_state(seed)``.
    """
    from monai.transforms import Compose  # lazy: keeps medvit cards list free of MONAI

    task = _task(task)
    multilabel = task == "multilabel"
    if split not in SPLITS:
        raise ConfigError(f"split: unknown split {split!r}; known: {', '.join(SPLITS)}")
    if multilabel and num_classes is None:
        raise ConfigError("num_classes: a multilabel task needs the number of classes")
    spec = spec.resolve(spatial_dims)
    labels = ["label"] if task in ("segmentation", "instance") else []
    from medvit.transforms.io import LoadImaged  # lazy: keeps medvit cards list free of MONAI

    chain: list = [LoadImaged(["image", *labels], label_keys=labels, label_remap=label_remap)]
    chain += preprocess_transforms(
        preprocess_spec(spec, spatial_dims=spatial_dims), keys=["image"], label_keys=labels
    )
    if split == "train":
        chain += _crop(spec, task, labels, num_classes, spatial_dims)
        if spec.augment:
            chain += _augment(spec, task, spatial_dims, labels)
    elif task == "unlabelled" and spatial_dims == 3:
        chain += _centre_crop(spec)
    chain += _outputs(task, spatial_dims, num_classes if multilabel else None)
    return Compose(chain)


def _crop(spec: TransformsSpec, task: str, labels: list[str], num_classes: int | None, spatial_dims: int) -> list:
    """Pad to the patch, then crop: segmentation crops are centred on a foreground voxel with probability
    ``pos_fraction``, split evenly over the foreground classes when their number is known (nnU-Net-style
    oversampling, so that small organs are seen as often as large ones); unlabelled volumes give
    ``samples_per_volume`` uniformly placed crops."""
    from monai.transforms import (  # lazy: keeps medvit cards list free of MONAI
        RandCropByLabelClassesd,
        RandCropByPosNegLabeld,
        RandSpatialCropd,
        RandSpatialCropSamplesd,
        SpatialPadd,
    )

    if spec.patch_size is None:
        return []
    keys = ["image", *labels]
    pad = SpatialPadd(keys, spatial_size=spec.patch_size)
    # CT: background centres inside the body (air maps to 0 after the window)
    body = dict(image_key="image" if spec.preset == "ct" else None, image_threshold=0.0)
    if task == "segmentation" and num_classes is not None and num_classes > 2:
        fg = spec.pos_fraction / (num_classes - 1)
        crop = RandCropByLabelClassesd(
            keys,
            label_key="label",
            spatial_size=spec.patch_size,
            ratios=[1.0 - spec.pos_fraction] + [fg] * (num_classes - 1),
            num_classes=num_classes,
            num_samples=spec.samples_per_volume,
            warn=False,
            **body,
        )
    elif task == "segmentation":
        crop = RandCropByPosNegLabeld(
            keys,
            label_key="label",
            spatial_size=spec.patch_size,
            pos=spec.pos_fraction,
            neg=1.0 - spec.pos_fraction,
            num_samples=spec.samples_per_volume,
            **body,
        )
    elif task == "unlabelled" and spatial_dims == 3:
        crop = RandSpatialCropSamplesd(
            keys, roi_size=spec.patch_size, num_samples=spec.samples_per_volume, random_size=False
        )
    else:
        crop = RandSpatialCropd(keys, roi_size=spec.patch_size, random_size=False)
    return [pad, crop]


def _centre_crop(spec: TransformsSpec) -> list:
    """Evaluation of unlabelled volumes: pad to the patch, then its centre (whole volumes of any size would
    neither batch nor fit in memory)."""
    from monai.transforms import CenterSpatialCropd, SpatialPadd  # lazy: keeps medvit cards list free of MONAI

    return [
        SpatialPadd("image", spatial_size=spec.patch_size),
        CenterSpatialCropd("image", roi_size=spec.patch_size),
    ]


def _augment(spec: TransformsSpec, task: str, spatial_dims: int, labels: list[str]) -> list:
    from medvit.transforms import augment  # lazy: keeps medvit cards list free of MONAI

    if spatial_dims == 3:
        return augment.volume_augment(["image"], labels)
    if task == "instance" or (task == "unlabelled" and spec.preset == "he"):
        return augment.he_augment(["image"], labels)
    if task == "segmentation":
        return augment.fundus_augment(["image"], labels)
    return augment.photo_augment(["image"], labels)


def _outputs(task: str, spatial_dims: int, num_classes: int | None) -> list:
    import torch  # lazy: keeps medvit cards list free of torch
    from monai.transforms import EnsureTyped, SelectItemsd  # lazy: keeps medvit cards list free of MONAI

    meta = spatial_dims == 3  # 3D keeps geometry (sliding window, inverting to the input grid)
    out: list = [EnsureTyped("image", dtype=torch.float32, track_meta=meta)]
    if task == "segmentation":
        out.append(EnsureTyped("label", dtype=torch.long, track_meta=meta))
        targets = ["label"]
    elif task == "unlabelled":
        targets = []
    elif task in ("classification", "multilabel"):
        from medvit.transforms.labels import ClassLabeld  # lazy: keeps medvit cards list free of MONAI

        out.append(ClassLabeld("label", num_classes=num_classes))
        targets = ["label"]
    else:
        from medvit.transforms.hover import HoverTargetsd  # lazy: keeps medvit cards list free of MONAI

        out.append(HoverTargetsd("label"))
        targets = ["np_map", "hv_map", "tp_map", "inst_map"]
    out.append(SelectItemsd(["image", *targets, "id"]))
    return out
