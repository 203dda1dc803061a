"""Whole-slide images and tiles: OpenSlide on synthetic pyramidal TIFFs, plain tiles through PIL, resolution
from the file or --mpp, regions at a physical resolution, tissue detection and user tissue masks."""

from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openslide
import pytest
from hostile_checks import address_space_limit
from PIL import Image

from medvit.data.synthetic import NUCLEUS_TYPES
from medvit.data.synthetic_slide import write_synthetic_slide
from medvit.errors import InputError
from medvit.io.wsi import (
    SLIDE_SUFFIXES,
    TILE_SUFFIXES,
    Slide,
    TissueMask,
    detect_tissue,
    is_slide_name,
    open_slide,
    read_tissue_mask,
)

SIZE = (1024, 768)


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> dict:
    """Synthetic 1024 x 768 slides (3 levels): zlib and JPEG at 0.25 µm/px, zlib at 0.5, a blank one."""
    root = tmp_path_factory.mktemp("slides")
    out = {}
    for name, mpp, compression, fraction in [
        ("zlib", 0.25, "zlib", 0.5),
        ("jpeg", 0.25, "jpeg", 0.5),
        ("half", 0.5, "zlib", 0.5),
        ("blank", 0.25, "zlib", 0.0),
    ]:
        path = root / f"{name}.tif"
        nuclei = write_synthetic_slide(
            path, size=SIZE, mpp=mpp, levels=3, seed=3, tissue_fraction=fraction, compression=compression
        )
        out[name] = (path, nuclei)
    return out


def _one_line(exc: pytest.ExceptionInfo, start: str) -> str:
    message = str(exc.value)
    assert "\n" not in message and message.startswith(start), message
    return message


