"""Batched multi-crop views for self-distillation (DINO, Caron et al., ICCV 2021; DINOv2, Oquab et al., 2023).

Every function takes a whole batch ``[B, C, *S]`` (2D ``[B, C, H, W]`` or 3D ``[B, C, H, W, D]``), draws its
random parameters per sample, and applies them with one batched call: crops and flips are one affine
``grid_sample``, intensity jitter is a broadcast multiply-add, blur is a grouped separable convolution. Random
numbers are drawn on the generator's device (the CPU by default) so a seeded ``torch.Generator`` gives the same
views on any accelerator. Inputs must be floating point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "crop_affine",
    "gaussian_blur",
    "gaussian_kernels",
    "intensity_jitter",
    "log_uniform_aspect",
    "multi_crop",
    "random_resized_crop",
]


def _device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _rand(shape: Sequence[int], generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(tuple(shape), generator=generator, device=_device(generator), dtype=torch.float64)


def _uniform(shape: Sequence[int], low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * _rand(shape, generator)


def _check_range(name: str, value: Sequence[float], *, low: float, high: float = math.inf) -> None:
    lo, hi = value
    if not low < lo <= hi <= high:
        raise ValueError(f"{name} must satisfy {low} < min <= max <= {high}, got {tuple(value)}")


def _spatial_dims(x: torch.Tensor) -> int:
    ndim = x.dim() - 2
    if ndim not in (2, 3):
        raise ValueError(f"expected a [B, C, H, W] or [B, C, H, W, D] batch, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point batch, got {x.dtype}")
    return ndim


def _as_size(size: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    out = (int(size),) * ndim if isinstance(size, int) else tuple(int(s) for s in size)
    if len(out) != ndim or min(out) < 1:
        raise ValueError(f"size must be a positive int or {ndim} positive ints, got {size}")
    return out


def log_uniform_aspect(
    n: int, ndim: int, ratio: Sequence[float], *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-axis side factors of random boxes with a log-uniform aspect ratio and a fixed volume.

    In 2D the width/height ratio (last axis over first) is log-uniform in ``ratio``, as torchvision's
    ``RandomResizedCrop`` draws it. In other dimensions each axis gets an independent log-uniform jitter,
    centred so that the volume is kept; with a symmetric range (``lo = 1 / hi``) the aspect of every pair of
    axes stays within ``ratio``.

    Args:
        n: Number of boxes.
        ndim: Spatial dimensions.
        ratio: ``(min, max)`` aspect ratio.
        generator: Random source.

    Returns:
        ``[n, ndim]`` float64 factors whose product along the last axis is 1 (on the generator's device).
    """
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    if ndim == 2:
        log_r = _uniform((n, 1), lo, hi, generator)
        return torch.cat([-0.5 * log_r, 0.5 * log_r], dim=1).exp()
    u = _uniform((n, ndim), lo, hi, generator)
    return (0.5 * (u - u.mean(dim=1, keepdim=True))).exp()


def _crop_boxes(
    batch: int,
    extent: Sequence[int],
    *,
    scale: Sequence[float],
    ratio: Sequence[float],
    generator: torch.Generator | None,
    attempts: int = 10,
) -> torch.Tensor:
    """Side lengths of random crop boxes as fractions of each axis, ``[batch, ndim]`` in ``(0, 1]``.

    Like torchvision, ``attempts`` candidates are drawn per sample and the first one that fits is kept; a
    sample without a fitting candidate gets its first candidate clipped to the image.
    """
    ndim = len(extent)
    ext = torch.tensor(extent, dtype=torch.float64, device=_device(generator))
    frac = _uniform((batch, attempts), scale[0], scale[1], generator)
    aspect = log_uniform_aspect(batch * attempts, ndim, ratio, generator=generator).view(batch, attempts, ndim)
    sides = (frac * ext.prod()).pow(1.0 / ndim).unsqueeze(-1) * aspect
    rel = sides / ext
    fits = (rel <= 1.0).all(dim=-1)
    first = fits.to(torch.uint8).argmax(dim=1)
    return rel[torch.arange(batch, device=rel.device), first].clamp(max=1.0)


def _flip_signs(batch: int, ndim: int, *, flip: bool, generator: torch.Generator | None) -> torch.Tensor:
    """``[batch, ndim]`` of +-1: 2D flips the last (horizontal) axis only, 3D every axis, each with p=0.5."""
    signs = torch.ones(batch, ndim, dtype=torch.float64, device=_device(generator))
    if not flip:
        return signs
    axes = [ndim - 1] if ndim == 2 else list(range(ndim))
    signs[:, axes] = 1.0 - 2.0 * (_rand((batch, len(axes)), generator) < 0.5).double()
    return signs


