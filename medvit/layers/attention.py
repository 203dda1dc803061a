"""Multi-head self-attention through ``torch.nn.functional.scaled_dot_product_attention``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medvit.layers.rope import apply_rope


class Attention(nn.Module):
    """Self-attention with one fused ``qkv`` projection (Vaswani et al., NeurIPS 2017).

    SDPA picks the fastest kernel available (flash / memory-efficient on CUDA, the fused CPU kernel
    otherwise). With ``mask_k_bias`` the key third of the qkv bias is held at zero, as DINOv3's
    ``LinearKMaskedBias`` does; the mask is a non-persistent buffer, so it survives fine-tuning.

    Args:
        dim: Token channels.
        num_heads: Attention heads; ``dim`` must be divisible by it.
        qkv_bias: Bias on the qkv projection.
        proj_bias: Bias on the output projection.
        mask_k_bias: Zero the key bias (DINOv3).
        attn_drop: Dropout on attention weights (training only).
        proj_drop: Dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        mask_k_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)
        self.k_bias_mask: torch.Tensor | None
        if mask_k_bias and qkv_bias:
            mask = torch.ones(3 * dim)
            mask[dim : 2 * dim] = 0
            self.register_buffer("k_bias_mask", mask, persistent=False)
        else:
            self.k_bias_mask = None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Attend over ``x [B, N, dim]``; ``rope`` is ``(cos, sin)`` for all N tokens (prefix rows: identity)."""
        b, n, c = x.shape
        qkv = self.qkv(x)  # a module call, so wrappers such as LoRA apply in full (dropout included)
        if self.k_bias_mask is not None and self.qkv.bias is not None:
            qkv = qkv - (self.qkv.bias * (1 - self.k_bias_mask)).to(qkv.dtype)  # key bias held at zero
        qkv = qkv.reshape(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        drop = self.attn_drop if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))
