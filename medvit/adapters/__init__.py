"""Adapters that wrap a frozen (or lightly tuned) backbone without forking it: LoRA, ExPLoRA and AdapterTune.
Every adapter reports ``count_parameters(module) -> (trainable, total)`` (from :mod:`medvit.layers.params`,
re-exported here). FunduSegmenter and CellVTA are heads: :mod:`medvit.heads`."""

from medvit.adapters.adaptertune import apply_adaptertune, remove_adaptertune
from medvit.adapters.explora import apply_explora
from medvit.adapters.lora import (
    LoRALinear,
    apply_lora,
    mark_only_lora_as_trainable,
    merge_lora,
    remove_lora,
    unmerge_lora,
)
from medvit.layers.params import count_parameters, freeze, parameter_report, unfreeze

__all__ = [
    "LoRALinear",
    "apply_adaptertune",
    "apply_explora",
    "apply_lora",
    "count_parameters",
    "freeze",
    "mark_only_lora_as_trainable",
    "merge_lora",
    "parameter_report",
    "remove_adaptertune",
    "remove_lora",
    "unfreeze",
    "unmerge_lora",
]
