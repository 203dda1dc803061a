"""A Lightning DataModule built from a data card and the pipeline's ``transforms:`` section.

The card's layout finds the cases under ``root`` and splits them (:mod:`medvit.data.layouts`); each split
is a MONAI ``Dataset`` (or ``CacheDataset``, which keeps the deterministic part of every case in memory)
with the preset pipeline of :func:`medvit.transforms.presets.build_transforms`. Loaders are MONAI
``DataLoader``\\ s: seeded shuffling, per-worker seeded augmentation, :func:`monai.data.list_data_collate`
(so the crops a 3D volume yields become part of the batch).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import numpy as np
import torch

from medvit.data.cards import DataCard, load_card
from medvit.data.layouts import SPLITS, discover, split_cases
from medvit.errors import ConfigError, InputError, MedvitError, one_line
from medvit.transforms.presets import TransformsSpec, build_transforms, parse_transforms, preprocess_spec

log = logging.getLogger(__name__)


def _root_cause(exc: BaseException) -> BaseException:
    """The error a MONAI ``Compose`` wrapped (``RuntimeError: applying transform ...`` chains)."""
    seen = exc
    while seen.__cause__ is not None and not isinstance(seen, MedvitError):
        seen = seen.__cause__
    return seen


class MedvitDataModule(L.LightningDataModule):
    """Train/val/test loaders of a data card, with the transforms of a modality preset.

    Args:
        card: A :class:`DataCard` or a card name/path for :func:`medvit.data.load_card`.
        root: Folder the card's files are in (``None`` for synthetic cards: the medvit cache).
        transforms: The pipeline's ``transforms:`` section (a spec or plain mapping).
        batch_size: Training batch size (3D: volumes; each yields ``samples_per_volume`` crops).
        val_batch_size: Validation/test batch size (3D volumes are whole, so usually 1).
        num_workers: Loader worker processes.
        cache: Keep every case's deterministic part in memory (MONAI ``CacheDataset``).
        limit_cases: Use only the first ``limit_cases`` cases of each split (smoke runs).
        seed: Seed of shuffling and augmentation.
        labelled: ``False`` for self-supervised pre-training: every case of the card is used with its label
            dropped, whatever the card's task (a labelled card serves as unlabelled data too), and samples
            hold ``image`` and ``id`` only.
    """

    def __init__(
        self,
        card: DataCard | str,
        *,
        root: str | None = None,
        transforms: TransformsSpec | dict[str, Any],
        batch_size: int = 2,
        val_batch_size: int = 1,
        num_workers: int = 0,
        cache: bool = False,
        limit_cases: int | None = None,
        seed: int = 0,
        labelled: bool = True,
    ) -> None:
        super().__init__()
        self.card = card if isinstance(card, DataCard) else load_card(card)
        self.root = None if root in (None, "") else str(root)
        self.transforms = parse_transforms(transforms)
        self.labelled = labelled
        self.task = self.card.task if labelled else "unlabelled"  # the label type: which targets are built
        for name, value in (("batch_size", batch_size), ("val_batch_size", val_batch_size)):
            if value < 1:
                raise ConfigError(f"{name}: must be at least 1, got {value}")
        if num_workers < 0:
            raise ConfigError(f"num_workers: must be 0 or more, got {num_workers}")
        if limit_cases is not None and limit_cases < 1:
            raise ConfigError(f"limit_cases: must be at least 1, got {limit_cases}")
        self.resolved = self.transforms.resolve(self.card.spatial_dims)  # every default filled in
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_workers, self.cache = num_workers, cache
        self.limit_cases, self.seed = limit_cases, seed
        self.datalist: dict[str, list[dict]] | None = None
        self.datasets: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------- what tasks need

    @property
    def labels(self) -> dict[int, str]:
        """Class index -> name (segmentation and cells include 0 = background)."""
        return dict(self.card.labels)

    @property
    def num_classes(self) -> int:
        """Segmentation classes incl. background, classification classes, or nucleus types incl. background."""
        return len(self.card.labels)

    @property
    def spatial_dims(self) -> int:
        return self.card.spatial_dims

    @property
    def in_channels(self) -> int:
        return int(self.resolved.in_channels)

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    @property
    def preprocess(self):
        """The deterministic :class:`~medvit.transforms.preprocess.PreprocessSpec` (for the model package)."""
        return preprocess_spec(self.transforms, spatial_dims=self.spatial_dims, mpp=self.card.preprocessing.mpp)

    # ------------------------------------------------------------------------------------------- datalist

    def _build_datalist(self) -> dict[str, list[dict]]:
        card = self.card
        cases, problems = discover(card, self.root)
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise InputError(f"card {card.name!r}: {problems[0]}{more}")
        if not cases:
            raise InputError(f"{self.root}: card {card.name!r} found no cases")
        splits = split_cases(cases, card.splits)
        if self.labelled:
            unlabelled = sum(c.get("label") is None for s in splits.values() for c in s)
            if unlabelled:
                log.info("card %s: %d cases without a label left out", card.name, unlabelled)
            splits = {k: [c for c in v if c.get("label") is not None] for k, v in splits.items()}
        else:  # self-supervised: every case, its label dropped
            splits = {k: [{**c, "label": None} for c in v] for k, v in splits.items()}
        if not splits["train"]:
            what = "labelled training" if self.labelled else "training"
            raise InputError(f"{self.root}: card {card.name!r} has no {what} cases")
        if self.limit_cases:
            splits = {k: v[: self.limit_cases] for k, v in splits.items()}
        return splits

    def transforms_for(self, split: str):
        """The MONAI pipeline of one split (``train`` augments and crops; ``val``/``test`` do not)."""
        return build_transforms(
            self.transforms,
            task=self.task,
            split=split,
            spatial_dims=self.spatial_dims,
            label_remap=getattr(self.card.layout, "label_remap", None),
            num_classes=self.num_classes,
        )

    def prepare_data(self) -> None:
        """Generate a synthetic card's set once (rank 0), before every rank reads it."""
        if self.card.synthetic:
            discover(self.card, self.root)

    def setup(self, stage: str | None = None) -> None:
        """Find and split the cases, and build the data sets the stage needs (all when ``stage`` is None)."""
        from monai.data import CacheDataset, Dataset  # lazy: medvit run reports config errors before MONAI loads

        if self.datalist is None:
            self.datalist = self._build_datalist()
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test", "val")}.get(stage or "", SPLITS)
        for split in wanted:
            if split in self.datasets:
                continue
            data, transform = self.datalist[split], self.transforms_for(split)
            if self.cache:
                self.datasets[split] = CacheDataset(
                    data, transform, cache_rate=1.0, num_workers=max(1, self.num_workers), progress=False
                )
            else:
                self.datasets[split] = Dataset(data, transform)

    # -------------------------------------------------------------------------------------------- loaders

    def _loader(self, split: str, *, batch_size: int, shuffle: bool):
        from monai.data import DataLoader, list_data_collate  # lazy: as in setup

        if split not in self.datasets:
            self.setup(None)
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),
            collate_fn=list_data_collate,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self):
        return self._loader("train", batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return self._loader("val", batch_size=self.val_batch_size, shuffle=False)

    def test_dataloader(self):
        """The test split, or the validation split when the card's split leaves test empty."""
        if self.datalist is None:
            self.setup("test")
        split = "test" if self.datalist["test"] else "val"
        return self._loader(split, batch_size=self.val_batch_size, shuffle=False)

    # --------------------------------------------------------------------------------------------- checks

    def check(self) -> None:
        """Read the first case of every split through its transforms, before any training.

        Raises:
            InputError: one line naming the card, split and case (and the file) of the first problem: a
                missing root, layout problems, no cases, unreadable files, a label off its image's grid,
                label values outside the card's classes.
        """
        if self.datalist is None:
            self.datalist = self._build_datalist()
        for split in SPLITS:
            if not self.datalist[split]:
                continue
            case = self.datalist[split][0]
            where = f"card {self.card.name!r}, {split} case {case['id']}"
            try:
                out = self.transforms_for(split)(case)
            except Exception as exc:  # noqa: BLE001 - any failure here is a data problem to report in one line
                cause = _root_cause(exc)
                if isinstance(cause, InputError) and str(case["id"]) in str(cause):
                    raise InputError(f"card {self.card.name!r}, {split}: {one_line(cause)}") from None
                raise InputError(f"{where} ({case.get('image')}): {one_line(cause)}") from None
            if self.labelled:
                for sample in out if isinstance(out, list) else [out]:
                    self._check_values(sample, where)

    def _check_values(self, sample: dict, where: str) -> None:
        allowed = set(self.card.labels)
        if self.task == "segmentation":
            values = {int(v) for v in np.unique(np.asarray(sample["label"]))}
        elif self.task == "instance":
            values = {int(v) for v in np.unique(np.asarray(sample["tp_map"]))}
        elif self.task == "classification":
            values = {int(sample["label"])}
        else:
            return
        outside = sorted(values - allowed)
        if outside:
            raise InputError(f"{where}: label values {outside} outside the card's classes {sorted(allowed)}")
