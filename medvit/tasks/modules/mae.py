"""Masked-autoencoder pre-training (MAE; Hi-End-MAE's hierarchical decoder for 3D) on unlabelled images."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medvit.tasks.modules.pretrain import PretrainTask

# families whose official files keep MAE's decoder beside the encoder, under MAE's names
MAE_LAYOUT_FAMILIES = ("RETFound MAE", "UrFound")


class MAETask(PretrainTask):
    """MAE on the ``mae`` head (:class:`medvit.ssl.mae.MaskedAutoencoder`). Logs ``{stage}/loss`` (the masked
    patches' reconstruction error; validation masks are seeded, so epochs compare) and, every
    ``image_every_n_epochs`` validations, a picture of originals, masked inputs and reconstructions.

    Args:
        mask_ratio: Fraction of patches masked.
        norm_pix_loss: Per-patch normalised pixel targets.
        image_every_n_epochs: Reconstruction pictures to MLflow every N validations (0: never).
        **kwargs: See :class:`~medvit.tasks.modules.pretrain.PretrainTask`.
    """

    probe_pool = "avg"

    def __init__(
        self, *args: Any, mask_ratio: float = 0.75, norm_pix_loss: bool = True, image_every_n_epochs: int = 1,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        self.image_every_n_epochs = image_every_n_epochs

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images = self.images(batch)
        out = self.model(images, self.mask_ratio, norm_pix_loss=self.norm_pix_loss)
        self.log_metrics({"train/loss": out["loss"]}, batch_size=images.shape[0], on_step=True)
        return out["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = self.images(batch)
        gen = torch.Generator().manual_seed(1000 + batch_idx)  # the same masks every validation
        out = self.model(images, self.mask_ratio, norm_pix_loss=self.norm_pix_loss, generator=gen)
        self.log_metrics({"val/loss": out["loss"]}, batch_size=images.shape[0])
        every = self.image_every_n_epochs
        if batch_idx == 0 and every and (self.current_epoch + 1) % every == 0 and not self.trainer.sanity_checking:
            self._log_picture(images, out)

    def official_extra(self, family: str) -> dict[str, torch.Tensor]:
        if family in MAE_LAYOUT_FAMILIES and not self.model.taps:
            return {k: v.detach().cpu().float() for k, v in self.model.decoder_state_dict().items()}
        return {}

    # -- the picture ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def _log_picture(self, images: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
        logger = self.logger
        if logger is None or not self.trainer.is_global_zero or not hasattr(logger, "run_id"):
            return
        n = min(4, images.shape[0])
        images = images[:n].float()
        out = {k: (v[:n] if k in ("pred", "mask", "target") else v) for k, v in out.items()}
        panels = [images, self.model.masked_input(out, images), self.model.reconstruct(out, images)]
        picture = reconstruction_picture(panels)
        logger.experiment.log_image(
            logger.run_id, picture, artifact_file=f"reconstructions/epoch_{self.current_epoch + 1:04d}.png"
        )


def reconstruction_picture(panels: list[torch.Tensor]) -> np.ndarray:
    """Rows of ``original | masked | reconstruction`` as one uint8 RGB array; 3D volumes show their middle
    slice along the last axis, one channel is grey, each row is scaled by its original's 1st-99th percentiles,
    inputs under 128 px are enlarged by whole pixels."""
    rows = []
    for i in range(panels[0].shape[0]):
        cells = []
        for p in panels:
            img = p[i]
            if img.ndim == 4:  # [C, H, W, D]
                img = img[..., img.shape[-1] // 2]
            img = img[:3] if img.shape[0] >= 3 else img[:1].expand(3, -1, -1)
            cells.append(img.permute(1, 2, 0).cpu().numpy())
        lo, hi = np.percentile(cells[0], [1, 99])
        scale = max(float(hi - lo), 1e-6)
        row = [np.clip((c - lo) / scale, 0, 1) for c in cells]
        gap = np.ones((row[0].shape[0], 2, 3))
        rows.append(np.concatenate([x for c in row for x in (c, gap)][:-1], axis=1))
    gap = np.ones((2, rows[0].shape[1], 3))
    grid = np.concatenate([x for r in rows for x in (r, gap)][:-1], axis=0)
    zoom = max(1, 128 // rows[0].shape[0])  # small inputs (smoke runs, 64 px crops) drawn at 128 px or more
    grid = grid.repeat(zoom, axis=0).repeat(zoom, axis=1)
    return (grid * 255).round().astype(np.uint8)
