"""HoVer-Net post-processing: nuclei binary map + horizontal/vertical distance maps -> labelled instances
with types (Graham et al., "HoVer-Net: Simultaneous segmentation and classification of nuclei in
multi-tissue histology images", MedIA 2019; the same procedure CellViT and CellVTA use).

Steps: threshold the nuclei probability and drop small blobs; min-max normalise each HV channel and take its
large-kernel Sobel derivative along its own axis (rescaled between percentiles, not min-max as in HoVer-Net:
see :func:`_robust_unit`); where either map falls steeply (its values rise inside a
nucleus) lies a boundary between touching nuclei. Markers are the blob minus the boundaries (holes filled,
opened, small ones removed); a marker-controlled watershed on the smoothed distance surface, limited to the
blob, gives the instances. The type of an instance is the majority vote of the type map over its pixels
(background ignored when any other type is present). :func:`hv_maps` makes the HV training targets from an
instance map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import comb

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import disk, remove_small_objects
from skimage.segmentation import watershed


@dataclass
class HoverResult:
    """Instances found in one image.

    Attributes:
        instances: ``[H, W]`` int32 map, 0 = background, instances ``1..n``.
        types: ``{instance id: type}`` (empty without a type map).
        type_probs: ``{instance id: fraction of its pixels voting for its type}``.
        centroids: ``{instance id: (row, col)}``.
    """

    instances: np.ndarray
    types: dict[int, int] = field(default_factory=dict)
    type_probs: dict[int, float] = field(default_factory=dict)
    centroids: dict[int, tuple[float, float]] = field(default_factory=dict)


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


ROBUST_PERCENTILES = (0.5, 99.5)


def _robust_unit(d: np.ndarray) -> np.ndarray:
    """``d`` rescaled so that its 0.5th and 99.5th percentiles become 0 and 1 (clipped). HoVer-Net min-max
    normalises the Sobel derivatives instead; the extremes are single pixels, which differ from one tile to the
    next, so overlapping tiles cut the same nucleus differently (2% of nuclei differed between 128 px tiles
    and the whole 512 px region; none with percentiles)."""
    lo, hi = np.percentile(d, ROBUST_PERCENTILES)
    return np.clip((d - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(d)


def sobel_kernels(ksize: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``ksize`` (odd, >= 3) Sobel pair: binomial smoothing and the derivative of a binomial."""
    if ksize < 3 or ksize % 2 == 0:
        raise ValueError(f"sobel_ksize must be odd and >= 3, got {ksize}")
    smooth = np.array([comb(ksize - 1, i) for i in range(ksize)], dtype=np.float64)
    base = np.array([comb(ksize - 3, i) for i in range(ksize - 2)], dtype=np.float64)
    deriv = np.convolve(base, [1.0, 0.0, -1.0])
    return smooth / smooth.sum(), deriv / np.abs(deriv).sum()


def _derivative(x: np.ndarray, axis: int, ksize: int) -> np.ndarray:
    smooth, deriv = sobel_kernels(ksize)
    y = ndi.correlate1d(x, smooth, axis=1 - axis, mode="reflect")
    return ndi.correlate1d(y, deriv[::-1], axis=axis, mode="reflect")


