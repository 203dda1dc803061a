"""2D photographs and tiles (PNG, JPEG, TIFF, BMP): ``[C, H, W]`` arrays in pixel units."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from medvit.errors import InputError, MedvitWarning, one_line
from medvit.io.atomic import atomic_path
from medvit.io.geometry import pad_affine_2d
from medvit.io.limits import check_declared
from medvit.io.meta import make_image, to_numpy
from medvit.io.palette import png_palette

IMAGE2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

# a PNG text chunk saying the palette indices are label values (written by write_png(palette=True))
LABEL_MAP_KEY, LABEL_MAP = "medvit", "label map"

# PIL mode -> the mode we convert to before taking the array (None: keep)
_CONVERT = {"P": "RGB", "PA": "RGB", "CMYK": "RGB", "YCbCr": "RGB", "LA": "L", "1": "L", "RGBA": "RGB"}


def open_pil(path: str | Path) -> Image.Image:
    """``PIL.Image.open`` (lazy: the header only) without PIL's decompression-bomb warning: the caller checks
    the declared size against medvit's own budget (:func:`~medvit.io.limits.check_declared`) before decoding.
    PIL's hard limit (``DecompressionBombError``) still applies."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def is_image2d_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE2D_SUFFIXES


def read_image2d(path: str | Path):
    """Read a 2D image into ``[C, H, W]`` (``C`` = 1 grey, 3 colour). Alpha is dropped.

    Pixels have no physical size: the affine is the identity on (row, column) and ``spacing_known`` is
    ``False``. 16-bit images keep their values (as int32).
    """
    path = Path(path)
    try:
        with open_pil(path) as img:
            width, height = img.size
            check_declared(path, (height, width, max(len(img.getbands()), 3)), 4)  # as int32 / RGB at most
            n_frames = getattr(img, "n_frames", 1)
            fmt = (img.format or path.suffix.lstrip(".")).lower()
            mode = img.mode
            if mode == "RGBA":
                warnings.warn(f"{path.name}: alpha channel dropped", MedvitWarning, stacklevel=2)
            if mode in _CONVERT and not (mode == "P" and img.info.get(LABEL_MAP_KEY) == LABEL_MAP):
                img = img.convert(_CONVERT[mode])  # a medvit label map keeps its indices: they are the labels
            data = np.asarray(img)
    except UnidentifiedImageError:
        raise InputError(f"{path}: not a readable 2D image (unrecognised content)") from None
    except Image.DecompressionBombError:
        raise InputError(f"{path}: declares more pixels than the image budget allows") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: image data is truncated or corrupt ({one_line(exc)})") from None
    if n_frames > 1:
        warnings.warn(f"{path.name}: {n_frames} pages; only the first is read", MedvitWarning, stacklevel=2)
    if data.ndim == 2:
        data = data[None]
    elif data.ndim == 3:
        data = np.moveaxis(data, -1, 0)
    else:
        raise InputError(f"{path}: unsupported image shape {data.shape}")
    if data.dtype == bool:
        data = data.astype(np.uint8)
    return make_image(
        data,
        pad_affine_2d(),
        format=fmt,
        source=str(path),
        modality=None,
        description={"series_uid": None, "num_slices": 1},
        spacing_known=False,
    )


def write_png(mask, path: str | Path, *, palette: bool = False) -> Path:
    """Write a 2D label mask (``[H, W]`` or ``[1, H, W]``) or RGB image (``[3, H, W]``) to PNG, atomically.

    Integer labels 0-255 are written as 8-bit, up to 65535 as 16-bit; other values are an error.

    Args:
        mask: The labels or RGB pixels.
        path: A ``.png`` path.
        palette: Labels 0-255 as a palette ("P") PNG: the pixel values (indices) are the labels, and the
            palette shows them in :func:`medvit.io.palette.label_colour` (0 black) in any viewer. PIL and
            :func:`read_image` read back the labels; readers that expand palettes (OpenCV, imageio) get the
            colours. Labels above 255 are written as 16-bit grey values instead.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"{path}: PNG output needs a .png name")
    data, _ = to_numpy(mask)
    if data.ndim == 3 and data.shape[0] in (1, 3):  # channel-first
        data = data[0] if data.shape[0] == 1 else np.moveaxis(data, 0, -1)
    elif data.ndim == 3 and data.shape[-1] == 1:  # [I, J, 1]: a one-slice grid
        data = data[..., 0]
    if data.ndim not in (2, 3) or (data.ndim == 3 and data.shape[-1] != 3):
        raise InputError(f"{path}: PNG needs a 2D mask or an RGB image, got shape {tuple(data.shape)}")
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise InputError(f"{path}: PNG masks need integer labels; got non-integer values")
    if data.size and (data.min() < 0 or data.max() > 65535):
        raise InputError(f"{path}: label values {data.min()}..{data.max()} do not fit a PNG (0..65535)")
    wide = data.size and data.max() > 255
    if wide and data.ndim == 3:
        raise InputError(f"{path}: RGB PNG values must be 0..255")
    data = data.astype(np.uint16 if wide else np.uint8)
    with atomic_path(path) as tmp:
        if palette and data.ndim == 2 and not wide:
            img = Image.fromarray(data)
            img.putpalette(png_palette())  # an "L" image becomes "P" with its values as the indices
            info = PngInfo()
            info.add_text(LABEL_MAP_KEY, LABEL_MAP)
            img.save(tmp, format="PNG", pnginfo=info)
        else:
            Image.fromarray(data).save(tmp, format="PNG")
    return path
