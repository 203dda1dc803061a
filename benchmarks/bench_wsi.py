"""Nuclei over a whole slide: medvit's ``Predictor.predict(slide)`` against a pipeline built from MONAI's own
pathology parts, on a synthetic H&E-like slide whose nuclei are known.

The slide (:func:`medvit.data.synthetic_slide.write_synthetic_slide`: a pyramidal JPEG-tiled TIFF OpenSlide
opens, 0.25 µm/px, tissue on about half of it, 8000 nuclei per mm^2 of tissue) is written to a temporary folder,
with a second one twice the side (four times the area) for medvit's memory-flatness check (``--no-large``
skips it). The cells package is a CellVTA with random weights: ``tiny`` (ViT embed 32, depth 4, narrow head;
the pipeline's own cost shows) or ``small`` (DINOv3 ViT-S/16 dims: embed 384, depth 12, 6 heads, the CellVTA
head at its default widths; a realistic network cost), 256 px tiles at 0.25 µm/px.

A random network finds no nuclei, so both pipelines run the same wrapper (:class:`OracleNet`): it runs the real
CellVTA on each batch (its cost is paid; its maps are dropped), then returns *oracle* maps computed from the
tile's own pixels: nuclei are the pixels whose de-normalised mean RGB is below 150 (the pink tissue is about 195,
the glass 244, nuclei 45-110), one instance per ``scipy.ndimage.label`` component, the HV maps of each
(``medvit.postprocess.hv_maps``), and the type of each pixel from the nearest ``NUCLEUS_TYPES`` colour; as
logits (+-8) like the real head's.

Each pipeline runs in its own child process (``--_run medvit|reference|network``) so that peak memory is its
own: the peak RSS of the child's main process (VmHWM), and the peak of the summed PSS of it and its
descendants (medvit's post-processing workers), sampled every 50 ms. Each run also prints the CPU the rest of
the machine used meanwhile (``others_cores``): on a shared machine a run that others competed with is slower
for that alone, and torch's OpenMP threads suffer most (use ``--threads 1`` there).

* **medvit**: ``Predictor(package, device="cpu", precision=--precision, batch_size=--batch-size,
  workers=--workers)`` with ``predictor.network`` replaced by the wrapper, then ``predict(slide)``; timed
  from the call to its return (the package load not included; it is printed apart).
* **reference** (MONAI): ``monai.data.WSIReader(backend="openslide")`` reads regions at the level whose mpp
  ``get_valid_level`` finds for the package's; the tissue mask is medvit's own ``detect_tissue`` (so both skip
  the same glass; timed in the reference too), a region without tissue is not read. Each region is
  ``--ref-windows`` x ``--ref-windows`` windows of 256 px at medvit's stride (192 px, overlap 64 px):
  ``SlidingWindowHoVerNetInferer`` runs the wrapper over it, the wrapper's maps cropped to each window's centre
  (32 px off each side, HoVer-Net's "valid" output that the inferer pads back and blends with a zero weight
  there), so every map pixel comes from exactly one window with 32 px of real context. Windows without any
  tissue pixel (HSV saturation above 0.15) are not run (``--ref-all-windows`` runs them, as
  ``sliding_window_inference`` alone would). ``HoVerNetInstanceMapPostProcessing`` (softmax, Sobel 21 as
  medvit's at 40x, min size 10, marker threshold 0.4, radius 2) and ``HoVerNetNuclearTypePostProcessing``
  (softmax, no type map) post-process each region's maps. Regions overlap by 32 px of map on each side; a
  nucleus belongs to the region whose core (the map less that margin) holds its centroid, so nothing is
  reported twice (the margin is wider than any nucleus' radius: those with a centroid in the core are whole).
  MONAI's own centroid (``GenerateInstanceCentroid``) is an integer and adds the bounding box's (column, row)
  to the skimage (row, column) centroid, so it is right only for symmetric nuclei: the centroid used is the
  mean of the instance's pixels. Precision fp32 (plain MONAI; ``--ref-precision auto`` for bf16 autocast).
* **network alone**: the same Predictor's network, precision, layout and batch size over exactly the tiles
  medvit ran (its grid, its tissue mask), tiles read and normalised untimed; the CellVTA forward and the
  oracle timed apart. Its memory is sampled as the other two pipelines' is (the sampler's reads of
  ``/proc/<pid>/smaps_rollup`` cost a little CPU: every pipeline pays it).

The pipelines alternate over ``--repeats`` and the minimum is quoted. Both pipelines' nuclei are matched to the
slide's (centroids < 3 px apart at level 0, one-to-one, closest first) and to each other.

Threads: each child starts with ``--threads`` torch threads (medvit's with ``--medvit-threads`` when given).
medvit's predict shares the CPUs out while the slide runs (``medvit.inference.slides.ThreadShare``: the most
threads that leave its post-processing workers the CPUs they are measured to use: one on two CPUs with the tiny
network, both with the small one), so ``--medvit-threads`` is a cap on that, not a setting. What medvit does by
itself that was measured here first (as monkeypatches, since removed): threads so shared out, up to
``max(4 x workers, 2 x batch)`` tiles in post-processing at once, pixel types without torch's slow
``argmax(1)``, outlines without scikit-image's ``approximate_polygon``, and ``malloc_trim`` every 4 batches
(glibc's heap otherwise grows over the slide); together 0.45x -> 0.33x the reference's time, memory flat.

    python benchmarks/bench_wsi.py                                          # 20000^2, tiny network, 3 repeats
    python benchmarks/bench_wsi.py --size 4096 --no-large --repeats 1       # a quick look
    python benchmarks/bench_wsi.py --size 5120 --threads 1                  # ~10 min on 2 shared cores
    python benchmarks/bench_wsi.py --network small --size 1536 --no-large --repeats 1 --threads 1

Targets: medvit / reference time <= 0.5, F1 medvit vs reference >= 0.99, medvit peak RSS <= the
reference's, medvit's peak RSS on the 4x slide <= 1.2x the 1x slide's, medvit end to end / network alone
<= 1.15. Not a test: run it by hand on the machine you care about.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

TILE = 256
MPP = 0.25
DARK = 150.0  # mean RGB below this is nucleus (tissue ~195, glass 244, nuclei 45-110)
LOGIT = 8.0
TISSUE_SATURATION = 0.15  # reference: a window with a pixel above this HSV saturation has tissue
MATCH_PX = 3.0
# reference region side in windows. MONAI's post-processing costs ~10 ms a nucleus plus a cost a region that
# grows with its area, while smaller regions overlap more (more windows): tiny, the fastest of 3, 5 and 10 on a
# 4096^2 slide (217 / 275 / 432 s on a loaded machine); small, 10 (its windows, 1-2 s each, outweigh the rest)
REF_WINDOWS = {"tiny": 3, "small": 10}
LABELS = {0: "background", 1: "large_nucleus", 2: "small_nucleus", 3: "pale_nucleus"}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


# -- the package and the oracle wrapper -----------------------------------------------------------------
def cells_spec(network: str, batch: int) -> dict:
    """A cells package spec: ``tiny`` or ``small`` CellVTA, 256 px tiles at 0.25 µm/px."""
    if network == "tiny":
        backbone = dict(
            name="vit_tiny_patch16", img_size=[TILE, TILE], options=dict(embed_dim=32, depth=4, num_heads=2)
        )
        head = dict(num_tissues=0, deform_heads=2, deform_points=2, spm_width=8, decoder_width=8)
    else:  # ViT-S/16 dims (DINOv3's: embed 384, depth 12, 6 heads), the head at its default widths
        backbone = dict(name="dinov3_vits16", img_size=[TILE, TILE], options={})
        head = dict(num_tissues=0)
    return dict(
        name=f"bench_wsi_{network}",
        task="cells",
        labels=LABELS,
        model=dict(backbone=backbone, head=dict(name="cellvta", options=head), num_classes=len(LABELS)),
        preprocessing=dict(
            spatial_dims=2,
            in_channels=3,
            intensity=dict(kind="scale", scale=255),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            resize=[TILE, TILE],
            mpp=MPP,
        ),
        inference=dict(mode="whole", sw_batch_size=batch),
    )


def _norm(spec):
    """The package's normalisation in 0..255 units: ``(mean, std)`` as ``[1, C, 1, 1]`` tensors."""
    import torch

    pre = spec.preprocessing
    scale = float(pre.intensity.scale or 255.0)
    mean = torch.tensor(pre.mean or [0.0]).view(1, -1, 1, 1) * scale
    std = torch.tensor(pre.std or [1.0]).view(1, -1, 1, 1) * scale
    return mean, std


