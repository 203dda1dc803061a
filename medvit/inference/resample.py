"""Take network outputs from the preprocessed grid back to the input grid, then pick labels there.

Preprocessing (orientation, spacing, resize) only ever permutes, flips, scales and shifts voxel axes, so the
map from an input voxel index to a preprocessed one is a 4x4 (3x3 in 2D) read off the two affines. Outputs
are interpolated linearly along each axis (the same values as MONAI's ``Invertd`` of those transforms:
linear, edge values held beyond the border) in slabs of the input grid, and labels are picked by argmax on
the resampled probabilities (nnU-Net's order), so no second full-size volume is needed unless the
probabilities themselves are asked for. A map that is not axis-aligned goes through ``grid_sample``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

SLAB_BYTES = 64 << 20


def affine_nd(affine: np.ndarray, dims: int) -> np.ndarray:
    """The ``(dims + 1)``-square voxel-to-world map of the first ``dims`` voxel axes of a 4x4 affine."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape == (dims + 1, dims + 1):
        return affine
    keep = [*range(dims), affine.shape[0] - 1]
    return affine[np.ix_(keep, keep)]


def index_map(src_affine: np.ndarray, dst_affine: np.ndarray, dims: int) -> np.ndarray:
    """The map from ``dst`` voxel indices to ``src`` voxel indices (both grids in the same world)."""
    return np.linalg.solve(affine_nd(src_affine, dims), affine_nd(dst_affine, dims))


def _axis_permutation(matrix: np.ndarray, tol: float = 1e-6) -> list[int] | None:
    """For each destination axis, the one source axis it moves along; ``None`` when the map mixes axes."""
    dims = matrix.shape[0]
    big = np.abs(matrix) > tol * max(np.abs(matrix).max(), 1.0)
    perm = []
    for d in range(dims):
        rows = np.flatnonzero(big[:, d])
        if len(rows) != 1:
            return None
        perm.append(int(rows[0]))
    return perm if sorted(perm) == list(range(dims)) else None


def _lerp_axis(x: torch.Tensor, dim: int, coords: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``x`` along ``dim`` at ``coords`` (voxel units; edge values beyond the ends)."""
    n = x.shape[dim]
    c = coords.clamp(0, n - 1)
    i0 = c.floor().long()
    i1 = (i0 + 1).clamp_(max=n - 1)
    w = (c - i0).to(x.dtype)
    a = x.index_select(dim, i0)
    if bool((w == 0).all()):
        return a
    shape = [1] * x.ndim
    shape[dim] = -1
    return torch.lerp(a, x.index_select(dim, i1), w.view(shape))


def _is_identity(t: np.ndarray, src_shape: Sequence[int], dst_shape: Sequence[int]) -> bool:
    return tuple(src_shape) == tuple(dst_shape) and np.allclose(t, np.eye(t.shape[0]), atol=1e-5)


def resample_slabs(probs: torch.Tensor, t: np.ndarray, dst_shape: Sequence[int], *, slab_bytes: int = SLAB_BYTES):
    """Yield ``(start, stop, values)``: ``probs`` (``[K, *src]``) resampled onto rows ``start:stop`` of the
    first axis of the ``dst_shape`` grid, where ``t`` maps destination indices to source indices."""
    dims = len(dst_shape)
    k = probs.shape[0]
    src_shape = tuple(probs.shape[1:])
    row = max(k * int(np.prod(dst_shape[1:])) * 4, 1)
    rows = max(1, min(int(dst_shape[0]), slab_bytes // row))
    if _is_identity(t, src_shape, dst_shape):
        for a in range(0, dst_shape[0], rows):
            yield a, min(a + rows, dst_shape[0]), probs[:, a : a + rows]
        return
    matrix, shift = t[:dims, :dims], t[:dims, dims]
    perm = _axis_permutation(matrix)
    if perm is None:
        yield from _grid_sample_slabs(probs, t, dst_shape, rows)
        return
    x = probs.permute(0, *(1 + p for p in perm))  # source axes in destination order (a view)
    coords = [
        torch.arange(n, dtype=torch.float64) * matrix[perm[d], d] + shift[perm[d]] for d, n in enumerate(dst_shape)
    ]
    n0 = x.shape[1]
    for a in range(0, dst_shape[0], rows):
        b = min(a + rows, dst_shape[0])
        c0 = coords[0][a:b].clamp(0, n0 - 1)
        lo, hi = int(c0.floor().min()), min(int(c0.floor().max()) + 1, n0 - 1)
        y = x[:, lo : hi + 1]
        for d in range(1, dims):
            y = _lerp_axis(y, d + 1, coords[d])
        yield a, b, _lerp_axis(y, 1, c0 - lo)


def _grid_sample_slabs(probs: torch.Tensor, t: np.ndarray, dst_shape: Sequence[int], rows: int):
    dims = len(dst_shape)
    src_shape = probs.shape[1:]
    tt = torch.as_tensor(t, dtype=torch.float64)
    scale = torch.tensor([2.0 / max(s - 1, 1) for s in src_shape], dtype=torch.float64)
    rest = [torch.arange(n, dtype=torch.float64) for n in dst_shape[1:]]
    for a in range(0, dst_shape[0], rows):
        b = min(a + rows, dst_shape[0])
        idx = torch.stack(torch.meshgrid(torch.arange(a, b, dtype=torch.float64), *rest, indexing="ij"), -1)
        src = idx @ tt[:dims, :dims].T + tt[:dims, dims]
        # clamp to the grid (edge values beyond it), normalise to [-1, 1]; grid_sample takes the last axis first
        src = torch.minimum(src.clamp(min=0), torch.tensor([s - 1 for s in src_shape], dtype=torch.float64))
        grid = (src * scale - 1.0).flip(-1).to(probs.dtype)[None]
        out = F.grid_sample(probs[None], grid, mode="bilinear", padding_mode="border", align_corners=True)
        yield a, b, out[0]


def labels_on_grid(
    probs: torch.Tensor,
    t: np.ndarray,
    dst_shape: Sequence[int],
    *,
    values: Sequence[int],
    keep_probabilities: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resample ``probs`` (``[K, *src]``) onto the ``dst_shape`` grid and take the argmax there.

    Args:
        probs: Class probabilities on the preprocessed grid (CPU).
        t: Destination-to-source index map (:func:`index_map`).
        dst_shape: The input grid.
        values: Label value of each of the ``K`` channels (the package's label map, in order).
        keep_probabilities: Also return the resampled probabilities ``[K, *dst]`` (float32).

    Returns:
        ``(mask, probabilities or None)``; the mask is uint8 (uint16 for label values above 255).
    """
    values = np.asarray(values)
    dtype = np.uint8 if values.max(initial=0) <= 255 else np.uint16
    lut = torch.as_tensor(values.astype(np.int64))
    identity = bool(np.array_equal(values, np.arange(len(values))))
    mask = np.empty(tuple(dst_shape), dtype=dtype)
    kept = np.empty((probs.shape[0], *dst_shape), dtype=np.float32) if keep_probabilities else None
    for a, b, slab in resample_slabs(probs, t, dst_shape):
        idx = slab.argmax(0)
        mask[a:b] = (idx if identity else lut[idx]).numpy().astype(dtype, copy=False)
        if kept is not None:
            kept[:, a:b] = slab.float().numpy()
    return mask, kept
