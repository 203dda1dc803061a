"""Nuclei from overlapping tiles: every nucleus once, the same as whole-image post-processing."""

from __future__ import annotations

import numpy as np
import pytest

from medvit.postprocess.hover import hover_instances, hv_maps
from medvit.postprocess.tiles import TileGrid, tile_nuclei


def _scene(width: int, height: int, seed: int = 0, radius: tuple[float, float] = (5.0, 10.0)):
    """An instance map of non-overlapping discs (many across tile borders) and their types."""
    rng = np.random.default_rng(seed)
    inst = np.zeros((height, width), np.int32)
    types = np.zeros((height, width), np.uint8)
    yy, xx = np.mgrid[:height, :width]
    n = 0
    for _ in range(width * height // 150):
        r = rng.uniform(*radius)
        cx, cy = rng.uniform(r + 1, width - r - 1), rng.uniform(r + 1, height - r - 1)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        grown = (xx - cx) ** 2 + (yy - cy) ** 2 <= (r + 2) ** 2
        if inst[grown].any():
            continue
        n += 1
        inst[disc], types[disc] = n, int(rng.integers(1, 4))
    return inst, types


def _crop(a: np.ndarray, x: int, y: int, t: int) -> np.ndarray:
    out = np.zeros((*a.shape[:-2], t, t), a.dtype)
    part = a[..., y : y + t, x : x + t]
    out[..., : part.shape[-2], : part.shape[-1]] = part
    return out


def _tiled(inst, types, grid: TileGrid):
    binary, hv = (inst > 0).astype(np.float32), hv_maps(inst)
    found = []
    for r in range(grid.rows):
        for c in range(grid.cols):
            x, y = grid.origin(c, r)
            t = grid.tile
            found.append(
                tile_nuclei(_crop(binary, x, y, t), _crop(hv, x, y, t), _crop(types, x, y, t), grid, c, r)
            )
    return found


@pytest.mark.parametrize(
    ("width", "height", "tile", "overlap"), [(300, 220, 64, 16), (257, 129, 64, 32), (90, 70, 64, 0)]
)
def test_grid_cores_partition_the_canvas(width, height, tile, overlap):
    grid = TileGrid(width, height, tile, overlap)
    owners = np.full((height, width), -1)
    for r in range(grid.rows):
        for c in range(grid.cols):
            x0, y0, x1, y1 = grid.core(c, r)
            assert (owners[y0:y1, x0:x1] == -1).all()
            owners[y0:y1, x0:x1] = r * grid.cols + c
            ox, oy = grid.origin(c, r)
            assert ox <= x0 and oy <= y0 and (c == grid.cols - 1 or x1 <= ox + tile)
    assert (owners >= 0).all()
    for y, x in np.random.default_rng(0).integers(0, [height, width], size=(200, 2)):
        c, r = grid.owner(x + 0.3, y + 0.3)
        assert owners[y, x] == r * grid.cols + c
    last_x, _ = grid.origin(grid.cols - 1, 0)
    assert last_x + tile >= width  # the tiles cover the canvas


def test_every_nucleus_once_and_as_the_whole_image_sees_it():
    inst, types = _scene(512, 384)  # nuclei 10-20 px across (HoVer's Sobel of 21 px is set for 40x nuclei)
    grid = TileGrid(512, 384, tile=128, overlap=32)
    found = _tiled(inst, types, grid)
    cents = np.concatenate([f.centroids for f in found])
    truth = np.array(
        [[xs.mean(), ys.mean()] for ys, xs in (np.nonzero(inst == i) for i in range(1, inst.max() + 1))]
    )
    whole = hover_instances((inst > 0).astype(np.float32), hv_maps(inst))
    assert whole.max() == len(truth)
    assert len(cents) == len(truth)  # none lost, none twice
    d = np.linalg.norm(cents[:, None] - truth[None], axis=2)
    assert (d.min(1) < 0.5).all() and len(set(d.argmin(1))) == len(truth)
    # nuclei across tile borders were among them
    xs = np.arange(1, grid.cols) * grid.stride
    crossing = [i for i in range(1, inst.max() + 1) if np.isin(np.nonzero(inst == i)[1], xs).any()]
    assert len(crossing) > 5
    # types and areas come with them
    got_types = np.concatenate([f.types for f in found])
    want_types = np.array([types[inst == i][0] for i in range(1, inst.max() + 1)])
    assert (got_types == want_types[d.argmin(1)]).all()
    areas = np.concatenate([f.areas for f in found])
    assert (areas == np.bincount(inst.ravel())[1:][d.argmin(1)]).all()


def test_a_nucleus_cut_in_its_owner_is_taken_from_the_tile_that_sees_it_whole():
    """Tiles span x 0..95 and 64..159, cores split at x = 80. A nucleus whose centroid lies in the first core
    but which reaches past the first tile's edge is reported by the second tile, which sees it whole."""
    yy, xx = np.mgrid[:64, :160]
    grid = TileGrid(160, 64, tile=96, overlap=32)
    inst = np.zeros((64, 160), np.int32)
    inst[(xx - 74) ** 2 + (yy - 32) ** 2 <= 8**2] = 1
    inst[30:35, 80:101] = 1  # an arm across the first tile's edge (x = 95)
    cx = np.nonzero(inst)[1].mean()
    assert grid.owner(cx, 32) == (0, 0) and grid.holders(66, 24, 101, 41) == [(1, 0)]
    found = _tiled(inst, np.ones_like(inst, dtype=np.uint8), grid)
    assert [len(f) for f in found] == [0, 1]
    assert abs(found[1].centroids[0, 0] - cx) < 0.5
    # a nucleus its owner sees whole is reported by the owner, wherever else it is seen whole too
    inst2 = np.zeros((64, 160), np.int32)
    inst2[(xx - 81) ** 2 + (yy - 32) ** 2 <= 10**2] = 1  # x 71..91: inside both tiles; owner: the second
    found2 = _tiled(inst2, np.ones_like(inst2, dtype=np.uint8), grid)
    assert [len(f) for f in found2] == [0, 1]


def test_contours_are_closed_polygons_around_the_nucleus():
    shapely = pytest.importorskip("shapely")
    from shapely.geometry import Polygon

    inst, types = _scene(200, 150, seed=3)
    grid = TileGrid(200, 150, tile=64, overlap=16)
    for f in _tiled(inst, types, grid):
        for ring, (cx, cy), area in zip(f.contours, f.centroids, f.areas, strict=True):
            assert np.array_equal(ring[0], ring[-1]) and len(ring) >= 4
            poly = Polygon(ring)
            assert poly.is_valid, shapely.validation.explain_validity(poly)
            assert poly.contains(shapely.geometry.Point(cx, cy))
            assert abs(poly.area - area) <= 0.25 * area + 4  # pixel-centre outline vs pixel count


def _polygon_before(mask: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """``_polygon`` as it was: the marching-squares contour simplified by scikit-image's approximate_polygon."""
    from skimage.measure import approximate_polygon, find_contours

    padded = np.pad(mask, 1)
    ring = approximate_polygon(max(find_contours(padded.astype(np.float32), 0.5), key=len), tolerance=0.5)
    if len(ring) < 4:
        r, c = np.nonzero(padded)
        r0, r1, c0, c1 = r.min() - 0.5, r.max() + 0.5, c.min() - 0.5, c.max() + 0.5
        ring = np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0], [r0, c0]])
    return ring[:, ::-1] + np.array([x0 - 1, y0 - 1])


