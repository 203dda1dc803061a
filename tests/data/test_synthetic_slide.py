"""The synthetic whole-slide image: deterministic, nuclei inside tissue and apart, tiles across nuclei, and a
pyramid that OpenSlide reads as generic-tiff with its resolution."""

from __future__ import annotations

import sys

import numpy as np
import openslide
import pytest
import tifffile

from medvit.data import synthetic_slide
from medvit.data.synthetic import NUCLEUS_TYPES
from medvit.data.synthetic_slide import (
    GAP,
    SyntheticNucleus,
    synthetic_nuclei,
    write_synthetic_slide,
)

SIZE = (1024, 768)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "slide.tif"
    nuclei = write_synthetic_slide(path, size=SIZE, seed=5, compression="zlib")
    level0 = tifffile.imread(path, key=0)
    return path, nuclei, level0


def test_deterministic_nuclei_and_bytes(tmp_path, slide):
    path, nuclei, _ = slide
    assert nuclei == synthetic_nuclei(SIZE, seed=5)
    assert synthetic_nuclei(SIZE, seed=6) != nuclei
    again = write_synthetic_slide(tmp_path / "again.tif", size=SIZE, seed=5, compression="zlib")
    assert again == nuclei
    assert (tmp_path / "again.tif").read_bytes() == path.read_bytes()


def test_pyramid_layout_and_resolution(tmp_path):
    path = tmp_path / "pyramid.tif"
    write_synthetic_slide(path, size=(1000, 700), mpp=0.5, tile=128, levels=4, compression="jpeg")
    with tifffile.TiffFile(path) as tif:
        pages = list(tif.pages)
        assert len(pages) == 4  # every level in the main IFD chain (OpenSlide ignores SubIFDs)
        assert [p.shape for p in pages] == [(700, 1000, 3), (350, 500, 3), (175, 250, 3), (88, 125, 3)]
        assert all(p.is_tiled and (p.tilelength, p.tilewidth) == (128, 128) for p in pages)
        assert all(p.photometric == tifffile.PHOTOMETRIC.RGB for p in pages)
        assert all(p.compression == tifffile.COMPRESSION.JPEG for p in pages)
        assert pages[0].tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        assert pages[0].get_resolution() == pytest.approx((20000, 20000))
        assert [p.subfiletype for p in pages] == [0, 1, 1, 1]
    handle = openslide.OpenSlide(str(path))
    assert handle.level_count == 4 and handle.properties["openslide.vendor"] == "generic-tiff"
    assert float(handle.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    assert float(handle.properties["openslide.mpp-y"]) == pytest.approx(0.5)
    handle.close()


def test_nuclei_are_drawn_where_they_say(slide):
    _, nuclei, level0 = slide
    assert len(nuclei) > 100
    assert {n.type for n in nuclei} == set(NUCLEUS_TYPES)
    for n in nuclei[:40]:
        colour = np.array(NUCLEUS_TYPES[n.type][0])
        r = int(np.ceil(n.radius)) + 1
        y0, x0 = int(n.y) - r, int(n.x) - r
        box = level0[y0 : y0 + 2 * r + 1, x0 : x0 + 2 * r + 1]
        yy, xx = np.mgrid[y0 : y0 + 2 * r + 1, x0 : x0 + 2 * r + 1]
        near = np.hypot(yy - n.y, xx - n.x) <= n.radius + 1.5  # a neighbour's disc is at least GAP beyond
        rows, cols = np.nonzero((box == colour).all(axis=-1) & near)
        assert (rows.mean() + y0, cols.mean() + x0) == pytest.approx((n.y, n.x), abs=1e-9)
        assert len(rows) == pytest.approx(np.pi * n.radius**2, rel=0.1)


def test_nuclei_lie_inside_tissue_and_apart(slide):
    _, nuclei, level0 = slide
    xy = np.array([(n.x, n.y) for n in nuclei])
    r = np.array([n.radius for n in nuclei])
    assert (xy == np.round(xy)).all()
    distance = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(distance, np.inf)
    assert (distance >= r[:, None] + r[None, :] + GAP).all()
    glass = (level0.astype(int) >= 236).all(axis=-1)
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    for (x, y), radius in zip(xy, r, strict=True):
        ring_x = np.round(x + (radius + 1.5) * np.cos(angles)).astype(int)
        ring_y = np.round(y + (radius + 1.5) * np.sin(angles)).astype(int)
        assert not glass[ring_y, ring_x].any()  # the disc's surroundings are tissue, not glass
    assert glass.mean() == pytest.approx(0.5, abs=0.05)


def test_some_nuclei_straddle_tile_borders(slide):
    _, nuclei, _ = slide
    across = [
        n for n in nuclei
        if (n.x - n.radius) // 256 != (n.x + n.radius) // 256 or (n.y - n.radius) // 256 != (n.y + n.radius) // 256
    ]  # fmt: skip
    assert len(across) >= 5


def test_lower_levels_show_the_same_nuclei(slide):
    path, nuclei, _ = slide
    level1 = tifffile.imread(path, key=1)
    assert level1.shape == (384, 512, 3)
    for n in nuclei:
        assert tuple(level1[int(n.y) // 2, int(n.x) // 2]) == tuple(NUCLEUS_TYPES[n.type][0])


def test_given_nuclei_and_blank_slides(tmp_path):
    mine = [SyntheticNucleus(100.0, 100.0, 12.0, 1), SyntheticNucleus(300.0, 250.0, 10.0, 3)]
    path = tmp_path / "given.tif"
    assert write_synthetic_slide(path, size=(512, 512), levels=2, compression="none", nuclei=mine) == mine
    level0 = tifffile.imread(path, key=0)
    assert tuple(level0[100, 100]) == tuple(NUCLEUS_TYPES[1][0])
    assert tuple(level0[250, 300]) == tuple(NUCLEUS_TYPES[3][0])
    assert synthetic_nuclei((512, 512), tissue_fraction=0.0) == []
    blank = tmp_path / "blank.tif"
    write_synthetic_slide(blank, size=(512, 384), levels=2, tissue_fraction=0.0, compression="zlib")
    glass = tifffile.imread(blank, key=0)
    assert glass.min() >= 240 and glass.max() <= 248


def test_jpeg_falls_back_to_zlib_without_imagecodecs(monkeypatch):
    monkeypatch.setitem(sys.modules, "imagecodecs", None)  # import imagecodecs raises ImportError
    assert synthetic_slide._codec("jpeg") == ("zlib", {})
    assert synthetic_slide._codec("none") == (None, {})


@pytest.mark.parametrize(
    "kwargs",
    [{"size": (0, 10)}, {"mpp": 0.0}, {"tile": 100}, {"levels": 0}, {"levels": 12}, {"tissue_fraction": 1.5},
     {"compression": "lzw"}],
)  # fmt: skip
def test_arguments_out_of_range(tmp_path, kwargs):
    with pytest.raises(ValueError):
        write_synthetic_slide(tmp_path / "x.tif", **{"size": (256, 256), **kwargs})
    assert not (tmp_path / "x.tif").exists()
