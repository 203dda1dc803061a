"""LoRA: low-rank updates on a frozen backbone's linear layers (Hu et al., "LoRA: Low-Rank Adaptation of
Large Language Models", ICLR 2022).

``apply_lora`` wraps chosen ``nn.Linear`` layers of the backbone's blocks in :class:`LoRALinear` in place;
the backbone class is not touched. ``W x + (alpha / r) B A dropout(x)`` with ``A`` Kaiming-initialised and
``B`` zero, so the adapted model starts equal to the original. ``merge`` folds ``(alpha / r) B A`` into the
frozen weight for export and ``unmerge`` takes it out again; both are idempotent.

The targets ``"q"``, ``"k"`` and ``"v"`` adapt only those output rows of the fused ``attn.qkv`` projection
(``rows`` of :class:`LoRALinear`): the update is scattered into them and every other row stays exactly as it was.
Several row targets on one layer share one :class:`LoRALinear` over the union of their rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

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
    "q": ("attn.qkv",),
    "k": ("attn.qkv",),
    "v": ("attn.qkv",),
}
# row targets: which third of the fused qkv output ([q | k | v], ``dim`` rows each) they select
ROW_TARGETS = {"q": 0, "k": 1, "v": 2}


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-``r`` update.

    ``weight`` and ``bias`` read like those of the wrapped layer and include the update (so code that calls
    ``F.linear(x, layer.weight, layer.bias)`` directly sees it too; input dropout applies only when the module
    itself is called).

    With ``rows`` the update touches only those output rows (e.g. the query and value rows of a fused qkv, as
    ExPLoRA adapts them): ``lora_b`` is ``[len(rows), r]`` and ``B A`` is scattered into the rows, so every
    other row of the effective weight is the frozen one bit for bit, merged or not.

    Args:
        base: The linear layer to adapt; its parameters are frozen.
        rank: Rank ``r`` of the update (>= 1).
        alpha: Scale numerator; the update is multiplied by ``alpha / rank``.
        dropout: Dropout on the input of the low-rank path.
        rows: Output rows the update applies to (distinct, in ``[0, out_features)``); ``None`` for all rows.
    """

    def __init__(
        self,
        base: nn.Linear,
        *,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        rows: Iterable[int] | torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"base must be an nn.Linear, got {type(base).__name__}")
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        w = base.weight
        self.lora_rows: torch.Tensor | None
        if rows is None:
            self.lora_rows = None
        else:
            index = _row_index(rows, base.out_features)
            self.register_buffer("lora_rows", index.to(w.device), persistent=False)  # not in the state dict
        self.base = freeze(base)
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        n_out = base.out_features if self.lora_rows is None else self.lora_rows.numel()
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_b = nn.Parameter(torch.zeros(n_out, rank, device=w.device, dtype=w.dtype))
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
        """``(alpha / r) B A``, shaped like the base weight (zero outside ``rows``)."""
        update = (self.lora_b @ self.lora_a) * self.scaling
        if self.lora_rows is None:
            return update
        return update.new_zeros(self.base.weight.shape).index_add(0, self.lora_rows, update)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        low = F.linear(F.linear(self.lora_dropout(x), self.lora_a.to(x.dtype)), self.lora_b.to(x.dtype))
        if self.lora_rows is None:
            return out + low * self.scaling
        return out.index_add(-1, self.lora_rows, (low * self.scaling).to(out.dtype))

    @torch.no_grad()
    def _add_update(self, sign: float) -> None:
        update = ((self.lora_b @ self.lora_a) * (sign * self.scaling)).to(self.base.weight.dtype)
        if self.lora_rows is None:
            self.base.weight += update
        else:
            self.base.weight.index_add_(0, self.lora_rows, update)  # the other rows are not touched

    def merge(self) -> None:
        """Fold the update into the base weight; a second call does nothing."""
        if not self.merged:
            self._add_update(1.0)
            self.merged = True

    def unmerge(self) -> None:
        """Take a merged update back out of the base weight; does nothing when not merged."""
        if self.merged:
            self._add_update(-1.0)
            self.merged = False

    def extra_repr(self) -> str:
        rows = "" if self.lora_rows is None else f", rows={self.lora_rows.numel()}/{self.out_features}"
        return f"rank={self.rank}, alpha={self.alpha}{rows}, merged={self.merged}"


