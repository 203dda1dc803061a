"""Fixtures for the head tests; helpers live in ``tiny_models.py`` (importable: pytest's importlib mode)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "adapters"))

from tiny_models import tiny_2d, tiny_3d  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; with several, OpenMP waits on cores the machine shares."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=["2d", "3d", "dinov3"])
def backbone_and_input(request):
    """A tiny 2D, 3D and DINOv3-style (RoPE, registers, LayerScale, SwiGLU) backbone with an input."""
    if request.param == "2d":
        return tiny_2d(), torch.randn(2, 3, 32, 32)
    if request.param == "3d":
        return tiny_3d(), torch.randn(1, 1, 16, 16, 16)
    return tiny_2d("dinov3_vits16plus", size=32), torch.randn(2, 3, 32, 32)
