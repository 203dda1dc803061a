"""HoVer-Net training targets from a nuclei instance map (Graham et al., "HoVer-Net: Simultaneous segmentation
and classification of nuclei in multi-tissue histology images", MedIA 2019).

From an instance map (and a type map) :class:`HoverTargets` makes the three branch targets CellVTA/HoVer-Net
train on: ``np_map`` (nucleus or not), ``hv_map`` (horizontal/vertical distance to each nucleus' centre of
mass, in [-1, 1]) and ``tp_map`` (nucleus type per pixel). Compute them *after* geometric augmentation so
that the distance maps follow the rotated/flipped/cropped instances.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from medvit.postprocess.hover import hv_maps
from medvit.transforms.io import LoadImage


def hover_maps(inst_map: np.ndarray) -> np.ndarray:
    """Horizontal and vertical distance maps ``[2, H, W]`` float32 of an instance map ``[H, W]``.

    For every instance, each pixel's x (channel 0) and y (channel 1) offset from the instance's centre of mass,
    divided by the largest offset on that side, so values run from -1 (left/top edge) through 0 (centre) to
    1 (right/bottom edge); background is 0. The same targets :func:`medvit.postprocess.hover_instances` inverts.
    """
    inst_map = np.asarray(inst_map)
    if inst_map.ndim != 2:
        raise ValueError(f"hover_maps needs an [H, W] instance map, got shape {inst_map.shape}")
    return hv_maps(inst_map)


class HoverTargets(Transform):
    """Cell label -> ``(np_map, hv_map, tp_map, inst_map)``.

    The label is ``[2, H, W]`` (instance map, type map), or an instance map ``[H, W]`` / ``[1, H, W]``
    alone (every nucleus then has type 1). Outputs: ``np_map`` long ``[H, W]`` (0/1), ``hv_map`` float32
    ``[2, H, W]`` (see :func:`hover_maps`), ``tp_map`` long ``[H, W]`` (0 = background), ``inst_map`` int32
    ``[H, W]``.
    """

    def __call__(self, label) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        data = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3 or data.shape[0] not in (1, 2):
            raise ValueError(f"a cell label is [2, H, W] (instance, type) or [H, W], got shape {data.shape}")
        inst = np.rint(data[0]).astype(np.int32)
        types = np.rint(data[1]).astype(np.int64) if data.shape[0] == 2 else (inst > 0).astype(np.int64)
        types[inst == 0] = 0
        return (
            torch.from_numpy((inst > 0).astype(np.int64)),
            torch.from_numpy(hover_maps(inst)),
            torch.from_numpy(types),
            torch.from_numpy(inst),
        )


class HoverTargetsd(MapTransform):
    """Dictionary version of :class:`HoverTargets`: replaces the cell label with ``np_map``, ``hv_map``,
    ``tp_map`` and ``inst_map``.

    A label still given as a path (CoNIC ``labels.npy`` / PanNuke ``masks.npy`` with the case's ``index``) is
    read first with :class:`medvit.transforms.io.LoadImage` (PanNuke through
    :func:`medvit.transforms.label_maps.pannuke_to_maps`).

    Args:
        keys: The label key (one).
        index_key: The case key holding the item index into a ``.npy`` array.
        allow_missing_keys: Skip cases without the label.
    """

    def __init__(
        self, keys: KeysCollection = "label", *, index_key: str = "index", allow_missing_keys: bool = False
    ):
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"HoverTargetsd takes one label key, got {self.keys}")
        self.index_key = index_key
        self.targets = HoverTargets()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d.pop(key)
            if isinstance(label, str):
                label = LoadImage(label=True)(label, d.get(self.index_key))
            d["np_map"], d["hv_map"], d["tp_map"], d["inst_map"] = self.targets(label)
        return d
