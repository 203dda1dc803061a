"""What every medvit task shares: the model built from its spec, the optimiser and the schedule.

Tasks know nothing of files: batches arrive as the data module's dicts (``image`` plus targets).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from medvit.models import ModelSpec, build_model
from medvit.tasks.optim import OptimizerSpec, build_optimizer, build_scheduler


class MedvitTask(L.LightningModule):
    """Base LightningModule: ``self.model`` from a :class:`ModelSpec`, AdamW + layer decay + warmup-cosine.

    Args:
        model: The ``model:`` spec (plain data).
        optimizer: The ``optimizer:`` spec (plain data).
        labels: Output index -> name.
        inference: Validation inference settings (``roi_size``, ``overlap``, ``sw_batch_size``) or ``None``.
        load_weights: Load the backbone's pretrained weights when building (off when restoring).
    """

    def __init__(
        self,
        model: dict[str, Any],
        optimizer: dict[str, Any],
        *,
        labels: dict[int, str],
        inference: dict[str, Any] | None = None,
        load_weights: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["load_weights"], logger=False)  # MLflow gets the resolved config
        self.model_spec = ModelSpec.model_validate(model)
        self.optimizer_spec = OptimizerSpec.model_validate(optimizer)
        self.labels = {int(k): str(v) for k, v in labels.items()}
        self.inference = dict(inference or {})
        self.model = build_model(self.model_spec, load_weights=load_weights)

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(x)

    def configure_optimizers(self) -> dict[str, Any]:
        opt = build_optimizer(self.model, self.optimizer_spec)
        trainer = self.trainer
        total = max(1, int(trainer.estimated_stepping_batches))
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
        per_epoch = max(1, total // epochs)
        sched = build_scheduler(opt, self.optimizer_spec, total_steps=total, steps_per_epoch=per_epoch)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def log_metrics(
        self, metrics: dict[str, float | torch.Tensor], *, batch_size: int, on_step: bool = False
    ) -> None:
        self.log_dict(
            metrics, on_step=on_step, on_epoch=True, batch_size=batch_size, sync_dist=True, prog_bar=False
        )
