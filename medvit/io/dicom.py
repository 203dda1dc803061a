"""DICOM series -> channel-first MetaTensor with exact geometry.

Slices are sorted by their position along the slice normal (never by InstanceNumber or file name),
spacing between slices comes from the positions, rescale slope/intercept are applied per frame, and an
image's in-plane spacing comes from PixelSpacing (or the functional groups), never a made-up 1.0.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from medvit.errors import GeometryError, InputError, MedvitWarning, NotDicomError, one_line
from medvit.io.dicom_scan import Frame, Series, scan, select_series
from medvit.io.geometry import lps_to_ras, pad_affine_2d
from medvit.io.meta import make_image

#: relative tolerance on slice steps before spacing is reported as uneven
UNEVEN_TOL = 0.01
#: a step between slices this much larger or smaller than the median step (relative) is a gap: an error
#: unless the caller asks to resample (uneven steps within it are a warning, on the mean step)
GAP_TOL = 0.5
#: angle (degrees) between the stacking direction and the slice normal reported as gantry tilt
TILT_TOL_DEG = 0.05


def list_series(path: str | Path, *, descriptions: bool = False) -> list[dict]:
    """The image series under a DICOM file, folder or zip (non-identifying facts only; with
    ``descriptions``, also each SeriesDescription, free text that may identify: for a terminal only)."""
    path = Path(path)
    series, report = scan(path)
    if not series:
        raise _nothing_found(path, report)
    if descriptions:
        return [{**s.as_dict(), "series_description": s.description} for s in series]
    return [s.as_dict() for s in series]


def read_dicom(
    path: str | Path,
    *,
    series: str | None = None,
    spacing: tuple[float, ...] | None = None,
    resample_uneven: bool = False,
):
    """Read a DICOM file, folder (nested) or zip into a channel-first MetaTensor.

    Cross-sectional series become ``[C, I, J, K]`` (I along a row, J down the columns, K along the
    slice normal) with a RAS affine; images without patient geometry (photographs, projections without
    a frame of reference) become ``[C, H, W]`` like a PNG.

    Args:
        path: a DICOM file, a folder (searched recursively) or a ``.zip``.
        series: SeriesInstanceUID (or a unique prefix, or ``UID#k`` for a sub-series) to read when the
            input holds more than one series.
        spacing: voxel spacing in mm to use where the files give none, in index order ``(I, J[, K])``.
        resample_uneven: a series with gaps between slices (a step more than :data:`GAP_TOL` off the median)
            is an error naming the gap; with this, it is resampled (linearly, from the slices' true
            positions) onto a uniform grid at the median step, and ``meta["description"]["resampled"]`` says so.
    """
    path = Path(path)
    found, report = scan(path)
    if not found:
        raise _nothing_found(path, report)
    chosen = select_series(found, path, series)
    return _stack(chosen, path, spacing, resample_uneven)


def _nothing_found(path: Path, report) -> InputError:
    if report.unreadable:
        return InputError(f"{path}: corrupt DICOM: {report.unreadable[0]}")
    if path.is_file():
        if report.no_pixels:
            return InputError(f"{path}: DICOM file has no pixel data (not an image)")
        return NotDicomError(f"{path}: not a DICOM file")
    return InputError(
        f"{path}: no readable images ({report.files} file(s) scanned: {report.not_dicom} not DICOM, "
        f"{report.no_pixels} DICOM without pixel data)"
    )


# --------------------------------------------------------------------------------------------- pixels


def _frame_pixels(frames: list[Frame], path: Path) -> np.ndarray:
    """Decode each frame's pixels and apply its rescale: ``[F, rows, cols(, samples)]``."""
    cache: dict[int, np.ndarray] = {}
    planes = []
    for fr in frames:
        key = id(fr.dataset)
        if key not in cache:
            cache[key] = _decode(fr)
        arr = cache[key]
        planes.append(arr if fr.frame_index is None else arr[fr.frame_index])
    stack = np.stack(planes)
    slopes = np.array([fr.slope for fr in frames])
    intercepts = np.array([fr.intercept for fr in frames])
    if np.all(slopes == 1) and np.all(intercepts == np.round(intercepts)):
        if np.any(intercepts != 0):
            stack = stack.astype(np.int32) + intercepts.astype(np.int32).reshape(-1, *[1] * (stack.ndim - 1))
        return stack
    shape = (-1,) + (1,) * (stack.ndim - 1)
    return (stack.astype(np.float32) * slopes.reshape(shape) + intercepts.reshape(shape)).astype(np.float32)


def _decode(frame: Frame) -> np.ndarray:
    ds = frame.dataset
    try:
        arr = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        reason = one_line(exc)
        if "plugin" in reason.lower() or "decoder" in reason.lower() or "dependenc" in reason.lower():
            name = getattr(syntax, "name", syntax)
            raise InputError(f"{frame.source}: cannot decode transfer syntax {name}: {reason}") from None
        raise InputError(f"{frame.source}: corrupt or truncated DICOM pixel data ({reason})") from None
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frame.frame_index is not None and arr.ndim == (2 if samples == 1 else 3):  # 1-frame multi-frame file
        arr = arr[None]
    return arr


# ---------------------------------------------------------------------------------------------- stack


def _stack(series: Series, path: Path, spacing: tuple[float, ...] | None, resample_uneven: bool = False):
    frames = series.frames
    description = series.as_dict()
    has_geometry = all(fr.ipp is not None and fr.iop is not None for fr in frames)
    if not has_geometry:
        return _stack_pixel_grid(series, path, spacing, description)

    iop = frames[0].iop
    row_cos, col_cos = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row_cos, col_cos)
    dist = np.array([float(fr.ipp @ normal) for fr in frames])
    order = np.argsort(dist, kind="stable")
    frames = [frames[i] for i in order]
    dist = dist[order]
    n = len(frames)

    # in-plane spacing: PixelSpacing is (row spacing, column spacing) = (along J, along I)
    pixel_spacing = frames[0].pixel_spacing
    if pixel_spacing is None:
        if spacing is None:
            raise GeometryError(
                f"{path}: series {series.key} has no PixelSpacing; pass the voxel spacing explicitly "
                "(spacing=(sx, sy[, sz]) / --spacing) instead of guessing 1.0 mm"
            )
        pixel_spacing = (float(spacing[1]), float(spacing[0]))
    elif frames[0].spacing_source == "ImagerPixelSpacing":
        warnings.warn(
            f"{path}: using ImagerPixelSpacing {pixel_spacing} (detector plane, not corrected for magnification)",
            MedvitWarning,
            stacklevel=3,
        )
    distinct = {fr.pixel_spacing for fr in frames}
    if len(distinct) > 1:
        raise GeometryError(f"{path}: series {series.key} mixes pixel spacings {sorted(distinct)}")

    if n > 1:
        steps = np.diff(dist)
        if np.any(steps < 1e-3):
            dup = int(np.sum(steps < 1e-3))
            raise GeometryError(
                f"{path}: series {series.key} has {dup} slice(s) at an already used position "
                "(several phases, echoes or duplicates in one series); split them before reading"
            )
        step = (dist[-1] - dist[0]) / (n - 1)
        median = float(np.median(steps))
        gaps = np.abs(steps - median) > GAP_TOL * median
        if np.any(gaps) and not resample_uneven:
            k = int(np.argmax(np.abs(steps - median)))
            raise GeometryError(
                f"{path}: series {series.key} has a {steps[k]:.4g} mm step between slices {k} and {k + 1} where "
                f"the median step is {median:.4g} mm (missing slices?); the volume would be misplaced: pass "
                "resample_uneven=True / --resample-uneven to resample it from the slices' true positions"
            )
        if np.any(gaps):
            return _resampled(series, frames, dist, median, row_cos, col_cos, normal, pixel_spacing, path,
                              description)  # fmt: skip
        if np.max(np.abs(steps - step)) > UNEVEN_TOL * step + 1e-3:
            warnings.warn(
                f"{path}: uneven slice spacing in series {series.key}: steps {_fmt(steps)} mm "
                f"(min {steps.min():.4g}, max {steps.max():.4g}); gaps or missing slices? "
                f"Using the mean {step:.4g} mm: the first and last slices are placed exactly, the others "
                "approximately",
                MedvitWarning,
                stacklevel=3,
            )
        span = frames[-1].ipp - frames[0].ipp
        tilt = np.degrees(np.arccos(np.clip(abs(span @ normal) / np.linalg.norm(span), 0, 1)))
        if tilt > TILT_TOL_DEG:
            warnings.warn(
                f"{path}: gantry tilt of {tilt:.2f} degrees in series {series.key}; the affine is sheared so "
                "every voxel keeps its exact world position (resample before models that assume "
                "orthogonal axes)",
                MedvitWarning,
                stacklevel=3,
            )
            slice_vec = span / (n - 1)
        else:
            slice_vec = normal * step
    else:
        thickness = _single_slice_spacing(frames[0], spacing)
        slice_vec = normal * thickness

    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_cos * pixel_spacing[1]
    affine_lps[:3, 1] = col_cos * pixel_spacing[0]
    affine_lps[:3, 2] = slice_vec
    affine_lps[:3, 3] = frames[0].ipp

    pixels = _frame_pixels(frames, path)  # [K, rows, cols(, S)]
    if pixels.ndim == 3:
        data = np.transpose(pixels, (2, 1, 0))[None]  # [1, I=cols, J=rows, K]
    else:
        data = np.transpose(pixels, (3, 2, 1, 0))  # [S, I, J, K]
    multiframe = frames[0].frame_index is not None
    description["num_slices"] = n
    return make_image(
        data,
        lps_to_ras(affine_lps),
        format="dicom-multiframe" if multiframe else "dicom",
        source=str(path),
        modality=series.modality or None,
        description=description,
        dicom_sources=[fr.source for fr in frames],
        dicom_frames=[fr.frame_index for fr in frames],
    )


