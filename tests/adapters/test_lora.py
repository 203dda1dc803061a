import copy

import pytest
import torch
from tiny_models import step_and_compare, tiny_2d
from torch import nn

from medvit.adapters import count_parameters
from medvit.adapters.lora import (
    LoRALinear,
    apply_lora,
    lora_layers,
    merge_lora,
    remove_lora,
    unmerge_lora,
)


def _randomise(model):
    g = torch.Generator().manual_seed(1)
    for layer in lora_layers(model):
        with torch.no_grad():
            layer.lora_b.copy_(torch.randn(layer.lora_b.shape, generator=g) * 0.1)


def test_starts_equal_and_merge_matches(backbone_and_input):
    backbone, x = backbone_and_input
    backbone.eval()
    ref = backbone.forward_features(x)
    apply_lora(backbone, rank=4, alpha=8, targets=("qkv", "proj", "mlp"))
    assert torch.equal(backbone.forward_features(x), ref)  # B = 0 at init
    _randomise(backbone)
    unmerged = backbone.forward_features(x)
    assert not torch.allclose(unmerged, ref)
    merge_lora(backbone)
    merge_lora(backbone)  # idempotent
    torch.testing.assert_close(backbone.forward_features(x), unmerged, atol=1e-5, rtol=1e-4)
    unmerge_lora(backbone)
    unmerge_lora(backbone)
    torch.testing.assert_close(backbone.forward_features(x), unmerged, atol=1e-5, rtol=1e-4)


def test_targets_and_counts():
    b = tiny_2d()
    total = count_parameters(b)[1]
    apply_lora(b, rank=2, targets=("qkv",))
    layers = lora_layers(b)
    assert len(layers) == len(b.blocks)
    trainable, total_after = count_parameters(b)
    d = b.embed_dim
    assert trainable == len(b.blocks) * 2 * (d + 3 * d)
    assert total_after == total + trainable


def test_only_lora_trains_and_backward(backbone_and_input):
    backbone, x = backbone_and_input
    apply_lora(backbone, rank=2, targets=("qkv", "proj", "fc1", "fc2"))
    names = [n for n, _ in backbone.named_parameters()]
    lora = [n for n in names if "lora_" in n]
    frozen = [n for n in names if "lora_" not in n]
    assert all(not p.requires_grad for n, p in backbone.named_parameters() if n in frozen)
    moved = step_and_compare(backbone, lambda m: m.forward_features(x).pow(2).mean(), frozen, lora)
    assert any(n.endswith("lora_b") for n in moved)


def test_remove_lora_restores_original_keys():
    b = tiny_2d()
    keys = set(b.state_dict())
    x = torch.randn(1, 3, 32, 32)
    apply_lora(b, rank=2)
    _randomise(b)
    out = b.forward_features(x)
    remove_lora(b)
    assert set(b.state_dict()) == keys
    assert not lora_layers(b)
    torch.testing.assert_close(b.forward_features(x), out, atol=1e-5, rtol=1e-4)


def test_lora_linear_dropout_and_copy():
    layer = LoRALinear(nn.Linear(8, 4), rank=2, dropout=0.5)
    layer.lora_b.data.normal_()
    x = torch.randn(3, 8)
    layer.eval()
    torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
    dup = copy.deepcopy(layer)
    dup.merge()
    assert dup.merged and not layer.merged


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(rank=0), "rank"), (dict(dropout=1.5), "dropout"), (dict(targets=("nope",)), "targets")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        apply_lora(tiny_2d(depth=1), **kwargs)


def test_lora_linear_rejects_non_linear():
    with pytest.raises(ValueError, match="base"):
        LoRALinear(nn.Conv2d(1, 1, 1))


# -- row LoRA: q/k/v targets on the fused qkv --------------------------------------------------------------


