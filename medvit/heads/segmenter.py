"""Segmenter's mask transformer decoder (Strudel et al., "Segmenter: Transformer for Semantic Segmentation",
ICCV 2021): learnable class embeddings attend jointly with the patch tokens; masks are the scalar products of
L2-normalised patch and class embeddings, then a LayerNorm over classes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medvit.backbones.tokens import tokens_to_map
from medvit.layers import Block


class MaskTransformer(nn.Module):
    """Patch tokens ``[B, N, d_encoder]`` on a ``grid`` -> class masks ``[B, n_cls, *grid]``.

    Args:
        d_encoder: Channels of the incoming tokens.
        n_cls: Classes.
        d_model: Decoder width.
        n_layers: Transformer blocks.
        n_heads: Attention heads.
        dropout: Dropout in the blocks.
    """

    def __init__(
        self, d_encoder: int, n_cls: int, *, d_model: int = 1024, n_layers: int = 2, n_heads: int = 16,
        dropout: float = 0.1,
    ) -> None:  # fmt: skip
        super().__init__()
        if n_cls < 1:
            raise ValueError(f"n_cls must be >= 1, got {n_cls}")
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.n_cls = n_cls
        self.scale = d_model**-0.5
        self.proj_dec = nn.Linear(d_encoder, d_model)
        self.cls_emb = nn.Parameter(torch.randn(1, n_cls, d_model) * 0.02)
        self.blocks = nn.ModuleList(
            Block(d_model, num_heads=n_heads, mlp_hidden_dim=4 * d_model, drop=dropout, norm_eps=1e-5)
            for _ in range(n_layers)
        )
        self.decoder_norm = nn.LayerNorm(d_model)
        self.proj_patch = nn.Parameter(self.scale * torch.randn(d_model, d_model))
        self.proj_classes = nn.Parameter(self.scale * torch.randn(d_model, d_model))
        self.mask_norm = nn.LayerNorm(n_cls)

    def no_weight_decay(self) -> set[str]:
        """The class embeddings get no weight decay (names relative to this module)."""
        return {"cls_emb"}

    def forward(self, tokens: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        x = torch.cat([self.proj_dec(tokens), self.cls_emb.expand(tokens.shape[0], -1, -1)], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        patches, classes = x[:, : -self.n_cls], x[:, -self.n_cls :]
        patches = F.normalize(patches @ self.proj_patch, dim=-1)
        classes = F.normalize(classes @ self.proj_classes, dim=-1)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))
        return tokens_to_map(masks, grid)
