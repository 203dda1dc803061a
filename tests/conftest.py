"""Shared fixtures: paths to the real sample files that installed packages ship."""

from __future__ import annotations

from pathlib import Path

import pytest


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
