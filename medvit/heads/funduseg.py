"""FunduSegmenter: optic disc / cup segmentation on a frozen fundus foundation ViT (RETFound by default) with
a pre-adapter, block adapters, a Segmenter mask decoder and a CBAM post-adapter (Zhang et al., TVST 2026;
github.com/JusticeZzy/FunduSegmenter).

* Pre-adapter: ``w * resize(ReLU(conv1x1(CBR(CBR(x))))) + resize_bicubic(x)``, ``w [1, 3, 1, 1]`` = 0.1, so the
  encoder always sees its own input size (224^2 for RETFound) whatever the image size.
* Block adapters: ``attn(n + adapter(n))`` with ``n = norm1(x)`` and adapter Linear(D, 128)-GELU-Linear(128, D),
  attached to each block's ``norm1`` by a forward hook (the backbone is not forked; its weights keep their
  names). The up-projection starts at zero, so the encoder starts as the pre-trained one.
* Decoder: :class:`~medvit.heads.segmenter.MaskTransformer` on the last tapped layer's patch tokens.
* Post-adapter: each tap (default the backbone's four ``feature_indices``: 5, 11, 17, 23 for ViT-L) is
  projected to 64 channels, upsampled bicubically to 16/8/4/2 x the grid, refined by Conv-BN-ReLU and CBAM;
  the masks climb the same ladder (x2 and concatenation with the deepest remaining skip at each step), then a
  1x1 conv to the classes and a bicubic resize to the input size.
* Freezing: the encoder is frozen except its block adapters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medvit.backbones.tokens import check_backbone
from medvit.heads.cbam import CBAM
from medvit.heads.segmenter import MaskTransformer
from medvit.layers.params import freeze, remove_hooks


def cbr(cin: int, cout: int) -> nn.Sequential:
    """3x3 Conv, BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class PreAdapter(nn.Module):
    """Learned residual colour correction and resize to the encoder's input size."""

    def __init__(self, size: tuple[int, int], *, in_chans: int = 3, width: int = 64, init_weight: float = 0.1):
        super().__init__()
        self.size = tuple(size)
        self.body = nn.Sequential(
            cbr(in_chans, width), cbr(width, width), nn.Conv2d(width, in_chans, 1), nn.ReLU()
        )
        self.weight = nn.Parameter(torch.full((1, in_chans, 1, 1), init_weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def resize(t: torch.Tensor) -> torch.Tensor:
            if tuple(t.shape[2:]) == self.size:
                return t
            return F.interpolate(t, size=self.size, mode="bicubic", align_corners=False)

        return self.weight * resize(self.body(x)) + resize(x)


class VitAdapter(nn.Module):
    """``x + up(GELU(down(x)))``: the block adapter, applied to the pre-attention norm's output."""

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


def _after_norm1(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return module.vit_adapter(output)


def add_block_adapters(backbone: nn.Module, *, hidden: int = 128) -> nn.Module:
    """Attach a trainable :class:`VitAdapter` before the attention of every block, in place."""
    ref = next(backbone.parameters())
    for block in backbone.blocks:
        if hasattr(block.norm1, "vit_adapter"):
            raise ValueError("backbone already has FunduSegmenter block adapters")
        block.norm1.vit_adapter = VitAdapter(backbone.embed_dim, hidden).to(device=ref.device, dtype=ref.dtype)
        block.norm1.register_forward_hook(_after_norm1)
    return backbone


def remove_block_adapters(backbone: nn.Module) -> nn.Module:
    """Detach the block adapters and their hooks."""
    for block in backbone.blocks:
        remove_hooks(block.norm1, _after_norm1)
        if hasattr(block.norm1, "vit_adapter"):
            del block.norm1.vit_adapter
    return backbone


class PostAdapter(nn.Module):
    """Fuse the decoder masks with the four tapped encoder layers, coarse to fine, through CBAM skips."""

    def __init__(self, dim: int, n_cls: int, *, width: int = 64, reduction: int = 4) -> None:
        super().__init__()
        self.scales = (16, 8, 4, 2)  # shallowest tap -> finest skip
        self.proj = nn.ModuleList(nn.Conv2d(dim, width, 1) for _ in self.scales)
        self.skips = nn.ModuleList(
            nn.Sequential(cbr(width, width), CBAM(width, reduction=reduction)) for _ in self.scales
        )
        self.mask_in = nn.Conv2d(n_cls, width, 3, padding=1)
        self.fuse = nn.ModuleList(cbr(2 * width, width) for _ in self.scales)
        self.out = nn.Conv2d(width, n_cls, 1)

    def forward(self, masks: torch.Tensor, taps: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        skips = []
        for tap, proj, refine, s in zip(taps, self.proj, self.skips, self.scales, strict=True):
            y = F.interpolate(proj(tap), scale_factor=s, mode="bicubic", align_corners=False)
            skips.append(refine(y))
        x = self.mask_in(masks)
        for skip, fuse in zip(reversed(skips), self.fuse, strict=True):
            x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
            x = fuse(torch.cat([x, skip], dim=1))
        return F.interpolate(self.out(x), size=size, mode="bicubic", align_corners=False)


def _encoder_size(backbone: nn.Module) -> tuple[int, int]:
    size = getattr(backbone, "img_size", None)
    if size is None and getattr(backbone, "pretrained_cfg", None) is not None:
        size = backbone.pretrained_cfg.input_size[1:]
    if size is None:
        raise ValueError("encoder_size is needed: the backbone does not say its input size")
    return tuple(size) if not isinstance(size, int) else (size, size)


class FunduSegmenter(nn.Module):
    """Pre-adapter -> frozen ViT with block adapters -> Segmenter decoder -> CBAM post-adapter.

    Args:
        backbone: A 2D backbone meeting the contract (RETFound ViT-L/16 in the paper).
        num_classes: Output classes (3 for background / disc / cup).
        taps: Four blocks to tap; default the backbone's ``feature_indices``.
        encoder_size: Size the pre-adapter resizes to; default the backbone's ``img_size`` (224 for RETFound).
        adapter_dim: Hidden width of the block adapters.
        decoder_layers: Mask-transformer blocks.
        decoder_heads: Mask-transformer heads (default: the backbone's, else 16).
        decoder_dropout: Dropout in the mask transformer.
        width: Channels of the pre- and post-adapter.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 3,
        *,
        taps: Sequence[int] | None = None,
        encoder_size: int | Sequence[int] | None = None,
        adapter_dim: int = 128,
        decoder_layers: int = 2,
        decoder_heads: int | None = None,
        decoder_dropout: float = 0.1,
        width: int = 64,
    ) -> None:
        super().__init__()
        check_backbone(backbone, spatial_dims=(2,))
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.taps = list(taps) if taps is not None else list(getattr(backbone, "feature_indices", ()))
        if len(self.taps) != 4:
            raise ValueError(f"taps must name 4 blocks, got {self.taps}")
        if encoder_size is None:
            size = _encoder_size(backbone)
        else:
            size = (encoder_size, encoder_size) if isinstance(encoder_size, int) else tuple(encoder_size)
        self.encoder_size = size
        dim = backbone.embed_dim
        heads = decoder_heads or getattr(backbone, "num_heads", 16)
        self.pre_adapter = PreAdapter(size, width=width)
        self.encoder = add_block_adapters(freeze(backbone), hidden=adapter_dim)
        self.decoder = MaskTransformer(
            dim, num_classes, d_model=dim, n_layers=decoder_layers, n_heads=heads, dropout=decoder_dropout
        )
        self.post_adapter = PostAdapter(dim, num_classes, width=width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> logits ``[B, num_classes, H, W]``."""
        z = self.pre_adapter(x)
        taps = self.encoder.forward_intermediates(z, self.taps, norm=False)
        grid = tuple(taps[-1].shape[2:])
        masks = self.decoder(taps[-1].flatten(2).transpose(1, 2), grid)
        return self.post_adapter(masks, taps, tuple(x.shape[2:]))