def test_suffixes():
    assert is_slide_name("a/b/slide.SVS") and is_slide_name("x.ndpi") and is_slide_name(Path("x.tiff"))
    assert not is_slide_name("x.png") and not is_slide_name("x.dcm") and ".dcm" not in SLIDE_SUFFIXES
    assert set(TILE_SUFFIXES) == {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


@pytest.mark.parametrize("name", ["zlib", "jpeg"])
def test_synthetic_pyramid_opens_through_openslide(slides, name):
    path, _ = slides[name]
    with open_slide(path) as slide:
        assert isinstance(slide, Slide) and slide.path == path
        assert (slide.backend, slide.vendor) == ("openslide", "generic-tiff")
        assert slide.dimensions == SIZE
        assert slide.level_dimensions == ((1024, 768), (512, 384), (256, 192))
        assert slide.level_downsamples == (1.0, 2.0, 4.0)
        assert (slide.mpp, slide.mpp_source) == (pytest.approx(0.25), "slide")


def test_resolution_from_the_file_and_the_option(slides):
    path, _ = slides["half"]
    with open_slide(path) as slide:
        assert (slide.mpp, slide.mpp_source) == (pytest.approx(0.5), "slide")
    with open_slide(path, mpp=0.3) as slide:  # the user's --mpp wins over the file's
        assert (slide.mpp, slide.mpp_source) == (0.3, "option")


def test_best_level(slides):
    with open_slide(slides["zlib"][0]) as slide:
        wanted = (0.5, 1.0, 1.99, 1.9995, 2.0, 3.9, 4.0, 100.0)
        assert [slide.best_level(d) for d in wanted] == [0, 0, 0, 1, 1, 1, 2, 2]


@pytest.mark.parametrize(("name", "tolerance"), [("zlib", 0), ("jpeg", 12)])
def test_level0_read_gives_the_drawn_colours_at_nucleus_centres(slides, name, tolerance):
    path, nuclei = slides[name]
    assert len(nuclei) > 50
    with open_slide(path) as slide:
        whole = slide.read(0, 0, *SIZE, mpp=0.25)
        assert whole.shape == (768, 1024, 3) and whole.dtype == np.uint8
        for n in nuclei:
            x, y = int(n.x), int(n.y)
            expected = np.array(NUCLEUS_TYPES[n.type][0])
            assert np.abs(whole[y, x].astype(int) - expected).max() <= tolerance, (n, whole[y, x])
            patch = slide.read(x - 2, y - 3, 5, 7, mpp=0.25)
            np.testing.assert_array_equal(patch, whole[y - 3 : y + 4, x - 2 : x + 3])
    reference = np.asarray(openslide.OpenSlide(str(path)).read_region((0, 0), 0, SIZE))[..., :3]
    np.testing.assert_array_equal(whole, reference)


def test_twice_the_mpp_reads_level_1_at_half_size(slides):
    path, nuclei = slides["zlib"]
    with open_slide(path) as slide:
        half = slide.read(0, 0, *SIZE, mpp=0.5)
        assert half.shape == (384, 512, 3)
        level1 = np.asarray(openslide.OpenSlide(str(path)).read_region((0, 0), 1, (512, 384)))[..., :3]
        np.testing.assert_array_equal(half, level1)  # read from level 1 as it is, not resampled from level 0
        for n in nuclei:
            assert tuple(half[int(n.y) // 2, int(n.x) // 2]) == tuple(NUCLEUS_TYPES[n.type][0])
        odd = slide.read(100, 60, 301, 201, mpp=0.5)
        assert odd.shape == (round(201 / 2), round(301 / 2), 3)
        quarter = slide.read(0, 0, *SIZE, mpp=0.75)  # between levels: level 1, shrunk by area averaging
        assert quarter.shape == (256, 341, 3)


def test_regions_outside_the_slide_are_white(slides):
    with open_slide(slides["zlib"][0]) as slide:
        corner = slide.read(-64, -32, 128, 96, mpp=0.25)
        assert corner.shape == (96, 128, 3)
        assert (corner[:32] == 255).all() and (corner[:, :64] == 255).all()
        np.testing.assert_array_equal(corner[32:, 64:], slide.read(0, 0, 64, 64, mpp=0.25))
        beyond = slide.read(1000, 700, 100, 100, mpp=0.5)  # the slide ends 24 columns and 68 rows in
        assert (beyond[34:] == 255).all() and (beyond[:, 12:] == 255).all() and (beyond[:34, :12] < 250).all()
        assert (slide.read(5000, 5000, 64, 64, mpp=1.0) == 255).all()


@pytest.mark.parametrize("mpp", [0.2, 0.25, 0.5, 1.0])
def test_adjacent_reads_stitch_into_one(slides, mpp):
    with open_slide(slides["jpeg"][0]) as slide:
        whole = slide.read(128, 64, 512, 512, mpp=mpp)
        left, right = slide.read(128, 64, 256, 512, mpp=mpp), slide.read(384, 64, 256, 512, mpp=mpp)
        np.testing.assert_array_equal(np.concatenate([left, right], axis=1), whole)


def test_concurrent_reads_equal_serial_reads(slides):
    rng = np.random.default_rng(0)
    boxes = [
        (int(rng.integers(-100, 1000)), int(rng.integers(-100, 700)), int(rng.integers(16, 300)),
         int(rng.integers(16, 300)), float(rng.choice([0.25, 0.4, 0.5, 1.0])))
        for _ in range(32)
    ]  # fmt: skip
    with open_slide(slides["jpeg"][0]) as slide:
        serial = [slide.read(x, y, w, h, mpp=m) for x, y, w, h, m in boxes]
        with ThreadPoolExecutor(8) as pool:
            parallel = list(pool.map(lambda b: slide.read(*b[:4], mpp=b[4]), boxes))
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


def test_thumbnail(slides):
    with open_slide(slides["zlib"][0]) as slide:
        thumb, downsample = slide.thumbnail(256)
        assert thumb.shape == (192, 256, 3) and downsample == pytest.approx(4.0)
        np.testing.assert_array_equal(thumb, slide.read(0, 0, *SIZE, mpp=1.0))
        full, one = slide.thumbnail(4096)
        assert full.shape == (768, 1024, 3) and one == 1.0
        assert thumb.flags.writeable and full.flags.writeable and slide.read(5, 5, 50, 50, mpp=0.3).flags.writeable


def test_large_shrinking_reads_go_in_strips(slides, monkeypatch):
    """A thumbnail of a slide without a coarse level reads level 0 a strip of rows at a time, exactly."""
    from medvit.io import wsi

    with open_slide(slides["jpeg"][0]) as slide:
        whole = [slide.read(0, 0, *SIZE, mpp=m) for m in (1.0, 3.0, 0.3)]
        monkeypatch.setattr(wsi, "_STRIP_BYTES", 50_000)  # a handful of output rows a strip
        for m, expected in zip((1.0, 3.0, 0.3), whole, strict=True):
            np.testing.assert_array_equal(slide.read(0, 0, *SIZE, mpp=m), expected)


def test_closed_slide_refuses_reads(slides):
    slide = open_slide(slides["zlib"][0])
    slide.close()
    with pytest.raises(InputError, match="closed"):
        slide.read(0, 0, 8, 8, mpp=0.25)


# plain tiles


def _tile(rng=None) -> np.ndarray:
    rng = rng or np.random.default_rng(1)
    return rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)


def test_png_with_phys_resolution(tmp_path):
    pixels = _tile()
    path = tmp_path / "tile.png"
    Image.fromarray(pixels).save(path, dpi=(25400 / 0.5, 25400 / 0.5))  # pHYs: 2,000,000 px per metre
    with open_slide(path) as slide:
        assert (slide.backend, slide.vendor, slide.mpp_source) == ("image", None, "slide")
        assert slide.mpp == pytest.approx(0.5)
        assert slide.dimensions == (80, 60) and slide.level_dimensions == ((80, 60),)
        assert slide.level_downsamples == (1.0,)
        np.testing.assert_array_equal(slide.read(0, 0, 80, 60, mpp=0.5), pixels)
        np.testing.assert_array_equal(slide.read(10, 5, 20, 30, mpp=0.5), pixels[5:35, 10:30])
        assert slide.read(0, 0, 80, 60, mpp=1.0).shape == (30, 40, 3)
        assert slide.read(0, 0, 80, 60, mpp=0.25).shape == (120, 160, 3)
        edge = slide.read(70, 50, 20, 20, mpp=0.5)
        assert (edge[10:] == 255).all() and (edge[:, 10:] == 255).all()


def test_png_without_resolution_needs_mpp(tmp_path):
    path = tmp_path / "plain.png"
    Image.fromarray(_tile()).save(path)
    with pytest.raises(InputError) as exc:
        open_slide(path)
    assert _one_line(exc, str(path)).endswith("no resolution (µm/px) in the slide's metadata; give --mpp")
    with open_slide(path, mpp=0.5) as slide:
        assert (slide.mpp, slide.mpp_source) == (0.5, "option")


def test_screen_resolution_is_not_a_microscopes(tmp_path):
    path = tmp_path / "screen.png"
    Image.fromarray(_tile()).save(path, dpi=(72, 72))
    with pytest.raises(InputError) as exc:
        open_slide(path)
    assert "not a microscope's" in _one_line(exc, str(path))


def test_jpeg_tile(tmp_path):
    pixels = np.full((64, 96, 3), (200, 120, 170), np.uint8)
    path = tmp_path / "tile.jpg"
    Image.fromarray(pixels).save(path, dpi=(50800, 50800), quality=95)
    with open_slide(path) as slide:
        assert (slide.backend, slide.mpp_source, slide.dimensions) == ("image", "slide", (96, 64))
        assert slide.mpp == pytest.approx(0.5)
        assert np.abs(slide.read(0, 0, 96, 64, mpp=0.5).astype(int) - pixels).max() <= 3
    bare = tmp_path / "bare.jpg"
    Image.fromarray(pixels).save(bare)  # JFIF density 1:1 without a unit
    with pytest.raises(InputError, match="give --mpp"):
        open_slide(bare)


def test_stripped_tiff_goes_to_pil_with_its_resolution_tags(tmp_path):
    pixels = _tile()
    path = tmp_path / "stripped.tif"
    Image.fromarray(pixels).save(path, resolution=10000 / 0.4, resolution_unit="cm")
    with open_slide(path) as slide:
        assert (slide.backend, slide.vendor) == ("image", None)
        assert slide.mpp == pytest.approx(0.4)
        np.testing.assert_array_equal(slide.read(0, 0, 80, 60, mpp=0.4), pixels)


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 100
    rgba[:, 5:, 3] = 255
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba).save(path)
    with open_slide(path, mpp=1.0) as slide:
        out = slide.read(0, 0, 10, 10, mpp=1.0)
    assert (out[:, :5] == 255).all() and (out[:, 5:] == (100, 0, 0)).all()


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_png_declaring_60000_squared_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header(60000, 60000))
    code = (
        "import sys\nfrom medvit.errors import InputError\nfrom medvit.io.wsi import open_slide\n"
        "try:\n    open_slide(sys.argv[1], mpp=0.5)\nexcept InputError as exc:\n    print(exc)\n    sys.exit(2)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
        preexec_fn=address_space_limit(3 << 30),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(str(path)) and "Traceback" not in done.stderr, done.stdout


def test_tile_above_the_image_budget(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(_png_header(4000, 3000))
    monkeypatch.setenv("MEDVIT_MAX_IMAGE_BYTES", str(1 << 20))
    with pytest.raises(InputError) as exc:
        open_slide(path, mpp=0.5)
    assert "image budget" in _one_line(exc, str(path))


# errors


def test_random_bytes_named_svs(tmp_path):
    path = tmp_path / "noise.svs"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes())
    with pytest.raises(InputError) as exc:
        open_slide(path, mpp=0.5)
    assert "not a slide OpenSlide or PIL can read" in _one_line(exc, str(path))


@pytest.mark.parametrize("keep", [0.3, 0.7, 0.995])
def test_truncated_tiff(slides, tmp_path, keep):
    data = slides["zlib"][0].read_bytes()
    path = tmp_path / "cut.tif"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InputError) as exc:
        with open_slide(path) as slide:
            slide.read(0, 0, *SIZE, mpp=0.25)
    _one_line(exc, str(path))