def test_polygons_keep_only_turns_and_the_area_of_before():
    """The outline is the marching-squares contour with its straight-through points dropped (vectorised):
    valid, around every pixel centre, no three consecutive points on a line, its area close to the pixel count
    and to the polygon approximate_polygon gave before; a one-pixel nucleus is its pixel square."""
    shapely = pytest.importorskip("shapely")
    from scipy import ndimage as ndi
    from shapely.geometry import Polygon

    from medvit.postprocess.tiles import _polygon

    masks = []
    for seed in range(3):
        inst, _ = _scene(200, 160, seed=seed, radius=(1.0, 12.0))
        masks += [inst[sl] == i for i, sl in enumerate(ndi.find_objects(inst), start=1) if sl is not None]
    rng = np.random.default_rng(0)
    for _ in range(100):  # irregular blobs: concave, with holes and one-pixel necks
        lab = ndi.label(ndi.binary_opening(rng.random((16, 16)) < 0.6))[0]
        if lab.max():
            masks.append(lab == np.bincount(lab.ravel())[1:].argmax() + 1)
    for mask in masks:
        ring = _polygon(mask, 7, 3)
        assert np.array_equal(ring[0], ring[-1]) and len(ring) >= 5
        poly, before = Polygon(ring), Polygon(_polygon_before(mask, 7, 3))
        assert poly.is_valid, shapely.validation.explain_validity(poly)
        pts = ring[:-1]
        a, b = pts - np.roll(pts, 1, 0), np.roll(pts, -1, 0) - pts
        assert (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0] != 0).all()  # every point a turn
        n = int(mask.sum())
        assert abs(poly.area - n) <= 0.15 * n + 0.5, (poly.area, n)
        assert abs(poly.area - before.area) <= 0.25 * n + 1, (poly.area, before.area, n)
        ys, xs = np.nonzero(mask)
        assert shapely.contains_xy(poly, xs + 7, ys + 3).all()  # every pixel centre inside
    square = _polygon(np.ones((1, 1), bool), 5, 9)
    assert Polygon(square).area == 1.0 and Polygon(square).bounds == (4.5, 8.5, 5.5, 9.5)


def test_rings_keep_polygons_compact_and_map_them_on_access():
    from medvit.postprocess.tiles import Rings

    rng = np.random.default_rng(0)
    polys = [np.round(rng.uniform(0, 5000, (n, 2)) * 2) / 2 for n in (5, 4, 9, 6)]
    rings = Rings.of(polys)
    assert rings.points.dtype == np.float32 and len(rings) == 4  # half pixels: exact in float32
    assert all(np.array_equal(a, b) for a, b in zip(rings, polys, strict=True))
    assert np.array_equal(rings[-1], polys[-1])
    with pytest.raises(IndexError):
        rings[4]
    both = Rings.concat([rings, Rings.of(polys[:2]), Rings.of([])])
    assert len(both) == 6 and np.array_equal(both[5], polys[1])
    kept = both.take([5, 0, 2])
    assert [len(r) for r in kept] == [4, 5, 9] and np.array_equal(kept[2], polys[2])
    assert len(both.take([])) == 0 and len(Rings.concat([])) == 0
    moved = kept.mapped(2.0, (10.0, 20.0)).mapped(0.5, (1.0, 1.0))  # (p / 2 + (10, 20)) / 0.5 + 1
    assert np.allclose(moved[1], (polys[0] / 2 + [10, 20]) / 0.5 + 1)
    assert np.array_equal(kept[1:][0], polys[0])
    far = Rings.of([np.array([[2.0**23 + 0.5, 1.0], [0.0, 0.0]])])  # beyond float32's half pixels: float64
    assert far.points.dtype == np.float64 and far[0][0, 0] == 2.0**23 + 0.5
    with pytest.raises(ValueError, match="unmapped"):
        Rings.concat([moved])
