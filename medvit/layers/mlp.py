"""Transformer feed-forward layers: the GELU MLP and the SwiGLU variant (Shazeer, 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Mlp(nn.Module):
    """``fc2(drop(act(fc1(x))))`` with exact GELU, as in ViT (Dosovitskiy et al., ICLR 2021)."""

    def __init__(
        self, dim: int, *, hidden_dim: int, bias: bool = True, drop: float = 0.0, act: type[nn.Module] = nn.GELU
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = act()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SwiGLU(nn.Module):
    """Gated feed-forward ``w3(silu(x W1) * (x W2))`` (Shazeer, "GLU Variants Improve Transformer", 2020).

    The two input projections are fused into one ``w12`` linear layer (gate rows first, then value rows),
    so a forward pass does one matrix product instead of two. DINOv3's ``w1``/``w2``/``w3`` and the
    Hugging Face ``gate_proj``/``up_proj``/``down_proj`` map onto ``w12 = cat(w1, w2)`` and ``w3``.
    """

    def __init__(self, dim: int, *, hidden_dim: int, bias: bool = True, drop: float = 0.0) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.w12 = nn.Linear(dim, 2 * hidden_dim, bias=bias)
        self.drop = nn.Dropout(drop)
        self.w3 = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.drop(self.w3(self.drop(F.silu(gate) * value)))
