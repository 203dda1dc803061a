"""Data cards: one YAML file per data set, validated, naming the on-disk layout medvit reads.

A card documents what a data set is (modality, task, label map, licence, source, how to obtain it,
known limitations, whether it holds identifiable data) and how it sits on disk (``layout``) and is split
(``splits``). Pipelines name a card and a root folder instead of hard-coding paths.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medvit.errors import ConfigError, validation_line
from medvit.resources import shipped_dir
from medvit.transforms.presets import CARD_TASKS
from medvit.yamlfile import read_yaml

CARDS_ENV = "MEDVIT_CARDS_PATH"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------------------------- layouts


class FolderPairs(_Strict):
    """Images and labels in two folders, paired by a case id taken from the file names.

    ``image_pattern`` and ``label_pattern`` contain ``{id}``, e.g. ``img{id}.nii.gz`` / ``label{id}.nii.gz``.
    ``label_remap`` maps stored label values to the card's labels (REFUGE: 0 -> 2, 128 -> 1, 255 -> 0).
    """

    type: Literal["folder_pairs"]
    images_dir: str
    labels_dir: str | None = None
    image_pattern: str = "{id}.nii.gz"
    label_pattern: str = "{id}.nii.gz"
    recursive: bool = False
    label_remap: dict[int, int] | None = None
    split_from_dir: dict[str, str] | None = None  # sub-folder name -> split name

    @field_validator("image_pattern", "label_pattern")
    @classmethod
    def _has_id(cls, v: str) -> str:
        if v.count("{id}") != 1:
            raise ValueError(f"pattern {v!r} must contain '{{id}}' exactly once")
        return v


class Refuge(_Strict):
    """REFUGE's release: fundus JPEGs, BMP masks encoded 0 = cup, 128 = disc, 255 = background."""

    type: Literal["refuge"]
    images_dir: str = "Training400"
    labels_dir: str = "Annotation-Training400/Disc_Cup_Masks"
    image_pattern: str = "{id}.jpg"
    label_pattern: str = "{id}.bmp"
    label_remap: dict[int, int] = Field(default_factory=lambda: {255: 0, 128: 1, 0: 2})


class Datalist(_Strict):
    """A CSV or JSON list of cases. Paths are relative to the root; ``image_template`` formats ids."""

    type: Literal["datalist"]
    file: str
    image_key: str = "image"
    label_key: str | None = "label"
    split_key: str | None = None
    group_key: str | None = None
    image_template: str = "{}"
    label_template: str = "{}"


class Msd(_Strict):
    """Medical Segmentation Decathlon / nnU-Net v1 ``dataset.json`` (``training`` and ``test`` lists)."""

    type: Literal["msd"]
    dataset_json: str = "dataset.json"


class NnUNet(_Strict):
    """nnU-Net v2 raw data set: ``imagesTr/{case}_{channel:04d}{ending}``, ``labelsTr/{case}{ending}``."""

    type: Literal["nnunet"]
    dataset_json: str = "dataset.json"


class PanNuke(_Strict):
    """PanNuke's three folds: ``Fold N/images/foldN/images.npy``, ``types.npy``, ``Fold N/masks/foldN/masks.npy``.

    ``masks.npy`` is ``[n, 256, 256, 6]``: instance maps for the five nucleus types, then background.
    """

    type: Literal["pannuke"]
    folds: list[int] = Field(default_factory=lambda: [1, 2, 3])


class Conic(_Strict):
    """CoNIC (Lizard patches): ``images.npy`` ``[n, 256, 256, 3]``, ``labels.npy`` ``[n, 256, 256, 2]``
    (instance map, class map), ``patch_info.csv`` naming each patch's source image (used to group splits)."""

    type: Literal["conic"]
    images: str = "images.npy"
    labels: str = "labels.npy"
    patch_info: str | None = "patch_info.csv"


class Synthetic(_Strict):
    """A demo set medvit generates offline (see :mod:`medvit.data.synthetic`)."""

    type: Literal["synthetic"]
    generator: Literal["ct3d", "fundus", "cells", "classification"]
    num_cases: int = Field(16, ge=4)
    size: list[int] | None = None
    seed: int = 0


# the single-file formats :func:`medvit.io.read_image` reads (DICOM folders aside); what image_folder collects
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".nii", ".nii.gz")


class ImageFolder(_Strict):
    """Unlabelled images anywhere under a folder, for self-supervised pre-training: one case per image file.

    With ``dicom_series``, a folder directly holding DICOM files (``.dcm`` or the ``DICM`` magic; not
    ``DICOMDIR``) is one case, read as :func:`medvit.io.read_image` reads a folder; its files are not cases.
    Hidden files and folders are skipped, symbolic links to folders are not followed.
    """

    type: Literal["image_folder"]
    images_dir: str = "."
    recursive: bool = True
    extensions: list[str] = Field(default_factory=lambda: list(IMAGE_EXTENSIONS))
    dicom_series: bool = True

    @field_validator("extensions")
    @classmethod
    def _readable(cls, v: list[str]) -> list[str]:
        from medvit.io.image2d import IMAGE2D_SUFFIXES  # lazy: the io readers only when a card lists its own
        from medvit.io.nifti import NIFTI_SUFFIXES

        known = (*IMAGE2D_SUFFIXES, *NIFTI_SUFFIXES, ".dcm")
        out = [e.lower() if e.startswith(".") else f".{e.lower()}" for e in v]
        unknown = [e for e in out if e not in known]
        if not out or unknown:
            raise ValueError(f"{unknown or 'none'} not formats medvit reads; known: {', '.join(known)}")
        return list(dict.fromkeys(out))


