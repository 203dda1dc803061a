"""Nuclei from overlapping tiles, each reported exactly once.

Tiles of ``tile`` pixels step by ``tile - overlap`` over a canvas (a slide or region at the model's
resolution). Each tile has a *core*: its extent less half the overlap on every side that has a neighbour.
Cores partition the canvas, so the rule "a nucleus belongs to the tile whose core holds its centroid" counts
every nucleus once. A nucleus that the owning tile sees cut by its border (it touches an edge that has a
neighbour) is taken instead from a tile that sees it whole: among the tiles whose extent holds its bounding
box, the first in raster order. Every tile decides alone, from geometry every tile knows, so tiles can be
post-processed in any order, in parallel processes.

This module needs numpy, SciPy and scikit-image only (no torch): it runs in post-processing worker processes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import find_contours

from medvit.postprocess.hover import hover_instances, vote_types


@dataclass(frozen=True)
class TileGrid:
    """Tiles over a ``width`` x ``height`` canvas (pixels at the model's resolution).

    Attributes:
        width, height: Canvas size.
        tile: Tile side.
        overlap: Pixels shared by neighbouring tiles (even, below ``tile``).
    """

    width: int
    height: int
    tile: int
    overlap: int

    def __post_init__(self) -> None:
        if self.tile < 1 or not 0 <= self.overlap < self.tile or self.overlap % 2:
            raise ValueError(f"tile {self.tile} with overlap {self.overlap}: overlap must be even and below tile")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"empty canvas {self.width}x{self.height}")

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def cols(self) -> int:
        return max(1, -(-(self.width - self.overlap) // self.stride))

    @property
    def rows(self) -> int:
        return max(1, -(-(self.height - self.overlap) // self.stride))

    def __len__(self) -> int:
        return self.cols * self.rows

    def origin(self, col: int, row: int) -> tuple[int, int]:
        """Top-left ``(x, y)`` of a tile."""
        return col * self.stride, row * self.stride

    def core(self, col: int, row: int) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` of a tile's core (half-open; the last column and row end at the canvas end:
        what a tile sees beyond the canvas (the rest of the slide around a region) is nobody's)."""
        x, y = self.origin(col, row)
        half = self.overlap // 2
        x0 = x + half if col > 0 else 0
        y0 = y + half if row > 0 else 0
        x1 = x + self.tile - half if col < self.cols - 1 else self.width
        y1 = y + self.tile - half if row < self.rows - 1 else self.height
        return x0, y0, x1, y1

    def owner(self, x: float, y: float) -> tuple[int, int]:
        """The tile whose core holds the point ``(x, y)``."""
        half = self.overlap // 2
        col = int(np.clip((x - half) // self.stride, 0, self.cols - 1))
        row = int(np.clip((y - half) // self.stride, 0, self.rows - 1))
        return col, row

    def holders(self, x0: float, y0: float, x1: float, y1: float) -> list[tuple[int, int]]:
        """Tiles that see the box ``[x0, x1) x [y0, y1)`` whole, in raster order: it lies inside the tile
        without touching an edge that has a neighbour (touching one, it may go on beyond)."""
        cols = _span(x0, x1, self.stride, self.tile, self.cols)
        rows = _span(y0, y1, self.stride, self.tile, self.rows)
        return [(c, r) for r in rows for c in cols]


def _span(lo: float, hi: float, stride: int, tile: int, n: int) -> range:
    """Indices ``i < n`` of tiles ``[i * stride, i * stride + tile)`` holding ``[lo, hi)`` off their inner
    edges: ``i == 0 or i * stride < lo`` and ``i == n - 1 or hi < i * stride + tile``."""
    first = min(n - 1, max(0, int(np.ceil((hi - tile + 1) / stride))))
    last = max(0, min(n - 1, int(np.floor((lo - 1) / stride))))
    return range(first, last + 1)


class Rings(Sequence):
    """``N`` closed polygons ``[M_i, 2]`` ``(x, y)`` (first point repeated last) in one array, mapped on access.

    A slide has 10^5-10^6 nuclei: a list of small float64 arrays costs ~110 bytes of header each and twice the
    points' bytes, and every list is copied when the polygons move to level-0 coordinates. Here the points of
    all polygons lie in one ``[P, 2]`` array (float32: marching squares puts them on half pixels, exact in
    float32 below 2^22 pixels), ring ``i`` is ``points[starts[i]:starts[i + 1]]``, and the move to level 0
    (``points / divide + add``) happens on access, in float64.
    """

    def __init__(self, points: np.ndarray, starts: np.ndarray, divide: float = 1.0, add=(0.0, 0.0)) -> None:
        self.points = points
        self.starts = starts
        self.divide = float(divide)
        self.add = np.asarray(add, dtype=np.float64)

    @classmethod
    def of(cls, rings: list[np.ndarray]) -> Rings:
        """From a list of ``[M_i, 2]`` arrays."""
        starts = np.zeros(len(rings) + 1, np.int64)
        np.cumsum([len(r) for r in rings], out=starts[1:])
        points = np.concatenate(rings) if rings else np.zeros((0, 2))
        exact = not len(points) or np.abs(points).max() < 2**22
        return cls(points.astype(np.float32 if exact else np.float64), starts)

    @classmethod
    def concat(cls, parts: list[Rings]) -> Rings:
        """The rings of ``parts`` one after the other (unmapped parts: ``divide`` 1, ``add`` 0)."""
        if any(p.divide != 1.0 or p.add.any() for p in parts):
            raise ValueError("only unmapped rings are concatenated")
        if not parts:
            return cls(np.zeros((0, 2), np.float32), np.zeros(1, np.int64))
        lengths = np.concatenate([np.diff(p.starts) for p in parts])
        starts = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=starts[1:])
        return cls(np.concatenate([p.points for p in parts]), starts)

    def take(self, keep) -> Rings:
        """The rings at the indices ``keep``, in that order."""
        keep = np.asarray(keep, dtype=np.int64).reshape(-1)
        lengths = self.starts[keep + 1] - self.starts[keep]
        starts = np.zeros(len(keep) + 1, np.int64)
        np.cumsum(lengths, out=starts[1:])
        index = np.repeat(self.starts[keep] - starts[:-1], lengths) + np.arange(starts[-1])
        return Rings(self.points[index], starts, self.divide, self.add)

    def mapped(self, divide: float, add) -> Rings:
        """The same rings, then ``/ divide + add`` (on the current mapping)."""
        return Rings(self.points, self.starts, self.divide * divide, self.add / divide + np.asarray(add))

    @property
    def nbytes(self) -> int:
        return self.points.nbytes + self.starts.nbytes

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.take(np.arange(len(self))[i])
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"ring {i} of {n}")
        i = i % n
        ring = self.points[self.starts[i] : self.starts[i + 1]].astype(np.float64)
        if self.divide != 1.0:
            ring /= self.divide
        return ring + self.add

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"Rings({len(self)} polygons, {len(self.points)} points)"


@dataclass
class TileNuclei:
    """The nuclei one tile reports (canvas coordinates, pixels at the model's resolution).

    Attributes:
        centroids: ``[N, 2]`` float64 ``(x, y)``.
        types: ``[N]`` type (label value; 0 when the type map voted background).
        type_probs: ``[N]`` fraction of the nucleus' pixels that voted for its type.
        areas: ``[N]`` pixel counts.
        contours: ``N`` closed polygons ``[M, 2]`` ``(x, y)``, first point repeated last (:class:`Rings`).
        masks: With ``want_masks``: ``N`` ``(x0, y0, bool mask)`` for painting an instance map.
    """

    centroids: np.ndarray
    types: np.ndarray
    type_probs: np.ndarray
    areas: np.ndarray
    contours: Rings
    masks: list[tuple[int, int, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.types)


def tile_nuclei(
    binary: np.ndarray,
    hv: np.ndarray,
    type_map: np.ndarray,
    grid: TileGrid,
    col: int,
    row: int,
    *,
    want_masks: bool = False,
    hover: dict | None = None,
) -> TileNuclei:
    """HoVer post-processing of one tile, then the nuclei this tile reports (module docstring).

    Args:
        binary: ``[T, T]`` nuclei probability.
        hv: ``[2, T, T]`` horizontal and vertical maps.
        type_map: ``[T, T]`` pixel types (argmax of the type branch).
        grid: The tiling.
        col, row: This tile.
        want_masks: Also return each nucleus' pixel mask (for instance maps of tiles and regions).
        hover: Options of :func:`~medvit.postprocess.hover.hover_instances`.
    """
    inst = hover_instances(binary, hv, **(hover or {}))
    types, probs = vote_types(inst, type_map)
    ox, oy = grid.origin(col, row)
    t = grid.tile
    edges = (col > 0, row > 0, col < grid.cols - 1, row < grid.rows - 1)  # edges with a neighbour: l, t, r, b
    keep_ids, cents, kept_masks = [], [], []
    slices = ndi.find_objects(inst)
    for index, sl in enumerate(slices):
        if sl is None:
            continue
        i = index + 1
        mask = inst[sl] == i
        ys, xs = np.nonzero(mask)
        cy, cx = ys.mean() + sl[0].start + oy, xs.mean() + sl[1].start + ox
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        cut = (edges[0] and x0 == 0) or (edges[1] and y0 == 0) or (edges[2] and x1 == t) or (edges[3] and y1 == t)
        if _reports(grid, (col, row), (cx, cy), (x0 + ox, y0 + oy, x1 + ox, y1 + oy), cut):
            keep_ids.append(i)
            cents.append((cx, cy))
            kept_masks.append(mask)
    contours, masks, areas = [], [] if want_masks else None, []
    for i, mask in zip(keep_ids, kept_masks, strict=True):
        sl = slices[i - 1]
        areas.append(int(mask.sum()))
        contours.append(_polygon(mask, sl[1].start + ox, sl[0].start + oy))
        if masks is not None:
            masks.append((sl[1].start + ox, sl[0].start + oy, mask))
    return TileNuclei(
        centroids=np.asarray(cents, dtype=np.float64).reshape(-1, 2),
        types=np.asarray([types.get(i, 0) for i in keep_ids], dtype=np.int32),
        type_probs=np.asarray([probs.get(i, 1.0) for i in keep_ids], dtype=np.float32),
        areas=np.asarray(areas, dtype=np.int64),
        contours=Rings.of(contours),
        masks=masks,
    )


def _reports(grid: TileGrid, me, centroid, box, cut: bool) -> bool:
    """Whether tile ``me`` reports a nucleus it sees with ``centroid`` and bounding ``box`` (canvas
    coordinates; ``cut``: it touches one of this tile's edges that has a neighbour)."""
    if not (0 <= centroid[0] < grid.width and 0 <= centroid[1] < grid.height):
        return False  # beyond the canvas: outside the region asked for
    owner = grid.owner(*centroid)
    holders = grid.holders(*box)
    if cut:  # seen cut here: reported here only when no tile sees it whole and this one owns it
        return not holders and owner == me
    if owner in holders:  # the owner sees it whole
        return owner == me
    return holders[0] == me  # the owner sees it cut: the first tile that sees it whole


def _polygon(mask: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """The outline of a pixel mask as a closed polygon ``[M, 2]`` ``(x, y)`` around the pixel squares'
    centres (the longest contour; holes left out), with only the points where it turns."""
    padded = np.pad(mask, 1)
    rings = find_contours(padded.astype(np.float32), 0.5)
    ring = _turns(max(rings, key=len))
    if len(ring) < 4 or mask.sum() == 1:  # one pixel: its square (its contour: the diamond in it)
        r, c = np.nonzero(padded)
        ring = np.array([[r.min() - 0.5, c.min() - 0.5], [r.min() - 0.5, c.max() + 0.5],
                         [r.max() + 0.5, c.max() + 0.5], [r.max() + 0.5, c.min() - 0.5]])  # fmt: skip
        ring = np.vstack([ring, ring[:1]])
    xy = ring[:, ::-1] + np.array([x0 - 1, y0 - 1])
    if not np.array_equal(xy[0], xy[-1]):
        xy = np.vstack([xy, xy[:1]])
    return xy


def _turns(ring: np.ndarray) -> np.ndarray:
    """A closed ring (first point repeated last) less the points where it runs straight on, closed again: the
    same polygon, vectorised (scikit-image's ``approximate_polygon`` is a Python loop, per nucleus). Marching
    squares puts the points on half pixels, so the cross products are exact."""
    pts = ring[:-1]
    if len(pts) < 3:
        return ring
    after = np.diff(ring, axis=0)  # pts[i] -> pts[i + 1] (the ring is closed)
    before = np.concatenate([after[-1:], after[:-1]])
    turns = pts[before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0] != 0]
    return np.vstack([turns, turns[:1]]) if len(turns) >= 3 else ring
