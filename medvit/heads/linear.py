"""Linear heads on a backbone: image classification (single- or multi-label) and a linear segmentation probe.

Classification pools the tokens as RETFound fine-tunes (Zhou et al., Nature 2023): the mean of the patch
tokens (or the CLS token), a LayerNorm ``fc_norm``, dropout, then one linear layer initialised with a
truncated normal of std 2e-5. The segmentation probe is DINOv3's linear head (Siméoni et al., "DINOv3", 2025):
BatchNorm and a 1x1 convolution on the final-norm patch features, upsampled to the input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from medvit.backbones.tokens import check_backbone
from medvit.layers.params import freeze

POOLS = ("avg", "cls")


def _grad_context(backbone: nn.Module):
    """``no_grad`` when nothing in the backbone trains (saves the activations), else a null context."""
    trains = any(p.requires_grad for p in backbone.parameters())
    return nullcontext() if trains and torch.is_grad_enabled() else torch.no_grad()


class ClassificationHead(nn.Module):
    """Pool ``[B, P + N, D]`` tokens to ``[B, D]``, apply ``fc_norm`` and a linear layer.

    Args:
        dim: Token channels.
        num_classes: Outputs (classes, or labels for multi-label).
        num_prefix_tokens: Prefix tokens (CLS, registers) at the start of the sequence.
        pool: ``"avg"`` (mean of the patch tokens, RETFound's default) or ``"cls"`` (the first token).
        fc_norm: LayerNorm after pooling.
        dropout: Dropout before the linear layer.
        init_std: Std of the truncated-normal weight init (RETFound: 2e-5).
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        *,
        num_prefix_tokens: int = 1,
        pool: str = "avg",
        fc_norm: bool = True,
        dropout: float = 0.0,
        init_std: float = 2e-5,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if pool == "cls" and num_prefix_tokens < 1:
            raise ValueError("pool='cls' needs a backbone with a CLS token (num_prefix_tokens >= 1)")
        self.pool = pool
        self.num_prefix_tokens = num_prefix_tokens
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6) if fc_norm else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=init_std)
        nn.init.zeros_(self.head.bias)

    def pool_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.pool == "cls":
            return tokens[:, 0]
        return tokens[:, self.num_prefix_tokens :].mean(dim=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.fc_norm(self.pool_tokens(tokens))))


class LinearClassifier(nn.Module):
    """A backbone and a :class:`ClassificationHead`: ``forward`` gives logits ``[B, num_classes]``.

    Args:
        backbone: Any backbone meeting the contract (2D or 3D).
        num_classes: Classes, or labels when ``multi_label``.
        pool: ``"avg"`` or ``"cls"``.
        fc_norm: LayerNorm after pooling.
        multi_label: Independent sigmoid per label (``predict`` and ``criterion`` follow).
        dropout: Dropout before the linear layer.
        freeze_backbone: Linear probing: train only the head.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        pool: str = "avg",
        fc_norm: bool = True,
        multi_label: bool = False,
        dropout: float = 0.0,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__()
        check_backbone(backbone)
        self.backbone = freeze(backbone) if freeze_backbone else backbone
        self.multi_label = multi_label
        self.head = ClassificationHead(
            backbone.embed_dim,
            num_classes,
            num_prefix_tokens=backbone.num_prefix_tokens,
            pool=pool,
            fc_norm=fc_norm,
            dropout=dropout,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _grad_context(self.backbone):
            tokens = self.backbone.forward_features(x)
        return self.head(tokens)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities: softmax over classes, or a sigmoid per label when ``multi_label``."""
        logits = self(x)
        return torch.sigmoid(logits) if self.multi_label else logits.softmax(dim=1)

    def criterion(self) -> nn.Module:
        """The matching loss: ``BCEWithLogitsLoss`` (multi-label) or ``CrossEntropyLoss``."""
        return nn.BCEWithLogitsLoss() if self.multi_label else nn.CrossEntropyLoss()


class LinearSegProbe(nn.Module):
    """DINOv3-style linear segmentation probe: BatchNorm + 1x1 conv on patch features, resized to the input.

    Works for 2D (``[B, C, H, W]`` -> ``[B, K, H, W]``) and 3D backbones.

    Args:
        backbone: Any backbone meeting the contract.
        num_classes: Output channels.
        indices: Blocks whose (final-norm) patch features are concatenated; default the last block.
        batch_norm: BatchNorm before the conv (DINOv3's linear head).
        dropout: Channel dropout before the conv.
        freeze_backbone: Train only the probe (DINOv3 evaluates with a frozen backbone).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        indices: Sequence[int] = (-1,),
        batch_norm: bool = True,
        dropout: float = 0.0,
        freeze_backbone: bool = True,
    ) -> None:
        super().__init__()
        check_backbone(backbone)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not indices:
            raise ValueError("indices must name at least one block")
        self.backbone = freeze(backbone) if freeze_backbone else backbone
        self.indices = list(indices)
        dims = backbone.spatial_dims
        channels = backbone.embed_dim * len(self.indices)
        bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        drop = nn.Dropout2d if dims == 2 else nn.Dropout3d
        self.bn = bn(channels) if batch_norm else nn.Identity()
        self.drop = drop(dropout) if dropout > 0 else nn.Identity()
        self.conv = conv(channels, num_classes, kernel_size=1)
        self.mode = "bilinear" if dims == 2 else "trilinear"

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits on the patch grid ``[B, K, *grid]``."""
        with _grad_context(self.backbone):
            feats = self.backbone.forward_intermediates(x, self.indices, norm=True)
        return self.conv(self.drop(self.bn(torch.cat(feats, dim=1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.forward_logits(x)
        return F.interpolate(logits, size=x.shape[2:], mode=self.mode, align_corners=False)
