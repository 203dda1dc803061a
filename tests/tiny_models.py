"""Tiny registry backbones (2D and 3D) and an optimiser-step helper shared by the adapter and head tests."""

from __future__ import annotations

import torch

from medvit.backbones import create_backbone

TINY = dict(embed_dim=48, depth=4, num_heads=2)


def tiny_2d(name: str = "vit_tiny_patch16", size: int = 32, **kw):
    torch.manual_seed(0)
    return create_backbone(name, img_size=size, **{**TINY, **kw})


def tiny_3d(name: str = "vit_tiny_patch8_3d", size: int = 16, **kw):
    torch.manual_seed(0)
    return create_backbone(name, img_size=size, **{**TINY, **kw})


def step_and_compare(model, loss_fn, frozen_names, trained_names):
    """One AdamW step; frozen parameters must be bit-identical and the trained ones must move."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss_fn(model).backward()
    opt.step()
    after = dict(model.named_parameters())
    for n in frozen_names:
        assert torch.equal(before[n], after[n].detach()), n
    moved = [n for n in trained_names if not torch.equal(before[n], after[n].detach())]
    assert moved, "no trainable parameter changed"
    return moved
