"""Per-label statistics on pydicom's real CT series against SimpleITK (an independent reader and independent label
statistics): HU intensities, volumes, world centroids and boxes; 2D pixel counts and areas; ``statistics.csv``
over a folder (with ``--skip-existing``), with no patient identifier in it."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medvit.inference.statistics import COLUMNS_3D, segmentation_statistics, statistics_rows

LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def _sitk_series(folder):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _sitk_reference(ref, labels_kji: np.ndarray) -> dict[int, dict]:
    """SimpleITK's label statistics (intensities) and shape statistics (centroid, box) in RAS millimetres."""
    import SimpleITK as sitk

    label_img = sitk.GetImageFromArray(labels_kji.astype(np.uint8))
    label_img.CopyInformation(ref)
    intensity = sitk.LabelStatisticsImageFilter()
    intensity.Execute(ref, label_img)
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(label_img)
    values = sitk.GetArrayFromImage(ref)
    out = {}
    for v in shape.GetLabels():
        n = intensity.GetCount(v)
        x0, y0, z0, sx, sy, sz = shape.GetBoundingBox(v)  # index box (voxel centres)
        corners = [(x, y, z) for x in (x0, x0 + sx - 1) for y in (y0, y0 + sy - 1) for z in (z0, z0 + sz - 1)]
        world = np.array([ref.TransformIndexToPhysicalPoint(c) for c in corners]) * LPS_TO_RAS
        out[v] = {
            "voxels": n,
            "volume_ml": n * np.prod(ref.GetSpacing()) / 1000.0,
            "mean": intensity.GetMean(v),
            "std": intensity.GetSigma(v) * np.sqrt((n - 1) / n),  # ITK's is the sample deviation
            "min": intensity.GetMinimum(v),
            "max": intensity.GetMaximum(v),
            "median": float(np.median(values[labels_kji == v])),
            "centroid_mm": np.asarray(shape.GetCentroid(v)) * LPS_TO_RAS,  # LPS -> RAS
            "bbox_min": world.min(0),
            "bbox_max": world.max(0),
        }
    return out


def _check(row: dict, want: dict) -> None:
    assert row["voxels"] == want["voxels"]
    for key in ("volume_ml", "mean", "std", "min", "max", "median"):
        assert row[key] == pytest.approx(want[key], rel=1e-5, abs=1e-5), key
    np.testing.assert_allclose(row["centroid_mm"], want["centroid_mm"], atol=1e-3)
    np.testing.assert_allclose(row["bbox_mm"]["min"], want["bbox_min"], atol=1e-3)
    np.testing.assert_allclose(row["bbox_mm"]["max"], want["bbox_max"], atol=1e-3)


def test_predicted_statistics_match_simpleitk_on_a_real_ct(ct_series, bright_package):
    """The bright package predicts HU > 0 (HU are integers): the statistics of that mask over the HU as read
    equal SimpleITK's, and the centroid and box land where SimpleITK puts them in the world."""
    import SimpleITK as sitk

    from medvit import Predictor

    pred = Predictor(bright_package(0.5), precision="32").predict(ct_series, statistics=True)
    ref = _sitk_series(ct_series)
    hu = sitk.GetArrayFromImage(ref)  # [K, J, I]
    mask_kji = (hu > 0).astype(np.uint8)
    np.testing.assert_array_equal(pred.mask, mask_kji.transpose(2, 1, 0))  # the known mask, on the input grid
    stats = pred.statistics
    assert stats["world"] == "RAS (mm)" and stats["intensity_unit"] == "HU"
    (row,) = stats["labels"]
    assert (row["label"], row["value"]) == ("bright", 1)
    _check(row, _sitk_reference(ref, mask_kji)[1])
    assert row["volume_ml"] == pytest.approx(pred.volumes_ml["bright"], abs=1e-4)
    assert pred.image is None  # not kept unless asked


