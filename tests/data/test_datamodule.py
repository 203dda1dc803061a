"""MedvitDataModule on miniature synthetic sets: loaders, properties, seeding, and check() on bad data."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from medvit.data import load_card
from medvit.data.cards import parse_card
from medvit.data.datamodule import MedvitDataModule
from medvit.errors import ConfigError, InputError

SMALL = {"synthetic_ct": [24, 24, 16], "synthetic_fundus": [48, 48], "synthetic_cells": [48, 48],
         "synthetic_cls": [32, 32]}  # fmt: skip
# card -> transforms section, task, expected training batch shapes
SETS = {
    "synthetic_ct": ({"preset": "ct", "patch_size": [16, 16, 16]}, "segmentation",
                     {"image": (4, 1, 16, 16, 16), "label": (4, 1, 16, 16, 16)}),
    "synthetic_fundus": ({"preset": "fundus", "resize": [32, 32]}, "segmentation",
                         {"image": (2, 3, 32, 32), "label": (2, 1, 32, 32)}),
    "synthetic_cells": ({"preset": "he"}, "instance",
                        {"image": (2, 3, 48, 48), "np_map": (2, 48, 48), "hv_map": (2, 2, 48, 48),
                         "tp_map": (2, 48, 48), "inst_map": (2, 48, 48)}),
    "synthetic_cls": ({"preset": "photo"}, "classification", {"image": (2, 3, 32, 32), "label": (2,)}),
}  # fmt: skip


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MEDVIT_CACHE", str(tmp_path_factory.getbasetemp() / "medvit-cache"))


def _small(name):
    card = load_card(name)
    return card.model_copy(update={"layout": card.layout.model_copy(update={"num_cases": 6, "size": SMALL[name]})})


def _module(name, **kwargs):
    transforms, _, _ = SETS[name]
    return MedvitDataModule(_small(name), root=None, transforms=kwargs.pop("transforms", transforms), **kwargs)


@pytest.mark.parametrize("name", list(SETS))
def test_one_batch_from_each_loader(name):
    dm = _module(name)
    dm.check()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    for key, shape in SETS[name][2].items():
        assert tuple(batch[key].shape) == shape, key
    assert len(batch["id"]) == SETS[name][2]["image"][0]
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape[0] == 1 and val["image"].dtype == torch.float32
    dm.setup("test")
    test = next(iter(dm.test_dataloader()))  # no test split in these cards: falls back to val
    assert test["id"] == val["id"]
    card = _small(name)
    assert dm.labels == card.labels and dm.num_classes == len(card.labels)
    assert dm.spatial_dims == card.spatial_dims and dm.in_channels == (1 if name == "synthetic_ct" else 3)


def test_ct_validation_volumes_are_whole_and_keep_geometry():
    dm = _module("synthetic_ct")
    dm.setup("validate")
    val = next(iter(dm.val_dataloader()))
    assert tuple(val["image"].shape) == (1, 1, 24, 24, 16) and val["label"].dtype == torch.long
    assert np.allclose(np.diag(np.asarray(val["image"].affine[0]))[:3], [1.5, 1.5, 2.0])
    assert dm.preprocess.intensity.kind == "window" and dm.resolved.patch_size == [16, 16, 16]


def test_cache_limit_and_seed():
    def first_batch(seed, cache=False):
        dm = _module("synthetic_fundus", cache=cache, seed=seed, limit_cases=3)
        dm.setup("fit")
        assert len(dm.datasets["train"]) == 3
        return next(iter(dm.train_dataloader()))

    a, b, c = first_batch(0), first_batch(0, cache=True), first_batch(5)
    assert a["id"] == b["id"] and torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["image"], c["image"])


def test_unknown_preset_key_names_it():
    with pytest.raises(ConfigError, match=r"^transforms\.colour_jitter: unknown key$"):
        _module("synthetic_fundus", transforms={"preset": "fundus", "colour_jitter": 0.2})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size: must be at least 1"),
        ({"limit_cases": 0}, "limit_cases: must be at least 1"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"root": None, "transforms": {"preset": "fundus"}, **kwargs}
    with pytest.raises(ConfigError, match=match):
        MedvitDataModule(_small("synthetic_fundus"), **args)


# --------------------------------------------------------------------------------- check() on bad data


def _pairs_card(**layout):
    data = load_card("synthetic_ct").model_dump()
    layout = {"type": "folder_pairs", "images_dir": "imagesTr", "labels_dir": "labelsTr", **layout}
    data.update(name="pairs", synthetic=False, splits={"type": "ratio", "val_fraction": 0.5}, layout=layout)
    return parse_card(data, "pairs.yaml")


def _pairs_module(root):
    return MedvitDataModule(_pairs_card(), root=str(root), transforms={"preset": "ct", "patch_size": [8, 8, 8]})


def _write_pairs(root, n=4, label_shape=(12, 12, 8), label_affine=None):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir(parents=True)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    for i in range(n):
        image = np.full((12, 12, 8), 40, np.int16)
        label = np.zeros(label_shape, np.uint8)
        label[4:8, 4:8, 2:6] = 1
        nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / f"c{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine if label_affine is None else label_affine),
                 str(root / "labelsTr" / f"c{i}.nii.gz"))  # fmt: skip


def test_check_passes_on_good_pairs(tmp_path):
    _write_pairs(tmp_path / "ok")
    dm = _pairs_module(tmp_path / "ok")
    dm.check()
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["image"].shape == (4, 1, 8, 8, 8)


def test_check_missing_root(tmp_path):
    with pytest.raises(InputError, match=r"missing: data root of card 'pairs' does not exist"):
        _pairs_module(tmp_path / "missing").check()


def test_check_empty_folders(tmp_path):
    (tmp_path / "empty" / "imagesTr").mkdir(parents=True)
    (tmp_path / "empty" / "labelsTr").mkdir(parents=True)
    with pytest.raises(InputError, match=r"empty: card 'pairs' found no cases"):
        _pairs_module(tmp_path / "empty").check()


def test_check_card_that_does_not_match_the_files(tmp_path):
    _write_pairs(tmp_path / "other")
    (tmp_path / "other" / "imagesTr").rename(tmp_path / "other" / "images")
    with pytest.raises(InputError, match=r"imagesTr: images folder of the layout does not exist"):
        _pairs_module(tmp_path / "other").check()


def test_check_layout_problems_name_the_first(tmp_path):
    _write_pairs(tmp_path / "partial")
    (tmp_path / "partial" / "labelsTr" / "c1.nii.gz").unlink()
    (tmp_path / "partial" / "labelsTr" / "c3.nii.gz").unlink()
    with pytest.raises(
        InputError, match=r"^card 'pairs': .*c1\.nii\.gz: missing label .*\(and 1 more problems\)$"
    ):
        _pairs_module(tmp_path / "partial").check()


def test_check_labels_on_another_grid(tmp_path):
    _write_pairs(tmp_path / "grid", label_shape=(12, 12, 7))
    with pytest.raises(InputError, match=r"^card 'pairs', (train|val): case c\d: label c\d\.nii\.gz has grid"):
        _pairs_module(tmp_path / "grid").check()
    _write_pairs(tmp_path / "shifted", label_affine=np.diag([1.5, 1.5, 3.0, 1.0]))
    with pytest.raises(InputError, match=r"geometry \(affine\) differs"):
        _pairs_module(tmp_path / "shifted").check()


def test_check_label_values_outside_the_card(tmp_path):
    _write_pairs(tmp_path / "values")
    for f in (tmp_path / "values" / "labelsTr").iterdir():
        img = nib.load(str(f))
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 7, img.affine), str(f))
    with pytest.raises(InputError, match=r"case c\d: label values \[7\] outside the card's classes \[0, 1, 2\]"):
        _pairs_module(tmp_path / "values").check()


def test_check_unreadable_image(tmp_path):
    _write_pairs(tmp_path / "broken")
    for f in (tmp_path / "broken" / "imagesTr").iterdir():
        f.write_bytes(f.read_bytes()[:60])
    with pytest.raises(InputError, match=r"^card 'pairs', (train|val): case c\d: .*c\d\.nii\.gz"):
        _pairs_module(tmp_path / "broken").check()


def test_lightning_fits_from_the_module_with_workers():
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 3, 1)

        def training_step(self, batch, _):
            logits = self.conv(batch["image"].as_tensor())
            return torch.nn.functional.cross_entropy(logits, batch["label"].as_tensor()[:, 0])

        def validation_step(self, batch, _):
            assert batch["image"].shape[0] == 1

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = _module("synthetic_ct", num_workers=2)
    quiet = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, accelerator="cpu", **quiet)
    trainer.fit(Tiny(), datamodule=dm)
    assert trainer.global_step == 2