def test_missing_folder_and_fifo(tmp_path):
    with pytest.raises(InputError) as exc:
        open_slide(tmp_path / "absent.svs")
    assert _one_line(exc, str(tmp_path / "absent.svs")).endswith("no such file")
    folder = tmp_path / "folder.mrxs"
    folder.mkdir()
    with pytest.raises(InputError) as exc:
        open_slide(folder)
    assert _one_line(exc, str(folder)).endswith("not a regular file")
    fifo = tmp_path / "pipe.svs"
    os.mkfifo(fifo)  # reading it would block: refused from its mode alone
    with pytest.raises(InputError) as exc:
        open_slide(fifo)
    assert _one_line(exc, str(fifo)).endswith("not a regular file")


@pytest.mark.parametrize("mpp", [0, -1, math.nan, math.inf])
def test_mpp_must_be_positive(slides, mpp):
    with pytest.raises(InputError) as exc:
        open_slide(slides["zlib"][0], mpp=mpp)
    _one_line(exc, f"--mpp {mpp}: must be a positive number")


# tissue


def test_detect_tissue_on_the_synthetic_slide(slides):
    for name, min_area in [("half", 10_000.0), ("zlib", 1_000.0)]:
        path, nuclei = slides[name]
        with open_slide(path) as slide:
            tissue = detect_tissue(slide, min_area_um2=min_area)
        assert tissue.source == "otsu" and tissue.mask.dtype == bool
        assert tissue.mask.shape == (768, 1024) and tissue.downsample == 1.0
        assert abs(tissue.mask.mean() - 0.5) <= 0.1, (name, tissue.mask.mean())
        assert all(tissue.mask[int(n.y), int(n.x)] for n in nuclei)
        assert tissue.fraction(int(nuclei[0].x) - 4, int(nuclei[0].y) - 4, 8, 8) == 1.0


