"""Voxel-to-world geometry: one convention everywhere.

medvit images are channel-first arrays ``[C, I, J(, K)]`` with a 4x4 affine that maps voxel indices
``(i, j, k, 1)`` to **RAS** world coordinates in millimetres (the NIfTI and MONAI convention).
DICOM and ITK speak LPS; the conversion is a sign flip of the first two world axes.

The affine may hold a shear (a gantry-tilted CT stacked exactly as acquired); ``spacing`` and
``direction`` are then the column norms and normalised columns, and ``is_orthogonal`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medvit.errors import GeometryError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Meta keys every medvit image carries (besides MONAI's ``affine``).
GEOMETRY_KEYS = ("spacing", "origin", "direction", "space")


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    """Convert an LPS (DICOM/ITK) affine to RAS (NIfTI); the operation is its own inverse."""
    return LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)


ras_to_lps = lps_to_ras


def compose_affine(origin, spacing, direction) -> np.ndarray:
    """Build a 4x4 affine from origin (3,), spacing (3,) and a 3x3 direction whose columns are axes."""
    direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(spacing, dtype=np.float64)[None, :]
    affine[:3, 3] = np.asarray(origin, dtype=np.float64)
    return affine


@dataclass(frozen=True)
class Geometry:
    """Spacing, origin and direction read off an affine (columns are voxel axes)."""

    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray

    @property
    def is_orthogonal(self) -> bool:
        gram = self.direction.T @ self.direction
        return bool(np.allclose(gram, np.eye(3), atol=1e-4))

    @property
    def orientation(self) -> str:
        """Axis codes such as ``"RAS"`` or ``"LPS"``: where each voxel axis points (nearest world axis)."""
        import nibabel as nib  # lazy: keeps medvit cards list free of nibabel

        return "".join(nib.aff2axcodes(compose_affine(self.origin, self.spacing, self.direction)))


def decompose_affine(affine: np.ndarray) -> Geometry:
    """Split a 4x4 affine into spacing (column norms), origin and unit-column direction."""
    affine = np.asarray(affine, dtype=np.float64)
    linear = affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(affine)):
        raise GeometryError(f"affine is degenerate (zero or non-finite voxel size): {affine.tolist()}")
    return Geometry(spacing=spacing, origin=affine[:3, 3].copy(), direction=linear / spacing[None, :])


def geometry_meta(affine: np.ndarray) -> dict:
    """The geometry entries of a medvit image's meta dict, derived from its RAS affine."""
    geo = decompose_affine(affine)
    return {
        "spacing": geo.spacing,
        "origin": geo.origin,
        "direction": geo.direction,
        "space": "RAS",
    }


def pad_affine_2d(spacing: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """The affine of a 2D pixel grid: index (row, col) -> (row * sy, col * sx), a 4x4 for MONAI."""
    affine = np.eye(4)
    affine[0, 0], affine[1, 1] = float(spacing[0]), float(spacing[1])
    return affine


def same_grid(
    affine_a: np.ndarray,
    shape_a: tuple[int, ...],
    affine_b: np.ndarray,
    shape_b: tuple[int, ...],
    *,
    atol: float = 1e-4,
) -> bool:
    """True when two spatial grids coincide: equal shapes and affines equal to ``atol`` (mm)."""
    if tuple(shape_a) != tuple(shape_b):
        return False
    return bool(np.allclose(np.asarray(affine_a), np.asarray(affine_b), atol=atol, rtol=0))


def voxel_to_world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Map voxel indices ``[N, 3]`` to world coordinates ``[N, 3]``."""
    ijk = np.asarray(ijk, dtype=np.float64)
    return ijk @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
