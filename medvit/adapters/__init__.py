"""Adapters that wrap a frozen (or lightly tuned) backbone without forking it: LoRA, AdapterTune,
FunduSegmenter and CellVTA. Every adapter reports ``count_parameters(module) -> (trainable, total)``."""

from medvit.adapters.adaptertune import apply_adaptertune, remove_adaptertune
from medvit.adapters.cellvta import CellVTA
from medvit.adapters.common import count_parameters, freeze, parameter_report, unfreeze
from medvit.adapters.funduseg import FunduSegmenter
from medvit.adapters.lora import (
    LoRALinear,
    apply_lora,
    mark_only_lora_as_trainable,
    merge_lora,
    remove_lora,
    unmerge_lora,
)

__all__ = [
    "CellVTA",
    "FunduSegmenter",
    "LoRALinear",
    "apply_adaptertune",
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
