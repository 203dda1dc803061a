"""Per-label statistics of a segmentation on the input grid: sizes, intensities, positions.

3D, for every label but background (the smallest value): the voxel count, the volume in mL (when the
spacing is known), the mean, standard deviation (population, numpy's default), minimum, maximum and median
of the input intensities in their own units (the image as :func:`medvit.io.read_image` read it, before any
preprocessing: Hounsfield units for CT), the centroid of the voxel centres and their bounding box in world
millimetres (RAS, through the input's affine). Inputs with several channels get one value per channel. 2D:
pixel counts, and the area in mm² when the pixel size is known. Labels the mask does not hold are listed
with a count of 0.

Nothing here identifies a patient: the case name, label names and numbers. ``OUT/statistics.csv`` holds one
row per case and label (per channel for several channels), written atomically at the end of a run.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from medvit.io.atomic import atomic_file

STATISTICS_CSV = "statistics.csv"
_STATS = ("mean", "std", "min", "max", "median")
_AXES = ("x", "y", "z")
_POSITIONS = tuple(f"{what}_{a}_mm" for what in ("centroid", "bbox_min", "bbox_max") for a in _AXES)
COLUMNS_3D = ("case", "label", "value", "channel", "voxels", "volume_ml", *_STATS, *_POSITIONS)
COLUMNS_2D = ("case", "label", "value", "pixels", "area_mm2")


def _num(x: float) -> float:
    """A float with 7 significant digits (what float32 data and mm positions carry)."""
    return float(f"{float(x):.7g}")


def segmentation_statistics(
    mask: np.ndarray,
    image: np.ndarray | None,
    affine: np.ndarray,
    labels: dict[int, str],
    *,
    spacing_known: bool = True,
    modality: str | None = None,
) -> dict[str, Any]:
    """The statistics of ``mask`` (labels on the input grid) over ``image`` (``[C, *spatial]``, input units).

    Args:
        mask: Integer labels, ``[I, J, K]`` (3D) or ``[H, W]`` (2D).
        image: The input intensities on the same grid, channel first; ``None`` leaves intensities out.
        affine: The grid's 4x4 voxel-to-RAS affine (mm).
        labels: Label value -> name; the smallest value is background and left out.
        spacing_known: Whether the affine holds physical sizes (``False`` for photographs: no volumes).
        modality: DICOM modality; ``CT`` intensities are reported as ``HU``.

    Returns:
        ``{"world", "intensity_unit", "labels": [{"label", "value", ...}, ...]}`` (see the module doc).
    """
    affine = np.asarray(affine, dtype=np.float64)
    values = sorted(int(v) for v in labels)[1:]
    if mask.ndim == 2:
        counts = np.bincount(mask.ravel(), minlength=max(values, default=0) + 1)
        pixel_mm2 = abs(float(np.linalg.det(affine[:2, :2]))) if spacing_known else None
        rows = []
        for v in values:
            n = int(counts[v]) if v < len(counts) else 0
            rows.append(
                {
                    "label": labels[v],
                    "value": v,
                    "pixels": n,
                    "area_mm2": _num(n * pixel_mm2) if pixel_mm2 else None,
                }
            )
        return {"world": None, "intensity_unit": None, "labels": rows}

    from scipy import ndimage  # lazy: SciPy only where statistics are computed

    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0 if spacing_known else None
    mask = mask.astype(np.uint8) if mask.dtype.kind == "b" else mask
    boxes = ndimage.find_objects(mask)  # the index box of each label value, in one pass
    rows = []
    for v in values:
        box = boxes[v - 1] if 0 < v <= len(boxes) else None
        rows.append(_label_3d(mask, image, affine, v, labels[v], box, voxel_ml))
    unit = "HU" if modality == "CT" else None
    return {"world": "RAS (mm)", "intensity_unit": unit, "labels": rows}


def _label_3d(mask, image, affine, value: int, name: str, box, voxel_ml: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {"label": name, "value": value, "voxels": 0}
    row["volume_ml"] = 0.0 if voxel_ml is not None else None
    channels = 0 if image is None else int(image.shape[0])
    empty = None if channels <= 1 else [None] * channels
    row.update({s: empty for s in _STATS} if image is not None else {})
    row.update({"centroid_mm": None, "bbox_mm": None})
    if box is None:
        return row
    inside = mask[box] == value
    n = int(inside.sum())
    if n == 0:
        return row
    offset = np.array([s.start for s in box], dtype=np.float64)
    # centroid from the voxel counts along each axis (no list of voxel coordinates, whatever the size)
    others = [tuple(b for b in range(3) if b != a) for a in range(3)]
    centre = np.array([np.arange(inside.shape[a]) @ inside.sum(axis=others[a]) for a in range(3)]) / n + offset
    # bounding box: the world extent of the corners of the structure's index box (exact on grids whose axes
    # follow the world axes, as scanners store them; the box around the index box on oblique grids)
    ends = [np.flatnonzero(inside.any(axis=others[a]))[[0, -1]] for a in range(3)]
    corners = np.array([[i, j, k] for i in ends[0] for j in ends[1] for k in ends[2]]) + offset
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    row["voxels"] = n
    if voxel_ml is not None:
        row["volume_ml"] = _num(n * voxel_ml)
    row["centroid_mm"] = [_num(c) for c in affine[:3, :3] @ centre + affine[:3, 3]]
    row["bbox_mm"] = {"min": [_num(c) for c in world.min(0)], "max": [_num(c) for c in world.max(0)]}
    if image is not None:
        per_channel = [_intensities(image[c][box][inside]) for c in range(channels)]
        for s in _STATS:
            row[s] = per_channel[0][s] if channels == 1 else [p[s] for p in per_channel]
    return row


def _intensities(values: np.ndarray) -> dict[str, float]:
    return {
        "mean": _num(values.mean(dtype=np.float64)),
        "std": _num(values.std(dtype=np.float64)),
        "min": _num(values.min()),
        "max": _num(values.max()),
        "median": _num(np.median(values)),
    }


def statistics_rows(case: str, stats: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The CSV rows of one case's statistics (one per label, per channel when there are several)."""
    if not stats:
        return []
    rows = []
    for item in stats["labels"]:
        if "pixels" in item:
            rows.append({"case": case, **{k: item[k] for k in COLUMNS_2D[1:]}})
            continue
        base = {"case": case, "label": item["label"], "value": item["value"], "voxels": item["voxels"]}
        base["volume_ml"] = item["volume_ml"]
        for a, axis in enumerate(_AXES):
            base[f"centroid_{axis}_mm"] = item["centroid_mm"][a] if item["centroid_mm"] else None
            for end in ("min", "max"):
                base[f"bbox_{end}_{axis}_mm"] = item["bbox_mm"][end][a] if item["bbox_mm"] else None
        per_channel = item.get("mean")
        channels = len(per_channel) if isinstance(per_channel, list) else 1
        for c in range(channels):
            row = {**base, "channel": c}
            for s in _STATS:
                value = item.get(s)
                row[s] = value[c] if isinstance(value, list) else value
            rows.append(row)
    return rows


def sidecar_rows(case: str, sidecar: str | os.PathLike) -> list[dict[str, Any]]:
    """The CSV rows of a case written by an earlier run (``--skip-existing``), from its ``<case>.json``."""
    try:
        stats = json.loads(Path(sidecar).read_text(encoding="utf-8")).get("statistics")
    except (OSError, ValueError, AttributeError):
        return []
    return statistics_rows(case, stats) if isinstance(stats, dict) and "labels" in stats else []


def write_statistics_csv(rows: list[dict[str, Any]], outdir: str | os.PathLike, *, spatial_dims: int = 3) -> Path:
    """Write ``rows`` (of every case) to ``outdir/statistics.csv`` atomically: the 2D or 3D columns, as the rows
    have them (``spatial_dims`` when there are none: then only the header, replacing an earlier run's file)."""
    flat = "pixels" in rows[0] if rows else spatial_dims == 2
    columns = COLUMNS_2D if flat else COLUMNS_3D
    path = Path(outdir) / STATISTICS_CSV
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        out = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        out.writeheader()
        for row in rows:
            out.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return path
