"""Where and in what precision medvit computes, for training and predict alike (one resolver, so validation
and predict use the same precision on the same machine).

``auto`` precision is bf16 where the device computes it natively (CUDA with bf16, a CPU with AVX512-BF16 or
AMX), float16 on older CUDA devices and float32 elsewhere.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from medvit.errors import ConfigError

PRECISIONS = ("auto", "32", "bf16")
_LIGHTNING = {None: "32-true", torch.bfloat16: "bf16-mixed", torch.float16: "16-mixed"}


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
    """The autocast dtype for ``name`` on ``device``: ``torch.bfloat16``/``torch.float16``, or ``None`` for
    float32.

    ``auto`` picks bf16 where the device computes it natively (CUDA with bf16 support, a CPU with AVX512-BF16
    or AMX), float16 on CUDA devices without bf16, and float32 elsewhere; ``bf16`` forces it, ``32`` turns it
    off.
    """
    text = str(name).strip().lower()
    if text in ("32", "fp32", "float32"):
        return None
    if text == "bf16":
        return torch.bfloat16
    if text != "auto":
        raise ConfigError(f"--precision {name!r}: expected one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else None


def precision_name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "16"}.get(dtype, "32")


def resolve_accelerator(name: str) -> str:
    """A Lightning accelerator: ``auto`` is ``gpu`` where CUDA is available, else ``cpu``.

    Raises:
        ConfigError: ``gpu``/``cuda`` asked for on a machine without a CUDA device.
    """
    text = str(name).strip().lower()
    if text == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if text in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator {name}: no CUDA device on this machine (use auto, which picks the CPU here)"
        )
    return text


def trainer_precision(name: str, accelerator: str) -> str:
    """Lightning's precision string for the ``trainer.precision`` value on ``accelerator`` (resolved):
    ``auto`` follows :func:`resolve_precision`, as predict does."""
    text = str(name)
    if text != "auto":
        return "32-true" if text == "32" else text
    device = torch.device("cuda" if accelerator in ("gpu", "cuda") else "cpu")
    return _LIGHTNING[resolve_precision("auto", device)]


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` in ``dtype`` on ``device``, or a null context for float32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