def test_detect_tissue_on_a_coarse_thumbnail(slides):
    with open_slide(slides["half"][0]) as slide:
        tissue = detect_tissue(slide, max_size=256)
    assert tissue.mask.shape == (192, 256) and tissue.downsample == pytest.approx(4.0)
    assert abs(tissue.mask.mean() - 0.5) <= 0.1
    assert all(tissue.fraction(int(n.x) - 2, int(n.y) - 2, 4, 4) > 0 for n in slides["half"][1])


def test_blank_slides_have_no_tissue(slides, tmp_path):
    path, nuclei = slides["blank"]
    assert nuclei == []
    with open_slide(path) as slide:
        assert not detect_tissue(slide).mask.any()
    white = tmp_path / "white.png"
    Image.fromarray(np.full((50, 70, 3), 255, np.uint8)).save(white)
    with open_slide(white, mpp=1.0) as slide:  # a constant thumbnail: Otsu has nothing to split
        tissue = detect_tissue(slide)
    assert tissue.mask.shape == (50, 70) and not tissue.mask.any()


def test_tissue_mask_area_and_fraction():
    mask = np.zeros((10, 20), bool)
    mask[:, :10] = True
    tissue = TissueMask(mask, 4.0, "otsu")
    assert tissue.area_mm2(0.5) == pytest.approx(100 * (4 * 0.5 / 1000) ** 2)
    assert tissue.fraction(0, 0, 40, 40) == 1.0
    assert tissue.fraction(40, 0, 40, 40) == 0.0
    assert tissue.fraction(20, 0, 40, 40) == pytest.approx(0.5)
    assert tissue.fraction(38, 0, 4, 4) == pytest.approx(0.5)  # half a mask pixel on each side
    assert tissue.fraction(-40, 0, 80, 40) == pytest.approx(0.5)  # outside the mask is no tissue
    assert tissue.fraction(1000, 1000, 10, 10) == 0.0