Layout = Annotated[
    FolderPairs | Refuge | Datalist | Msd | NnUNet | PanNuke | Conic | ImageFolder | Synthetic,
    Field(discriminator="type"),
]
LAYOUT_TYPES = (
    "folder_pairs", "refuge", "datalist", "msd", "nnunet", "pannuke", "conic", "image_folder", "synthetic"
)  # fmt: skip


class Splits(_Strict):
    """How cases are split. ``kfold``: seeded k folds over the cases without a fixed split, ``fold`` is
    validation; ``ratio``: seeded fractions; ``fixed``: the splits the data set ships (folders, columns)."""

    type: Literal["kfold", "ratio", "fixed"] = "kfold"
    folds: int = Field(5, ge=2)
    fold: int = Field(0, ge=0)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float = Field(0.0, ge=0, lt=1)
    seed: int = 0
    fixed: dict[str, str] | None = None  # source split/fold name -> train|val|test

    @model_validator(mode="after")
    def _check(self) -> Splits:
        if self.fold >= self.folds:
            raise ValueError(f"fold {self.fold} is out of range for {self.folds} folds")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be below 1")
        return self


class Preprocessing(_Strict):
    """What the card says about its images' preprocessing; ``mpp``: micrometres per pixel of pathology images
    (recorded in the package, so that predict resamples slides to it)."""

    mpp: float | None = Field(None, gt=0)
    spacing: list[float] | None = None
    intensity: str | None = None
    normalisation: str | None = None
    notes: str | None = None


class DataCard(_Strict):
    """The schema of ``data_cards/*.yaml``."""

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    title: str
    description: str
    modality: str
    spatial_dims: Literal[2, 3]
    task: Literal[CARD_TASKS]  # what the labels are (or "unlabelled"); the task kinds say which they train on
    labels: dict[int, str]
    intended_use: str
    source: str
    citation: str
    license: str = Field(min_length=2)
    how_to_obtain: str
    layout: Layout
    splits: Splits = Field(default_factory=Splits)
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    limitations: list[str] = Field(min_length=1)
    identifiable_data: bool
    synthetic: bool = False

    @model_validator(mode="after")
    def _labels_fit_task(self) -> DataCard:
        keys = sorted(self.labels)
        if isinstance(self.layout, ImageFolder) and self.task != "unlabelled":
            raise ValueError(
                f"task: an image_folder layout has no labels: must be 'unlabelled', not {self.task!r}"
            )
        if self.task in ("segmentation", "instance"):
            if keys[:1] != [0] or len(keys) < 2:
                raise ValueError(f"labels: a {self.task} card needs 0 (background) and at least one class")
            if keys != list(range(len(keys))):
                raise ValueError(f"labels: values must be 0..{len(keys) - 1} without gaps, got {keys}")
        elif self.task != "unlabelled":  # an unlabelled card's labels map (often {}) goes unchecked
            if len(keys) < (2 if self.task == "classification" else 1):
                raise ValueError(f"labels: a {self.task} card needs at least 2 classes")
            if keys != list(range(len(keys))):
                raise ValueError(f"labels: class indices must be 0..{len(keys) - 1}, got {keys}")
        remap = getattr(self.layout, "label_remap", None)
        if remap and not set(remap.values()) <= set(self.labels):
            raise ValueError(
                f"layout.label_remap: targets {sorted(set(remap.values()) - set(self.labels))} not in labels"
            )
        if self.synthetic != isinstance(self.layout, Synthetic):
            raise ValueError("synthetic: must be true exactly when the layout is 'synthetic'")
        return self


# ------------------------------------------------------------------------------------------------ loading


def _error_line(err: ValidationError, source: str) -> str:
    def bad_layout(e: dict) -> str:
        return f"unknown layout type {e.get('input', {}).get('type')!r}; known: {', '.join(LAYOUT_TYPES)}"

    return validation_line(err, source, messages={"union_tag_invalid": bad_layout}, tags=LAYOUT_TYPES)


def parse_card(data: Any, source: str = "<card>") -> DataCard:
    """Validate plain data as a card; errors name the file and every offending key on one line."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a data card must be a mapping, got {type(data).__name__}")
    try:
        return DataCard.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_error_line(err, source)) from None


def card_dirs() -> list[Path]:
    """Where cards are looked up: ``$MEDVIT_CARDS_PATH`` entries, ``./data_cards``, medvit's shipped cards."""
    dirs = [Path(p) for p in os.environ.get(CARDS_ENV, "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "data_cards", shipped_dir("data_cards")]
    seen, out = set(), []
    for d in dirs:
        if d.is_dir() and d.resolve() not in seen:
            seen.add(d.resolve())
            out.append(d)
    return out


def find_card(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"{path}: no such data card file")
        return path
    for d in card_dirs():
        for suffix in (".yaml", ".yml"):
            if (d / f"{name_or_path}{suffix}").is_file():
                return d / f"{name_or_path}{suffix}"
    known = ", ".join(sorted(list_cards())) or "none"
    raise ConfigError(
        f"data card {name_or_path!r} not found in {', '.join(map(str, card_dirs()))}; known: {known}"
    )


def load_card(name_or_path: str | Path) -> DataCard:
    """Load and validate a card by name (looked up in :func:`card_dirs`) or by path."""
    path = find_card(name_or_path)
    card = parse_card(read_yaml(path), str(path))
    if card.name != path.stem:
        raise ConfigError(f"{path}: name: {card.name!r} must match the file name {path.stem!r}")
    return card


def list_cards() -> dict[str, Path]:
    """Card name -> file, first found wins."""
    out: dict[str, Path] = {}
    for d in card_dirs():
        for f in sorted(d.glob("*.y*ml")):
            out.setdefault(f.stem, f)
    return out
