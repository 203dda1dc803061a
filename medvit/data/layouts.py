"""Layout adapters: turn a data set as it ships on disk into a list of cases, then into seeded splits.

A case is a plain dict: ``id``, ``image`` (path, or a ``.npy`` file with ``index``), ``label`` (path,
``.npy`` file or class index; ``None`` when unlabelled), ``split`` (the split the data set itself
assigns, or ``None``), ``group`` (cases of one group never straddle splits: patches of one slide).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medvit.data.cards import (
    Conic,
    DataCard,
    Datalist,
    FolderPairs,
    ImageFolder,
    Msd,
    NnUNet,
    PanNuke,
    Refuge,
    Splits,
    Synthetic,
)
from medvit.errors import ConfigError, InputError

Case = dict[str, Any]
SPLITS = ("train", "val", "test")


def _pattern_regex(pattern: str) -> re.Pattern:
    head, tail = pattern.split("{id}")
    return re.compile("^" + re.escape(head) + r"(?P<id>.+?)" + re.escape(tail) + "$")


def _scan(folder: Path, pattern: str, recursive: bool) -> dict[str, Path]:
    regex = _pattern_regex(pattern)
    files = folder.rglob("*") if recursive else folder.iterdir()
    out: dict[str, Path] = {}
    for f in sorted(files):
        if f.is_file() and not f.name.startswith("."):
            m = regex.match(f.name)
            if m:
                out[m.group("id")] = f
    return out


def _folder_pairs(layout: FolderPairs | Refuge, root: Path, problems: list[str]) -> list[Case]:
    images_dir = root / layout.images_dir
    if not images_dir.is_dir():
        raise InputError(f"{images_dir}: images folder of the layout does not exist")
    recursive = getattr(layout, "recursive", False) or isinstance(layout, Refuge)
    images = _scan(images_dir, layout.image_pattern, recursive)
    labels: dict[str, Path] = {}
    if layout.labels_dir:
        labels_dir = root / layout.labels_dir
        if not labels_dir.is_dir():
            raise InputError(f"{labels_dir}: labels folder of the layout does not exist")
        labels = _scan(labels_dir, layout.label_pattern, recursive)
        for cid in sorted(set(labels) - set(images)):
            problems.append(f"{labels[cid]}: extra label without an image")
        for cid in sorted(set(images) - set(labels)):
            problems.append(f"{images[cid]}: missing label (expected {layout.label_pattern.format(id=cid)})")
    split_dirs = getattr(layout, "split_from_dir", None) or {}
    cases = []
    for cid, img in images.items():
        if layout.labels_dir and cid not in labels:
            continue
        parts = img.relative_to(images_dir).parts[:-1]
        split = next((split_dirs[p] for p in parts if p in split_dirs), None)
        cases.append({"id": cid, "image": str(img), "label": str(labels[cid]) if cid in labels else None,
                      "split": split, "group": cid})  # fmt: skip
    return cases


def _datalist(layout: Datalist, root: Path, problems: list[str]) -> list[Case]:
    path = root / layout.file
    if not path.is_file():
        raise InputError(f"{path}: datalist file does not exist")
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        data = json.loads(path.read_text())
        if isinstance(data, dict):  # MONAI style {"training": [...], "validation": [...], "test": [...]}
            names = {"training": "train", "validation": "val", "test": "test"}
            rows = [dict(r, _split=names.get(k, k)) for k, v in data.items() if isinstance(v, list) for r in v]
        else:
            rows = data
    cases = []
    for i, row in enumerate(rows):
        if layout.image_key not in row:
            raise InputError(f"{path}: row {i + 1} has no {layout.image_key!r} column/key")
        image = root / layout.image_template.format(row[layout.image_key])
        label = row.get(layout.label_key) if layout.label_key else None
        if label is not None and not _is_class(label):
            label = str(root / layout.label_template.format(label))
        elif label is not None:
            label = int(float(label))
        split = row.get(layout.split_key) if layout.split_key else row.get("_split")
        cid = Path(str(row[layout.image_key])).name.split(".")[0]
        cases.append({"id": cid, "image": str(image), "label": label, "split": split,
                      "group": row.get(layout.group_key) if layout.group_key else cid})  # fmt: skip
    return cases


def _is_class(value: Any) -> bool:
    return isinstance(value, int | float) or (isinstance(value, str) and re.fullmatch(r"-?\d+(\.0+)?", value))


def _msd(layout: Msd, root: Path, problems: list[str]) -> list[Case]:
    spec = _read_json(root / layout.dataset_json)
    cases = []
    for entry in spec.get("training", []):
        image, label = root / entry["image"], root / entry["label"]
        cid = image.name.split(".")[0]
        cases.append({"id": cid, "image": str(image), "label": str(label), "split": None, "group": cid})
    for entry in spec.get("test", []):
        image = root / (entry if isinstance(entry, str) else entry["image"])
        cid = image.name.split(".")[0]
        cases.append({"id": cid, "image": str(image), "label": None, "split": "test", "group": cid})
    return cases


def _nnunet(layout: NnUNet, root: Path, problems: list[str]) -> list[Case]:
    spec = _read_json(root / layout.dataset_json)
    ending = spec.get("file_ending", ".nii.gz")
    n_channels = len(spec.get("channel_names", {"0": ""}))
    labels = _scan(root / "labelsTr", "{id}" + ending, False) if (root / "labelsTr").is_dir() else {}
    images = _scan(root / "imagesTr", "{id}" + ending, False) if (root / "imagesTr").is_dir() else {}
    cases = []
    for cid, label in labels.items():
        chans = [root / "imagesTr" / f"{cid}_{c:04d}{ending}" for c in range(n_channels)]
        image = [str(c) for c in chans] if n_channels > 1 else str(chans[0])
        cases.append({"id": cid, "image": image, "label": str(label), "split": None, "group": cid})
    expected = {f"{c['id']}_{i:04d}" for c in cases for i in range(n_channels)}
    for name, f in images.items():
        if name not in expected:
            problems.append(f"{f}: extra image without a label in labelsTr")
    if spec.get("numTraining") not in (None, len(cases)):
        problems.append(f"{root / layout.dataset_json}: numTraining {spec['numTraining']} but {len(cases)} labels")
    return cases


def _paired_arrays(images: Path, labels: Path, name: str, problems: list[str]) -> int:
    """Number of usable cases in an images/labels ``.npy`` pair (memory-mapped; counts must agree)."""
    for f in (images, labels):
        if not f.is_file():
            raise InputError(f"{f}: {name} array file is missing")
    n = int(np.load(images, mmap_mode="r").shape[0])
    m = int(np.load(labels, mmap_mode="r").shape[0])
    if n != m:
        problems.append(f"{labels}: {m} label arrays for {n} images")
    return min(n, m)


def _pannuke(layout: PanNuke, root: Path, problems: list[str]) -> list[Case]:
    cases = []
    for fold in layout.folds:
        images = root / f"Fold {fold}" / "images" / f"fold{fold}" / "images.npy"
        masks = root / f"Fold {fold}" / "masks" / f"fold{fold}" / "masks.npy"
        for i in range(_paired_arrays(images, masks, "PanNuke", problems)):
            cases.append({"id": f"fold{fold}_{i:05d}", "image": str(images), "label": str(masks), "index": i,
                          "split": f"fold{fold}", "group": f"fold{fold}_{i:05d}"})  # fmt: skip
    return cases


def _conic(layout: Conic, root: Path, problems: list[str]) -> list[Case]:
    images, labels = root / layout.images, root / layout.labels
    n = _paired_arrays(images, labels, "CoNIC", problems)
    groups = [f"patch{i}" for i in range(n)]
    if layout.patch_info and (root / layout.patch_info).is_file():
        with open(root / layout.patch_info, newline="") as fh:
            names = [row[0] for row in csv.reader(fh)][1:]
        if len(names) == n:  # "consep_1-0000": group by the source image before the patch number
            groups = [name.rsplit("-", 1)[0] for name in names]
        else:
            problems.append(f"{root / layout.patch_info}: {len(names)} rows for {n} patches")
    return [
        {"id": f"patch{i:05d}", "image": str(images), "label": str(labels), "index": i, "split": None,
         "group": groups[i]}
        for i in range(n)
    ]  # fmt: skip


def _is_dicom(path: Path) -> bool:
    """A DICOM part-10 file: a ``.dcm`` name or the ``DICM`` magic after the 128-byte preamble."""
    if path.name.upper() == "DICOMDIR":  # a media index, not an image: its folder is not a series
        return False
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _image_folder(layout: ImageFolder, root: Path, problems: list[str]) -> list[Case]:
    """Every image under ``images_dir``; with ``dicom_series``, each folder holding DICOM files as one case."""
    folder = root / layout.images_dir
    if not folder.is_dir():
        raise InputError(f"{folder}: images folder of the layout does not exist")
    extensions = sorted(layout.extensions, key=len, reverse=True)  # the longest suffix that matches
    found: list[tuple[str, Path]] = []  # (id before de-duplication, file or DICOM folder)
    series: list[Path] = []
    for here, dirs, files in os.walk(folder, followlinks=False):  # links to folders are not entered: no loops
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if layout.recursive else []
        here = Path(here)
        rel = here.relative_to(folder)
        dicom = False
        for name in sorted(f for f in files if not f.startswith(".")):
            path = here / name
            if not path.is_file():  # dangling or looping links, pipes, devices
                continue
            ext = next((e for e in extensions if name.lower().endswith(e)), None)
            if layout.dicom_series and (ext is None or ext == ".dcm") and _is_dicom(path):
                dicom = True
            elif ext is not None:
                found.append(((rel / name[: -len(ext)]).as_posix(), path))
        if dicom:
            series.append(here)
            found.append((rel.as_posix() if rel.parts else folder.resolve().name or "series", here))
    holders = set(series)
    for inner in series:
        outer = next((p for p in inner.parents if p in holders), None)
        if outer is not None:
            problems.append(
                f"{outer}: DICOM files here and in its sub-folder {inner.relative_to(outer)}; a DICOM folder is "
                "read with its sub-folders, so give each series its own folder"
            )
    if not found:
        kinds = ", ".join(layout.extensions) + (", DICOM series" if layout.dicom_series else "")
        raise InputError(f"{folder}: no images found ({kinds})")
    ids = [stem.replace("/", "__") for stem, _ in found]
    counts = Counter(ids)
    cases, seen = [], set()
    for cid, (_, path) in zip(ids, found, strict=True):
        if counts[cid] > 1:  # a.png beside a.jpg: keep the suffix to tell them apart
            cid = path.relative_to(folder).as_posix().replace("/", "__")
        unique, n = cid, 2
        while unique in seen:  # "a__b.png" beside "a/b.png"
            unique, n = f"{cid}__{n}", n + 1
        seen.add(unique)
        cases.append({"id": unique, "image": str(path), "label": None, "split": None, "group": unique})
    return sorted(cases, key=lambda c: c["id"])


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"{path}: dataset.json does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


ADAPTERS: dict[type, Callable[[Any, Path, list[str]], list[Case]]] = {
    FolderPairs: _folder_pairs,
    Refuge: _folder_pairs,
    Datalist: _datalist,
    Msd: _msd,
    NnUNet: _nnunet,
    PanNuke: _pannuke,
    Conic: _conic,
    ImageFolder: _image_folder,
}


def discover(card: DataCard, root: str | Path | None) -> tuple[list[Case], list[str]]:
    """All cases the card's layout finds under ``root``, and the layout problems seen on the way."""
    problems: list[str] = []
    if isinstance(card.layout, Synthetic):  # generated on first use; no root means the medvit cache
        from medvit.data import synthetic  # lazy: import cycle (synthetic reads its sets through ADAPTERS)

        return synthetic.generate(card.layout, root), problems
    root = Path(root) if root not in (None, "") else None
    if root is None or not root.is_dir():
        raise InputError(f"{root}: data root of card {card.name!r} does not exist")
    cases = ADAPTERS[type(card.layout)](card.layout, root, problems)
    return cases, problems


