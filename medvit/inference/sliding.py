"""Sliding-window inference with Gaussian blending, batched windows and memory-bounded stitching.

Windows are laid out as MONAI's ``sliding_window_inference`` lays them out (step ``int(roi * (1 - overlap))``,
the last window flush with the far edge) and weighted by the same importance map (a Gaussian with sigma =
roi / 8 as in nnU-Net, Isensee et al., Nature Methods 2021, held at least 1e-3), so the two give the same
numbers. Unlike MONAI, no full-size map of summed weights is kept: the sums are rebuilt slab by slab when
the output is normalised in place. Only one float32 volume of outputs ``[K, *S]`` is held, on the stitching
device; when that device runs out of memory, stitching moves to the CPU (the windows still run on the device).
Windows holding a single value (air that a CT intensity window clips to its floor) are run once per value.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from medvit.errors import MedvitWarning

WindowFn = Callable[[torch.Tensor], torch.Tensor]
ProgressFn = Callable[[int, int], None]
OutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
SLAB_BYTES = 32 << 20
MAX_CACHED = 8  # distinct constant windows kept


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start indices of the windows along one axis of ``size`` voxels (``size >= roi``), as MONAI places them."""
    if roi >= size:
        return [0]
    step = max(int(roi * (1 - overlap)), 1)
    count = math.ceil((size - roi) / step) + 1
    return [min(i * step, size - roi) for i in range(count)]


def importance_map(roi: Sequence[int], blend: str = "gaussian") -> torch.Tensor:
    """The weight of each voxel of a window: MONAI's ``compute_importance_map`` (``gaussian``: sigma 0.125 roi,
    peak 1, held at least 1e-3; or ``constant`` ones)."""
    from monai.data.utils import compute_importance_map  # lazy: import medvit.inference stays free of MONAI

    if blend not in ("gaussian", "constant"):
        raise ValueError(f"blend must be 'gaussian' or 'constant', got {blend!r}")
    return compute_importance_map(tuple(int(r) for r in roi), mode=blend, sigma_scale=0.125, device="cpu")


