"""The ``mae`` task kind: masked-autoencoder pre-training continued on unlabelled images, 2D or 3D (RETFound,
Hi-End-MAE, any medvit ViT). Its LightningModule is :class:`medvit.tasks.modules.mae.MAETask`; the model is
the backbone with the ``mae`` head (:class:`medvit.ssl.mae.MaskedAutoencoder`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from medvit.tasks.kinds import TaskKind, TaskSection
from medvit.tasks.pretraining import PRETRAINING, ProbeSection


class MAESection(TaskSection):
    """``task:`` of an MAE pipeline.

    Attributes:
        mask_ratio: Fraction of patches hidden from the encoder (MAE and RETFound: 0.75; RETFound reports
            0.85 best for OCT).
        norm_pix_loss: Loss on per-patch normalised pixels (MAE's recommended target; RETFound uses it).
        image_every_n_epochs: Log originals / masked inputs / reconstructions to MLflow every N validations
            (0: never; 3D shows the middle slice).
        probe: A k-NN probe on a labelled card (see :class:`~medvit.tasks.pretraining.ProbeSection`).
    """

    kind: Literal["mae"]
    mask_ratio: float = Field(0.75, ge=0.0, lt=1.0)
    norm_pix_loss: bool = True
    image_every_n_epochs: int = Field(1, ge=0)
    probe: ProbeSection | None = None


KIND = TaskKind(
    name="mae",
    section=MAESection,
    module="medvit.tasks.modules.mae:MAETask",
    heads=("mae",),
    smoke_cards={2: "synthetic_fundus", 3: "synthetic_ct"},
    **PRETRAINING,
)
