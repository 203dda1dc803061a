import copy

import pytest
import torch
from tiny_models import step_and_compare, tiny_2d
from torch import nn

from medvit.adapters import count_parameters
from medvit.adapters.lora import (
    LoRALinear,
    apply_lora,
    lora_layers,
    merge_lora,
    remove_lora,
    unmerge_lora,
)


def _randomise(model):
    g = torch.Generator().manual_seed(1)
    for layer in lora_layers(model):
        with torch.no_grad():
            layer.lora_b.copy_(torch.randn(layer.lora_b.shape, generator=g) * 0.1)


def test_starts_equal_and_merge_matches(backbone_and_input):
    backbone, x = backbone_and_input
    backbone.eval()
    ref = backbone.forward_features(x)
    apply_lora(backbone, rank=4, alpha=8, targets=("qkv", "proj", "mlp"))
    assert torch.equal(backbone.forward_features(x), ref)  # B = 0 at init
    _randomise(backbone)
    unmerged = backbone.forward_features(x)
    assert not torch.allclose(unmerged, ref)
    merge_lora(backbone)
    merge_lora(backbone)  # idempotent
    torch.testing.assert_close(backbone.forward_features(x), unmerged, atol=1e-5, rtol=1e-4)
    unmerge_lora(backbone)
    unmerge_lora(backbone)
    torch.testing.assert_close(backbone.forward_features(x), unmerged, atol=1e-5, rtol=1e-4)


def test_targets_and_counts():
    b = tiny_2d()
    total = count_parameters(b)[1]
    apply_lora(b, rank=2, targets=("qkv",))
    layers = lora_layers(b)
    assert len(layers) == len(b.blocks)
    trainable, total_after = count_parameters(b)
    d = b.embed_dim
    assert trainable == len(b.blocks) * 2 * (d + 3 * d)
    assert total_after == total + trainable


def test_only_lora_trains_and_backward(backbone_and_input):
    backbone, x = backbone_and_input
    apply_lora(backbone, rank=2, targets=("qkv", "proj", "fc1", "fc2"))
    names = [n for n, _ in backbone.named_parameters()]
    lora = [n for n in names if "lora_" in n]
    frozen = [n for n in names if "lora_" not in n]
    assert all(not p.requires_grad for n, p in backbone.named_parameters() if n in frozen)
    moved = step_and_compare(backbone, lambda m: m.forward_features(x).pow(2).mean(), frozen, lora)
    assert any(n.endswith("lora_b") for n in moved)


def test_remove_lora_restores_original_keys():
    b = tiny_2d()
    keys = set(b.state_dict())
    x = torch.randn(1, 3, 32, 32)
    apply_lora(b, rank=2)
    _randomise(b)
    out = b.forward_features(x)
    remove_lora(b)
    assert set(b.state_dict()) == keys
    assert not lora_layers(b)
    torch.testing.assert_close(b.forward_features(x), out, atol=1e-5, rtol=1e-4)


def test_lora_linear_dropout_and_copy():
    layer = LoRALinear(nn.Linear(8, 4), rank=2, dropout=0.5)
    layer.lora_b.data.normal_()
    x = torch.randn(3, 8)
    layer.eval()
    torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
    dup = copy.deepcopy(layer)
    dup.merge()
    assert dup.merged and not layer.merged


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(rank=0), "rank"), (dict(dropout=1.5), "dropout"), (dict(targets=("nope",)), "targets")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        apply_lora(tiny_2d(depth=1), **kwargs)


def test_lora_linear_rejects_non_linear():
    with pytest.raises(ValueError, match="base"):
        LoRALinear(nn.Conv2d(1, 1, 1))
