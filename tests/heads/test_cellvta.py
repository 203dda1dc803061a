import numpy as np
import pytest
import torch
from tiny_models import step_and_compare, tiny_2d, tiny_3d

from medvit.heads.cellvta import CellVTA
from medvit.heads.deform_attn import MSDeformAttn, ms_deform_attn_core, reference_points
from medvit.layers.params import count_parameters
from medvit.postprocess import hv_maps

SMALL = dict(num_types=4, num_tissues=3, deform_heads=2, deform_points=2, spm_width=8, decoder_width=8)


@pytest.mark.parametrize("name", ["uni_vitl16", "dinov3_vits16plus", "vit_tiny_patch16"])
def test_three_maps_and_tissue_and_backward(name):
    model = CellVTA(tiny_2d(name), **SMALL)
    out = model(torch.randn(2, 3, 32, 32))
    assert out["nuclei_binary_map"].shape == (2, 2, 32, 32)
    assert out["hv_map"].shape == (2, 2, 32, 32)
    assert out["nuclei_type_map"].shape == (2, 4, 32, 32)
    assert out["tissue_types"].shape == (2, 3)
    sum(v.float().mean() for v in out.values()).backward()
    assert model.injectors[0].gamma.grad is not None


def test_backbone_frozen_by_default():
    model = CellVTA(tiny_2d(), **SMALL)
    names = [n for n, _ in model.named_parameters()]
    frozen = [n for n in names if n.startswith("backbone.")]
    trained = [n for n in names if not n.startswith("backbone.")]
    trainable, total = count_parameters(model)
    assert trainable == total - sum(p.numel() for n, p in model.named_parameters() if n in frozen)
    x = torch.randn(2, 3, 32, 32)
    step_and_compare(model, lambda m: sum(v.pow(2).mean() for v in m(x).values()), frozen, trained)
    assert CellVTA(tiny_2d(), freeze_backbone=False, **SMALL).backbone.blocks[0].norm1.weight.requires_grad


def test_injection_starts_off():
    """gamma = 0: the ViT tokens at init are the frozen backbone's own."""
    backbone = tiny_2d().eval()
    x = torch.randn(1, 3, 32, 32)
    ref = backbone.forward_features(x)
    model = CellVTA(backbone, **SMALL).eval()
    _, pooled = model.forward_features(x)
    torch.testing.assert_close(pooled, ref[:, 0])


def test_predict_instances_returns_typed_instances(monkeypatch):
    model = CellVTA(tiny_2d(), **SMALL).eval()
    yy, xx = np.mgrid[:32, :32]
    inst = np.zeros((32, 32), np.int64)
    inst[(yy - 10) ** 2 + (xx - 10) ** 2 < 25] = 1
    inst[(yy - 22) ** 2 + (xx - 22) ** 2 < 30] = 2
    binary = torch.from_numpy(np.stack([inst == 0, inst > 0]).astype(np.float32) * 10)[None]
    types = torch.from_numpy(np.stack([inst == 0, inst == 1, np.zeros_like(inst), inst == 2]).astype(np.float32))
    maps = {
        "nuclei_binary_map": binary,
        "hv_map": torch.from_numpy(hv_maps(inst))[None],
        "nuclei_type_map": types[None],
    }
    monkeypatch.setattr(model, "forward", lambda x: maps)
    (res,) = model.predict_instances(torch.zeros(1, 3, 32, 32), sobel_ksize=5, min_size=3, marker_min_size=3)
    assert res.instances.max() == 2
    assert sorted(res.types.values()) == [1, 3]


def test_bad_arguments():
    with pytest.raises(ValueError, match="spatial_dims"):
        CellVTA(tiny_3d(), **SMALL)
    with pytest.raises(ValueError, match="4 blocks"):
        CellVTA(tiny_2d(depth=2), **SMALL)
    with pytest.raises(ValueError, match="multiples of 16"):
        CellVTA(tiny_2d(patch_size=8), **SMALL)(torch.zeros(1, 3, 24, 24))
    with pytest.raises(ValueError, match="n_heads"):
        MSDeformAttn(10, n_heads=3)


def test_deformable_sampling_is_exact_at_pixel_centres():
    """Zero offsets at a pixel centre read that pixel; weights mix levels."""
    shapes = [(4, 4), (2, 2)]
    value = torch.arange(20.0).view(1, 20, 1, 1)
    ref = reference_points(shapes)[0]  # pixel centres of both levels
    loc = torch.stack([ref[5], ref[16 + 3]]).view(1, 1, 1, 2, 1, 2)
    w = torch.tensor([0.25, 0.75]).view(1, 1, 1, 2, 1)
    out = ms_deform_attn_core(value, shapes, loc, w)
    assert out.item() == pytest.approx(0.25 * 5 + 0.75 * 19)


def test_deformable_attention_shapes_and_grad():
    attn = MSDeformAttn(16, n_levels=2, n_heads=2, n_points=3)
    feats = torch.randn(2, 16 + 4, 16, requires_grad=True)
    q = torch.randn(2, 4, 16)
    out = attn(q, reference_points([(2, 2)]), feats, [(4, 4), (2, 2)])
    assert out.shape == (2, 4, 16)
    out.sum().backward()
    assert feats.grad is not None and attn.sampling_offsets.weight.grad is not None
    with pytest.raises(ValueError, match="levels"):
        attn(q, reference_points([(2, 2)]), feats, [(4, 4)])
