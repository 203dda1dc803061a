"""Semantic segmentation, 2D and 3D: Dice + cross-entropy loss, Dice and HD95 (MONAI); 3D validation by
Gaussian-blended sliding window over whole volumes."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.networks.utils import one_hot

from medvit.tasks.modules.base import MedvitTask


class SegmentationTask(MedvitTask):
    """Segmentation with any segmentation head (``unetr``, ``linear_seg``, ``funduseg``).

    Logs ``{stage}/loss``, ``{stage}/dice`` (mean over foreground classes), ``{stage}/dice_<label>`` and
    ``{stage}/hd95`` (voxels of the preprocessed grid).

    Args:
        hd95: Compute HD95 in validation (always in test).
        **kwargs: See :class:`~medvit.tasks.base.MedvitTask`; ``inference`` with ``roi_size`` turns on
            sliding-window evaluation.
    """

    def __init__(self, *args: Any, hd95: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.num_classes = self.model_spec.num_classes
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, include_background=True)
        self.with_hd95 = hd95
        self._dice = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
        self._hd95 = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="mean_batch")

    def infer(self, image: torch.Tensor) -> torch.Tensor:
        """Logits for a whole image: sliding window when ``inference.roi_size`` is set, else one pass."""
        roi = self.inference.get("roi_size")
        if roi and any(s > r for s, r in zip(image.shape[2:], roi, strict=True)):
            return sliding_window_inference(
                image,
                roi_size=list(roi),
                sw_batch_size=int(self.inference.get("sw_batch_size", 2)),
                predictor=self.model,
                overlap=float(self.inference.get("overlap", 0.5)),
                mode=str(self.inference.get("blend", "gaussian")),
                padding_mode="constant",
            )
        return self.model(image)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        image, label = batch["image"], batch["label"]
        logits = self.model(image)
        loss = self.loss(logits.float(), label.long())
        self.log_metrics({"train/loss": loss}, batch_size=image.shape[0], on_step=True)
        return loss

    def _eval_step(self, batch: dict, stage: str, hd95: bool) -> None:
        image, label = batch["image"], batch["label"].long()
        logits = self.infer(image).float()
        self.log_metrics({f"{stage}/loss": self.loss(logits, label)}, batch_size=image.shape[0])
        pred = one_hot(logits.argmax(1, keepdim=True), self.num_classes, dim=1)
        true = one_hot(label, self.num_classes, dim=1)
        self._dice(pred, true)
        if hd95:
            with warnings.catch_warnings():  # empty classes give nan/inf with a warning; nan-averaged below
                warnings.simplefilter("ignore")
                self._hd95(pred, true)

    def _epoch_end(self, stage: str, hd95: bool) -> None:
        per_class = self._dice.aggregate()
        self._dice.reset()
        metrics = {f"{stage}/dice": torch.nanmean(per_class)}
        for i, value in enumerate(per_class, start=1):
            metrics[f"{stage}/dice_{self.labels.get(i, i)}"] = value
        if hd95:
            d = self._hd95.aggregate()
            self._hd95.reset()
            d = d[torch.isfinite(d)]
            metrics[f"{stage}/hd95"] = d.mean() if d.numel() else torch.tensor(float("nan"))
        self.log_dict({k: torch.nan_to_num(v.float(), nan=0.0) for k, v in metrics.items()})

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.with_hd95)

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val", self.with_hd95)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test", True)

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test", True)
