"""What the benchmark scripts share: interleaved timing and the process's own memory figures (Linux /proc)."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch


def interleaved_times(
    fns: dict[str, Callable[[], None]], *, warmup: int, repeats: int, device: str = "cpu", ctx=nullcontext
) -> dict[str, list[float]]:
    """Seconds per call of each function, every function once per round (so a noisy neighbour hits all of
    them alike), after ``warmup`` untimed rounds; CUDA is synchronised around each call."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {k: [] for k in fns}
    with ctx():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        for _ in range(repeats):
            for key, fn in fns.items():
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[key].append(time.perf_counter() - t0)
    return times


def status_kb(field: str, pid: int | str = "self") -> int:
    """A ``/proc/<pid>/status`` field in kB (``VmRSS:``, ``VmHWM:``); 0 where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_cpu_peak() -> bool:
    """Reset this process's peak resident memory (``VmHWM``) to its current size; ``False`` where Linux
    does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
