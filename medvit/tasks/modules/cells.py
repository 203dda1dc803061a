"""Nuclei instance segmentation and typing with a HoVer-style model (CellVTA): the CellVTA loss mix and
PQ/bPQ/mPQ after HoVer-Net post-processing."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from medvit.metrics import mpq, multiclass_pq, panoptic_quality
from medvit.postprocess.hover import hover_postprocess
from medvit.tasks.modules.base import MedvitTask

# CellVTA's PanNuke recipe (REFERENCES.md): binary 1 + 1, HV 2.5 MSE + 8 MSGE, type 0.5 CE + 0.2 Dice, tissue 0.1
DEFAULT_WEIGHTS = {"np_ce": 1.0, "np_dice": 1.0, "hv_mse": 2.5, "hv_msge": 8.0, "tp_ce": 0.5, "tp_dice": 0.2}


def _sobel(ksize: int = 5, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.arange(-(ksize // 2), ksize // 2 + 1, dtype=torch.float32, device=device)
    h, v = torch.meshgrid(r, r, indexing="ij")
    kx = h / (h * h + v * v + 1e-15)  # derivative along x (columns): swapped roles as HoVer-Net
    ky = v / (h * h + v * v + 1e-15)
    return kx.T.contiguous(), ky.T.contiguous()


def msge_loss(pred: torch.Tensor, true: torch.Tensor, focus: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the HV maps' gradients (x-gradient of channel 0, y-gradient of channel 1)
    over nuclei pixels (``focus``), as HoVer-Net's MSGE."""
    kx, ky = _sobel(5, pred.device)

    def grads(hv: torch.Tensor) -> torch.Tensor:
        gx = F.conv2d(hv[:, :1], kx[None, None], padding=2)
        gy = F.conv2d(hv[:, 1:], ky[None, None], padding=2)
        return torch.cat([gx, gy], dim=1)

    focus = focus[:, None].float().expand(-1, 2, -1, -1)
    diff = (grads(pred) - grads(true)) ** 2 * focus
    return diff.sum() / (focus.sum() + 1e-8)


class CellTask(MedvitTask):
    """CellVTA training: binary, HV and type branches. Logs ``{stage}/loss``, ``{stage}/bpq``, ``{stage}/mpq``.

    Args:
        loss_weights: Overrides of :data:`DEFAULT_WEIGHTS`.
        **kwargs: See :class:`~medvit.tasks.base.MedvitTask`.
    """

    def __init__(self, *args: Any, loss_weights: dict[str, float] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        unknown = set(loss_weights or {}) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown loss weight(s) {sorted(unknown)}; known: {sorted(DEFAULT_WEIGHTS)}")
        self.weights = {**DEFAULT_WEIGHTS, **(loss_weights or {})}
        self.num_types = self.model_spec.num_classes
        self.dice = DiceLoss(to_onehot_y=True, softmax=True)
        self._stats: list[dict] = []
        self._binary: list = []

    def compute_loss(
        self, out: dict[str, torch.Tensor], batch: dict
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        np_t = batch["np_map"].long()
        tp_t = batch["tp_map"].long()
        hv_t = batch["hv_map"].float()
        np_l = out["nuclei_binary_map"].float()
        tp_l = out["nuclei_type_map"].float()
        hv_p = out["hv_map"].float()
        w = self.weights
        parts = {
            "np_ce": F.cross_entropy(np_l, np_t),
            "np_dice": self.dice(np_l, np_t[:, None]),
            "hv_mse": F.mse_loss(hv_p, hv_t),
            "hv_msge": msge_loss(hv_p, hv_t, np_t),
            "tp_ce": F.cross_entropy(tp_l, tp_t),
            "tp_dice": self.dice(tp_l, tp_t[:, None]),
        }
        total = sum(w[k] * v for k, v in parts.items())
        return total, parts

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.model(batch["image"])
        loss, _ = self.compute_loss(out, batch)
        self.log_metrics({"train/loss": loss}, batch_size=batch["image"].shape[0], on_step=True)
        return loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        out = self.model(batch["image"])
        loss, _ = self.compute_loss(out, batch)
        self.log_metrics({f"{stage}/loss": loss}, batch_size=batch["image"].shape[0])
        binary = out["nuclei_binary_map"].float().softmax(1)[:, 1].cpu().numpy()
        hv = out["hv_map"].float().cpu().numpy()
        types = out["nuclei_type_map"].float().argmax(1).cpu().numpy()
        true_inst = batch["inst_map"].cpu().numpy()
        true_type = batch["tp_map"].cpu().numpy()
        classes = range(1, self.num_types)
        for i in range(binary.shape[0]):
            res = hover_postprocess(binary[i], hv[i], types[i])
            self._stats.append(multiclass_pq(true_inst[i], true_type[i], res.instances, res.types, classes))
            self._binary.append(panoptic_quality(true_inst[i], res.instances).pq)

    def _epoch_end(self, stage: str) -> None:
        values = {
            f"{stage}/mpq": float(np.nan_to_num(mpq(self._stats))) if self._stats else 0.0,
            f"{stage}/bpq": float(np.nanmean(self._binary)) if self._binary else 0.0,
        }
        self._stats, self._binary = [], []
        self.log_dict({k: torch.tensor(v) for k, v in values.items()}, sync_dist=True)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")
