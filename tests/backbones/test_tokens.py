import pytest
import torch
from torch import nn

from medvit.backbones.tokens import check_backbone, map_to_tokens, token_grid, tokens_to_map


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
    assert token_grid(b, (16, 17, 8)) == (2, 3, 1)


def test_tokens_and_map_round_trip():
    tokens = torch.arange(2 * 6 * 4, dtype=torch.float32).reshape(2, 6, 4)
    fmap = tokens_to_map(tokens, (2, 3))
    assert fmap.shape == (2, 4, 2, 3)
    assert torch.equal(fmap[:, :, 1, 2], tokens[:, 5])
    assert torch.equal(map_to_tokens(fmap), tokens)
