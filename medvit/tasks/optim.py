"""AdamW with layer-wise learning-rate decay and a warmup + cosine schedule, as RETFound fine-tunes.

Layer-wise decay (BEiT/MAE ``param_groups_lrd``): the patch embedding, position embedding and prefix tokens
are layer 0, block ``i`` is layer ``i + 1``, everything after the backbone (heads, decoders, adapters
outside the blocks) is layer ``depth + 1``; a parameter's LR is scaled by ``decay ** (depth + 1 - layer)``.
Biases, norms (every parameter with ``ndim <= 1``) and what a module names in its ``no_weight_decay()``
(timm's hook: the backbone's tokens and position embedding, a head's class or level embeddings) get no
weight decay.
"""

from __future__ import annotations

import math
import re
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

_BLOCK = re.compile(r"(?:^|\.)(?:backbone|encoder)\.blocks\.(\d+)\.")
_EMBED = re.compile(
    r"(?:^|\.)(?:backbone|encoder)\.(?:cls_token|reg_token|storage_tokens|mask_token|pos_embed|patch_embed)"
)


class OptimizerSpec(BaseModel):
    """The pipeline's ``optimizer:`` section.

    Attributes:
        name: ``adamw`` or ``sgd`` (momentum 0.9).
        lr: Peak learning rate (after warmup).
        weight_decay: Decoupled weight decay (not applied to biases, norms, tokens, embeddings).
        betas: AdamW betas.
        layer_decay: Layer-wise LR decay factor (RETFound: 0.65 for ViT-L), ``None`` for none.
        scheduler: ``cosine`` (to ``min_lr``), ``constant`` or ``exponential`` (``gamma`` per epoch).
        warmup_epochs: Linear warmup length in epochs (fractions allowed).
        min_lr: Final LR of the cosine schedule.
        gamma: Per-epoch factor of the exponential schedule (CellVTA: 0.85).
    """

    model_config = ConfigDict(extra="forbid")

    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float | None = Field(None, gt=0, le=1)
    scheduler: Literal["cosine", "constant", "exponential"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    min_lr: float = Field(1e-6, ge=0)
    gamma: float = Field(0.85, gt=0, le=1)


def layer_id(name: str, depth: int) -> int:
    """Layer index of a parameter for layer-wise decay (see module docstring)."""
    m = _BLOCK.search(name)
    if m:
        return int(m.group(1)) + 1
    if _EMBED.search(name):
        return 0
    return depth + 1


def _backbone_depth(model: nn.Module) -> int:
    for attr in ("backbone", "encoder"):
        bb = getattr(model, attr, None)
        if bb is not None and hasattr(bb, "blocks"):
            return len(bb.blocks)
    return 0


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Qualified names the submodules of ``model`` exempt from weight decay through ``no_weight_decay()``.

    A name a module gives is relative to it (``reg_token``) and covers that parameter or, for a submodule's
    name, every parameter under it; shared modules are visited under each of their names.
    """
    names: set[str] = set()
    for prefix, module in model.named_modules(remove_duplicate=False):
        hook = getattr(module, "no_weight_decay", None)
        if callable(hook):
            names.update(f"{prefix}.{n}" if prefix else n for n in hook())
    return names


def _exempt(name: str, names: set[str]) -> bool:
    return name in names or any(name.startswith(n + ".") for n in names)


def param_groups(model: nn.Module, spec: OptimizerSpec) -> list[dict]:
    """Parameter groups with per-group ``lr_scale`` and weight decay (trainable parameters only)."""
    depth = _backbone_depth(model)
    exempt = no_weight_decay_names(model)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(".bias") or _exempt(name, exempt)
        layer = layer_id(name, depth) if spec.layer_decay is not None else depth + 1
        scale = spec.layer_decay ** (depth + 1 - layer) if spec.layer_decay is not None else 1.0
        key = (layer, no_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "weight_decay": 0.0 if no_decay else spec.weight_decay,
                "lr_scale": scale,
                "lr": spec.lr * scale,
            }
        groups[key]["params"].append(p)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return list(groups.values())


def build_optimizer(model: nn.Module, spec: OptimizerSpec) -> torch.optim.Optimizer:
    groups = param_groups(model, spec)
    if spec.name == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=spec.lr, betas=spec.betas)


def lr_factor(step: int, *, spec: OptimizerSpec, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of the peak LR at optimiser ``step`` (0-based)."""
    warmup = int(round(spec.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if spec.scheduler == "constant":
        return 1.0
    if spec.scheduler == "exponential":
        return spec.gamma ** ((step - warmup) // max(steps_per_epoch, 1))
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    floor = spec.min_lr / spec.lr
    return floor + (1 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, spec: OptimizerSpec, *, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` following :func:`lr_factor` (group ``lr_scale`` is kept by the base LRs)."""
    fn = lambda step: lr_factor(step, spec=spec, total_steps=total_steps, steps_per_epoch=steps_per_epoch)  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
