"""MAE: the encoder sees only the visible patches, RETFound's decoder keys load strictly, the objective learns."""

from __future__ import annotations

import math

import pytest
import torch

from medvit.backbones import CheckpointError, create_backbone
from medvit.models import build_model
from medvit.ssl.mae import MaskedAutoencoder, patchify, random_masking, unpatchify

TINY = dict(embed_dim=48, depth=4, num_heads=2)


def _mae(name="vit_tiny_patch16", img=(64, 64), **head):
    bb = create_backbone(name, img_size=img, **TINY)
    return MaskedAutoencoder(bb, **({"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2} | head))


@pytest.mark.parametrize(
    ("name", "img", "channels"), [("vit_tiny_patch16", (64, 64), 3), ("vit_tiny_patch8_3d", (32, 32, 16), 1)]
)
@pytest.mark.parametrize("ratio", [0.75, 0.5])
def test_encoder_sees_only_the_visible_patches(name, img, channels, ratio):
    model = _mae(name, img, decoder_dim=48)
    n = math.prod(model.backbone.grid)
    seen = []
    for blk in model.backbone.blocks:
        blk.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    out = model(torch.randn(2, channels, *img), ratio)
    visible = round(n * (1 - ratio))
    assert seen == [1 + visible] * len(model.backbone.blocks)  # CLS + visible patches, in every block
    assert int(out["mask"].sum(1)[0]) == n - visible
    assert out["pred"].shape == (2, n, math.prod(model.patch_size) * channels)


def test_rope_backbone_masks_its_angles_too():
    bb = create_backbone("dinov3_vits16", img_size=(64, 64), **TINY)
    model = MaskedAutoencoder(bb, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    out = model(torch.randn(2, 3, 64, 64))
    out["loss"].backward()
    assert bb.blocks[0].attn.qkv.weight.grad is not None


@pytest.mark.parametrize("size", [(32, 48), (16, 32, 24)])
def test_patchify_round_trip(size):
    patch = (16, 16) if len(size) == 2 else (8, 8, 8)
    x = torch.randn(2, 3, *size)
    tokens = patchify(x, patch)
    grid = [s // p for s, p in zip(size, patch, strict=True)]
    assert tokens.shape == (2, math.prod(grid), math.prod(patch) * 3)
    assert torch.equal(unpatchify(tokens, patch, grid, 3), x)
    # MAE's order inside a token: (p1, p2, C), channels fastest
    assert torch.equal(tokens[0, 0, :3], x[0, :, 0, 0] if len(size) == 2 else x[0, :, 0, 0, 0])


def test_masking_is_a_permutation_and_seeded():
    keep, mask, restore = random_masking(3, 16, 0.75, generator=torch.Generator().manual_seed(0))
    keep2, _, _ = random_masking(3, 16, 0.75, generator=torch.Generator().manual_seed(0))
    assert torch.equal(keep, keep2) and keep.shape == (3, 4)
    for b in range(3):
        assert set(keep[b].tolist()) == set(torch.nonzero(mask[b] == 0).flatten().tolist())


def test_no_masking_reconstructs_the_input_exactly():
    model = _mae()
    x = torch.randn(2, 3, 64, 64)
    out = model(x, 0.0)
    assert out["mask"].sum() == 0
    assert torch.allclose(model.reconstruct(out, x), x, atol=1e-6)


def _retfound_decoder(dim: int, dec: int, depth: int, tokens: int, patch_pixels: int) -> dict[str, torch.Tensor]:
    """MAE's decoder keys as RETFound's pre-training files hold them (models_mae.py names; timm Block)."""
    g = torch.Generator().manual_seed(3)
    r = lambda *s: 0.1 * torch.randn(*s, generator=g)  # noqa: E731
    sd = {"mask_token": r(1, 1, dec), "decoder_embed.weight": r(dec, dim), "decoder_embed.bias": r(dec),
          "decoder_pos_embed": r(1, tokens, dec), "decoder_norm.weight": r(dec), "decoder_norm.bias": r(dec),
          "decoder_pred.weight": r(patch_pixels, dec), "decoder_pred.bias": r(patch_pixels)}  # fmt: skip
    for i in range(depth):
        p = f"decoder_blocks.{i}."
        shapes = (("norm1", (dec,)), ("norm2", (dec,)), ("attn.qkv", (3 * dec, dec)), ("attn.proj", (dec, dec)),
                  ("mlp.fc1", (4 * dec, dec)), ("mlp.fc2", (dec, 4 * dec)))  # fmt: skip
        for name, shape in shapes:
            sd[p + name + ".weight"] = r(*shape)
            sd[p + name + ".bias"] = r(shape[0])
    return sd


def _write_retfound(tmp_path, decoder_depth=2):
    enc = create_backbone("retfound_cfp", img_size=(64, 64), **TINY)
    decoder = _retfound_decoder(48, 32, decoder_depth, 1 + 16, 16 * 16 * 3)
    path = tmp_path / "RETFound_mae_natureCFP.pth"
    torch.save({"model": {**enc.state_dict(), **decoder}}, path)
    return path, enc, decoder


def _spec(weights, **head):
    return {"backbone": {"name": "retfound_cfp", "weights": str(weights), "img_size": [64, 64], "options": TINY},
            "head": {"name": "mae", "options": head}, "num_classes": 0}  # fmt: skip


def test_retfound_file_loads_its_decoder_strictly(tmp_path):
    path, enc, decoder = _write_retfound(tmp_path)
    model = build_model(_spec(path, decoder_heads=2))  # width and depth come from the file
    assert model.loaded_decoder == str(path)
    own = model.state_dict()
    assert set(model.decoder_state_dict()) == set(decoder)  # no missing, no unexpected key
    for k, v in decoder.items():
        assert torch.equal(own[k], v), k
    for k, v in enc.state_dict().items():
        assert torch.equal(own["backbone." + k], v), k
    assert model.backbone.load_report.dropped_state == {}  # not kept in memory afterwards


def test_a_decoder_that_does_not_fit_is_an_error_naming_the_file(tmp_path):
    path, _, _ = _write_retfound(tmp_path)
    with pytest.raises(
        CheckpointError, match=r"RETFound_mae_natureCFP\.pth.*decoder.*unexpected: decoder_blocks\.1"
    ):
        build_model(_spec(path, decoder_dim=32, decoder_depth=1, decoder_heads=2))


def test_mae_loss_falls_when_it_trains():
    torch.manual_seed(0)
    model = _mae()
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    x = torch.stack([torch.sin(3 * xx), torch.cos(2 * yy), xx * yy])[None].repeat(4, 1, 1, 1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(30):
        out = model(x, 0.75, generator=torch.Generator().manual_seed(step % 3))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_hierarchical_decoder_reads_encoder_blocks():
    bb = create_backbone("vit_tiny_patch8_3d", img_size=(32, 32, 32), **TINY)
    model = MaskedAutoencoder(bb, preset="hiendmae", decoder_dim=48, decoder_heads=2)
    assert model.taps == [3, 2, 1]  # 3/4, 1/2, 1/4 deep (Hi-End-MAE: 9, 6, 3 of 12)
    out = model(torch.randn(2, 1, 32, 32, 32))
    out["loss"].backward()
    assert all(p.grad is not None for p in model.encoder_to_decoder.parameters())
    with pytest.raises(ValueError, match="out of range"):
        MaskedAutoencoder(create_backbone("vit_tiny_patch8_3d", img_size=(32,) * 3, **TINY), hierarchical=[7])
