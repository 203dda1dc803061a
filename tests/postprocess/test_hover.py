import numpy as np
import pytest

from medvit.metrics import panoptic_quality
from medvit.postprocess import hover_instances, hover_postprocess, hv_maps, vote_types
from medvit.postprocess.hover import _renumber, binary_opening, fill_holes, sobel_kernels


def touching_nuclei():
    yy, xx = np.mgrid[:64, :64]
    inst = np.zeros((64, 64), np.int32)
    inst[(yy - 30) ** 2 + (xx - 22) ** 2 < 100] = 1
    inst[((yy - 30) ** 2 + (xx - 38) ** 2 < 100) & (inst == 0)] = 2  # touches 1
    inst[(yy - 50) ** 2 + (xx - 50) ** 2 < 25] = 3
    inst[5:7, 5:7] = 4  # 4 px: below min_size
    return inst


def test_hv_maps_range_and_sign():
    inst = touching_nuclei()
    hv = hv_maps(inst)
    assert hv.shape == (2, 64, 64)
    assert hv.min() == -1.0 and hv.max() == 1.0
    assert (hv[:, inst == 0] == 0).all()
    row = hv[0, 30, 13:32]  # across nucleus 1, left to right: rises
    assert row[0] < 0 < row[-1]


@pytest.mark.parametrize("ksize", [11, 21])
def test_touching_nuclei_are_split_and_typed(ksize):
    inst = touching_nuclei()
    types = np.where(inst > 0, inst, 0)
    types[inst == 1] = 2
    types[inst == 2] = 1
    types[25:27, 20:22] = 3  # a minority of the pixels of nucleus 1
    res = hover_postprocess((inst > 0).astype(np.float32), hv_maps(inst), types, sobel_ksize=ksize)
    assert res.instances.max() == 3
    s = panoptic_quality(inst, res.instances)
    assert (s.tp, s.fp, s.fn) == (3, 0, 1)  # the 4-pixel object is removed
    assert s.sq > 0.95
    by_true = {}
    for i, t in res.types.items():
        true_id = np.bincount(inst[res.instances == i]).argmax()
        by_true[int(true_id)] = t
    assert by_true == {1: 2, 2: 1, 3: 3}
    assert all(0.5 < p <= 1.0 for p in res.type_probs.values())
    assert len(res.centroids) == 3


def test_softmax_input_and_empty():
    inst = touching_nuclei()
    probs = np.stack([(inst == 0), (inst > 0)]).astype(np.float32)
    assert hover_instances(probs, hv_maps(inst)).max() == 3
    empty = hover_instances(np.zeros((8, 8)), np.zeros((2, 8, 8)))
    assert empty.dtype == np.int32 and empty.max() == 0


def test_vote_types_prefers_nuclear_types_and_takes_probabilities():
    inst = np.array([[1, 1, 1], [0, 2, 2]])
    type_map = np.array([[0, 0, 4], [0, 0, 0]])
    types, probs = vote_types(inst, type_map)
    assert types == {1: 4, 2: 0}
    assert probs[1] == pytest.approx(1 / 3)
    onehot = np.eye(5)[type_map].transpose(2, 0, 1)
    assert vote_types(inst, onehot)[0] == types


def _renumber_loop(inst):
    """The per-instance loop ``_renumber`` replaced (the reference)."""
    ids = np.unique(inst)
    ids = ids[ids != 0]
    out = np.zeros(inst.shape, dtype=np.int32)
    for new, old in enumerate(ids, start=1):
        out[inst == old] = new
    return out


def _vote_types_loop(inst, type_map):
    """The per-instance loop ``vote_types`` replaced (the reference)."""
    types, probs = {}, {}
    for i in np.unique(inst):
        if i == 0:
            continue
        votes = np.bincount(type_map[inst == i].astype(np.int64))
        t = int(votes[1:].argmax()) + 1 if votes.size > 1 and votes[1:].any() else 0
        types[int(i)], probs[int(i)] = t, float(votes[t] / votes.sum())
    return types, probs


@pytest.mark.parametrize(
    "kind", ["dense", "sparse_ids", "negative_ids", "no_background", "background_types_only", "empty", "uint8"]
)
def test_renumber_and_vote_types_are_the_loops_they_replaced(kind):
    rng = np.random.default_rng(len(kind))
    inst = rng.integers(0, 30, (48, 40)).astype(np.int32)
    types = rng.integers(0, 6, (48, 40)).astype(np.uint8)
    if kind == "sparse_ids":
        inst = inst * 1_000_003  # ids far beyond the pixel count: the np.unique path
    elif kind == "negative_ids":
        inst = inst - 10
    elif kind == "no_background":
        inst = inst + 1
    elif kind == "background_types_only":
        types[:] = 0
    elif kind == "empty":
        inst[:] = 0
    elif kind == "uint8":
        inst = inst.astype(np.uint8)
    got = _renumber(inst)
    assert got.dtype == np.int32 and np.array_equal(got, _renumber_loop(inst))
    assert vote_types(inst, types) == _vote_types_loop(inst, types)  # probabilities bit for bit
    onehot = np.eye(6)[types].transpose(2, 0, 1)
    assert vote_types(inst, onehot) == _vote_types_loop(inst, types)


@pytest.mark.parametrize("seed", range(4))
def test_fill_holes_and_opening_are_scipys(seed):
    """The markers' hole filling and opening give SciPy's masks bit for bit: blobs with holes, masks touching
    the border, thin and one-pixel shapes, all false, all true, one row."""
    from scipy import ndimage as ndi
    from skimage.morphology import disk

    rng = np.random.default_rng(seed)
    masks = [ndi.gaussian_filter(rng.random((int(rng.integers(3, 90)), int(rng.integers(3, 90)))), s) > t
             for s in (0.6, 1.2, 2.5) for t in (0.45, 0.5, 0.55) for _ in range(4)]  # fmt: skip
    ring = np.zeros((20, 20), bool)
    ring[3:12, 3:12], ring[6:9, 6:9] = True, False  # a hole, and one at the border below
    ring[14:20, 5:10], ring[17:20, 6:9] = True, False
    masks += [ring, np.zeros((7, 9), bool), np.ones((7, 9), bool)]
    masks += [rng.random((1, 30)) > 0.5, rng.random((30, 1)) > 0.5]
    for m in masks:
        assert np.array_equal(fill_holes(m), ndi.binary_fill_holes(m))
        for r in (1, 2, 3):
            assert np.array_equal(binary_opening(m, disk(r)), ndi.binary_opening(m, structure=disk(r)))


def test_sobel_kernels_and_bad_arguments():
    smooth, deriv = sobel_kernels(3)
    np.testing.assert_allclose(smooth, [0.25, 0.5, 0.25])
    np.testing.assert_allclose(deriv, [0.5, 0, -0.5])
    with pytest.raises(ValueError, match="sobel_ksize"):
        sobel_kernels(4)
    with pytest.raises(ValueError, match="hv"):
        hover_instances(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="threshold"):
        hover_instances(np.zeros((4, 4)), np.zeros((2, 4, 4)), threshold=1.0)
