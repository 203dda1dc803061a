"""Axial rotary position embedding as DINOv3 defines it (Siméoni et al., "DINOv3", arXiv:2508.10104).

Each spatial axis gets ``head_dim / (2 * spatial_dims)`` frequencies with periods ``theta**(i / n)``.
Patch-centre coordinates are normalised to [-1, 1] separately per axis, so any grid works without
interpolation. Angles are ``2*pi*coord/period``, laid out ``[axis0 freqs, axis1 freqs, ...]`` and tiled twice
(rotate-half convention). In training mode the coordinates may be multiplied by one log-uniform factor in
``[1/rescale, rescale]`` (DINOv3's ``rescale_coords``). Prefix tokens are left unrotated: their rows get
``cos=1, sin=0``, which is the identity exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [..., N, head_dim]`` by angles given as ``cos``/``sin [N, head_dim]``; computed in float32."""
    dtype = x.dtype
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).to(dtype)


class RopePositionEmbedding(nn.Module):
    """DINOv3's axial RoPE for 2D (and, by the same rule, 3D) patch grids; no learnable weights.

    Args:
        head_dim: Channels per attention head; divisible by ``2 * spatial_dims``.
        spatial_dims: 2 or 3.
        theta: The base of the periods (``rope_theta``; 100 for DINOv3).
        rescale_coords: Train-time coordinate rescale bound (2 for DINOv3), or ``None``.
    """

    def __init__(
        self, head_dim: int, *, spatial_dims: int = 2, theta: float = 100.0, rescale_coords: float | None = None
    ) -> None:
        super().__init__()
        if head_dim % (2 * spatial_dims):
            raise ValueError(f"RoPE over {spatial_dims} axes needs head_dim divisible by {2 * spatial_dims}")
        n = head_dim // (2 * spatial_dims)
        self.head_dim, self.spatial_dims, self.theta = head_dim, spatial_dims, theta
        self.rescale_coords = rescale_coords
        periods = theta ** (torch.arange(n, dtype=torch.float32) / n)
        self.register_buffer("periods", periods, persistent=False)

    def coords(self, grid: tuple[int, ...], device: torch.device | None = None) -> torch.Tensor:
        """Patch centres ``[prod(grid), spatial_dims]`` normalised to [-1, 1] separately per axis."""
        axes = [(torch.arange(g, dtype=torch.float32, device=device) + 0.5) / g for g in grid]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(grid))
        return 2.0 * coords - 1.0

    def forward(self, grid: tuple[int, ...], *, num_prefix_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos, sin`` of shape ``[prefix + N, head_dim]`` in float32 for a token grid."""
        device = self.periods.device
        coords = self.coords(tuple(grid), device)
        if self.training and self.rescale_coords is not None:
            bound = math.log(self.rescale_coords)
            coords = coords * torch.empty(1, device=device).uniform_(-bound, bound).exp()
        angles = 2 * math.pi * coords[:, :, None] / self.periods.float()[None, None, :]
        angles = angles.flatten(1).tile(2)
        cos, sin = angles.cos(), angles.sin()
        if num_prefix_tokens:
            cos = torch.cat([cos.new_ones(num_prefix_tokens, self.head_dim), cos])
            sin = torch.cat([sin.new_zeros(num_prefix_tokens, self.head_dim), sin])
        return cos, sin
