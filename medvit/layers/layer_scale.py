"""LayerScale: a learned per-channel scale on each residual branch (Touvron et al., CaiT, ICCV 2021)."""

from __future__ import annotations

import torch
from torch import nn


class LayerScale(nn.Module):
    """Multiply the last dimension by a learned vector ``gamma`` initialised to ``init_values``.

    The parameter is named ``gamma`` as in the DINOv2/DINOv3 and timm checkpoints (``blocks.N.ls1.gamma``).
    """

    def __init__(self, dim: int, *, init_values: float = 1e-5) -> None:
        super().__init__()
        self.init_values = init_values
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gamma, self.init_values)