def _resampled(series, frames, dist, step, row_cos, col_cos, normal, pixel_spacing, path, description):
    """A series with gaps on a uniform grid at ``step`` from its first to its last slice, each new slice
    interpolated linearly between the two true slices around it (none invented beyond the ends)."""
    span = frames[-1].ipp - frames[0].ipp
    tilt = np.degrees(np.arccos(np.clip(abs(span @ normal) / np.linalg.norm(span), 0, 1)))
    if tilt > TILT_TOL_DEG:
        raise GeometryError(f"{path}: series {series.key} has gaps and a {tilt:.2f} degree gantry tilt; "
                            "medvit does not resample tilted series")  # fmt: skip
    pixels = _frame_pixels(frames, path).astype(np.float32)  # [K, rows, cols(, S)]
    m = int(round((dist[-1] - dist[0]) / step)) + 1
    targets = dist[0] + np.arange(m) * (dist[-1] - dist[0]) / (m - 1)
    hi = np.clip(np.searchsorted(dist, targets, side="left"), 1, len(dist) - 1)
    lo = hi - 1
    w = ((targets - dist[lo]) / (dist[hi] - dist[lo])).astype(np.float32)
    shape = (-1,) + (1,) * (pixels.ndim - 1)
    volume = pixels[lo] * (1 - w).reshape(shape) + pixels[hi] * w.reshape(shape)
    data = np.transpose(volume, (2, 1, 0))[None] if volume.ndim == 3 else np.transpose(volume, (3, 2, 1, 0))
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_cos * pixel_spacing[1]
    affine_lps[:3, 1] = col_cos * pixel_spacing[0]
    affine_lps[:3, 2] = normal * (dist[-1] - dist[0]) / (m - 1)
    affine_lps[:3, 3] = frames[0].ipp
    steps = np.diff(dist)
    description["num_slices"] = m
    description["resampled"] = {
        "from_slices": len(frames),
        "to_slices": m,
        "step_mm": round(float((dist[-1] - dist[0]) / (m - 1)), 6),
        "largest_gap_mm": round(float(steps.max()), 6),
    }
    warnings.warn(
        f"{path}: series {series.key} resampled from {len(frames)} unevenly placed slices (largest step "
        f"{steps.max():.4g} mm) onto {m} slices {step:.4g} mm apart",
        MedvitWarning,
        stacklevel=4,
    )
    return make_image(
        data,
        lps_to_ras(affine_lps),
        format="dicom",
        source=str(path),
        modality=series.modality or None,
        description=description,
    )


