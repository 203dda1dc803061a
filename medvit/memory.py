"""Process memory settings that need neither torch nor NumPy (post-processing workers import this alone)."""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def mmap_large_allocations(threshold: int = 128 << 10) -> bool:
    """Have glibc serve allocations of ``threshold`` bytes and more from their own mappings, returned to the
    system when freed, instead of a heap that grows to the largest working set seen and stays there (glibc's
    default threshold adapts upwards to 32 MiB). For worker processes whose inputs are a few MB each (slide
    tiles' maps); ``False`` where the C library has no ``mallopt`` (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