def test_several_labels_against_simpleitk(ct_series):
    from medvit.io import read_image

    image = read_image(ct_series)
    hu = image[0].numpy()
    mask = np.zeros(hu.shape, np.uint8)
    mask[hu > 0] = 1
    mask[hu < -500] = 3
    labels = {0: "background", 1: "soft", 2: "absent", 3: "air"}
    stats = segmentation_statistics(mask, image.numpy(), np.asarray(image.affine), labels, modality="CT")
    want = _sitk_reference(_sitk_series(ct_series), mask.transpose(2, 1, 0))
    rows = {r["value"]: r for r in stats["labels"]}
    assert sorted(rows) == [1, 2, 3] and want.keys() == {1, 3}
    _check(rows[1], want[1])
    _check(rows[3], want[3])
    assert rows[2] == {
        "label": "absent",
        "value": 2,
        "voxels": 0,
        "volume_ml": 0.0,
        **dict.fromkeys(("mean", "std", "min", "max", "median", "centroid_mm", "bbox_mm")),
    }
    csv_rows = statistics_rows("CT5N", stats)
    assert [(r["case"], r["label"], r["channel"]) for r in csv_rows] == [
        ("CT5N", "soft", 0),
        ("CT5N", "absent", 0),
        ("CT5N", "air", 0),
    ]
    assert set(csv_rows[0]) == set(COLUMNS_3D)
    assert csv_rows[0]["centroid_x_mm"] == rows[1]["centroid_mm"][0]


def test_oblique_grid_centroid_and_several_channels():
    """On an oblique affine the centroid is the affine of the mean voxel index; channels are reported apart."""
    affine = np.array([[0.9, -0.3, 0.1, 5.0], [0.3, 0.9, 0.0, -3.0], [0.0, 0.1, 2.0, 7.0], [0, 0, 0, 1.0]])
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 12, 10, 8)).astype(np.float32)
    mask = np.zeros((12, 10, 8), np.uint8)
    mask[2:7, 3:9, 1:4] = 1
    stats = segmentation_statistics(mask, image, affine, {0: "bg", 1: "box"}, spacing_known=False)
    (row,) = stats["labels"]
    ijk = np.argwhere(mask == 1)
    np.testing.assert_allclose(row["centroid_mm"], affine[:3, :3] @ ijk.mean(0) + affine[:3, 3], rtol=1e-6)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    assert np.all(np.asarray(row["bbox_mm"]["min"]) <= world.min(0) + 1e-4)  # the box holds every voxel centre
    assert np.all(np.asarray(row["bbox_mm"]["max"]) >= world.max(0) - 1e-4)
    assert row["volume_ml"] is None and stats["intensity_unit"] is None  # spacing unknown, not CT
    for c in range(2):
        values = image[c][mask == 1]
        assert row["mean"][c] == pytest.approx(values.mean(), abs=1e-5)
        assert row["median"][c] == pytest.approx(np.median(values), abs=1e-5)
    assert [r["channel"] for r in statistics_rows("x", stats)] == [0, 1]


def test_2d_pixel_counts_and_areas():
    mask = np.zeros((20, 30), np.uint8)
    mask[2:6, 3:8] = 1
    mask[10:12, 10:11] = 2
    labels = {0: "background", 1: "disc", 2: "cup"}
    photo = segmentation_statistics(mask, None, np.eye(4), labels, spacing_known=False)
    assert photo["labels"] == [
        {"label": "disc", "value": 1, "pixels": 20, "area_mm2": None},
        {"label": "cup", "value": 2, "pixels": 2, "area_mm2": None},
    ]
    affine = np.diag([0.5, 0.2, 1.0, 1.0])  # rows 0.5 mm apart, columns 0.2 mm
    known = segmentation_statistics(mask, None, affine, labels)
    assert [r["area_mm2"] for r in known["labels"]] == [pytest.approx(2.0), pytest.approx(0.2)]
    assert statistics_rows("fundus", known)[0] == {
        "case": "fundus",
        "label": "disc",
        "value": 1,
        "pixels": 20,
        "area_mm2": 2.0,
    }