def _single_slice_spacing(frame: Frame, spacing: tuple[float, ...] | None) -> float:
    if spacing is not None and len(spacing) == 3:
        return float(spacing[2])
    ds = frame.dataset
    for key in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            value = float(ds.get(key) or 0)
        except (TypeError, ValueError):
            value = 0
        if value > 0:
            return value
    return 1.0  # one slice: the thickness only sizes the voxel, it moves nothing in the plane


def _stack_pixel_grid(series: Series, path: Path, spacing, description: dict):
    """Images without patient geometry: ``[C, H, W]`` (or ``[C, H, W, F]`` for cine) in pixel units."""
    frames = series.frames
    pixels = _frame_pixels(frames, path)  # [F, rows, cols(, S)]
    if pixels.ndim == 3:
        pixels = pixels[..., None]
    data = np.transpose(pixels, (3, 1, 2, 0))  # [S, H, W, F]
    if data.shape[-1] == 1:
        data = data[..., 0]
    ps = frames[0].pixel_spacing or (tuple(float(v) for v in spacing[:2]) if spacing else None)
    affine = pad_affine_2d(ps if ps else (1.0, 1.0))
    description["num_slices"] = len(frames)
    return make_image(
        data,
        affine,
        format="dicom",
        source=str(path),
        modality=series.modality or None,
        description=description,
        spacing_known=ps is not None,
        dicom_sources=[fr.source for fr in frames],
        dicom_frames=[fr.frame_index for fr in frames],
    )


def _fmt(values: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(f"{v:.4g}" for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"
