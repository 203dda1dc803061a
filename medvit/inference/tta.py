"""Test-time augmentation by flip mirroring, as nnU-Net does (Isensee et al., Nature Methods 2021).

The network sees every combination of flips over the allowed spatial axes (``2**k`` passes for ``k`` axes);
each output is flipped back and the outputs are averaged.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch


def flip_sets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` (spatial, 0-based), the empty one (no flip) first."""
    axes = sorted(set(int(a) for a in axes))
    return [combo for n in range(len(axes) + 1) for combo in itertools.combinations(axes, n)]


def with_flip_tta(
    fn: Callable[[torch.Tensor], torch.Tensor], axes: Sequence[int], *, spatial_outputs: bool = True
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap ``fn`` (``[B, C, *S] -> [B, K, *S]``) so that it returns the mean over all flips of ``axes``.

    ``spatial_outputs=False`` is for classifiers (``[B, K]`` out): outputs are averaged without flipping back.
    With no axes ``fn`` is returned unchanged.
    """
    sets = flip_sets(axes)
    if len(sets) == 1:
        return fn

    def mirrored(x: torch.Tensor) -> torch.Tensor:
        total = None
        for flip in sets:
            dims = [a + 2 for a in flip]
            out = fn(x.flip(dims) if dims else x).float()
            out = out.flip(dims) if dims and spatial_outputs else out
            total = out if total is None else total.add_(out)
        return total.div_(len(sets))

    return mirrored
