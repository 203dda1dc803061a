"""Flip TTA against the direct computation: flip the input, run the model, flip back, average."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from medvit.inference.tta import flip_sets, with_flip_tta


def test_flip_sets():
    assert flip_sets([]) == [()]
    assert flip_sets([2, 0]) == [(), (0,), (2,), (0, 2)]
    assert len(flip_sets([0, 1, 2])) == 8


def _net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 3, 3, padding=1), torch.nn.Conv3d(3, 3, (3, 1, 5), padding=(1, 0, 2))
    )
    return lambda x: net(x).softmax(1)


@pytest.mark.parametrize("axes", [[0], [0, 2], [0, 1, 2]])
def test_equals_direct_computation(axes):
    fn = _net()
    x = torch.randn(2, 1, 6, 5, 7)
    with torch.no_grad():
        ours = with_flip_tta(fn, axes)(x)
        outs = []
        for n in range(len(axes) + 1):
            for combo in itertools.combinations(axes, n):
                dims = [a + 2 for a in combo]
                outs.append(torch.flip(fn(torch.flip(x, dims)), dims) if dims else fn(x))
        direct = torch.stack(outs).mean(0)
    torch.testing.assert_close(ours, direct)
    assert not torch.allclose(ours, fn(x).detach())  # the model is not flip-invariant: TTA changed something


def test_no_axes_is_the_model_itself():
    fn = _net()
    assert with_flip_tta(fn, []) is fn


def test_classifier_outputs_are_averaged_without_flipping_back():
    torch.manual_seed(0)
    w = torch.randn(3, 4 * 5)

    def fn(x):
        return (x.flatten(1) @ w.T).softmax(1)

    x = torch.randn(2, 1, 4, 5)
    ours = with_flip_tta(fn, [1], spatial_outputs=False)(x)
    torch.testing.assert_close(ours, (fn(x) + fn(x.flip(3))) / 2)


def test_predictor_tta_equals_direct_computation(tmp_path):
    """Whole-image 2D segmentation through the Predictor with --tta equals the hand-made flip average."""
    from packages import make_package

    from medvit import Predictor

    package = make_package(tmp_path / "seg2d", "seg2d")  # tta_axes [1], resize to 64x64
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (3, 64, 64)).astype(np.float32)
    plain = Predictor(package, precision="32").predict(image, probabilities=True)
    tta = Predictor(package, precision="32", tta=True).predict(image, probabilities=True)
    net = Predictor(package, precision="32").network
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    x = ((torch.from_numpy(image) / 255 - mean) / std)[None]
    with torch.no_grad():
        direct = (net(x).softmax(1) + net(x.flip(3)).softmax(1).flip(3)) / 2
        once = net(x).softmax(1)
    np.testing.assert_allclose(tta.probabilities, direct[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(plain.probabilities, once[0].numpy(), atol=1e-5)
    assert np.abs(tta.probabilities - plain.probabilities).max() > 1e-4
