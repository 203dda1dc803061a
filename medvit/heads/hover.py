"""HoVer-style three-branch cell decoder (Graham et al., MedIA 2019; CellViT, Hörst et al., MedIA 2024):
nuclei binary map, horizontal/vertical distance map and nuclei type map, from a feature pyramid at strides
2, 4, 8 and 16 plus the raw image, with skip convolutions shared by the three branches."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

BRANCHES = ("nuclei_binary_map", "hv_map", "nuclei_type_map")


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """3x3 Conv, BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def deconv(cin: int, cout: int) -> nn.ConvTranspose2d:
    """x2 transposed convolution."""
    return nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)


class _Branch(nn.Module):
    def __init__(self, widths: Sequence[int], out_channels: int) -> None:
        super().__init__()
        w0, w1, w2, w3 = widths
        self.up3 = nn.Sequential(conv_block(2 * w3, w3), deconv(w3, w2))  # stride 8 -> 4
        self.up2 = nn.Sequential(conv_block(2 * w2, w2), deconv(w2, w1))  # 4 -> 2
        self.up1 = nn.Sequential(conv_block(2 * w1, w1), deconv(w1, w0))  # 2 -> 1
        self.out = nn.Sequential(conv_block(2 * w0, w0), nn.Conv2d(w0, out_channels, 1))

    def forward(self, b: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        z0, z1, z2, z3 = skips
        x = self.up3(torch.cat([b, z3], 1))
        x = self.up2(torch.cat([_fit(x, z2), z2], 1))
        x = self.up1(torch.cat([_fit(x, z1), z1], 1))
        return self.out(torch.cat([_fit(x, z0), z0], 1))


def _fit(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return x if x.shape[2:] == ref.shape[2:] else F.interpolate(x, size=ref.shape[2:], mode="bilinear")


class HoverDecoder(nn.Module):
    """Three decoder branches over shared skips.

    Args:
        in_channels: Channels of the pyramid features ``f1..f4`` (strides 2, 4, 8, 16).
        num_types: Nuclei types including background.
        image_channels: Channels of the raw image skip.
        width: Base width; the skips at strides 1/2/4/8 get ``width x (1, 2, 4, 8)``.
    """

    def __init__(self, in_channels: int, num_types: int, *, image_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        if num_types < 2:
            raise ValueError(f"num_types must be >= 2 (background included), got {num_types}")
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.decoder0 = nn.Sequential(
            conv_block(image_channels, widths[0] // 2), conv_block(widths[0] // 2, widths[0])
        )
        self.decoder1 = conv_block(in_channels, widths[1])
        self.decoder2 = conv_block(in_channels, widths[2])
        self.decoder3 = conv_block(in_channels, widths[3])
        self.bottleneck = deconv(in_channels, widths[3])  # stride 16 -> 8
        outs = {"nuclei_binary_map": 2, "hv_map": 2, "nuclei_type_map": num_types}
        self.branches = nn.ModuleDict({k: _Branch(widths, n) for k, n in outs.items()})

    def forward(self, image: torch.Tensor, feats: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        f1, f2, f3, f4 = feats
        skips = (self.decoder0(image), self.decoder1(f1), self.decoder2(f2), self.decoder3(f3))
        b = _fit(self.bottleneck(f4), skips[3])
        return {k: branch(b, skips) for k, branch in self.branches.items()}
