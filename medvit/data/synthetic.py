"""Synthetic demo sets, generated deterministically on first use so every pipeline runs offline.

- ``ct3d``: CT-like volumes (HU) with a body, two organ ellipsoids and labels, NIfTI with a real affine.
- ``fundus``: fundus-like RGB photographs with optic disc (1) and cup (2) masks, PNG.
- ``cells``: H&E-like tiles with typed nuclei instances, CoNIC's ``images.npy``/``labels.npy`` layout.
- ``classification``: small RGB images whose class sets the number of bright lesions, CSV datalist.

Sets are written to a temporary folder and renamed when complete, so an interrupted generation never
leaves a partial set behind. They are synthetic: no patient data, free to use.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from medvit.data.cards import Conic, Datalist, FolderPairs, Synthetic
from medvit.data.layouts import ADAPTERS
from medvit.errors import InputError
from medvit.io import write_nifti
from medvit.io.atomic import atomic_dir
from medvit.resources import cache_dir

DEFAULT_SIZES = {"ct3d": [64, 64, 48], "fundus": [128, 128], "cells": [128, 128], "classification": [64, 64]}


def cache_root() -> Path:
    return cache_dir("synthetic")


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1.0


def ct_case(rng: np.random.Generator, shape) -> tuple[np.ndarray, np.ndarray]:
    """One CT-like case of the ``synthetic_ct`` set: int16 HU volume (air, an ellipsoid body at 0 HU, a
    liver-like organ at 60 HU, a kidney-like one at 160 HU, noise sd 20 HU in the body) and its uint8 labels
    (1 liver-like, 2 kidney-like), both of ``shape``."""
    shape = tuple(shape)
    c = np.array(shape) / 2
    vol = np.full(shape, -1000.0, np.float32)
    body = _ellipsoid(shape, c, np.array(shape) * [0.45, 0.38, 0.6])
    vol[body] = 0.0
    label = np.zeros(shape, np.uint8)
    liver_c = c + rng.uniform(-0.08, 0.08, 3) * shape - [0.1 * shape[0], 0, 0]
    liver = _ellipsoid(shape, liver_c, np.array(shape) * rng.uniform([0.15, 0.13, 0.2], [0.2, 0.17, 0.3])) & body
    kidney_c = c + [0.2 * shape[0], 0.1 * shape[1], 0] + rng.uniform(-0.05, 0.05, 3) * shape
    kidney = (
        _ellipsoid(shape, kidney_c, np.array(shape) * rng.uniform([0.06, 0.05, 0.1], [0.09, 0.07, 0.14])) & body
    )
    vol[liver], label[liver] = 60.0, 1
    vol[kidney], label[kidney] = 160.0, 2
    vol += rng.normal(0, 20, shape).astype(np.float32) * body
    return vol.astype(np.int16), label


def _ct3d(out: Path, layout: Synthetic, rng: np.random.Generator) -> FolderPairs:
    shape = layout.size or DEFAULT_SIZES["ct3d"]
    spacing = np.array([1.5, 1.5, 2.0])
    for i in range(layout.num_cases):
        vol, label = ct_case(rng, shape)
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = -np.array(shape) * spacing / 2 + rng.uniform(-5, 5, 3)
        write_nifti(vol, out / "imagesTr" / f"case_{i:03d}.nii.gz", affine=affine)
        write_nifti(label, out / "labelsTr" / f"case_{i:03d}.nii.gz", affine=affine)
    return FolderPairs(type="folder_pairs", images_dir="imagesTr", labels_dir="labelsTr",
                       image_pattern="case_{id}.nii.gz", label_pattern="case_{id}.nii.gz")  # fmt: skip


def _fundus(out: Path, layout: Synthetic, rng: np.random.Generator) -> FolderPairs:
    h, w = layout.size or DEFAULT_SIZES["fundus"]
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir(parents=True)
    for i in range(layout.num_cases):
        img = np.zeros((h, w, 3), np.float32)
        retina = _ellipsoid((h, w), (h / 2, w / 2), (0.47 * h, 0.47 * w))
        img[retina] = rng.uniform([150, 60, 20], [190, 90, 40])
        centre = (h / 2 + rng.uniform(-0.15, 0.15) * h, w / 2 + rng.uniform(-0.2, 0.2) * w)
        r_disc = rng.uniform(0.1, 0.14) * h
        disc = _ellipsoid((h, w), centre, (r_disc, r_disc * rng.uniform(0.85, 1.0)))
        cup = _ellipsoid((h, w), centre, (r_disc * rng.uniform(0.35, 0.6),) * 2)
        img[disc] = [235, 190, 120]
        img[cup] = [250, 235, 190]
        img += rng.normal(0, 6, img.shape) * retina[..., None]
        mask = np.zeros((h, w), np.uint8)
        mask[disc], mask[cup] = 1, 2
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(out / "images" / f"fundus_{i:03d}.png")
        Image.fromarray(mask).save(out / "masks" / f"fundus_{i:03d}.png")
    return FolderPairs(type="folder_pairs", images_dir="images", labels_dir="masks",
                       image_pattern="fundus_{id}.png", label_pattern="fundus_{id}.png")  # fmt: skip


NUCLEUS_TYPES = {1: ([70, 30, 120], 5.0), 2: ([40, 20, 90], 3.0), 3: ([120, 60, 150], 4.0)}


def _cells(out: Path, layout: Synthetic, rng: np.random.Generator) -> Conic:
    h, w = layout.size or DEFAULT_SIZES["cells"]
    images = np.zeros((layout.num_cases, h, w, 3), np.uint8)
    labels = np.zeros((layout.num_cases, h, w, 2), np.int32)
    yy, xx = np.mgrid[:h, :w]
    for i in range(layout.num_cases):
        img = np.empty((h, w, 3), np.float32)
        img[:] = rng.uniform([220, 160, 200], [240, 180, 220])
        inst, cls = labels[i, ..., 0], labels[i, ..., 1]
        next_id = 1
        for _ in range(int(rng.integers(8, 16))):
            t = int(rng.integers(1, 4))
            colour, radius = NUCLEUS_TYPES[t]
            cy, cx = rng.uniform(radius + 1, h - radius - 1), rng.uniform(radius + 1, w - radius - 1)
            r = radius * rng.uniform(0.8, 1.2)
            region = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (inst == 0)
            if region.sum() < 6:
                continue
            inst[region], cls[region] = next_id, t
            img[region] = colour
            next_id += 1
        images[i] = np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)
    np.save(out / "images.npy", images)
    np.save(out / "labels.npy", labels)
    with open(out / "patch_info.csv", "w") as fh:
        fh.write("patch_info\n" + "".join(f"synthetic_{i // 2}-{i:04d}\n" for i in range(layout.num_cases)))
    return Conic(type="conic")


def _classification(out: Path, layout: Synthetic, rng: np.random.Generator) -> Datalist:
    h, w = layout.size or DEFAULT_SIZES["classification"]
    (out / "images").mkdir(parents=True)
    rows = ["image,label"]
    for i in range(layout.num_cases):
        label = i % 3
        img = np.empty((h, w, 3), np.float32)
        img[:] = rng.uniform([140, 60, 30], [170, 80, 45])
        for _ in range(label * 4):
            cy, cx = rng.uniform(4, h - 4), rng.uniform(4, w - 4)
            img[_ellipsoid((h, w), (cy, cx), (2.5, 2.5))] = [250, 240, 180]
        img += rng.normal(0, 5, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(out / "images" / f"img_{i:03d}.png")
        rows.append(f"images/img_{i:03d}.png,{label}")
    (out / "labels.csv").write_text("\n".join(rows) + "\n")
    return Datalist(type="datalist", file="labels.csv", image_key="image", label_key="label")


GENERATORS = {"ct3d": _ct3d, "fundus": _fundus, "cells": _cells, "classification": _classification}


def set_dir(layout: Synthetic, root: str | Path | None = None) -> Path:
    """The folder of one synthetic set: ``root`` if given, else in the medvit cache."""
    if root not in (None, ""):
        return Path(root)
    size = "x".join(map(str, layout.size or DEFAULT_SIZES[layout.generator]))
    return cache_root() / f"{layout.generator}-n{layout.num_cases}-{size}-seed{layout.seed}"


def ensure(layout: Synthetic, root: str | Path | None = None) -> tuple[Path, object]:
    """Generate the set once (atomically); return its folder and the real layout it is written in."""
    out = set_dir(layout, root)
    spec = layout.model_dump()
    inner = _written(out, spec)
    if inner is None:
        if out.exists() and any(out.iterdir()):
            raise InputError(f"{out}: folder exists and is not this synthetic set; choose an empty root")
        try:
            with atomic_dir(out, overwrite=out.exists()) as tmp:  # an existing folder is empty: replace it
                inner_layout = GENERATORS[layout.generator](tmp, layout, np.random.default_rng(layout.seed))
                inner = inner_layout.model_dump()
                (tmp / "synthetic.json").write_text(json.dumps({"spec": spec, "layout": inner}, indent=2))
        except FileExistsError:  # another process (a DDP rank) wrote the set first: use it if it is this one
            inner = _written(out, spec)
            if inner is None:
                raise
    cls = {"folder_pairs": FolderPairs, "conic": Conic, "datalist": Datalist}[inner["type"]]
    return out, cls.model_validate(inner)


def _written(out: Path, spec: dict) -> dict | None:
    """The layout recorded in ``out/synthetic.json`` if ``out`` holds the set ``spec`` describes, else ``None``."""
    marker = out / "synthetic.json"
    if marker.is_file():
        record = json.loads(marker.read_text())
        if record.get("spec") == spec:
            return record["layout"]
    return None


def generate(layout: Synthetic, root: str | Path | None = None) -> list[dict]:
    """Cases of a synthetic set (generated on first use), read through the layout it is written in."""
    out, inner = ensure(layout, root)
    return ADAPTERS[type(inner)](inner, out, [])
