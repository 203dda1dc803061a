"""NIfTI-1/2 (and Analyze pairs) reading and writing with the grid kept exactly."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from medvit.errors import GeometryError, InputError, one_line
from medvit.io.atomic import atomic_path
from medvit.io.geometry import decompose_affine, same_grid
from medvit.io.limits import check_declared
from medvit.io.meta import make_image, spatial_shape_of, to_numpy

NIFTI_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".hdr.gz", ".img", ".img.gz")


def is_nifti_name(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _check_pair(path: Path) -> None:
    """A ``.hdr`` needs its ``.img`` beside it (and the other way round)."""
    name = path.name
    lower = name.lower()
    for own, other in ((".hdr", ".img"), (".img", ".hdr")):
        for gz in ("", ".gz"):
            if lower.endswith(own + gz):
                stem = name[: -len(own + gz)]
                candidates = [path.with_name(stem + o) for o in (other, other + ".gz", other.upper())]
                if not any(c.exists() for c in candidates):
                    raise InputError(f"{path}: header/image pair is incomplete: {stem}{other} is missing")
                return


def read_nifti(path: str | Path):
    """Read a NIfTI-1/2 file (or an Analyze/NIfTI ``.hdr``/``.img`` pair) into a channel-first MetaTensor.

    3D volumes become ``[1, I, J, K]``; 4D ``[I, J, K, T]`` becomes ``[T, I, J, K]`` (time points or
    stacked modalities as channels); 2D ``[I, J]`` becomes ``[1, I, J, 1]``. The affine is the file's own
    (sform when set, else qform), in RAS; the data keep their stored type after scaling.
    """
    import nibabel as nib  # lazy: keeps medvit cards list free of nibabel

    path = Path(path)
    _check_pair(path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for bad headers
        raise InputError(f"{path}: not a readable NIfTI/Analyze file ({one_line(exc)})") from None
    if not isinstance(img, nib.analyze.AnalyzeImage):
        raise InputError(f"{path}: {type(img).__name__} files are not supported; convert to NIfTI first")
    _check_size(img, path)
    _check_values(img, path)
    try:
        data = np.asanyarray(img.dataobj)
    except (EOFError, OSError, ValueError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: image data is truncated or corrupt ({one_line(exc)})") from None

    data = _to_channel_first(np.asarray(data), path)
    affine = np.asarray(img.affine, dtype=np.float64)
    fmt = {nib.Nifti2Image: "nifti2", nib.Nifti1Image: "nifti1", nib.Nifti1Pair: "nifti1-pair"}.get(
        type(img), "analyze"
    )
    return make_image(
        data,
        affine,
        format=fmt,
        source=str(path),
        modality=None,
        description={"series_uid": None, "num_slices": int(data.shape[-1])},
    )


def _check_values(img, path: Path) -> None:
    """Voxel types medvit cannot represent faithfully, and geometry the header does not give, are errors:
    nothing is dropped (an imaginary part) or invented (a 1 mm voxel for a zero pixdim)."""
    header = img.header
    dtype = header.get_data_dtype()
    if dtype.fields is not None:
        raise InputError(f"{path}: {dtype.itemsize * 8}-bit RGB/structured voxels are not supported; convert to "
                         "one channel per colour")  # fmt: skip
    if dtype.kind == "c":
        raise InputError(f"{path}: complex voxels ({dtype}); medvit reads real-valued images (take the magnitude)")
    codes = (int(header["sform_code"]), int(header["qform_code"])) if "sform_code" in header else (0, 0)
    zooms = _stored_zooms(img, path)
    if codes == (0, 0) and any(not np.isfinite(z) or z <= 0 for z in zooms):
        raise InputError(f"{path}: voxel size {zooms} in the header is not positive; "
                         "medvit does not invent a spacing")  # fmt: skip
    affine = img.affine
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{path}: the header's affine is degenerate or not finite; the grid is unknown")


def _stored_zooms(img, path: Path) -> list[float]:
    """The voxel size as stored (nibabel's loader replaces a zero pixdim by 1 with a log message)."""
    import nibabel as nib  # lazy: keeps medvit cards list free of nibabel

    holder = img.file_map.get("header") or img.file_map["image"]
    header_file = holder.filename or str(path)
    try:
        with nib.openers.ImageOpener(header_file) as fh:
            raw = type(img.header).from_fileobj(fh, check=False)
    except Exception:  # noqa: BLE001 - nibabel read it once already; fall back to its view
        raw = img.header
    return [float(z) for z in raw.get_zooms()[:3]]


def _check_size(img, path: Path) -> None:
    """The declared array against the image budget, and for uncompressed files against the bytes stored."""
    header = img.header
    shape = header.get_data_shape()
    dtype = header.get_data_dtype()
    scaled = any(np.isfinite(v) and v not in (0, 1) for v in header.get_slope_inter() if v is not None)
    itemsize = max(dtype.itemsize, 8 if scaled else 1)  # scaled data become float64
    image_file = Path(img.file_map["image"].filename or path)
    stored = None
    if not image_file.name.lower().endswith(".gz") and image_file.is_file():
        stored = image_file.stat().st_size - int(header.get_data_offset())
    check_declared(path, shape, itemsize, stored=None if stored is None else stored * itemsize // dtype.itemsize)


def _to_channel_first(data: np.ndarray, path: Path) -> np.ndarray:
    if data.ndim == 2:
        return data[None, :, :, None]
    if data.ndim == 3:
        return data[None]
    if data.ndim == 4:
        return np.moveaxis(data, -1, 0)
    if data.ndim == 5 and data.shape[3] == 1:  # NIfTI vector intent: [I, J, K, 1, V]
        return np.moveaxis(data[:, :, :, 0], -1, 0)
    raise InputError(f"{path}: unsupported NIfTI shape {tuple(data.shape)} (expected 2D, 3D or 4D)")


_DTYPE_FOR_NIFTI = {
    np.dtype(bool): np.uint8,
    np.dtype(np.float16): np.float32,
}


def _nifti_dtype(data: np.ndarray) -> np.ndarray:
    if data.dtype in _DTYPE_FOR_NIFTI:
        return data.astype(_DTYPE_FOR_NIFTI[data.dtype])
    if data.dtype == np.int64 and data.size and np.iinfo(np.int32).min <= data.min() <= data.max() < 2**31:
        return data.astype(np.int32)  # labels: int32 is what every viewer reads
    return data


def write_nifti(image, path: str | Path, *, affine: np.ndarray | None = None) -> Path:
    """Write a channel-first image (``[C, I, J, K]``; ``C == 1`` is dropped) to ``.nii``/``.nii.gz``.

    ``affine`` defaults to the image's own (a MetaTensor's). The file is written to a temporary name,
    read back with nibabel and checked to hold exactly the given grid (shape and affine) before it is
    renamed into place: a failed check leaves no file behind.

    Args:
        image: MetaTensor, tensor or array. Channel-first unless it is a plain 3D array ``[I, J, K]``.
        path: target file name ending in ``.nii`` or ``.nii.gz``.
        affine: voxel-to-RAS 4x4; required when ``image`` carries none.
    """
    import nibabel as nib  # lazy: keeps medvit cards list free of nibabel

    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise InputError(f"{path}: NIfTI output needs a .nii or .nii.gz name")
    data, own_affine = to_numpy(image)
    affine = own_affine if affine is None else np.asarray(affine, dtype=np.float64)
    if affine is None:
        raise InputError(f"{path}: no affine given and the image carries none")
    spatial = spatial_shape_of(image, data)
    # to [I, J, K, C]: channels last (NIfTI's 4th axis), 2D grids get a K axis of one voxel
    data = np.moveaxis(data, 0, -1) if data.ndim == len(spatial) + 1 else data[..., None]
    for _ in range(3 - len(spatial)):
        data = np.expand_dims(data, axis=-2)
    if data.shape[-1] == 1:
        data = data[..., 0]
    data = _nifti_dtype(np.ascontiguousarray(data))

    if affine.shape != (4, 4):
        raise GeometryError(f"{path}: affine must be 4x4, got {affine.shape}")
    geo = decompose_affine(affine)
    cls = nib.Nifti2Image if max(data.shape) > 32767 else nib.Nifti1Image
    img = cls(data, affine)
    # sform always; qform only where it can hold the affine exactly (no shear)
    img.set_sform(affine, code=1)
    if geo.is_orthogonal:
        img.set_qform(affine, code=1)
    else:
        img.set_qform(None, code=0)
    img.header.set_xyzt_units("mm", "sec")

    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
        back = nib.load(str(tmp))
        if not same_grid(back.affine, back.shape[:3], affine, data.shape[:3], atol=1e-4):
            raise GeometryError(
                f"{path}: written grid differs from the input grid "
                f"(shape {back.shape[:3]} vs {data.shape[:3]}); nothing was written"
            )
    return path
