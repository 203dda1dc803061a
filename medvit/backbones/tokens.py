"""The backbone contract and its patch tokens: what heads and adapters may rely on, and token <-> map."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

CONTRACT = ("embed_dim", "patch_size", "spatial_dims", "num_prefix_tokens", "forward_features")


def check_backbone(backbone: nn.Module, *, spatial_dims: Iterable[int] = (2, 3), blocks: bool = False) -> None:
    """Raise ``ValueError`` naming what is missing when ``backbone`` does not meet the backbone contract.

    Args:
        backbone: The module to check.
        spatial_dims: The dimensionalities the caller supports.
        blocks: Also require the pieces needed to run it block by block (``prepare_tokens``, ``blocks``,
            ``norm``).
    """
    needed = CONTRACT + (("prepare_tokens", "blocks", "norm") if blocks else ())
    missing = [name for name in needed if not hasattr(backbone, name)]
    if missing:
        raise ValueError(f"backbone lacks {', '.join(missing)} from the backbone contract")
    allowed = tuple(spatial_dims)
    if backbone.spatial_dims not in allowed:
        raise ValueError(f"backbone has spatial_dims={backbone.spatial_dims}; this module needs one of {allowed}")


def token_grid(backbone: nn.Module, spatial_shape: Iterable[int]) -> tuple[int, ...]:
    """The patch grid a backbone makes for an input of ``spatial_shape`` (ceiling, as with dynamic padding)."""
    patch = backbone.patch_size
    shape = tuple(spatial_shape)
    if isinstance(patch, int):
        patch = (patch,) * len(shape)
    return tuple(-(-s // p) for s, p in zip(shape, patch, strict=True))


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """``[B, N, D]`` patch tokens to a ``[B, D, *grid]`` map (row-major token order)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``[B, D, *grid]`` map to ``[B, N, D]`` tokens."""
    return x.flatten(2).transpose(1, 2)
