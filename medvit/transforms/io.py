"""Reading the cases of a datalist inside a MONAI pipeline: image files, multi-channel lists and ``.npy`` slices.

:class:`LoadImage` reads one entry with :func:`medvit.io.read_image` (NIfTI, DICOM, PNG/JPEG, ...), or, for
PanNuke/CoNIC cases, slice ``index`` of a ``.npy`` array (``[N, H, W, C]``, channel-last). Labels come out as
integer class maps ``[1, *S]``; cell labels as ``[2, H, W]`` (instance map, type map). :class:`LoadImaged`
reads the keys of a case dict and checks that each label sits on its image's grid.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from medvit.errors import InputError, MedvitError, one_line
from medvit.io import read_image
from medvit.io.geometry import pad_affine_2d, same_grid
from medvit.io.meta import make_image
from medvit.transforms.label_maps import pannuke_to_maps, remap_labels

# meta keys a loaded image keeps: geometry and provenance that collate into batches (no None, no ragged lists;
# no derived spacing/origin/direction, which resampling would leave stale: the affine is the truth)
KEEP_META = (
    "affine",
    "space",
    "original_affine",
    "spatial_shape",
    "original_channel_dim",
    "format",
    "filename_or_obj",
    "spacing_known",
)


def _collatable(image):
    """Drop meta entries that batch collation cannot handle (``None`` values, DICOM source lists)."""
    image.meta = {k: image.meta[k] for k in KEEP_META if image.meta.get(k) is not None}
    return image


def _read_npy(path: str, index: int | None):
    if index is None:
        raise InputError(f"{path}: a .npy case needs an 'index' into the array")
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({one_line(exc)})") from None
    if array.ndim not in (3, 4) or not 0 <= index < array.shape[0]:
        raise InputError(f"{path}: cannot take item {index} of an array of shape {array.shape}")
    item = np.array(array[index])  # copy out of the memory map
    data = item[None] if item.ndim == 2 else np.moveaxis(item, -1, 0)
    return make_image(data, pad_affine_2d(), format="npy", source=path, modality=None,
                      description={"num_slices": 1}, spacing_known=False)  # fmt: skip


def _read(path: str | Sequence[str], index: int | None):
    if isinstance(path, str | Path) and str(path).endswith(".npy"):
        return _read_npy(str(path), index)
    if isinstance(path, str | Path):
        return read_image(path)
    parts = [read_image(p) for p in path]  # nnU-Net style: one file per channel
    first = parts[0]
    for p, part in zip(path[1:], parts[1:], strict=True):
        if tuple(part.shape[1:]) != tuple(first.shape[1:]):
            raise InputError(f"{p}: channel image shape {tuple(part.shape[1:])} differs from {path[0]}")
    out = torch.cat([p.as_tensor() for p in parts], dim=0)
    return MetaTensor(out, meta=dict(first.meta))


def _as_class_map(label, path: str, remap: dict[int, int] | None):
    """A read label image -> ``[1, *S]`` int32 class map (remapped), or ``[2, H, W]`` for cell arrays."""
    data = np.asarray(label)
    if label.meta.get("format") == "npy" and data.shape[0] in (2, 6):  # CoNIC (inst, type) / PanNuke masks
        if data.shape[0] == 6:
            inst, types = pannuke_to_maps(np.moveaxis(data, 0, -1))
            data = np.stack([inst, types])
        out = data.astype(np.int32)
    else:
        if data.shape[0] > 1:
            if not all(np.array_equal(data[0], c) for c in data[1:]):
                raise InputError(f"{path}: label image has {data.shape[0]} different channels, expected 1")
            data = data[:1]
        if not np.issubdtype(data.dtype, np.integer):
            rounded = np.rint(data)
            if not np.array_equal(rounded, data):
                raise InputError(f"{path}: label values are not whole numbers (a label map must hold classes)")
            data = rounded
        out = remap_labels(data.astype(np.int32), remap)
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(out)), meta=dict(label.meta))


class LoadImage(Transform):
    """Read one datalist entry into a channel-first MetaTensor with its geometry.

    Args:
        label: Read a label: an integer class map ``[1, *S]`` (several identical channels are folded to
            one; whole-number float maps are accepted), or for PanNuke/CoNIC arrays ``[2, H, W]``
            (instance map, type map; PanNuke's six channels go through
            :func:`medvit.transforms.label_maps.pannuke_to_maps`).
        label_remap: Stored value -> class index (REFUGE: ``{255: 0, 128: 1, 0: 2}``), applied to labels.
    """

    def __init__(self, *, label: bool = False, label_remap: Mapping[int, int] | None = None) -> None:
        if label_remap is not None and not label:
            raise ValueError("label_remap applies to labels only")
        self.label = label
        self.label_remap = dict(label_remap) if label_remap else None

    def __call__(self, path: str | Sequence[str], index: int | None = None):
        """Read ``path`` (a file, a folder of DICOM, a list of per-channel files or a ``.npy`` with ``index``)."""
        image = _collatable(_read(path, index))
        if self.label:
            first = path if isinstance(path, str | Path) else path[0]
            image = _as_class_map(image, str(first), self.label_remap)
        return image


class LoadImaged(MapTransform):
    """Dictionary version of :class:`LoadImage` for datalist cases (``id``, ``image``, ``label``, ``index``).

    Entries that are not paths (class indices of classification cases) are left as they are. Each label is
    checked against ``ref_key``'s grid (shape, and the affine for 3D); a mismatch names the case.

    Args:
        keys: Keys to read.
        label_keys: Which of ``keys`` hold labels.
        label_remap: Stored value -> class index for the labels (the data card's ``layout.label_remap``).
        ref_key: The image the labels must sit on.
        allow_missing_keys: Skip keys absent from a case instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection,
        *,
        label_keys: Sequence[str] = ("label",),
        label_remap: Mapping[int, int] | None = None,
        ref_key: str = "image",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_keys = tuple(label_keys)
        self.ref_key = ref_key
        self.image_loader = LoadImage()
        self.label_loader = LoadImage(label=True, label_remap=label_remap)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        cid = d.get("id", "?")
        for key in self.key_iterator(d):
            value = d[key]
            if not isinstance(value, str | Path | list | tuple) or (
                isinstance(value, list | tuple) and not all(isinstance(v, str | Path) for v in value)
            ):
                continue  # a class index or multi-label list
            loader = self.label_loader if key in self.label_keys else self.image_loader
            try:
                d[key] = loader(value, d.get("index"))
            except MedvitError as exc:
                raise InputError(f"case {cid}: {one_line(exc)}") from None
        ref = d.get(self.ref_key)
        for key in self.label_keys:
            if key in d and key != self.ref_key and hasattr(d[key], "affine") and hasattr(ref, "affine"):
                self._check_grid(cid, key, d[key], ref)
        return d

    def _check_grid(self, cid: str, key: str, label, image) -> None:
        name = Path(str(label.meta.get("filename_or_obj", key))).name
        if tuple(label.shape[1:]) != tuple(image.shape[1:]):
            raise InputError(
                f"case {cid}: {key} {name} has grid {tuple(label.shape[1:])}, image has {tuple(image.shape[1:])}"
            )
        if label.ndim == 4 and not same_grid(
            np.asarray(image.affine), image.shape[1:], np.asarray(label.affine), label.shape[1:], atol=1e-3
        ):
            raise InputError(f"case {cid}: {key} {name} geometry (affine) differs from the image's")