def oracle_maps(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maps a perfect network would give for tiles ``rgb`` ``[B, 3, H, W]`` (0..255 floats): nuclei logits
    ``[B, 2, H, W]``, HV ``[B, 2, H, W]``, type logits ``[B, T, H, W]``."""
    from scipy import ndimage

    from medvit.data.synthetic import NUCLEUS_TYPES
    from medvit.postprocess import hv_maps

    b, _, h, w = rgb.shape
    dark = rgb.mean(1) < DARK
    sign = np.where(dark, LOGIT, -LOGIT).astype(np.float32)
    binary = np.stack([-sign, sign], 1)
    types = np.full((b, len(LABELS), h, w), -LOGIT, np.float32)
    pixel_type = np.zeros((b, h, w), np.int64)
    if dark.any():
        keys = np.array(sorted(NUCLEUS_TYPES))
        colours = np.array([NUCLEUS_TYPES[k][0] for k in keys], np.float32)
        px = rgb.transpose(0, 2, 3, 1)[dark]
        nearest = ((px[:, None, :] - colours[None]) ** 2).sum(-1).argmin(1)
        pixel_type[dark] = keys[nearest]
    for t in range(len(LABELS)):
        types[:, t][pixel_type == t] = LOGIT
    hv = np.zeros((b, 2, h, w), np.float32)
    for i in range(b):
        lab, _ = ndimage.label(dark[i])
        for k, sl in enumerate(ndimage.find_objects(lab), start=1):
            if sl is None:
                continue
            sub = lab[sl] == k
            view = hv[i][:, sl[0], sl[1]]
            view[:, sub] = hv_maps(sub.astype(np.int32))[:, sub]
    return binary, hv, types


def _oracle_net_class():
    import torch

    class OracleNet(torch.nn.Module):
        """The real network (run, its output dropped) followed by the oracle maps of the input tiles."""

        def __init__(self, net: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
            super().__init__()
            self.net = net
            self.mean, self.std = mean, std

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            self.net(x)  # the cost of the real network is the point; its random-weight maps are not
            return self.oracle(x)

        def oracle(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            rgb = (x.detach().float().cpu() * self.std + self.mean).contiguous().numpy()
            binary, hv, types = oracle_maps(rgb)
            return {
                "nuclei_binary_map": torch.from_numpy(binary).to(x.device),
                "hv_map": torch.from_numpy(hv).to(x.device),
                "nuclei_type_map": torch.from_numpy(types).to(x.device),
            }

    return OracleNet


# -- memory --------------------------------------------------------------------------------------------
def _status_kb(pid: int | str, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _pss_kb(pid: int) -> int:
    """Proportional set size: shared pages split between their sharers (a child forked and not yet exec'd
    shares all of its parent's pages, which RSS would count twice)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return _status_kb(pid, "VmRSS:")


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                kids = [int(c) for c in task.read_text().split()]
            except (OSError, ValueError):
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


class TreePeak:
    """Peak of this process's memory plus its descendants' (sum of PSS), sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.05) -> None:
        self.peak_kb = 0
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            total = sum(_pss_kb(p) for p in [me, *_descendants(me)])
            self.peak_kb = max(self.peak_kb, total)
            self._stop.wait(self._interval)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kb / 1024


class CpuShare:
    """CPU the machine spent during a stretch beyond this process's own (and its reaped children's), in cores:
    on a shared machine, how much others competed for it (a run where they did is slower for that alone)."""

    def __init__(self) -> None:
        self._t, self._busy, self._own = time.perf_counter(), self._machine_busy(), self._own_cpu()

    @staticmethod
    def _machine_busy() -> float:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait

    @staticmethod
    def _own_cpu() -> float:
        import resource

        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def stop(self) -> dict[str, float]:
        wall = max(1e-9, time.perf_counter() - self._t)
        own = self._own_cpu() - self._own
        others = max(0.0, self._machine_busy() - self._busy - own)
        return {"own_cores": round(own / wall, 2), "others_cores": round(others / wall, 2)}


def _rss_mb() -> float:
    return _status_kb("self", "VmRSS:") / 1024


def _hwm_mb() -> float:
    return _status_kb("self", "VmHWM:") / 1024


# -- children ------------------------------------------------------------------------------------------
def _predictor(cfg: dict):
    from medvit.inference import Predictor

    predictor = Predictor(
        cfg["package"], device="cpu", precision=cfg["precision"], batch_size=cfg["batch"], workers=cfg["workers"]
    )
    mean, std = _norm(predictor.spec)
    predictor.network = _oracle_net_class()(predictor.network, mean, std)
    return predictor


def child_medvit(cfg: dict) -> dict:
    import torch

    torch.set_num_threads(cfg.get("medvit_threads") or cfg["threads"])  # predict lowers it to CPUs - workers
    t0 = time.perf_counter()
    predictor = _predictor(cfg)
    load = time.perf_counter() - t0
    base = _rss_mb()
    tree, cpu = TreePeak(), CpuShare()
    t0 = time.perf_counter()
    pred = predictor.predict(cfg["slide"])
    seconds = time.perf_counter() - t0
    tree_peak = tree.stop()
    cpu_share = cpu.stop()
    np.savez(cfg["out"], centroids=pred.centroids, types=pred.types)
    return {
        "seconds": seconds,
        "load_s": load,
        "peak_mb": _hwm_mb(),
        "tree_peak_mb": tree_peak,
        "base_mb": base,
        "nuclei": len(pred),
        "timing": {k: round(v, 3) for k, v in pred.timing.items()},
        "tiles": pred.tiles,
        "precision": predictor.precision,
        "cpu": cpu_share,
    }


def _medvit_tiles(predictor, slide_path: str):
    """The tiles medvit runs on this slide (its grid, its tissue mask): ``(slide, grid, boxes, run, target)``."""
    from medvit.inference import slides
    from medvit.io.wsi import detect_tissue, open_slide
    from medvit.postprocess.tiles import TileGrid

    slide = open_slide(slide_path)
    spec = predictor.spec
    tile = int(spec.preprocessing.resize[0])
    target = float(spec.preprocessing.mpp or slide.mpp)
    tissue = detect_tissue(slide)
    w0, h0 = slide.dimensions
    scale = slide.mpp / target
    grid = TileGrid(
        max(1, round(w0 * scale)), max(1, round(h0 * scale)), tile, slides._overlap_px(predictor.overlap, tile)
    )
    region = (0, 0, w0, h0)
    cells = [(c, r) for r in range(grid.rows) for c in range(grid.cols)]
    boxes = {cr: slides._level0_box(grid, *cr, region, scale) for cr in cells}
    run = [cr for cr in cells if tissue.fraction(*boxes[cr]) > 0]
    return slide, grid, boxes, run, target


def child_network(cfg: dict) -> dict:
    """The network alone on the tiles medvit runs: reads and normalisation untimed."""
    import torch

    from medvit.device import autocast
    from medvit.inference import slides

    torch.set_num_threads(cfg["threads"])
    predictor = _predictor(cfg)
    wrapper = predictor.network
    mean, std = _norm(predictor.spec)
    slide, grid, boxes, run, target = _medvit_tiles(predictor, cfg["slide"])
    net_s = oracle_s = 0.0
    tree, cpu = TreePeak(), CpuShare()  # sampled as in the other children: the ratio compares like with like
    with slide:
        for start in range(0, len(run), predictor.batch_size):
            images = [
                slides._read_tile(slide, boxes[cr], target, grid.tile)
                for cr in run[start : start + predictor.batch_size]
            ]
            x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
            x = (x - mean) / std
            if predictor._layout is not None:
                x = x.contiguous(memory_format=predictor._layout)
            with torch.inference_mode(), autocast(predictor.device, predictor.autocast_dtype):
                t = time.perf_counter()
                wrapper.net(x)
                t1 = time.perf_counter()
                wrapper.oracle(x)
                t2 = time.perf_counter()
            net_s += t1 - t
            oracle_s += t2 - t1
    tree_peak, share = tree.stop(), cpu.stop()
    return {
        "net_s": net_s,
        "oracle_s": oracle_s,
        "seconds": net_s + oracle_s,
        "tiles": len(run),
        "cpu": share,
        "peak_mb": _hwm_mb(),
        "tree_peak_mb": tree_peak,
    }


def child_reference(cfg: dict) -> dict:
    """The MONAI pipeline (module docstring)."""
    import torch
    from monai.apps.pathology.inferers import SlidingWindowHoVerNetInferer
    from monai.apps.pathology.transforms import (
        HoVerNetInstanceMapPostProcessing,
        HoVerNetNuclearTypePostProcessing,
    )
    from monai.data import WSIReader

    from medvit.device import autocast, resolve_precision
    from medvit.inference import slides
    from medvit.io.wsi import detect_tissue, open_slide
    from medvit.package import load_package

    torch.set_num_threads(cfg["threads"])
    t0 = time.perf_counter()
    package = load_package(cfg["package"])
    spec = package.spec
    mean, std = _norm(spec)
    wrapper = _oracle_net_class()(package.build().eval(), mean, std)
    load = time.perf_counter() - t0
    base = _rss_mb()
    tree, cpu_share = TreePeak(), CpuShare()
    cpu = torch.device("cpu")
    amp = resolve_precision(cfg["ref_precision"], cpu)
    tile = int(spec.preprocessing.resize[0])
    overlap = slides._overlap_px(slides.DEFAULT_OVERLAP, tile)  # medvit's: 64 px on 256 px tiles
    crop = overlap // 2  # each window's valid centre: 32 px off each side
    stride = tile - overlap
    k = int(cfg["ref_windows"])
    maps = k * stride  # map side of a region
    core = maps - 2 * crop  # the part of it the region reports
    read = maps + 2 * crop  # pixels read: the map plus the windows' outer context
    skip_glass = not cfg["ref_all_windows"]
    stage = {"open_s": 0.0, "tissue_s": 0.0, "read_s": 0.0, "infer_s": 0.0, "post_s": 0.0}
    counts = {"regions": 0, "regions_run": 0, "windows": 0, "windows_run": 0}

    def predictor(windows: torch.Tensor) -> dict[str, torch.Tensor]:
        n = windows.shape[0]
        counts["windows"] += n
        if skip_glass:
            rgb = windows * std + mean
            hi, lo = rgb.amax(1), rgb.amin(1)
            sat = (hi - lo) / hi.clamp_min(1e-6)
            keep = (sat > TISSUE_SATURATION).flatten(1).any(1)
        else:
            keep = torch.ones(n, dtype=torch.bool)
        c = tile - 2 * crop
        out = {
            "nuclei_binary_map": torch.tensor([LOGIT, -LOGIT]).view(1, 2, 1, 1).expand(n, 2, c, c).clone(),
            "hv_map": torch.zeros(n, 2, c, c),
            "nuclei_type_map": torch.full((n, len(LABELS), c, c), -LOGIT),
        }
        out["nuclei_type_map"][:, 0] = LOGIT
        if keep.any():
            counts["windows_run"] += int(keep.sum())
            with autocast(cpu, amp):
                run = wrapper(windows[keep])
            for key, v in run.items():
                out[key][keep] = v[:, :, crop : tile - crop, crop : tile - crop].float()
        return out

    inferer = SlidingWindowHoVerNetInferer(
        roi_size=(tile, tile), sw_batch_size=cfg["batch"], overlap=overlap / tile, mode="constant"
    )
    inst_post = HoVerNetInstanceMapPostProcessing(
        activation="softmax", min_object_size=10, sobel_kernel_size=21, marker_threshold=0.4, marker_radius=2
    )
    type_post = HoVerNetNuclearTypePostProcessing(activation="softmax", return_type_map=False)

    t = time.perf_counter()
    reader = WSIReader(backend="openslide")
    wsi = reader.read(cfg["slide"])
    level = reader.get_valid_level(wsi, None, float(spec.preprocessing.mpp), None)
    ds = float(reader.get_downsample_ratio(wsi, level))
    lh, lw = reader.get_size(wsi, level)
    stage["open_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with open_slide(cfg["slide"]) as slide:
        tissue = detect_tissue(slide)
    stage["tissue_s"] = time.perf_counter() - t

    cents, types = [], []
    for ry in range(math.ceil(lh / core)):
        for rx in range(math.ceil(lw / core)):
            counts["regions"] += 1
            cx0, cy0 = rx * core, ry * core  # the core's top left, level pixels
            x0, y0 = cx0 - 2 * crop, cy0 - 2 * crop  # the read's
            box = (max(0, x0), max(0, y0), min(lw, x0 + read), min(lh, y0 + read))
            if tissue.fraction(box[0] * ds, box[1] * ds, (box[2] - box[0]) * ds, (box[3] - box[1]) * ds) <= 0:
                continue
            counts["regions_run"] += 1
            t = time.perf_counter()
            patch, _ = reader.get_data(
                wsi, location=(round(box[1] * ds), round(box[0] * ds)), size=(box[3] - box[1], box[2] - box[0]),
                level=level,
            )  # fmt: skip
            canvas = np.full((3, read, read), 255, np.uint8)  # white beyond the slide
            canvas[:, box[1] - y0 : box[3] - y0, box[0] - x0 : box[2] - x0] = patch
            x = (torch.from_numpy(canvas).float()[None] - mean) / std
            stage["read_s"] += time.perf_counter() - t
            t = time.perf_counter()
            with torch.inference_mode():
                out = inferer(x, predictor)
            binary, hv, type_map = (
                out[key][0, :, crop : crop + maps, crop : crop + maps].float()
                for key in ("nuclei_binary_map", "hv_map", "nuclei_type_map")
            )
            stage["infer_s"] += time.perf_counter() - t
            t = time.perf_counter()
            if bool((binary[1] > binary[0]).any()):
                info, inst = inst_post(binary, hv)
                info, _ = type_post(type_map, info, inst)
                inst_np = np.asarray(inst)[0]
                for i, v in info.items():
                    r0, r1, c0, c1 = (int(a) for a in np.asarray(v["bounding_box"]).ravel()[:4])
                    ys, xs = np.nonzero(inst_np[r0:r1, c0:c1] == i)
                    mx, my = xs.mean() + c0, ys.mean() + r0  # map pixels
                    if crop <= mx < crop + core and crop <= my < crop + core:
                        lx, ly = x0 + crop + mx, y0 + crop + my  # level pixels
                        cents.append(((lx + 0.5) * ds - 0.5, (ly + 0.5) * ds - 0.5))
                        types.append(int(v["type"]))
            stage["post_s"] += time.perf_counter() - t
    seconds = time.perf_counter() - t0 - load
    tree_peak = tree.stop()
    np.savez(cfg["out"], centroids=np.asarray(cents, np.float64).reshape(-1, 2), types=np.asarray(types, np.int32))
    return {
        "seconds": seconds,
        "load_s": load,
        "peak_mb": _hwm_mb(),
        "tree_peak_mb": tree_peak,
        "base_mb": base,
        "nuclei": len(types),
        "timing": {**{k: round(v, 3) for k, v in stage.items()}, "total_s": round(seconds, 3)},
        "counts": counts,
        "level": level,
        "region": {"windows": k, "map": maps, "core": core, "read": read},
        "cpu": cpu_share.stop(),
    }


CHILDREN = {"medvit": child_medvit, "reference": child_reference, "network": child_network}


def run_child(kind: str, cfg: dict) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [sys.executable, __file__, "--_run", kind, json.dumps(cfg)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if out.returncode != 0:
        raise SystemExit(f"{kind} child failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- comparison ----------------------------------------------------------------------------------------
def match(pred: np.ndarray, ref: np.ndarray, tol: float = MATCH_PX) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairs ``(i, j)`` of ``pred[i]`` and ``ref[j]`` closer than ``tol``, closest first."""
    from scipy.spatial import cKDTree

    if not len(pred) or not len(ref):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = cKDTree(pred).sparse_distance_matrix(cKDTree(ref), tol, output_type="ndarray")
    pairs = pairs[pairs["v"] < tol]
    pairs = pairs[np.argsort(pairs["v"], kind="stable")]
    used_i, used_j, ii, jj = set(), set(), [], []
    for i, j in zip(pairs["i"].tolist(), pairs["j"].tolist(), strict=True):
        if i not in used_i and j not in used_j:
            used_i.add(i)
            used_j.add(j)
            ii.append(i)
            jj.append(j)
    return np.asarray(ii, np.int64), np.asarray(jj, np.int64)


def scores(pred: dict, ref: dict) -> dict:
    """Precision, recall, F1 of ``pred`` against ``ref`` (centroids, types) and type agreement of the pairs."""
    i, j = match(pred["centroids"], ref["centroids"])
    tp, n_pred, n_ref = len(i), len(pred["centroids"]), len(ref["centroids"])
    p = tp / n_pred if n_pred else 1.0
    r = tp / n_ref if n_ref else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    same_type = float(np.mean(pred["types"][i] == ref["types"][j])) if tp else float("nan")
    return {"precision": p, "recall": r, "f1": f1, "type_agreement": same_type, "matched": tp}


def duplicates(centroids: np.ndarray, tol: float = MATCH_PX) -> int:
    """Pairs of nuclei of one pipeline closer than ``tol`` (a nucleus reported twice)."""
    from scipy.spatial import cKDTree

    return len(cKDTree(centroids).query_pairs(tol)) if len(centroids) > 1 else 0


def _load(path: Path) -> dict:
    with np.load(path) as z:
        return {"centroids": z["centroids"].reshape(-1, 2), "types": z["types"]}


# -- main ----------------------------------------------------------------------------------------------
def write_slide(path: Path, side: tuple[int, int], args) -> tuple[dict, float]:
    from medvit.data.synthetic_slide import write_synthetic_slide

    levels = max(3, 1 + math.ceil(math.log2(max(side) / 1024)))  # down to ~1000 px, as scanners do
    t = time.perf_counter()
    nuclei = write_synthetic_slide(
        path, size=side, mpp=MPP, tile=256, levels=levels, seed=args.seed, tissue_fraction=args.tissue
    )
    seconds = time.perf_counter() - t
    truth = {
        "centroids": np.array([(n.x, n.y) for n in nuclei], np.float64).reshape(-1, 2),
        "types": np.array([n.type for n in nuclei], np.int32),
    }
    return truth, seconds


def _min(runs: list[dict], key: str = "seconds") -> float:
    return min(r[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs="+", default=[20000], help="slide side, or width height (px)")
    parser.add_argument("--no-large", action="store_true", help="skip medvit on the 2x-side (4x area) slide")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each pipeline")
    parser.add_argument("--network", choices=["tiny", "small", "both"], default="tiny")
    parser.add_argument("--precision", choices=["auto", "32"], default="auto", help="medvit (and network alone)")
    parser.add_argument("--ref-precision", choices=["32", "auto"], default="32", help="reference (MONAI)")
    parser.add_argument("--workers", type=int, default=None, help="medvit post-processing processes")
    parser.add_argument("--batch-size", type=int, default=8, help="tiles (windows) per forward pass, both")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--medvit-threads",
        type=int,
        default=None,
        help="medvit's own (default: --threads; predict lowers it to CPUs - workers)",
    )
    parser.add_argument(
        "--ref-windows", type=int, default=None, help="reference region side, windows (default: 3 tiny, 10 small)"
    )
    parser.add_argument("--ref-all-windows", action="store_true", help="reference runs glass windows too")
    parser.add_argument("--tissue", type=float, default=0.5, help="tissue fraction of the slide")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (slides, packages)")
    parser.add_argument("--_run", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._run:
        kind, cfg = args._run
        print(json.dumps(CHILDREN[kind](json.loads(cfg))))
        return

    import torch

    from medvit.device import cpu_has_bf16
    from medvit.models import build_model
    from medvit.package import PackageSpec, save_package

    side = tuple(args.size * 2 if len(args.size) == 1 else args.size[:2])
    threads = args.threads or torch.get_num_threads()
    networks = ["tiny", "small"] if args.network == "both" else [args.network]
    work = Path(tempfile.mkdtemp(prefix="bench_wsi."))
    try:
        print(
            f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"cpu bf16 {cpu_has_bf16()}, threads {threads}, batch {args.batch_size}, repeats {args.repeats}",
            flush=True,
        )
        slide = work / "slide.tif"
        truth, write_s = write_slide(slide, side, args)
        print(
            f"slide {side[0]}x{side[1]} at {MPP} µm/px: {len(truth['types'])} nuclei, "
            f"{slide.stat().st_size / 2**20:.0f} MiB, written in {write_s:.0f} s",
            flush=True,
        )
        packages = {}
        for name in networks:
            spec = PackageSpec.model_validate(cells_spec(name, args.batch_size))
            torch.manual_seed(0)
            packages[name] = str(save_package(build_model(spec.model), spec, work / f"package_{name}"))
        results: dict[str, dict] = {}
        for name in networks:
            base = {
                "package": packages[name],
                "slide": str(slide),
                "threads": threads,
                "batch": args.batch_size,
                "precision": args.precision,
                "workers": args.workers,
                "ref_precision": args.ref_precision,
                "ref_windows": args.ref_windows or REF_WINDOWS[name],
                "ref_all_windows": args.ref_all_windows,
                "medvit_threads": args.medvit_threads,
            }
            runs: dict[str, list[dict]] = {"medvit": [], "reference": [], "network": []}
            for i in range(args.repeats):
                order = ["reference", "medvit", "network"] if i % 2 == 0 else ["medvit", "network", "reference"]
                for kind in order:
                    out = work / f"{name}_{kind}_{i}.npz"
                    r = run_child(kind, {**base, "out": str(out)})
                    r["out"] = str(out)
                    runs[kind].append(r)
                    extra = r.get("timing") or {"net_s": round(r["net_s"], 2), "oracle_s": round(r["oracle_s"], 2)}
                    print(f"  {name} {kind} run {i + 1}: {r['seconds']:.1f} s {extra} cpu {r['cpu']}", flush=True)
            results[name] = {"runs": runs}
        large = None
        if not args.no_large:
            big = work / "slide_large.tif"
            big_side = (2 * side[0], 2 * side[1])
            big_truth, big_write = write_slide(big, big_side, args)
            print(
                f"large slide {big_side[0]}x{big_side[1]}: {len(big_truth['types'])} nuclei, "
                f"{big.stat().st_size / 2**20:.0f} MiB, written in {big_write:.0f} s",
                flush=True,
            )
            name = networks[0]
            cfg = {**base, "package": packages[name], "slide": str(big), "out": str(work / "large.npz")}
            large = run_child("medvit", cfg)
            large["network"] = name
            large["f1_truth"] = scores(_load(work / "large.npz"), big_truth)["f1"]
            print(f"  {name} medvit on the large slide: {large['seconds']:.1f} s {large['timing']}", flush=True)
        report(results, truth, large, args)
        if args.json:
            Path(args.json).write_text(
                json.dumps({"args": vars(args), "results": results, "large": large}, indent=2, default=str)
            )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(results: dict, truth: dict, large: dict | None, args) -> None:
    for name, res in results.items():
        runs = res["runs"]
        m_runs, r_runs, n_runs = runs["medvit"], runs["reference"], runs["network"]
        m, r = min(m_runs, key=lambda x: x["seconds"]), min(r_runs, key=lambda x: x["seconds"])
        ours, ref = _load(Path(m["out"])), _load(Path(r["out"]))
        s_m, s_r, s_mr = scores(ours, truth), scores(ref, truth), scores(ours, ref)
        net = min(n_runs, key=lambda x: x["seconds"])
        t_m, t_r = m["seconds"], r["seconds"]
        peak_m = max(x["tree_peak_mb"] for x in m_runs)
        peak_r = max(x["tree_peak_mb"] for x in r_runs)
        main_m = max(x["peak_mb"] for x in m_runs)
        main_r = max(x["peak_mb"] for x in r_runs)
        tiles = m["tiles"]
        print()
        ref_precision = "fp32" if args.ref_precision == "32" else "auto"
        print(f"== {name} network, {m['precision']} (medvit) / {ref_precision} (reference), "
              f"min of {len(m_runs)} ==")  # fmt: skip
        print(f"{'':<28} {'min s':>8} {'median s':>9} {'peak RSS MB':>12} {'tree PSS MB':>13} {'nuclei':>8} "
              f"{'P':>6} {'R':>6} {'F1':>6} {'dups':>5}")  # fmt: skip
        for label, best, rs, sc, dups in (
            ("medvit predict", m, m_runs, s_m, duplicates(ours["centroids"])),
            ("reference (MONAI parts)", r, r_runs, s_r, duplicates(ref["centroids"])),
        ):
            med = float(np.median([x["seconds"] for x in rs]))
            print(f"{label:<28} {best['seconds']:>8.1f} {med:>9.1f} {max(x['peak_mb'] for x in rs):>12.0f} "
                  f"{max(x['tree_peak_mb'] for x in rs):>13.0f} {best['nuclei']:>8} {sc['precision']:>6.4f} "
                  f"{sc['recall']:>6.4f} {sc['f1']:>6.4f} {dups:>5}")  # fmt: skip
        print(f"{'network alone (medvit tiles)':<28} {net['seconds']:>8.1f} {'':>9} {net['peak_mb']:>12.0f} "
              f"{net['tree_peak_mb']:>13.0f} {'':>8}   "
              f"CellVTA {net['net_s']:.1f} s + oracle {net['oracle_s']:.1f} s, {net['tiles']} tiles")  # fmt: skip
        print(f"truth: {len(truth['types'])} nuclei")
        print(f"medvit stages (best run): {m['timing']}; tiles {tiles}; model load {m['load_s']:.1f} s")
        print(
            f"reference stages (best run): {r['timing']}; {r['counts']}; region {r['region']}, level {r['level']}"
        )
        ratio = t_m / t_r
        print(f"medvit / reference time:            {ratio:6.3f}  (target <= 0.50: {_met(ratio <= 0.5)})")
        f1 = s_mr["f1"]
        print(f"F1 medvit vs reference:             {f1:6.4f}  (target >= 0.99: {_met(f1 >= 0.99)}); "
              f"types agree on {s_mr['type_agreement']:.4f} of the pairs")  # fmt: skip
        print(f"F1 vs truth: medvit {s_m['f1']:.4f}, reference {s_r['f1']:.4f}; types right: medvit "
              f"{s_m['type_agreement']:.4f}, reference {s_r['type_agreement']:.4f}")  # fmt: skip
        mem = peak_m / peak_r
        print(f"peak RSS medvit / reference:        {mem:6.3f}  (target <= 1: {_met(mem <= 1)}; with children; "
              f"main processes only {main_m:.0f} / {main_r:.0f} MB = {main_m / main_r:.3f})")  # fmt: skip
        e2e = t_m / net["seconds"]
        print(f"medvit end to end / network alone:  {e2e:6.3f}  (target <= 1.15: {_met(e2e <= 1.15)}; over the "
              f"CellVTA without the oracle {t_m / net['net_s']:.3f})")  # fmt: skip
        print(f"throughput: medvit {tiles['run'] / t_m:.1f} tiles/s, {m['nuclei'] / t_m:.0f} cells/s; reference "
              f"{r['counts']['windows_run'] / t_r:.1f} windows/s, {r['nuclei'] / t_r:.0f} cells/s")  # fmt: skip
        if large is not None and large["network"] == name:
            grow = large["tree_peak_mb"] / peak_m
            print(f"medvit peak RSS 4x slide / 1x:      {grow:6.3f}  (target <= 1.20: {_met(grow <= 1.2)}; "
                  f"{large['tree_peak_mb']:.0f} vs {peak_m:.0f} MB with children, main {large['peak_mb']:.0f} vs "
                  f"{main_m:.0f} MB; 4x slide {large['seconds']:.0f} s, {large['nuclei']} nuclei, F1 vs truth "
                  f"{large['f1_truth']:.4f})")  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
