"""Cells packages in predict: slides (pyramidal TIFFs through OpenSlide), regions and tiles; each nucleus once,
in level-0 coordinates; GeoJSON that QuPath reads, CSV, instance and type maps; bad input in one line.

A network with random weights finds no nuclei, so most tests replace the network's maps with an *oracle*
that sees each tile as a perfect network would: nuclei are the dark pixels of the tile, each connected blob an
instance with its HoVer maps, its type the nearest synthetic nucleus colour. Tiling, reading, resampling,
stitching, coordinates and outputs are then checked against the nuclei the synthetic slide was drawn with.
One test runs the real (tiny) CellVTA end to end.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from hostile_checks import one_line_exit_2
from packages import make_package
from PIL import Image
from scipy import ndimage as ndi
from typer.testing import CliRunner

from medvit.cli import app
from medvit.data.synthetic import NUCLEUS_TYPES
from medvit.data.synthetic_slide import write_synthetic_slide
from medvit.inference import Predictor, slides
from medvit.postprocess import hv_maps

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
_COLOURS = np.array([NUCLEUS_TYPES[t][0] for t in sorted(NUCLEUS_TYPES)], np.float32)


def _oracle(predictor, images, mean, std):
    out = []
    for img in images:
        img = img.astype(np.float32)
        dark = img.mean(-1) < 160
        inst = ndi.label(dark)[0]
        dist = np.linalg.norm(img[..., None, :] - _COLOURS, axis=-1)
        types = np.where(dark, dist.argmin(-1) + 1, 0).astype(np.uint8)
        out.append((dark.astype(np.float32), hv_maps(inst), types))
    return out


@pytest.fixture
def oracle(monkeypatch):
    monkeypatch.setattr(slides, "_infer", _oracle)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return make_package(tmp_path_factory.mktemp("cells") / "pkg", "cells")  # 128 px tiles at 0.5 µm/px


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("slide") / "slide.tif"
    nuclei = write_synthetic_slide(path, size=(1536, 1024), mpp=0.5, tile=256, levels=2, compression="zlib")
    return path, nuclei


def _match(got: np.ndarray, truth: np.ndarray, tol: float) -> tuple[float, float]:
    """Recall and precision of centroids ``got`` against ``truth`` (one-to-one within ``tol`` pixels)."""
    if not len(got) or not len(truth):
        return 0.0, 0.0
    d = np.linalg.norm(got[:, None] - truth[None], axis=2)
    pairs, used = 0, set()
    for i in np.argsort(d.min(1)):
        j = int(d[i].argmin())
        if d[i, j] <= tol and j not in used:
            used.add(j)
            pairs += 1
    return pairs / len(truth), pairs / len(got)


def _truth(nuclei) -> np.ndarray:
    return np.array([[n.x, n.y] for n in nuclei])


def _predict(*args):
    return CliRunner().invoke(app, ["predict", *map(str, args), "--no-progress"])


@pytest.mark.parametrize("workers", [0, 1])
def test_slide_nuclei_once_in_level0_with_qupath_geojson(oracle, package, slide, tmp_path, workers):
    shapely = pytest.importorskip("shapely")
    from shapely.geometry import Point, shape

    path, nuclei = slide
    out = tmp_path / "out"
    result = _predict("-m", package, "-i", path, "-o", out, "--workers", workers)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "slide.geojson",
        "slide.json",
        "slide_cells.csv",
    ]  # fmt: skip  (a slide: no instance maps by default)
    rows = list(csv.DictReader(open(out / "slide_cells.csv")))
    got = np.array([[float(r["x"]), float(r["y"])] for r in rows])
    recall, precision = _match(got, _truth(nuclei), tol=2.0)
    assert recall >= 0.98 and precision >= 0.98, (recall, precision)
    d = np.linalg.norm(got[:, None] - got[None], axis=2) + np.eye(len(got)) * 1e9
    assert d.min() > 3  # no nucleus twice
    assert all(abs(float(r["x_um"]) - float(r["x"]) * 0.5) < 1e-2 for r in rows)  # µm at the slide's 0.5 µm/px
    gj = json.loads((out / "slide.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == len(rows)
    names = {"large_nucleus", "small_nucleus", "pale_nucleus"}
    for feature, row in zip(gj["features"], rows, strict=True):
        props = feature["properties"]
        assert props["objectType"] == "detection" and props["classification"]["name"] in names
        assert len(props["classification"]["color"]) == 3 and props["measurements"]["Area µm^2"] > 0
        poly = shape(feature["geometry"])
        assert feature["geometry"]["type"] == "Polygon" and poly.is_valid, shapely.validation.explain_validity(
            poly
        )
        assert poly.buffer(1.0).contains(Point(float(row["x"]), float(row["y"])))
    manifest = json.loads((out / "manifest.json").read_text())
    case = manifest["cases"][0]
    assert case["cells"] == len(rows) and sum(case["counts"].values()) == len(rows)
    assert (
        case["tiles"]["skipped"] > 0 and case["tiles"]["run"] + case["tiles"]["skipped"] == case["tiles"]["total"]
    )
    assert 0.2 < case["tissue_area_mm2"] / (1536 * 1024 * 0.5**2 / 1e6) < 0.8  # about half is tissue
    assert case["description"]["mpp"] == 0.5 and case["description"]["mpp_source"] == "slide"
    assert {"read_s", "infer_s", "post_s", "total_s"} <= set(case["timing_s"])
    # types: the oracle's nearest colour is the drawn type
    truth_types = {(round(n.x), round(n.y)): n.type for n in nuclei}
    right = sum(
        truth_types.get((round(float(r["x"])), round(float(r["y"]))), int(r["type"])) == int(r["type"])
        for r in rows
    )
    assert right / len(rows) > 0.9


def test_region_stitched_equals_the_region_at_once(oracle, package, slide, tmp_path):
    """The same region through 128 px tiles (the default overlap, 32 px: twice the largest nucleus) and through
    one tile that holds it whole: the same nuclei."""
    path, _ = slide
    big = tmp_path / "big"
    spec_file = make_package(big, "cells") / "medvit.yaml"
    import yaml

    data = yaml.safe_load(spec_file.read_text())
    data["preprocessing"]["resize"] = [512, 512]
    spec_file.write_text(yaml.safe_dump(data, sort_keys=False))
    roi = (512, 256, 512, 512)
    everywhere = tmp_path / "all.png"  # every tile runs: the comparison is of stitching, not tissue detection
    Image.fromarray(np.full((100, 150), 255, np.uint8)).save(everywhere)
    tiled = Predictor(package, workers=0).predict(path, roi=roi, tissue_mask=everywhere)
    whole = Predictor(big, workers=0).predict(path, roi=roi, tissue_mask=everywhere)
    assert whole.tiles["total"] == 1 and tiled.tiles["total"] == 25
    recall, precision = _match(tiled.centroids, whole.centroids, tol=1.0)
    assert recall >= 0.99 and precision >= 0.99, (recall, precision, len(tiled), len(whole))
    assert tiled.instances.shape == (512, 512) and tiled.instances.max() == len(tiled)


def test_a_half_resolution_copy_gives_the_same_nuclei(oracle, package, tmp_path):
    """The package reads at 0.5 µm/px; a 0.25 µm/px slide of the same scene is read from level 1 (or resized)
    and its nuclei land at the same places in its own level-0 pixels."""
    fine = tmp_path / "fine.tif"
    nuclei = write_synthetic_slide(fine, size=(1024, 768), mpp=0.25, tile=256, levels=2, compression="zlib")
    pred = Predictor(package, workers=0).predict(fine)
    recall, precision = _match(pred.centroids, _truth(nuclei), tol=3.0)
    assert recall >= 0.9 and precision >= 0.98, (recall, precision)  # read at 0.5 µm/px, the smallest nuclei
    small = [n for n in nuclei if n.radius * 0.25 < 2.15]  # (about 4 px across there) fall to HoVer's opening
    large = [n for n in nuclei if n.radius * 0.25 >= 2.15]
    assert _match(pred.centroids, _truth(large), tol=3.0)[0] >= 0.98 and len(small) < 0.1 * len(nuclei)
    assert pred.input["mpp"] == 0.25 and pred.input["model_mpp"] == 0.5


def test_tile_with_mpp_writes_instance_and_type_maps(oracle, package, slide, tmp_path):
    path, nuclei = slide
    from medvit.io.wsi import open_slide

    with open_slide(path) as s:
        pixels = s.read(300, 200, 200, 150, mpp=0.5)
    tile = tmp_path / "tile.png"
    Image.fromarray(pixels).save(tile)  # no resolution in the file
    out = tmp_path / "out"
    result = _predict("-m", package, "-i", tile, "-o", out, "--mpp", "0.5")
    assert result.exit_code == 0, result.output
    inst = __import__("tifffile").imread(out / "tile_instances.tif")
    rows = list(csv.DictReader(open(out / "tile_cells.csv")))
    assert inst.shape == (150, 200) and inst.max() == len(rows) > 3
    types = Image.open(out / "tile_types.png")
    assert types.mode == "P" and types.size == (200, 150)
    t = np.asarray(types)
    for r in rows:  # each nucleus' type under its centroid
        x, y = round(float(r["x"])), round(float(r["y"]))
        if inst[y, x]:
            assert t[y, x] == int(r["type"])
    inside = [n for n in nuclei if 300 + 10 < n.x < 500 - 10 and 200 + 10 < n.y < 350 - 10]
    got = np.array([[float(r["x"]) + 300, float(r["y"]) + 200] for r in rows])
    recall, _ = _match(got, _truth(inside), tol=2.0)
    assert recall >= 0.95


def test_the_real_network_end_to_end_and_the_table(package, slide, tmp_path):
    """No oracle: the tiny CellVTA with random weights, through the process pool; the outputs are well formed."""
    path, _ = slide
    pred = Predictor(package, workers=1, batch_size=4).predict(path, roi=(0, 0, 512, 384))
    table = pred.table()
    assert list(table.columns) == ["id", "x", "y", "x_um", "y_um", "type", "type_name", "type_prob", "area_um2"]
    assert len(table) == len(pred) and pred.tiles["run"] >= 1
    if len(table):
        assert table["x"].between(0, 512).all() and table["y"].between(0, 384).all()


def test_folder_of_tiles_split_into_parts(oracle, package, slide, tmp_path):
    path, _ = slide
    from medvit.io.wsi import open_slide

    folder = tmp_path / "tiles"
    folder.mkdir()
    with open_slide(path) as s:
        for i in range(5):
            Image.fromarray(s.read(200 * i, 300, 128, 128, mpp=0.5)).save(folder / f"t{i}.png")
    names = []
    for part in (0, 1):
        out = tmp_path / f"out{part}"
        result = _predict(
            "-m", package, "-i", folder, "-o", out, "--mpp", 0.5, "--num-parts", 2, "--part-id", part
        )
        assert result.exit_code == 0, result.output
        names.append({c["case"] for c in json.loads((out / "manifest.json").read_text())["cases"]})
    assert names[0].isdisjoint(names[1]) and names[0] | names[1] == {f"t{i}" for i in range(5)}


@pytest.fixture
def bad_inputs(tmp_path, slide):
    path, _ = slide
    junk = tmp_path / "junk.svs"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    bare = tmp_path / "bare.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(bare)
    mask = tmp_path / "mask.png"
    Image.fromarray(np.full((100, 20), 255, np.uint8)).save(mask)
    import nibabel as nib

    ct = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), ct)
    return {"slide": path, "junk": junk, "bare": bare, "mask": mask, "ct": ct}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-i", "{bare}"], "no resolution"),
        (["-i", "{junk}"], "junk.svs"),
        (["-i", "{ct}"], "not a CT/MR volume"),
        (["-i", "{slide}", "--roi", "1000,900,600,400"], "--roi 1000,900,600,400: outside"),
        (["-i", "{slide}", "--roi", "1,2,3"], "--roi 1,2,3: expected x,y,w,h"),
        (["-i", "{slide}", "--tissue-mask", "{mask}"], "aspect"),
        (["-i", "{slide}", "--mpp", "nan"], "--mpp nan"),
        (["-i", "{slide}", "--mpp", "-1"], "--mpp -1"),
        (["-i", "{slide}", "--num-parts", "2", "--part-id", "2"], "--part-id 2"),
    ],
)
def test_bad_slide_input_is_one_line(package, bad_inputs, tmp_path, args, needle):
    out = tmp_path / "out"
    args = [a.format(**bad_inputs) for a in args]
    result = _predict("-m", package, *args, "-o", out)
    one_line_exit_2(result, needle)
    assert not out.exists()


def test_a_segmentation_package_on_a_slide_and_slide_options_on_it(tmp_path, bad_inputs):
    seg = make_package(tmp_path / "seg", "seg2d")
    svs = tmp_path / "scan.svs"
    svs.write_bytes(b"II*\x00" + bytes(100))
    one_line_exit_2(_predict("-m", seg, "-i", svs, "-o", tmp_path / "o1"), "predict it with a cells")
    one_line_exit_2(_predict("-m", seg, "-i", bad_inputs["bare"], "-o", tmp_path / "o2", "--mpp", 0.5), "--mpp")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_a_real_pathology_photograph_as_a_tile(package, tmp_path):
    """scikit-image's immunohistochemistry photograph (512 x 512, no resolution in the file): refused without
    --mpp, read as a tile with it; the real tiny network runs over its tiles and every output is well formed."""
    from pathlib import Path

    import skimage

    photo = Path(skimage.__file__).parent / "data" / "ihc.png"
    out = tmp_path / "out"
    one_line_exit_2(_predict("-m", package, "-i", photo, "-o", out), "no resolution", "--mpp")
    assert not out.exists()
    result = _predict("-m", package, "-i", photo, "-o", out, "--mpp", "0.5", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "ihc.geojson", "ihc.json", "ihc_cells.csv", "ihc_instances.tif", "ihc_types.png", "manifest.json"
    ]  # fmt: skip
    case = json.loads((out / "manifest.json").read_text())["cases"][0]
    assert case["tiles"]["total"] == 25 and case["tissue"]["source"] == "all"  # a tile: no tissue detection
    assert case["description"]["backend"] == "image" and case["description"]["mpp_source"] == "option"
    inst = __import__("tifffile").imread(out / "ihc_instances.tif")
    assert inst.shape == (512, 512) and inst.max() == case["cells"]
    assert len(json.loads((out / "ihc.geojson").read_text())["features"]) == case["cells"]


def test_pixel_types_and_nuclei_probability_are_argmax_and_softmax():
    """The network's maps into post-processing: types by a running maximum are ``argmax(1)`` exactly (ties to
    the first channel, as argmax), the nuclei probability ``sigmoid(l1 - l0)`` is the 2-class softmax's channel 1
    (to float rounding) and on the same side of 0.5."""
    import torch

    gen = torch.Generator().manual_seed(0)
    for channels in (1, 2, 6):
        logits = torch.randn(3, channels, 32, 40, generator=gen) * 4
        logits[:, :, :4] = logits[:, :, :4].round()  # ties
        logits[0, :, 0, 0] = 1.5  # all channels equal
        for x in (logits, logits.bfloat16().float()):
            got = slides._pixel_types(x)
            assert got.dtype == torch.uint8 and got.shape == (3, 32, 40)
            assert torch.equal(got, x.argmax(1).to(torch.uint8))
    binary = torch.randn(4, 2, 32, 32, generator=gen) * 8
    binary[:, 1, :2] = binary[:, 0, :2]  # exactly 0.5
    old = binary.softmax(1)[:, 1]
    new = slides._nuclei_probability(binary)
    assert new.shape == old.shape and new.dtype == torch.float32
    torch.testing.assert_close(new, old, atol=1e-6, rtol=0)
    assert torch.equal(new >= 0.5, old >= 0.5) and (new[:, :2] == 0.5).all()


class _Deferred:
    """A post-processing future that is never done until its result is asked for (then computed here)."""

    def __init__(self, log, fn, args, kwargs):
        self.log, self.call = log, (fn, args, kwargs)
        log["out"] += 1
        log["peak"] = max(log["peak"], log["out"])

    def done(self):
        return False

    def cancel(self):
        return False

    def result(self):
        self.log["out"] -= 1
        if self.log.get("broken"):
            from concurrent.futures.process import BrokenProcessPool

            raise BrokenProcessPool("a worker died")
        fn, args, kwargs = self.call
        return fn(*args, **kwargs)


def _share(cpus, cap, workers, network_s, side_ms, batches=3, batch=8, **kw):
    """A ThreadShare fed ``batches`` batches: ``network_s(k)`` seconds a tile at k threads, ``side_ms`` CPU ms
    of post-processing a tile; returns it and the threads each batch ran with."""
    share, seen = slides.ThreadShare(cpus, cap, workers, **kw), []
    for _ in range(batches):
        seen.append(share.threads)
        for _ in range(batch):
            share.side(side_ms / 1000, 1)
        share.network(network_s(share.threads) * batch, batch)
    return share, seen


def test_thread_share_gives_the_network_the_cpus_the_post_processing_leaves():
    """A small network whose tiles keep the workers busy gets the CPUs they leave; a realistic one, whose
    workers idle, gets them all; one noisy batch moves nothing; a GPU's or a worker-less run's is fixed."""

    def linear(one):
        return lambda k: one / k

    # two CPUs, one worker, a tiny network (95 ms a tile on one thread) and 80 ms of post-processing a tile
    share, seen = _share(2, 2, 1, linear(0.095), 80)
    assert seen == [2, 2, 1] and share.threads == 1 and share.summary()["tiles_by_threads"] == {"1": 8, "2": 16}
    # a ViT-S CellVTA (3.5 s a tile on one thread): the worker idles, the network keeps both CPUs
    assert _share(2, 2, 1, linear(3.5), 80)[1] == [2, 2, 2]
    # 16 CPUs, 15 workers, the tiny network: as many threads as leave the workers the ~4 CPUs they keep busy
    share, seen = _share(16, 16, 15, linear(0.32), 80, batches=6)
    assert seen[0] == 16 and share.threads == 12 and share.choose() == 12  # 12 + ceil(12 x 0.08 / 0.32 - 0.1)
    # as measured (bench_wsi --size 4096, 2 CPUs): tiny CellVTA 74 ms a tile on 2 threads, 95 on one, 35 ms of
    # post-processing: half a CPU of side work gets a whole one
    assert _share(2, 2, 1, {2: 0.074, 1: 0.095}.get, 35)[1] == [2, 2, 1]
    # the caller's cap and the CPUs bound it; without workers or on a GPU, the CPUs the workers leave
    assert _share(16, 4, 15, linear(3.5), 80)[1] == [4, 4, 4]
    assert _share(8, 32, 0, linear(0.095), 80)[1] == [8, 8, 8]
    assert _share(8, 8, 3, linear(0.001), 80, adapt=False)[1] == [5, 5, 5]
    # one slow batch (another job on the machine) does not move it; the same answer twice does
    share = slides.ThreadShare(2, 2, 1)
    for _ in range(8):
        share.side(0.001, 1)
    share.network(8 * 0.1, 8)
    assert share.threads == 2
    share.side(0.8 * 8, 0)  # a read that cost 0.8 s of CPU a tile, once
    share.network(8 * 0.1, 8)
    assert share.threads == 2
    share.side(-0.8 * 8, 0)
    share.network(8 * 0.1, 8)
    assert share.threads == 2


class _DeferredPool:
    def __init__(self, log):
        self.log = log

    def submit(self, fn, *args, **kwargs):
        return _Deferred(self.log, fn, args, kwargs)

    def shutdown(self, wait=True, cancel_futures=False):
        self.log["shutdown"] = True


def test_threads_in_flight_and_malloc_trim_while_a_slide_runs(package, slide, monkeypatch):
    """While a slide runs: torch's threads start at all the CPUs (no more than it had) and come down to the
    ones the post-processing leaves once its measured cost says so, restored afterwards, on error too;
    max(4 x workers, 2 x batch) tiles are in post-processing at once; glibc's heap is trimmed every TRIM_EVERY
    batches (and at the end)."""
    import torch

    path, _ = slide
    seen, trims, log = [], [], {"out": 0, "peak": 0}

    def infer(predictor, images, mean, std):
        seen.append(torch.get_num_threads())
        return _oracle(predictor, images, mean, std)

    monkeypatch.setattr(slides, "_infer", infer)
    monkeypatch.setattr(slides, "cpu_count", lambda: 3)
    monkeypatch.setattr(slides, "_malloc_trim", lambda: trims.append)
    monkeypatch.setattr(slides, "_post_pool", lambda workers: _DeferredPool(log) if workers else None)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        pred = Predictor(package, workers=1, batch_size=4).predict(path)
        batches = -(-pred.tiles["run"] // 4)
        # the oracle network is far faster than post-processing a tile: the CPUs go to the worker, one is left
        assert batches > slides.TRIM_EVERY and seen[0] == 3 and seen[-1] == 1 and torch.get_num_threads() == 4
        threads = pred.tiles["threads"]
        assert threads["cpus"] == 3 and threads["cap"] == 3 and threads["side_cpu_ms_per_tile"] > 0
        assert sum(threads["tiles_by_threads"].values()) == pred.tiles["run"]
        assert trims == [0] * (batches // slides.TRIM_EVERY + 1) and len(pred) > 50
        assert log["peak"] == max(4 * 1, 2 * 4) + 4 and log["out"] == 0 and log["shutdown"]
        seen.clear()
        Predictor(package, workers=0, batch_size=4).predict(path, roi=(0, 0, 512, 384))
        assert set(seen) == {3}  # no workers: all 3
        torch.set_num_threads(1)
        Predictor(package, workers=0, batch_size=4).predict(path, roi=(0, 0, 512, 384))
        assert set(seen) == {3, 1} and torch.get_num_threads() == 1  # a caller's cap stands
        torch.set_num_threads(4)
        log["broken"] = True  # a worker died: one clear error, the threads restored
        with pytest.raises(RuntimeError, match="__main__"):
            Predictor(package, workers=1, batch_size=4).predict(path, roi=(0, 0, 512, 384))
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_malloc_trim_only_where_glibc_has_it(monkeypatch):
    import sys

    slides._malloc_trim.cache_clear()
    try:
        trim = slides._malloc_trim()
        if sys.platform.startswith("linux") and trim is not None:
            assert trim(0) in (0, 1)
        monkeypatch.setattr(sys, "platform", "darwin")
        slides._malloc_trim.cache_clear()
        assert slides._malloc_trim() is None
    finally:
        monkeypatch.undo()
        slides._malloc_trim.cache_clear()
