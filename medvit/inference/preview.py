"""``<case>_preview.png``: a segmentation over its image, for a quick look (not for diagnosis).

3D: three orthogonal planes (axial, coronal, sagittal) through the centroid of the largest structure (the
largest connected part of the foreground; the middle of the volume when nothing was found), in the
radiological convention (the patient's right on the left of the picture; anterior on the left of the
sagittal plane; anterior and superior up) and at the true aspect from the voxel spacing: the volume is
turned onto the world axes it lies closest to (axis flips and swaps, no resampling) and every panel is drawn
at one scale in millimetres. 2D: the mask over the photograph, at the pixel aspect when the spacing is known.

The image is windowed as the package's preprocessing maps it (the HU window for CT, ``0..scale`` for
photographs), otherwise between its 0.5th and 99.5th percentiles. Labels are filled in their colours
(:func:`medvit.io.palette.label_colour`) at :data:`ALPHA` with their outlines drawn opaque; a legend names
the labels found. Drawn with PIL. The picture holds no text but label names and orientation letters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medvit.inference.predictor import Prediction
from medvit.io.atomic import atomic_path
from medvit.io.palette import label_colour

ALPHA = 0.45  # weight of a label's colour over the image inside it
PANEL_PX = 320  # the longest side of the largest 3D panel
MAX_2D_PX = 1024  # the longest side of a 2D preview (larger photographs are shrunk)
GAP = 8
# (name, fixed axis, letters at the left, right, top, bottom) of the three planes, on RAS-ordered axes
_VIEWS = (("axial", 2, "RLAP"), ("coronal", 1, "RLSI"), ("sagittal", 0, "APSI"))


def write_preview(pred: Prediction, path: str | Path) -> Path:
    """Render ``pred`` (which holds its image: ``predict(..., keep_image=True)``) to a PNG, atomically."""
    if pred.mask is None or pred.image is None:
        raise ValueError("a preview needs the segmentation and its image (predict with keep_image=True)")
    picture = render_preview(pred)
    path = Path(path)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return path


def render_preview(pred: Prediction):
    """The preview of ``pred`` as an RGB PIL image."""
    background = min(pred.labels)
    names = {v: n for v, n in pred.labels.items() if v != background}
    image = np.asarray(pred.image)
    mask = np.asarray(pred.mask)
    if mask.ndim == 2:
        panels = [_panel_2d(image, mask, pred.grid.affine, pred.window)]
    else:
        panels = _panels_3d(image, mask, pred.grid.affine, pred.window)
    return _compose(panels, [(label_colour(v), names[v]) for v in sorted(names) if v in _present(mask)])


def _present(mask: np.ndarray) -> set[int]:
    """The label values in ``mask`` (one pass, no sorted copy of a large volume)."""
    from scipy import ndimage  # lazy: SciPy only for previews and statistics

    mask = mask.astype(np.uint8) if mask.dtype.kind == "b" else mask
    return {v for v, box in enumerate(ndimage.find_objects(mask), start=1) if box is not None}


# -- image and mask planes ----------------------------------------------------------------------------------


def _grey_window(image: np.ndarray, window) -> tuple[float, float]:
    if window is not None:
        return float(window[0]), float(window[1])
    step = max(1, int(round((image.size / 2e6) ** (1 / max(image.ndim, 1)))))  # a strided sample is enough
    sample = image[tuple(slice(None, None, step) for _ in range(image.ndim))].astype(np.float64)
    lo, hi = np.percentile(sample, [0.5, 99.5]) if sample.size else (0.0, 1.0)
    return float(lo), (float(hi) if hi > lo else float(lo) + 1.0)


def _to_uint8(plane: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = (plane.astype(np.float64) - lo) / (hi - lo) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _panels_3d(image: np.ndarray, mask: np.ndarray, affine: np.ndarray, window) -> list:
    import nibabel.orientations as nio  # lazy: nibabel, for the orientation of the volume only

    ornt = nio.io_orientation(np.asarray(affine, dtype=np.float64))  # -> the closest RAS axes
    colour = image.shape[0] == 3 and image.dtype == np.uint8
    channels = image[:3] if colour else image[:1]
    lo, hi = (0.0, 255.0) if colour else _grey_window(channels[0], window)
    vol = nio.apply_orientation(np.moveaxis(channels, 0, -1), ornt)  # flips and swaps: views, no copy
    labels = nio.apply_orientation(mask, ornt)
    reoriented = np.asarray(affine, dtype=np.float64) @ nio.inv_ornt_aff(ornt, mask.shape)
    spacing = np.linalg.norm(reoriented[:3, :3], axis=0)
    centre = _centre(labels)
    extent = np.asarray(labels.shape) * spacing
    mm_per_px = max(float(extent.max()) / PANEL_PX, 1e-6)
    panels = []
    for _, axis, letters in _VIEWS:
        rows_axis, cols_axis = [a for a in (0, 1, 2) if a != axis][::-1]  # rows: the later axis (A or S)
        if labels.shape[rows_axis] == 1 or labels.shape[cols_axis] == 1:
            continue  # a one-slice volume: only the plane it holds
        index = [slice(None)] * 3
        index[axis] = int(centre[axis])
        # plane [cols_axis, rows_axis] -> picture rows top to bottom, columns left to right: both reversed
        img_plane = _to_uint8(np.swapaxes(vol[tuple(index)], 0, 1)[::-1, ::-1], lo, hi)
        lab_plane = np.swapaxes(labels[tuple(index)], 0, 1)[::-1, ::-1]
        size = (
            max(1, round(labels.shape[cols_axis] * spacing[cols_axis] / mm_per_px)),
            max(1, round(labels.shape[rows_axis] * spacing[rows_axis] / mm_per_px)),
        )
        panels.append((_overlay(img_plane, lab_plane, size), letters))
    if not panels:  # a row of voxels
        flat = int(np.argmax(labels.shape))
        index = tuple(slice(None) if a == flat else slice(0, 1) for a in range(3))
        row = _to_uint8(vol[index].reshape(1, -1, vol.shape[-1]), lo, hi)
        panels.append(
            (_overlay(row, labels[index].reshape(1, -1), (PANEL_PX, max(1, PANEL_PX // labels.size))), "")
        )
    return panels


def _centre(labels: np.ndarray) -> np.ndarray:
    """The centroid voxel of the largest connected part of the foreground; the middle when there is none.

    Large volumes are looked at every ``step`` voxels (at most about 8 million): enough to place the planes."""
    from scipy import ndimage  # lazy: SciPy only for previews and statistics

    step = max(1, int(np.ceil((labels.size / 8e6) ** (1 / 3))))
    foreground = labels[::step, ::step, ::step] > 0
    if not foreground.any():
        foreground, step = labels > 0, 1  # small structures the sample missed
    if not foreground.any():
        return np.asarray(labels.shape) // 2
    parts, count = ndimage.label(foreground)
    largest = int(np.argmax(np.bincount(parts.ravel(), minlength=count + 1)[1:])) + 1
    centre = np.asarray(ndimage.center_of_mass(parts == largest)) * step
    return np.clip(np.rint(centre), 0, np.asarray(labels.shape) - 1).astype(int)


def _panel_2d(image: np.ndarray, mask: np.ndarray, affine: np.ndarray, window) -> tuple:
    if image.ndim == 3 and image.shape[0] in (3, 4):
        lo, hi = (0.0, 255.0) if image.dtype == np.uint8 else _grey_window(image[:3], window)
        pixels = np.moveaxis(_to_uint8(image[:3], lo, hi), 0, -1)
    else:
        grey = image[0] if image.ndim == 3 else image
        lo, hi = _grey_window(grey, window)
        pixels = np.repeat(_to_uint8(grey, lo, hi)[..., None], 3, axis=-1)
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :2], axis=0)  # (row, column) mm
    height, width = mask.shape[0] * spacing[0] / spacing.min(), mask.shape[1] * spacing[1] / spacing.min()
    scale = min(1.0, MAX_2D_PX / max(height, width))  # the finer spacing is one pixel, up to the size limit
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return _overlay(pixels, mask, size), ""


def _overlay(pixels: np.ndarray, labels: np.ndarray, size: tuple[int, int]):
    """``pixels`` ``[H, W, 1|3]`` uint8 and ``labels`` ``[H, W]`` resized to ``size`` (w, h), labels blended."""
    from PIL import Image  # lazy: PIL only for 2D images and previews

    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    shrink = size[0] < pixels.shape[1] or size[1] < pixels.shape[0]
    resample = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    base = np.asarray(Image.fromarray(np.ascontiguousarray(pixels)).resize(size, resample))
    lab = np.asarray(
        Image.fromarray(np.ascontiguousarray(labels).astype(np.int32)).resize(size, Image.Resampling.NEAREST)
    )
    out = base.astype(np.float64)
    edge = _edges(lab)
    for value in np.unique(lab):
        if value <= 0:
            continue
        inside = lab == value
        colour = np.asarray(label_colour(int(value)), dtype=np.float64)
        out[inside] = (1 - ALPHA) * out[inside] + ALPHA * colour
        out[inside & edge] = colour
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def _edges(lab: np.ndarray) -> np.ndarray:
    """Pixels of a label whose 4-neighbour (inside the picture) has another value."""
    edge = np.zeros(lab.shape, dtype=bool)
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    return edge & (lab > 0)


# -- the picture ----------------------------------------------------------------------------------------------


def _compose(panels: list, legend: list[tuple[tuple[int, int, int], str]]):
    """Panels side by side on black, orientation letters on their edges, the legend below."""
    from PIL import Image, ImageDraw, ImageFont  # lazy: PIL only for 2D images and previews

    font = ImageFont.load_default()
    line = 16
    width = sum(p.width for p, _ in panels) + GAP * (len(panels) + 1)
    height = max(p.height for p, _ in panels) + 2 * GAP
    entries = legend or [(None, "nothing found")]
    text_w = max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(name, font=font) for _, name in entries)
    canvas_w = max(width, int(GAP + line + 4 + text_w + GAP))
    canvas = Image.new("RGB", (canvas_w, height + GAP + line * len(entries) + GAP), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    x = GAP
    for panel, letters in panels:
        canvas.paste(panel, (x, GAP))
        if letters:
            left, right, top, bottom = letters
            mid_y, mid_x = GAP + panel.height // 2, x + panel.width // 2
            _letter(draw, font, left, (x + 2, mid_y), "lm")
            _letter(draw, font, right, (x + panel.width - 2, mid_y), "rm")
            _letter(draw, font, top, (mid_x, GAP + 2), "mt")
            _letter(draw, font, bottom, (mid_x, GAP + panel.height - 2), "mb")
        x += panel.width + GAP
    y = height + GAP
    for colour, name in entries:
        if colour is not None:
            draw.rectangle((GAP, y + 2, GAP + line - 4, y + line - 2), fill=colour)
        _text(draw, font, name, (GAP + line + 4, y + line // 2), "lm", fill=(255, 255, 255))
        y += line
    return canvas


def _letter(draw, font, text: str, xy: tuple[int, int], anchor: str) -> None:
    _text(draw, font, text, xy, anchor, fill=(255, 255, 0), stroke_width=1, stroke_fill=(0, 0, 0))


def _text(draw, font, text: str, xy: tuple[int, int], anchor: str, **style) -> None:
    """Text placed by ``anchor``; a PIL without FreeType (bitmap font, no anchors) places it by its corner."""
    try:
        draw.text(xy, text, font=font, anchor=anchor, **style)
    except ValueError:
        draw.text(xy, text, font=font, **style)
