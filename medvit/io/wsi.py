"""Whole-slide images and plain tiles opened for reading regions at a physical resolution, and tissue masks.

A :class:`Slide` is a whole-slide image read through OpenSlide (``.svs``, ``.ndpi``, ``.mrxs``, tiled
``.tif``, ...) or a plain tile (PNG, JPEG, BMP, or a TIFF OpenSlide cannot open) decoded through PIL and held
in memory. :meth:`Slide.read` returns the RGB pixels of a level-0 box resampled to a requested µm/px, reading
from the pyramid level nearest below it; whatever lies outside the slide (or is transparent in it) is white.

Resolution is never invented: it comes from the file (OpenSlide's ``openslide.mpp-x``/``openslide.mpp-y``; for
a generic TIFF without them its XResolution in a centimetre or inch ResolutionUnit; a PNG's pHYs in metres; a
JPEG's JFIF or EXIF density or a TIFF's resolution tags read through PIL, only when their unit is a real one),
or from the user (``--mpp``, which overrides the file's). Values outside :data:`MPP_RANGE` are not a
microscope's (72 dpi is 353 µm/px: a default that image software writes) and count as absent.

DICOM whole-slide images are not supported: ``.dcm`` is not a slide suffix, and a file OpenSlide recognises
as DICOM is refused with a one-line error (OpenSlide 4 reads them only as a whole series of files).

:func:`detect_tissue` finds tissue on a thumbnail (Otsu on saturation); :func:`read_tissue_mask` reads a
user's mask instead. OpenSlide, and SciPy for tissue detection, are imported on first use so that
``import medvit.io`` stays light.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medvit.errors import InputError, MedvitError, one_line
from medvit.io.image2d import IMAGE2D_SUFFIXES, open_pil
from medvit.io.limits import BUDGET_ENV, check_declared, image_budget

SLIDE_SUFFIXES: tuple[str, ...] = (
    ".svs", ".ndpi", ".mrxs", ".scn", ".svslide", ".bif", ".vms", ".vmu", ".tif", ".tiff",
)  # fmt: skip
TILE_SUFFIXES: tuple[str, ...] = IMAGE2D_SUFFIXES  # .png .jpg .jpeg .tif .tiff .bmp

MPP_RANGE = (0.01, 50.0)  # µm/px a microscope's image may have; outside it a file's resolution is ignored
MPP_ANISOTROPY = 0.05  # mpp-x and mpp-y may differ by this fraction
MASK_ASPECT_TOLERANCE = 0.02  # a tissue mask's aspect ratio against the slide's
LEVEL_TOLERANCE = 1e-3  # a level whose downsample exceeds the wanted one by this much still counts as below
MIN_SATURATION = 0.05  # tissue is never paler than this (HSV S), whatever Otsu says on a blank slide
NEAR_BLACK = 0.1  # HSV V below this is not tissue (scanner borders, pen)
NEAR_WHITE = 0.92  # every channel above this (of 1) is not tissue (glass)
SMOOTH_UM = 16.0  # saturation is averaged over this (two nuclei) before Otsu, when the thumbnail resolves it
_STRIP_BYTES = 64 << 20  # level pixels (RGBA) read at once when a read shrinks a large region

_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, KeyError, IndexError, TypeError, ZeroDivisionError)


def is_slide_name(path: str | os.PathLike) -> bool:
    """Whether ``path`` has a whole-slide suffix (:data:`SLIDE_SUFFIXES`, case-insensitive)."""
    return Path(path).suffix.lower() in SLIDE_SUFFIXES


def _check_mpp(mpp: float, what: str = "--mpp") -> float:
    try:
        value = float(mpp)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{what} {mpp}: must be a positive number of micrometres per pixel")
    return value


def _check_file(path: Path) -> None:
    """A readable regular file, checked without opening it (a FIFO or device is never read)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({one_line(exc)})") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied")


