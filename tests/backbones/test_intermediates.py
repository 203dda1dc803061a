"""forward_intermediates: documented indices and shapes for 2D and 3D backbones."""

from __future__ import annotations

import pytest
import torch

import medvit


def test_vit_large_default_indices_and_shapes_2d():
    with torch.device("meta"):
        model = medvit.create_backbone("retfound_cfp")
        maps = model.forward_intermediates(torch.empty(2, 3, 224, 224))
    assert model.feature_indices == (5, 11, 17, 23)
    assert [tuple(m.shape) for m in maps] == [(2, 1024, 14, 14)] * 4


def test_dinov3_vitl_non_square_and_vitb_indices():
    with torch.device("meta"):
        large = medvit.create_backbone("dinov3_vitl16")
        maps = large.forward_intermediates(torch.empty(1, 3, 320, 256), norm=True)
        base = medvit.create_backbone("dinov3_vitb16")
    assert large.feature_indices == (5, 11, 17, 23) and base.feature_indices == (2, 5, 8, 11)
    assert [tuple(m.shape) for m in maps] == [(1, 1024, 20, 16)] * 4


def test_hiendmae_3d_shapes():
    with torch.device("meta"):
        model = medvit.create_backbone("hiendmae_ct")
        maps = model.forward_intermediates(torch.empty(1, 1, 96, 96, 96), output_fmt="NCDHW")
    assert model.feature_indices == (3, 6, 9, 11)
    assert [tuple(m.shape) for m in maps] == [(1, 1536, 8, 8, 8)] * 4


def test_intermediates_agree_with_forward_features():
    model = medvit.create_backbone("vit_tiny_patch16", depth=3, img_size=64).eval()
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        last = model.forward_intermediates(x, indices=1, norm=True, output_fmt="NLC")[0]
        feats = model.forward_features(x)
        torch.testing.assert_close(last, feats[:, 1:])
        maps = model.forward_intermediates(x, indices=[-1, 0])
    assert [tuple(m.shape) for m in maps] == [(1, 192, 4, 3)] * 2
    torch.testing.assert_close(
        maps[0].flatten(2).transpose(1, 2), model.forward_intermediates(x, [2], output_fmt="NLC")[0]
    )


def test_bad_indices_and_format():
    model = medvit.create_backbone("vit_tiny_patch8_3d", depth=2, embed_dim=48, num_heads=4, img_size=16)
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(torch.randn(1, 1, 16, 16, 16), indices=[5])
    with pytest.raises(ValueError, match="NCDHW"):
        model.forward_intermediates(torch.randn(1, 1, 16, 16, 16), output_fmt="NCHW")


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    a = medvit.create_backbone("dinov3_vits16", embed_dim=64, depth=2, num_heads=4, img_size=32).eval()
    b = medvit.create_backbone(
        "dinov3_vits16", embed_dim=64, depth=2, num_heads=4, img_size=32, grad_checkpointing=True
    )
    b.load_state_dict(a.state_dict())
    b.eval()
    x = torch.randn(2, 3, 32, 32)
    a.forward_features(x).sum().backward()
    b.forward_features(x).sum().backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=n)
