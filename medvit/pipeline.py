"""The pipeline schema: what a ``pipelines/*.yaml`` file may say, validated before anything runs.

Sections: ``data`` (a data card and its root), ``transforms`` (a preset), ``model`` (backbone, adapter,
head), ``task``, ``optimizer``, ``trainer``, ``inference``, ``tracking`` (MLflow) and ``output``. Unknown
keys and wrong types are errors naming the key and the file; objects are chosen by registered names only.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from medvit.config import compose_pipeline
from medvit.errors import ConfigError, validation_line
from medvit.models.spec import AdapterSpec, BackboneSpec, HeadSpec, ModelSpec
from medvit.tasks import KINDS, TaskSection, get_kind
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
    monitor_mode: Literal["max", "min"] | None = None  # default: the task kind's
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
    task: TaskSection  # narrowed to the union of the registered kinds' sections by pipeline_schema()
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    trainer: TrainerSection = Field(default_factory=TrainerSection)
    inference: InferenceSection = Field(default_factory=InferenceSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    output: OutputSection = Field(default_factory=OutputSection)

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        get_kind(self.task.kind).check_head(self.model.head.name)
        return self

    def model_spec(self, num_classes: int) -> ModelSpec:
        data = self.model.model_dump()
        data["num_classes"] = self.model.num_classes or num_classes
        return ModelSpec.model_validate(data)

    @property
    def kind(self):
        """The :class:`~medvit.tasks.TaskKind` of ``task.kind``."""
        return get_kind(self.task.kind)

    def monitor(self) -> str:
        return self.trainer.monitor or self.kind.monitor

    def monitor_mode(self) -> str:
        return self.trainer.monitor_mode or self.kind.monitor_mode


@lru_cache(maxsize=8)
def _schema(kinds: tuple[str, ...]) -> type[PipelineConfig]:
    sections = tuple(KINDS[k].section for k in kinds)
    task = sections[0] if len(sections) == 1 else Annotated[Union[sections], Field(discriminator="kind")]  # noqa: UP007
    return create_model("PipelineConfig", __base__=PipelineConfig, task=(task, ...))


def pipeline_schema() -> type[PipelineConfig]:
    """:class:`PipelineConfig` with ``task`` validated as the section of its kind (a discriminated union
    over the registered kinds)."""
    return _schema(tuple(KINDS))


def _bad_kind(e: dict) -> str:
    return f"unknown task kind {e.get('ctx', {}).get('tag')!r} (known: {', '.join(KINDS)})"


def _no_kind(e: dict) -> str:
    return f"missing 'kind' (one of {', '.join(KINDS)})"


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> tuple[PipelineConfig, dict[str, Any]]:
    """Compose and validate a pipeline; returns the schema object and the resolved plain data
    (defaults filled in), which is what the run folder and MLflow record."""
    merged, source = compose_pipeline(path, overrides)
    try:
        cfg = pipeline_schema().model_validate(merged)
    except ValidationError as err:
        messages = {"union_tag_invalid": _bad_kind, "union_tag_not_found": _no_kind}
        raise ConfigError(validation_line(err, source, messages=messages, tags=KINDS)) from None
    return cfg, cfg.model_dump(mode="json")