def _on_white(rgba: np.ndarray) -> np.ndarray:
    """RGB uint8 of straight (not premultiplied) RGBA composited on white."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3:4]
    if alpha.size == 0 or alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint32)
    return ((rgb.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def _resample(region: np.ndarray, box: tuple[float, float, float, float], width: int, height: int) -> np.ndarray:
    """``box`` (x0, y0, x1, y1, fractional) of ``region`` resized to ``width x height``: area averaging when
    shrinking, bilinear when enlarging; an exact crop when the box is whole pixels of the output size."""
    x0, y0, x1, y1 = box
    whole = all(abs(v - round(v)) < 1e-6 for v in box)
    if whole and round(x1 - x0) == width and round(y1 - y0) == height:
        return np.ascontiguousarray(region[round(y0) : round(y1), round(x0) : round(x1)])
    shrink = width <= x1 - x0 + 1e-6 and height <= y1 - y0 + 1e-6
    resample = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.array(Image.fromarray(region).resize((width, height), resample, box=box))  # writable


class Slide:
    """One slide or tile opened for reading regions. A context manager (:meth:`close` on exit).

    Open one with :func:`open_slide`. :meth:`read` may be called from several threads at once.

    Attributes:
        path: The file.
        dimensions: Level-0 (width, height) in pixels.
        mpp: Level-0 micrometres per pixel.
        mpp_source: ``"slide"`` (from the file's metadata) or ``"option"`` (the ``--mpp`` given).
        level_dimensions: (width, height) of each pyramid level, level 0 first.
        level_downsamples: Level-0 pixels per pixel of each level.
        backend: ``"openslide"``, or ``"image"`` (a plain tile held in memory).
        vendor: OpenSlide's vendor (``"generic-tiff"``, ``"aperio"``, ...) or ``None``.
    """

    def __init__(
        self,
        path: Path,
        *,
        backend: str,
        mpp: float,
        mpp_source: str,
        level_dimensions: tuple[tuple[int, int], ...],
        level_downsamples: tuple[float, ...],
        vendor: str | None = None,
        handle=None,
        pixels: np.ndarray | None = None,
        errors: tuple[type[BaseException], ...] = (),
    ):
        self.path = path
        self.backend = backend
        self.mpp = mpp
        self.mpp_source = mpp_source
        self.level_dimensions = level_dimensions
        self.level_downsamples = level_downsamples
        self.dimensions = level_dimensions[0]
        self.vendor = vendor
        self._handle = handle  # openslide.OpenSlide
        self._pixels = pixels  # RGB uint8 [H, W, 3] of a plain tile
        self._errors = errors  # the OpenSlide exceptions a read may raise
        self._closed = False

    def __repr__(self) -> str:
        width, height = self.dimensions
        return (
            f"Slide({str(self.path)!r}, {width}x{height}, {self.mpp:g} µm/px from {self.mpp_source}, "
            f"{len(self.level_dimensions)} levels, {self.backend})"
        )

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the OpenSlide handle or the tile's pixels (reads afterwards are an error)."""
        self._closed = True
        handle, self._handle, self._pixels = self._handle, None, None
        if handle is not None:
            handle.close()

    def best_level(self, downsample: float) -> int:
        """The level with the largest downsample not above ``downsample`` (+ :data:`LEVEL_TOLERANCE`); 0 if none.

        Args:
            downsample: Level-0 pixels per output pixel wanted.
        """
        best, best_ds = 0, -math.inf
        for level, ds in enumerate(self.level_downsamples):
            if best_ds < ds <= downsample + LEVEL_TOLERANCE:
                best, best_ds = level, ds
        return best

    def read(self, x: int, y: int, w: int, h: int, *, mpp: float) -> np.ndarray:
        """The level-0 region ``(x, y, w, h)`` resampled to ``mpp`` µm/px.

        Reads from :meth:`best_level` of ``mpp / self.mpp`` and resizes the rest of the way (area averaging when
        shrinking, bilinear when enlarging). Parts outside the slide are white; transparent pixels are
        composited on white.

        Args:
            x: Level-0 column of the region's left edge (may be negative).
            y: Level-0 row of its top edge (may be negative).
            w: Level-0 width (at least 1).
            h: Level-0 height (at least 1).
            mpp: Micrometres per output pixel.

        Returns:
            RGB uint8 ``[round(h * self.mpp / mpp), round(w * self.mpp / mpp), 3]`` (each at least 1).

        Raises:
            InputError: A closed slide, an output above the image budget, a read OpenSlide fails, or an mpp
                that is not a positive number.
            ValueError: A width or height below 1.
        """
        mpp = _check_mpp(mpp, f"{self.path}: read at mpp")
        x, y, w, h = int(x), int(y), int(w), int(h)
        if w < 1 or h < 1:
            raise ValueError(f"{self.path}: region {w}x{h}: width and height must be at least 1")
        if self._closed:
            raise InputError(f"{self.path}: slide is closed")
        out_w = max(1, round(w * self.mpp / mpp))
        out_h = max(1, round(h * self.mpp / mpp))
        if out_w * out_h * 3 > image_budget():
            raise InputError(
                f"{self.path}: a {out_w} x {out_h} read at {mpp:g} µm/px is above the image budget "
                f"(set {BUDGET_ENV} to allow more)"
            )
        level = self.best_level(mpp / self.mpp)
        ds = self.level_downsamples[level]
        bx0, by0, bx1, by1 = x / ds, y / ds, (x + w) / ds, (y + h) / ds  # the region in level pixels
        step = (by1 - by0) / out_h  # level rows per output row
        shrink = out_w <= bx1 - bx0 + 1e-6 and out_h <= by1 - by0 + 1e-6
        # bilinear looks up to a pixel (a scale when shrinking one axis) beyond each output pixel: a margin
        # read from the slide keeps a region's edges what they are inside a larger read
        margin = 0 if shrink else math.ceil(max(1.0, (bx1 - bx0) / out_w, step)) + 1
        rows = out_h
        if shrink:  # area averaging looks only inside each output pixel: strips of output rows are exact
            rows = max(1, min(out_h, int(_STRIP_BYTES // ((bx1 - bx0 + 2) * 4 * (step + 1)))))
        if rows == out_h:
            return self._resampled(level, (bx0, by0, bx1, by1), out_w, out_h, margin)
        out = np.empty((out_h, out_w, 3), np.uint8)
        for r0 in range(0, out_h, rows):
            r1 = min(out_h, r0 + rows)
            sy1 = by1 if r1 == out_h else by0 + r1 * step
            out[r0:r1] = self._resampled(level, (bx0, by0 + r0 * step, bx1, sy1), out_w, r1 - r0, margin)
        return out

    def _resampled(
        self, level: int, box: tuple[float, float, float, float], width: int, height: int, margin: int
    ) -> np.ndarray:
        """``box`` in the pixels of ``level`` resized to ``width x height``, reading ``margin`` pixels around."""
        bx0, by0, bx1, by1 = box
        cx0, cy0 = math.floor(bx0) - margin, math.floor(by0) - margin
        lw, lh = math.ceil(bx1) + margin - cx0, math.ceil(by1) + margin - cy0
        region = self._read_level(level, cx0, cy0, lw, lh)
        return _resample(region, (bx0 - cx0, by0 - cy0, bx1 - cx0, by1 - cy0), width, height)

    def _read_level(self, level: int, col: int, row: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 ``[h, w, 3]`` of ``level`` pixels ``[row, row + h) x [col, col + w)``, white outside."""
        handle, pixels = self._handle, self._pixels
        if handle is None and pixels is None:
            raise InputError(f"{self.path}: slide is closed")
        if pixels is not None:
            height, width = pixels.shape[:2]
            out = np.full((h, w, 3), 255, np.uint8)
            r0, r1 = max(row, 0), min(row + h, height)
            c0, c1 = max(col, 0), min(col + w, width)
            if r0 < r1 and c0 < c1:
                out[r0 - row : r1 - row, c0 - col : c1 - col] = pixels[r0:r1, c0:c1]
            return out
        ds = self.level_downsamples[level]
        location = (round(col * ds), round(row * ds))  # OpenSlide takes the top left in level-0 pixels
        try:
            rgba = np.asarray(handle.read_region(location, level, (w, h)))
        except self._errors as exc:
            raise InputError(f"{self.path}: cannot read level {level} at {location} ({one_line(exc)})") from None
        return _on_white(rgba)

    def thumbnail(self, max_size: int = 2048) -> tuple[np.ndarray, float]:
        """The whole slide, its longer side at most ``max_size`` pixels.

        Args:
            max_size: Longest side of the thumbnail in pixels.

        Returns:
            RGB uint8 ``[h, w, 3]``, and its downsample (level-0 pixels per thumbnail pixel, the same along x
            and y to within rounding).

        Raises:
            InputError: As :meth:`read`.
            ValueError: ``max_size`` below 1.
        """
        if max_size < 1:
            raise ValueError(f"thumbnail size {max_size}: must be at least 1")
        width, height = self.dimensions
        downsample = max(width, height) / max_size if max(width, height) > max_size else 1.0
        return self.read(0, 0, width, height, mpp=self.mpp * downsample), downsample


def _resolution(path: Path, found: tuple[float, float] | None, mpp: float | None) -> tuple[float, str]:
    """The slide's mpp and its source, from the file's ``(mpp-x, mpp-y)`` and the user's ``--mpp``."""
    if mpp is not None:
        return mpp, "option"
    missing = f"{path}: no resolution (µm/px) in the slide's metadata; give --mpp"
    if found is None or not all(math.isfinite(v) and v > 0 for v in found):
        raise InputError(missing)
    mpp_x, mpp_y = found
    low, high = MPP_RANGE
    if not (low <= mpp_x <= high and low <= mpp_y <= high):
        raise InputError(
            f"{path}: no resolution (µm/px) in the slide's metadata (it declares {mpp_x:.4g} x {mpp_y:.4g} µm/px, "
            "not a microscope's); give --mpp"
        )
    if abs(mpp_x - mpp_y) > MPP_ANISOTROPY * min(mpp_x, mpp_y):
        raise InputError(
            f"{path}: pixels are not square (mpp-x {mpp_x:g}, mpp-y {mpp_y:g} µm/px, more than "
            f"{MPP_ANISOTROPY:.0%} apart); resample the slide or give --mpp"
        )
    return (mpp_x + mpp_y) / 2, "slide"


def _per_unit(x: float, y: float, unit: str | int | None) -> tuple[float, float] | None:
    """µm/px of a resolution in pixels per ``unit`` (inch/centimetre, by name or TIFF code 2/3)."""
    um = {"inch": 25400.0, 2: 25400.0, "centimeter": 10000.0, "centimetre": 10000.0, 3: 10000.0}.get(unit)
    try:
        x, y = float(x), float(y)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if um is None or not (x > 0 and y > 0 and math.isfinite(x) and math.isfinite(y)):
        return None
    return um / x, um / y


def _openslide_resolution(properties) -> tuple[float, float] | None:
    """``(mpp-x, mpp-y)`` of an OpenSlide slide: its mpp properties, else a TIFF's resolution tags."""
    try:
        return float(properties["openslide.mpp-x"]), float(properties["openslide.mpp-y"])
    except (KeyError, ValueError):
        pass
    unit = str(properties.get("tiff.ResolutionUnit", "")).lower()
    return _per_unit(properties.get("tiff.XResolution"), properties.get("tiff.YResolution"), unit)


def _pil_resolution(img: Image.Image) -> tuple[float, float] | None:
    """``(mpp-x, mpp-y)`` of a plain image, from a real unit only (PIL's own ``dpi`` falls back to 72)."""
    fmt = img.format
    if fmt == "PNG":  # PIL sets dpi only for a pHYs in metres
        dpi = img.info.get("dpi")
        return _per_unit(dpi[0], dpi[1], "inch") if dpi else None
    if fmt == "TIFF":
        tags = img.tag_v2
        return _per_unit(tags.get(282), tags.get(283), tags.get(296))
    if fmt == "BMP":  # pixels per metre, 0 when unknown
        dpi = img.info.get("dpi")
        return _per_unit(dpi[0], dpi[1], "inch") if dpi else None
    if fmt in ("JPEG", "MPO"):
        unit, density = img.info.get("jfif_unit"), img.info.get("jfif_density")
        if unit in (1, 2) and density:
            return _per_unit(density[0], density[1], unit + 1)  # JFIF 1 inch, 2 cm
        try:
            exif = img.getexif()
            return _per_unit(exif.get(282), exif.get(283), exif.get(296))
        except _PIL_ERRORS:
            return None
    return None


_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _pil_rgb(path: Path, img: Image.Image) -> np.ndarray:
    """RGB uint8 of a PIL image: 16-bit grey scaled to 8 bits, alpha composited on white."""
    if img.mode in _16BIT:
        grey = (np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode in ("I", "F"):
        raise InputError(f"{path}: 32-bit ({img.mode}) pixels; a slide or tile needs 8-bit RGB or grey")
    alpha = "A" in img.getbands() or "transparency" in img.info
    data = np.asarray(img.convert("RGBA" if alpha else "RGB"))
    return _on_white(data) if alpha else data


def _image_slide(path: Path, mpp: float | None, openslide_reason: str | None) -> Slide:
    """A plain tile decoded through PIL into memory (its declared size checked against the budget first)."""

    def refuse(reason: str) -> InputError:
        if openslide_reason:
            reason = f"OpenSlide: {openslide_reason}; PIL: {reason}"
        return InputError(f"{path}: not a slide OpenSlide or PIL can read ({reason})")

    try:
        with open_pil(path) as img:
            width, height = img.size
            check_declared(path, (height, width, 4), 1)  # PIL holds RGB(A) at 4 bytes a pixel
            found = _pil_resolution(img)
            slide_mpp, source = _resolution(path, found, mpp)
            pixels = _pil_rgb(path, img)
    except MedvitError:
        raise
    except UnidentifiedImageError:
        raise refuse("unrecognised content") from None
    except Image.DecompressionBombError as exc:
        raise refuse(f"{one_line(exc)}; tile it into a pyramidal TIFF") from None
    except _PIL_ERRORS as exc:
        raise refuse(f"truncated or corrupt: {one_line(exc)}") from None
    return Slide(
        path,
        backend="image",
        mpp=slide_mpp,
        mpp_source=source,
        level_dimensions=((width, height),),
        level_downsamples=(1.0,),
        pixels=pixels,
    )


def open_slide(path: str | os.PathLike, *, mpp: float | None = None) -> Slide:
    """Open a whole-slide image through OpenSlide, or a plain tile through PIL.

    OpenSlide is tried on every name but PNG/JPEG/BMP; a file it does not recognise (a stripped TIFF, say) goes
    to PIL, which decodes it into memory after checking its declared size against the image budget
    (:mod:`medvit.io.limits`).

    Args:
        path: The slide or tile file.
        mpp: Level-0 micrometres per pixel; overrides the file's resolution (``mpp_source`` ``"option"``).

    Returns:
        The open :class:`Slide` (close it, or use it as a context manager).

    Raises:
        InputError: A missing or non-regular file, content neither OpenSlide nor PIL reads, a DICOM
            whole-slide image, no resolution (or mpp-x and mpp-y more than 5 % apart) without ``mpp``, a
            plain tile above the image budget, or ``mpp`` that is not a positive number. One line, starting
            with the file (or ``--mpp``).
    """
    if mpp is not None:
        mpp = _check_mpp(mpp)
    path = Path(path)
    _check_file(path)
    suffix = path.suffix.lower()
    reason = None
    if suffix in SLIDE_SUFFIXES or suffix not in TILE_SUFFIXES:
        import openslide  # lazy: loads the OpenSlide library (import medvit.io stays light)

        errors = (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError)
        try:
            vendor = openslide.OpenSlide.detect_format(str(path))
        except errors as exc:
            vendor, reason = None, one_line(exc)
        if vendor == "dicom":
            raise InputError(f"{path}: DICOM whole-slide images are not supported; convert it to a pyramidal TIFF")
        if vendor is not None:
            try:
                handle = openslide.OpenSlide(str(path))
            except (*errors, OSError) as exc:
                raise InputError(f"{path}: not a slide OpenSlide or PIL can read ({one_line(exc)})") from None
            try:
                slide_mpp, source = _resolution(path, _openslide_resolution(handle.properties), mpp)
                return Slide(
                    path,
                    backend="openslide",
                    mpp=slide_mpp,
                    mpp_source=source,
                    level_dimensions=tuple(tuple(map(int, d)) for d in handle.level_dimensions),
                    level_downsamples=tuple(float(d) for d in handle.level_downsamples),
                    vendor=handle.properties.get("openslide.vendor", vendor),
                    handle=handle,
                    errors=errors,
                )
            except BaseException:
                handle.close()
                raise
        reason = reason or "unrecognised format"
    return _image_slide(path, mpp, reason)


@dataclass
class TissueMask:
    """Where the tissue is, on a grid coarser than level 0.

    Attributes:
        mask: bool ``[h, w]``, ``True`` on tissue.
        downsample: Level-0 pixels per mask pixel.
        source: ``"otsu"``, or the name of the tissue-mask file.
    """

    mask: np.ndarray
    downsample: float
    source: str

    def area_mm2(self, mpp: float) -> float:
        """Tissue area in mm^2 for a level-0 resolution of ``mpp`` µm/px."""
        return float(self.mask.sum()) * (self.downsample * mpp / 1000) ** 2

    def fraction(self, x: int, y: int, w: int, h: int) -> float:
        """Fraction of the level-0 box ``(x, y, w, h)`` that is tissue (mask pixels weighted by their overlap;
        outside the mask counts as no tissue).

        Raises:
            ValueError: A width or height below 1.
        """
        if w < 1 or h < 1:
            raise ValueError(f"box {w}x{h}: width and height must be at least 1")
        rows, wy = _overlap(y / self.downsample, (y + h) / self.downsample, self.mask.shape[0])
        cols, wx = _overlap(x / self.downsample, (x + w) / self.downsample, self.mask.shape[1])
        if not len(wy) or not len(wx):
            return 0.0
        covered = wy @ self.mask[rows, cols].astype(np.float64) @ wx
        return float(covered / ((h / self.downsample) * (w / self.downsample)))


def _overlap(a: float, b: float, n: int) -> tuple[slice, np.ndarray]:
    """The mask indices in ``[0, n)`` that ``[a, b)`` touches and how much of each it covers."""
    i0, i1 = max(0, math.floor(a)), min(n, math.ceil(b))
    if i0 >= i1:
        return slice(0, 0), np.zeros(0)
    idx = np.arange(i0, i1, dtype=np.float64)
    return slice(i0, i1), np.clip(np.minimum(idx + 1, b) - np.maximum(idx, a), 0.0, 1.0)


def _otsu(values: np.ndarray) -> float | None:
    """Otsu's threshold of values in [0, 1] on a 256-bin histogram; ``None`` when they are all in one bin."""
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    if np.count_nonzero(hist) < 2:
        return None
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)[:-1]
    w1 = hist.sum() - w0
    m0 = np.cumsum(hist * centres)[:-1]
    mu0 = m0 / np.maximum(w0, 1e-12)
    mu1 = (float(np.dot(hist, centres)) - m0) / np.maximum(w1, 1e-12)
    between = np.where((w0 > 0) & (w1 > 0), w0 * w1 * (mu0 - mu1) ** 2, -1.0)
    return float(edges[int(np.argmax(between)) + 1])  # class 1: values at or above this edge


def _clean(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    """A 3x3 opening and closing, then specks and holes smaller than ``min_pixels`` removed and filled."""
    from scipy import ndimage  # lazy: SciPy loads only for tissue detection

    square = np.ones((3, 3), bool)
    padded = np.pad(mask, 2, mode="edge")  # the slide's edge is not background
    padded = ndimage.binary_closing(ndimage.binary_opening(padded, square), square)
    mask = padded[2:-2, 2:-2]
    labels, _ = ndimage.label(mask, square)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_pixels
    keep[0] = False
    mask = keep[labels]
    holes, _ = ndimage.label(~mask)  # 4-connected background: a hole joined only diagonally stays a hole
    sizes = np.bincount(holes.ravel())
    small = sizes < min_pixels
    small[0] = False
    small[np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))] = False  # not holes
    return mask | small[holes]


def detect_tissue(slide: Slide, *, max_size: int = 2048, min_area_um2: float = 10_000.0) -> TissueMask:
    """Tissue on the slide's thumbnail: Otsu's threshold on saturation (HSV S).

    Where the thumbnail resolves nuclei (finer than :data:`SMOOTH_UM` a pixel), saturation is first averaged
    over that distance, so that dark nuclei and pale stroma count as one tissue class and Otsu separates
    tissue from glass. Near-black (HSV V below :data:`NEAR_BLACK`) and near-white (every channel above
    :data:`NEAR_WHITE`) pixels are not tissue, nor is anything paler than :data:`MIN_SATURATION`; after a 3x3
    opening and closing, pieces smaller than ``min_area_um2`` are removed and holes smaller than it filled. A
    blank slide gives an empty mask.

    Args:
        slide: The open slide.
        max_size: Longest side of the thumbnail (and of the mask) in pixels.
        min_area_um2: Smallest piece of tissue (and largest hole filled), in µm^2.

    Returns:
        The mask, ``source`` ``"otsu"``.

    Raises:
        InputError: The thumbnail cannot be read.
    """
    from scipy import ndimage  # lazy: SciPy loads only for tissue detection

    thumb, downsample = slide.thumbnail(max_size)
    rgb = thumb.astype(np.float32) / 255
    value = rgb.max(axis=2)
    low = rgb.min(axis=2)
    saturation = np.where(value > 0, (value - low) / np.maximum(value, 1e-6), 0.0)
    window = round(SMOOTH_UM / (downsample * slide.mpp))
    if window >= 2:  # nuclei resolved on the thumbnail (a small slide): average them into their tissue
        saturation = ndimage.uniform_filter(saturation, window | 1, mode="nearest")
    threshold = _otsu(saturation)
    if threshold is None:
        mask = np.zeros(saturation.shape, bool)
    else:
        mask = saturation >= max(threshold, MIN_SATURATION)
        mask &= (value >= NEAR_BLACK) & ~(low > NEAR_WHITE)
    # a piece bigger than 1% of the scan is never a speck (a small scan or a region may be all small pieces)
    min_pixels = min(min_area_um2 / (downsample * slide.mpp) ** 2, 0.01 * mask.size)
    return TissueMask(_clean(mask, min_pixels), downsample, "otsu")


def read_tissue_mask(path: str | os.PathLike, slide: Slide) -> TissueMask:
    """A user's tissue mask: PNG/TIFF/JPEG of any size whose aspect matches the slide's; non-zero is tissue.

    RGB (and palette) masks are converted to grey first; a JPEG's compression leaves small values in black
    areas, so there grey values of at least 128 are tissue.

    Args:
        path: The mask image.
        slide: The slide it belongs to.

    Returns:
        The mask, ``source`` the file's name.

    Raises:
        InputError: A missing, unreadable or too large file, or an aspect ratio more than 2 % off the slide's.
    """
    path = Path(path)
    _check_file(path)
    try:
        with open_pil(path) as img:
            w, h = img.size
            check_declared(path, (h, w), 4)
            lossy = img.format in ("JPEG", "MPO")
            if img.mode in ("1", "L", "I", "F", *_16BIT):
                grey = np.asarray(img.convert("L") if img.mode == "1" else img)
            else:
                grey = np.asarray(img.convert("L"))
    except MedvitError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{path}: not a tissue mask PIL can read (unrecognised content)") from None
    except Image.DecompressionBombError as exc:
        raise InputError(f"{path}: not a tissue mask PIL can read ({one_line(exc)})") from None
    except _PIL_ERRORS as exc:
        raise InputError(
            f"{path}: not a tissue mask PIL can read (truncated or corrupt: {one_line(exc)})"
        ) from None
    width, height = slide.dimensions
    a, aspect = w / h, width / height
    if abs(a / aspect - 1) > MASK_ASPECT_TOLERANCE:
        raise InputError(
            f"{path}: tissue mask is {w}x{h}, aspect {a:.3f}; the slide {slide.path.name} is {width}x{height}, "
            f"aspect {aspect:.3f}"
        )
    mask = grey >= 128 if lossy else grey != 0
    return TissueMask(mask.astype(bool), (width / w + height / h) / 2, path.name)