def _row_index(rows: Iterable[int] | torch.Tensor, out_features: int) -> torch.Tensor:
    """Sorted ``int64`` row indices, checked to be distinct and inside ``[0, out_features)``."""
    index = torch.as_tensor(rows.tolist() if isinstance(rows, torch.Tensor) else list(rows), dtype=torch.long)
    if index.ndim != 1 or index.numel() == 0:
        raise ValueError("rows must be a non-empty list of output row indices")
    index = index.sort().values
    if index[0] < 0 or index[-1] >= out_features:
        raise ValueError(f"rows must lie in [0, {out_features}), got {index[0].item()}..{index[-1].item()}")
    if index.unique().numel() != index.numel():
        raise ValueError("rows must be distinct")
    return index


def qkv_rows(parts: Iterable[str], out_features: int) -> list[int] | None:
    """The output rows of a fused ``[q | k | v]`` projection that ``parts`` (``"q"``, ``"k"``, ``"v"``) select;
    ``None`` when all three are selected (the whole layer)."""
    thirds = sorted({ROW_TARGETS[p] for p in parts})
    if len(thirds) == 3:
        return None
    if out_features % 3:
        raise ValueError(f"q/k/v targets need a fused qkv layer with 3 * dim outputs, got {out_features}")
    dim = out_features // 3
    return [r for t in thirds for r in range(t * dim, (t + 1) * dim)]


def _resolve_targets(targets: Sequence[str]) -> dict[str, set[str] | None]:
    """Layer path -> the q/k/v parts a row target selects on it, or ``None`` for the whole layer."""
    if isinstance(targets, str):
        targets = (targets,)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise ValueError(f"targets must be a non-empty subset of {sorted(TARGETS)}, got {list(targets)!r}")
    paths: dict[str, set[str] | None] = {}
    for t in targets:
        for path in TARGETS[t]:
            if t not in ROW_TARGETS or (path in paths and paths[path] is None):
                paths[path] = None  # the whole layer wins over row targets on it
            else:
                paths.setdefault(path, set()).add(t)
    return paths


def wrap_blocks(
    blocks: Iterable[nn.Module],
    targets: Sequence[str],
    *,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
) -> int:
    """Wrap the targeted linear layers of each block in :class:`LoRALinear`, in place; returns how many.

    Layers that are not ``nn.Linear`` (absent, or already wrapped) are skipped.
    """
    paths = _resolve_targets(targets)
    wrapped = 0
    for block in blocks:
        for path, parts in paths.items():
            parent_path, _, leaf = path.rpartition(".")
            parent = block.get_submodule(parent_path) if parent_path else block
            layer = getattr(parent, leaf, None)
            if isinstance(layer, nn.Linear):
                rows = None if parts is None else qkv_rows(parts, layer.out_features)
                setattr(parent, leaf, LoRALinear(layer, rank=rank, alpha=alpha, dropout=dropout, rows=rows))
                wrapped += 1
    return wrapped


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
        targets: Any of ``"qkv"``, ``"proj"`` (attention), ``"fc1"``, ``"fc2"`` or ``"mlp"`` (feed-forward), or
            ``"q"``, ``"k"``, ``"v"`` (those rows of the fused qkv; several share one LoRA layer).
        freeze_base: Freeze everything except the LoRA factors (:func:`mark_only_lora_as_trainable`).

    Returns:
        The same backbone, adapted.
    """
    _resolve_targets(targets)
    blocks = getattr(backbone, "blocks", None)
    if blocks is None:
        raise ValueError("backbone has no 'blocks' to adapt")
    wrapped = wrap_blocks(blocks, targets, rank=rank, alpha=alpha, dropout=dropout)
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
