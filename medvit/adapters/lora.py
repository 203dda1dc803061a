"""LoRA: low-rank updates on a frozen backbone's linear layers (Hu et al., "LoRA: Low-Rank Adaptation of
Large Language Models", ICLR 2022).

``apply_lora`` wraps chosen ``nn.Linear`` layers of the backbone's blocks in :class:`LoRALinear` in place;
the backbone class is not touched. ``W x + (alpha / r) B A dropout(x)`` with ``A`` Kaiming-initialised and
``B`` zero, so the adapted model starts equal to the original. ``merge`` folds ``(alpha / r) B A`` into the
frozen weight for export and ``unmerge`` takes it out again; both are idempotent.

The targets ``"q"``, ``"k"`` and ``"v"`` adapt only those output rows of the fused ``attn.qkv`` projection
(``parts`` of :class:`LoRALinear`): each selected projection gets its own independent pair ``(A, B)``, as
separate query/value LoRA layers have in the LoRA paper, PEFT and ExPLoRA (``2 r D`` parameters per part), and
the updates are scattered into their rows while every other row stays exactly as it was. The row targets on one
layer live in one :class:`LoRALinear`; ``"qkv"`` (or ``"q"``, ``"k"`` and ``"v"`` together) is one pair on the
whole layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

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

    With ``rows`` the update touches only those output rows: ``lora_b`` is ``[len(rows), r]`` and ``B A`` is
    scattered into the rows, so every other row of the effective weight is the frozen one bit for bit, merged or
    not.

    With ``parts`` (e.g. ``{"q": query_rows, "v": value_rows}`` of a fused qkv, as ExPLoRA adapts it) every part
    gets its own independent pair ``A_p [r, in]``, ``B_p [len(rows_p), r]`` (and its own input-dropout mask),
    exactly as if the parts were separate linear layers each with its own LoRA; ``B_p A_p`` goes into the
    part's rows and all other rows stay bit for bit. The pairs are stored stacked, in the order of ``parts``,
    so the parameter names stay ``lora_a`` (``[n_parts * r, in]``, part ``i`` in rows ``i*r : (i+1)*r``) and
    ``lora_b`` (the parts' ``B_p`` one under the other); :meth:`pairs` gives each part's ``(A_p, B_p)`` as views.

    Args:
        base: The linear layer to adapt; its parameters are frozen.
        rank: Rank ``r`` of the update (of each part's update with ``parts``; >= 1).
        alpha: Scale numerator; the update is multiplied by ``alpha / rank``.
        dropout: Dropout on the input of the low-rank path.
        rows: Output rows one update applies to (distinct, in ``[0, out_features)``); ``None`` for all rows.
        parts: Part name -> its output rows (each as ``rows``, no row in two parts), one independent pair per
            part; excludes ``rows``.
    """

    def __init__(
        self,
        base: nn.Linear,
        *,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        rows: Iterable[int] | torch.Tensor | None = None,
        parts: Mapping[str, Iterable[int] | torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"base must be an nn.Linear, got {type(base).__name__}")
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if rows is not None and parts is not None:
            raise ValueError("give rows or parts, not both")
        w = base.weight
        self.parts: dict[str, int] = {}  # part name -> its number of rows; empty for a single pair
        self.lora_rows: torch.Tensor | None
        if rows is None and parts is None:
            self.lora_rows = None
        else:
            if parts is None:
                index = _row_index(rows, base.out_features)
            else:
                index = self._part_index(parts, base.out_features)
            self.register_buffer("lora_rows", index.to(w.device), persistent=False)  # not in the state dict
        self.base = freeze(base)
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        n_pairs = max(len(self.parts), 1)
        n_out = base.out_features if self.lora_rows is None else self.lora_rows.numel()
        self.lora_a = nn.Parameter(torch.empty(n_pairs * rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_b = nn.Parameter(torch.zeros(n_out, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # fan_in is in_features: as each A_p on its own
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def _part_index(self, parts: Mapping[str, Iterable[int] | torch.Tensor], out_features: int) -> torch.Tensor:
        """Record ``self.parts`` and return the parts' rows one after the other (each part's sorted)."""
        if not isinstance(parts, Mapping) or not parts:
            raise ValueError("parts must be a non-empty mapping of part name -> output rows")
        indices = []
        for name, part_rows in parts.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"part names must be non-empty strings, got {name!r}")
            try:
                indices.append(_row_index(part_rows, out_features))
            except ValueError as exc:
                raise ValueError(f"part {name!r}: {exc}") from None
            self.parts[name] = indices[-1].numel()
        index = torch.cat(indices)
        if index.unique().numel() != index.numel():
            raise ValueError("parts must not share rows")
        return index

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

    def pairs(self) -> dict[str | None, tuple[torch.Tensor, torch.Tensor]]:
        """Each part's ``(A_p, B_p)`` (views of ``lora_a`` and ``lora_b``); ``{None: (lora_a, lora_b)}`` without
        parts."""
        if not self.parts:
            return {None: (self.lora_a, self.lora_b)}
        a = self.lora_a.split(self.rank)
        b = self.lora_b.split(list(self.parts.values()))
        return {name: (a[i], b[i]) for i, name in enumerate(self.parts)}

    def _update(self) -> torch.Tensor:
        """The unscaled ``B A`` (per part, stacked like ``lora_b``)."""
        if not self.parts:
            return self.lora_b @ self.lora_a
        return torch.cat([b @ a for a, b in self.pairs().values()])

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / r) B A`` (the sum of the parts' updates), shaped like the base weight (zero outside the
        adapted rows)."""
        update = self._update() * self.scaling
        if self.lora_rows is None:
            return update
        return update.new_zeros(self.base.weight.shape).index_add(0, self.lora_rows, update)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        if not self.parts:
            low = F.linear(F.linear(self.lora_dropout(x), self.lora_a.to(x.dtype)), self.lora_b.to(x.dtype))
        else:  # each part as its own LoRA layer: its own dropout mask, A_p and B_p
            low = torch.cat(
                [
                    F.linear(F.linear(self.lora_dropout(x), a.to(x.dtype)), b.to(x.dtype))
                    for a, b in self.pairs().values()
                ],
                dim=-1,
            )
        if self.lora_rows is None:
            return out + low * self.scaling
        return out.index_add(-1, self.lora_rows, (low * self.scaling).to(out.dtype))

    @torch.no_grad()
    def _add_update(self, sign: float) -> None:
        update = (self._update() * (sign * self.scaling)).to(self.base.weight.dtype)
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
        if self.parts:
            rows = ", parts=" + ",".join(f"{name}:{n}" for name, n in self.parts.items())
        elif self.lora_rows is not None:
            rows = f", rows={self.lora_rows.numel()}/{self.out_features}"
        else:
            rows = ""
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


def qkv_parts(parts: Iterable[str], out_features: int) -> dict[str, list[int]] | None:
    """The output rows of a fused ``[q | k | v]`` projection of each of ``parts`` (``"q"``, ``"k"``, ``"v"``),
    in q, k, v order; ``None`` when all three are selected (the whole layer)."""
    names = sorted(set(parts), key=ROW_TARGETS.__getitem__)
    if len(names) == 3:
        return None
    if out_features % 3:
        raise ValueError(f"q/k/v targets need a fused qkv layer with 3 * dim outputs, got {out_features}")
    dim = out_features // 3
    return {p: list(range(ROW_TARGETS[p] * dim, (ROW_TARGETS[p] + 1) * dim)) for p in names}


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

    Row targets (``"q"``, ``"k"``, ``"v"``) on a layer become one wrapper with an independent pair per part.

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
                split = None if parts is None else qkv_parts(parts, layer.out_features)
                setattr(parent, leaf, LoRALinear(layer, rank=rank, alpha=alpha, dropout=dropout, parts=split))
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
            ``"q"``, ``"k"``, ``"v"`` (those rows of the fused qkv; several get one independent LoRA pair each,
            held by one LoRA layer; all three are ``"qkv"``).
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
