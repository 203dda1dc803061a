"""``save_official``: every family's backbone written back in its official key layout, reloaded strictly.

The layouts are checked against the independent fixture writers in ``layouts.py`` (which follow the authors'
published key facts): a file loaded and written back with its dropped tensors as ``extra`` reproduces the
fixture key for key.
"""

from __future__ import annotations

import pytest
import torch
from layouts import D_DEC, example_input, randomise, tiny_kwargs, write_official
from tiny_models import tiny_2d

import medvit
from medvit.adapters import apply_explora, apply_lora, remove_lora
from medvit.adapters.lora import lora_layers
from medvit.backbones import CheckpointError, VisionTransformer, get_entry, list_backbones, save_official
from medvit.backbones.checkpoints import matches

FAMILY_NAMES = [n for n in list_backbones() if get_entry(n).family is not None]
INNER = ("model", "teacher", "state_dict")


def tiny(name: str, **extra):
    return medvit.create_backbone(name, **{**tiny_kwargs(name), **extra})


def _inner(obj: dict) -> dict[str, torch.Tensor]:
    """The state dict inside an official file object."""
    for key in INNER:
        if isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def _masked_k_bias(model) -> dict[str, torch.Tensor]:
    """The model's state with the key bias zeroed where the model holds it at zero (what loading gives back)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for i, block in enumerate(model.blocks):
        if getattr(block.attn, "k_bias_mask", None) is not None:
            bias = state[f"blocks.{i}.attn.qkv.bias"]
            bias[bias.numel() // 3 : 2 * bias.numel() // 3] = 0
    return state


def test_every_family_has_an_export():
    assert FAMILY_NAMES and all(get_entry(n).family.export is not None for n in FAMILY_NAMES)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_save_official_reloads_strictly_and_exactly(name, tmp_path):
    src = randomise(tiny(name)).eval()
    path = save_official(src, tmp_path / "official.pth")
    assert path == tmp_path / "official.pth" and not list(tmp_path.glob(".*"))  # no temporary left behind
    torch.load(path, map_location="cpu", weights_only=True)  # tensors only: no trust_pickle needed
    loaded = tiny(name, weights=path).eval()
    want, got = _masked_k_bias(src), loaded.state_dict()
    assert set(got) == set(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    x = example_input(src)
    with torch.no_grad():
        # equal up to rounding: src subtracts its random key bias at run time, the loaded model holds zero
        torch.testing.assert_close(loaded.forward_features(x), src.forward_features(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_load_then_export_reproduces_the_official_fixture(name, tmp_path):
    """Fixture (official layout, decoder and heads included) -> load -> save_official with the dropped tensors."""
    src = randomise(tiny(name)).eval()
    fixture, kwargs = write_official(name, src, tmp_path)
    loaded = tiny(name, weights=fixture, **kwargs)
    out = save_official(loaded, tmp_path / "again.pth", extra=loaded.load_report.dropped_state)
    want = _inner(torch.load(fixture, map_location="cpu", weights_only=False))
    got_obj = torch.load(out, map_location="cpu", weights_only=True)
    got = _inner(got_obj)
    assert set(got) == set(want)
    for key, value in want.items():
        if key.endswith(".attn.qkv.bias") and key + "_mask" in want:
            value = value * want[key + "_mask"]  # the exported key bias is the effective one: zero
        assert torch.equal(got[key], value), key
    if got is not got_obj:
        assert list(got_obj) == [next(k for k in INNER if k in got_obj)]


def test_official_key_names(tmp_path):
    def export(name):
        model = randomise(tiny(name))
        return model, torch.load(save_official(model, tmp_path / f"{name}.pth"), weights_only=True)

    for name in ("retfound_cfp", "urfound"):
        _, obj = export(name)
        assert list(obj) == ["model"]
        assert {
            "cls_token",
            "pos_embed",
            "patch_embed.proj.weight",
            "blocks.1.attn.qkv.weight",
            "norm.bias",
        } <= set(obj["model"])

    _, obj = export("retfound_dinov2_cfp")
    assert list(obj) == ["teacher"]
    teacher = obj["teacher"]
    assert {
        "backbone.blocks.0.mlp.w12.weight",
        "backbone.blocks.0.mlp.w3.bias",
        "backbone.blocks.0.ls1.gamma",
    } <= set(teacher)
    assert not any(".mlp.fc" in k or not k.startswith("backbone.") for k in teacher)

    _, obj = export("uni_vitl16")
    assert {"pos_embed", "blocks.0.ls2.gamma", "norm.weight"} <= set(obj)

    model, obj = export("hiendmae_ct")
    assert list(obj) == ["state_dict"]
    sd = obj["state_dict"]
    assert torch.equal(sd["module.encoder_pos_embed"], model.pos_embed.detach())
    assert {
        "module.encoder.cls_token",
        "module.encoder.patch_embed.proj.weight",
        "module.encoder.norm.weight",
    } <= set(sd)
    assert "module.encoder.pos_embed" not in sd and all(k.startswith("module.") for k in sd)

    model, obj = export("dinov3_vits16")
    d = model.embed_dim
    assert torch.equal(obj["storage_tokens"], model.reg_token.detach()) and "reg_token" not in obj
    mask = obj["blocks.0.attn.qkv.bias_mask"]
    assert mask.dtype == torch.float32 and mask.tolist() == [1.0] * d + [0.0] * d + [1.0] * d
    assert obj["blocks.0.attn.qkv.bias"][d : 2 * d].abs().sum() == 0
    assert torch.equal(obj["rope_embed.periods"], model.rope_embed.periods)
    assert torch.equal(obj["mask_token"], torch.zeros(1, d))
    assert "blocks.1.mlp.fc1.weight" in obj

    model, obj = export("dinov3_vits16plus")
    w12 = model.blocks[0].mlp.w12.weight.detach()
    assert torch.equal(torch.cat([obj["blocks.0.mlp.w1.weight"], obj["blocks.0.mlp.w2.weight"]]), w12)
    assert "blocks.0.mlp.w3.weight" in obj and not any(".w12." in k for k in obj)


@pytest.mark.parametrize(
    ("name", "extra", "where"),
    [
        ("retfound_cfp", {"mask_token": torch.ones(1, 1, D_DEC), "decoder_pred.weight": torch.randn(48, D_DEC)},
         {"mask_token": ("model", "mask_token"), "decoder_pred.weight": ("model", "decoder_pred.weight")}),
        ("retfound_dinov2_cfp", {"mask_token": torch.ones(1, 64), "dino_head.mlp.0.weight": torch.randn(8, 64)},
         {"mask_token": ("teacher", "backbone.mask_token"),
          "dino_head.mlp.0.weight": ("teacher", "dino_head.mlp.0.weight")}),
        ("hiendmae_ct",
         {"mask_token": torch.ones(1, 1, D_DEC), "encoder_to_decoder.0.weight": torch.randn(D_DEC, 48)},
         {"mask_token": ("state_dict", "module.mask_token"),
          "encoder_to_decoder.0.weight": ("state_dict", "module.encoder_to_decoder.0.weight")}),
        ("dinov3_vits16", {"mask_token": torch.ones(1, 64)}, {"mask_token": (None, "mask_token")}),
        ("dinov3_vits16plus", {"mask_token": torch.ones(1, 64), "local_cls_norm.weight": torch.ones(64)},
         {"mask_token": (None, "mask_token"), "local_cls_norm.weight": (None, "local_cls_norm.weight")}),
    ],
)  # fmt: skip
def test_extra_tensors_go_where_the_authors_keep_them(name, extra, where, tmp_path):
    model = randomise(tiny(name))
    obj = torch.load(save_official(model, tmp_path / "w.pth", extra=extra), weights_only=True)
    for key, (outer, official) in where.items():
        assert torch.equal((obj[outer] if outer else obj)[official], extra[key])
    loaded = tiny(name, weights=tmp_path / "w.pth")
    for key, value in extra.items():
        assert torch.equal(loaded.load_report.dropped_state[key], value)


@pytest.mark.parametrize(
    ("name", "adapt"),
    [
        ("retfound_cfp", lambda m: apply_explora(m, unfreeze_blocks=1, rank=4)),
        ("hiendmae_ct", lambda m: apply_explora(m, unfreeze_blocks=0, rank=2)),
        ("dinov3_vits16plus", lambda m: apply_explora(m, unfreeze_blocks=1, targets=("q", "v", "proj"))),
        ("uni_vitl16", lambda m: apply_lora(m, rank=4, targets=("qkv", "mlp"))),
    ],
)
def test_adapted_backbone_exports_after_remove_lora(name, adapt, tmp_path):
    model = adapt(randomise(tiny(name))).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in lora_layers(model):
            layer.lora_b.copy_(0.1 * torch.randn(layer.lora_b.shape, generator=g))
    x = example_input(model)
    with torch.no_grad():
        want = model.forward_features(x)
    with pytest.raises(CheckpointError, match="remove_lora"):
        save_official(model, tmp_path / "w.pth")
    assert not (tmp_path / "w.pth").exists()
    remove_lora(model)
    loaded = tiny(name, weights=save_official(model, tmp_path / "w.pth")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_features(x), want, atol=1e-5, rtol=1e-4)
    for key, value in _masked_k_bias(model).items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_refusals(tmp_path):
    with pytest.raises(CheckpointError, match=r"w\.pth: backbone vit_tiny_patch16 has no official file layout"):
        save_official(tiny_2d(depth=1), tmp_path / "w.pth")
    bare = VisionTransformer(embed_dim=32, depth=1, num_heads=2, img_size=32)
    with pytest.raises(CheckpointError, match="names no registered backbone"):
        save_official(bare, tmp_path / "w.pth")
    model = tiny("retfound_cfp")
    with pytest.raises(ValueError, match=r"extra\['decoder_pred.weight'\] must be a tensor"):
        save_official(model, tmp_path / "w.pth", extra={"decoder_pred.weight": [1.0]})
    with pytest.raises(ValueError, match="backbone's own key.*pos_embed"):
        save_official(model, tmp_path / "w.pth", extra={"pos_embed": torch.zeros(1)})
    assert not list(tmp_path.iterdir())


def test_expected_drops_cover_what_the_fixtures_add(tmp_path):
    """What the fixture holds beyond the export is exactly what the family drops on load."""
    for name in FAMILY_NAMES:
        src = randomise(tiny(name))
        fixture, kwargs = write_official(name, src, tmp_path)
        ours = set(_inner(torch.load(save_official(src, tmp_path / "o.pth"), weights_only=True)))
        theirs = set(_inner(torch.load(fixture, map_location="cpu", weights_only=False)))
        family = get_entry(name).family
        assert ours <= theirs, name
        extra = family.normalise({k: torch.zeros(1) for k in theirs - ours})
        assert all(matches(k, family.expected_drops) for k in extra), (name, sorted(extra))


def test_dinov3_mask_token_of_the_ibot_shape_is_written_as_1_by_d(tmp_path):
    model = randomise(tiny("dinov3_vits16"))
    token = torch.randn(1, 1, model.embed_dim)
    obj = torch.load(save_official(model, tmp_path / "w.pth", extra={"mask_token": token}), weights_only=True)
    assert torch.equal(obj["mask_token"], token.reshape(1, -1))
