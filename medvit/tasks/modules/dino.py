"""DINO + iBOT self-distillation (Caron et al. ICCV 2021; Zhou et al. ICLR 2022; Oquab et al. TMLR 2024) with an
EMA teacher, continued on unlabelled images, 2D or 3D."""

from __future__ import annotations

import copy
from typing import Any

import torch

from medvit.ssl.crops import multi_crop
from medvit.ssl.dino import (
    DINOLoss,
    IBOTPatchLoss,
    block_masks,
    ema_update,
    koleo_loss,
    momentum_schedule,
    teacher_temp_schedule,
)
from medvit.tasks.modules.pretrain import PretrainTask


class DINOTask(PretrainTask):
    """DINO on the ``dino`` head (:class:`medvit.ssl.student.DINOStudent`); the teacher is an EMA copy of the
    whole student (``self.teacher``, saved in checkpoints with the loss centres, so a resumed run continues
    both; the schedules are functions of the global step).

    Each training batch becomes two global crops (the input size, ``global_crop_scale``) and
    ``local_crops`` local crops (:func:`medvit.ssl.crops.multi_crop`). The teacher sees the global crops; the
    student sees every crop, its global crops with iBOT block masks. Loss: DINO on class tokens + ``ibot_weight``
    x iBOT on masked patch tokens + ``koleo_weight`` x KoLeo. Logs ``train/{loss,dino,ibot,koleo}``,
    ``train/teacher_momentum``, ``train/teacher_temp`` and ``val/loss`` (DINO loss between the two global crops
    of each validation image, seeded).

    Args: see :class:`~medvit.tasks.dino.DINOSection`; ``**kwargs`` go to
    :class:`~medvit.tasks.modules.pretrain.PretrainTask`.
    """

    def __init__(
        self,
        *args: Any,
        local_crops: int = 8,
        local_crop_size: int | None = None,
        global_crop_scale: tuple[float, float] = (0.32, 1.0),
        local_crop_scale: tuple[float, float] = (0.05, 0.32),
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: float = 30,
        momentum_teacher: float = 0.992,
        center_momentum: float = 0.9,
        ibot_weight: float = 1.0,
        mask_ratio: tuple[float, float] = (0.1, 0.5),
        mask_probability: float = 0.5,
        koleo_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.local_crops, self.local_crop_size = local_crops, local_crop_size
        self.global_crop_scale, self.local_crop_scale = tuple(global_crop_scale), tuple(local_crop_scale)
        self.teacher_temp, self.warmup_teacher_temp = teacher_temp, warmup_teacher_temp
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.momentum_teacher = momentum_teacher
        self.ibot_weight, self.koleo_weight = ibot_weight, koleo_weight
        self.mask_ratio, self.mask_probability = tuple(mask_ratio), mask_probability
        k = self.model.prototypes
        self.dino_loss = DINOLoss(k, student_temp=student_temp, center_momentum=center_momentum)
        self.ibot_loss = IBOTPatchLoss(k, student_temp=student_temp, center_momentum=center_momentum)
        self.teacher = copy.deepcopy(self.model)  # starts as the loaded student
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def trained_backbone(self):
        return self.teacher.backbone

    def official_extra(self, family: str) -> dict[str, torch.Tensor]:
        if family == "DINOv3":
            return {"mask_token": self.teacher.mask_token.detach().cpu().float()}
        return {}

    # -- schedules (pure functions of the global step: a resumed run continues them) -------------------------

    def _steps(self) -> tuple[int, int]:
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        return total, max(1, total // epochs)

    def current_teacher_temp(self) -> float:
        total, per_epoch = self._steps()
        warmup = min(total, int(round(self.warmup_teacher_temp_epochs * per_epoch)))
        return teacher_temp_schedule(
            self.global_step, warmup_steps=warmup, start=self.warmup_teacher_temp, end=self.teacher_temp
        )

    def current_momentum(self) -> float:
        total, _ = self._steps()
        return momentum_schedule(self.global_step, total, start=self.momentum_teacher, end=1.0)

    # -- steps ----------------------------------------------------------------------------------------------

    def _local_size(self, size: tuple[int, ...]) -> list[int]:
        patch = self.model.backbone.patch_size
        if self.local_crop_size is not None:
            return [max(p, self.local_crop_size // p * p) for p in patch]
        return [max(p, round(s * 96 / 224 / p) * p) for s, p in zip(size, patch, strict=True)]

    def _crops(self, images: torch.Tensor, n_local: int, generator=None):
        size = tuple(images.shape[2:])
        return multi_crop(images, global_size=size, local_size=self._local_size(size), n_local=n_local,
                          global_scale=self.global_crop_scale, local_scale=self.local_crop_scale,
                          generator=generator)  # fmt: skip

    def _losses(
        self, images: torch.Tensor, n_local: int, generator=None, *, train: bool
    ) -> dict[str, torch.Tensor]:
        b = images.shape[0]
        globals_, locals_ = self._crops(images, n_local, generator)
        g = torch.cat(globals_)
        grid = self.model.backbone.patch_embed.grid(g.shape[2:])
        masks = None
        if self.ibot_weight > 0 and train:
            masks = block_masks(2 * b, grid, ratio_range=self.mask_ratio, probability=self.mask_probability,
                                generator=generator).to(g.device)  # fmt: skip
        temp = self.current_teacher_temp()
        with torch.no_grad():
            t = self.teacher(g)
            t_cls = list(t["cls_logits"].float().chunk(2))
        s = self.model(g, mask=masks)
        s_cls = list(s["cls_logits"].float().chunk(2))
        if locals_:
            s_cls += list(self.model(torch.cat(locals_))["cls_logits"].float().chunk(len(locals_)))
        out = {"dino": self.dino_loss(s_cls, t_cls, temp)}
        if train:
            self.dino_loss.update_center(torch.cat(t_cls))
        total = out["dino"]
        if masks is not None and masks.any():
            with torch.no_grad():
                t_patch = self.teacher.patch_head(t["patches"][masks]).float()
            s_patch = self.model.patch_head(s["patches"][masks]).float()
            counts = masks.sum(dim=1, keepdim=True).clamp_min(1).float()
            weights = (1.0 / counts).expand_as(masks)[masks]
            n_images = int(masks.any(dim=1).sum())
            out["ibot"] = self.ibot_loss(s_patch, t_patch, temp, weights=weights, n_images=n_images)
            self.ibot_loss.update_center(t_patch)
            total = total + self.ibot_weight * out["ibot"]
        if self.koleo_weight > 0 and train:
            out["koleo"] = sum(koleo_loss(c.float()) for c in s["cls"].chunk(2))
            total = total + self.koleo_weight * out["koleo"]
        out["loss"] = total
        return out

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images = self.images(batch)
        out = self._losses(images, self.local_crops, train=True)
        metrics = {f"train/{k}": v for k, v in out.items()}
        metrics["train/teacher_temp"] = self.current_teacher_temp()
        metrics["train/teacher_momentum"] = self.current_momentum()
        self.log_metrics(metrics, batch_size=images.shape[0], on_step=True)
        return out["loss"]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        ema_update(self.teacher, self.model, self.current_momentum())

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = self.images(batch)
        gen = torch.Generator().manual_seed(1000 + batch_idx)  # the same crops every validation
        out = self._losses(images, 0, gen, train=False)
        self.log_metrics({"val/loss": out["loss"]}, batch_size=images.shape[0])
