"""Layer-wise LR decay groups and the warmup-cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch

from medvit.models import build_model
from medvit.tasks.optim import OptimizerSpec, build_optimizer, build_scheduler, layer_id, lr_factor, param_groups

TINY = dict(
    backbone=dict(name="vit_tiny_patch16", img_size=[32, 32], options=dict(embed_dim=32, depth=3, num_heads=2)),
    head=dict(name="linear"),
    num_classes=3,
)


@pytest.mark.parametrize(
    ("name", "layer"),
    [
        ("backbone.cls_token", 0),
        ("backbone.pos_embed", 0),
        ("backbone.patch_embed.proj.weight", 0),
        ("backbone.blocks.0.attn.qkv.weight", 1),
        ("backbone.blocks.2.mlp.fc2.bias", 3),
        ("encoder.blocks.1.norm1.weight", 2),
        ("backbone.norm.weight", 4),
        ("head.head.weight", 4),
        ("decoder.blocks.0.attn.qkv.weight", 4),  # decoder blocks are not backbone blocks
    ],
)
def test_layer_ids(name, layer):
    assert layer_id(name, depth=3) == layer


def test_layer_decay_scales_and_no_decay_groups():
    model = build_model(TINY)
    spec = OptimizerSpec(lr=1e-3, layer_decay=0.5, weight_decay=0.05)
    groups = param_groups(model, spec)
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_param[id(named["backbone.patch_embed.proj.weight"])]["lr_scale"] == pytest.approx(0.5**4)
    assert by_param[id(named["backbone.blocks.2.attn.qkv.weight"])]["lr_scale"] == pytest.approx(0.5)
    assert by_param[id(named["head.head.weight"])]["lr_scale"] == 1.0
    assert by_param[id(named["head.head.weight"])]["weight_decay"] == 0.05
    assert by_param[id(named["head.head.bias"])]["weight_decay"] == 0.0
    assert by_param[id(named["backbone.pos_embed"])]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len([p for p in model.parameters() if p.requires_grad])


def test_frozen_parameters_are_left_out():
    model = build_model({**TINY, "head": {"name": "linear", "options": {"freeze_backbone": True}}})
    groups = param_groups(model, OptimizerSpec())
    assert sum(len(g["params"]) for g in groups) == 4  # fc_norm weight/bias, head weight/bias


def test_warmup_then_cosine_to_min_lr():
    spec = OptimizerSpec(lr=1e-3, warmup_epochs=2, min_lr=1e-5)
    f = [lr_factor(s, spec=spec, total_steps=100, steps_per_epoch=10) for s in range(100)]
    assert f[0] == pytest.approx(1 / 20) and f[19] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[20:], f[21:], strict=False))
    assert f[-1] == pytest.approx(1e-2 + (1 - 1e-2) * 0.5 * (1 + math.cos(math.pi * 79 / 80)))
    assert lr_factor(100, spec=spec, total_steps=100, steps_per_epoch=10) == pytest.approx(1e-2)


def test_exponential_and_constant():
    exp = OptimizerSpec(scheduler="exponential", gamma=0.5)
    assert lr_factor(25, spec=exp, total_steps=100, steps_per_epoch=10) == pytest.approx(0.25)
    assert lr_factor(99, spec=OptimizerSpec(scheduler="constant"), total_steps=100, steps_per_epoch=10) == 1.0


def test_scheduler_keeps_group_scales():
    model = build_model(TINY)
    spec = OptimizerSpec(lr=1e-2, layer_decay=0.5, warmup_epochs=1)
    opt = build_optimizer(model, spec)
    sched = build_scheduler(opt, spec, total_steps=20, steps_per_epoch=10)
    for _ in range(10):
        opt.step()
        sched.step()
    lrs = sorted({round(g["lr"] / g["lr_scale"], 12) for g in opt.param_groups})
    assert lrs == [pytest.approx(1e-2)]
    assert isinstance(opt, torch.optim.AdamW)
