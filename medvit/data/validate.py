"""Check that the files a data card describes are on disk and agree with the card.

Reports missing and extra files, unreadable images, image/label shape or geometry mismatches and label
values outside the card's map, each with the file name; summarises cases, classes and spacing.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvit.data.cards import Conic, DataCard, PanNuke, Synthetic
from medvit.data.layouts import discover, split_cases
from medvit.data.synthetic import ensure
from medvit.errors import MedvitError
from medvit.io import read_image
from medvit.io.geometry import same_grid
from medvit.transforms.label_maps import remap_labels


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _read(path: str, problems: list[str]):
    if not Path(path).exists():
        problems.append(f"{path}: missing file")
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return read_image(path)
    except MedvitError as exc:
        problems.append(f"unreadable: {exc}")
        return None


def _check_values(values: np.ndarray, allowed: set[int], name: str, problems: list[str]) -> None:
    outside = sorted(int(v) for v in np.unique(values) if int(v) not in allowed)
    if outside:
        shown = ", ".join(map(str, outside[:10])) + (", ..." if len(outside) > 10 else "")
        problems.append(f"{name}: label values [{shown}] outside the card's map {sorted(allowed)}")


def _check_arrays(card: DataCard, layout, cases: list[dict], problems: list[str], classes: Counter) -> None:
    """PanNuke/CoNIC: whole-array checks per file instead of per case."""
    allowed = set(card.labels)
    for image_file in sorted({c["image"] for c in cases}):
        images = np.load(image_file, mmap_mode="r")
        label_file = next(c["label"] for c in cases if c["image"] == image_file)
        labels = np.load(label_file, mmap_mode="r")
        want = 6 if isinstance(layout, PanNuke) else 2
        if images.ndim != 4 or images.shape[-1] != 3:
            problems.append(f"{image_file}: expected [n, H, W, 3] images, got {images.shape}")
        if labels.ndim != 4 or labels.shape[-1] != want:
            problems.append(f"{label_file}: expected [n, H, W, {want}] labels, got {labels.shape}")
            continue
        if images.shape[1:3] != labels.shape[1:3]:
            problems.append(
                f"{label_file}: label size {labels.shape[1:3]} differs from images {images.shape[1:3]}"
            )
        if isinstance(layout, Conic):
            types = np.asarray(labels[..., 1])
            _check_values(types, allowed, label_file, problems)
            for t in sorted(allowed):  # number of patches holding each class
                classes[t] += int(np.any(types == t, axis=(1, 2)).sum())
        else:
            for t in range(5):
                classes[t + 1] += int(np.any(np.asarray(labels[..., t]) > 0, axis=(1, 2)).sum())


def validate_card(card: DataCard, root: str | Path | None) -> Report:
    """Check a card against the files under ``root`` (reads every image and label once)."""
    report = Report()
    problems = report.problems
    try:
        cases, layout_problems = discover(card, root)
    except MedvitError as exc:
        problems.append(str(exc))
        return report
    problems.extend(layout_problems)
    classes: Counter = Counter()
    spacings: list[np.ndarray] = []
    allowed = set(card.labels)
    layout = card.layout
    if isinstance(layout, Synthetic):  # checked through the layout the set is written in
        layout = ensure(layout, root)[1]
    remap = getattr(layout, "label_remap", None)

    if isinstance(layout, PanNuke | Conic):
        _check_arrays(card, layout, cases, problems, classes)
    else:
        for case in cases:
            images = case["image"] if isinstance(case["image"], list) else [case["image"]]
            imgs = [_read(p, problems) for p in images]
            if any(i is None for i in imgs):
                continue
            img = imgs[0]
            if img.meta.get("spacing_known", True) and len(img.shape) == 4:
                spacings.append(np.asarray(img.meta["spacing"]))
            label = case.get("label")
            if isinstance(label, int):
                _check_values(np.asarray([label]), allowed, images[0], problems)
                classes[label] += 1
                continue
            if label is None:
                continue
            lab = _read(label, problems)
            if lab is None:
                continue
            for other, path in zip(imgs[1:], images[1:], strict=True):
                if tuple(other.shape[1:]) != tuple(img.shape[1:]):
                    problems.append(
                        f"{path}: channel image shape {tuple(other.shape[1:])} differs from {images[0]}"
                    )
            if tuple(lab.shape[1:]) != tuple(img.shape[1:]):
                problems.append(
                    f"{label}: shape {tuple(lab.shape[1:])} differs from image {Path(images[0]).name} "
                    f"{tuple(img.shape[1:])}"
                )
                continue
            if len(img.shape) == 4 and not same_grid(
                np.asarray(img.affine), img.shape[1:], np.asarray(lab.affine), lab.shape[1:], atol=1e-3
            ):
                problems.append(f"{label}: geometry (affine) differs from image {Path(images[0]).name}")
            values = remap_labels(np.asarray(lab[0]), remap)
            if lab.shape[0] > 1:
                problems.append(f"{label}: label image has {lab.shape[0]} channels, expected 1")
                continue
            _check_values(values, allowed, label, problems)
            classes.update(int(v) for v in np.unique(values) if int(v) in allowed)

    try:
        split = split_cases(cases, card.splits)
        counts = {k: len(v) for k, v in split.items()}
    except MedvitError as exc:
        problems.append(str(exc))
        counts = {}
    report.summary = {
        "card": card.name,
        "cases": len(cases),
        "splits": counts,
        "classes": {card.labels.get(k, str(k)): n for k, n in sorted(classes.items())},
    }
    if spacings:
        arr = np.stack(spacings)
        report.summary["spacing_min"] = [round(float(v), 4) for v in arr.min(0)]
        report.summary["spacing_max"] = [round(float(v), 4) for v in arr.max(0)]
    if not cases and not problems:
        problems.append(f"{root}: no cases found for card {card.name!r}")
    return report
