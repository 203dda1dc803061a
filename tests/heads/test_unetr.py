import pytest
import torch
from tiny_models import step_and_compare, tiny_2d, tiny_3d

from medvit.heads import UNETR
from medvit.heads.unetr import ResizeUpBlock, default_taps


def test_default_taps_follow_hi_end_mae():
    assert default_taps(12) == (3, 6, 9, 11)
    assert default_taps(24) == (6, 12, 18, 23)


@pytest.mark.parametrize(
    "make, x, transposed",
    [
        (lambda: tiny_3d(), torch.randn(1, 1, 16, 16, 16), False),  # patch 8
        (lambda: tiny_3d("hiendmae_ct", size=24), torch.randn(1, 1, 24, 24, 24), False),  # patch 12, 2^3 grid
        (lambda: tiny_2d(), torch.randn(2, 3, 32, 32), True),  # patch 16
        (lambda: tiny_2d("retfound_dinov2_cfp", size=28), torch.randn(1, 3, 28, 28), False),  # patch 14
    ],
)
def test_output_has_input_size_and_backward(make, x, transposed):
    model = UNETR(make(), 3, feature_size=4)
    assert model.transposed_last is transposed
    assert isinstance(model.decoder2, ResizeUpBlock) is not transposed
    out = model(x)
    assert out.shape == (x.shape[0], 3, *x.shape[2:])
    out.mean().backward()
    assert model.backbone.blocks[0].attn.qkv.weight.grad is not None


@pytest.mark.slow
def test_patch12_96_cube():
    """Hi-End-MAE's geometry: 12^3 patches, 96^3 crop, 8^3 grid (tiny widths)."""
    b = tiny_3d("hiendmae_ct", size=96, embed_dim=24, depth=4)
    model = UNETR(b, 2, feature_size=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 96, 96, 96)).shape == (1, 2, 96, 96, 96)


def test_frozen_backbone_does_not_move():
    model = UNETR(tiny_3d(), 2, feature_size=4, freeze_backbone=True)
    x = torch.randn(1, 1, 16, 16, 16)
    names = [n for n, _ in model.named_parameters()]
    frozen = [n for n in names if n.startswith("backbone.")]
    step_and_compare(model, lambda m: m(x).pow(2).mean(), frozen, [n for n in names if n not in frozen])


def test_bad_arguments():
    with pytest.raises(ValueError, match="taps"):
        UNETR(tiny_3d(), 2, taps=(1, 2))
    with pytest.raises(ValueError, match="out_channels"):
        UNETR(tiny_3d(), 0)
    with pytest.raises(ValueError, match="patch"):
        UNETR(tiny_2d(patch_size=4), 2)
