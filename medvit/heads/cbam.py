"""CBAM: channel then spatial attention on a feature map (Woo et al., "CBAM: Convolutional Block Attention
Module", ECCV 2018)."""

from __future__ import annotations

import torch
from torch import nn


class CBAM(nn.Module):
    """``x * channel_gate(x)``, then ``* spatial_gate(.)``; 2D.

    Args:
        channels: Feature channels.
        reduction: Bottleneck ratio of the channel MLP.
        kernel_size: Kernel of the spatial gate's convolution.
    """

    def __init__(self, channels: int, *, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        if reduction < 1 or channels // reduction < 1:
            raise ValueError(f"reduction must be in [1, {channels}], got {reduction}")
        hidden = channels // reduction
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1)
        )
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True))
        x = x * torch.sigmoid(gate)
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))
