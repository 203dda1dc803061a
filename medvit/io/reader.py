"""One entry point for every supported input: ``read_image(path)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medvit.errors import InputError, NotDicomError
from medvit.io.dicom import read_dicom
from medvit.io.geometry import decompose_affine
from medvit.io.image2d import is_image2d_name, read_image2d
from medvit.io.nifti import is_nifti_name, read_nifti

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
_TIFF = (b"II*\x00", b"MM\x00*")
_BMP = b"BM"


def sniff(path: Path) -> str:
    """Guess the format of an existing file or folder: ``dicom``, ``nifti`` or ``image2d``."""
    if path.is_dir():
        return "dicom"
    name = path.name.lower()
    if name.endswith(".zip"):
        return "dicom"
    if is_nifti_name(path):
        return "nifti"
    if is_image2d_name(path):
        return "image2d"
    with open(path, "rb") as fh:
        head = fh.read(352)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith((_PNG, _JPEG, *_TIFF, _BMP)):
        return "image2d"
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00", b"n+2\x00", b"ni2\x00"):
        return "nifti"
    return "dicom"  # DICOM without a preamble is common; the DICOM reader says if it is not


def read_image(
    path: str | Path,
    *,
    series: str | None = None,
    spacing: tuple[float, ...] | None = None,
    resample_uneven: bool = False,
):
    """Read any supported input into a channel-first MetaTensor with its geometry.

    Supported: DICOM file, folder (nested, one or many series) or zip, enhanced multi-frame DICOM,
    NIfTI-1/2 (``.nii``, ``.nii.gz``, ``.hdr``/``.img``), PNG, JPEG, TIFF and BMP.

    Args:
        path: file or folder to read.
        series: for DICOM inputs holding several series, the SeriesInstanceUID (or unique prefix) to read.
        spacing: voxel spacing (mm, index order) to use where a DICOM input gives none.
        resample_uneven: resample a DICOM series with gaps between slices onto a uniform grid (otherwise
            an error naming the gap); see :func:`~medvit.io.dicom.read_dicom`.

    Raises:
        InputError: with a one-line message naming the file and the reason.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    fmt = sniff(path)
    if fmt == "nifti":
        return read_nifti(path)
    if fmt == "image2d":
        return read_image2d(path)
    try:
        return read_dicom(path, series=series, spacing=spacing, resample_uneven=resample_uneven)
    except NotDicomError:  # DICOM was only the last guess: say what was tried
        raise InputError(f"{path}: not a DICOM, NIfTI or 2D image file (unrecognised content)") from None


def describe(image) -> dict[str, Any]:
    """Everything ``medvit info`` shows about an image: format, grid, geometry, modality, series.

    Only non-identifying facts: no DICOM patient, study or institution attributes are read into meta.
    """
    meta = image.meta
    affine = np.asarray(image.affine, dtype=np.float64)
    geo = decompose_affine(affine)
    spatial = [int(s) for s in image.shape[1:]]
    out: dict[str, Any] = {
        "format": meta.get("format"),
        "shape": [int(image.shape[0]), *spatial],
        "channels": int(image.shape[0]),
        "spatial_dims": len(spatial),
        "dtype": str(image.dtype).replace("torch.", ""),
        "spacing": [round(float(v), 6) for v in geo.spacing[: max(len(spatial), 2)]],
        "spacing_known": bool(meta.get("spacing_known", True)),
        "origin": [round(float(v), 6) for v in geo.origin],
        "direction": np.round(geo.direction, 6).tolist(),
        "affine": np.round(affine, 6).tolist(),
        "world": "RAS (mm)",
        "orientation": geo.orientation if len(spatial) == 3 else None,
        "orthogonal": geo.is_orthogonal,
        "modality": meta.get("modality"),
        "series": meta.get("description", {}),
    }
    return out
