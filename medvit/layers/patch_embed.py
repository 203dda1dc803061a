"""Patch embedding for 2D images and 3D volumes: a strided convolution, one token per patch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medvit.errors import InputError


def to_tuple(value: int | tuple[int, ...] | list[int], n: int, *, name: str = "value") -> tuple[int, ...]:
    """``value`` repeated ``n`` times if it is an int, else checked to have ``n`` entries."""
    if isinstance(value, int):
        return (value,) * n
    out = tuple(int(v) for v in value)
    if len(out) != n:
        raise ValueError(f"{name} must have {n} entries for {n}D, got {value!r}")
    return out


class PatchEmbed(nn.Module):
    """Split an image (``[B, C, H, W]``) or volume (``[B, C, H, W, D]``) into patches and project them.

    With ``dynamic_img_pad`` an input whose sides are not multiples of the patch is zero-padded at the far
    end of each axis (the grid is then the ceiling); otherwise such an input is an error.

    Tokens come out row-major over the spatial axes in tensor order (the flattening of the conv output),
    shape ``[B, N, embed_dim]``. The weight is ``proj.weight [embed_dim, C, *patch]`` as in ViT/MAE checkpoints.
    """

    def __init__(
        self,
        *,
        patch_size: int | tuple[int, ...],
        in_chans: int,
        embed_dim: int,
        spatial_dims: int = 2,
        bias: bool = True,
        dynamic_img_pad: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.dynamic_img_pad = dynamic_img_pad
        self.patch_size = to_tuple(patch_size, spatial_dims, name="patch_size")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.proj = conv(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)

    def grid(self, spatial_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The token grid for an input of ``spatial_shape``; every side must be a multiple of the patch."""
        if len(spatial_shape) != self.spatial_dims:
            raise InputError(f"expected {self.spatial_dims} spatial sizes, got {tuple(spatial_shape)}")
        pairs = list(zip(spatial_shape, self.patch_size, strict=True))
        if self.dynamic_img_pad:
            return tuple(-(-s // p) for s, p in pairs)
        if any(s % p for s, p in pairs):
            raise InputError(
                f"input of spatial size {tuple(spatial_shape)} does not fit the patch size {self.patch_size}: "
                "every side must be a multiple of the patch size (or build with dynamic_img_pad=True to zero-pad)"
            )
        return tuple(s // p for s, p in pairs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Return the tokens ``[B, N, D]`` and the grid they came from."""
        if x.ndim != self.spatial_dims + 2:
            axes = "H, W" if self.spatial_dims == 2 else "H, W, D"
            raise InputError(
                f"expected a {self.spatial_dims + 2}D tensor [B, C, {axes}], got shape {tuple(x.shape)}"
            )
        grid = self.grid(tuple(x.shape[2:]))
        pad = [g * p - s for g, p, s in zip(grid, self.patch_size, x.shape[2:], strict=True)]
        if any(pad):
            x = F.pad(x, [v for amount in reversed(pad) for v in (0, amount)])
        return self.proj(x).flatten(2).transpose(1, 2), grid