def crop_affine(rel: torch.Tensor, centre: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """The ``F.affine_grid`` matrices ``[B, n, n + 1]`` of axis-aligned boxes.

    Args:
        rel: ``[B, n]`` box half-extents in normalised coordinates (1 = the whole axis), spatial-axis order.
        centre: ``[B, n]`` box centres in normalised coordinates ``[-1, 1]``, spatial-axis order.
        signs: ``[B, n]`` of +-1; -1 mirrors that axis.

    Returns:
        Affine matrices in ``grid_sample``'s coordinate order (last spatial axis first).
    """
    batch, ndim = rel.shape
    theta = rel.new_zeros(batch, ndim, ndim + 1)
    theta[:, :, :ndim] = torch.diag_embed((rel * signs).flip(-1))
    theta[:, :, ndim] = centre.flip(-1)
    return theta


def random_resized_crop(
    x: torch.Tensor,
    size: int | Sequence[int],
    *,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    flip: bool = True,
) -> torch.Tensor:
    """Crop a random box per sample and resample it to ``size`` with one ``grid_sample`` call.

    The box covers a fraction of the image area (2D) or volume (3D) drawn uniformly in ``scale``, with a
    log-uniform aspect ratio in ``ratio`` (see :func:`log_uniform_aspect` for 3D), at a uniformly random
    position inside the image. Resampling is bilinear (trilinear in 3D) without antialiasing, with
    ``align_corners=False``, so a full-image box at the input size returns the input. With ``flip`` the crop is
    mirrored with probability 0.5 along the horizontal axis (2D) or along each axis independently (3D).

    Args:
        x: ``[B, C, H, W]`` or ``[B, C, H, W, D]`` floating-point batch.
        size: Output spatial size (an int repeats over the axes).
        scale: ``(min, max)`` fraction of the area / volume, in ``(0, 1]``.
        ratio: ``(min, max)`` aspect ratio.
        generator: Random source (its device draws the parameters; the CPU when None).
        flip: Random mirroring.

    Returns:
        ``[B, C, *size]`` crops in ``x``'s dtype and device.

    Raises:
        ValueError: On a batch that is not 2D or 3D, or on a bad ``size``, ``scale`` or ``ratio``.
        TypeError: On an integer batch.
    """
    ndim = _spatial_dims(x)
    out_size = _as_size(size, ndim)
    _check_range("scale", scale, low=0.0, high=1.0)
    _check_range("ratio", ratio, low=0.0)
    batch = x.shape[0]
    rel = _crop_boxes(batch, x.shape[2:], scale=scale, ratio=ratio, generator=generator)
    centre = (2.0 * _rand(rel.shape, generator) - 1.0) * (1.0 - rel)
    signs = _flip_signs(batch, ndim, flip=flip, generator=generator)
    theta = crop_affine(rel, centre, signs).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, [batch, x.shape[1], *out_size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _per_sample(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape ``[B]`` to ``[B, 1, ..., 1]`` on ``x``'s device and dtype."""
    return values.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))


def intensity_jitter(
    x: torch.Tensor,
    *,
    brightness: float = 0.4,
    contrast: float = 0.4,
    p: float = 0.8,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random per-sample contrast and brightness, ``(x - m) * c + m + b * s``, applied with probability ``p``.

    ``c`` is uniform in ``[1 - contrast, 1 + contrast]`` and scales around the sample's mean ``m``;
    ``b`` is uniform in ``[-brightness, brightness]`` and is measured in units of the sample's standard
    deviation ``s``, so the jitter does not depend on how the intensities were normalised (HU windows in
    ``[0, 1]``, z-scores, ImageNet statistics). It is the grey-level analogue of DINO's colour jitter;
    saturation, hue and greyscale are left out because most medical modalities have no meaningful colour.

    Args:
        x: ``[B, C, *S]`` floating-point batch.
        brightness: Maximum shift, in standard deviations of the sample.
        contrast: Maximum relative change of contrast, in ``[0, 1)``.
        p: Probability that a sample is jittered.
        generator: Random source.

    Returns:
        The jittered batch, same shape and dtype.
    """
    if brightness < 0 or not 0 <= contrast < 1 or not 0 <= p <= 1:
        raise ValueError(f"bad jitter: brightness={brightness}, contrast={contrast} (in [0, 1)), p={p}")
    batch = x.shape[0]
    apply = _rand((batch,), generator) < p
    gain = torch.where(apply, _uniform((batch,), 1.0 - contrast, 1.0 + contrast, generator), 1.0)
    shift = torch.where(apply, _uniform((batch,), -brightness, brightness, generator), 0.0)
    dims = tuple(range(1, x.dim()))
    std, mean = torch.std_mean(x, dim=dims, keepdim=True, correction=0)
    return (x - mean) * _per_sample(gain, x) + mean + _per_sample(shift, x) * std


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised 1D Gaussian kernels ``[N, 2 * radius + 1]``, one per standard deviation in ``sigma [N]``."""
    t = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    k = torch.exp(-0.5 * (t / sigma.unsqueeze(1)) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def _separable_blur(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Blur ``[N, C, *S]`` with one 1D kernel per sample ``[N, K]`` along every spatial axis (edge-replicated)."""
    n, c, *spatial = x.shape
    ndim = len(spatial)
    conv = F.conv2d if ndim == 2 else F.conv3d
    radius = kernels.shape[1] // 2
    weight = kernels.to(dtype=x.dtype, device=x.device).repeat_interleave(c, dim=0)
    y = x.reshape(1, n * c, *spatial)
    for axis in range(ndim):
        pad = [0] * (2 * ndim)
        pad[2 * (ndim - 1 - axis)] = pad[2 * (ndim - 1 - axis) + 1] = radius
        shape = [n * c, 1] + [1] * ndim
        shape[2 + axis] = kernels.shape[1]
        y = conv(F.pad(y, pad, mode="replicate"), weight.view(shape), groups=n * c)
    return y.reshape(x.shape)


def gaussian_blur(
    x: torch.Tensor,
    *,
    sigma: Sequence[float] = (0.1, 2.0),
    p: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gaussian blur with a random per-sample standard deviation (in pixels), applied with probability ``p``.

    The blurred samples go through one grouped separable convolution per axis (2D or 3D), with kernels of
    radius ``ceil(3 * max(sigma))`` and replicated edges. DINO's solarisation is deliberately absent: inverting
    the bright intensities of a CT, MRI or fundus image produces a picture with no anatomical meaning.

    Args:
        x: ``[B, C, *S]`` floating-point batch.
        sigma: ``(min, max)`` standard deviation, uniform.
        p: Probability that a sample is blurred.
        generator: Random source.

    Returns:
        The batch with the chosen samples blurred, same shape and dtype.
    """
    _spatial_dims(x)
    _check_range("sigma", sigma, low=0.0)
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p}")
    batch = x.shape[0]
    apply = _rand((batch,), generator) < p
    std = _uniform((batch,), sigma[0], sigma[1], generator)
    chosen = apply.nonzero().squeeze(1)
    if chosen.numel() == 0:
        return x
    kernels = gaussian_kernels(std[chosen], math.ceil(3 * sigma[1]))
    chosen = chosen.to(x.device)
    return x.index_copy(0, chosen, _separable_blur(x.index_select(0, chosen), kernels))


def _view(
    x: torch.Tensor,
    size: int | Sequence[int],
    *,
    scale: Sequence[float],
    blur_p: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    crop = random_resized_crop(x, size, scale=scale, generator=generator, flip=True)
    crop = intensity_jitter(crop, generator=generator)
    return gaussian_blur(crop, p=blur_p, generator=generator)


def multi_crop(
    x: torch.Tensor,
    *,
    global_size: int | Sequence[int],
    local_size: int | Sequence[int],
    n_local: int,
    global_scale: Sequence[float] = (0.32, 1.0),
    local_scale: Sequence[float] = (0.05, 0.32),
    generator: torch.Generator | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """DINO's multi-crop views of a batch: two large global crops and ``n_local`` small local crops.

    Each view is a :func:`random_resized_crop` with flips, then :func:`intensity_jitter` (p=0.8), then
    :func:`gaussian_blur` with DINO's probabilities: 1.0 on the first global view, 0.1 on the second, 0.5 on
    every local view. The scale defaults are DINOv2's.

    Args:
        x: ``[B, C, H, W]`` or ``[B, C, H, W, D]`` floating-point batch.
        global_size: Spatial size of the global views.
        local_size: Spatial size of the local views.
        n_local: Number of local views (0 allowed).
        global_scale: Area / volume fraction range of the global crops.
        local_scale: Area / volume fraction range of the local crops.
        generator: Random source.

    Returns:
        ``(global_views, local_views)``: 2 tensors ``[B, C, *global_size]`` and ``n_local`` tensors
        ``[B, C, *local_size]``.
    """
    if n_local < 0:
        raise ValueError(f"n_local must be >= 0, got {n_local}")
    globals_ = [
        _view(x, global_size, scale=global_scale, blur_p=blur_p, generator=generator) for blur_p in (1.0, 0.1)
    ]
    locals_ = [_view(x, local_size, scale=local_scale, blur_p=0.5, generator=generator) for _ in range(n_local)]
    return globals_, locals_