def test_row_lora_linear_touches_only_its_rows():
    torch.manual_seed(0)
    base = nn.Linear(6, 9)
    layer = LoRALinear(copy.deepcopy(base), rank=2, rows=[7, 0, 1, 6])  # any order; stored sorted
    assert layer.lora_rows.tolist() == [0, 1, 6, 7] and layer.lora_b.shape == (4, 2)
    assert "lora_rows" not in layer.state_dict()
    layer.lora_b.data.normal_()
    delta = layer.delta_weight()
    assert torch.equal(delta[2:6], torch.zeros(4, 6)) and delta[8].abs().sum() == 0
    x = torch.randn(5, 6)
    out = layer(x)
    torch.testing.assert_close(out, nn.functional.linear(x, layer.weight, layer.bias))
    assert torch.equal(out[:, 2:6], base(x)[:, 2:6])
    out.pow(2).sum().backward()
    assert layer.lora_b.grad is not None and layer.lora_b.grad.abs().sum() > 0
    layer.merge()
    torch.testing.assert_close(layer(x), out.detach())
    assert torch.equal(layer.base.weight[2:6], base.weight[2:6]) and torch.equal(
        layer.base.weight[8], base.weight[8]
    )
    layer.unmerge()
    assert torch.equal(layer.base.weight[2:6], base.weight[2:6])
    torch.testing.assert_close(layer.base.weight, base.weight)


@pytest.mark.parametrize(
    ("rows", "match"), [([], "non-empty"), ([0, 9], r"\[0, 9\)"), ([-1], r"\[0, 9\)"), ([1, 1], "distinct")]
)
def test_row_lora_bad_rows(rows, match):
    with pytest.raises(ValueError, match=match):
        LoRALinear(nn.Linear(6, 9), rows=rows)


def test_q_and_v_targets_get_independent_pairs_in_one_layer_and_count():
    b = tiny_2d()
    d = b.embed_dim
    apply_lora(b, rank=2, targets=("q", "v"))
    layers = lora_layers(b)
    assert len(layers) == len(b.blocks)
    assert layers[0].lora_rows.tolist() == list(range(d)) + list(range(2 * d, 3 * d))
    assert layers[0].parts == {"q": d, "v": d}
    assert layers[0].lora_a.shape == (2 * 2, d) and layers[0].lora_b.shape == (2 * d, 2)
    # per block: A_q [r, D], B_q [D, r], A_v [r, D], B_v [D, r] = 4 r D (not the 3 r D of a shared A)
    assert count_parameters(b)[0] == len(b.blocks) * 2 * (2 * d + d * 2)
    assert all(n.endswith(("lora_a", "lora_b")) for n, p in b.named_parameters() if p.requires_grad)
    # a whole-layer target on the same layer wins; all three row targets are the whole layer too
    for targets in (("q", "qkv"), ("q", "k", "v")):
        c = apply_lora(tiny_2d(depth=1), rank=2, targets=targets)
        layer = lora_layers(c)[0]
        assert layer.lora_rows is None and not layer.parts
        assert layer.lora_a.shape == (2, d) and layer.lora_b.shape == (3 * d, 2)
    k_only = apply_lora(tiny_2d(depth=1), rank=2, targets="k")
    assert lora_layers(k_only)[0].lora_rows.tolist() == list(range(d, 2 * d))
    assert lora_layers(k_only)[0].parts == {"k": d} and lora_layers(k_only)[0].lora_a.shape == (2, d)
    # the parts come in q, k, v order whatever the order of the targets
    kq = apply_lora(tiny_2d(depth=1), rank=2, targets=("v", "k"))
    assert list(lora_layers(kq)[0].parts) == ["k", "v"]
    assert lora_layers(kq)[0].lora_rows.tolist() == list(range(d, 3 * d))


def _parted(dropout=0.0):
    torch.manual_seed(0)
    base = nn.Linear(6, 9)
    rows_q, rows_v = [2, 0, 1], [6, 7, 8]
    layer = LoRALinear(copy.deepcopy(base), rank=2, alpha=3.0, dropout=dropout, parts={"q": rows_q, "v": rows_v})
    with torch.no_grad():
        layer.lora_b.normal_()
    return base, layer


