"""Position-embedding resampling: 224-trained 2D checkpoints at 256 and 320x256, 96^3 3D at other crops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from layouts import randomise, write_hiendmae, write_mae

import medvit

SMALL = dict(embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0)
SMALL3D = dict(embed_dim=48, depth=2, num_heads=4, mlp_ratio=2.0)


def retfound_interpolate(pos: torch.Tensor, new: int) -> torch.Tensor:
    """RETFound's util/pos_embed.py algorithm, written out: square grid, bicubic, extra tokens kept."""
    extra, grid = pos[:, :1], pos[:, 1:]
    old = int(grid.shape[1] ** 0.5)
    grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([extra, grid.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)


@pytest.fixture(scope="module")
def mae_224(tmp_path_factory):
    src = randomise(medvit.create_backbone("retfound_cfp", **SMALL))  # 224 -> 14 x 14 grid
    return src, write_mae(src, tmp_path_factory.mktemp("w") / "RETFound_mae_natureCFP.pth")


def test_224_checkpoint_at_256_matches_retfound_interpolation(mae_224):
    src, path = mae_224
    model = medvit.create_backbone("retfound_cfp", weights=path, img_size=256, **SMALL)
    assert model.grid == (16, 16) and model.pos_embed.shape == (1, 257, 64)
    torch.testing.assert_close(model.pos_embed.data, retfound_interpolate(src.pos_embed.data, 16))
    assert model.forward_features(torch.randn(1, 3, 256, 256)).shape == (1, 257, 64)


def test_224_checkpoint_at_320x256(mae_224):
    src, path = mae_224
    model = medvit.create_backbone("retfound_cfp", weights=path, img_size=(320, 256), **SMALL)
    assert model.grid == (20, 16) and model.pos_embed.shape == (1, 1 + 320, 64)
    torch.testing.assert_close(model.pos_embed.data[:, :1], src.pos_embed.data[:, :1])  # CLS kept
    assert model.forward_features(torch.randn(1, 3, 320, 256)).shape == (1, 321, 64)


def test_runtime_resampling_equals_load_time_resampling(mae_224):
    src, path = mae_224
    at_320 = medvit.create_backbone("retfound_cfp", weights=path, img_size=(320, 256), **SMALL).eval()
    x = torch.randn(1, 3, 320, 256)
    with torch.no_grad():
        torch.testing.assert_close(src.eval().forward_features(x), at_320.forward_features(x))


def test_3d_96_checkpoint_at_other_crops(tmp_path):
    src = randomise(medvit.create_backbone("hiendmae_ct", **SMALL3D))  # 96^3 -> 8^3
    path = write_hiendmae(src, tmp_path / "hi_end_mae_10k.pth")
    model = medvit.create_backbone("hiendmae_ct", weights=path, img_size=(120, 120, 60), **SMALL3D)
    assert model.grid == (10, 10, 5) and model.pos_embed.shape == (1, 500, 48)
    want = F.interpolate(
        src.pos_embed.data.reshape(1, 8, 8, 8, 48).permute(0, 4, 1, 2, 3),
        size=(10, 10, 5),
        mode="trilinear",
        align_corners=False,
    )
    torch.testing.assert_close(model.pos_embed.data, want.permute(0, 2, 3, 4, 1).reshape(1, 500, 48))
    # 128 x 128 x 64 is not a multiple of the 12^3 patch: zero-pad to the 11 x 11 x 6 grid
    padded = medvit.create_backbone(
        "hiendmae_ct", weights=path, img_size=(128, 128, 64), dynamic_img_pad=True, **SMALL3D
    )
    assert padded.grid == (11, 11, 6)
    out = padded.forward_features(torch.randn(1, 1, 128, 128, 64))
    assert out.shape == (1, 1 + 11 * 11 * 6, 48)


def test_3d_patch8_96_to_128x128x64(tmp_path):
    src = randomise(medvit.create_backbone("vit_tiny_patch8_3d", img_size=96, **SMALL3D))
    medvit.backbones.save_backbone(src, tmp_path / "w.safetensors")
    model = medvit.create_backbone(
        "vit_tiny_patch8_3d", weights=tmp_path / "w.safetensors", img_size=(128, 128, 64), **SMALL3D
    )
    assert model.grid == (16, 16, 8) and model.pos_embed.shape == (1, 1 + 16 * 16 * 8, 48)
    assert model.forward_features(torch.randn(1, 1, 128, 128, 64)).shape == (1, 1 + 2048, 48)
