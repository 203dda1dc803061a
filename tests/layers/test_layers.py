"""Attention, MLP/SwiGLU, LayerScale, drop path, patch embedding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medvit.errors import InputError
from medvit.layers import Attention, Block, DropPath, LayerScale, PatchEmbed, SwiGLU


def test_attention_matches_softmax_attention():
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4).eval()
    x = torch.randn(2, 7, 32)
    q, k, v = F.linear(x, attn.qkv.weight, attn.qkv.bias).reshape(2, 7, 3, 4, 8).permute(2, 0, 3, 1, 4)
    weights = (q @ k.transpose(-1, -2) / 8**0.5).softmax(-1)
    want = attn.proj((weights @ v).transpose(1, 2).reshape(2, 7, 32))
    torch.testing.assert_close(attn(x), want)


def test_masked_k_bias_has_no_effect():
    torch.manual_seed(0)
    attn = Attention(16, num_heads=2, mask_k_bias=True).eval()
    x = torch.randn(1, 5, 16)
    with torch.no_grad():
        attn.qkv.bias.normal_()
        before = attn(x)
        attn.qkv.bias[16:32] += 10.0
        torch.testing.assert_close(attn(x), before)
    assert "k_bias_mask" not in attn.state_dict()


def test_swiglu_matches_unfused_form():
    torch.manual_seed(0)
    ffn = SwiGLU(8, hidden_dim=12)
    x = torch.randn(3, 8)
    w1, w2 = ffn.w12.weight.chunk(2)
    b1, b2 = ffn.w12.bias.chunk(2)
    want = ffn.w3(F.silu(x @ w1.T + b1) * (x @ w2.T + b2))
    torch.testing.assert_close(ffn(x), want)


def test_layer_scale_and_drop_path():
    ls = LayerScale(4, init_values=0.5)
    assert torch.equal(ls(torch.ones(2, 4)), torch.full((2, 4), 0.5))
    dp = DropPath(0.5)
    x = torch.ones(1000, 3)
    dp.eval()
    assert torch.equal(dp(x), x)
    dp.train()
    out = dp(x)
    assert set(out.unique().tolist()) <= {0.0, 2.0} and 0.3 < out[:, 0].mean() / 2 < 0.7
    with pytest.raises(ValueError):
        DropPath(1.0)


def test_block_runs_with_both_ffn_layers():
    x = torch.randn(2, 5, 16)
    for ffn in ("mlp", "swiglu"):
        assert Block(16, num_heads=2, mlp_hidden_dim=24, ffn_layer=ffn, init_values=1e-5)(x).shape == x.shape
    with pytest.raises(ValueError, match="ffn_layer"):
        Block(16, num_heads=2, mlp_hidden_dim=24, ffn_layer="moe")


def test_patch_embed_2d_3d_and_errors():
    pe = PatchEmbed(patch_size=4, in_chans=3, embed_dim=8)
    tokens, grid = pe(torch.randn(1, 3, 8, 12))
    assert tokens.shape == (1, 6, 8) and grid == (2, 3)
    with pytest.raises(InputError, match="multiple of the patch size"):
        pe(torch.randn(1, 3, 9, 12))
    with pytest.raises(InputError, match="4D tensor"):
        pe(torch.randn(3, 8, 12))
    pe3 = PatchEmbed(patch_size=4, in_chans=1, embed_dim=8, spatial_dims=3, dynamic_img_pad=True)
    tokens, grid = pe3(torch.randn(1, 1, 8, 9, 4))
    assert tokens.shape == (1, 2 * 3 * 1, 8) and grid == (2, 3, 1)


def test_hiendmae_channel_last_patchify_equals_plain_conv3d():
    """Hi-End-MAE embeds patchified voxels laid out [ph, pw, pd, C]; that is a plain Conv3d on the volume."""
    torch.manual_seed(0)
    p = 4
    for chans in (1, 2):
        pe = PatchEmbed(patch_size=p, in_chans=chans, embed_dim=8, spatial_dims=3)
        x = torch.randn(2, chans, 8, 12, 4)
        b, c, h, w, d = x.shape
        # patchify channel-last as the authors do: [B, gh*gw*gd, ph*pw*pd*C]
        patches = x.reshape(b, c, h // p, p, w // p, p, d // p, p).permute(0, 2, 4, 6, 3, 5, 7, 1)
        patches = patches.reshape(b, -1, p * p * p * c)
        # their embed: each token back to [ph, pw, pd, C], channels first, then Conv3d(k=s=patch)
        vox = patches.reshape(-1, p, p, p, c).permute(0, 4, 1, 2, 3)
        theirs = pe.proj(vox).reshape(b, -1, 8)
        torch.testing.assert_close(pe(x)[0], theirs)
        if chans == 1:  # and MONAI's linear patch embedding with weight.flatten(1) (p1 p2 p3 c order)
            linear = patches @ pe.proj.weight.flatten(1).T + pe.proj.bias
            torch.testing.assert_close(pe(x)[0], linear)
