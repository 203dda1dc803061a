import copy

import pytest
import torch
from tiny_models import step_and_compare, tiny_2d

from medvit.adapters import count_parameters
from medvit.adapters.adaptertune import apply_adaptertune, remove_adaptertune


def test_step_zero_is_the_frozen_backbone_exactly(backbone_and_input):
    backbone, x = backbone_and_input
    backbone.eval()
    ref = backbone.forward_features(x)
    taps = backbone.forward_intermediates(x, [0, -1])
    apply_adaptertune(backbone, rank=4)
    assert torch.equal(backbone.forward_features(x), ref)
    for a, b in zip(backbone.forward_intermediates(x, [0, -1]), taps, strict=True):
        assert torch.equal(a, b)


def test_only_bottlenecks_train(backbone_and_input):
    backbone, x = backbone_and_input
    keys = set(backbone.state_dict())
    apply_adaptertune(backbone, rank=4)
    names = [n for n, _ in backbone.named_parameters()]
    frozen = [n for n in names if ".adaptertune." not in n]
    trained = [n for n in names if ".adaptertune." in n]
    assert set(frozen) <= keys  # the backbone's own names are unchanged
    trainable, total = count_parameters(backbone)
    d = backbone.embed_dim
    assert trainable == len(backbone.blocks) * (d * 4 + 4 + 4 * d + d)
    moved = step_and_compare(backbone, lambda m: m.forward_features(x).pow(2).mean(), frozen, trained)
    assert any(".up." in n for n in moved)
    backbone.eval()
    after = backbone.forward_features(x)
    remove_adaptertune(backbone)
    assert set(backbone.state_dict()) == keys
    assert not torch.equal(backbone.forward_features(x), after)


def test_copies_use_their_own_bottleneck():
    b = apply_adaptertune(tiny_2d(depth=1), rank=2)
    dup = copy.deepcopy(b)
    with torch.no_grad():
        dup.blocks[0].adaptertune.up.bias.fill_(1.0)
    x = torch.randn(1, 3, 32, 32)
    assert not torch.allclose(b.forward_features(x), dup.forward_features(x))


def test_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        apply_adaptertune(tiny_2d(depth=1), rank=0)
    b = apply_adaptertune(tiny_2d(depth=1))
    with pytest.raises(ValueError, match="already"):
        apply_adaptertune(b)