def hover_instances(
    binary: np.ndarray,
    hv: np.ndarray,
    *,
    threshold: float = 0.5,
    edge_threshold: float = 0.4,
    min_size: int = 10,
    marker_min_size: int = 10,
    sobel_ksize: int = 21,
    open_radius: int = 2,
) -> np.ndarray:
    """Labelled nuclei from the binary and HV maps of one image.

    Args:
        binary: ``[H, W]`` nuclei probability (or a ``[2, H, W]`` softmax whose channel 1 is nuclei).
        hv: ``[2, H, W]`` horizontal (x) then vertical (y) distance maps.
        threshold: Nuclei probability threshold.
        edge_threshold: Normalised Sobel value above which a pixel is a boundary.
        min_size: Blobs smaller than this (pixels) are dropped (10 at 40x, 3 at 20x in CellViT).
        marker_min_size: Markers smaller than this are dropped.
        sobel_ksize: Sobel kernel size (21 at 40x, 11 at 20x).
        open_radius: Radius of the disk that opens the markers (2 -> the 5x5 element HoVer-Net uses).

    Returns:
        ``[H, W]`` int32 instance map, instances numbered ``1..n``.
    """
    binary = np.asarray(binary, dtype=np.float32)
    if binary.ndim == 3 and binary.shape[0] == 2:
        binary = binary[1]
    hv = np.asarray(hv, dtype=np.float32)
    if binary.ndim != 2 or hv.shape != (2, *binary.shape):
        raise ValueError(f"binary must be [H, W] and hv [2, H, W], got {binary.shape} and {hv.shape}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    blob = ndi.label(binary >= threshold)[0]
    blob = remove_small_objects(blob, max_size=min_size - 1) > 0 if min_size > 1 else blob > 0
    if not blob.any():
        return np.zeros(binary.shape, dtype=np.int32)
    h_dir, v_dir = _minmax(hv[0]), _minmax(hv[1])
    # inside a nucleus each map rises along its axis; between touching nuclei it falls steeply
    edge_h = 1.0 - _robust_unit(_derivative(h_dir, axis=1, ksize=sobel_ksize))
    edge_v = 1.0 - _robust_unit(_derivative(v_dir, axis=0, ksize=sobel_ksize))
    edges = np.maximum(edge_h, edge_v) * blob
    surface = -ndi.gaussian_filter((1.0 - edges) * blob, sigma=0.8)
    markers = blob & (edges < edge_threshold)
    markers = fill_holes(markers)
    markers = binary_opening(markers, disk(open_radius)) if open_radius > 0 else markers
    markers = ndi.label(markers)[0]
    if marker_min_size > 1:
        markers = remove_small_objects(markers, max_size=marker_min_size - 1)
    inst = watershed(surface, markers=markers, mask=blob)
    return _renumber(inst)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes(mask)`` (holes: background not 4-connected to the border), by one
    labelling of the background instead of SciPy's dilation to convergence (~3x faster on a 256 px tile)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or 0 in mask.shape:
        return ndi.binary_fill_holes(mask)
    background, n = ndi.label(~mask)
    outside = np.zeros(n + 1, dtype=bool)
    for edge in (background[0], background[-1], background[:, 0], background[:, -1]):
        outside[edge] = True
    outside[0] = True  # the mask itself
    return mask | ~outside[background]


def binary_opening(mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_opening(mask, structure=footprint)`` for a small symmetric 2D footprint of odd
    side (outside the image is background), as ANDs then ORs of shifted views: ~7x faster than SciPy's on a
    256 px tile with ``disk(2)``."""
    mask, footprint = np.asarray(mask, dtype=bool), np.asarray(footprint, dtype=bool)
    r, c = footprint.shape[0] // 2, footprint.shape[1] // 2
    offsets = list(zip(*np.nonzero(footprint), strict=True))
    h, w = mask.shape

    def shifted(x: np.ndarray, reduce) -> np.ndarray:
        padded = np.pad(x, ((r, r), (c, c)))
        out = padded[offsets[0][0] : offsets[0][0] + h, offsets[0][1] : offsets[0][1] + w].copy()
        for dy, dx in offsets[1:]:
            reduce(out, padded[dy : dy + h, dx : dx + w], out=out)
        return out

    return shifted(shifted(mask, np.logical_and), np.logical_or)


def _renumber(inst: np.ndarray) -> np.ndarray:
    """The instances numbered ``1..n`` in the order of their ids (0 stays background)."""
    ids, index = _index(inst)
    new = np.cumsum(ids != 0).astype(np.int32)  # ids sorted: 0 (if present) first, then 1..n
    new[ids == 0] = 0
    return new[index].reshape(inst.shape)


def _index(inst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted distinct ids of ``inst`` and each pixel's position among them (``np.unique(...,
    return_inverse=True)``, flat; through a lookup table when the ids are small non-negative integers)."""
    flat = np.asarray(inst).ravel()
    if flat.size and flat.dtype.kind in "iu" and np.can_cast(flat.dtype, np.intp):
        if 0 <= flat.min() and flat.max() <= 4 * flat.size:
            present = np.bincount(flat) > 0
            return np.flatnonzero(present), (np.cumsum(present) - 1)[flat]
    return np.unique(flat, return_inverse=True)


def vote_types(inst: np.ndarray, type_map: np.ndarray) -> tuple[dict[int, int], dict[int, float]]:
    """Majority type of each instance and the fraction of its pixels that voted for it.

    Args:
        inst: Instance map.
        type_map: ``[H, W]`` pixel types or ``[C, H, W]`` type probabilities (argmax taken).
    """
    type_map = np.asarray(type_map)
    if type_map.ndim == 3:
        type_map = type_map.argmax(0)
    if type_map.shape != inst.shape:
        raise ValueError(f"type_map must match the instance map {inst.shape}, got {type_map.shape}")
    ids, index = _index(inst)
    keep = ids != 0
    if not keep.any():
        return {}, {}
    # votes of the background pixels are not counted: 0 there (a negative type in a nucleus is an error)
    pixel_types = np.where(np.asarray(inst).ravel() == 0, 0, type_map.ravel().astype(np.int64))
    if pixel_types.min() < 0:
        raise ValueError("type_map must hold non-negative types")
    k = int(pixel_types.max()) + 1
    votes = np.bincount(index * k + pixel_types, minlength=len(ids) * k).reshape(len(ids), k)[keep]
    nuclear = votes[:, 1:]
    # background loses to any nuclear type
    best = np.where(nuclear.any(1), nuclear.argmax(1) + 1, 0) if k > 1 else np.zeros(len(votes), np.int64)
    fraction = votes[np.arange(len(votes)), best] / votes.sum(1)
    ids = [int(i) for i in ids[keep]]
    return dict(zip(ids, best.tolist(), strict=True)), dict(zip(ids, fraction.tolist(), strict=True))


def hover_postprocess(
    binary: np.ndarray, hv: np.ndarray, type_map: np.ndarray | None = None, **kwargs
) -> HoverResult:
    """:func:`hover_instances`, then types by majority vote and centroids. ``kwargs`` go to the former."""
    inst = hover_instances(binary, hv, **kwargs)
    result = HoverResult(inst)
    if type_map is not None:
        result.types, result.type_probs = vote_types(inst, type_map)
    ids = [i for i in np.unique(inst) if i]
    for i, c in zip(ids, ndi.center_of_mass(inst > 0, inst, ids), strict=True):
        result.centroids[int(i)] = (float(c[0]), float(c[1]))
    return result


def hv_maps(inst: np.ndarray) -> np.ndarray:
    """HoVer training targets ``[2, H, W]``: per instance, the x and y offset from its centroid scaled to
    [-1, 1] separately on each side (0 on the background)."""
    inst = np.asarray(inst)
    out = np.zeros((2, *inst.shape), dtype=np.float32)
    for i in np.unique(inst):
        if i == 0:
            continue
        rows, cols = np.nonzero(inst == i)
        for ch, coord in ((0, cols), (1, rows)):
            d = coord - coord.mean()
            neg, pos = -d.min(initial=0.0), d.max(initial=0.0)
            scaled = np.where(d < 0, d / neg if neg > 0 else 0.0, d / pos if pos > 0 else 0.0)
            out[ch, rows, cols] = scaled
    return out
