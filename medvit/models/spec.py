"""The ``model:`` section: backbone, adapter and head by registered name, with their options."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class BackboneSpec(_Strict):
    """A registered backbone (``medvit backbones``) and where its pretrained weights are.

    ``weights`` is a local file or folder (``${ENV_VAR}`` allowed in pipelines), ``true`` to look the
    official file name up in ``MEDVIT_WEIGHTS_DIR``, or ``null`` for random init. ``options`` are
    :class:`~medvit.backbones.VisionTransformer` options (``drop_path_rate``, ``grad_checkpointing``, dims
    of tiny demo models, ...).
    """

    name: str
    weights: str | bool | None = None
    img_size: list[int] | None = None
    trust_pickle: bool = False
    options: dict[str, Any] = Field(default_factory=dict)


class AdapterSpec(_Strict):
    """Parameter-efficient adapter injected into the backbone: ``none``, ``lora``, ``adaptertune`` or
    ``explora`` (ExPLoRA: last blocks and norms trained, LoRA on q/v elsewhere; for extended pre-training)."""

    name: Literal["none", "lora", "adaptertune", "explora"] = "none"
    options: dict[str, Any] = Field(default_factory=dict)


class HeadSpec(_Strict):
    """What sits on the backbone: ``linear`` (classification), ``linear_seg`` (DINOv3 linear segmentation
    probe), ``unetr`` (2D/3D segmentation), ``funduseg`` (FunduSegmenter), ``cellvta`` (CellVTA), or the
    self-supervised ``mae`` (MAE decoder) and ``dino`` (DINO/iBOT heads)."""

    name: Literal["linear", "linear_seg", "unetr", "funduseg", "cellvta", "mae", "dino"]
    options: dict[str, Any] = Field(default_factory=dict)


class ModelSpec(_Strict):
    """Backbone + adapter + head; ``num_classes`` counts background for segmentation and is the number of
    nuclei types (background included) for ``cellvta``."""

    backbone: BackboneSpec
    adapter: AdapterSpec = Field(default_factory=AdapterSpec)
    head: HeadSpec
    num_classes: int = Field(ge=0)  # 0: no labels (self-supervised pre-training)
