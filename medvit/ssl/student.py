"""The DINO/iBOT student: a backbone with the DINO head on its class token and the iBOT head on masked patch
tokens (one shared head by default, as in DINOv2; ``separate_ibot_head`` gives iBOT its own), plus the mask
token that replaces masked patches. The teacher is an EMA copy of the whole student
(:class:`medvit.tasks.modules.dino.DINOTask`).

DINOv3 files carry ``mask_token`` but no heads: the mask token is taken from the file when the backbone was
loaded from one (``backbone.load_report.dropped_state``), the heads start fresh.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medvit.ssl.dino import DINOHead


class DINOStudent(nn.Module):
    """Backbone + DINO/iBOT heads.

    Args:
        backbone: A medvit ViT with a class token.
        num_classes: Unused (the model-building contract passes it).
        prototypes: Output size of the heads (DINOv2: 65536; DINOv3 uses 65536 for DINO and 98304 for iBOT).
        hidden_dim: Head MLP width (2048).
        bottleneck_dim: Width before the weight-normalised prototype layer (256).
        nlayers: Head MLP layers (3).
        separate_ibot_head: Give the iBOT loss its own head.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 0,
        *,
        prototypes: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        separate_ibot_head: bool = False,
    ) -> None:
        super().__init__()
        if getattr(backbone, "cls_token", None) is None:
            raise ValueError("DINO needs a backbone with a class token")
        self.backbone = backbone
        dim = backbone.embed_dim
        head = dict(out_dim=prototypes, hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim, nlayers=nlayers)
        self.dino_head = DINOHead(dim, **head)
        self.ibot_head = DINOHead(dim, **head) if separate_ibot_head else None
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.prototypes = prototypes
        report = getattr(backbone, "load_report", None)
        stored = (report.dropped_state if report else {}).get("mask_token")
        if stored is not None and stored.numel() == dim:
            with torch.no_grad():
                self.mask_token.copy_(stored.reshape(1, dim))
        if report is not None:
            report.dropped_state = {}

    @property
    def patch_head(self) -> nn.Module:
        return self.ibot_head if self.ibot_head is not None else self.dino_head

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    def tokens(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The backbone's normed tokens ``[B, P + N, D]``; ``mask [B, N]`` patches replaced by the mask token."""
        bb = self.backbone
        x, _, rope = bb.prepare_tokens(images, mask=mask, mask_token=self.mask_token if mask is not None else None)
        return bb.forward_tokens(x, rope)[0]

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, Any]:
        """``cls`` (the class token before the head), ``cls_logits`` (DINO head on it) and ``patches`` (the
        patch tokens, for the iBOT head on the masked ones)."""
        t = self.tokens(images, mask)
        cls = t[:, 0]
        return {"cls": cls, "cls_logits": self.dino_head(cls), "patches": t[:, self.backbone.num_prefix_tokens :]}
