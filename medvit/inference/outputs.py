"""The files ``medvit predict`` writes for one case, all or none.

========================  ===========================================================================
``<case>.json``           always: label names, per-label volumes (mL), or class probabilities
``<case>.nii.gz``         ``nifti``: the label mask on the input grid (shape and affine checked after writing)
``<case>_seg.dcm``        ``dicom-seg``: a DICOM Segmentation referencing the source series (DICOM inputs)
``<case>_rtstruct.dcm``   ``rtstruct``: an RT Structure Set, one ROI per label found, contours per slice in
                          patient coordinates, referencing the source series (DICOM inputs;
                          :func:`medvit.io.rtstruct.write_rtstruct`)
``<case>.png``            ``png``: the label mask of a 2D segmentation, a palette PNG (pixel values are the
                          labels, shown in colour)
``<case>_preview.png``    ``preview``: the mask over the image, three planes for 3D (:mod:`.preview`)
``<case>_probabilities``  ``--save-probabilities``: ``.nii.gz`` (4D, channels last) for 3D, ``.npz`` for 2D
========================  ===========================================================================

A segmentation's ``<case>.json`` also holds its ``statistics`` (:mod:`medvit.inference.statistics`).
Cells packages write ``<case>.geojson``, ``<case>_cells.csv``, ``<case>_instances.tif`` and
``<case>_types.png`` instead (:mod:`medvit.inference.cell_outputs`).

A case's files are written into a hidden staging folder inside the output folder and moved into place only
when every one of them is written and checked (:func:`medvit.io.atomic.atomic_files`), so a failure leaves no
partial output behind; they get the modes of new files under the umask (``0o644`` under ``022``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

import medvit.io  # writers looked up at call time (tests replace them)
from medvit.errors import ConfigError, GeometryError
from medvit.inference import cell_outputs, preview
from medvit.inference.predictor import Prediction
from medvit.inference.slides import CellsPrediction
from medvit.io.atomic import atomic_files
from medvit.tasks import get_kind

OUTPUT_TYPES = (
    "nifti",
    "dicom-seg",
    "rtstruct",
    "png",
    "preview",
    "geojson",
    "csv",
    "instances",
    "types",
    "json",
)


def parse_output_types(text: str | None, *, task: str, spatial_dims: int) -> list[str]:
    """The output types to write: ``text`` (comma-separated) checked against the model, ``json`` always added.

    Defaults and the types allowed come from the task kind (``nifti`` for 3D segmentation, ``png`` for 2D
    segmentation, ``json`` for classification).

    Raises:
        ConfigError: An unknown type, or one the model cannot produce (one line naming the option).
    """
    kind = get_kind(task)
    if text is None or not text.strip():
        types = list(kind.default_outputs.get(spatial_dims, ()))
    else:
        types = list(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
    for t in types:
        if t not in OUTPUT_TYPES:
            raise ConfigError(f"--output-type {t!r}: unknown output type (choose from {', '.join(OUTPUT_TYPES)})")
        if t not in kind.outputs:
            raise ConfigError(f"--output-type {t}: a {task} model writes {', '.join(kind.outputs)} only")
        if t == "png" and spatial_dims != 2:
            raise ConfigError("--output-type png: needs a 2D segmentation model (use nifti or dicom-seg for 3D)")
    return [t for t in OUTPUT_TYPES if t in types or t == "json"]


def output_files(name: str, types: Sequence[str], *, spatial_dims: int, probabilities: bool) -> dict[str, str]:
    """Output type -> file name (in the output folder) for case ``name``."""
    names = {
        "json": f"{name}.json",
        "nifti": f"{name}.nii.gz",
        "dicom-seg": f"{name}_seg.dcm",
        "rtstruct": f"{name}_rtstruct.dcm",
        "png": f"{name}.png",
        "preview": f"{name}_preview.png",
        "geojson": f"{name}.geojson",
        "csv": f"{name}_cells.csv",
        "instances": f"{name}_instances.tif",
        "types": f"{name}_types.png",
    }
    files = {t: names[t] for t in types}
    if probabilities:
        files["probabilities"] = f"{name}_probabilities." + ("nii.gz" if spatial_dims == 3 else "npz")
    return files


def sidecar(pred: Prediction, name: str, files: dict[str, str], model: dict[str, Any]) -> dict[str, Any]:
    """The ``<case>.json`` content: labels and volumes, class probabilities, or nuclei counts; the model."""
    out: dict[str, Any] = {
        "case": name,
        "task": pred.task,
        "labels": {str(k): v for k, v in sorted(pred.labels.items())},
    }
    if isinstance(pred, CellsPrediction):
        out.update(pred.summary())
        out["outputs"] = sorted(f for t, f in files.items() if t != "json")
    elif pred.class_probabilities is not None:
        scores = pred.class_scores()
        out["probabilities"] = scores
        out["predicted"] = max(scores, key=scores.get) if scores else None
    else:
        out["volumes_ml"] = pred.volumes_ml
        if pred.statistics is not None:
            out["statistics"] = pred.statistics
        out["outputs"] = sorted(f for t, f in files.items() if t != "json")
    out["model"] = model
    return out


def write_outputs(
    pred: Prediction,
    outdir: str | os.PathLike,
    name: str,
    types: Sequence[str],
    *,
    probabilities: bool = False,
    model: dict[str, Any] | None = None,
    deidentify: bool = False,
) -> list[Path]:
    """Write one case's outputs into ``outdir`` (all or none) and return their paths.

    Raises:
        InputError: A writer refused the prediction (e.g. DICOM-SEG for an input that is not DICOM).
        GeometryError: A written mask does not have the input's shape and affine.
    """
    outdir = Path(outdir)
    dims = 2 if isinstance(pred, CellsPrediction) else len(pred.grid.spatial_shape)
    files = output_files(name, types, spatial_dims=dims, probabilities=probabilities)
    with atomic_files(outdir, files.values(), stage=name) as stage:
        # what a writer takes beyond the prediction
        options = {"dicom-seg": {"deidentify": deidentify}, "rtstruct": {"deidentify": deidentify}}
        for kind, file in files.items():
            _WRITERS[kind](pred, stage / file, **options.get(kind, {}))
        if "json" in files:
            text = json.dumps(sidecar(pred, name, files, model or {}), indent=2)
            (stage / files["json"]).write_text(text + "\n")
    return [outdir / f for f in files.values()]


def _nifti(pred: Prediction, path: Path) -> None:
    medvit.io.write_nifti(pred.mask, path, affine=pred.grid.affine)
    check_grid(path, pred.grid.spatial_shape, pred.grid.affine)


def check_grid(path: Path, shape: Sequence[int], affine: np.ndarray) -> None:
    """Read a written NIfTI's header back (nibabel) and check it has the input grid: shape and affine."""
    img = nib.load(str(path))
    want = tuple(int(s) for s in shape) + (1,) * (3 - len(shape))
    if tuple(img.shape[:3]) != want or not np.allclose(img.affine, affine, atol=1e-4):
        raise GeometryError(
            f"{path.name}: written grid (shape {tuple(img.shape[:3])}) differs from the input grid "
            f"(shape {want}); nothing was written"
        )


