"""Find DICOM images in a file, folder (nested) or zip, and group them into series of frames.

A *frame* is one 2D plane with its own geometry: a single-frame file, or one frame of a multi-frame
file (enhanced multi-frame with functional groups, or legacy multi-frame with GridFrameOffsetVector).
Frames are grouped by SeriesInstanceUID, then by orientation and size when one UID mixes them; such a
sub-series is named ``UID#k``. Only non-identifying attributes are kept for display.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvit.errors import InputError, one_line
from medvit.io.limits import BUDGET_ENV, check_declared, image_budget

ZIP_SEP = "::"
_NOT_IMAGES = {
    "1.2.840.10008.1.3.10",  # Media Storage Directory (DICOMDIR)
}


@dataclass
class Frame:
    """One plane of a series: where its pixels come from and where it sits in LPS world space."""

    source: str
    dataset: Any  # pydicom Dataset (pixel data deferred for files on disk)
    frame_index: int | None  # None: single-frame file
    ipp: np.ndarray | None  # ImagePositionPatient (LPS, mm)
    iop: np.ndarray | None  # ImageOrientationPatient (row cosine, column cosine)
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing) as DICOM orders it
    spacing_source: str | None
    slope: float = 1.0
    intercept: float = 0.0


@dataclass
class Series:
    """Frames that stack into one image, with the non-identifying facts shown to the user.

    ``description`` (SeriesDescription) is free text, which can hold names and IDs (the DICOM Basic
    Application Level Confidentiality Profile removes it): it never reaches :meth:`summary`, :meth:`as_dict`,
    metadata, manifests or errors; only ``medvit info --show-descriptions`` prints it, on the terminal.
    """

    key: str
    uid: str
    description: str
    modality: str
    rows: int
    cols: int
    frames: list[Frame] = field(default_factory=list)

    def summary(self) -> str:
        return f"{self.key} {self.modality or '?'} {len(self.frames)} slice(s) {self.rows}x{self.cols}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "series_uid": self.key,
            "modality": self.modality,
            "num_slices": len(self.frames),
            "rows": self.rows,
            "columns": self.cols,
        }


@dataclass
class ScanReport:
    """What a scan found besides images: used to explain an empty result."""

    files: int = 0
    not_dicom: int = 0
    no_pixels: int = 0
    unreadable: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- reading


def _dcmread(fp, *, force: bool = False):
    import pydicom  # lazy: keeps medvit cards list free of pydicom

    return pydicom.dcmread(fp, defer_size="256 KB", force=force)


def read_dataset(path: Path, *, data: bytes | None = None, strict: bool = False):
    """Read one DICOM dataset; ``None`` when the content is not DICOM.

    Files without the 128-byte preamble are accepted when they parse into a dataset with an SOP class.
    """
    from pydicom.errors import InvalidDicomError  # lazy: keeps medvit cards list free of pydicom

    def open_():
        return io.BytesIO(data) if data is not None else str(path)

    try:
        return _dcmread(open_())
    except InvalidDicomError:
        pass
    except Exception as exc:
        if strict:
            raise InputError(f"{path}: corrupt or truncated DICOM ({one_line(exc)})") from None
        return None
    try:
        ds = _dcmread(open_(), force=True)
    except Exception:
        return None
    return ds if "SOPClassUID" in ds and ("Rows" in ds or "PixelData" in ds) else None


def has_pixels(ds) -> bool:
    return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def iter_sources(path: Path):
    """Yield ``(source name, path, bytes or None)`` for every candidate file under ``path``."""
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith("."):
                    p = Path(root) / name
                    if p.is_file():  # dangling links, pipes and devices are skipped, never opened
                        yield str(p), p, None
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            budget, total = image_budget(), 0
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                base = os.path.basename(info.filename)
                if info.is_dir() or not base or base.startswith(".") or "__MACOSX" in info.filename:
                    continue
                total += info.file_size
                if total > budget:  # the sizes the archive declares, before inflating anything
                    raise InputError(
                        f"{path}: members expand to more than the {budget / 2**30:.3g} GiB image budget "
                        f"({BUDGET_ENV}); refusing to inflate them"
                    )
                yield f"{path}{ZIP_SEP}{info.filename}", path, _read_member(zf, info, path)
    else:
        yield str(path), path, None


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> bytes:
    """A member's bytes, inflated no further than the size it declares (a lying header cannot grow it)."""
    where = f"{path}{ZIP_SEP}{info.filename}"
    try:
        with zf.open(info) as fh:
            data = fh.read(info.file_size + 1)
    except NotImplementedError as exc:  # a RuntimeError: before it
        raise InputError(f"{where}: unsupported zip compression ({one_line(exc, 120)})") from None
    except RuntimeError as exc:  # encrypted
        raise InputError(f"{where}: cannot read an encrypted zip member ({one_line(exc, 120)})") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise InputError(f"{where}: corrupt zip member ({one_line(exc, 120)})") from None
    if len(data) > info.file_size:
        raise InputError(f"{where}: inflates beyond the {info.file_size} bytes its header declares")
    return data


