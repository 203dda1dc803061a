"""The ``cells`` task kind: Nuclei instance segmentation and typing (CellVTA). Its LightningModule is
:class:`medvit.tasks.modules.cells.CellTask`."""

from __future__ import annotations

from typing import Literal

from medvit.tasks.kinds import TaskKind, TaskSection


class CellsSection(TaskSection):
    """``task:`` of a nuclei pipeline: ``loss_weights`` override CellVTA's recipe weights by name
    (:data:`medvit.tasks.modules.cells.DEFAULT_WEIGHTS`)."""

    kind: Literal["cells"]
    loss_weights: dict[str, float] | None = None


KIND = TaskKind(
    name="cells",
    section=CellsSection,
    module="medvit.tasks.modules.cells:CellTask",
    heads=("cellvta",),
    card_tasks=("instance",),
    monitor="val/mpq",
    smoke_cards={2: "synthetic_cells"},
    prediction="cells",  # nuclei over slides, regions and tiles: medvit.inference.slides
    default_outputs={2: ("geojson", "csv")},  # plus instances and types for tiles and --roi regions
    outputs=("geojson", "csv", "instances", "types", "json"),
    labels_are_outputs=False,  # labels name nuclei types; the head has its own branches
)
