"""``build_model(spec)``: backbone, adapter and head from a :class:`ModelSpec`, by registered name."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from medvit.backbones import create_backbone
from medvit.errors import ConfigError, MedvitError, one_line
from medvit.models.spec import ModelSpec

# registered name -> (module, attribute); imported only when a spec names it
ADAPTERS: dict[str, tuple[str, str]] = {
    "lora": ("medvit.adapters", "apply_lora"),
    "adaptertune": ("medvit.adapters", "apply_adaptertune"),
    "explora": ("medvit.adapters", "apply_explora"),
}
HEADS: dict[str, tuple[str, str]] = {
    "linear": ("medvit.heads", "LinearClassifier"),
    "linear_seg": ("medvit.heads", "LinearSegProbe"),
    "unetr": ("medvit.heads", "UNETR"),
    "funduseg": ("medvit.heads", "FunduSegmenter"),
    "cellvta": ("medvit.heads", "CellVTA"),
    "mae": ("medvit.ssl.mae", "MaskedAutoencoder"),
    "dino": ("medvit.ssl.student", "DINOStudent"),
}
# each head's small variant, for smoke runs (``medvit run --smoke``): a few MB instead of hundreds
TINY_HEAD_OPTIONS: dict[str, dict[str, Any]] = {
    "unetr": {"feature_size": 8},
    "funduseg": {"adapter_dim": 16},
    "cellvta": {"spm_width": 16, "decoder_width": 16},
    "mae": {"decoder_dim": 48, "decoder_depth": 1, "decoder_heads": 2},
    "dino": {"prototypes": 64, "hidden_dim": 32, "bottleneck_dim": 16},
}
_POSITIONAL = {"backbone", "num_classes", "out_channels", "num_types", "self"}


def _resolve(kind: str, name: str, options: dict[str, Any]) -> Callable[..., nn.Module]:
    """The factory registered as ``name``, after checking ``options`` against its keyword arguments."""
    module, attr = (ADAPTERS if kind == "adapter" else HEADS)[name]
    target = getattr(importlib.import_module(module), attr)
    allowed = {k for k in inspect.signature(target).parameters if k not in _POSITIONAL}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(
            f"model.{kind}.options: unknown option(s) {', '.join(unknown)} for {name} "
            f"(known: {', '.join(sorted(allowed))})"
        )
    return target


def build_model(spec: ModelSpec | dict[str, Any], *, load_weights: bool = True) -> nn.Module:
    """Build the model a spec describes.

    Args:
        spec: A :class:`ModelSpec` or its plain-data form.
        load_weights: Load the backbone's pretrained ``weights`` (off when a package's own weights follow).

    Raises:
        ConfigError: Unknown names or options, or options the parts reject (one line naming the part).
        CheckpointError: Pretrained weights missing, unsafe or not matching the backbone.
    """
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.model_validate(spec)
    bb = spec.backbone
    weights = bb.weights if load_weights else None
    img_size = tuple(bb.img_size) if bb.img_size else None
    backbone = create_backbone(
        bb.name, weights=weights, img_size=img_size, trust_pickle=bb.trust_pickle, **bb.options
    )
    if spec.adapter.name != "none":
        apply = _resolve("adapter", spec.adapter.name, spec.adapter.options)
        try:
            backbone = apply(backbone, **spec.adapter.options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model.adapter ({spec.adapter.name}): {one_line(exc)}") from exc
    head = _resolve("head", spec.head.name, spec.head.options)
    try:
        model = head(backbone, spec.num_classes, **spec.head.options)  # classes, or nuclei types for CellVTA
    except MedvitError:
        raise  # a weights file that does not fit names its file itself
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.head ({spec.head.name}): {one_line(exc)}") from exc
    report = getattr(backbone, "load_report", None)
    if report is not None:
        report.dropped_state = {}  # what the file held beside the backbone, for heads that use it (MAE decoder)
    return model
