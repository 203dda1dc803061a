import pytest
import torch
from tiny_models import step_and_compare, tiny_2d, tiny_3d

from medvit.backbones import create_backbone
from medvit.heads.cbam import CBAM
from medvit.heads.funduseg import FunduSegmenter, remove_block_adapters
from medvit.heads.segmenter import MaskTransformer
from medvit.layers.params import count_parameters

SMALL = dict(adapter_dim=8, width=8)


@pytest.mark.parametrize("name", ["vit_tiny_patch16", "dinov3_vits16plus", "uni_vitl16"])
def test_output_at_input_size_and_backward(name):
    model = FunduSegmenter(tiny_2d(name), 3, **SMALL)
    assert model.encoder_size == (32, 32)
    x = torch.randn(2, 3, 40, 40)  # any input size: the pre-adapter resizes to the encoder's
    out = model(x)
    assert out.shape == (2, 3, 40, 40)
    out.mean().backward()
    assert model.pre_adapter.weight.grad is not None


def test_freezing_rules():
    model = FunduSegmenter(tiny_2d(), 2, **SMALL)
    names = [n for n, _ in model.named_parameters()]
    adapters = [n for n in names if ".vit_adapter." in n]
    frozen = [n for n in names if n.startswith("encoder.") and n not in adapters]
    assert len(adapters) == 4 * len(model.encoder.blocks)
    assert all(p.requires_grad == (n not in frozen) for n, p in model.named_parameters())
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 2, (2, 32, 32))
    moved = step_and_compare(model, lambda m: torch.nn.functional.cross_entropy(m(x), y), frozen, adapters)
    assert any(".up." in n for n in moved)
    trainable, total = count_parameters(model)
    assert trainable == total - sum(p.numel() for n, p in model.named_parameters() if n in frozen)


def test_block_adapters_start_as_identity():
    backbone = tiny_2d().eval()
    x = torch.randn(1, 3, 32, 32)
    ref = backbone.forward_intermediates(x, [1, 3])
    model = FunduSegmenter(backbone, 3, **SMALL)
    assert torch.allclose(model.pre_adapter.weight, torch.tensor(0.1))
    for a, b in zip(model.encoder.forward_intermediates(x, [1, 3]), ref, strict=True):
        assert torch.equal(a, b)
    remove_block_adapters(model.encoder)
    assert not any("vit_adapter" in n for n, _ in model.encoder.named_parameters())


@pytest.mark.slow
def test_vit_large_trainable_fraction():
    """RETFound ViT-L/16 (built on the meta device: no memory, no compute): about 10% trains."""
    with torch.device("meta"):
        model = FunduSegmenter(create_backbone("retfound_cfp"), 3)
    trainable, total = count_parameters(model)
    assert total > 300e6
    assert 0.05 < trainable / total < 0.15
    assert count_parameters(model.encoder)[0] == 24 * (1024 * 128 + 128 + 128 * 1024 + 1024)


def test_mask_transformer_and_cbam():
    dec = MaskTransformer(16, 3, d_model=16, n_heads=2)
    masks = dec(torch.randn(2, 12, 16), (3, 4))
    assert masks.shape == (2, 3, 3, 4)
    cbam = CBAM(8, reduction=4)
    x = torch.randn(2, 8, 5, 5)
    assert cbam(x).shape == x.shape


def test_bad_arguments():
    with pytest.raises(ValueError, match="spatial_dims"):
        FunduSegmenter(tiny_3d(), 3)
    with pytest.raises(ValueError, match="taps"):
        FunduSegmenter(tiny_2d(), 3, taps=(1, 2))
    with pytest.raises(ValueError, match="num_classes"):
        FunduSegmenter(tiny_2d(), 0)
    with pytest.raises(ValueError, match="reduction"):
        CBAM(4, reduction=8)