def test_parts_are_independent_lora_pairs():
    base, layer = _parted()
    assert list(layer.pairs()) == ["q", "v"] and layer.lora_rows.tolist() == [0, 1, 2, 6, 7, 8]
    assert "lora_rows" not in layer.state_dict()
    assert sorted(n for n, _ in layer.named_parameters()) == ["base.bias", "base.weight", "lora_a", "lora_b"]
    (a_q, b_q), (a_v, b_v) = layer.pairs()["q"], layer.pairs()["v"]
    assert a_q.shape == a_v.shape == (2, 6) and b_q.shape == b_v.shape == (3, 2)
    assert a_q.data_ptr() == layer.lora_a.data_ptr() and a_v.data_ptr() != a_q.data_ptr()  # views, not copies
    assert not torch.equal(a_q, a_v)  # each A initialised on its own
    # the same as two separate LoRA layers, one on the q rows and one on the v rows
    s = layer.scaling
    x = torch.randn(5, 6)
    out = layer(x)
    want = base(x)
    want[:, 0:3] += s * (x @ a_q.T @ b_q.T)
    want[:, 6:9] += s * (x @ a_v.T @ b_v.T)
    torch.testing.assert_close(out, want)
    assert torch.equal(out[:, 3:6], base(x)[:, 3:6])  # the k rows bit for bit
    delta = torch.zeros(9, 6)
    delta[0:3] = s * b_q @ a_q
    delta[6:9] = s * b_v @ a_v
    torch.testing.assert_close(layer.delta_weight(), delta)
    assert torch.equal(layer.delta_weight()[3:6], torch.zeros(3, 6))
    torch.testing.assert_close(out, nn.functional.linear(x, layer.weight, layer.bias))
    # a loss on the v rows alone trains only the v pair: the q factors get exactly zero gradient
    out[:, 6:9].pow(2).sum().backward()
    grad_a, grad_b = layer.lora_a.grad, layer.lora_b.grad
    assert torch.equal(grad_a[:2], torch.zeros(2, 6)) and torch.equal(grad_b[:3], torch.zeros(3, 2))
    assert grad_a[2:].abs().sum() > 0 and grad_b[3:].abs().sum() > 0
    assert layer.base.weight.grad is None


def test_parts_merge_unmerge_and_other_rows_bit_identical():
    base, layer = _parted()
    x = torch.randn(5, 6)
    with torch.no_grad():
        out = layer(x)
        delta = layer.delta_weight()
        layer.merge()
        layer.merge()  # idempotent
        torch.testing.assert_close(layer(x), out)
        torch.testing.assert_close(layer.base.weight, base.weight + delta)
        assert torch.equal(layer.base.weight[3:6], base.weight[3:6])  # the k rows never move
        assert torch.equal(layer.base.bias, base.bias)
        layer.unmerge()
        layer.unmerge()
    assert torch.equal(layer.base.weight[3:6], base.weight[3:6])
    torch.testing.assert_close(layer.base.weight, base.weight)
    torch.testing.assert_close(layer(x), out)
    assert "parts=q:3,v:3" in repr(layer)


def test_parts_draw_their_own_dropout_masks():
    _, layer = _parted(dropout=0.5)
    with torch.no_grad():
        layer.lora_a[2:] = layer.lora_a[:2]  # the same pair on q and v: only the dropout masks differ
        layer.lora_b[3:] = layer.lora_b[:3]
        layer.base.weight.zero_()
        layer.base.bias.zero_()
    x = torch.randn(4, 6)
    layer.eval()
    out = layer(x)
    torch.testing.assert_close(out[:, 0:3], out[:, 6:9])
    layer.train()
    torch.manual_seed(1)
    out = layer(x)
    assert not torch.allclose(out[:, 0:3], out[:, 6:9])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(parts={}), "non-empty mapping"),
        (dict(parts=[[0, 1]]), "non-empty mapping"),
        (dict(parts={"": [0]}), "part names"),
        (dict(parts={"q": []}), "part 'q': rows must be a non-empty"),
        (dict(parts={"q": [0, 9]}), r"part 'q': rows must lie in \[0, 9\)"),
        (dict(parts={"q": [0, 1], "v": [1, 2]}), "must not share rows"),
        (dict(parts={"q": [0]}, rows=[1]), "rows or parts"),
    ],
)
def test_parts_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoRALinear(nn.Linear(6, 9), **kwargs)


def test_row_lora_on_a_backbone_starts_equal_merges_and_removes(backbone_and_input):
    backbone, x = backbone_and_input
    backbone.eval()
    keys = set(backbone.state_dict())
    ref = backbone.forward_features(x)
    apply_lora(backbone, rank=4, targets=("q", "v", "proj"))
    assert torch.equal(backbone.forward_features(x), ref)
    _randomise(backbone)
    unmerged = backbone.forward_features(x)
    assert not torch.allclose(unmerged, ref)
    merge_lora(backbone)
    torch.testing.assert_close(backbone.forward_features(x), unmerged, atol=1e-5, rtol=1e-4)
    remove_lora(backbone)
    assert set(backbone.state_dict()) == keys
    torch.testing.assert_close(backbone.forward_features(x), unmerged, atol=1e-5, rtol=1e-4)
