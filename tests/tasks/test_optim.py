"""Layer-wise LR decay groups, weight-decay exemptions and the warmup-cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import tiny_2d

from medvit.heads.cellvta import CellVTA
from medvit.heads.funduseg import FunduSegmenter
from medvit.models import build_model
from medvit.tasks.optim import (
    OptimizerSpec,
    build_optimizer,
    build_scheduler,
    layer_id,
    lr_factor,
    no_weight_decay_names,
    param_groups,
)

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


def _decay_of(model, spec):
    by_param = {id(p): g["weight_decay"] for g in param_groups(model, spec) for p in g["params"]}
    return {n: by_param[id(p)] for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    ("backbone", "options", "tokens"),
    [
        ("dinov3_vits16", {}, {"cls_token", "reg_token"}),  # [1, R, D] registers, RoPE (no pos_embed)
        ("vit_tiny_patch16", {"num_reg_tokens": 2}, {"cls_token", "reg_token", "pos_embed"}),
    ],
)
def test_backbone_tokens_get_no_weight_decay(backbone, options, tokens):
    spec = OptimizerSpec(weight_decay=0.05)
    dims = dict(embed_dim=32, depth=2, num_heads=2, **options)
    model = build_model({**TINY, "backbone": dict(name=backbone, img_size=[32, 32], options=dims)})
    assert model.backbone.reg_token.ndim == 3
    assert {f"backbone.{t}" for t in tokens} <= no_weight_decay_names(model)
    decay = _decay_of(model, spec)
    assert all(decay[f"backbone.{t}"] == 0.0 for t in tokens)
    assert decay["backbone.blocks.0.attn.qkv.weight"] == 0.05
    assert decay["backbone.patch_embed.proj.weight"] == 0.05
    assert decay["head.head.weight"] == 0.05
    assert decay["backbone.blocks.0.norm1.weight"] == decay["backbone.blocks.1.mlp.fc1.bias"] == 0.0


def test_head_embeddings_get_no_weight_decay():
    spec = OptimizerSpec(weight_decay=0.1)
    fundus = _decay_of(FunduSegmenter(tiny_2d(), 2, adapter_dim=8, width=8), spec)
    assert fundus["decoder.cls_emb"] == 0.0
    assert fundus["decoder.proj_patch"] == 0.1
    cells = CellVTA(tiny_2d(), freeze_backbone=False, num_types=4, num_tissues=3, deform_heads=2, spm_width=8)
    decay = _decay_of(cells, spec)
    assert decay["level_embed"] == decay["backbone.cls_token"] == decay["backbone.pos_embed"] == 0.0
    assert decay["tissue_head.weight"] == 0.1


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
