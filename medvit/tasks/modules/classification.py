"""Image classification (multi-class and multi-label): cross-entropy or BCE, AUROC and accuracy."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MultilabelAccuracy,
    MultilabelAUROC,
)

from medvit.tasks.modules.base import MedvitTask


class ClassificationTask(MedvitTask):
    """Classification on a ``linear`` head. Logs ``{stage}/loss``, ``{stage}/auroc`` (macro) and ``{stage}/acc``.

    Args:
        multi_label: Independent sigmoid per label (BCE) instead of softmax (CE).
        label_smoothing: Cross-entropy label smoothing (RETFound: 0.1).
        **kwargs: See :class:`~medvit.tasks.base.MedvitTask`.
    """

    def __init__(self, *args: Any, multi_label: bool = False, label_smoothing: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.multi_label = multi_label
        k = self.model_spec.num_classes
        if multi_label:
            self.criterion: nn.Module = nn.BCEWithLogitsLoss()
            metrics = {"auroc": MultilabelAUROC(k), "acc": MultilabelAccuracy(k)}
        else:
            self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
            metrics = {"auroc": MulticlassAUROC(k), "acc": MulticlassAccuracy(k, average="micro")}
        self.val_metrics = MetricCollection(metrics, prefix="val/")
        self.test_metrics = self.val_metrics.clone(prefix="test/")

    def _targets(self, batch: dict) -> torch.Tensor:
        y = torch.as_tensor(batch["label"], device=self.device)
        return y.float() if self.multi_label else y.long().view(-1)

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.multi_label else logits.softmax(1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self.model(batch["image"])
        loss = self.criterion(logits, self._targets(batch))
        self.log_metrics({"train/loss": loss}, batch_size=logits.shape[0], on_step=True)
        return loss

    def _eval_step(self, batch: dict, metrics: MetricCollection, stage: str) -> None:
        logits = self.model(batch["image"]).float()
        y = self._targets(batch)
        loss = self.criterion(logits, y)
        metrics.update(self._probs(logits), y.long())
        self.log_metrics({f"{stage}/loss": loss}, batch_size=logits.shape[0])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), sync_dist=True)
        self.val_metrics.reset()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute(), sync_dist=True)
        self.test_metrics.reset()
