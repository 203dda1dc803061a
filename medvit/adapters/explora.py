"""ExPLoRA: parameter-efficient extended pre-training of a ViT on a new domain (Khanna et al., "ExPLoRA:
Parameter-Efficient Extended Pre-Training to Adapt Vision Transformers under Domain Shifts", ICML 2025,
arXiv:2406.10973).

Starting from a pre-trained backbone (MAE or DINOv2/v3 weights), the last ``unfreeze_blocks`` blocks train in
full, every other block gets LoRA on its query and value projections (rows of the fused ``attn.qkv``, one
independent pair ``A [r, D]``, ``B [D, r]`` for each, ``4 r D`` parameters per block as in the paper), and
every LayerNorm trains; the patch embedding, position embedding and prefix tokens stay frozen. The original
self-supervised objective then continues on the new domain's unlabelled images. ``remove_lora`` afterwards
merges the updates and gives back a backbone with exactly its original keys, ready for
:func:`~medvit.backbones.save_backbone` or :func:`~medvit.backbones.save_official`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from medvit.adapters.lora import TARGETS, lora_layers, wrap_blocks
from medvit.layers.params import freeze, parameter_report, unfreeze

NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm,) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def apply_explora(
    backbone: nn.Module,
    *,
    unfreeze_blocks: int = 1,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    targets: Sequence[str] = ("q", "v"),
    unfreeze_norms: bool = True,
) -> nn.Module:
    """Set ``backbone`` up for ExPLoRA extended pre-training, in place.

    Everything is frozen first; then the last ``unfreeze_blocks`` blocks are made fully trainable (and get no
    LoRA), the other blocks get rank-``rank`` LoRA on ``targets``, and with ``unfreeze_norms`` every LayerNorm
    (the blocks' ``norm1``/``norm2`` and the final ``norm``/``fc_norm``) trains. The settings and the
    parameter counts are stored as ``backbone.explora``.

    Args:
        backbone: A backbone with ``blocks`` (every medvit backbone), without LoRA layers yet.
        unfreeze_blocks: How many of the last blocks train in full, in ``[0, depth]`` (the paper uses 1 or 2).
        rank: LoRA rank.
        alpha: LoRA scale numerator.
        dropout: Dropout on the LoRA input.
        targets: LoRA targets in the other blocks (see :data:`~medvit.adapters.lora.TARGETS`); by default
            the query and value rows of ``attn.qkv``, each with its own LoRA pair (held by one LoRA layer per
            block).
        unfreeze_norms: Train every LayerNorm.

    Returns:
        The same backbone, adapted; at initialisation its outputs equal the original's exactly.

    Raises:
        ValueError: No blocks, LoRA already applied, ``unfreeze_blocks`` out of range, or bad LoRA settings.
    """
    blocks = getattr(backbone, "blocks", None)
    if blocks is None or len(blocks) == 0:
        raise ValueError("backbone has no 'blocks' to adapt")
    depth = len(blocks)
    if isinstance(unfreeze_blocks, bool) or not isinstance(unfreeze_blocks, int):
        raise ValueError(f"unfreeze_blocks must be an integer, got {unfreeze_blocks!r}")
    if not 0 <= unfreeze_blocks <= depth:
        raise ValueError(f"unfreeze_blocks must be in [0, {depth}] (the backbone's depth), got {unfreeze_blocks}")
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise ValueError(f"targets must be a non-empty subset of {sorted(TARGETS)}, got {list(targets)!r}")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if lora_layers(backbone):
        raise ValueError("backbone already has LoRA layers; apply ExPLoRA to a plain backbone")

    freeze(backbone)
    n_lora = depth - unfreeze_blocks
    wrapped = wrap_blocks(list(blocks)[:n_lora], targets, rank=rank, alpha=alpha, dropout=dropout)
    if n_lora and wrapped == 0:
        raise ValueError(f"targets {list(targets)!r} matched no linear layer of the backbone's blocks")
    for block in list(blocks)[n_lora:]:
        unfreeze(block)
    if unfreeze_norms:
        for module in backbone.modules():
            if isinstance(module, NORM_TYPES):
                unfreeze(module)
    backbone.explora = {
        "unfreeze_blocks": unfreeze_blocks,
        "rank": rank,
        "alpha": alpha,
        "dropout": dropout,
        "targets": list(targets),
        "unfreeze_norms": unfreeze_norms,
        "lora_blocks": list(range(n_lora)),
        "trainable_blocks": list(range(n_lora, depth)),
        "parameters": parameter_report(backbone),
    }
    return backbone
