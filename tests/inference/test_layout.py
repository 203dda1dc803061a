"""Channels-last inference on the CPU: same outputs, same state dict, inputs told their layout."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from medvit.inference.layout import GroupwiseInstanceNorm, channels_last


@pytest.mark.parametrize("spatial", [(5, 7, 4), (16, 16, 16)], ids=["instance_norm-path", "group_norm-path"])
@pytest.mark.parametrize("affine", [False, True])
def test_groupwise_instance_norm_equals_instance_norm(affine, spatial):
    torch.manual_seed(0)
    norm = nn.InstanceNorm3d(6, affine=affine)
    if affine:
        nn.init.normal_(norm.weight), nn.init.normal_(norm.bias)
    x = torch.randn(2, 6, *spatial) * 3 + 1
    ours = GroupwiseInstanceNorm(norm)
    torch.testing.assert_close(ours(x.contiguous(memory_format=torch.channels_last_3d)), norm(x))
    assert ours.state_dict().keys() == norm.state_dict().keys()


def test_unetr_gives_the_same_logits_channels_last(tmp_path):
    from packages import make_package

    from medvit.package import load_package

    net = load_package(make_package(tmp_path / "seg", "seg3d")).build().eval()
    before = copy.deepcopy(net)
    x = torch.rand(2, 1, 32, 32, 32)
    fmt = channels_last(net, 3)
    assert fmt is torch.channels_last_3d
    assert not any(isinstance(m, nn.modules.instancenorm._InstanceNorm) for m in net.modules())
    assert net.state_dict().keys() == before.state_dict().keys()
    with torch.inference_mode():
        torch.testing.assert_close(net(x.contiguous(memory_format=fmt)), before(x), rtol=1e-4, atol=1e-4)


def test_2d_network_and_networks_without_convolutions():
    net2d = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.InstanceNorm2d(4, affine=True), nn.Conv2d(4, 2, 1))
    before = copy.deepcopy(net2d)
    assert channels_last(net2d, 2) is torch.channels_last
    x = torch.randn(1, 3, 9, 11)
    torch.testing.assert_close(net2d(x.contiguous(memory_format=torch.channels_last)), before(x))
    assert channels_last(nn.Sequential(nn.Linear(4, 2)), 3) is None
    assert channels_last(before, 3) is None  # 2D convolutions only: nothing to gain for a 3D layout
    kept = nn.Sequential(nn.Conv3d(1, 2, 1), nn.InstanceNorm3d(2, track_running_stats=True))
    channels_last(kept, 3)
    assert isinstance(kept[1], nn.InstanceNorm3d)  # running statistics: left as it is
