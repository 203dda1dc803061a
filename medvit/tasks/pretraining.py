"""What the self-supervised task kinds (``mae``, ``dino``) share: the ``probe:`` section and the kind fields
that make a run read unlabelled images and leave an adapted backbone."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from medvit.transforms.presets import CARD_TASKS


class ProbeSection(BaseModel):
    """``task.probe``: a labelled classification card on which a weighted k-NN classifier over the frozen
    backbone's features measures the representation (DINO's protocol), before training and every
    ``every_n_epochs`` validations. ``root`` is the card's folder (``null`` for synthetic cards). ``pool``: the
    feature, the mean patch token (``avg``, MAE's default: MAE trains no class token objective) or the class
    token (``token``, DINO's default)."""

    model_config = ConfigDict(extra="forbid")

    card: str
    root: str | None = None
    every_n_epochs: int = Field(1, ge=1)
    k: int = Field(20, ge=1)
    temperature: float = Field(0.07, gt=0)
    batch_size: int = Field(32, ge=1)
    limit_cases: int | None = Field(None, ge=1)
    pool: Literal["avg", "token"] | None = None


def module_options(cfg: Any) -> dict[str, Any]:
    """The pipeline's ``transforms:`` (the probe reads its card through them, without augmentation)."""
    return {"transforms": cfg.transforms.model_dump(mode="json")}


# the fields every self-supervised kind sets on its TaskKind
PRETRAINING = dict(
    card_tasks=(*CARD_TASKS,),  # any card: its labels are not read
    monitor="val/loss",
    monitor_mode="min",
    prediction=None,
    default_outputs={},
    outputs=(),
    labels_are_outputs=False,
    labelled=False,
    artifact="backbone",
    module_options=module_options,
)
