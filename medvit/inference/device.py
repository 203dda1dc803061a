"""Where and in what precision predict runs: ``--device auto|cpu|cuda|cuda:N``, ``--precision auto|32|bf16``."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from medvit.errors import ConfigError

PRECISIONS = ("auto", "32", "bf16")


def resolve_device(name: str = "auto") -> tuple[torch.device, str | None]:
    """The torch device for ``name`` and, for ``auto`` without CUDA, a one-line note saying so.

    Raises:
        ConfigError: An unknown name, or a CUDA device that is not there.
    """
    text = str(name).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device()), None
        return torch.device("cpu"), "no CUDA device: predicting on CPU"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA device is available (use --device cpu or auto)")
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are available")
        device = torch.device("cuda", index)
    return device, None


def cpu_has_bf16() -> bool:
    """Whether this CPU does bf16 matrix work natively (AVX512-BF16 or AMX), through oneDNN."""
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: trust oneDNN's own answer
        return True
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``name`` on ``device``: ``torch.bfloat16``, or ``None`` for float32.

    ``auto`` picks bf16 where the device computes it natively (CUDA with bf16 support, a CPU with AVX512-BF16
    or AMX) and float32 elsewhere; ``bf16`` forces it, ``32`` turns it off.
    """
    text = str(name).strip().lower()
    if text in ("32", "fp32", "float32"):
        return None
    if text == "bf16":
        return torch.bfloat16
    if text != "auto":
        raise ConfigError(f"--precision {name!r}: expected one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_bf16() else None


def precision_name(dtype: torch.dtype | None) -> str:
    return "bf16" if dtype == torch.bfloat16 else "32"


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` in ``dtype`` on ``device``, or a null context for float32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
