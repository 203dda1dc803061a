"""UNETR decoder on a plain ViT, in 3D or 2D (Hatamizadeh et al., "UNETR: Transformers for 3D Medical Image
Segmentation", WACV 2022), as Hi-End-MAE fine-tunes it (Tang et al., MedIA 2025).

Four token maps are tapped (by default after blocks ``depth/4``, ``depth/2``, ``3 depth/4`` and the final
normed output: 3, 6, 9, 11 for a 12-block encoder). Skips are made at 2x, 4x and 8x the token grid by MONAI's
``UnetrPrUpBlock``; the decoder climbs the same ladder with ``UnetrUpBlock`` and then joins a convolutional
stem on the raw input. With 16-voxel patches the last step is MONAI's transposed-conv up-block; for any other
patch (12 -> 96^3 with an 8^3 grid, 8, 14, ...) it is a resize to the input size followed by a convolution,
as Hi-End-MAE's ``UnetrUpBlock_self`` does, so the output always has the input's size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from monai.networks.blocks.dynunet_block import get_conv_layer
from torch import nn

from medvit.backbones.tokens import check_backbone, token_grid, tokens_to_map
from medvit.layers.params import freeze


class ResizeUpBlock(nn.Module):
    """Resize to the skip's size, convolve, concatenate the skip and refine: an up-block for any scale.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Channels of the coarse input.
        out_channels: Channels out (and of the skip).
        norm_name: MONAI norm name.
        res_block: Residual refinement block.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, *, norm_name: str, res_block: bool
    ) -> None:
        super().__init__()
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"
        self.conv = get_conv_layer(
            spatial_dims, in_channels, out_channels, kernel_size=3, stride=1, conv_only=True
        )
        self.refine = UnetrBasicBlock(
            spatial_dims, out_channels * 2, out_channels, kernel_size=3, stride=1, norm_name=norm_name,
            res_block=res_block,
        )  # fmt: skip

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if x.shape[2:] != skip.shape[2:]:  # resizing to the same size is the identity: skip the copy
            x = F.interpolate(x, size=skip.shape[2:], mode=self.mode, align_corners=False)
        return self.refine(torch.cat([self.conv(x), skip], dim=1))


def default_taps(depth: int) -> tuple[int, int, int, int]:
    """UNETR's taps for a ``depth``-block encoder: ``depth/4``, ``depth/2``, ``3 depth/4`` and the last."""
    return (depth // 4, depth // 2, (3 * depth) // 4, depth - 1)


def _in_channels(backbone: nn.Module) -> int:
    proj = getattr(getattr(backbone, "patch_embed", None), "proj", None)
    if proj is not None and hasattr(proj, "in_channels"):
        return int(proj.in_channels)
    cfg = getattr(backbone, "pretrained_cfg", None)
    if cfg is not None:
        return int(cfg.input_size[0])
    raise ValueError("in_channels is needed: the backbone does not say how many input channels it takes")


class UNETR(nn.Module):
    """A backbone and a UNETR decoder: ``[B, C, *S] -> [B, out_channels, *S]``.

    Args:
        backbone: A 2D or 3D backbone meeting the contract; patches of at least 8 per side.
        out_channels: Segmentation classes (background included).
        taps: Four block indices; the last is taken after the final norm. Default :func:`default_taps`.
        feature_size: Width of the first decoder stage (doubles per level; Hi-End-MAE uses 32).
        norm_name: MONAI norm for the decoder (``"instance"``, ``"batch"``, ...).
        res_block: Residual blocks in the decoder.
        in_channels: Input channels for the stem; read from the backbone's patch embedding by default.
        freeze_backbone: Train only the decoder.
    """

    def __init__(
        self,
        backbone: nn.Module,
        out_channels: int,
        *,
        taps: Sequence[int] | None = None,
        feature_size: int = 16,
        norm_name: str = "instance",
        res_block: bool = True,
        in_channels: int | None = None,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__()
        check_backbone(backbone)
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}")
        if feature_size < 1:
            raise ValueError(f"feature_size must be >= 1, got {feature_size}")
        sd = backbone.spatial_dims
        patch = backbone.patch_size
        patch = (patch,) * sd if isinstance(patch, int) else tuple(patch)
        if min(patch) < 8:
            raise ValueError(f"UNETR needs patches of at least 8 per side, backbone has patch_size {patch}")
        depth = len(backbone.blocks) if hasattr(backbone, "blocks") else getattr(backbone, "depth", None)
        self.taps = tuple(taps) if taps is not None else default_taps(int(depth))
        if len(self.taps) != 4:
            raise ValueError(f"taps must name 4 blocks, got {list(self.taps)}")
        self.backbone = freeze(backbone) if freeze_backbone else backbone
        self.spatial_dims = sd
        hidden = backbone.embed_dim
        fs = feature_size
        cin = in_channels if in_channels is not None else _in_channels(backbone)
        kw = dict(norm_name=norm_name, res_block=res_block)
        pr = dict(kernel_size=3, stride=1, upsample_kernel_size=2, conv_block=True, **kw)
        self.encoder1 = UnetrBasicBlock(sd, cin, fs, kernel_size=3, stride=1, **kw)
        self.encoder2 = UnetrPrUpBlock(sd, hidden, fs * 2, num_layer=2, **pr)
        self.encoder3 = UnetrPrUpBlock(sd, hidden, fs * 4, num_layer=1, **pr)
        self.encoder4 = UnetrPrUpBlock(sd, hidden, fs * 8, num_layer=0, **pr)
        up = dict(kernel_size=3, upsample_kernel_size=2, **kw)
        self.decoder5 = UnetrUpBlock(sd, hidden, fs * 8, **up)
        self.decoder4 = UnetrUpBlock(sd, fs * 8, fs * 4, **up)
        self.decoder3 = UnetrUpBlock(sd, fs * 4, fs * 2, **up)
        self.transposed_last = all(p == 16 for p in patch)
        if self.transposed_last:
            self.decoder2: nn.Module = UnetrUpBlock(sd, fs * 2, fs, **up)
        else:
            self.decoder2 = ResizeUpBlock(sd, fs * 2, fs, **kw)
        self.out = UnetOutBlock(sd, fs, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = token_grid(self.backbone, x.shape[2:])
        if self.transposed_last and any(g * 16 != s for g, s in zip(grid, x.shape[2:], strict=True)):
            raise ValueError(f"input size {tuple(x.shape[2:])} must be a multiple of the 16-voxel patch")
        h1, h2, h3, last = self.backbone.forward_intermediates(x, list(self.taps), norm=False, output_fmt="NLC")
        last = self.backbone.norm(last)
        z = [tokens_to_map(t, grid) for t in (h1, h2, h3, last)]
        enc1 = self.encoder1(x)
        enc2 = self.encoder2(z[0])
        enc3 = self.encoder3(z[1])
        enc4 = self.encoder4(z[2])
        d = self.decoder5(z[3], enc4)
        d = self.decoder4(d, enc3)
        d = self.decoder3(d, enc2)
        d = self.decoder2(d, enc1)
        # logits in float32 even under autocast: bf16 rounding of the logits flips near-tied voxels
        with torch.autocast(device_type=d.device.type, enabled=False):
            return self.out(d.float())
