"""Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021) in pure PyTorch.

Each query looks at ``n_points`` learned offsets around its reference point in each of ``n_levels`` feature
maps, per head, and mixes the bilinearly sampled values (``F.grid_sample``) with softmax weights. No compiled
CUDA op is needed; the sampling runs on any device and in any autocast dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def ms_deform_attn_core(
    value: torch.Tensor,
    shapes: Sequence[tuple[int, int]],
    locations: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """Sample and mix.

    Args:
        value: ``[B, S, heads, head_dim]``, the levels flattened one after another.
        shapes: ``(h, w)`` of each level; ``sum(h * w) == S``.
        locations: ``[B, Q, heads, levels, points, 2]`` sampling points as ``(x, y)`` in [0, 1].
        weights: ``[B, Q, heads, levels, points]`` mixing weights.

    Returns:
        ``[B, Q, heads * head_dim]``.
    """
    b, _, heads, dim = value.shape
    _, q, _, levels, points, _ = locations.shape
    values = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        v = values[lvl].permute(0, 2, 3, 1).reshape(b * heads, dim, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(b * heads, q, points, 2)
        sampled.append(F.grid_sample(v, g.to(v.dtype), mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # [B*heads, dim, Q, levels*points]
    w = weights.transpose(1, 2).reshape(b * heads, 1, q, levels * points).to(stacked.dtype)
    out = (stacked * w).sum(-1).view(b, heads * dim, q)
    return out.transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable cross-attention.

    Args:
        dim: Query and input channels.
        n_levels: Feature levels attended to.
        n_heads: Heads.
        n_points: Sampling points per head and level.
        ratio: Width of the value projection relative to ``dim`` (ViT-Adapter's ``deform_ratio``).
    """

    def __init__(self, dim: int, *, n_levels: int = 3, n_heads: int = 8, n_points: int = 4, ratio: float = 1.0):
        super().__init__()
        inner = int(dim * ratio)
        if inner % n_heads:
            raise ValueError(f"dim * ratio = {inner} must be divisible by n_heads {n_heads}")
        self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(dim, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(dim, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(dim, inner)
        self.output_proj = nn.Linear(inner, dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Offsets start on a ring of directions, one per head, growing with the point index."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2 * math.pi / self.n_heads)
        ring = torch.stack([angles.cos(), angles.sin()], -1)
        ring = ring / ring.abs().max(-1, keepdim=True)[0]
        ring = ring.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        ring *= torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        self.sampling_offsets.bias.copy_(ring.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference: torch.Tensor,
        feats: torch.Tensor,
        shapes: Sequence[tuple[int, int]],
    ) -> torch.Tensor:
        """Attend from ``query [B, Q, D]`` at ``reference [B or 1, Q, 2]`` ((x, y) in [0, 1]) to the levels
        ``feats [B, S, D]`` of sizes ``shapes``; returns ``[B, Q, D]``."""
        if len(shapes) != self.n_levels:
            raise ValueError(f"expected {self.n_levels} levels, got {len(shapes)}")
        b, q, _ = query.shape
        value = self.value_proj(feats).view(b, feats.shape[1], self.n_heads, -1)
        offsets = self.sampling_offsets(query).view(b, q, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(b, q, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(b, q, self.n_heads, self.n_levels, self.n_points)
        norm = torch.tensor([[w, h] for h, w in shapes], device=query.device, dtype=offsets.dtype)
        locations = reference[:, :, None, None, None, :] + offsets / norm[None, None, None, :, None, :]
        return self.output_proj(ms_deform_attn_core(value, shapes, locations, weights))


def reference_points(shapes: Sequence[tuple[int, int]], device: torch.device | None = None) -> torch.Tensor:
    """Pixel centres ``(x, y)`` in [0, 1] of each level, flattened row-major and concatenated: ``[1, S, 2]``."""
    pts = []
    for h, w in shapes:
        ys, xs = torch.meshgrid(
            (torch.arange(h, device=device) + 0.5) / h, (torch.arange(w, device=device) + 0.5) / w, indexing="ij"
        )
        pts.append(torch.stack([xs.flatten(), ys.flatten()], -1))
    return torch.cat(pts)[None]
