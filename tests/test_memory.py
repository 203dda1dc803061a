"""Process memory settings for post-processing workers: applied without torch."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import sys

import pytest

from medvit.memory import mmap_large_allocations


def _imported() -> list[str]:
    return sorted(m for m in ("torch", "monai", "medvit.inference.slides") if m in sys.modules)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_worker_setting_applies_and_imports_no_torch():
    assert mmap_large_allocations() is True
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(1, mp_context=ctx, initializer=mmap_large_allocations) as pool:
        assert pool.submit(_imported).result() == []  # a worker stays small: no torch, no MONAI
