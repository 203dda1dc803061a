"""HoVer targets: distance maps on hand-made instances, label files, and consistency under augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvit.transforms import HoverTargets, HoverTargetsd, TransformsSpec, build_transforms, hover_maps


def test_hover_maps_by_hand():
    inst = np.zeros((7, 7), np.int32)
    inst[0:3, 0:2] = 1  # 3x2 block: centre (row 1, col 0.5)
    for r, c in ((4, 3), (4, 4), (4, 5), (5, 3)):  # an L: centre (row 4.25, col 3.75)
        inst[r, c] = 2
    hv = hover_maps(inst)
    assert hv.shape == (2, 7, 7) and hv.dtype == np.float32
    np.testing.assert_allclose(hv[0, 0:3, 0:2], [[-1, 1]] * 3)  # x: -0.5 / 0.5 on each side
    np.testing.assert_allclose(hv[1, 0:3, 0:2], [[-1, -1], [0, 0], [1, 1]])
    # L: x offsets -0.75, 0.25, 1.25 (row 4), -0.75 (row 5) -> negatives / 0.75, positives / 1.25
    np.testing.assert_allclose(hv[0, 4, 3:6], [-1, 0.2, 1])
    np.testing.assert_allclose(hv[0, 5, 3], -1)
    # y offsets -0.25 (row 4), 0.75 (row 5)
    np.testing.assert_allclose(hv[1, 4, 3:6], [-1, -1, -1])
    np.testing.assert_allclose(hv[1, 5, 3], 1)
    assert not hv[:, inst == 0].any()


def test_hover_maps_rejects_non_2d():
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        hover_maps(np.zeros((2, 4, 4), np.int32))


def test_targets_from_instance_and_type_maps():
    inst = np.zeros((6, 6), np.int32)
    inst[1:3, 1:3], inst[4:6, 3:6] = 5, 9
    types = np.where(inst == 5, 2, np.where(inst == 9, 3, 0))
    types[0, 0] = 1  # a type outside any instance is background
    np_map, hv, tp, out_inst = HoverTargets()(torch.as_tensor(np.stack([inst, types])))
    assert np_map.dtype == torch.long and tp.dtype == torch.long and hv.dtype == torch.float32
    assert torch.equal(np_map, torch.as_tensor(inst > 0).long())
    assert torch.equal(tp, torch.as_tensor(np.where(inst > 0, types, 0)).long())
    assert torch.equal(out_inst, torch.as_tensor(inst))
    np.testing.assert_array_equal(hv.numpy(), hover_maps(inst))
    np_only, _, tp_only, _ = HoverTargets()(inst)  # an instance map alone: every nucleus is type 1
    assert torch.equal(tp_only, np_only)
    with pytest.raises(ValueError, match="cell label"):
        HoverTargets()(np.zeros((3, 4, 4)))


def test_targets_read_conic_and_pannuke_arrays(tmp_path):
    inst = np.zeros((8, 8), np.int32)
    inst[1:4, 1:4], inst[5:7, 5:8] = 1, 2
    conic = np.zeros((2, 8, 8, 2), np.int32)
    conic[1, ..., 0], conic[1, ..., 1] = inst, np.where(inst == 1, 4, np.where(inst == 2, 2, 0))
    np.save(tmp_path / "labels.npy", conic)
    pannuke = np.zeros((1, 8, 8, 6), np.float64)
    pannuke[0, ..., 1] = np.where(inst == 1, 7, 0)  # inflammatory (type 2), PanNuke instance value 7
    pannuke[0, ..., 4] = np.where(inst == 2, 3, 0)  # epithelial (type 5)
    pannuke[0, ..., 5] = inst == 0
    np.save(tmp_path / "masks.npy", pannuke)

    c = HoverTargetsd("label")({"id": "p1", "label": str(tmp_path / "labels.npy"), "index": 1})
    assert "label" not in c
    assert torch.equal(c["inst_map"], torch.as_tensor(inst))
    assert set(torch.unique(c["tp_map"]).tolist()) == {0, 2, 4}
    p = HoverTargetsd("label")({"id": "p0", "label": str(tmp_path / "masks.npy"), "index": 0})
    assert torch.equal(p["np_map"], torch.as_tensor(inst > 0).long())
    assert torch.equal(p["tp_map"], torch.as_tensor(np.where(inst == 1, 2, np.where(inst == 2, 5, 0))))
    np.testing.assert_array_equal(p["hv_map"].numpy(), hover_maps(p["inst_map"].numpy()))


def _dihedral(a: np.ndarray) -> list[np.ndarray]:
    out = []
    for k in range(4):
        r = np.rot90(a, k)
        out += [r, np.fliplr(r)]
    return out


def test_augmented_cells_keep_targets_consistent(small_cases):
    case = small_cases("synthetic_cells")["train"][0]
    spec = TransformsSpec(preset="he")
    ref = build_transforms(spec, task="instance", split="val", spatial_dims=2)(case)
    train = build_transforms(spec, task="instance", split="train", spatial_dims=2)
    train.set_random_state(0)
    moved = 0
    for _ in range(8):
        s = train(case)
        inst = s["inst_map"].numpy()
        assert any(np.array_equal(inst, d) for d in _dihedral(ref["inst_map"].numpy()))  # geometry only
        moved += not np.array_equal(inst, ref["inst_map"].numpy())
        assert torch.equal(s["np_map"], torch.as_tensor(inst > 0).long())
        assert torch.equal(s["tp_map"] > 0, s["np_map"] > 0)
        np.testing.assert_array_equal(s["hv_map"].numpy(), hover_maps(inst))  # recomputed after geometry
        image = s["image"].numpy().mean(0)  # dark nuclei on a pale background, wherever the geometry put them
        assert image[inst > 0].mean() < 0 < image[inst == 0].mean()
    assert moved > 0
