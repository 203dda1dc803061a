"""Batched multi-crop views: shapes, identity, flips, determinism, jitter and blur."""

from __future__ import annotations

import itertools

import pytest
import torch

from medvit.ssl.crops import (
    gaussian_blur,
    intensity_jitter,
    log_uniform_aspect,
    multi_crop,
    random_resized_crop,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("shape", "size"), [((3, 2, 16, 12), (8, 10)), ((2, 1, 8, 9, 10), (4, 5, 6))])
def test_crop_shapes_2d_and_3d(shape, size):
    x = torch.randn(shape)
    out = random_resized_crop(x, size, generator=_gen())
    assert out.shape == (*shape[:2], *size) and out.dtype == x.dtype
    assert random_resized_crop(x, 5).shape == (*shape[:2], *([5] * (len(shape) - 2)))


def test_full_box_at_input_size_is_identity():
    x = torch.randn(3, 2, 16, 12)
    out = random_resized_crop(x, (16, 12), scale=(1, 1), ratio=(12 / 16, 12 / 16), flip=False)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    cube = torch.randn(2, 1, 6, 6, 6)
    out = random_resized_crop(cube, (6, 6, 6), scale=(1, 1), ratio=(1, 1), flip=False)
    torch.testing.assert_close(out, cube, atol=1e-5, rtol=0)


def test_2d_flip_is_a_horizontal_mirror():
    x = torch.arange(2 * 6 * 8, dtype=torch.float32).view(1, 2, 6, 8).repeat(16, 1, 1, 1)
    out = random_resized_crop(x, (6, 8), scale=(1, 1), ratio=(8 / 6, 8 / 6), generator=_gen(3))
    flipped = [torch.allclose(o, x[0].flip(-1), atol=1e-4) for o in out]
    same = [torch.allclose(o, x[0], atol=1e-4) for o in out]
    assert all(f != s for f, s in zip(flipped, same, strict=True))
    assert any(flipped) and any(same)


def test_3d_flips_every_axis():
    x = torch.randn(1, 1, 5, 5, 5).repeat(32, 1, 1, 1, 1)
    out = random_resized_crop(x, 5, scale=(1, 1), ratio=(1, 1), generator=_gen(1))
    seen = set()
    for o in out:
        hits = [
            dims
            for r in range(4)
            for dims in itertools.combinations((1, 2, 3), r)
            if torch.allclose(o, x[0].flip(dims) if dims else x[0], atol=1e-4)
        ]
        assert len(hits) == 1
        seen.add(hits[0])
    assert {d for dims in seen for d in dims} == {1, 2, 3}


def test_crop_is_a_resampled_sub_box():
    # a linear ramp stays linear under bilinear resampling: the crop spans a sub-range of the input's values
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(4, 1, 32, 32).contiguous()
    out = random_resized_crop(ramp, (8, 8), scale=(0.1, 0.3), flip=False, generator=_gen())
    span = out[..., -1] - out[..., 0]
    assert (span > 0).all() and (span < 1).all()
    torch.testing.assert_close(out[:, :, 0], out[:, :, -1])


def test_generator_makes_views_deterministic():
    x = torch.randn(2, 1, 12, 12)
    a = multi_crop(x, global_size=8, local_size=4, n_local=2, generator=_gen(7))
    b = multi_crop(x, global_size=8, local_size=4, n_local=2, generator=_gen(7))
    for u, v in zip(a[0] + a[1], b[0] + b[1], strict=True):
        torch.testing.assert_close(u, v)
    c = random_resized_crop(x, 8, generator=_gen(8))
    assert not torch.allclose(c, random_resized_crop(x, 8, generator=_gen(9)))


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (2, 1, 12, 12, 12)])
def test_multi_crop_views(shape):
    x = torch.randn(shape)
    ndim = len(shape) - 2
    globals_, locals_ = multi_crop(x, global_size=10, local_size=(4,) * ndim, n_local=3, generator=_gen())
    assert len(globals_) == 2 and len(locals_) == 3
    assert all(g.shape == (*shape[:2], *([10] * ndim)) for g in globals_)
    assert all(v.shape == (*shape[:2], *([4] * ndim)) for v in locals_)
    assert multi_crop(x, global_size=10, local_size=4, n_local=0)[1] == []


def test_aspect_factors_keep_volume_and_range():
    f2 = log_uniform_aspect(500, 2, (0.5, 2.0), generator=_gen())
    torch.testing.assert_close(f2.prod(dim=1), torch.ones(500, dtype=torch.float64))
    r = f2[:, 1] / f2[:, 0]
    assert r.min() >= 0.5 - 1e-9 and r.max() <= 2.0 + 1e-9
    f3 = log_uniform_aspect(500, 3, (0.5, 2.0), generator=_gen())
    torch.testing.assert_close(f3.prod(dim=1), torch.ones(500, dtype=torch.float64))
    pair = f3.unsqueeze(2) / f3.unsqueeze(1)
    assert pair.min() >= 0.5 - 1e-9 and pair.max() <= 2.0 + 1e-9


def test_intensity_jitter():
    x = torch.randn(64, 1, 8, 8)
    torch.testing.assert_close(intensity_jitter(x, p=0.0), x)
    out = intensity_jitter(x, brightness=0.0, contrast=0.0, p=1.0)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    out = intensity_jitter(x, p=1.0, generator=_gen())
    std, mean = torch.std_mean(x, dim=(1, 2, 3), correction=0)
    std_o, mean_o = torch.std_mean(out, dim=(1, 2, 3), correction=0)
    gain, shift = std_o / std, (mean_o - mean) / std
    assert (gain >= 0.6 - 1e-4).all() and (gain <= 1.4 + 1e-4).all()
    assert (shift.abs() <= 0.4 + 1e-4).all() and gain.std() > 0
    with pytest.raises(ValueError):
        intensity_jitter(x, contrast=1.5)


@pytest.mark.parametrize("shape", [(4, 2, 9, 9), (3, 1, 7, 7, 7)])
def test_gaussian_blur(shape):
    x = torch.randn(shape)
    torch.testing.assert_close(gaussian_blur(x, p=0.0), x)
    out = gaussian_blur(x, sigma=(1.0, 2.0), p=1.0, generator=_gen())
    dims = tuple(range(1, x.dim()))
    assert out.shape == x.shape and (out.std(dim=dims) < x.std(dim=dims)).all()
    flat = torch.full(shape, 3.0)
    torch.testing.assert_close(gaussian_blur(flat, p=1.0), flat)
    # an impulse far from the edges spreads into a normalised, symmetric kernel of its own width per sample
    impulse = torch.zeros(2, 1, 17, 17)
    impulse[..., 8, 8] = 1.0
    out = gaussian_blur(impulse, sigma=(0.5, 2.0), p=1.0, generator=_gen(5))
    torch.testing.assert_close(out.sum(dim=(1, 2, 3)), torch.ones(2))
    torch.testing.assert_close(out, out.transpose(-1, -2))
    assert not torch.allclose(out[0], out[1])


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="scale"):
        random_resized_crop(torch.randn(1, 1, 8, 8), 4, scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="size"):
        random_resized_crop(torch.randn(1, 1, 8, 8), (4, 4, 4))
    with pytest.raises(ValueError):
        random_resized_crop(torch.randn(1, 8, 8), 4)
    with pytest.raises(TypeError):
        random_resized_crop(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), 4)
