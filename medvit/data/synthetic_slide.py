"""A deterministic synthetic H&E-like whole-slide image: a tiled pyramidal TIFF that OpenSlide opens as
``generic-tiff``, for the tests and benchmarks of the whole-slide path.

The scene is a function of ``(size, mpp, seed, tissue_fraction)``:

- Glass: near-white (244, noise sd 2, so about 240-248).
- Tissue: one to three smooth ellipses (random centres, axes and tilts, then scaled together so that their
  union covers ``tissue_fraction`` of the slide), pink H&E-like background (one colour per slide drawn as in
  the ``cells`` set, noise sd 6).
- Nuclei: flat discs in the colours of :data:`medvit.data.synthetic.NUCLEUS_TYPES`. Those radii (3-5) are
  pixels of the small ``cells`` tiles, which at 0.25 µm/px would make 1.5-2.5 µm nuclei; here each radius unit
  is :data:`NUCLEUS_UM_PER_UNIT` = 0.8 µm, so nuclei are 4.8-8 µm across (then +-15 % jitter), lymphocyte to
  epithelial size, drawn at ``radius_um / mpp`` level-0 pixels. They lie wholly inside tissue (the disc plus
  the gap, checked on 8 points of its rim) and inside the slide, at least :data:`GAP` px apart (centre distance
  >= r1 + r2 + GAP), at :data:`DEFAULT_DENSITY` per mm^2 of tissue unless told otherwise.

Nuclei are sampled once over the whole slide (dart throwing against a bucket grid whose cells are the largest
possible conflict distance, so each candidate checks 3 x 3 cells): their positions do not depend on the
tiling. Centres are whole pixels, so a drawn disc (the pixels whose centre is within ``radius``) is symmetric
and its pixel centroid is exactly ``(x, y)`` (x = column, y = row, in level-0 pixel indices).

Pixels are rendered tile by tile (memory stays flat in slide size): a level-``k`` pixel ``(i, j)`` takes the
scene at the level-0 point ``((j + 0.5) * 2**k - 0.5, (i + 0.5) * 2**k - 0.5)``, its centre; lower levels
are rendered directly at their resolution (point-sampled, not averaged from level 0). Noise comes from a
periodic texture indexed by the level's global pixel position, so it too is the same whatever the tiling.

The TIFF: level 0 then ``levels - 1`` levels each 2x smaller (``ceil``), all in the main IFD chain with
NewSubfileType 1 on the reduced ones. OpenSlide 4 wants it that way: its generic-tiff reader walks the main
chain and ignores SubIFDs (a pyramid written as SubIFDs opens with ``level_count`` 1). Tiles of ``tile`` px,
photometric RGB, compression JPEG (quality 90, RGB without chroma subsampling; needs imagecodecs, zlib without
it), zlib or none. XResolution/YResolution are ``10000 / mpp`` per centimetre (ResolutionUnit CENTIMETER) at
level 0 and scaled on each level: OpenSlide 4 reports them as ``openslide.mpp-x``/``openslide.mpp-y`` (and
``tiff.XResolution``, ``tiff.ResolutionUnit`` ``centimeter``), so :func:`medvit.io.wsi.open_slide` finds the
resolution in the file.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medvit.data.synthetic import NUCLEUS_TYPES
from medvit.io.atomic import atomic_file

NUCLEUS_UM_PER_UNIT = 0.8  # µm per unit of the NUCLEUS_TYPES radii: nuclei 4.8-8 µm across
RADIUS_JITTER = 0.15  # radii vary uniformly by +-15 %
DEFAULT_DENSITY = 8000.0  # nuclei per mm^2 of tissue (~1e5 on a 20000^2 slide at 0.25 µm/px, half tissue)
GAP = 2.0  # level-0 pixels kept between discs
GLASS = 244  # background grey level outside tissue
COMPRESSIONS = ("jpeg", "zlib", "none")
JPEG_QUALITY = 90

_NOISE_PERIOD = 509  # a prime: the noise texture does not line up with tiles
_NOISE_MARGIN = 512  # regions up to this size slice the texture without wrapping
_TYPES = np.array(sorted(NUCLEUS_TYPES))
_RADII_UM = np.array([NUCLEUS_TYPES[t][1] for t in _TYPES]) * NUCLEUS_UM_PER_UNIT
_COLOURS = np.array([NUCLEUS_TYPES[t][0] for t in _TYPES], np.uint8)
_RIM = np.exp(1j * np.linspace(0, 2 * np.pi, 8, endpoint=False))  # 8 points on a disc's rim


@dataclass(frozen=True, slots=True)
class SyntheticNucleus:
    """One drawn nucleus.

    Attributes:
        x: Level-0 column of the centroid of the drawn disc's pixels (a whole number).
        y: Level-0 row of that centroid (a whole number).
        radius: Disc radius in level-0 pixels (pixels whose centre lies within it are drawn).
        type: Key of :data:`medvit.data.synthetic.NUCLEUS_TYPES`.
    """

    x: float
    y: float
    radius: float
    type: int


@dataclass(frozen=True)
class _Blob:
    """An ellipse of tissue in level-0 pixels."""

    cx: float
    cy: float
    a: float
    b: float
    cos: float
    sin: float

    def rho(self, x, y):
        """Normalised radius (<= 1 inside) at points ``x``, ``y`` (broadcast)."""
        dx, dy = x - self.cx, y - self.cy
        u = (dx * self.cos + dy * self.sin) / self.a
        v = (dy * self.cos - dx * self.sin) / self.b
        return np.sqrt(u * u + v * v)

    def inside(self, x, y):
        return self.rho(x, y) <= 1.0

    def scaled(self, k: float) -> _Blob:
        return _Blob(self.cx, self.cy, self.a * k, self.b * k, self.cos, self.sin)

    def bbox(self) -> tuple[float, float, float, float]:
        hx = math.hypot(self.a * self.cos, self.b * self.sin)
        hy = math.hypot(self.a * self.sin, self.b * self.cos)
        return self.cx - hx, self.cy - hy, self.cx + hx, self.cy + hy


class _Scene:
    """Tissue blobs, colours and noise of one synthetic slide."""

    def __init__(self, size: tuple[int, int], mpp: float, seed: int, tissue_fraction: float):
        width, height = _check_size(size)
        if not (math.isfinite(mpp) and mpp > 0):
            raise ValueError(f"mpp {mpp}: must be a positive number of micrometres per pixel")
        if not (0.0 <= tissue_fraction <= 1.0):
            raise ValueError(f"tissue_fraction {tissue_fraction}: must be between 0 and 1")
        self.size, self.mpp, self.seed = (width, height), float(mpp), int(seed)
        rng = np.random.default_rng([self.seed, 0])
        self.blobs, self.fraction = _blobs(width, height, tissue_fraction, rng)
        self.boxes = [b.bbox() for b in self.blobs]
        self.pink = rng.uniform([220, 160, 200], [240, 180, 220])

    @functools.cached_property
    def textures(self) -> tuple[np.ndarray, np.ndarray]:
        """Tissue and glass colour with noise, periodic, padded by the margin so that regions slice them."""
        noise = np.random.default_rng([self.seed, 2]).normal(0.0, 6.0, (_NOISE_PERIOD, _NOISE_PERIOD, 3))
        noise = np.pad(noise.astype(np.float32), ((0, _NOISE_MARGIN), (0, _NOISE_MARGIN), (0, 0)), mode="wrap")
        tissue = np.clip(np.rint(self.pink + noise), 0, 255).astype(np.uint8)
        glass = np.clip(np.rint(GLASS + noise / 3), GLASS - 4, GLASS + 4).astype(np.uint8)
        return tissue, glass

    def tissue(self, x, y) -> np.ndarray:
        """Whether level-0 points ``x``, ``y`` (broadcast) are tissue."""
        out = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y)), bool)
        for blob in self.blobs:
            out |= blob.inside(x, y)
        return out

    def tissue_grid(self, xs: np.ndarray, ys: np.ndarray) -> bool | np.ndarray:
        """Tissue on the grid ``ys x xs`` (ascending level-0 coordinates): ``True``/``False`` when uniform."""
        partial = []
        for blob, (x0, y0, x1, y1) in zip(self.blobs, self.boxes, strict=True):
            if xs[-1] < x0 or xs[0] > x1 or ys[-1] < y0 or ys[0] > y1:
                continue
            corners = blob.inside(
                np.array([xs[0], xs[-1], xs[0], xs[-1]]), np.array([ys[0], ys[0], ys[-1], ys[-1]])
            )
            if corners.all():  # an ellipse is convex: the whole box is inside
                return True
            partial.append(blob)
        if not partial:
            return False
        out = partial[0].inside(xs[None, :], ys[:, None])
        for blob in partial[1:]:
            out |= blob.inside(xs[None, :], ys[:, None])
        return out

    def texture(self, texture: np.ndarray, row: int, col: int, h: int, w: int) -> np.ndarray:
        """The periodic noise texture at level pixels ``[row, row + h) x [col, col + w)`` (a view if small)."""
        r, c = row % _NOISE_PERIOD, col % _NOISE_PERIOD
        if h <= _NOISE_MARGIN and w <= _NOISE_MARGIN:
            return texture[r : r + h, c : c + w]
        rows = (row + np.arange(h)) % _NOISE_PERIOD
        cols = (col + np.arange(w)) % _NOISE_PERIOD
        return texture[rows[:, None], cols[None, :]]


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    width, height = (int(v) for v in size)
    if width < 1 or height < 1 or (width, height) != tuple(size):
        raise ValueError(f"size {tuple(size)}: expected (width, height) in whole pixels, each at least 1")
    return width, height


def _blobs(width: int, height: int, tissue_fraction: float, rng: np.random.Generator) -> tuple[list[_Blob], float]:
    """One to three ellipses whose union covers ``tissue_fraction`` of the slide; and the fraction reached."""
    n = int(rng.integers(1, 4))
    shapes = []
    for i in range(n):
        theta = rng.uniform(-0.35, 0.35)
        shapes.append(
            _Blob(
                cx=width * (i + 0.5 + rng.uniform(-0.1, 0.1)) / n,
                cy=height * (0.5 + rng.uniform(-0.08, 0.08)),
                a=width / (2 * n) * rng.uniform(0.7, 1.0),
                b=height / 2 * rng.uniform(0.6, 1.0),
                cos=math.cos(theta),
                sin=math.sin(theta),
            )
        )
    if tissue_fraction <= 0:
        return [], 0.0
    # scaling every ellipse by k about its centre covers {p: min_i rho_i(p) <= k}: k is a quantile of that
    # minimum over a sample grid of the slide
    gx = (np.arange(512) + 0.5) * width / 512
    gy = (np.arange(512) + 0.5) * height / 512
    rho = np.min([s.rho(gx[None, :], gy[:, None]) for s in shapes], axis=0)
    k = float(np.quantile(rho, tissue_fraction)) if tissue_fraction < 1 else float(rho.max()) * 1.1
    blobs = [s.scaled(k) for s in shapes]
    return blobs, float(np.mean(rho <= k))


@dataclass(frozen=True)
class _Nuclei:
    """Nuclei as arrays (level-0 centres, radii, type indices into _TYPES)."""

    x: np.ndarray
    y: np.ndarray
    r: np.ndarray
    colour: np.ndarray  # [n, 3] uint8

    @classmethod
    def of(cls, nuclei: Sequence[SyntheticNucleus]) -> _Nuclei:
        colours = {int(t): np.asarray(NUCLEUS_TYPES[t][0], np.uint8) for t in NUCLEUS_TYPES}
        return cls(
            np.array([n.x for n in nuclei], float),
            np.array([n.y for n in nuclei], float),
            np.array([n.radius for n in nuclei], float),
            np.array([colours[int(n.type)] for n in nuclei], np.uint8).reshape(-1, 3),
        )


def synthetic_nuclei(
    size: tuple[int, int],
    *,
    mpp: float = 0.25,
    seed: int = 0,
    tissue_fraction: float = 0.5,
    density: float = DEFAULT_DENSITY,
) -> list[SyntheticNucleus]:
    """The nuclei of the synthetic slide of these arguments (what :func:`write_synthetic_slide` draws).

    Args:
        size: Level-0 (width, height) in pixels.
        mpp: Level-0 micrometres per pixel (sets the nuclei's size in pixels).
        seed: Seed of the scene (tissue layout, colours, noise) and of the nuclei.
        tissue_fraction: Fraction of the slide covered by tissue (0 to 1).
        density: Nuclei per mm^2 of tissue; fewer when the tissue cannot hold that many apart.

    Returns:
        The nuclei, in the order they were placed.

    Raises:
        ValueError: A size, mpp, tissue fraction or density out of range.
    """
    scene = _Scene(size, mpp, seed, tissue_fraction)
    return _sample_nuclei(scene, density)


def _sample_nuclei(scene: _Scene, density: float) -> list[SyntheticNucleus]:
    if not (math.isfinite(density) and density >= 0):
        raise ValueError(f"density {density}: must be a number of nuclei per mm^2 of tissue, at least 0")
    width, height = scene.size
    target = int(round(density * scene.fraction * width * height * (scene.mpp / 1000) ** 2))
    if target == 0:
        return []
    rng = np.random.default_rng([scene.seed, 1])
    rmax = float(_RADII_UM.max()) * (1 + RADIUS_JITTER) / scene.mpp
    cell = 2 * rmax + GAP  # the largest centre distance at which two discs conflict
    buckets: dict[tuple[int, int], list[int]] = {}
    xs: list[float] = []
    ys: list[float] = []
    rs: list[float] = []
    types: list[int] = []
    batch = min(1 << 16, max(1024, int(target / max(scene.fraction, 0.05))))
    tries, limit = 0, 40 * max(batch, int(target / max(scene.fraction, 0.05)))  # stop when tissue is full
    while len(xs) < target and tries < limit:
        tries += batch
        cx = np.rint(rng.uniform(0, width - 1, batch))
        cy = np.rint(rng.uniform(0, height - 1, batch))
        kind = rng.integers(0, len(_TYPES), batch)
        r = _RADII_UM[kind] * rng.uniform(1 - RADIUS_JITTER, 1 + RADIUS_JITTER, batch) / scene.mpp
        reach = r + GAP
        ok = (cx - reach >= 0) & (cx + reach <= width - 1) & (cy - reach >= 0) & (cy + reach <= height - 1)
        rim_x = cx[:, None] + reach[:, None] * _RIM.real
        rim_y = cy[:, None] + reach[:, None] * _RIM.imag
        ok &= scene.tissue(cx, cy) & scene.tissue(rim_x, rim_y).all(axis=1)
        for x, y, radius, t in zip(
            cx[ok].tolist(), cy[ok].tolist(), r[ok].tolist(), kind[ok].tolist(), strict=True
        ):
            bx, by = int(x // cell), int(y // cell)
            clear = True
            for key in (
                (bx - 1, by - 1), (bx, by - 1), (bx + 1, by - 1),
                (bx - 1, by), (bx, by), (bx + 1, by),
                (bx - 1, by + 1), (bx, by + 1), (bx + 1, by + 1),
            ):  # fmt: skip
                for j in buckets.get(key, ()):
                    reach2 = radius + rs[j] + GAP
                    if (xs[j] - x) ** 2 + (ys[j] - y) ** 2 < reach2 * reach2:
                        clear = False
                        break
                if not clear:
                    break
            if clear:
                buckets.setdefault((bx, by), []).append(len(xs))
                xs.append(x)
                ys.append(y)
                rs.append(radius)
                types.append(t)
                if len(xs) == target:
                    break
    return [
        SyntheticNucleus(x, y, radius, int(_TYPES[t])) for x, y, radius, t in zip(xs, ys, rs, types, strict=True)
    ]


def _render(scene: _Scene, nuclei: _Nuclei, scale: int, col: int, row: int, w: int, h: int) -> np.ndarray:
    """RGB uint8 ``[h, w, 3]``: the pixels ``[row, row + h) x [col, col + w)`` of the level of ``scale``.

    ``nuclei`` need only hold those that may reach the region (others are clipped away anyway).
    """
    xs = (col + np.arange(w) + 0.5) * scale - 0.5  # level-0 coordinates of the pixel centres
    ys = (row + np.arange(h) + 0.5) * scale - 0.5
    tissue = scene.tissue_grid(xs, ys)
    tissue_texture, glass_texture = scene.textures
    if tissue is True:
        img = scene.texture(tissue_texture, row, col, h, w).copy()
    elif tissue is False:
        img = scene.texture(glass_texture, row, col, h, w).copy()
    else:
        img = np.where(
            tissue[..., None],
            scene.texture(tissue_texture, row, col, h, w),
            scene.texture(glass_texture, row, col, h, w),
        )
    if len(nuclei.x):
        x, y, r = nuclei.x, nuclei.y, nuclei.r
        d = int(math.ceil(2 * float(r.max()) / scale)) + 2  # covers every pixel of the largest disc
        j0 = np.ceil((x - r + 0.5) / scale - 0.5).astype(np.int64) - col  # first column that may be inside
        i0 = np.ceil((y - r + 0.5) / scale - 0.5).astype(np.int64) - row
        jj = j0[:, None] + np.arange(d)
        ii = i0[:, None] + np.arange(d)
        dx = (col + jj + 0.5) * scale - 0.5 - x[:, None]
        dy = (row + ii + 0.5) * scale - 0.5 - y[:, None]
        inside = dy[:, :, None] ** 2 + dx[:, None, :] ** 2 <= (r * r)[:, None, None]
        inside &= ((ii >= 0) & (ii < h))[:, :, None] & ((jj >= 0) & (jj < w))[:, None, :]
        n, a, b = np.nonzero(inside)
        img[ii[n, a], jj[n, b]] = nuclei.colour[n]
    return img


def _tile_index(nuclei: _Nuclei, scale: int, tile: int, ntx: int, nty: int) -> tuple[np.ndarray, np.ndarray]:
    """``(order, starts)``: the nuclei that may reach tile ``(ty, tx)`` of the level of ``scale`` are
    ``order[starts[k]:starts[k + 1]]`` with ``k = ty * ntx + tx``."""
    x, y, r = nuclei.x, nuclei.y, nuclei.r
    c0 = np.clip(np.ceil((x - r + 0.5) / scale - 0.5) // tile, 0, ntx - 1).astype(np.int64)
    c1 = np.clip(np.floor((x + r + 0.5) / scale - 0.5) // tile, 0, ntx - 1).astype(np.int64)
    r0 = np.clip(np.ceil((y - r + 0.5) / scale - 0.5) // tile, 0, nty - 1).astype(np.int64)
    r1 = np.clip(np.floor((y + r + 0.5) / scale - 0.5) // tile, 0, nty - 1).astype(np.int64)
    keys, members = [], []
    span_x = int((c1 - c0).max(initial=0))
    span_y = int((r1 - r0).max(initial=0))
    for oy in range(span_y + 1):
        for ox in range(span_x + 1):
            ok = (r0 + oy <= r1) & (c0 + ox <= c1)
            keys.append((r0[ok] + oy) * ntx + c0[ok] + ox)
            members.append(np.flatnonzero(ok))
    key = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    member = np.concatenate(members) if members else np.zeros(0, np.int64)
    sort = np.argsort(key, kind="stable")
    starts = np.searchsorted(key[sort], np.arange(ntx * nty + 1))
    return member[sort], starts


def _level_tiles(
    scene: _Scene, nuclei: _Nuclei, scale: int, width: int, height: int, tile: int, workers: int
) -> Iterator[np.ndarray]:
    """The full ``tile x tile`` tiles of one level in row-major order, rendered ``workers`` at a time."""
    ntx, nty = -(-width // tile), -(-height // tile)
    order, starts = _tile_index(nuclei, scale, tile, ntx, nty)

    def render(k: int) -> np.ndarray:
        idx = order[starts[k] : starts[k + 1]]
        subset = _Nuclei(nuclei.x[idx], nuclei.y[idx], nuclei.r[idx], nuclei.colour[idx])
        ty, tx = divmod(k, ntx)
        return _render(scene, subset, scale, tx * tile, ty * tile, tile, tile)

    count = ntx * nty
    if workers < 2:
        yield from map(render, range(count))
        return
    step = 8 * workers  # bounded look-ahead: memory stays flat
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, count, step):
            yield from pool.map(render, range(start, min(start + step, count)))


def _codec(compression: str) -> tuple[str | None, dict]:
    """tifffile's arguments for ``compression`` (JPEG falls back to zlib without imagecodecs)."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression {compression!r}: expected one of {', '.join(COMPRESSIONS)}")
    if compression == "jpeg":
        try:
            import imagecodecs  # noqa: F401  # lazy: only to know whether tifffile can write JPEG tiles
        except ImportError:
            compression = "zlib"
        else:
            # RGB JPEG without chroma subsampling: the photometric stays RGB and colours stay close
            return "jpeg", {
                "subsampling": (1, 1),
                "compressionargs": {"level": JPEG_QUALITY, "outcolorspace": "RGB"},
            }
    return (None if compression == "none" else compression), {}


def write_synthetic_slide(
    path: str | os.PathLike,
    *,
    size: tuple[int, int] = (4096, 4096),
    mpp: float = 0.25,
    tile: int = 256,
    levels: int = 3,
    seed: int = 0,
    tissue_fraction: float = 0.5,
    compression: str = "jpeg",
    nuclei: Sequence[SyntheticNucleus] | None = None,
) -> list[SyntheticNucleus]:
    """Write the synthetic slide as a tiled pyramidal TIFF (OpenSlide: ``generic-tiff``), atomically.

    Args:
        path: The ``.tif``/``.tiff`` file to write.
        size: Level-0 (width, height) in pixels.
        mpp: Level-0 micrometres per pixel, written as the resolution tags.
        tile: Tile side in pixels (a multiple of 16).
        levels: Number of pyramid levels (level ``k`` is ``ceil(size / 2**k)``).
        seed: Seed of the scene and of the nuclei.
        tissue_fraction: Fraction of the slide covered by tissue (0 to 1).
        compression: ``"jpeg"`` (zlib when imagecodecs is missing), ``"zlib"`` or ``"none"``.
        nuclei: Nuclei to draw instead of :func:`synthetic_nuclei` of the same arguments.

    Returns:
        The nuclei drawn.

    Raises:
        ValueError: An argument out of range.
    """
    import tifffile  # lazy: only the writer needs it

    scene = _Scene(size, mpp, seed, tissue_fraction)
    width, height = scene.size
    if tile < 16 or tile % 16:
        raise ValueError(f"tile {tile}: must be a positive multiple of 16")
    if levels < 1 or max(width, height) < 2 ** (levels - 1):
        raise ValueError(f"levels {levels}: must be at least 1 and leave each level at least 1 pixel")
    codec, codec_args = _codec(compression)
    drawn = list(_sample_nuclei(scene, DEFAULT_DENSITY) if nuclei is None else nuclei)
    scene.textures  # noqa: B018  # built once here, before the rendering threads share it
    arrays = _Nuclei.of(drawn)
    raw = sum(-(-width // 2**k) * -(-height // 2**k) * 3 for k in range(levels))
    workers = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))
    with atomic_file(Path(path)) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=raw > 3 << 30) as tif:
            for k in range(levels):
                scale = 2**k
                lw, lh = -(-width // scale), -(-height // scale)
                res = 1e4 / (scene.mpp * scale)  # pixels per centimetre
                tif.write(
                    _level_tiles(scene, arrays, scale, lw, lh, tile, workers),
                    shape=(lh, lw, 3),
                    dtype=np.uint8,
                    tile=(tile, tile),
                    photometric="rgb",
                    compression=codec,
                    resolution=(res, res),
                    resolutionunit="CENTIMETER",
                    subfiletype=1 if k else 0,
                    metadata=None,
                    maxworkers=workers,
                    buffersize=32 * tile * tile * 3,  # tiles encoded at a time (the default is ~2600 of them)
                    **codec_args,
                )
    return drawn
