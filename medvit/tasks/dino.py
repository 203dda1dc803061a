"""The ``dino`` task kind: DINO + iBOT self-distillation continued on unlabelled images (DINOv3, DINOv2 and
RETFound's DINOv2 variant, any medvit ViT). Its LightningModule is :class:`medvit.tasks.modules.dino.DINOTask`;
the model is the backbone with the ``dino`` head (:class:`medvit.ssl.student.DINOStudent`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from medvit.tasks.kinds import TaskKind, TaskSection
from medvit.tasks.pretraining import PRETRAINING, ProbeSection


class DINOSection(TaskSection):
    """``task:`` of a DINO pipeline; defaults are DINOv2's recipe (Oquab et al., TMLR 2024).

    Attributes:
        local_crops: Local crops per image (DINOv2: 8).
        local_crop_size: Local crop side in pixels; default 96/224 of the input side, a multiple of the patch.
        global_crop_scale: Area fraction range of the two global crops (DINOv2: 0.32-1).
        local_crop_scale: Area fraction range of the local crops (DINOv2: 0.05-0.32).
        student_temp: Student softmax temperature (0.1).
        teacher_temp: Teacher temperature after warm-up (0.07).
        warmup_teacher_temp: Teacher temperature at the start (0.04).
        warmup_teacher_temp_epochs: Epochs of the linear teacher-temperature warm-up (DINOv2: 30).
        momentum_teacher: EMA momentum at the start, rising to 1 on a cosine (0.992).
        center_momentum: EMA of the teacher-output centres (0.9).
        ibot_weight: Weight of the iBOT loss on masked patch tokens (1; 0 turns iBOT off).
        mask_ratio: Range of the per-image fraction of masked patches (0.1-0.5).
        mask_probability: Fraction of images masked for iBOT (0.5).
        koleo_weight: Weight of the KoLeo regulariser on the student's class tokens (DINOv2: 0.1; 0: off).
        probe: A k-NN probe on a labelled card.
    """

    kind: Literal["dino"]
    local_crops: int = Field(8, ge=0)
    local_crop_size: int | None = Field(None, ge=8)
    global_crop_scale: tuple[float, float] = (0.32, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.32)
    student_temp: float = Field(0.1, gt=0)
    teacher_temp: float = Field(0.07, gt=0)
    warmup_teacher_temp: float = Field(0.04, gt=0)
    warmup_teacher_temp_epochs: float = Field(30, ge=0)
    momentum_teacher: float = Field(0.992, ge=0, le=1)
    center_momentum: float = Field(0.9, ge=0, lt=1)
    ibot_weight: float = Field(1.0, ge=0)
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    mask_probability: float = Field(0.5, ge=0, le=1)
    koleo_weight: float = Field(0.0, ge=0)
    probe: ProbeSection | None = None

    @model_validator(mode="after")
    def _ranges(self) -> DINOSection:
        for name in ("global_crop_scale", "local_crop_scale", "mask_ratio"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name}: expected 0 < low <= high <= 1, got [{lo}, {hi}]")
        return self


KIND = TaskKind(
    name="dino",
    section=DINOSection,
    module="medvit.tasks.modules.dino:DINOTask",
    heads=("dino",),
    smoke_cards={2: "synthetic_cls", 3: "synthetic_ct"},
    **PRETRAINING,
)
