"""Nuclei over a whole-slide image, a region of it, or a tile, with a ``cells`` (CellVTA) package.

open the slide (OpenSlide, or PIL for a tile) -> resolution (the slide's own, or ``--mpp``) -> tissue on a
thumbnail (or ``--tissue-mask``) -> tiles of the network's input size at the package's resolution, with an
overlap, only where there is tissue -> tiles read ahead by threads (OpenSlide reads release the GIL) and run
in batches under bf16 autocast where the device does it -> HoVer post-processing of each tile in worker
processes while the next batches run -> each nucleus reported once (:mod:`medvit.postprocess.tiles`) ->
level-0 coordinates.

The CPUs are shared out, not oversubscribed: while a slide runs on the CPU, torch's intra-op threads are the
most that leave the post-processing workers and the tile readers the CPUs they are measured to use at the tile
rate those threads give (:class:`ThreadShare`: a small network whose tiles keep the workers busy gets the CPUs
they leave; a realistic one, whose workers are idle most of the time, gets all of them); on a GPU, the CPUs
the workers leave. The caller's thread count is a cap and is restored afterwards. Up to
``max(4 * workers, 2 * batch)`` tiles may be in post-processing at once, so that the workers keep busy while
the network runs the next batch.

Memory holds the tiles in flight and the nuclei found, never the slide: peak memory does not grow with the
slide's size (an instance map is kept only for tiles and regions, which are bounded). On glibc the main
process gives its freed heap back every :data:`TRIM_EVERY` batches (``malloc_trim``), or glibc's heap would
grow with the slide through fragmentation.

The workers are spawned processes, which import the main module: a script that calls ``predict`` on a slide
needs ``if __name__ == "__main__":`` around its top level (or ``workers=0``).
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import functools
import math
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvit.device import autocast, cpu_count
from medvit.errors import ConfigError, InputError
from medvit.inference.cases import SLIDE_ONLY
from medvit.memory import mmap_large_allocations
from medvit.postprocess.tiles import Rings, TileGrid, TileNuclei, tile_nuclei

DEFAULT_OVERLAP = 0.25  # of the tile: 64 px on CellVTA's 256 px tiles, more than a nucleus' diameter at 40x
TWIN_DISTANCE = 3.0  # model pixels: two tiles' centroids this close are one nucleus (nuclei are >= 8 px across)
MAP_LIMIT = 16384 * 16384  # instance maps (tiles, regions) up to this many level-0 pixels
TRIM_EVERY = 4  # batches between glibc malloc_trim calls in the main process (peak memory flat over a slide;
# measured at 5120^2, tiny CellVTA, batch 8: every 16 batches peak RSS ~1065 MB, every 4 ~1013 MB at the same time,
# every batch ~970 MB but 5-15% slower)
# type colours (RGB) by label value, for QuPath and the type map preview
PALETTE = [(0, 0, 0), (255, 0, 0), (34, 139, 34), (30, 144, 255), (255, 165, 0), (148, 0, 211), (0, 206, 209),
           (255, 20, 147), (139, 69, 19), (128, 128, 0)]  # fmt: skip
_VOLUMES = (".nii", ".nii.gz", ".dcm", ".zip", ".mha", ".nrrd")


@dataclass
class CellsPrediction:
    """Nuclei found in one slide, region or tile.

    Attributes:
        labels: Type value -> name (the package's; 0 is background).
        centroids: ``[N, 2]`` level-0 ``(x, y)`` pixels.
        types: ``[N]`` type values.
        type_probs: ``[N]`` fraction of each nucleus' pixels that voted for its type.
        areas_um2: ``[N]`` areas in square micrometres.
        contours: ``N`` closed polygons ``[M, 2]``, level-0 ``(x, y)`` pixels (a sequence of float64 arrays,
            kept compact in one array: :class:`~medvit.postprocess.tiles.Rings`).
        mpp: Level-0 micrometres per pixel.
        region: ``(x, y, w, h)`` level-0 pixels predicted (the whole slide, or ``--roi``).
        instances: Instance ids ``1..N`` on the region's level-0 grid (tiles and regions only).
        input: Non-identifying facts: file name, backend, vendor, dimensions, levels, resolutions.
        tissue: ``source`` (otsu, a mask file, or ``all`` for tiles) and ``area_mm2``.
        tiles: ``total``, ``run`` and ``skipped`` (no tissue), ``size`` and ``overlap`` (pixels).
        timing: Seconds: ``open_s``, ``tissue_s``, ``read_s`` (waiting for tiles), ``infer_s``, ``post_s``
            (waiting for post-processing), ``total_s``.
    """

    labels: dict[int, str]
    centroids: np.ndarray
    types: np.ndarray
    type_probs: np.ndarray
    areas_um2: np.ndarray
    contours: Rings
    mpp: float
    region: tuple[int, int, int, int]
    instances: np.ndarray | None = None
    input: dict[str, Any] = field(default_factory=dict)
    tissue: dict[str, Any] = field(default_factory=dict)
    tiles: dict[str, int] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    task: str = "cells"

    def __len__(self) -> int:
        return len(self.types)

    def type_name(self, value: int) -> str:
        """The name of type ``value`` (``type_<value>`` for a value the package does not name)."""
        return self.labels.get(int(value), f"type_{int(value)}")

    def counts(self) -> dict[str, int]:
        """Nuclei per type name (every type of the package, zeros included; background left out)."""
        found = np.bincount(self.types, minlength=max(self.labels) + 1) if len(self) else None
        return {name: int(found[v]) if found is not None else 0 for v, name in sorted(self.labels.items()) if v}

    def summary(self) -> dict[str, Any]:
        """What the manifest and the sidecar record: counts, tissue area, density, tiles."""
        area = self.tissue.get("area_mm2")
        return {
            "cells": len(self),
            "counts": self.counts(),
            "tissue_area_mm2": area,
            "cells_per_mm2": round(len(self) / area, 2) if area else None,
            "mpp": self.mpp,
            "region": list(self.region),
            "tiles": self.tiles,
        }

    def table(self):
        """The nuclei as a pandas DataFrame: ``id``, ``x``, ``y`` (level-0 pixels), ``x_um``, ``y_um``,
        ``type``, ``type_name``, ``type_prob``, ``area_um2``."""
        import pandas as pd  # lazy: pandas (an MLflow dependency) only for the table

        return pd.DataFrame(self.rows())

    def rows(self, start: int = 0, stop: int | None = None) -> dict[str, list]:
        """Columns of :meth:`table` for the nuclei ``start:stop`` (all by default)."""
        part = slice(start, len(self) if stop is None else stop)
        x, y = self.centroids[part, 0], self.centroids[part, 1]
        types = self.types[part].astype(int).tolist()
        return {
            "id": list(range(part.start + 1, part.start + len(x) + 1)),
            "x": np.round(x, 2).tolist(),
            "y": np.round(y, 2).tolist(),
            "x_um": np.round(x * self.mpp, 3).tolist(),
            "y_um": np.round(y * self.mpp, 3).tolist(),
            "type": types,
            "type_name": [self.type_name(t) for t in types],
            "type_prob": np.round(self.type_probs[part], 4).tolist(),
            "area_um2": np.round(self.areas_um2[part], 3).tolist(),
        }


def is_tile(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a plain tile (PNG, JPEG, an untiled TIFF) rather than a whole-slide image."""
    name = str(path).lower()
    if name.endswith(SLIDE_ONLY):
        return False
    if not name.endswith((".tif", ".tiff")):
        return True
    import openslide  # lazy: OpenSlide for slides only

    try:
        return openslide.OpenSlide.detect_format(str(path)) is None
    except Exception:  # noqa: BLE001 - unreadable: predict reports it; here it only picks default outputs
        return True


def parse_roi(text: str | None) -> tuple[int, int, int, int] | None:
    """``--roi x,y,w,h`` (level-0 pixels)."""
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or values[0] < 0 or values[1] < 0 or values[2] < 1 or values[3] < 1:
        raise ConfigError(f"--roi {text}: expected x,y,w,h in level-0 pixels (x, y >= 0; w, h >= 1)")
    return values[0], values[1], values[2], values[3]


def predict_cells(
    predictor,
    path: str | os.PathLike,
    *,
    mpp: float | None = None,
    roi: tuple[int, int, int, int] | None = None,
    tissue_mask: str | os.PathLike | None = None,
    workers: int | None = None,
) -> CellsPrediction:
    """Nuclei of one slide or tile with ``predictor`` (a :class:`~medvit.inference.Predictor` of a cells package).

    Args:
        predictor: The predictor (network, device, precision, batch size, overlap).
        path: A whole-slide image (SVS, NDPI, MRXS, SCN, tiled TIFF, ...) or a tile (PNG, JPEG, TIFF).
        mpp: Level-0 micrometres per pixel, for a slide or tile whose metadata gives none (or to override it).
        roi: ``(x, y, w, h)`` level-0 pixels to restrict to.
        tissue_mask: A mask image (non-zero = tissue) with the slide's aspect, instead of tissue detection.
        workers: Post-processing processes (default: CPUs - 1; 0 runs it in this process).

    Raises:
        InputError: Not a slide or tile, unreadable, no resolution, ROI outside the slide, mask of the wrong
            aspect (one line naming the file or option).
    """
    from medvit.io.wsi import detect_tissue, open_slide, read_tissue_mask  # lazy: OpenSlide for slides only

    t0 = time.perf_counter()
    path = Path(path)
    if path.name.lower().endswith(_VOLUMES) or path.is_dir():
        raise InputError(
            f"{path}: a cells (pathology) model reads slides and tiles (SVS, NDPI, MRXS, TIFF, PNG, JPEG), "
            "not a CT/MR volume or DICOM series"
        )
    spec = predictor.spec
    tile = int((spec.preprocessing.resize or [256, 256])[0])
    with open_slide(path, mpp=mpp) as slide:
        target = float(spec.preprocessing.mpp or slide.mpp)  # a package without a resolution: the slide's own
        width0, height0 = slide.dimensions
        region = roi or (0, 0, width0, height0)
        x0, y0, w0, h0 = region
        if x0 + w0 > width0 or y0 + h0 > height0:
            raise InputError(
                f"--roi {','.join(map(str, region))}: outside {path.name} ({width0}x{height0} pixels)"
            )
        timing = {"open_s": time.perf_counter() - t0}

        t = time.perf_counter()
        if tissue_mask is not None:
            tissue = read_tissue_mask(tissue_mask, slide)
        elif slide.backend == "image":
            tissue = None  # a tile: all of it
        else:
            tissue = detect_tissue(slide)
        timing["tissue_s"] = time.perf_counter() - t

        scale = slide.mpp / target  # canvas pixels per level-0 pixel
        grid = TileGrid(
            max(1, round(w0 * scale)), max(1, round(h0 * scale)), tile, _overlap_px(predictor.overlap, tile)
        )
        cells = [(c, r) for r in range(grid.rows) for c in range(grid.cols)]
        boxes = {cr: _level0_box(grid, *cr, region, scale) for cr in cells}
        run = [cr for cr in cells if tissue is None or tissue.fraction(*boxes[cr]) > 0]
        want_maps = (slide.backend == "image" or roi is not None) and w0 * h0 <= MAP_LIMIT
        hover = _hover_options(target)
        found, stage = _run_tiles(predictor, slide, grid, run, boxes, target, hover, want_maps, workers)
        threads = stage.pop("threads")
        timing.update(stage)
        facts = {
            "file": path.name,
            "backend": slide.backend,
            "vendor": slide.vendor,
            "dimensions": [width0, height0],
            "levels": len(slide.level_dimensions),
            "mpp": round(slide.mpp, 5),
            "mpp_source": slide.mpp_source,
            "model_mpp": target,
        }
        mpp0 = slide.mpp
    if tissue is None:
        tissue_info = {"source": "all", "area_mm2": round(w0 * h0 * (mpp0 / 1000) ** 2, 6)}
    else:
        tissue_info = {"source": tissue.source, "area_mm2": round(_tissue_area(tissue, region, mpp0), 6)}
    pred = _assemble(found, spec.labels, region, scale, mpp0, grid, want_maps)
    pred.input, pred.tissue = facts, tissue_info
    overlap = grid.overlap
    pred.tiles = {"total": len(cells), "run": len(run), "skipped": len(cells) - len(run), "size": tile}
    pred.tiles["overlap"] = overlap
    pred.tiles["threads"] = threads
    pred.timing = {**timing, "total_s": time.perf_counter() - t0}
    return pred


def _overlap_px(fraction: float, tile: int) -> int:
    return min(tile - 2, 2 * round(tile * fraction / 2))


def _hover_options(mpp: float) -> dict[str, int]:
    """HoVer post-processing settings by resolution (CellViT's: 40x, and 20x at about 0.5 µm/px)."""
    if mpp >= 0.4:
        return {"sobel_ksize": 11, "min_size": 3, "marker_min_size": 3}
    return {}


def _level0_box(grid: TileGrid, col: int, row: int, region, scale: float) -> tuple[int, int, int, int]:
    """A tile's level-0 box ``(x, y, w, h)``."""
    ox, oy = grid.origin(col, row)
    x = region[0] + math.floor(ox / scale)
    y = region[1] + math.floor(oy / scale)
    size = max(1, round(grid.tile / scale))
    return x, y, size, size


def _tissue_area(tissue, region, mpp0: float) -> float:
    x, y, w, h = region
    return tissue.fraction(x, y, w, h) * w * h * (mpp0 / 1000) ** 2


def _read_tile(slide, box, target: float, tile: int) -> np.ndarray:
    """A tile's pixels at the model's resolution, exactly ``tile`` x ``tile`` (white beyond the slide)."""
    img = slide.read(*box, mpp=target)
    if img.shape[0] != tile or img.shape[1] != tile:  # rounding of a non-integer scale: pad or crop a pixel
        out = np.full((tile, tile, 3), 255, np.uint8)
        h, w = min(tile, img.shape[0]), min(tile, img.shape[1])
        out[:h, :w] = img[:h, :w, :3]
        img = out
    return img


def _run_tiles(predictor, slide, grid, run, boxes, target, hover, want_maps, workers):
    """Read, infer and post-process the tiles in ``run``; returns the nuclei per tile and the stage times."""
    spec = predictor.spec
    batch_size = predictor.batch_size
    workers = max(0, cpu_count() - 1) if workers is None else int(workers)
    if len(run) <= batch_size:  # one batch: starting processes costs more than it saves
        workers = 0
    # torch's threads shared out with the workers (never more than it had: a caller's cap stands); the workers
    # get enough tiles in flight to keep busy while the network runs the next batch
    share = ThreadShare(cpu_count(), torch.get_num_threads(), workers, adapt=predictor.device.type == "cpu")
    in_flight = max(4 * workers, 2 * batch_size)
    trim = _malloc_trim()
    pre = spec.preprocessing
    scale = float(pre.intensity.scale or 255.0)
    mean = torch.tensor(pre.mean or [0.0]).view(1, -1, 1, 1) * scale
    std = torch.tensor(pre.std or [1.0]).view(1, -1, 1, 1) * scale
    stage = {"read_s": 0.0, "infer_s": 0.0, "post_s": 0.0}
    found: list[TileNuclei] = []
    readers = cf.ThreadPoolExecutor(max_workers=max(2, min(8, cpu_count())), thread_name_prefix="medvit-read")
    pool = _post_pool(workers)
    pending: deque = deque()
    previous_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(share.threads)
        batches = 0
        reads = deque()
        ahead = 4 * batch_size
        queue = iter(run)

        def refill() -> None:
            while len(reads) < ahead:
                cr = next(queue, None)
                if cr is None:
                    return
                reads.append((cr, readers.submit(_timed, _read_tile, slide, boxes[cr], target, grid.tile)))

        refill()
        while reads:
            t = time.perf_counter()
            batch = []
            while reads and len(batch) < batch_size:
                cr, fut = reads.popleft()
                img, cpu_s = fut.result()
                batch.append((cr, img))
                share.side(cpu_s, 0)
            refill()
            stage["read_s"] += time.perf_counter() - t
            t = time.perf_counter()
            maps = _infer(predictor, np.stack([img for _, img in batch]), mean, std)
            seconds = time.perf_counter() - t
            stage["infer_s"] += seconds
            share.network(seconds, len(batch))
            batches += 1
            if trim is not None and batches % TRIM_EVERY == 0:
                trim(0)
            for (col, row), (binary, hv, types) in zip((cr for cr, _ in batch), maps, strict=True):
                args = (binary, hv, types, grid, col, row)
                if pool is None:
                    t = time.perf_counter()
                    found.append(tile_nuclei(*args, want_masks=want_maps, hover=hover))
                    stage["post_s"] += time.perf_counter() - t
                else:
                    pending.append(pool.submit(_timed, tile_nuclei, *args, want_masks=want_maps, hover=hover))
            t = time.perf_counter()
            while pending and (pending[0].done() or len(pending) > in_flight):
                found.append(_result(pending.popleft(), share))
            stage["post_s"] += time.perf_counter() - t
            if share.threads != torch.get_num_threads():
                torch.set_num_threads(share.threads)
        t = time.perf_counter()
        while pending:
            found.append(_result(pending.popleft(), share))
        stage["post_s"] += time.perf_counter() - t
    finally:
        torch.set_num_threads(previous_threads)
        for fut in pending:
            fut.cancel()
        readers.shutdown(wait=True, cancel_futures=True)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if trim is not None:
            trim(0)
    stage["threads"] = share.summary()
    return found, stage


_MAIN_GUARD = (
    'spawned processes import the main module: guard a script\'s top level with `if __name__ == "__main__":`, '
    "or run post-processing in this process (workers=0, --workers 0)"
)


def _post_pool(workers: int):
    if workers <= 0:
        return None
    if getattr(multiprocessing.current_process(), "_inheriting", False):  # the check spawn itself makes
        raise RuntimeError(f"a post-processing worker ran predict while importing the main module: {_MAIN_GUARD}")
    # spawn: the workers import NumPy, SciPy and scikit-image only, never a forked copy of torch's threads
    # (forkserver would not spare scripts the main guard: its server or its workers import the main module too)
    return cf.ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=mmap_large_allocations
    )