def _normalise(out: torch.Tensor, starts: list[list[int]], roi: Sequence[int], weight: torch.Tensor) -> None:
    """Divide ``out`` in place by the sum of window weights under each voxel, built one slab at a time."""
    size0 = out.shape[1]
    rest = out.shape[2:]
    rows = max(1, min(size0, (SLAB_BYTES // 4) // max(int(torch.tensor(rest).prod()), 1)))
    weight = weight.to(out.device)
    others = list(itertools.product(*starts[1:]))
    for a in range(0, size0, rows):
        b = min(a + rows, size0)
        total = torch.zeros((b - a, *rest), dtype=torch.float32, device=out.device)
        for s0 in starts[0]:
            lo, hi = max(a, s0), min(b, s0 + roi[0])
            if lo >= hi:
                continue
            part = weight[lo - s0 : hi - s0]
            for other in others:
                sl = tuple(slice(s, s + r) for s, r in zip(other, roi[1:], strict=True))
                total[(slice(lo - a, hi - a), *sl)] += part
        out[:, a:b].div_(total)


def _constant_value(patch: torch.Tensor) -> tuple[float, ...] | None:
    """The per-channel value of a window holding one value per channel (air clipped by a CT window), else None."""
    flat = patch.reshape(patch.shape[0], -1)
    lo, hi = flat.amin(1), flat.amax(1)
    return tuple(lo.tolist()) if torch.equal(lo, hi) else None


def sliding_window(
    image: torch.Tensor,
    fn: WindowFn,
    *,
    roi_size: Sequence[int],
    num_outputs: int,
    overlap: float = 0.5,
    batch_size: int = 1,
    blend: str = "gaussian",
    device: torch.device | str | None = None,
    out_device: torch.device | str | None = None,
    progress: ProgressFn | None = None,
    reuse_constant: bool = True,
    stats: dict | None = None,
) -> torch.Tensor:
    """Run ``fn`` over windows of ``image`` and blend the outputs into one volume.

    Args:
        image: ``[C, *S]`` (2D or 3D), on any device.
        fn: ``[B, C, *roi] -> [B, K, *roi]`` (probabilities or logits; cast to float32 when stitched).
        roi_size: Window size; an image smaller than the window is zero-padded (centred), as MONAI does.
        num_outputs: ``K``, the channels ``fn`` returns.
        overlap: Fraction of the window shared by neighbours (0 <= overlap < 1).
        batch_size: Windows per call of ``fn``.
        blend: ``gaussian`` or ``constant`` weights.
        device: Where windows run (default: the image's device).
        out_device: Where outputs are stitched (default: ``device``).
        progress: Called with ``(windows done, windows in all)`` after each batch.
        reuse_constant: Run ``fn`` once per distinct constant window (e.g. air, which a CT intensity window
            clips to one value) and reuse its output for the others: ``fn`` sees the same input there, so the
            result is the same, only sooner. ``fn`` must not depend on where the window is.
        stats: Filled with ``windows`` (in all) and ``reused`` (constant windows not run again).

    Returns:
        ``[K, *S]`` float32 on ``out_device``: the weighted mean of the window outputs under each voxel.
    """
    spatial = tuple(int(s) for s in image.shape[1:])
    roi = tuple(int(r) for r in roi_size)
    if len(roi) != len(spatial):
        raise ValueError(f"roi_size {roi} does not match a {len(spatial)}D image")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    device = torch.device(device) if device is not None else image.device
    out_device = torch.device(out_device) if out_device is not None else device
    batch_size = max(int(batch_size), 1)

    pads = [max(r - s, 0) for r, s in zip(roi, spatial, strict=True)]
    if any(pads):
        flat = [p for total in reversed(pads) for p in (total // 2, total - total // 2)]
        image = F.pad(image, flat)
    padded = tuple(int(s) for s in image.shape[1:])
    starts = [window_starts(s, r, overlap) for s, r in zip(padded, roi, strict=True)]
    weight = importance_map(roi, blend).to(device)
    out = torch.zeros((num_outputs, *padded), dtype=torch.float32, device=out_device)
    total = math.prod(len(s) for s in starts)
    cache: dict[tuple[float, ...], torch.Tensor] = {}  # constant value -> its weighted output
    later: list[tuple[tuple[slice, ...], tuple[float, ...]]] = []  # constant windows seen before
    pending: list[tuple[tuple[slice, ...], tuple[float, ...] | None]] = []
    done = 0

    def run(batch_windows) -> None:
        nonlocal done
        batch = torch.stack([image[(slice(None), *sl)] for sl, _ in batch_windows]).to(device, non_blocking=True)
        pred = fn(batch)
        if pred.shape[1] != num_outputs or tuple(pred.shape[2:]) != roi:
            raise ValueError(f"window function returned {tuple(pred.shape)}, expected (B, {num_outputs}, *{roi})")
        pred = (pred.float() * weight).to(out_device)
        for i, (sl, key) in enumerate(batch_windows):
            out[(slice(None), *sl)] += pred[i]
            if key is not None:
                cache[key] = pred[i].clone()
        done += len(batch_windows)
        if progress is not None:
            progress(done, total)

    for start in itertools.product(*starts):
        sl = tuple(slice(s, s + r) for s, r in zip(start, roi, strict=True))
        key = _constant_value(image[(slice(None), *sl)]) if reuse_constant else None
        if key is not None and (key in cache or any(k == key for _, k in pending)):
            later.append((sl, key))
            continue
        if key is not None and len(cache) >= MAX_CACHED:
            key = None
        pending.append((sl, key))
        if len(pending) == batch_size:
            run(pending)
            pending = []
    if pending:
        run(pending)
    for sl, key in later:
        out[(slice(None), *sl)] += cache[key]
    if later and progress is not None:
        progress(total, total)
    if stats is not None:
        stats.update(windows=total, reused=len(later))

    _normalise(out, starts, roi, weight)
    if any(pads):
        crop = tuple(slice(p // 2, p // 2 + s) for p, s in zip(pads, spatial, strict=True))
        out = out[(slice(None), *crop)].contiguous()
    return out


def sliding_window_with_fallback(image: torch.Tensor, fn: WindowFn, **kwargs) -> torch.Tensor:
    """:func:`sliding_window`, stitching on the CPU instead when the stitching device runs out of memory.

    Says so with one :class:`~medvit.errors.MedvitWarning`. Errors on the CPU are not retried.
    """
    out_device = torch.device(kwargs.pop("out_device", None) or kwargs.get("device") or image.device)
    try:
        return sliding_window(image, fn, out_device=out_device, **kwargs)
    except OutOfMemoryError:
        if out_device.type == "cpu":
            raise
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    warnings.warn(
        f"out of memory stitching windows on {out_device}: stitching on the CPU instead (slower)",
        MedvitWarning,
        stacklevel=2,
    )
    return sliding_window(image, fn, out_device=torch.device("cpu"), **kwargs)