def load_source_dataset(source: str):
    """Re-open a DICOM source (a path, or ``archive.zip::member``) recorded in an image's meta."""
    if ZIP_SEP in source:
        archive, member = source.split(ZIP_SEP, 1)
        with zipfile.ZipFile(archive) as zf:
            return read_dataset(
                Path(archive), data=_read_member(zf, zf.getinfo(member), Path(archive)), strict=True
            )
    return read_dataset(Path(source), strict=True)


# ------------------------------------------------------------------------------------------- geometry


def _floats(value, n: int) -> np.ndarray | None:
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def _first(ds, *path: str):
    """Follow ``Sequence[0].Sequence[0].Keyword`` through a dataset; ``None`` when absent."""
    node = ds
    for key in path:
        if node is None or key not in node:
            return None
        node = node[key].value
        if key.endswith("Sequence"):
            node = node[0] if node is not None and len(node) else None
    return node


def _pixel_spacing(*candidates) -> tuple[tuple[float, float] | None, str | None]:
    for value, label in candidates:
        if value is not None:
            arr = _floats(value, 2)
            if arr is not None and np.all(arr > 0):
                return (float(arr[0]), float(arr[1])), label
    return None, None


def _rescale(*nodes) -> tuple[float, float]:
    for node in nodes:
        if node is not None and ("RescaleSlope" in node or "RescaleIntercept" in node):
            slope = float(node.get("RescaleSlope", 1.0) or 1.0)
            intercept = float(node.get("RescaleIntercept", 0.0) or 0.0)
            return slope, intercept
    return 1.0, 0.0


def _finite_rescale(source: str, slope: float, intercept: float) -> tuple[float, float]:
    if not (np.isfinite(slope) and np.isfinite(intercept)):
        raise InputError(f"{source}: RescaleSlope {slope} / RescaleIntercept {intercept} is not a finite number")
    return slope, intercept


def frames_of(source: str, ds) -> list[Frame]:
    """All frames of one dataset with their geometry."""
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if n_frames < 1:
        raise InputError(f"{source}: NumberOfFrames is {n_frames}")
    if rows and cols:  # before one Frame is made: a header may claim billions of frames
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        check_declared(source, (n_frames, rows, cols, samples), 4)  # rescaled to float32 at most
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    if "PerFrameFunctionalGroupsSequence" in ds:  # enhanced multi-frame
        per_frame = ds.PerFrameFunctionalGroupsSequence
        frames = []
        for i in range(n_frames):
            fg = per_frame[i] if i < len(per_frame) else None
            ipp = _first(fg, "PlanePositionSequence", "ImagePositionPatient")
            iop = _first(fg, "PlaneOrientationSequence", "ImageOrientationPatient")
            if iop is None:
                iop = _first(shared, "PlaneOrientationSequence", "ImageOrientationPatient")
            ps, label = _pixel_spacing(
                (_first(fg, "PixelMeasuresSequence", "PixelSpacing"), "PixelMeasuresSequence"),
                (_first(shared, "PixelMeasuresSequence", "PixelSpacing"), "PixelMeasuresSequence"),
                (ds.get("PixelSpacing"), "PixelSpacing"),
            )
            slope, intercept = _finite_rescale(source, *_rescale(
                _first(fg, "PixelValueTransformationSequence"),
                _first(shared, "PixelValueTransformationSequence"),
                ds,
            ))  # fmt: skip
            frames.append(
                Frame(source, ds, i, _floats(ipp, 3) if ipp is not None else None,
                      _floats(iop, 6) if iop is not None else None, ps, label, slope, intercept)
            )  # fmt: skip
        return frames

    ipp = _floats(ds.get("ImagePositionPatient"), 3) if "ImagePositionPatient" in ds else None
    iop = _floats(ds.get("ImageOrientationPatient"), 6) if "ImageOrientationPatient" in ds else None
    ps, label = _pixel_spacing(
        (ds.get("PixelSpacing"), "PixelSpacing"), (ds.get("ImagerPixelSpacing"), "ImagerPixelSpacing")
    )
    slope, intercept = _finite_rescale(source, *_rescale(ds))
    if str(ds.get("Modality", "")) == "RTDOSE" and ds.get("DoseGridScaling") is not None:
        slope = float(ds.DoseGridScaling)  # RT Dose stores Gy per stored unit here, not in RescaleSlope
    if n_frames == 1:
        return [Frame(source, ds, None, ipp, iop, ps, label, slope, intercept)]
    offsets = ds.get("GridFrameOffsetVector")
    if ipp is not None and iop is not None and offsets is not None and len(offsets) == n_frames:
        normal = np.cross(iop[:3], iop[3:])
        return [
            Frame(source, ds, i, ipp + float(o) * normal, iop, ps, label, slope, intercept)
            for i, o in enumerate(offsets)
        ]
    # multi-frame without per-frame geometry (cine, ultrasound): frames stack in file order
    return [Frame(source, ds, i, None, None, ps, label, slope, intercept) for i in range(n_frames)]


