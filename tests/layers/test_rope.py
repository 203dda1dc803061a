"""DINOv3 axial RoPE."""

from __future__ import annotations

import math

import torch

from medvit.layers import RopePositionEmbedding, apply_rope, rotate_half


def test_periods_follow_rope_theta():
    rope = RopePositionEmbedding(64, theta=100.0)
    want = 100.0 ** (2 * torch.arange(16) / 32)  # DINOv3: base^(2i / (head_dim / 2)), i < head_dim / 4
    torch.testing.assert_close(rope.periods, want.float())
    assert "periods" not in rope.state_dict()


def test_coords_normalised_per_axis_and_prefix_identity():
    rope = RopePositionEmbedding(8).eval()
    coords = rope.coords((2, 4))
    torch.testing.assert_close(coords[:, 0].unique(), torch.tensor([-0.5, 0.5]))
    torch.testing.assert_close(coords[:, 1].unique(), torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    cos, sin = rope((2, 4), num_prefix_tokens=3)
    assert cos.shape == sin.shape == (3 + 8, 8)
    assert torch.equal(cos[:3], torch.ones(3, 8)) and torch.equal(sin[:3], torch.zeros(3, 8))
    # angles: [y freqs, x freqs] tiled twice
    y, x = coords[5]
    angles = 2 * math.pi * torch.stack([y / rope.periods, x / rope.periods]).flatten()
    torch.testing.assert_close(cos[3 + 5], angles.tile(2).cos())


def test_rotation_preserves_norm_and_prefix_tokens():
    rope = RopePositionEmbedding(16).eval()
    cos, sin = rope((3, 3), num_prefix_tokens=1)
    q = torch.randn(2, 4, 10, 16)
    out = apply_rope(q, cos, sin)
    torch.testing.assert_close(out.norm(dim=-1), q.norm(dim=-1))
    assert torch.equal(out[:, :, 0], q[:, :, 0])
    assert torch.equal(rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])), torch.tensor([-3.0, -4.0, 1.0, 2.0]))


def test_rescale_only_in_training():
    rope = RopePositionEmbedding(8, rescale_coords=2.0)
    rope.eval()
    torch.testing.assert_close(rope((2, 2))[1], rope((2, 2))[1])
    rope.train()
    torch.manual_seed(0)
    assert not torch.allclose(rope((2, 2))[1], rope((2, 2))[1])
