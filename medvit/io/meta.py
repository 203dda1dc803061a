"""The image type every reader returns: a channel-first MONAI ``MetaTensor`` with its geometry.

Meta keys (besides MONAI's ``affine``, ``original_affine``, ``spatial_shape``):

- ``spacing``, ``origin``, ``direction``, ``space`` ("RAS"): derived from the affine.
- ``format``: ``dicom``, ``dicom-multiframe``, ``nifti1``, ``nifti2``, ``png``, ...
- ``modality``: DICOM modality when known, else ``None``.
- ``description``: non-identifying facts only (series UID, modality, number of slices; no free text).
- ``spacing_known``: ``False`` for photographs and tiles whose pixels have no physical size.
- ``source``: the path given by the user (internal; no DICOM header values).
- ``dicom_sources``: for DICOM inputs, the source files in slice order (used to write DICOM-SEG).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medvit.io.geometry import geometry_meta

_TORCH_SAFE = {np.dtype(np.uint16): np.int32, np.dtype(np.uint32): np.int64, np.dtype(np.uint64): np.int64}


def make_image(
    data: np.ndarray,
    affine: np.ndarray,
    *,
    format: str,
    source: str,
    modality: str | None,
    description: dict[str, Any],
    spacing_known: bool = True,
    **extra: Any,
):
    """Wrap a channel-first array and its RAS affine into a MetaTensor with the medvit meta keys."""
    import torch  # lazy: keeps medvit cards list free of torch
    from monai.data import MetaTensor  # lazy: keeps medvit cards list free of MONAI

    data = np.ascontiguousarray(data)
    if not data.flags.writeable:  # PIL hands out read-only buffers; torch warns on those
        data = data.copy()
    if not data.dtype.isnative:  # big-endian files
        data = data.astype(data.dtype.newbyteorder("="))
    if data.dtype in _TORCH_SAFE:  # torch has no full support for wide unsigned integers
        data = data.astype(_TORCH_SAFE[data.dtype])
    affine = np.asarray(affine, dtype=np.float64)
    meta = {
        **geometry_meta(affine),
        "original_affine": affine.copy(),
        "spatial_shape": np.asarray(data.shape[1:]),
        "original_channel_dim": 0,
        "format": format,
        "source": source,
        "filename_or_obj": source,
        "modality": modality,
        "description": description,
        "spacing_known": spacing_known,
        **extra,
    }
    return MetaTensor(torch.from_numpy(data), affine=torch.from_numpy(affine.copy()), meta=meta)


def to_numpy(image) -> tuple[np.ndarray, np.ndarray | None]:
    """Array data and affine (or ``None``) of a MetaTensor, tensor or array."""
    affine = getattr(image, "affine", None)
    if affine is not None:
        affine = np.asarray(affine.detach().cpu().numpy() if hasattr(affine, "detach") else affine, np.float64)
    if hasattr(image, "detach"):
        image = image.detach().cpu()
        if hasattr(image, "as_tensor"):
            image = image.as_tensor()
        image = image.numpy()
    return np.asarray(image), affine


def spatial_shape_of(image, data: np.ndarray) -> tuple[int, ...]:
    """Spatial shape of an image: from its meta when present, else ``data`` minus a leading channel axis.

    Plain arrays are taken as channel-first when 4D (``[C, I, J, K]``) and as spatial when 2D or 3D.
    """
    meta = getattr(image, "meta", None) or {}
    if "spatial_shape" in meta and len(meta["spatial_shape"]) in (data.ndim, data.ndim - 1):
        shape = tuple(int(s) for s in np.asarray(meta["spatial_shape"]).tolist())
        if data.shape[-len(shape) :] == shape:
            return shape
    return tuple(data.shape[1:]) if data.ndim == 4 else tuple(data.shape)