# ------------------------------------------------------------------------------------------------- splits


def split_cases(cases: list[Case], splits: Splits) -> dict[str, list[Case]]:
    """Assign cases to train/val/test, seeded and stable: the same cases and seed give the same split.

    Cases whose data set fixes a split keep it (mapped through ``splits.fixed`` when given); the others
    are split by group so that related cases (patches of one slide) never straddle two splits.
    """
    out: dict[str, list[Case]] = {s: [] for s in SPLITS}
    free: list[Case] = []
    for case in cases:
        source = case.get("split")
        target = (splits.fixed or {}).get(source, source) if source is not None else None
        if splits.type == "fixed" and source is not None and splits.fixed and source not in splits.fixed:
            raise ConfigError(f"splits.fixed: no entry for the data set's split {source!r}")
        if target in SPLITS:
            out[target].append(case)
        elif target is None or splits.type != "fixed":
            free.append(case)
    if free:
        groups = sorted({str(c.get("group", c["id"])) for c in free})
        order = np.random.default_rng(splits.seed).permutation(len(groups))
        if splits.type == "kfold":
            val_groups = {groups[j] for pos, j in enumerate(order) if pos % splits.folds == splits.fold}
            test_groups: set[str] = set()
        else:
            n_test = int(round(splits.test_fraction * len(groups)))
            n_val = max(1, int(round(splits.val_fraction * len(groups))))
            test_groups = {groups[j] for j in order[:n_test]}
            val_groups = {groups[j] for j in order[n_test : n_test + n_val]}
        for case in free:
            g = str(case.get("group", case["id"]))
            out["test" if g in test_groups else "val" if g in val_groups else "train"].append(case)
    return out


def build_datalist(card: DataCard, root: str | Path | None) -> dict[str, list[Case]]:
    """The card's cases under ``root`` split into ``train``/``val``/``test`` lists."""
    cases, _ = discover(card, root)
    if not cases:
        raise InputError(f"{root}: card {card.name!r} found no cases")
    return split_cases(cases, card.splits)
