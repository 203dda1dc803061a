"""Every registry entry: build, forward, backward, save/reload, its own official file layout, bad files."""

from __future__ import annotations

import math

import pytest
import torch
from layouts import example_input, randomise, tiny_kwargs, write_dinov3_hf_from_medvit, write_official

import medvit
from medvit.backbones import CheckpointError, get_entry, save_backbone
from medvit.errors import ConfigError, InputError

NAMES = medvit.list_backbones()

REQUIRED = {
    "retfound_cfp",
    "retfound_oct",
    "retfound_dinov2_cfp",
    "urfound",
    "hiendmae_ct",
    "dinov3_vits16",
    "dinov3_vits16plus",
    "dinov3_vitb16",
    "dinov3_vitl16",
    "dinov3_vith16plus",
    "dinov3_vit7b16",
    "uni_vitl16",
    "vit_tiny_patch16",
    "vit_tiny_patch8_3d",
}

# published parameter counts (millions) of the full-size encoders
PARAMS_M = {
    "dinov3_vits16": 21,
    "dinov3_vits16plus": 29,
    "dinov3_vitb16": 86,
    "dinov3_vitl16": 303,  # the table rounds it to 300M
    "dinov3_vith16plus": 840,
    "dinov3_vit7b16": 6716,
    "retfound_cfp": 303,
    "urfound": 86,
}


def tiny(name: str, **extra) -> torch.nn.Module:
    return medvit.create_backbone(name, **{**tiny_kwargs(name), **extra})


def test_registry_names():
    assert REQUIRED <= set(NAMES)
    assert medvit.create_backbone is medvit.backbones.create_backbone


@pytest.mark.parametrize("name", NAMES)
def test_contract_forward_backward_save_reload(name, tmp_path):
    torch.manual_seed(0)
    model = tiny(name)
    cfg = model.pretrained_cfg
    assert cfg is get_entry(name).cfg and cfg.paper and cfg.source and cfg.license
    assert model.spatial_dims == len(cfg.input_size) - 1
    x = example_input(model)
    out = model.forward_features(x)
    n = math.prod(model.grid)
    assert out.shape == (2, model.num_prefix_tokens + n, model.embed_dim)
    model.train()
    model.forward_features(x).float().pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        ref = model.forward_features(x)
    path = save_backbone(model, tmp_path / "w.safetensors")
    again = tiny(name, weights=path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again.forward_features(x), ref, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_loads_own_official_layout(name, tmp_path):
    torch.manual_seed(1)
    src = randomise(tiny(name)).eval()
    path, kwargs = write_official(name, src, tmp_path)
    model = tiny(name, weights=path, **kwargs).eval()
    x = example_input(src)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), src.forward_features(x), rtol=1e-5, atol=1e-5)
    family = get_entry(name).family
    if family is not None and family.expected_drops:
        report = model.load_report
        assert all(any(__import__("fnmatch").fnmatch(k, p) for p in family.expected_drops) for k in report.dropped)
    if name.startswith("dinov3"):
        folder = write_dinov3_hf_from_medvit(src, tmp_path / "hf")
        hf = tiny(name, weights=folder).eval()
        with torch.no_grad():
            torch.testing.assert_close(hf.forward_features(x), src.forward_features(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_truncated_file_is_refused(name, tmp_path):
    src = tiny(name)
    path, kwargs = write_official(name, src, tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(path.name)) as info:
        tiny(name, weights=path, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", NAMES)
def test_missing_key_is_refused(name, tmp_path):
    src = tiny(name)
    sd = {k: v for k, v in src.state_dict().items() if k != "blocks.1.norm2.weight"}
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"missing keys: .*blocks\.1\.norm2\.weight"):
        tiny(name, weights=path)


@pytest.mark.parametrize(
    ("name", "other"),
    [("retfound_cfp", "dinov3_vits16"), ("dinov3_vitb16", "retfound_cfp"), ("hiendmae_ct", "uni_vitl16")],
)
def test_wrong_family_is_refused(name, other, tmp_path):
    path, kwargs = write_official(other, tiny(other), tmp_path)
    with pytest.raises(CheckpointError, match="does not fit backbone|unexpected keys|cannot map") as info:
        tiny(name, weights=path, **kwargs)
    assert str(path) in str(info.value)


def test_full_size_models_match_published_sizes():
    for name, millions in PARAMS_M.items():
        with torch.device("meta"):
            model = medvit.create_backbone(name)
        count = sum(p.numel() for p in model.parameters()) / 1e6
        assert abs(count - millions) < max(1.0, 0.01 * millions), (name, count)  # published figures are rounded


def test_full_size_dims_from_references():
    with torch.device("meta"):
        h = medvit.create_backbone("hiendmae_ct")
        r = medvit.create_backbone("retfound_dinov2_cfp")
        d = medvit.create_backbone("dinov3_vitl16")
    assert (h.embed_dim, h.depth, h.num_heads, h.patch_size, h.grid) == (1536, 12, 16, (12, 12, 12), (8, 8, 8))
    assert h.pos_embed.shape == (1, 512, 1536) and h.num_prefix_tokens == 1
    assert r.patch_size == (14, 14) and r.pos_embed.shape == (1, 257, 1024)
    assert d.num_prefix_tokens == 5 and d.pos_embed is None and d.blocks[0].norm1.eps == 1e-5


def test_img_size_sets_the_grid():
    model = tiny("retfound_cfp", img_size=(64, 32))
    assert model.grid == (4, 2) and model.pos_embed.shape[1] == 1 + 8


def test_unknown_name_and_option():
    with pytest.raises(ConfigError, match="unknown backbone"):
        medvit.create_backbone("vit_nonexistent")
    with pytest.raises(ConfigError, match="unknown option.*embed_dims"):
        medvit.create_backbone("vit_tiny_patch16", embed_dims=8)


def test_bad_input_size_is_clear():
    model = tiny("retfound_cfp")
    with pytest.raises(InputError, match="multiple of the patch size"):
        model.forward_features(torch.randn(1, 3, 40, 32))


def test_arch_tag_alias():
    assert medvit.create_backbone("vit_large_patch16.retfound_cfp", **tiny_kwargs("retfound_cfp")).embed_dim == 64
