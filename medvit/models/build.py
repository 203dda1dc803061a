"""``build_model(spec)``: backbone, adapter and head from a :class:`ModelSpec`, by registered name."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from medvit.errors import ConfigError, one_line
from medvit.models.spec import ModelSpec


def _lora(backbone: nn.Module, **options: Any) -> nn.Module:
    from medvit.adapters import apply_lora

    return apply_lora(backbone, **options)


def _adaptertune(backbone: nn.Module, **options: Any) -> nn.Module:
    from medvit.adapters import apply_adaptertune

    return apply_adaptertune(backbone, **options)


ADAPTERS: dict[str, Callable[..., nn.Module]] = {"lora": _lora, "adaptertune": _adaptertune}


def _linear(backbone: nn.Module, num_classes: int, **options: Any) -> nn.Module:
    from medvit.heads import LinearClassifier

    return LinearClassifier(backbone, num_classes, **options)


def _linear_seg(backbone: nn.Module, num_classes: int, **options: Any) -> nn.Module:
    from medvit.heads import LinearSegProbe

    return LinearSegProbe(backbone, num_classes, **options)


def _unetr(backbone: nn.Module, num_classes: int, **options: Any) -> nn.Module:
    from medvit.heads import UNETR

    return UNETR(backbone, num_classes, **options)


def _funduseg(backbone: nn.Module, num_classes: int, **options: Any) -> nn.Module:
    from medvit.adapters import FunduSegmenter

    return FunduSegmenter(backbone, num_classes, **options)


def _cellvta(backbone: nn.Module, num_classes: int, **options: Any) -> nn.Module:
    from medvit.adapters import CellVTA

    return CellVTA(backbone, num_types=num_classes, **options)


HEADS: dict[str, Callable[..., nn.Module]] = {
    "linear": _linear,
    "linear_seg": _linear_seg,
    "unetr": _unetr,
    "funduseg": _funduseg,
    "cellvta": _cellvta,
}

# the classes whose keyword options each name accepts (checked before building, to name the bad key)
_TARGETS = {
    "lora": ("medvit.adapters", "apply_lora"),
    "adaptertune": ("medvit.adapters", "apply_adaptertune"),
    "linear": ("medvit.heads", "LinearClassifier"),
    "linear_seg": ("medvit.heads", "LinearSegProbe"),
    "unetr": ("medvit.heads", "UNETR"),
    "funduseg": ("medvit.adapters", "FunduSegmenter"),
    "cellvta": ("medvit.adapters", "CellVTA"),
}
_POSITIONAL = {"backbone", "num_classes", "out_channels", "num_types", "self"}


def _check_options(kind: str, name: str, options: dict[str, Any]) -> None:
    import importlib

    module, attr = _TARGETS[name]
    target = getattr(importlib.import_module(module), attr)
    params = inspect.signature(target).parameters
    allowed = {k for k in params if k not in _POSITIONAL}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(
            f"model.{kind}.options: unknown option(s) {', '.join(unknown)} for {name} "
            f"(known: {', '.join(sorted(allowed))})"
        )


def build_model(spec: ModelSpec | dict[str, Any], *, load_weights: bool = True) -> nn.Module:
    """Build the model a spec describes.

    Args:
        spec: A :class:`ModelSpec` or its plain-data form.
        load_weights: Load the backbone's pretrained ``weights`` (off when a package's own weights follow).

    Raises:
        ConfigError: Unknown names or options, or options the parts reject (one line naming the part).
        CheckpointError: Pretrained weights missing, unsafe or not matching the backbone.
    """
    from medvit.backbones import create_backbone

    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.model_validate(spec)
    bb = spec.backbone
    weights = bb.weights if load_weights else None
    img_size = tuple(bb.img_size) if bb.img_size else None
    backbone = create_backbone(
        bb.name, weights=weights, img_size=img_size, trust_pickle=bb.trust_pickle, **bb.options
    )
    if spec.adapter.name != "none":
        _check_options("adapter", spec.adapter.name, spec.adapter.options)
        try:
            backbone = ADAPTERS[spec.adapter.name](backbone, **spec.adapter.options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model.adapter ({spec.adapter.name}): {one_line(exc)}") from exc
    _check_options("head", spec.head.name, spec.head.options)
    try:
        return HEADS[spec.head.name](backbone, spec.num_classes, **spec.head.options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.head ({spec.head.name}): {one_line(exc)}") from exc
