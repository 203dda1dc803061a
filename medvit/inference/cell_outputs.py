"""The files a cells package's prediction writes.

========================  ===========================================================================
``<case>.geojson``        ``geojson``: a FeatureCollection QuPath imports and edits: one detection per
                          nucleus, its outline a Polygon in level-0 pixel coordinates, ``classification``
                          with the type's name and colour, measurements (area in µm², type probability)
``<case>_cells.csv``      ``csv``: one row per nucleus: id, centroid x/y in level-0 pixels and µm, type,
                          type name, type probability, area in µm²
``<case>_instances.tif``  ``instances``: instance ids on the region's level-0 grid (tiles and ``--roi``)
``<case>_types.png``      ``types``: each nucleus' type value on that grid (tiles and ``--roi``)
========================  ===========================================================================
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from medvit.errors import InputError
from medvit.inference.slides import PALETTE, CellsPrediction

CHUNK = 10_000  # CSV rows formatted at a time
CSV_COLUMNS = ("id", "x", "y", "x_um", "y_um", "type", "type_name", "type_prob", "area_um2")


def colour(value: int) -> list[int]:
    """The RGB colour of type ``value``."""
    return list(PALETTE[int(value) % len(PALETTE)]) if value else [128, 128, 128]


def write_geojson(pred: CellsPrediction, path: Path) -> None:
    """A GeoJSON FeatureCollection of the nuclei, streamed feature by feature (a slide has 10^5-10^6)."""
    classes = {v: {"name": pred.type_name(v), "color": colour(v)} for v in np.unique(pred.types).tolist()}
    with open(path, "w", encoding="utf-8") as fh:
        fh.write('{"type": "FeatureCollection", "features": [\n')
        for i, ring in enumerate(pred.contours):
            feature = {
                "type": "Feature",
                "id": f"medvit-{i + 1}",
                "geometry": {"type": "Polygon", "coordinates": [np.round(ring, 2).tolist()]},
                "properties": {
                    "objectType": "detection",
                    "isLocked": False,
                    "classification": classes[int(pred.types[i])],
                    "measurements": {
                        "Area µm^2": round(float(pred.areas_um2[i]), 3),
                        "Type probability": round(float(pred.type_probs[i]), 4),
                    },
                },
            }
            fh.write(("," if i else "") + json.dumps(feature, ensure_ascii=False) + "\n")
        fh.write("]}\n")


def write_cells_csv(pred: CellsPrediction, path: Path) -> None:
    """One row per nucleus, written :data:`CHUNK` rows at a time (Python lists of a whole slide's rows would
    cost more memory than the prediction)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(CSV_COLUMNS)
        for start in range(0, len(pred), CHUNK):
            rows = pred.rows(start, start + CHUNK)
            out.writerows(zip(*(rows[c] for c in CSV_COLUMNS), strict=True))


def write_instances(pred: CellsPrediction, path: Path) -> None:
    import tifffile  # lazy: tifffile only for instance maps

    if pred.instances is None:
        raise InputError(f"{path.name}: instance maps are written for tiles and --roi regions, not whole slides")
    tifffile.imwrite(path, pred.instances.astype(np.uint32), compression="zlib")


def write_types(pred: CellsPrediction, path: Path) -> None:
    """Type values on the region's grid as a palette PNG: pixel values are the types, shown in colour."""
    from PIL import Image  # lazy: as the other 2D writers

    if pred.instances is None:
        raise InputError(f"{path.name}: type maps are written for tiles and --roi regions, not whole slides")
    lookup = np.zeros(len(pred) + 1, np.uint8)
    lookup[1:] = pred.types.astype(np.uint8)
    img = Image.fromarray(lookup[pred.instances], mode="P")
    palette = [channel for v in range(256) for channel in (colour(v) if v < len(PALETTE) else (0, 0, 0))]
    palette[:3] = [0, 0, 0]
    img.putpalette(palette)
    img.save(path, format="PNG")
