"""What the self-supervised LightningModules share: the trainable-fraction report, the k-NN probe, and the
adapted backbone they hand to fine-tuning (LoRA merged into plain weights)."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from medvit.adapters.lora import remove_lora
from medvit.layers.params import parameter_report
from medvit.tasks.modules.base import MedvitTask

log = logging.getLogger(__name__)


class PretrainTask(MedvitTask):
    """Base of the ``mae`` and ``dino`` tasks.

    Args:
        probe: The ``task.probe`` section as plain data, or ``None``.
        transforms: The pipeline's ``transforms:`` (the probe card is read through them, without augmentation).
        **kwargs: See :class:`~medvit.tasks.modules.base.MedvitTask`.
    """

    probe_pool = "token"  # the probe's default feature (the class token; MAE: the mean patch token)

    def __init__(
        self, *args: Any, probe: dict | None = None, transforms: dict | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.probe_spec = dict(probe) if probe else None
        self.transforms_spec = dict(transforms or {})
        self._probe = None
        if self.probe_spec:  # built now: a probe card that does not exist or does not fit fails before the run
            from medvit.ssl.probe import KnnProbe  # lazy: only with a probe

            spec = {k: v for k, v in self.probe_spec.items() if k not in ("every_n_epochs", "pool")}
            self._probe = KnnProbe(spec.pop("card"), transforms=self.transforms_spec, seed=0, **spec)
        self.probe_start: float | None = None

    @staticmethod
    def images(batch: dict) -> torch.Tensor:
        """The batch's images as a plain tensor (3D batches are MetaTensors, whose metadata cannot follow the
        crops, chunks and masked selections of the objectives)."""
        image = batch["image"]
        return image.as_tensor() if hasattr(image, "as_tensor") else image

    # -- what the run leaves ------------------------------------------------------------------------------

    def trained_backbone(self) -> nn.Module:
        """The backbone being adapted (DINO: the teacher's, which is the model DINO keeps)."""
        return self.model.backbone

    def export_backbone(self) -> nn.Module:
        """A float32 CPU copy of :meth:`trained_backbone` with any LoRA merged into plain weights (the original
        keys, loadable by ``create_backbone``)."""
        backbone = copy.deepcopy(self.trained_backbone()).to("cpu", torch.float32).eval()
        remove_lora(backbone)
        for p in backbone.parameters():
            p.requires_grad_(False)
        return backbone

    def official_extra(self, family: str) -> dict[str, torch.Tensor]:
        """Tensors the family's official file keeps beside the encoder (an MAE decoder, DINOv3's mask token)."""
        return {}

    # -- reports --------------------------------------------------------------------------------------------

    def trainable_report(self) -> dict[str, float]:
        """Trainable share of the backbone (what ExPLoRA and LoRA keep small) and of the whole model."""
        bb = parameter_report(self.model.backbone)
        whole = parameter_report(self.model)
        return {"backbone_trainable": bb["trainable"], "backbone_total": bb["total"],
                "backbone_trainable_pct": bb["trainable_pct"], "model_trainable": whole["trainable"],
                "model_total": whole["total"]}  # fmt: skip

    def _log_now(self, metrics: dict[str, float], step: int) -> None:
        if self.logger is not None and self.trainer.is_global_zero:
            self.logger.log_metrics(metrics, step=step)

    def on_fit_start(self) -> None:
        report = self.trainable_report()
        if self.trainer.is_global_zero:
            print(
                f"trainable: {report['backbone_trainable']:,} of {report['backbone_total']:,} backbone parameters "
                f"({report['backbone_trainable_pct']:.2f}%); {report['model_trainable']:,} of "
                f"{report['model_total']:,} in all (heads and decoder included)",
                flush=True,
            )
        self._log_now({f"params/{k}": float(v) for k, v in report.items()}, step=0)
        if self.probe_spec and self.trainer.global_step == 0 and self.probe_start is None:
            self.probe_start = self.run_probe()
            self._log_now({"probe/knn_acc": self.probe_start}, step=0)
            if self.trainer.is_global_zero:
                print(f"k-NN probe before pre-training: {self.probe_start:.4f}", flush=True)

    # -- the probe ------------------------------------------------------------------------------------------

    def run_probe(self) -> float:
        """k-NN accuracy of the frozen backbone's features on the probe card (every rank computes the same)."""
        backbone = self.trained_backbone()
        pool, before = self.probe_spec.get("pool") or self.probe_pool, backbone.global_pool
        backbone.global_pool = pool if backbone.cls_token is not None else "avg"
        try:
            return float(self._probe.run(backbone, device=self.device))
        finally:
            backbone.global_pool = before

    def check_inputs(self) -> None:
        """What ``medvit run --check`` reads besides the training data: the probe card's files."""
        if self._probe is not None:
            self._probe.check()

    def on_validation_epoch_end(self) -> None:
        if not self.probe_spec or self.trainer.sanity_checking:
            return
        if (self.current_epoch + 1) % int(self.probe_spec.get("every_n_epochs", 1)) == 0:
            self.log("probe/knn_acc", self.run_probe(), sync_dist=False)
            if self.probe_start is not None:
                self.log("probe/knn_acc_start", self.probe_start, sync_dist=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["medvit_probe_start"] = self.probe_start

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.probe_start = checkpoint.get("medvit_probe_start")
