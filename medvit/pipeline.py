"""The pipeline schema: what a ``pipelines/*.yaml`` file may say, validated before anything runs.

Sections: ``data`` (a data card and its root), ``transforms`` (a preset), ``model`` (backbone, adapter,
head), ``task``, ``optimizer``, ``trainer``, ``inference``, ``tracking`` (MLflow) and ``output``. Unknown
keys and wrong types are errors naming the key and the file; objects are chosen by registered names only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medvit.config import compose_pipeline
from medvit.errors import ConfigError, validation_line
from medvit.models.spec import AdapterSpec, BackboneSpec, HeadSpec, ModelSpec
from medvit.tasks.optim import OptimizerSpec
from medvit.transforms.presets import TransformsSpec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSection(_Strict):
    """A data card (name or path) and the folder its files are in (``null`` for synthetic sets)."""

    card: str
    root: str | None = None
    batch_size: int = Field(2, ge=1)
    val_batch_size: int = Field(1, ge=1)
    num_workers: int = Field(0, ge=0)
    cache: bool = False
    limit_cases: int | None = Field(None, ge=1)


class ModelSection(_Strict):
    """Like :class:`~medvit.models.ModelSpec`; ``num_classes`` defaults to the card's label count."""

    backbone: BackboneSpec
    adapter: AdapterSpec = Field(default_factory=AdapterSpec)
    head: HeadSpec
    num_classes: int | None = Field(None, ge=1)


class TaskSection(_Strict):
    kind: Literal["classification", "segmentation", "cells"]
    multi_label: bool = False
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    hd95: bool = True
    loss_weights: dict[str, float] | None = None


class InferenceSection(_Strict):
    """Validation and packaged inference settings; ``roi_size`` defaults to ``transforms.patch_size``."""

    mode: Literal["sliding_window", "whole"] | None = None
    roi_size: list[int] | None = None
    overlap: float = Field(0.5, ge=0.0, lt=1.0)
    sw_batch_size: int = Field(2, ge=1)
    blend: Literal["gaussian", "constant"] = "gaussian"
    tta_axes: list[int] | None = None


class TrainerSection(_Strict):
    """Lightning ``Trainer`` options (a chosen subset) plus the seed, progress display and best-model metric.

    ``precision: auto`` is ``bf16-mixed`` on a CUDA device that supports it (else ``16-mixed``) and
    ``32-true`` on CPU.
    """

    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    num_nodes: int = Field(1, ge=1)
    strategy: Literal["auto", "ddp", "ddp_spawn", "fsdp", "ddp_find_unused_parameters_true"] = "auto"
    precision: Literal["auto", "32", "32-true", "bf16-mixed", "16-mixed", "bf16-true"] = "auto"

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v

    max_epochs: int = Field(10, ge=1)
    max_steps: int = -1
    accumulate_grad_batches: int = Field(1, ge=1)
    gradient_clip_val: float | None = None
    check_val_every_n_epoch: int = Field(1, ge=1)
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    limit_test_batches: int | float | None = None
    fast_dev_run: bool | int = False
    log_every_n_steps: int = Field(10, ge=1)
    deterministic: bool = False
    seed: int = 0
    progress: Literal["rich", "tqdm", "none"] = "rich"
    monitor: str | None = None
    monitor_mode: Literal["max", "min"] = "max"
    test: bool = True


class TrackingSection(_Strict):
    """MLflow: ``tracking_uri`` defaults to ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlruns.db`` in the working
    folder. ``register_as`` registers the model package at the end of the run (optional ``alias``)."""

    enabled: bool = True
    tracking_uri: str | None = None
    experiment: str = "medvit"
    run_name: str | None = None
    register_as: str | None = None
    alias: str | None = None


class OutputSection(_Strict):
    dir: str = "runs"


class PipelineConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    defaults: list[str] = Field(default_factory=list)
    data: DataSection
    transforms: TransformsSpec
    model: ModelSection
    task: TaskSection
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    trainer: TrainerSection = Field(default_factory=TrainerSection)
    inference: InferenceSection = Field(default_factory=InferenceSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    output: OutputSection = Field(default_factory=OutputSection)

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        if self.task.kind == "cells" and self.model.head.name != "cellvta":
            raise ValueError("task.kind 'cells' needs model.head.name 'cellvta'")
        if self.task.kind == "classification" and self.model.head.name != "linear":
            raise ValueError("task.kind 'classification' needs model.head.name 'linear'")
        if self.task.kind == "segmentation" and self.model.head.name in ("linear", "cellvta"):
            raise ValueError(f"model.head.name {self.model.head.name!r} does not segment")
        return self

    def model_spec(self, num_classes: int) -> ModelSpec:
        data = self.model.model_dump()
        data["num_classes"] = self.model.num_classes or num_classes
        return ModelSpec.model_validate(data)

    def monitor(self) -> str:
        default = {"segmentation": "val/dice", "classification": "val/auroc", "cells": "val/mpq"}
        return self.trainer.monitor or default[self.task.kind]


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> tuple[PipelineConfig, dict[str, Any]]:
    """Compose and validate a pipeline; returns the schema object and the resolved plain data
    (defaults filled in), which is what the run folder and MLflow record."""
    merged, source = compose_pipeline(path, overrides)
    try:
        cfg = PipelineConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(validation_line(err, source)) from None
    return cfg, cfg.model_dump(mode="json")