# ------------------------------------------------------------------------------------------- grouping


def scan(path: Path) -> tuple[list[Series], ScanReport]:
    """Scan a file, folder or zip and return its image series in a stable order."""
    report = ScanReport()
    groups: dict[tuple, list[Frame]] = defaultdict(list)
    info: dict[str, tuple[str, str]] = {}
    for source, file_path, data in iter_sources(path):
        report.files += 1
        if data is None and file_path.stat().st_size == 0:
            report.not_dicom += 1
            continue
        ds = read_dataset(file_path, data=data)
        if ds is None:
            report.not_dicom += 1
            continue
        file_meta = getattr(ds, "file_meta", None)
        sop = str(ds.get("SOPClassUID", "") or (file_meta or {}).get("MediaStorageSOPClassUID", ""))
        if sop in _NOT_IMAGES or not has_pixels(ds):
            report.no_pixels += 1
            continue
        try:
            frames = frames_of(source, ds)
        except Exception as exc:  # malformed geometry attributes
            report.unreadable.append(f"{source} ({one_line(exc)})")
            continue
        uid = str(ds.get("SeriesInstanceUID", "")) or f"no-series-uid:{os.path.basename(source)}"
        info.setdefault(uid, (str(ds.get("SeriesDescription", "") or ""), str(ds.get("Modality", "") or "")))
        rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
        for fr in frames:
            if fr.iop is None or fr.ipp is None:
                # no patient geometry: each file is an image of its own
                key = (uid, "file", source, rows, cols)
            else:
                key = (uid, tuple(np.round(fr.iop, 3)), rows, cols)
            groups[key].append(fr)

    by_uid: dict[str, list[tuple]] = defaultdict(list)
    for key in groups:
        by_uid[key[0]].append(key)
    series: list[Series] = []
    for uid in sorted(by_uid):
        keys = by_uid[uid]
        desc, modality = info[uid]
        for k, key in enumerate(keys, start=1):
            name = uid if len(keys) == 1 else f"{uid}#{k}"
            rows, cols = key[-2], key[-1]
            series.append(Series(name, uid, desc, modality, rows, cols, groups[key]))
    return series, report


def select_series(series: list[Series], path: Path, wanted: str | None) -> Series:
    """Pick the series to read: the only one, or the one ``wanted`` names (UID or unique prefix)."""
    listing = "; ".join(s.summary() for s in series)
    if wanted is None:
        if len(series) == 1:
            return series[0]
        mixed = {s.uid for s in series if s.key != s.uid}
        if len(mixed) == 1 and len({s.uid for s in series}) == 1:
            raise InputError(
                f"{path}: series {next(iter(mixed))} mixes {len(series)} orientations or image sizes; "
                f"pick one with series=/--series: {listing}"
            )
        raise InputError(f"{path}: holds {len(series)} series; pick one with series=/--series: {listing}")
    exact = [s for s in series if s.key == wanted]
    if exact:
        return exact[0]
    matches = [s for s in series if s.key.startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise InputError(f"{path}: no series matches {wanted!r}; available: {listing}")
    if len({s.uid for s in matches}) == 1 and len(matches) > 1:
        raise InputError(
            f"{path}: series {matches[0].uid} mixes {len(matches)} orientations or image sizes; "
            f"pick one of: {'; '.join(s.summary() for s in matches)}"
        )
    raise InputError(f"{path}: {wanted!r} matches {len(matches)} series; give more of the UID: {listing}")