def _result(future: cf.Future, share: ThreadShare) -> TileNuclei:
    try:
        nuclei, cpu_s = future.result()
    except cf.process.BrokenProcessPool as exc:
        raise RuntimeError(f"a post-processing worker process died (out of memory, or {_MAIN_GUARD})") from exc
    share.side(cpu_s, 1)
    return nuclei


def _timed(fn: Callable, *args, **kwargs) -> tuple[Any, float]:
    """``fn(*args, **kwargs)`` and the CPU seconds its thread spent on it (a reader thread's, a worker's)."""
    t = time.thread_time()
    out = fn(*args, **kwargs)
    return out, time.thread_time() - t


class ThreadShare:
    """torch's intra-op threads while a slide runs, out of ``cap`` (the caller's count) on ``cpus`` CPUs.

    The post-processing workers and the tile readers work beside the network; their CPU seconds per tile are
    measured as tiles come back (:meth:`side`), and the network's seconds per tile at each thread count it ran
    with (:meth:`network`, the latest batches weighted most). :attr:`threads` is then the most threads ``k``
    (up to ``cap``) for which ``k`` plus the whole CPUs the side work needs at the tile rate of ``k`` threads
    (:data:`SHARED` of a CPU excepted) fits on ``cpus``; a count not run yet is estimated from the nearest one
    run, as if the network scaled linearly (optimistic, so it is corrected after it runs). It moves after the
    same answer twice in a row, not on one noisy batch. A small network, whose tiles keep the workers busy, so
    gets the CPUs they leave (on two CPUs with one worker: one thread); a realistic one on the CPU, whose
    workers are idle most of the time, gets all of them. It starts at ``cap``: nothing is in post-processing
    yet.

    Without ``adapt`` (the network on a GPU: torch's CPU threads do not run it) or without workers (the
    post-processing then runs between batches, not beside them) it stays at the CPUs the workers leave.
    """

    MIN_TILES = 4  # tiles back from post-processing before the side work's cost is trusted
    # side work up to this many CPUs runs beside all of torch's threads; more gets whole CPUs of its own: torch's
    # OpenMP threads lose far more than the CPU share they give up (they wait on the one slowed, and spin while
    # waiting). Tiny CellVTA on 2 CPUs with 0.3-0.5 CPU of post-processing: 2 threads ran 142 ms a tile, 1 thread
    # ~100 ms (bench_wsi --size 4096)
    SHARED = 0.1

    def __init__(self, cpus: int, cap: int, workers: int, *, adapt: bool = True) -> None:
        self.cpus = max(1, int(cpus))
        self.cap = max(1, min(int(cap), self.cpus))
        self.adapt = bool(adapt) and workers > 0
        self.threads = self.cap if self.adapt else min(self.cap, max(1, self.cpus - workers))
        self.side_cpu, self.side_tiles = 0.0, 0
        self.per_tile: dict[int, float] = {}  # threads -> the network's seconds per tile
        self._next: int | None = None
        self.used: dict[int, int] = {}  # threads -> tiles run with them

    def side(self, cpu_s: float, tiles: int) -> None:
        """Record CPU seconds of side work (a read: ``tiles`` 0; a post-processed tile: 1)."""
        self.side_cpu += float(cpu_s)
        self.side_tiles += int(tiles)

    def network(self, seconds: float, tiles: int) -> None:
        """Record a batch of ``tiles`` the network ran in ``seconds`` at :attr:`threads`; then choose again."""
        k = self.threads
        self.used[k] = self.used.get(k, 0) + tiles
        now = seconds / max(1, tiles)
        self.per_tile[k] = now if k not in self.per_tile else 0.5 * (self.per_tile[k] + now)
        if not self.adapt or self.side_tiles < self.MIN_TILES:
            return
        choice = self.choose()
        if choice != self.threads and choice == self._next:
            self.threads = choice
        self._next = choice

    def choose(self) -> int:
        """The most threads whose tile rate leaves the side work the CPUs it needs (class docstring)."""
        cost = self.side_cpu / max(1, self.side_tiles)
        for k in range(self.cap, 1, -1):
            near = min(self.per_tile, key=lambda j: abs(j - k))
            seconds = self.per_tile.get(k, self.per_tile[near] * near / k)
            if k + max(0, math.ceil(cost / seconds - self.SHARED)) <= self.cpus:
                return k
        return 1

    def summary(self) -> dict[str, Any]:
        """For the manifest: CPUs, cap, tiles run at each thread count, side work CPU ms a tile."""
        return {
            "cpus": self.cpus,
            "cap": self.cap,
            "tiles_by_threads": {str(k): v for k, v in sorted(self.used.items())},
            "side_cpu_ms_per_tile": round(1000 * self.side_cpu / max(1, self.side_tiles), 1),
        }


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (gives the heap's free pages back to the system), or None where there is none
    (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


@torch.inference_mode()
def _infer(predictor, images: np.ndarray, mean: torch.Tensor, std: torch.Tensor):
    """The network on a batch of RGB tiles ``[B, T, T, 3]`` uint8: per tile the nuclei probability
    (float32), HV maps (float32) and pixel types (uint8)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = ((x - mean) / std).to(predictor.device)
    if predictor._layout is not None:  # channels-last convolutions on the CPU, as the Predictor set them up
        x = x.contiguous(memory_format=predictor._layout)
    with autocast(predictor.device, predictor.autocast_dtype):
        out = predictor.network(x)
    binary = _nuclei_probability(out["nuclei_binary_map"].float()).cpu().numpy()
    hv = out["hv_map"].float().cpu().numpy()
    types = _pixel_types(out["nuclei_type_map"].float()).cpu().numpy()
    return [(binary[i], hv[i], types[i]) for i in range(len(images))]


def _nuclei_probability(logits: torch.Tensor) -> torch.Tensor:
    """Channel 1 of the softmax of 2-class logits ``[B, 2, H, W]``, as ``sigmoid(l1 - l0)`` (the same value;
    no exponentials of both channels and sum)."""
    return torch.sigmoid(logits[:, 1] - logits[:, 0])


def _pixel_types(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(1)`` as uint8 for type logits ``[B, C, H, W]`` (the first channel on ties, as argmax),
    by a running maximum over the channels: on the CPU torch's ``argmax`` over the channel dimension is several
    times slower (~10 ms a 256 px tile of 6 types on one thread, this ~2.5 ms). NaN logits aside (argmax picks
    them)."""
    best = logits[:, 0]
    types = torch.zeros(best.shape, dtype=torch.uint8, device=logits.device)
    for c in range(1, logits.shape[1]):
        channel = logits[:, c]
        higher = channel > best
        types.masked_fill_(higher, c)
        best = torch.where(higher, channel, best)
    return types


def _drop_twins(found: list[TileNuclei]) -> list[TileNuclei]:
    """Two tiles may each see a nucleus on their shared core edge a pixel differently (post-processing
    normalises each tile on its own), so that each puts the centroid in its own core: of two nuclei from
    different tiles whose centroids are closer than :data:`TWIN_DISTANCE` (no two real nuclei are), keep the
    larger."""
    from scipy.spatial import cKDTree  # lazy: SciPy, as the post-processing

    sizes = [len(f) for f in found]
    if sum(sizes) < 2:
        return found
    cents = np.concatenate([f.centroids for f in found if len(f)])
    areas = np.concatenate([f.areas for f in found if len(f)])
    tile_of = np.repeat(np.arange(len(found)), sizes)
    drop = set()
    for a, b in sorted(cKDTree(cents).query_pairs(TWIN_DISTANCE)):
        if tile_of[a] != tile_of[b] and a not in drop and b not in drop:
            drop.add(b if areas[a] >= areas[b] else a)
    if not drop:
        return found
    out, start = [], 0
    for f, n in zip(found, sizes, strict=True):
        keep = [i for i in range(n) if start + i not in drop]
        start += n
        out.append(
            TileNuclei(
                centroids=f.centroids[keep],
                types=f.types[keep],
                type_probs=f.type_probs[keep],
                areas=f.areas[keep],
                contours=f.contours.take(keep),
                masks=None if f.masks is None else [f.masks[i] for i in keep],
            )
        )
    return out


def _assemble(found, labels, region, scale, mpp0, grid, want_maps) -> CellsPrediction:
    """The tiles' nuclei in level-0 coordinates (and the instance map of tiles and regions)."""
    found = _drop_twins(found)
    rx, ry, rw, rh = region
    offset = np.array([rx, ry], dtype=np.float64)
    cents = [f.centroids for f in found if len(f)]
    # a canvas pixel is 1/scale level-0 pixels a side; centroids of pixel centres: (i + 0.5) / scale - 0.5
    shift = offset + (0.5 / scale - 0.5)  # the offset alone at scale 1
    centroids = np.concatenate(cents) / scale + shift if cents else np.zeros((0, 2))
    types = np.concatenate([f.types for f in found]) if found else np.zeros(0, np.int32)
    probs = np.concatenate([f.type_probs for f in found]) if found else np.zeros(0, np.float32)
    areas = np.concatenate([f.areas for f in found]) if found else np.zeros(0, np.int64)
    contours = Rings.concat([f.contours for f in found]).mapped(scale, shift)
    pred = CellsPrediction(
        labels=dict(labels),
        centroids=centroids,
        types=types.astype(np.int32),
        type_probs=probs.astype(np.float32),
        areas_um2=areas.astype(np.float64) * (mpp0 / scale) ** 2,
        contours=contours,
        mpp=mpp0,
        region=tuple(int(v) for v in region),
    )
    if want_maps:
        canvas = np.zeros((grid.height, grid.width), np.int32)
        n = 0
        for f in found:
            for x, y, mask in f.masks or []:
                n += 1
                h, w = min(mask.shape[0], grid.height - y), min(mask.shape[1], grid.width - x)
                view = canvas[y : y + h, x : x + w]
                view[mask[:h, :w]] = n
        if canvas.shape != (rh, rw):  # back onto the region's level-0 grid (nearest)
            rows = np.minimum((np.arange(rh) * scale).astype(np.int64), grid.height - 1)
            cols = np.minimum((np.arange(rw) * scale).astype(np.int64), grid.width - 1)
            canvas = canvas[np.ix_(rows, cols)]
        pred.instances = canvas
    return pred
