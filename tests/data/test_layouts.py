"""Layout adapters on miniature copies of the real layouts, splits, and `medvit cards validate`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medvit.cli import app
from medvit.data import build_datalist, discover, load_card, split_cases, validate_card
from medvit.data.cards import Splits, parse_card
from medvit.transforms.label_maps import pannuke_to_maps, remap_labels

runner = CliRunner()


def _nifti(path, shape=(8, 8, 4), affine=None, value=0, dtype=np.int16):
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.full(shape, value, dtype)
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 2.5, 1]) if affine is None else affine), str(path))
    return path


# ------------------------------------------------------------------------------------------------ REFUGE


@pytest.fixture
def refuge_root(tmp_path):
    root = tmp_path / "REFUGE"
    for group, ids in (("Glaucoma", ["g0001", "g0002"]), ("Non-Glaucoma", ["n0001", "n0002", "n0003"])):
        (root / "Training400" / group).mkdir(parents=True)
        (root / "Annotation-Training400" / "Disc_Cup_Masks" / group).mkdir(parents=True)
        for cid in ids:
            Image.fromarray(np.full((40, 48, 3), 120, np.uint8)).save(root / "Training400" / group / f"{cid}.jpg")
            mask = np.full((40, 48), 255, np.uint8)  # REFUGE: 255 background, 128 disc, 0 cup
            mask[10:30, 12:36] = 128
            mask[16:24, 20:28] = 0
            Image.fromarray(mask).save(root / "Annotation-Training400" / "Disc_Cup_Masks" / group / f"{cid}.bmp")
    return root


def test_refuge_pairs_and_remap(refuge_root):
    card = load_card("refuge")
    cases, problems = discover(card, refuge_root)
    assert problems == []
    assert sorted(c["id"] for c in cases) == ["g0001", "g0002", "n0001", "n0002", "n0003"]
    for c in cases:
        assert c["image"].endswith(f"{c['id']}.jpg") and c["label"].endswith(f"{c['id']}.bmp")
    stored = np.asarray(Image.open(cases[0]["label"]))
    remapped = remap_labels(stored, card.layout.label_remap)
    assert set(np.unique(remapped)) == {0, 1, 2}
    assert remapped[20, 24] == 2 and remapped[12, 14] == 1 and remapped[0, 0] == 0
    report = validate_card(card, refuge_root)
    assert report.ok, report.problems
    assert report.summary["classes"] == {"background": 5, "optic_disc": 5, "optic_cup": 5}


def test_refuge_validate_reports_each_problem(refuge_root):
    masks = refuge_root / "Annotation-Training400" / "Disc_Cup_Masks"
    (masks / "Glaucoma" / "g0002.bmp").unlink()  # missing label
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(masks / "Glaucoma" / "g0099.bmp")  # extra label
    bad = np.full((40, 48), 255, np.uint8)
    bad[0, 0] = 64  # a value outside REFUGE's encoding
    Image.fromarray(bad).save(masks / "Non-Glaucoma" / "n0001.bmp")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(masks / "Non-Glaucoma" / "n0002.bmp")  # wrong size
    (refuge_root / "Training400" / "Non-Glaucoma" / "n0003.jpg").write_bytes(b"\xff\xd8\xff broken jpeg")

    result = runner.invoke(app, ["cards", "validate", "refuge", "--root", str(refuge_root)])
    assert result.exit_code == 2
    err = result.stderr
    assert "g0099.bmp: extra label without an image" in err
    assert "g0002.jpg: missing label (expected g0002.bmp)" in err
    assert "n0001.bmp: label values [64] outside the card's map [0, 1, 2]" in err
    assert "n0002.bmp: shape (20, 20) differs from image n0002.jpg (40, 48)" in err
    assert "unreadable: " in err and "n0003.jpg" in err
    assert "error: 5 problem(s) found for card 'refuge'" in err


# ------------------------------------------------------------------------------------------- BTCV (NIfTI)


@pytest.fixture
def btcv_root(tmp_path):
    root = tmp_path / "BTCV"
    for i in (1, 2, 3, 4, 5):
        _nifti(root / "RawData/Training/img" / f"img{i:04d}.nii.gz", value=-100)
        _nifti(root / "RawData/Training/label" / f"label{i:04d}.nii.gz", value=i % 3, dtype=np.uint8)
    return root


def test_btcv_folder_pairs_and_summary(btcv_root):
    result = runner.invoke(app, ["cards", "validate", "btcv", "--root", str(btcv_root)])
    assert result.exit_code == 0, result.output
    assert "card btcv: 5 case(s) (train 4, val 1, test 0)" in result.stdout
    assert "spacing range (mm): [1.5, 1.5, 2.5] .. [1.5, 1.5, 2.5]" in result.stdout
    assert result.stdout.strip().endswith("ok")


def test_btcv_geometry_mismatch(btcv_root):
    moved = np.diag([1.5, 1.5, 2.5, 1])
    moved[:3, 3] = [10, 0, 0]
    _nifti(btcv_root / "RawData/Training/label/label0002.nii.gz", affine=moved, value=1, dtype=np.uint8)
    _nifti(btcv_root / "RawData/Training/label/label0003.nii.gz", shape=(8, 8, 5), value=1, dtype=np.uint8)
    _nifti(btcv_root / "RawData/Training/label/label0004.nii.gz", value=20, dtype=np.uint8)
    report = validate_card(load_card("btcv"), btcv_root)
    text = "\n".join(report.problems)
    assert "label0002.nii.gz: geometry (affine) differs from image img0002.nii.gz" in text
    assert "label0003.nii.gz: shape (8, 8, 5) differs from image img0003.nii.gz (8, 8, 4)" in text
    assert "label0004.nii.gz: label values [20] outside the card's map" in text


def test_missing_root():
    report = validate_card(load_card("btcv"), "/no/such/root")
    assert report.problems == ["/no/such/root: data root of card 'btcv' does not exist"]


# --------------------------------------------------------------------------------- MSD and nnU-Net v2


def test_msd_dataset_json(tmp_path):
    root = tmp_path / "Task09_Spleen"
    training = []
    for i in (2, 3, 6, 8):
        _nifti(root / "imagesTr" / f"spleen_{i}.nii.gz")
        _nifti(root / "labelsTr" / f"spleen_{i}.nii.gz", value=1, dtype=np.uint8)
        training.append({"image": f"./imagesTr/spleen_{i}.nii.gz", "label": f"./labelsTr/spleen_{i}.nii.gz"})
    _nifti(root / "imagesTs" / "spleen_1.nii.gz")
    (root / "imagesTr" / "._spleen_2.nii.gz").write_bytes(b"mac resource fork")  # shipped in the real tar
    spec = {"name": "Spleen", "labels": {"0": "background", "1": "spleen"}, "numTraining": 4,
            "training": training, "test": ["./imagesTs/spleen_1.nii.gz"]}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(spec))
    card = load_card("msd_spleen")
    data = build_datalist(card, root)
    assert len(data["test"]) == 1 and data["test"][0]["label"] is None
    assert len(data["train"]) + len(data["val"]) == 4
    assert validate_card(card, root).ok


def test_nnunet_v2_multichannel(tmp_path):
    root = tmp_path / "Dataset001_Brain"
    for case in ("BRATS_001", "BRATS_002"):
        for c in range(2):
            _nifti(root / "imagesTr" / f"{case}_{c:04d}.nii.gz")
        _nifti(root / "labelsTr" / f"{case}.nii.gz", value=1, dtype=np.uint8)
    _nifti(root / "imagesTr" / "BRATS_009_0000.nii.gz")  # no label
    spec = {"channel_names": {"0": "T1", "1": "FLAIR"}, "labels": {"background": 0, "tumour": 1},
            "numTraining": 2, "file_ending": ".nii.gz"}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(spec))
    card = parse_card(_card("segmentation", {0: "bg", 1: "tumour"}, {"type": "nnunet"}, dims=3), "nn.yaml")
    cases, problems = discover(card, root)
    assert [c["id"] for c in cases] == ["BRATS_001", "BRATS_002"]
    assert cases[0]["image"][1].endswith("BRATS_001_0001.nii.gz")
    assert any("BRATS_009_0000.nii.gz: extra image without a label" in p for p in problems)


def _card(task, labels, layout, dims=2, splits=None):
    return {
        "name": "mini", "title": "t", "description": "d", "modality": "x", "spatial_dims": dims, "task": task,
        "labels": labels, "intended_use": "tests", "source": "s", "citation": "c", "license": "CC0-1.0",
        "how_to_obtain": "made by the test", "layout": layout, "splits": splits or {"type": "kfold"},
        "limitations": ["tiny"], "identifiable_data": False,
    }  # fmt: skip


# --------------------------------------------------------------------------------------------- datalists


def test_aptos_csv_datalist(tmp_path):
    root = tmp_path / "aptos"
    (root / "train_images").mkdir(parents=True)
    rows = ["id_code,diagnosis"]
    for i in range(20):
        Image.fromarray(np.full((16, 16, 3), i, np.uint8)).save(root / "train_images" / f"{i:08x}.png")
        rows.append(f"{i:08x},{i % 5}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    card = load_card("aptos2019")
    data = build_datalist(card, root)
    assert {len(v) for v in data.values()} == {3, 14}  # 15% val, 15% test of 20
    assert all(isinstance(c["label"], int) for v in data.values() for c in v)
    assert validate_card(card, root).ok
    (root / "train.csv").write_text("\n".join([*rows, "deadbeef,7"]) + "\n")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "train_images" / "deadbeef.png")
    problems = validate_card(card, root).problems
    assert problems == [
        f"{root / 'train_images' / 'deadbeef.png'}: label values [7] outside the card's map [0, 1, 2, 3, 4]"
    ]


def test_monai_json_datalist_keeps_its_splits(tmp_path):
    root = tmp_path / "ds"
    spec = {"training": [{"image": f"imagesTr/{i}.nii.gz", "label": f"labelsTr/{i}.nii.gz"} for i in range(4)],
            "validation": [{"image": "imagesTr/9.nii.gz", "label": "labelsTr/9.nii.gz"}]}  # fmt: skip
    root.mkdir()
    (root / "dataset_0.json").write_text(json.dumps(spec))
    layout = {"type": "datalist", "file": "dataset_0.json"}
    card = parse_card(_card("segmentation", {0: "bg", 1: "x"}, layout, 3, {"type": "fixed"}), "m.yaml")
    data = build_datalist(card, root)
    assert [len(data[s]) for s in ("train", "val", "test")] == [4, 1, 0]


# ------------------------------------------------------------------------------------- PanNuke, CoNIC


def test_pannuke_folds_and_maps(tmp_path):
    root = tmp_path / "pannuke"
    for fold, n in ((1, 3), (2, 2), (3, 2)):
        img_dir = root / f"Fold {fold}" / "images" / f"fold{fold}"
        mask_dir = root / f"Fold {fold}" / "masks" / f"fold{fold}"
        img_dir.mkdir(parents=True)
        mask_dir.mkdir(parents=True)
        np.save(img_dir / "images.npy", np.zeros((n, 32, 32, 3), np.float64))
        np.save(img_dir / "types.npy", np.array(["Breast"] * n))
        masks = np.zeros((n, 32, 32, 6), np.float64)
        masks[:, 2:6, 2:6, 0] = 7  # a neoplastic nucleus with id 7
        masks[:, 10:14, 10:14, 0] = 9  # a second neoplastic nucleus
        masks[:, 20:25, 20:25, 3] = 7  # a dead nucleus reusing id 7 in its own channel
        masks[..., 5] = (masks[..., :5].sum(-1) == 0).astype(float)
        np.save(mask_dir / "masks.npy", masks)
    card = load_card("pannuke")
    data = build_datalist(card, root)
    assert [len(data[s]) for s in ("train", "val", "test")] == [3, 2, 2]
    assert data["train"][1]["index"] == 1
    inst, types = pannuke_to_maps(np.load(data["train"][0]["label"])[0])
    assert len(np.unique(inst)) == 4  # background + three distinct instances
    assert types[3, 3] == 1 and types[22, 22] == 4 and inst[3, 3] != inst[12, 12]
    report = validate_card(card, root)
    assert report.ok, report.problems
    assert report.summary["classes"]["neoplastic"] == 7 and report.summary["classes"]["dead"] == 7


def test_conic_groups_never_straddle_splits(tmp_path):
    root = tmp_path / "conic"
    root.mkdir()
    n = 30
    np.save(root / "images.npy", np.zeros((n, 16, 16, 3), np.uint8))
    labels = np.zeros((n, 16, 16, 2), np.int32)
    labels[:, 4:8, 4:8, 0], labels[:, 4:8, 4:8, 1] = 1, 3
    np.save(root / "labels.npy", labels)
    names = [f"consep_{i // 5}-{i:04d}" for i in range(n)]  # six source images, five patches each
    (root / "patch_info.csv").write_text("patch_info\n" + "\n".join(names) + "\n")
    card = load_card("conic")
    data = build_datalist(card, root)
    groups = {s: {c["group"] for c in data[s]} for s in data}
    assert groups["train"].isdisjoint(groups["val"])
    assert len(groups["val"]) == 2 and len(data["val"]) == 10  # fold 0 of 5 over six groups: two whole groups
    assert validate_card(card, root).ok
    labels[0, 0, 0, 1] = 9
    np.save(root / "labels.npy", labels)
    assert "labels.npy: label values [9] outside the card's map" in validate_card(card, root).problems[0]


# ------------------------------------------------------------------------------------------------ splits


def _cases(n):
    return [{"id": f"c{i:03d}", "group": f"c{i:03d}", "split": None} for i in range(n)]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_kfold_is_seeded_disjoint_stable_and_covers_all(seed):
    cases = _cases(23)
    vals = []
    for fold in range(5):
        a = split_cases(cases, Splits(type="kfold", folds=5, fold=fold, seed=seed))
        b = split_cases(list(reversed(cases)), Splits(type="kfold", folds=5, fold=fold, seed=seed))
        ids = {s: sorted(c["id"] for c in a[s]) for s in a}
        assert ids == {s: sorted(c["id"] for c in b[s]) for s in b}  # order of discovery does not matter
        assert set(ids["train"]).isdisjoint(ids["val"]) and len(ids["train"]) + len(ids["val"]) == 23
        vals.append(set(ids["val"]))
    assert set().union(*vals) == {c["id"] for c in cases}
    assert sum(len(v) for v in vals) == 23


def test_ratio_split_and_seed_changes_it():
    cases = _cases(40)
    a = split_cases(cases, Splits(type="ratio", val_fraction=0.2, test_fraction=0.1, seed=0))
    b = split_cases(cases, Splits(type="ratio", val_fraction=0.2, test_fraction=0.1, seed=1))
    assert [len(a[s]) for s in ("train", "val", "test")] == [28, 8, 4]
    assert {c["id"] for c in a["val"]} != {c["id"] for c in b["val"]}