def test_normalisation_in_place_leaves_the_intensities_alone(zscore_package):
    """MONAI's z-score runs in place on float32 data: the statistics still see the values as given, and the
    caller's array is unchanged."""
    from medvit import Predictor

    rng = np.random.default_rng(1)
    volume = (rng.normal(size=(1, 16, 16, 8)) * 40 + 100).astype(np.float32)
    before = volume.copy()
    pred = Predictor(zscore_package, precision="32").predict(volume, spacing=(1.0, 1.0, 2.0), statistics=True)
    np.testing.assert_array_equal(volume, before)
    want = segmentation_statistics(pred.mask, before, pred.grid.affine, pred.labels)
    assert pred.statistics == want
    assert pred.window is None  # a z-scoring package has no display window


@pytest.fixture
def zscore_package(tmp_path):
    """The tiny random 3D package, z-scoring its input (MRI-style) instead of a HU window."""
    import torch
    from packages import SPECS

    from medvit.models import build_model
    from medvit.package import PackageSpec, save_package

    raw = dict(SPECS["seg3d"])
    raw["preprocessing"] = {**raw["preprocessing"], "intensity": {"kind": "zscore"}, "spacing": None}
    spec = PackageSpec.model_validate(raw)
    torch.manual_seed(0)
    return save_package(build_model(spec.model), spec, tmp_path / "zscore")


def test_statistics_csv_over_a_folder_with_skip_existing(tmp_path, ct_series, bright_package, pydicom_files):
    """``statistics.csv``: one row per case and label, written at the end of the run; cases skipped later keep
    their rows (from their ``<case>.json``); nothing that identifies the patient."""
    import shutil

    import pydicom

    from medvit import Predictor
    from medvit.inference.run import run_predict

    cases = tmp_path / "cases"
    shutil.copytree(ct_series, cases / "first")
    out = tmp_path / "out"
    predictor = Predictor(bright_package(0.5), precision="32")
    run_predict(predictor, cases, out, echo=str)
    shutil.copytree(ct_series, cases / "second")
    result = run_predict(predictor, cases, out, skip_existing=True, echo=str)
    assert [c["status"] for c in result.manifest["cases"]] == ["skipped", "ok"]
    with open(out / "statistics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(COLUMNS_3D)
    assert [(r["case"], r["label"]) for r in rows] == [("first", "bright"), ("second", "bright")]
    assert rows[0] == rows[1] | {"case": "first"}
    sidecar = json.loads((out / "second.json").read_text())
    (label,) = sidecar["statistics"]["labels"]
    assert float(rows[1]["mean"]) == label["mean"] and int(rows[1]["voxels"]) == label["voxels"] == 335
    ds = pydicom.dcmread(next(ct_series.iterdir()), stop_before_pixels=True)
    text = (out / "statistics.csv").read_text() + json.dumps(sidecar)
    for value in (str(ds.PatientName), str(ds.PatientID), "Doe", ds.StudyInstanceUID, ds.SeriesInstanceUID):
        assert value not in text, value
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # atomic: no temporary left


def test_2d_run_writes_pixel_statistics(tmp_path, bright_package):
    from PIL import Image
    from skimage import data as skdata

    from medvit import Predictor
    from medvit.inference.run import run_predict

    Image.fromarray(skdata.camera()[::4, ::4]).save(tmp_path / "camera.png")
    out = tmp_path / "out"
    run_predict(Predictor(bright_package(128.0, dims=2, resize=[32, 32])), tmp_path / "camera.png", out, echo=str)
    mask = np.asarray(Image.open(out / "camera.png"))
    with open(out / "statistics.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row == {"case": "camera", "label": "bright", "value": "1", "pixels": str(int((mask == 1).sum())),
                   "area_mm2": ""}  # fmt: skip
