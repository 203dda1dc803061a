"""Absolute position embeddings: fixed sin-cos builders (2D and 3D) and pure resampling helpers.

The resampling helpers work in float32, keep the prefix entries (CLS, registers) untouched, and accept
non-square 2D grids and 3D grids. 2D grids are resized bicubically with ``align_corners=False``, exactly
as RETFound/MAE's ``interpolate_pos_embed`` does for square grids; 3D grids trilinearly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sincos_1d(embed_dim: int, positions: torch.Tensor, *, temperature: float = 10000.0) -> torch.Tensor:
    """``[len(positions), embed_dim]``: sines in the first half, cosines in the second (MAE convention)."""
    if embed_dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / temperature**omega
    out = positions.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_pos_embed(embed_dim: int, grid: tuple[int, ...], *, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed sin-cos embedding for a 2D or 3D grid, ``[prod(grid), embed_dim]`` in float32.

    The channels are split evenly over the axes; like MAE's 2D builder, the first channel group encodes the
    last (fastest-varying) axis. Tokens are row-major over ``grid``.

    Args:
        embed_dim: Channels; must be divisible by ``2 * len(grid)``.
        grid: Tokens per spatial axis, e.g. ``(14, 14)`` or ``(8, 8, 8)``.
        temperature: The base of the frequencies.
    """
    n = len(grid)
    if embed_dim % (2 * n):
        raise ValueError(f"a {n}D sin-cos embedding needs embed_dim divisible by {2 * n}, got {embed_dim}")
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float64) for g in grid], indexing="ij")
    parts = [sincos_1d(embed_dim // n, c.reshape(-1), temperature=temperature) for c in reversed(coords)]
    return torch.cat(parts, dim=1).float()


def infer_grid(num_tokens: int, spatial_dims: int) -> tuple[int, ...]:
    """The square (2D) or cubic (3D) grid holding ``num_tokens`` tokens; an error if there is none."""
    side = round(num_tokens ** (1.0 / spatial_dims))
    if side**spatial_dims != num_tokens:
        raise ValueError(
            f"{num_tokens} position tokens do not form a {'square' if spatial_dims == 2 else 'cube'}; "
            "pass the old grid explicitly"
        )
    return (side,) * spatial_dims


def resample_grid(pos: torch.Tensor, old_grid: tuple[int, ...], new_grid: tuple[int, ...]) -> torch.Tensor:
    """Resize grid tokens ``[1, prod(old_grid), D]`` to ``new_grid`` (bicubic 2D, trilinear 3D), float32 inside."""
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if old_grid == new_grid:
        return pos
    if len(old_grid) != len(new_grid) or len(old_grid) not in (2, 3):
        raise ValueError(f"cannot resample a {len(old_grid)}D grid {old_grid} to {new_grid}")
    dim = pos.shape[-1]
    if pos.shape[-2] != math.prod(old_grid):
        raise ValueError(
            f"position embedding has {pos.shape[-2]} tokens, grid {old_grid} needs {math.prod(old_grid)}"
        )
    x = pos.reshape(1, *old_grid, dim).float().movedim(-1, 1)
    mode = "bicubic" if len(old_grid) == 2 else "trilinear"
    x = F.interpolate(x, size=new_grid, mode=mode, align_corners=False)
    return x.movedim(1, -1).reshape(1, math.prod(new_grid), dim).to(pos.dtype)


def resample_abs_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, ...],
    *,
    old_grid: tuple[int, ...] | None = None,
    num_prefix_tokens: int = 0,
) -> torch.Tensor:
    """Resample an absolute position embedding ``[1, prefix + N, D]`` to ``new_grid``, prefix entries kept.

    Args:
        pos_embed: The embedding; its first ``num_prefix_tokens`` entries belong to CLS/register tokens.
        new_grid: The target grid, e.g. ``(20, 16)`` or ``(16, 16, 8)``.
        old_grid: The grid the embedding was made for; inferred as square/cubic when omitted.
        num_prefix_tokens: Leading entries that are copied, not resampled.

    Returns:
        ``[1, prefix + prod(new_grid), D]`` in the input's dtype.
    """
    if pos_embed.ndim == 2:
        pos_embed = pos_embed.unsqueeze(0)
    prefix, grid_tokens = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    if old_grid is None:
        old_grid = infer_grid(grid_tokens.shape[1], len(new_grid))
    return torch.cat([prefix, resample_grid(grid_tokens, tuple(old_grid), tuple(new_grid))], dim=1)
