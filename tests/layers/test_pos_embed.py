"""Sin-cos builders and the pure resampling helpers."""

from __future__ import annotations

import pytest
import torch

from medvit.layers import infer_grid, resample_abs_pos_embed, sincos_pos_embed


def test_sincos_2d_matches_mae_layout():
    pos = sincos_pos_embed(8, (2, 3))
    assert pos.shape == (6, 8) and pos.dtype == torch.float32
    # first half encodes the column (x), second half the row (y); each half is [sin, cos]
    omega = 1.0 / 10000 ** (torch.arange(2, dtype=torch.float64) / 2)
    y, x = 1, 2
    want = torch.cat([(x * omega).sin(), (x * omega).cos(), (y * omega).sin(), (y * omega).cos()]).float()
    torch.testing.assert_close(pos[y * 3 + x], want)


def test_sincos_3d_and_bad_dims():
    assert sincos_pos_embed(12, (2, 2, 3)).shape == (12, 12)
    with pytest.raises(ValueError, match="divisible by 6"):
        sincos_pos_embed(16, (2, 2, 2))


def test_resample_keeps_prefix_and_identity_when_same_grid():
    pos = torch.randn(1, 2 + 16, 8)
    assert resample_abs_pos_embed(pos, (4, 4), num_prefix_tokens=2) is not None
    torch.testing.assert_close(resample_abs_pos_embed(pos, (4, 4), num_prefix_tokens=2), pos)
    out = resample_abs_pos_embed(pos, (5, 3), num_prefix_tokens=2)
    assert out.shape == (1, 2 + 15, 8)
    torch.testing.assert_close(out[:, :2], pos[:, :2])


def test_resample_non_square_source_and_3d():
    pos = torch.randn(1, 1 + 6 * 4, 8)
    assert resample_abs_pos_embed(pos, (3, 2), old_grid=(6, 4), num_prefix_tokens=1).shape == (1, 7, 8)
    pos3 = torch.randn(1, 27, 6)
    assert resample_abs_pos_embed(pos3, (4, 4, 2)).shape == (1, 32, 6)


def test_resample_in_float32_returns_input_dtype():
    pos = torch.randn(1, 1 + 16, 8)
    out = resample_abs_pos_embed(pos.bfloat16(), (6, 6), num_prefix_tokens=1)
    ref = resample_abs_pos_embed(pos.bfloat16().float(), (6, 6), num_prefix_tokens=1)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref.bfloat16())


def test_constant_embedding_stays_constant():
    pos = torch.ones(1, 16, 4)
    torch.testing.assert_close(resample_abs_pos_embed(pos, (7, 5)), torch.ones(1, 35, 4))


def test_infer_grid():
    assert infer_grid(196, 2) == (14, 14) and infer_grid(512, 3) == (8, 8, 8)
    with pytest.raises(ValueError, match="square"):
        infer_grid(15, 2)
