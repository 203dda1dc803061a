"""Shared fixtures: the real sample files that installed packages ship (pydicom, nibabel), and helpers."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# helpers shared by several test folders (tiny_models.py) import as plain modules under importlib mode
sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import tiny_2d, tiny_3d  # noqa: E402


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pydicom_files() -> Path:
    import pydicom.data

    return Path(pydicom.data.__file__).parent / "test_files"


@pytest.fixture(scope="session")
def nibabel_files() -> Path:
    import nibabel

    return Path(nibabel.__file__).parent / "tests" / "data"


@pytest.fixture(scope="session")
def ct_series(pydicom_files) -> Path:
    """A real 5-slice CT series (16x16, 0.488 mm pixels, 2.5 mm slices)."""
    return pydicom_files / "dicomdirtests" / "98892001" / "CT5N"


@pytest.fixture(scope="session")
def uneven_series(pydicom_files) -> Path:
    """A real 4-slice CT series with a gap: steps 202.5, 1.25, 1.25 mm."""
    return pydicom_files / "dicomdirtests" / "77654033" / "CT2"


@pytest.fixture(scope="session")
def mixed_orientation_series(pydicom_files) -> Path:
    """A real MR series whose seven slices all have different orientations."""
    return pydicom_files / "dicomdirtests" / "98892003" / "MR700"


@pytest.fixture
def editable_series(ct_series, tmp_path):
    """Copy the CT series into tmp_path and return ``(folder, edit)``; ``edit(fn)`` rewrites each file."""
    import pydicom

    folder = tmp_path / "series"
    shutil.copytree(ct_series, folder)

    def edit(fn):
        for i, f in enumerate(sorted(folder.iterdir())):
            ds = pydicom.dcmread(f)
            fn(ds, i)
            ds.save_as(f)
        return folder

    return folder, edit


@pytest.fixture(scope="session")
def sitk_affine():
    """4x4 voxel -> RAS affine of a SimpleITK image (independent of medvit's own geometry code)."""
    return _sitk_affine


def _sitk_affine(img) -> np.ndarray:
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(img.GetSpacing())[None, :]
    affine[:3, 3] = img.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


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
