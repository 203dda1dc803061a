"""Sliding window: MONAI's window layout, Gaussian blending against a direct computation and against MONAI's
``sliding_window_inference``, padding, batching, progress, and stitching on the CPU after running out of memory."""

from __future__ import annotations

import itertools

import pytest
import torch

from medvit.errors import MedvitWarning
from medvit.inference.sliding import (
    OutOfMemoryError,
    importance_map,
    sliding_window,
    sliding_window_with_fallback,
    window_starts,
)


def _net(dims: int, k: int = 3):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d
    net = torch.nn.Sequential(conv(1, 4, 3, padding=1), torch.nn.Tanh(), conv(4, k, 3, padding=1)).eval()
    return lambda x: net(x).softmax(1)


def _direct(image, fn, roi, overlap, blend):
    """Every window, its full weight map, a full sum of weights: the textbook computation."""
    spatial = image.shape[1:]
    starts = [window_starts(s, r, overlap) for s, r in zip(spatial, roi, strict=True)]
    weight = importance_map(roi, blend)
    num = None
    den = torch.zeros(spatial)
    for start in itertools.product(*starts):
        sl = tuple(slice(s, s + r) for s, r in zip(start, roi, strict=True))
        out = fn(image[(slice(None), *sl)][None])[0]
        num = torch.zeros((out.shape[0], *spatial)) if num is None else num
        num[(slice(None), *sl)] += out * weight
        den[sl] += weight
    return num / den


@pytest.mark.parametrize("size,roi,overlap", [(37, 16, 0.5), (16, 16, 0.5), (50, 12, 0.25), (20, 7, 0.9)])
def test_window_starts_match_monai(size, roi, overlap):
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    interval = _get_scan_interval((size,), (roi,), 1, (overlap,))
    expected = [s[0].start for s in dense_patch_slices((size,), (roi,), interval)]
    assert window_starts(size, roi, overlap) == expected


def test_importance_map():
    weight = importance_map((12, 10, 8))
    assert weight.shape == (12, 10, 8) and float(importance_map((9, 9, 9)).max()) == pytest.approx(1.0)
    assert float(weight.min()) == pytest.approx(1e-3) and float(weight[0, 5, 4]) < float(weight[6, 5, 4])
    assert float(importance_map((4, 4), "constant").min()) == 1.0
    with pytest.raises(ValueError, match="blend"):
        importance_map((4, 4), "cosine")


@pytest.mark.parametrize("dims,shape,roi", [(3, (21, 18, 13), (8, 8, 8)), (2, (40, 29), (16, 12))])
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_blending_equals_direct_computation(dims, shape, roi, blend):
    fn = _net(dims)
    image = torch.randn(1, *shape)
    with torch.no_grad():
        ours = sliding_window(image, fn, roi_size=roi, num_outputs=3, overlap=0.5, batch_size=3, blend=blend)
        direct = _direct(image, fn, roi, 0.5, blend)
    torch.testing.assert_close(ours, direct, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.sum(0), torch.ones(shape), rtol=1e-5, atol=1e-5)


def test_equals_monai_sliding_window_inference():
    from monai.inferers import sliding_window_inference

    fn = _net(3)
    image = torch.randn(1, 30, 26, 20)
    with torch.no_grad():
        ours = sliding_window(image, fn, roi_size=(12, 12, 12), num_outputs=3, overlap=0.5, batch_size=4)
        ref = sliding_window_inference(image[None], (12, 12, 12), 4, fn, overlap=0.5, mode="gaussian")[0]
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_small_image_is_padded_like_monai():
    from monai.inferers import sliding_window_inference

    fn = _net(3)
    image = torch.randn(1, 5, 9, 3)
    with torch.no_grad():
        ours = sliding_window(image, fn, roi_size=(8, 8, 8), num_outputs=3)
        ref = sliding_window_inference(image[None], (8, 8, 8), 1, fn, overlap=0.5, mode="gaussian")[0]
    assert ours.shape == (3, 5, 9, 3)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_batch_size_and_progress():
    fn = _net(2)
    image = torch.randn(1, 33, 30)
    calls = []
    with torch.no_grad():
        one = sliding_window(image, fn, roi_size=(16, 16), num_outputs=3, batch_size=1)
        many = sliding_window(
            image, fn, roi_size=(16, 16), num_outputs=3, batch_size=5, progress=lambda d, t: calls.append((d, t))
        )
    torch.testing.assert_close(one, many)
    assert calls == [(5, 12), (10, 12), (12, 12)]  # 4 x 3 windows, 5 per batch


def test_constant_windows_run_once():
    """Air clipped to one value: each distinct constant window is run once and its output reused, with the
    same result as running every window."""
    fn = _net(3)
    calls = []

    def counting(x):
        calls.append(x.shape[0])
        return fn(x)

    image = torch.zeros(1, 40, 36, 20)
    image[:, 24:, 20:] = torch.randn(1, 16, 16, 20)  # one corner holds tissue, the rest is 'air'
    image[:, :8, :8] = 0.5  # a second constant value, inside windows that also hold zeros
    with torch.no_grad():
        stats = {}
        ours = sliding_window(image, counting, roi_size=(8, 8, 8), num_outputs=3, batch_size=4, stats=stats)
        every = sliding_window(image, fn, roi_size=(8, 8, 8), num_outputs=3, batch_size=4, reuse_constant=False)
    torch.testing.assert_close(ours, every)
    assert stats["windows"] == 9 * 8 * 4 and stats["reused"] > 100
    assert sum(calls) == stats["windows"] - stats["reused"]


def test_bad_arguments():
    fn = _net(2)
    with pytest.raises(ValueError, match="roi_size"):
        sliding_window(torch.zeros(1, 8, 8), fn, roi_size=(4, 4, 4), num_outputs=3)
    with pytest.raises(ValueError, match="overlap"):
        sliding_window(torch.zeros(1, 8, 8), fn, roi_size=(4, 4), num_outputs=3, overlap=1.0)
    with pytest.raises(ValueError, match=r"returned \(1, 3, 4, 4\), expected \(B, 2"):
        sliding_window(torch.zeros(1, 8, 8), fn, roi_size=(4, 4), num_outputs=2)


def test_out_of_memory_moves_stitching_to_cpu():
    """The stitching device (here the 'meta' device standing in for a full GPU) runs out of memory: the
    windows are stitched on the CPU instead, with one warning, and the result is the normal one."""
    fn = _net(3)
    image = torch.randn(1, 12, 12, 12)
    tried = []

    def flaky(x):
        if not tried:
            tried.append(1)
            raise OutOfMemoryError("CUDA out of memory (simulated)")
        return fn(x)

    with torch.no_grad():
        with pytest.warns(MedvitWarning, match="out of memory stitching windows on meta: stitching on the CPU"):
            out = sliding_window_with_fallback(image, flaky, roi_size=(8, 8, 8), num_outputs=3, out_device="meta")
        expected = sliding_window(image, fn, roi_size=(8, 8, 8), num_outputs=3)
    assert out.device.type == "cpu"
    torch.testing.assert_close(out, expected)
    with pytest.raises(OutOfMemoryError):  # already on the CPU: nothing to fall back to
        tried.clear()
        sliding_window_with_fallback(image, flaky, roi_size=(8, 8, 8), num_outputs=3)
