"""LoRA: low-rank updates on a frozen backbone's linear layers (Hu et al., "LoRA: Low-Rank Adaptation of
Large Language Models", ICLR 2022).

``apply_lora`` wraps chosen ``nn.Linear`` layers of the backbone's blocks in :class:`LoRALinear` in place;
the backbone class is not touched. ``W x + (alpha / r) B A dropout(x)`` with ``A`` Kaiming-initialised and
``B`` zero, so the adapted model starts equal to the original. ``merge`` folds ``(alpha / r) B A`` into the
frozen weight for export and ``unmerge`` takes it out again; both are idempotent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medvit.layers.params import freeze

# target name -> the linear layers it selects inside each block (fc1/fc2 of the MLP, w12/w3 of SwiGLU)
TARGETS = {
    "qkv": ("attn.qkv",),
    "proj": ("attn.proj",),
    "fc1": ("mlp.fc1", "mlp.w12"),
    "fc2": ("mlp.fc2", "mlp.w3"),
    "mlp": ("mlp.fc1", "mlp.w12", "mlp.fc2", "mlp.w3"),
}


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-``r`` update.

    ``weight`` and ``bias`` read like those of the wrapped layer and include the update (so code that calls
    ``F.linear(x, layer.weight, layer.bias)`` directly, as medvit's attention does for its qkv, sees it too;
    input dropout applies only when the module itself is called).

    Args:
        base: The linear layer to adapt; its parameters are frozen.
        rank: Rank ``r`` of the update (>= 1).
        alpha: Scale numerator; the update is multiplied by ``alpha / rank``.
        dropout: Dropout on the input of the low-rank path.
    """

    def __init__(self, base: nn.Linear, *, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"base must be an nn.Linear, got {type(base).__name__}")
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.base = freeze(base)
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        w = base.weight
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight: the frozen weight plus the update (already inside it once merged)."""
        if self.merged:
            return self.base.weight
        return self.base.weight + self.delta_weight().to(self.base.weight.dtype)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / r) B A``, shaped like the base weight."""
        return (self.lora_b @ self.lora_a) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        low = F.linear(F.linear(self.lora_dropout(x), self.lora_a.to(x.dtype)), self.lora_b.to(x.dtype))
        return out + low * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight; a second call does nothing."""
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take a merged update back out of the base weight; does nothing when not merged."""
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


def _resolve_targets(targets: Sequence[str]) -> tuple[str, ...]:
    if isinstance(targets, str):
        targets = (targets,)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise ValueError(f"targets must be a non-empty subset of {sorted(TARGETS)}, got {list(targets)!r}")
    return tuple(path for t in targets for path in TARGETS[t])


def apply_lora(
    backbone: nn.Module,
    *,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    targets: Sequence[str] = ("qkv", "proj"),
    freeze_base: bool = True,
) -> nn.Module:
    """Wrap the targeted linear layers of every block of ``backbone`` in :class:`LoRALinear`, in place.

    Args:
        backbone: A backbone with ``blocks`` (every medvit backbone).
        rank: LoRA rank.
        alpha: LoRA scale numerator.
        dropout: Dropout on the LoRA input.
        targets: Any of ``"qkv"``, ``"proj"`` (attention), ``"fc1"``, ``"fc2"`` or ``"mlp"`` (feed-forward).
        freeze_base: Freeze everything except the LoRA factors (:func:`mark_only_lora_as_trainable`).

    Returns:
        The same backbone, adapted.
    """
    paths = _resolve_targets(targets)
    blocks = getattr(backbone, "blocks", None)
    if blocks is None:
        raise ValueError("backbone has no 'blocks' to adapt")
    wrapped = 0
    for block in blocks:
        for path in paths:
            parent_path, _, leaf = path.rpartition(".")
            parent = block.get_submodule(parent_path) if parent_path else block
            layer = getattr(parent, leaf, None)
            if isinstance(layer, nn.Linear):
                setattr(parent, leaf, LoRALinear(layer, rank=rank, alpha=alpha, dropout=dropout))
                wrapped += 1
    if wrapped == 0:
        raise ValueError(f"targets {list(targets)!r} matched no linear layer of the backbone's blocks")
    if freeze_base:
        mark_only_lora_as_trainable(backbone)
    return backbone


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    """Every :class:`LoRALinear` inside ``model``."""
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def mark_only_lora_as_trainable(model: nn.Module) -> nn.Module:
    """Freeze every parameter of ``model`` except the LoRA factors; returns it."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith(("lora_a", "lora_b")))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer of ``model`` (idempotent)."""
    for layer in lora_layers(model):
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Unmerge every LoRA layer of ``model`` (idempotent)."""
    for layer in lora_layers(model):
        layer.unmerge()
    return model


def remove_lora(model: nn.Module) -> nn.Module:
    """Merge and replace every :class:`LoRALinear` by its plain linear layer, restoring the original keys.

    The plain layers stay frozen as they were; use this to export a LoRA-tuned backbone in its own format.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            module.merge()
            parent_path, _, leaf = name.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            setattr(parent, leaf, module.base)
    return model
