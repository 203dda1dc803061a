import math

import numpy as np
import pytest

from medvit.metrics import (
    PQStats,
    instance_types,
    match_instances,
    mpq,
    multiclass_pq,
    panoptic_quality,
    remap_label,
)


def random_instances(rng, shape=(48, 48), n=12):
    """Random overlapping rectangles and discs painted in order (later ones cover earlier ones)."""
    inst = np.zeros(shape, dtype=np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for i in range(1, n + 1):
        cy, cx = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        r = rng.integers(2, 9)
        if rng.random() < 0.5:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= rng.integers(2, 9))
        inst[mask] = i * 7  # ids with gaps
    return inst


def perturb(rng, inst):
    """A prediction: each instance shifted by up to 2 px, some dropped, a few random false positives."""
    pred = np.zeros_like(inst)
    for i in np.unique(inst)[1:]:
        if rng.random() < 0.15:
            continue
        dy, dx = rng.integers(-2, 3, size=2)
        mask = np.roll(inst == i, (dy, dx), axis=(0, 1))
        pred[mask] = i + 1000
    extra = random_instances(rng, inst.shape, n=3)
    pred[(extra > 0) & (pred == 0)] = extra[(extra > 0) & (pred == 0)] + 5000
    return pred


def reference_pq(true, pred):
    """Straightforward O(n^2) matching: every (true, pred) pair with IoU > 0.5."""
    t_ids = [i for i in np.unique(true) if i and (true == i).any()]
    p_ids = [i for i in np.unique(pred) if i and (pred == i).any()]
    tp, iou_sum, used_t, used_p = 0, 0.0, set(), set()
    for t in t_ids:
        for p in p_ids:
            a, b = true == t, pred == p
            iou = (a & b).sum() / (a | b).sum()
            if iou > 0.5:
                tp += 1
                iou_sum += iou
                used_t.add(t)
                used_p.add(p)
    fp, fn = len(p_ids) - len(used_p), len(t_ids) - len(used_t)
    if tp + fp + fn == 0:
        return math.nan
    return (tp / (tp + 0.5 * fp + 0.5 * fn)) * (iou_sum / tp if tp else 0.0)


def test_hand_computed_case():
    true = np.zeros((10, 10), int)
    true[0:4, 0:4] = 1  # 16 px
    true[6:9, 6:9] = 2  # never found
    pred = np.zeros((10, 10), int)
    pred[0:4, 0:5] = 5  # 20 px, intersection 16 -> IoU 0.8
    pred[8:10, 0:2] = 9  # false positive
    s = panoptic_quality(true, pred)
    assert (s.tp, s.fp, s.fn) == (1, 1, 1)
    assert s.dq == pytest.approx(0.5)
    assert s.sq == pytest.approx(0.8)
    assert s.pq == pytest.approx(0.4)


def test_iou_of_exactly_half_is_not_a_match():
    true = np.zeros((4, 4), int)
    true[0:2, 0:2] = 1
    pred = np.zeros((4, 4), int)
    pred[0:2, 0:4] = 1  # IoU 4/8
    assert panoptic_quality(true, pred).tp == 0
    assert panoptic_quality(true, pred, match_iou=0.4).tp == 1


def test_empty_and_perfect():
    z = np.zeros((5, 5), int)
    assert math.isnan(panoptic_quality(z, z).pq)
    x = z.copy()
    x[1:3, 1:3] = 4
    assert panoptic_quality(x, x).pq == pytest.approx(1.0)
    assert panoptic_quality(x, z).pq == 0.0


def test_remap_label():
    a = np.array([[0, 7, 7], [30, 0, 2]])
    np.testing.assert_array_equal(remap_label(a), [[0, 2, 2], [3, 0, 1]])


@pytest.mark.parametrize("seed", range(6))
def test_pq_agrees_with_reference(seed):
    rng = np.random.default_rng(seed)
    true = random_instances(rng)
    pred = perturb(rng, true)
    got = panoptic_quality(true, pred).pq
    ref = reference_pq(true, pred)
    assert got == pytest.approx(ref, abs=1e-9, nan_ok=True)


@pytest.mark.parametrize("seed", range(3))
def test_hungarian_matching_is_one_to_one(seed):
    rng = np.random.default_rng(seed)
    true = random_instances(rng)
    pairs, free_t, free_p = match_instances(true, perturb(rng, true), match_iou=0.1)
    assert len({p[0] for p in pairs}) == len(pairs) == len({p[1] for p in pairs})
    assert all(p[2] > 0.1 for p in pairs)


@pytest.mark.parametrize("seed", range(4))
def test_mpq_agrees_with_reference(seed):
    rng = np.random.default_rng(100 + seed)
    classes = (1, 2, 3)
    images, refs = [], []
    for _ in range(3):
        true = random_instances(rng)
        pred = perturb(rng, true)
        t_types = {int(i): int(rng.integers(1, 4)) for i in np.unique(true)[1:]}
        p_types = {int(i): int(rng.integers(1, 4)) for i in np.unique(pred)[1:]}
        images.append(multiclass_pq(true, t_types, pred, p_types, classes))
        per_class = []
        for c in classes:
            t = np.where(np.isin(true, [i for i, k in t_types.items() if k == c]), true, 0)
            p = np.where(np.isin(pred, [i for i, k in p_types.items() if k == c]), pred, 0)
            per_class.append(reference_pq(t, p))
        present = [v for v in per_class if not math.isnan(v)]
        if present:
            refs.append(np.mean(present))
    assert mpq(images, mode="image") == pytest.approx(np.mean(refs))
    assert 0.0 <= mpq(images, mode="dataset") <= 1.0


def test_dataset_mode_sums_counts():
    a = {1: PQStats(1, 0, 0, 0.9), 2: PQStats()}
    b = {1: PQStats(0, 1, 1, 0.0), 2: PQStats(1, 0, 0, 0.7)}
    # class 1: tp 1, fp 1, fn 1, iou 0.9 -> 0.5 * 0.9; class 2: 0.7
    assert mpq([a, b], mode="dataset") == pytest.approx((0.45 + 0.7) / 2)
    # per image: a -> 0.9 (class 2 absent), b -> mean(0, 0.7)
    assert mpq([a, b], mode="image") == pytest.approx((0.9 + 0.35) / 2)


def test_instance_types_from_pixel_map():
    inst = np.array([[1, 1, 1, 0], [2, 2, 0, 0]])
    types = np.array([[3, 3, 1, 0], [0, 0, 0, 2]])
    assert instance_types(inst, types) == {1: 3, 2: 0}


def test_bad_arguments():
    with pytest.raises(ValueError, match="shape"):
        panoptic_quality(np.zeros((2, 2), int), np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="match_iou"):
        panoptic_quality(np.zeros((2, 2), int), np.zeros((2, 2), int), match_iou=1.5)
    with pytest.raises(ValueError, match="mode"):
        mpq([], mode="x")
