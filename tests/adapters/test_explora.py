"""ExPLoRA: which parameters train, the parameter budget, frozen tensors staying bit-identical through AdamW
with weight decay, q/v-only updates of the fused qkv, merging and export back to the plain keys."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_2d, tiny_3d
from torch import nn

from medvit.adapters import apply_explora, count_parameters, remove_lora
from medvit.adapters.lora import LoRALinear, lora_layers, merge_lora, unmerge_lora
from medvit.backbones import create_backbone
from medvit.models import build_model


def _trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_trainable_set_is_last_blocks_norms_and_lora_factors():
    b = tiny_2d(depth=4)
    apply_explora(b, unfreeze_blocks=1, rank=4)
    last = {n for n, _ in b.named_parameters() if n.startswith("blocks.3.")}
    norms = {f"blocks.{i}.{nm}.{p}" for i in range(3) for nm in ("norm1", "norm2") for p in ("weight", "bias")}
    norms |= {"norm.weight", "norm.bias"}
    lora = {f"blocks.{i}.attn.qkv.{f}" for i in range(3) for f in ("lora_a", "lora_b")}
    assert _trainable(b) == last | norms | lora
    frozen = {n for n, p in b.named_parameters() if not p.requires_grad}
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.base.weight"} <= frozen
    # LoRA only outside the unfrozen block, on the q and v rows of the fused qkv (one layer per block holding
    # an independent pair for q and one for v)
    assert [type(blk.attn.qkv) for blk in b.blocks] == [LoRALinear] * 3 + [nn.Linear]
    d = b.embed_dim
    qkv = b.blocks[0].attn.qkv
    assert qkv.lora_rows.tolist() == list(range(d)) + list(range(2 * d, 3 * d))
    assert qkv.parts == {"q": d, "v": d}
    assert qkv.lora_b.shape == (2 * d, 4) and qkv.lora_a.shape == (2 * 4, d)
    assert {p: (a.shape, b_.shape) for p, (a, b_) in qkv.pairs().items()} == {
        "q": ((4, d), (d, 4)),
        "v": ((4, d), (d, 4)),
    }
    assert b.explora["lora_blocks"] == [0, 1, 2] and b.explora["trainable_blocks"] == [3]
    assert b.explora["parameters"]["trainable"] == count_parameters(b)[0]


def test_fc_norm_and_no_norms_and_edge_depths():
    b = tiny_2d(depth=3, global_pool="avg", fc_norm=True)
    apply_explora(b, unfreeze_blocks=0)
    assert {"fc_norm.weight", "fc_norm.bias"} <= _trainable(b)
    assert len(lora_layers(b)) == 3

    b = tiny_2d(depth=3)
    apply_explora(b, unfreeze_blocks=1, unfreeze_norms=False)
    assert not any("norm" in n for n in _trainable(b) if not n.startswith("blocks.2."))

    b = tiny_2d(depth=3)
    apply_explora(b, unfreeze_blocks=3)  # every block in full, no LoRA
    assert not lora_layers(b)
    assert _trainable(b) == {n for n, _ in b.named_parameters() if n.startswith(("blocks.", "norm."))}


def test_vit_b_trainable_fraction_by_hand():
    """ViT-B/16 at 224 (D=768, 12 blocks, MLP 3072), rank 8, one unfrozen block, LoRA on q and v."""
    d, depth, r, k, hidden, tokens = 768, 12, 8, 1, 3072, 197
    with torch.device("meta"):
        b = create_backbone(
            "vit_tiny_patch16", embed_dim=d, depth=depth, num_heads=12, mlp_ratio=4.0, img_size=224
        )
    apply_explora(b, unfreeze_blocks=k, rank=r)
    block = (2 * d) + (3 * d * d + 3 * d) + (d * d + d) + (2 * d) + (d * hidden + hidden) + (hidden * d + d)
    base = 3 * 16 * 16 * d + d + d + tokens * d + depth * block + 2 * d  # patch embed, cls, pos, blocks, norm
    lora = 2 * (r * d + d * r)  # an independent A [r, D] and B [D, r] for q and for v per LoRA block: 4rD
    trainable = k * block + (depth - k) * (4 * d + lora) + 2 * d
    assert (block, base) == (7_087_872, 85_798_656)
    assert count_parameters(b) == (trainable, base + (depth - k) * lora)
    assert lora == 4 * r * d == 24_576
    assert (trainable, base + (depth - k) * lora) == (7_393_536, 86_068_992)
    assert b.explora["parameters"]["trainable_pct"] == pytest.approx(100 * 7_393_536 / 86_068_992)
    assert 8.58 < b.explora["parameters"]["trainable_pct"] < 8.60  # 8.59 %, within the paper's 5-10 %


@pytest.mark.parametrize("three_d", [False, True])
def test_adamw_with_weight_decay_leaves_frozen_tensors_bit_identical(three_d):
    b = (tiny_3d(depth=3) if three_d else tiny_2d(depth=3)).train()
    apply_explora(b, unfreeze_blocks=1, rank=4, dropout=0.1)
    before = {n: t.detach().clone() for n, t in b.state_dict().items()}
    trainable = _trainable(b)
    opt = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.1)  # frozen ones included on purpose
    g = torch.Generator().manual_seed(0)
    size = (1, 16, 16, 16) if three_d else (3, 32, 32)
    for _ in range(3):
        x = torch.randn(2, *size, generator=g)
        opt.zero_grad()
        b.forward_features(x).pow(2).mean().backward()
        opt.step()
    after = b.state_dict()
    for name, value in before.items():
        if name in trainable:
            assert not torch.equal(value, after[name]), f"{name} did not train"
        else:
            assert torch.equal(value, after[name]), f"{name} changed while frozen"


def _trained_explora(depth: int = 3):
    b = tiny_2d(depth=depth)
    original = {n: t.detach().clone() for n, t in b.state_dict().items()}
    apply_explora(b, unfreeze_blocks=1, rank=4)
    opt = torch.optim.AdamW([p for p in b.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.05)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        opt.zero_grad()
        b.forward_features(torch.randn(2, 3, 32, 32, generator=g)).pow(2).mean().backward()
        opt.step()
    return b.eval(), original


def test_merge_touches_only_q_and_v_rows_and_matches_unmerged():
    b, original = _trained_explora()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        unmerged = b.forward_features(x)
        merge_lora(b)
        merged = b.forward_features(x)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-4)
    d = b.embed_dim
    for i, layer in enumerate(lora_layers(b)):
        w0, b0 = original[f"blocks.{i}.attn.qkv.weight"], original[f"blocks.{i}.attn.qkv.bias"]
        assert torch.equal(layer.base.weight[d : 2 * d], w0[d : 2 * d])  # k rows exactly as before
        assert torch.equal(layer.base.bias, b0)  # the bias (k rows included) never changes
        assert not torch.equal(layer.base.weight[:d], w0[:d]) and not torch.equal(
            layer.base.weight[2 * d :], w0[2 * d :]
        )
    unmerge_lora(b)
    for i, layer in enumerate(lora_layers(b)):
        assert torch.equal(layer.base.weight[d : 2 * d], original[f"blocks.{i}.attn.qkv.weight"][d : 2 * d])
    with torch.no_grad():
        torch.testing.assert_close(b.forward_features(x), unmerged, atol=1e-5, rtol=1e-4)


def test_remove_lora_gives_original_keys_and_outputs():
    b, original = _trained_explora()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = b.forward_features(x)
    remove_lora(b)
    assert set(b.state_dict()) == set(original)
    assert not lora_layers(b)
    d = b.embed_dim
    assert torch.equal(
        b.state_dict()["blocks.0.attn.qkv.weight"][d : 2 * d], original["blocks.0.attn.qkv.weight"][d : 2 * d]
    )
    with torch.no_grad():
        torch.testing.assert_close(b.forward_features(x), want, atol=1e-5, rtol=1e-4)
    # the plain backbone reloads the exported state strictly
    fresh = tiny_2d(depth=3)
    fresh.load_state_dict(b.state_dict(), strict=True)


def test_build_model_registers_explora():
    spec = dict(
        backbone=dict(
            name="vit_tiny_patch16", img_size=[32, 32], options=dict(embed_dim=32, depth=3, num_heads=2)
        ),
        adapter=dict(name="explora", options=dict(unfreeze_blocks=2, rank=2, targets=["q", "v"])),
        head=dict(name="linear"),
        num_classes=3,
    )
    model = build_model(spec)
    assert model.backbone.explora["unfreeze_blocks"] == 2 and len(lora_layers(model)) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(unfreeze_blocks=-1), r"unfreeze_blocks must be in \[0, 2\]"),
        (dict(unfreeze_blocks=3), r"unfreeze_blocks must be in \[0, 2\]"),
        (dict(unfreeze_blocks=1.5), "unfreeze_blocks must be an integer"),
        (dict(unfreeze_blocks=True), "unfreeze_blocks must be an integer"),
        (dict(rank=0), "rank"),
        (dict(dropout=1.0), "dropout"),
        (dict(targets=("nope",)), "targets"),
        (dict(targets=()), "targets"),
    ],
)
def test_bad_arguments(kwargs, match):
    b = tiny_2d(depth=2)
    with pytest.raises(ValueError, match=match):
        apply_explora(b, **kwargs)
    assert not lora_layers(b)


def test_refuses_a_backbone_that_already_has_lora():
    b = apply_explora(tiny_2d(depth=2))
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_explora(b)
    with pytest.raises(ValueError, match="blocks"):
        apply_explora(nn.Linear(2, 2))
