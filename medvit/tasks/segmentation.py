"""The ``segmentation`` task kind: Semantic segmentation, 2D and 3D. Its LightningModule is
:class:`medvit.tasks.modules.segmentation.SegmentationTask`."""

from __future__ import annotations

from typing import Literal

from medvit.tasks.kinds import TaskKind, TaskSection


class SegmentationSection(TaskSection):
    """``task:`` of a segmentation pipeline; ``hd95`` computes HD95 in validation too (always in test)."""

    kind: Literal["segmentation"]
    hd95: bool = True


KIND = TaskKind(
    name="segmentation",
    section=SegmentationSection,
    module="medvit.tasks.modules.segmentation:SegmentationTask",
    heads=("unetr", "linear_seg", "funduseg"),
    card_tasks=("segmentation",),
    monitor="val/dice",
    smoke_cards={2: "synthetic_fundus", 3: "synthetic_ct"},
    prediction="mask",
    default_outputs={2: ("png",), 3: ("nifti",)},
    outputs=("nifti", "dicom-seg", "rtstruct", "png", "preview", "json"),
    flip_tta=True,
)
