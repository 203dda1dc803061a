"""Stochastic depth: drop a whole residual branch per sample (Huang et al., ECCV 2016)."""

from __future__ import annotations

import torch
from torch import nn


def drop_path(x: torch.Tensor, *, p: float = 0.0, training: bool = False) -> torch.Tensor:
    """Zero the residual branch ``x`` for a random subset of samples and rescale the rest by ``1/(1-p)``.

    Args:
        x: The branch output, batch first.
        p: The probability of dropping a sample's branch.
        training: Drop only while training; otherwise ``x`` is returned unchanged.
    """
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    """Stochastic depth as a module (identity in eval mode or with ``p=0``)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, p=self.p, training=self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
