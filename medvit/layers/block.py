"""The pre-norm transformer block shared by every medvit ViT."""

from __future__ import annotations

import torch
from torch import nn

from medvit.layers.attention import Attention
from medvit.layers.drop_path import DropPath
from medvit.layers.layer_scale import LayerScale
from medvit.layers.mlp import Mlp, SwiGLU


class Block(nn.Module):
    """``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``, each branch with stochastic depth.

    Parameter names follow the timm/MAE/DINOv3 checkpoints: ``norm1``, ``attn.qkv``, ``attn.proj``,
    ``ls1.gamma``, ``norm2``, ``mlp.fc1/fc2`` (or ``mlp.w12/w3`` for SwiGLU), ``ls2.gamma``.

    Args:
        dim: Token channels.
        num_heads: Attention heads.
        mlp_hidden_dim: Hidden width of the feed-forward layer.
        ffn_layer: ``"mlp"`` (GELU) or ``"swiglu"``.
        qkv_bias: Bias on the qkv projection.
        proj_bias: Bias on the attention output projection.
        mlp_bias: Biases in the feed-forward layer.
        mask_k_bias: Hold the key bias at zero (DINOv3).
        init_values: LayerScale init; ``None`` for no LayerScale.
        norm_eps: LayerNorm epsilon.
        drop_path: Stochastic-depth probability.
        drop: Dropout after projections.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        mlp_hidden_dim: int,
        ffn_layer: str = "mlp",
        qkv_bias: bool = True,
        proj_bias: bool = True,
        mlp_bias: bool = True,
        mask_k_bias: bool = False,
        init_values: float | None = None,
        norm_eps: float = 1e-6,
        drop_path: float = 0.0,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            proj_bias=proj_bias,
            mask_k_bias=mask_k_bias,
            proj_drop=drop,
        )
        self.ls1 = LayerScale(dim, init_values=init_values) if init_values is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        if ffn_layer == "mlp":
            self.mlp: nn.Module = Mlp(dim, hidden_dim=mlp_hidden_dim, bias=mlp_bias, drop=drop)
        elif ffn_layer == "swiglu":
            self.mlp = SwiGLU(dim, hidden_dim=mlp_hidden_dim, bias=mlp_bias, drop=drop)
        else:
            raise ValueError(f"ffn_layer must be 'mlp' or 'swiglu', got {ffn_layer!r}")
        self.ls2 = LayerScale(dim, init_values=init_values) if init_values is not None else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), rope)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