def test_read_tissue_mask(slides, tmp_path):
    path, _ = slides["zlib"]
    grey = np.zeros((96, 128), np.uint8)
    grey[:, :64] = 200
    good = tmp_path / "mask.png"
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(good)  # RGB: converted to grey
    with open_slide(path) as slide:
        tissue = read_tissue_mask(good, slide)
        assert tissue.source == "mask.png" and tissue.downsample == pytest.approx(8.0)
        assert tissue.fraction(0, 0, 256, 256) == 1.0
        assert tissue.fraction(768, 0, 256, 256) == 0.0
        assert tissue.fraction(384, 0, 256, 256) == pytest.approx(0.5)
        assert tissue.area_mm2(slide.mpp) == pytest.approx(512 * 768 * 0.25**2 / 1e6)
        wrong = tmp_path / "square.png"
        Image.fromarray(np.zeros((100, 100), np.uint8)).save(wrong)
        with pytest.raises(InputError) as exc:
            read_tissue_mask(wrong, slide)
        assert _one_line(exc, str(wrong)) == (
            f"{wrong}: tissue mask is 100x100, aspect 1.000; the slide zlib.tif is 1024x768, aspect 1.333"
        )
        junk = tmp_path / "junk.png"
        junk.write_bytes(b"not a png at all")
        with pytest.raises(InputError) as exc:
            read_tissue_mask(junk, slide)
        _one_line(exc, str(junk))
        with pytest.raises(InputError, match="no such file"):
            read_tissue_mask(tmp_path / "absent.png", slide)
