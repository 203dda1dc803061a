"""Presets on miniature synthetic sets: sample shapes and dtypes, geometry, crops, determinism, and that the
deterministic part is exactly the preprocessing predict replays."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Randomizable

from medvit.errors import ConfigError
from medvit.transforms import (
    LoadImaged,
    TransformsSpec,
    build_transforms,
    parse_transforms,
    preprocess_spec,
    preprocess_transforms,
)

# card, preset, task, extra spec keys
SETS = [
    ("synthetic_ct", "ct", "segmentation", {"patch_size": [16, 16, 16], "spacing": [2.0, 2.0, 2.0]}),
    ("synthetic_fundus", "fundus", "segmentation", {"resize": [32, 32]}),
    ("synthetic_cells", "he", "instance", {}),
    ("synthetic_cls", "photo", "classification", {"resize": [40, 40]}),
]


def _dims(name: str) -> int:
    return 3 if name == "synthetic_ct" else 2


def _first_random(compose) -> int:
    return next(i for i, t in enumerate(compose.transforms) if isinstance(t, Randomizable))


# -------------------------------------------------------------------------------------------- the spec


def test_defaults_per_preset():
    ct = TransformsSpec(preset="ct").resolve(3)
    assert (ct.orientation, ct.window, ct.patch_size, ct.normalisation, ct.in_channels) == (
        "RAS", [-175.0, 250.0], [96, 96, 96], "none", 1)  # fmt: skip
    fundus = TransformsSpec(preset="fundus").resolve(2)
    assert (fundus.orientation, fundus.patch_size, fundus.normalisation, fundus.in_channels) == (
        None, None, "imagenet", 3)  # fmt: skip
    assert TransformsSpec(preset="he").resolve(2).normalisation == "half"
    assert TransformsSpec(preset="mri").resolve(3).window is None


def test_preprocess_spec_per_preset():
    ct = preprocess_spec(TransformsSpec(preset="ct", window=[-100, 200], spacing=[1.5] * 3), spatial_dims=3)
    assert ct.intensity.kind == "window" and (ct.intensity.a_min, ct.intensity.a_max) == (-100, 200)
    assert (ct.intensity.b_min, ct.intensity.b_max, ct.orientation, ct.spacing) == (0, 1, "RAS", [1.5] * 3)
    mri = preprocess_spec(TransformsSpec(preset="mri"), spatial_dims=3)
    assert mri.intensity.kind == "zscore" and mri.intensity.nonzero and mri.mean is None
    photo = preprocess_spec(TransformsSpec(preset="photo", resize=[224, 224]), spatial_dims=2)
    assert photo.intensity.kind == "scale" and photo.intensity.scale == 255
    assert photo.mean == [0.485, 0.456, 0.406] and photo.std == [0.229, 0.224, 0.225]
    assert photo.resize == [224, 224] and photo.in_channels == 3 and photo.orientation is None
    he = preprocess_spec(TransformsSpec(preset="he"), spatial_dims=2)
    assert he.mean == he.std == [0.5]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"preset": "ct", "colour": 1}, r"^p\.yaml: transforms\.colour: unknown key$"),
        ({"preset": "xray"}, r"transforms\.preset: "),
        ({"preset": "fundus", "window": [0, 1]}, "only the ct preset"),
        ({"preset": "ct", "window": [250, -175]}, r"transforms\.window: "),
        ({"preset": "ct", "spacing": [1, 0, 1]}, r"transforms\.spacing: "),
        ({"preset": "ct", "pos_fraction": 1.5}, r"transforms\.pos_fraction: "),
        ({"preset": "ct", "samples_per_volume": 0}, r"transforms\.samples_per_volume: "),
        ("ct", "must be a mapping"),
    ],
)
def test_bad_sections_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        parse_transforms(data, "p.yaml")


def test_sizes_must_fit_the_data():
    with pytest.raises(ConfigError, match=r"transforms\.patch_size: needs 3 values"):
        preprocess_spec(TransformsSpec(preset="ct", patch_size=[64, 64]), spatial_dims=3)
    with pytest.raises(ConfigError, match=r"transforms\.resize: needs 2 values"):
        build_transforms(TransformsSpec(preset="photo", resize=[8, 8, 8]), task="classification", split="val",
                         spatial_dims=2)  # fmt: skip
    with pytest.raises(ConfigError, match=r"transforms\.normalisation: imagenet needs 3 channels"):
        preprocess_spec(TransformsSpec(preset="ct", normalisation="imagenet"), spatial_dims=3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"task": "detection", "split": "val"}, "task: unknown label type 'detection'"),
        ({"task": "segmentation", "split": "holdout"}, "split: unknown split 'holdout'"),
        ({"task": "multilabel", "split": "val"}, "num_classes: a multilabel task"),
    ],
)
def test_bad_task_or_split(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_transforms(TransformsSpec(preset="photo"), spatial_dims=2, **kwargs)


# ---------------------------------------------------------------------------------------- the pipelines


@pytest.mark.parametrize(("name", "preset", "task", "extra"), SETS, ids=[s[0] for s in SETS])
def test_samples_have_the_output_convention(small_cases, name, preset, task, extra):
    cases = small_cases(name)
    spec = TransformsSpec(preset=preset, **extra)
    dims = _dims(name)
    for split in ("train", "val"):
        out = build_transforms(spec, task=task, split=split, spatial_dims=dims)(cases[split][0])
        samples = out if isinstance(out, list) else [out]
        assert len(samples) == (spec.samples_per_volume if (dims == 3 and split == "train") else 1)
        for s in samples:
            image = s["image"]
            assert image.dtype == torch.float32 and image.shape[0] == spec.resolve(dims).in_channels
            assert s["id"] == cases[split][0]["id"]
            spatial = tuple(image.shape[1:])
            if name == "synthetic_ct" and split == "train":
                assert spatial == (16, 16, 16)
            elif name != "synthetic_ct":
                assert spatial == tuple(extra.get("resize", [48, 48]))
            if task == "segmentation":
                assert s["label"].shape == (1, *spatial) and s["label"].dtype == torch.long
                assert set(torch.unique(s["label"]).tolist()) <= {0, 1, 2}
                assert hasattr(image, "affine") == (dims == 3)  # 3D keeps its geometry
            elif task == "classification":
                assert s["label"].shape == () and s["label"].dtype == torch.long
            else:
                assert set(s) == {"image", "np_map", "hv_map", "tp_map", "inst_map", "id"}
                assert s["np_map"].shape == s["tp_map"].shape == s["inst_map"].shape == spatial
                assert s["hv_map"].shape == (2, *spatial) and s["hv_map"].dtype == torch.float32
                assert float(s["hv_map"].abs().max()) <= 1.0
                assert s["np_map"].dtype == s["tp_map"].dtype == torch.long


@pytest.mark.parametrize(("name", "preset", "task", "extra"), SETS, ids=[s[0] for s in SETS])
def test_deterministic_part_is_the_recorded_preprocessing(small_cases, name, preset, task, extra):
    """Training and predict agree: the val pipeline and the train pipeline up to its first random
    transform give exactly what ``preprocess_transforms(preprocess_spec(...))`` gives."""
    from monai.transforms import Compose

    case = small_cases(name)["val"][0]
    spec, dims = TransformsSpec(preset=preset, **extra), _dims(name)
    labels = ["label"] if task != "classification" else []
    recorded = preprocess_transforms(preprocess_spec(spec, spatial_dims=dims), label_keys=labels)
    replay = Compose([LoadImaged(["image", *labels], label_keys=labels), *recorded])(case)
    val = build_transforms(spec, task=task, split="val", spatial_dims=dims)(case)
    assert torch.equal(torch.as_tensor(val["image"]), torch.as_tensor(replay["image"]))
    train = build_transforms(spec, task=task, split="train", spatial_dims=dims)
    prefix = train(case, end=_first_random(train))
    assert torch.equal(torch.as_tensor(prefix["image"]), torch.as_tensor(replay["image"]))
    if dims == 3:
        np.testing.assert_array_equal(np.asarray(val["image"].affine), np.asarray(replay["image"].affine))
        assert torch.equal(torch.as_tensor(val["label"]), torch.as_tensor(replay["label"]).long())


def test_ct_volume_lands_on_the_ras_grid_with_the_spacing(small_cases):
    case = small_cases("synthetic_ct")["val"][0]
    spec = TransformsSpec(preset="ct", spacing=[2.0, 2.0, 2.0])
    out = build_transforms(spec, task="segmentation", split="val", spatial_dims=3)(case)
    src = nib.load(case["image"])
    assert np.allclose(np.diag(src.affine)[:3], [1.5, 1.5, 2.0])  # the synthetic files are RAS already
    expected = src.affine.copy()
    expected[:3, :3] = np.diag([2.0, 2.0, 2.0])  # same corner voxel centre, new spacing
    np.testing.assert_allclose(np.asarray(out["image"].affine), expected, atol=1e-6)
    extent = np.array(src.shape) * [1.5, 1.5, 2.0]
    assert tuple(out["image"].shape[1:]) == tuple(int(round(e / 2.0)) for e in extent)
    assert float(out["image"].min()) == 0.0 and float(out["image"].max()) <= 1.0  # air (-1000 HU) -> 0


def test_ct_is_reoriented_to_ras(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.integers(-200, 300, (10, 8, 6)).astype(np.int16)
    lab = (vol > 100).astype(np.uint8)
    flip = np.diag([-1.5, 1.5, 2.0, 1.0])  # first axis runs right to left (LAS)
    for name, data in (("img", vol), ("lab", lab)):
        nib.save(nib.Nifti1Image(data, flip), str(tmp_path / f"{name}.nii.gz"))
    case = {"id": "las", "image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}
    out = build_transforms(TransformsSpec(preset="ct"), task="segmentation", split="val", spatial_dims=3)(case)
    assert np.asarray(out["image"].affine)[0, 0] > 0
    expected = np.clip((vol[::-1].astype(np.float32) + 175) / 425, 0, 1)
    np.testing.assert_allclose(out["image"][0].numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal(out["label"][0].numpy(), lab[::-1])


def test_labels_stay_class_indices_after_resampling(small_cases):
    case = small_cases("synthetic_ct")["val"][0]
    spec = TransformsSpec(preset="ct", spacing=[1.3, 1.7, 1.1])
    out = build_transforms(spec, task="segmentation", split="val", spatial_dims=3)(case)
    assert out["label"].dtype == torch.long and set(torch.unique(out["label"]).tolist()) == {0, 1, 2}
    fundus = small_cases("synthetic_fundus")["train"][0]
    spec = TransformsSpec(preset="fundus", resize=[37, 29])
    train = build_transforms(spec, task="segmentation", split="train", spatial_dims=2)
    train.set_random_state(3)
    for _ in range(4):
        s = train(fundus)
        assert s["label"].shape == (1, 37, 29) and set(torch.unique(s["label"]).tolist()) <= {0, 1, 2}


@pytest.mark.parametrize("pos_fraction", [1.0, 0.5])
def test_crops_centre_on_foreground_at_pos_fraction(small_cases, pos_fraction):
    case = small_cases("synthetic_ct")["train"][0]
    spec = TransformsSpec(preset="ct", patch_size=[8, 8, 8], samples_per_volume=10, pos_fraction=pos_fraction,
                          augment=False)  # fmt: skip
    train = build_transforms(spec, task="segmentation", split="train", spatial_dims=3)
    train.set_random_state(1)
    start = _first_random(train)
    prepared = train(case, end=start)
    centres = [bool(c["label"][0, 4, 4, 4] > 0) for _ in range(8) for c in train(prepared, start=start)]
    assert abs(np.mean(centres) - pos_fraction) < 0.2
    assert all(c["label"].shape == (1, 8, 8, 8) for c in train(prepared, start=start))


def test_small_volumes_are_padded_to_the_patch(small_cases):
    case = small_cases("synthetic_ct")["train"][0]  # 24 x 24 x 16 voxels
    spec = TransformsSpec(preset="ct", patch_size=[32, 32, 32], samples_per_volume=1)
    out = build_transforms(spec, task="segmentation", split="train", spatial_dims=3)(case)
    assert out[0]["image"].shape == (1, 32, 32, 32) and out[0]["label"].shape == (1, 32, 32, 32)


@pytest.mark.parametrize(("name", "preset", "task", "extra"), SETS, ids=[s[0] for s in SETS])
def test_training_samples_are_seeded(small_cases, name, preset, task, extra):
    case = small_cases(name)["train"][0]
    spec = TransformsSpec(preset=preset, **extra)

    def draw(seed: int) -> list[torch.Tensor]:
        t = build_transforms(spec, task=task, split="train", spatial_dims=_dims(name))
        t.set_random_state(seed)
        outs = [t(case) for _ in range(3)]
        return [torch.as_tensor(s["image"]) for o in outs for s in (o if isinstance(o, list) else [o])]

    a, b, c = draw(7), draw(7), draw(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_no_augmentation_leaves_2d_training_deterministic(small_cases):
    case = small_cases("synthetic_fundus")["train"][0]
    spec = TransformsSpec(preset="fundus", augment=False)
    train = build_transforms(spec, task="segmentation", split="train", spatial_dims=2)(case)
    val = build_transforms(spec, task="segmentation", split="val", spatial_dims=2)(case)
    assert torch.equal(train["image"], val["image"]) and torch.equal(train["label"], val["label"])


def test_mri_zscore(small_cases):
    case = small_cases("synthetic_ct")["val"][0]
    out = build_transforms(TransformsSpec(preset="mri"), task="segmentation", split="val", spatial_dims=3)(case)
    image = out["image"][0].numpy()
    nonzero = image[image != 0]
    assert abs(nonzero.mean()) < 1e-3 and abs(nonzero.std() - 1) < 1e-2


def test_multilabel_targets_are_multi_hot(small_cases):
    case = dict(small_cases("synthetic_cls")["val"][0], label=[0, 2])
    t = build_transforms(TransformsSpec(preset="photo"), task="multilabel", split="val", spatial_dims=2,
                         num_classes=4)  # fmt: skip
    assert torch.equal(t(case)["label"], torch.tensor([1.0, 0.0, 1.0, 0.0]))


def test_refuge_masks_are_remapped_to_classes(tmp_path):
    from PIL import Image

    image = np.full((20, 24, 3), 120, np.uint8)
    mask = np.full((20, 24), 255, np.uint8)  # REFUGE: 255 background, 128 disc rim, 0 cup
    mask[5:15, 6:18], mask[8:12, 9:15] = 128, 0
    Image.fromarray(image).save(tmp_path / "g0001.jpg")
    Image.fromarray(mask).save(tmp_path / "g0001.bmp")
    case = {"id": "g0001", "image": str(tmp_path / "g0001.jpg"), "label": str(tmp_path / "g0001.bmp")}
    spec = TransformsSpec(preset="fundus", resize=[40, 48])
    out = build_transforms(spec, task="segmentation", split="val", spatial_dims=2,
                           label_remap={255: 0, 128: 1, 0: 2})(case)  # fmt: skip
    expected = np.repeat(np.repeat(np.select([mask == 255, mask == 128], [0, 1], 2), 2, 0), 2, 1)
    np.testing.assert_array_equal(out["label"][0].numpy(), expected)  # nearest resize of the class map
