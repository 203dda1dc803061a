"""Label maps as stored -> as trained: a stored-value remap, and PanNuke's per-type channels -> instance and
type maps. Plain numpy, used when reading labels (:mod:`medvit.transforms.io`) and checking them
(:mod:`medvit.data.validate`)."""

from __future__ import annotations

import numpy as np


def pannuke_to_maps(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PanNuke ``[H, W, 6]`` (five per-type instance maps, then background) -> instance map, type map.

    Types are 1..5 in PanNuke's channel order (neoplastic, inflammatory, connective, dead, epithelial).
    """
    inst = np.zeros(masks.shape[:2], np.int32)
    types = np.zeros(masks.shape[:2], np.int32)
    next_id = 1
    for t in range(5):
        channel = masks[..., t].astype(np.int64)
        for value in np.unique(channel):
            if value == 0:
                continue
            region = channel == value
            inst[region] = next_id
            types[region] = t + 1
            next_id += 1
    return inst, types


def remap_labels(label: np.ndarray, remap: dict[int, int] | None) -> np.ndarray:
    """Apply a stored-value -> label mapping (values not in it are kept, so checks can report them)."""
    if not remap:
        return label
    out = label.copy()
    for src, dst in remap.items():
        out[label == src] = dst
    return out
