"""The ``classification`` task kind: Image classification (multi-class and multi-label). Its LightningModule is
:class:`medvit.tasks.modules.classification.ClassificationTask`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from medvit.tasks.kinds import TaskKind, TaskSection


class ClassificationSection(TaskSection):
    """``task:`` of a classification pipeline: ``multi_label`` (sigmoid per label) and ``label_smoothing``."""

    kind: Literal["classification"]
    multi_label: bool = False
    label_smoothing: float = Field(0.0, ge=0, lt=1)


KIND = TaskKind(
    name="classification",
    section=ClassificationSection,
    module="medvit.tasks.modules.classification:ClassificationTask",
    heads=("linear",),
    card_tasks=("classification", "multilabel"),
    monitor="val/auroc",
    smoke_cards={2: "synthetic_cls"},
    prediction="probabilities",
    default_outputs={2: ("json",), 3: ("json",)},
    outputs=("json",),
    package_fields=lambda section: {"multi_label": section.multi_label},
)
