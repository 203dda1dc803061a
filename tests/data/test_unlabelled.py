"""Unlabelled data: the image_folder layout, unlabelled cards, and MedvitDataModule(labelled=False)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medvit.data import load_card
from medvit.data.cards import IMAGE_EXTENSIONS, parse_card
from medvit.data.datamodule import MedvitDataModule
from medvit.data.layouts import discover
from medvit.errors import ConfigError, InputError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def cache(monkeypatch):
    monkeypatch.setenv("MEDVIT_CACHE", str(REPO / ".pytest_cache" / "medvit"))


def _card(spatial_dims: int = 3, task: str = "unlabelled", labels: dict | None = None, **layout):
    data = load_card("unlabelled_ct" if spatial_dims == 3 else "unlabelled_photos").model_dump()
    data["layout"] = {"type": "image_folder", **layout}
    data.update(name="mine", task=task, labels=labels or {})
    return parse_card(data, "mine.yaml")


def _photo(path: Path, size=(20, 24), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 255, (*size, 3 if mode == "RGB" else 1), np.uint8)
    Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(path)


def _volume(path: Path, shape=(12, 10, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full(shape, 40, np.int16), np.diag([1.5, 1.5, 2.0, 1.0])), str(path))


@pytest.fixture
def folder(tmp_path, ct_series) -> Path:
    """Nested photos, a NIfTI, a DICOM series (files without a suffix), hidden files, links that loop."""
    root = tmp_path / "data"
    _photo(root / "top.png")
    _photo(root / "eyes" / "left.JPG")
    _photo(root / "eyes" / "2024" / "right.jpeg", mode="L")
    _volume(root / "ct" / "vol.nii.gz")
    shutil.copytree(ct_series, root / "ct" / "patient1" / "series")
    (root / "notes.txt").write_text("not an image")
    (root / "ct" / "patient1" / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM")  # an index: not a series
    _photo(root / ".hidden.png")
    _photo(root / ".cache" / "thumb.png")
    os.symlink(root, root / "eyes" / "loop", target_is_directory=True)  # a loop, never entered
    os.symlink(root / "b.png", root / "a.png")  # a file link loop: skipped
    os.symlink(root / "a.png", root / "b.png")
    os.symlink(root / "missing.png", root / "dangling.png")
    return root


def test_image_folder_finds_every_image_once(folder):
    cases, problems = discover(_card(), folder)
    assert problems == []
    by_id = {c["id"]: c for c in cases}
    assert sorted(by_id) == [
        "ct__patient1__series", "ct__vol", "eyes__2024__right", "eyes__left", "top",
    ]  # fmt: skip
    series = by_id["ct__patient1__series"]
    assert series["image"] == str(folder / "ct" / "patient1" / "series")  # one case for the whole series
    assert all(c["label"] is None and c["split"] is None and c["group"] == c["id"] for c in cases)
    assert cases == discover(_card(), folder)[0]  # deterministic


def test_image_folder_options(folder):
    top = discover(_card(recursive=False), folder)[0]
    assert [c["id"] for c in top] == ["top"]
    sub = discover(_card(images_dir="eyes", extensions=["JPG", ".jpeg"]), folder)[0]
    assert [c["id"] for c in sub] == ["2024__right", "left"]
    no_series = discover(_card(images_dir="ct", dicom_series=False), folder)[0]
    assert [c["id"] for c in no_series] == ["vol"]
    whole = discover(_card(images_dir="ct/patient1/series"), folder)[0]
    assert [(c["id"], c["image"]) for c in whole] == [("series", str(folder / "ct" / "patient1" / "series"))]


def test_single_dicom_files_without_series(tmp_path, ct_series):
    for f in sorted(ct_series.iterdir())[:2]:
        shutil.copy(f, tmp_path / f"{f.name}.dcm")
    cases = discover(_card(2, extensions=[".dcm", ".png"], dicom_series=False), tmp_path)[0]
    assert [c["id"] for c in cases] == sorted(f"{f.name}" for f in sorted(ct_series.iterdir())[:2])
    assert discover(_card(2, extensions=[".png"]), tmp_path)[0][0]["image"] == str(tmp_path)


def test_ids_stay_unique(tmp_path):
    _photo(tmp_path / "a.png")
    _photo(tmp_path / "a.jpg")
    _photo(tmp_path / "x" / "y.png")
    _photo(tmp_path / "x__y.png")
    ids = [c["id"] for c in discover(_card(2), tmp_path)[0]]
    assert ids == ["a.jpg", "a.png", "x__y.png", "x__y.png__2"]  # root file first, then x/y.png


def test_nested_dicom_folders_are_a_problem(tmp_path, ct_series):
    shutil.copytree(ct_series, tmp_path / "series")
    shutil.copytree(ct_series, tmp_path / "series" / "again")
    cases, problems = discover(_card(), tmp_path)
    assert [c["id"] for c in cases] == ["series", "series__again"]
    assert len(problems) == 1 and "series: DICOM files here and in its sub-folder again" in problems[0]


def test_folder_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("nothing")
    _photo(tmp_path / "empty" / ".hidden.png")
    with pytest.raises(InputError, match=r"empty: no images found \(\.png, .*, \.nii\.gz, DICOM series\)$"):
        discover(_card(), tmp_path / "empty")
    with pytest.raises(InputError, match=r"nowhere: images folder of the layout does not exist"):
        discover(_card(images_dir="nowhere"), tmp_path)


# ---------------------------------------------------------------------------------------------------- cards


@pytest.mark.parametrize("name", ["unlabelled_photos", "unlabelled_ct"])
def test_template_cards(name):
    card = load_card(name)
    assert card.task == "unlabelled" and card.labels == {} and card.layout.type == "image_folder"
    assert card.identifiable_data and any("de-identify" in line for line in card.limitations)


def test_default_extensions_are_what_read_image_reads():
    from medvit.io.image2d import IMAGE2D_SUFFIXES
    from medvit.io.nifti import NIFTI_SUFFIXES

    assert set(IMAGE_EXTENSIONS) <= {*IMAGE2D_SUFFIXES, *NIFTI_SUFFIXES}
    assert _card().layout.extensions == list(IMAGE_EXTENSIONS)


def test_image_folder_needs_an_unlabelled_card():
    with pytest.raises(
        ConfigError, match=r"^mine\.yaml: task: an image_folder layout has no labels: .*'classification'"
    ):
        _card(2, task="classification", labels={0: "a", 1: "b"})


def test_unlabelled_card_with_another_layout():
    data = load_card("synthetic_ct").model_dump()
    data.update(name="scans", task="unlabelled", labels={}, synthetic=False,
                layout={"type": "folder_pairs", "images_dir": "imagesTr"})  # fmt: skip
    assert parse_card(data, "scans.yaml").task == "unlabelled"


def test_unreadable_extension():
    with pytest.raises(
        ConfigError, match=r"^mine\.yaml: layout\.extensions: \['\.nrrd'\] not formats medvit reads"
    ):
        _card(extensions=[".nii.gz", ".nrrd"])


# ---------------------------------------------------------------------------------------------- datamodule


def test_labelled_card_as_unlabelled_2d():
    for patch, size in ((None, 64), ([32, 32], 32)):
        dm = MedvitDataModule("synthetic_cls", transforms={"preset": "photo", "patch_size": patch}, batch_size=2,
                              limit_cases=4, labelled=False)  # fmt: skip
        dm.check()
        assert dm.task == "unlabelled" and all(c["label"] is None for c in dm.datalist["train"])
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        assert set(batch) == {"image", "id"} and tuple(batch["image"].shape) == (2, 3, size, size)
        assert batch["image"].dtype == torch.float32
        val = next(iter(dm.val_dataloader()))
        assert set(val) == {"image", "id"} and tuple(val["image"].shape) == (1, 3, 64, 64)


def test_labelled_card_as_unlabelled_3d():
    from monai.data import MetaTensor

    transforms = {"preset": "ct", "patch_size": [32, 32, 32], "samples_per_volume": 2}
    dm = MedvitDataModule("synthetic_ct", transforms=transforms, batch_size=2, limit_cases=2, labelled=False)
    dm.check()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "id"} and tuple(batch["image"].shape) == (4, 1, 32, 32, 32)
    assert isinstance(batch["image"], MetaTensor) and len(batch["id"]) == 4
    val = next(iter(dm.val_dataloader()))  # centre crop: volumes of any size batch
    assert set(val) == {"image", "id"} and tuple(val["image"].shape) == (1, 1, 32, 32, 32)


def test_image_folder_card_in_the_datamodule(folder):
    (folder / "top.png").unlink()
    shutil.rmtree(folder / "eyes")
    transforms = {"preset": "ct", "patch_size": [8, 8, 8], "samples_per_volume": 2}
    dm = MedvitDataModule(_card(), root=str(folder), transforms=transforms, batch_size=2, labelled=False)
    dm.check()
    assert sorted(c["id"] for s in dm.datalist.values() for c in s) == ["ct__patient1__series", "ct__vol"]
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert tuple(batch["image"].shape) == (2, 1, 8, 8, 8) and set(batch) == {"image", "id"}
    # a labelled module on an unlabelled card finds nothing to train on
    with pytest.raises(InputError, match=r"card 'mine' has no labelled training cases"):
        MedvitDataModule(_card(), root=str(folder), transforms=transforms).check()


def test_unlabelled_module_without_training_cases(tmp_path):
    _photo(tmp_path / "only.png")  # one case: the ratio split puts it in val
    dm = MedvitDataModule(_card(2), root=str(tmp_path), transforms={"preset": "photo"}, labelled=False)
    with pytest.raises(InputError, match=r"card 'mine' has no training cases$"):
        dm.check()