def _dicom_seg(pred: Prediction, path: Path, *, deidentify: bool = False) -> None:
    background = min(pred.labels)
    names = {k: v for k, v in pred.labels.items() if k != background}
    medvit.io.write_dicom_seg(pred.mask, pred.grid, path, label_names=names, deidentify=deidentify)


def _rtstruct(pred: Prediction, path: Path, *, deidentify: bool = False) -> None:
    background = min(pred.labels)
    names = {k: v for k, v in pred.labels.items() if k != background}
    medvit.io.write_rtstruct(pred.mask, pred.grid, path, label_names=names, deidentify=deidentify)


def _png(pred: Prediction, path: Path) -> None:
    mask = pred.mask[..., 0] if pred.mask.ndim == 3 else pred.mask
    medvit.io.write_png(mask, path, palette=True)


def _probabilities(pred: Prediction, path: Path) -> None:
    if pred.probabilities is None:
        raise ValueError("the prediction holds no probabilities (predict with probabilities=True)")
    if path.name.endswith(".npz"):
        with open(path, "wb") as fh:
            np.savez_compressed(fh, probabilities=pred.probabilities, labels=np.asarray(sorted(pred.labels)))
        return
    medvit.io.write_nifti(pred.probabilities, path, affine=pred.grid.affine)


_WRITERS = {
    "nifti": _nifti,
    "dicom-seg": _dicom_seg,
    "rtstruct": _rtstruct,
    "png": _png,
    "preview": preview.write_preview,
    "probabilities": _probabilities,
    "geojson": cell_outputs.write_geojson,
    "csv": cell_outputs.write_cells_csv,
    "instances": cell_outputs.write_instances,
    "types": cell_outputs.write_types,
    "json": lambda pred, path: None,  # written last, once the other files are known
}
