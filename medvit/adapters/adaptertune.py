"""AdapterTune: a residual low-rank bottleneck after every block of a frozen backbone, with a zero-initialised
up-projection so that training starts from the frozen network exactly (bottleneck adapters after Houlsby et
al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019, as AdapterTune applies them to ViTs).

The bottleneck is attached as a child ``adaptertune`` of each block and applied by a forward hook, so the
backbone's class, forward and parameter names are untouched (its own weights load as before).
"""

from __future__ import annotations

import torch
from torch import nn

from medvit.layers.params import freeze, remove_hooks


class Bottleneck(nn.Module):
    """``x + scale * up(dropout(act(down(x))))`` with ``up`` initialised to zero.

    Args:
        dim: Token channels.
        rank: Bottleneck width.
        scale: Fixed multiplier of the residual branch.
        dropout: Dropout inside the bottleneck.
    """

    def __init__(self, dim: int, *, rank: int = 16, scale: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.scale = scale
        self.down = nn.Linear(dim, rank)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.up = nn.Linear(rank, dim)
        nn.init.trunc_normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * self.up(self.drop(self.act(self.down(x))))


def _after_block(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    # looked up on the module at call time, so copies of the model use their own adapter
    return module.adaptertune(output)


def apply_adaptertune(
    backbone: nn.Module,
    *,
    rank: int = 16,
    scale: float = 1.0,
    dropout: float = 0.0,
    freeze_base: bool = True,
) -> nn.Module:
    """Add a :class:`Bottleneck` after every block of ``backbone``, in place.

    Args:
        backbone: A backbone with ``blocks`` and ``embed_dim``.
        rank: Bottleneck width.
        scale: Residual multiplier.
        dropout: Dropout inside the bottleneck.
        freeze_base: Freeze the backbone's own parameters (the bottlenecks stay trainable).

    Returns:
        The same backbone, adapted; at initialisation its outputs equal the original's exactly.
    """
    blocks = getattr(backbone, "blocks", None)
    if blocks is None or not hasattr(backbone, "embed_dim"):
        raise ValueError("backbone needs 'blocks' and 'embed_dim' for AdapterTune")
    if any(hasattr(b, "adaptertune") for b in blocks):
        raise ValueError("backbone already has AdapterTune bottlenecks")
    if freeze_base:
        freeze(backbone)
    ref = next(backbone.parameters())
    for block in blocks:
        block.adaptertune = Bottleneck(backbone.embed_dim, rank=rank, scale=scale, dropout=dropout).to(
            device=ref.device, dtype=ref.dtype
        )
        block.register_forward_hook(_after_block)
    return backbone


def remove_adaptertune(backbone: nn.Module) -> nn.Module:
    """Detach the bottlenecks and their hooks, giving back the plain backbone."""
    for block in backbone.blocks:
        remove_hooks(block, _after_block)
        if hasattr(block, "adaptertune"):
            del block.adaptertune
    return backbone
