import pytest
import torch
from torch import nn

from medvit.adapters.common import check_backbone, count_parameters, freeze, parameter_report, unfreeze


def test_count_and_freeze():
    m = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    assert count_parameters(m) == (26, 26)
    freeze(m[0])
    assert count_parameters(m) == (10, 26)
    assert parameter_report(m)["trainable_pct"] == pytest.approx(100 * 10 / 26)
    unfreeze(m)
    assert count_parameters(m) == (26, 26)


def test_check_backbone_names_what_is_missing():
    with pytest.raises(ValueError, match="embed_dim"):
        check_backbone(nn.Linear(2, 2))


def test_check_backbone_dims():
    from medvit.backbones import create_backbone

    b = create_backbone("vit_tiny_patch8_3d", embed_dim=48, depth=1, num_heads=2, img_size=16)
    check_backbone(b, blocks=True)
    with pytest.raises(ValueError, match="spatial_dims=3"):
        check_backbone(b, spatial_dims=(2,))
    assert torch.is_tensor(b.forward_features(torch.zeros(1, 1, 16, 16, 16)))
