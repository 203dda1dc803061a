"""``Predictor``: a model package applied to one image, the result on the image's own grid.

read (:func:`medvit.io.read_image`) -> fit to the model (dimensions, channels) -> the package's preprocessing
(orientation, spacing, resize, intensity, normalisation) -> sliding window or whole image, optional flip TTA,
bf16 autocast where the device does it natively -> probabilities taken back to the input grid -> labels by
argmax there. Classification returns class probabilities instead.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medvit.device import autocast, precision_name, resolve_device, resolve_precision
from medvit.errors import ConfigError, InputError, MedvitWarning, one_line
from medvit.inference import slides
from medvit.inference.cases import SLIDE_ONLY
from medvit.inference.engines import select_engine
from medvit.inference.layout import channels_last
from medvit.inference.progress import progress_bar
from medvit.inference.resample import index_map, labels_on_grid
from medvit.inference.sliding import sliding_window_with_fallback
from medvit.inference.source import resolve_model
from medvit.inference.statistics import segmentation_statistics
from medvit.inference.tta import with_flip_tta
from medvit.io import describe, read_image
from medvit.io.meta import make_image, to_numpy
from medvit.transforms import preprocess_transforms
from medvit.transforms.preprocess import CHANNEL_FITS

_GRID_META = ("source", "format", "modality", "spacing_known", "dicom_sources", "dicom_frames")


@dataclass
class InputGrid:
    """The grid a prediction lands on: ``shape`` ``[C, *spatial]`` and voxel-to-RAS ``affine`` of the input,
    and the meta the writers need (DICOM sources for DICOM-SEG). No pixel data."""

    shape: tuple[int, ...]
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[1:])


@dataclass
class Prediction:
    """What :meth:`Predictor.predict` returns for one image.

    Attributes:
        task: ``segmentation`` or ``classification``.
        labels: Output index -> name, from the package.
        grid: The input's grid (shape, affine, writer meta).
        mask: Segmentation labels on the input grid (``grid.spatial_shape``; uint8, uint16 above 255),
            values from the package's label map.
        probabilities: ``[K, *spatial]`` float32 on the input grid, when asked for.
        class_probabilities: Classification: ``[K]`` probabilities (sigmoid per label when multi-label).
        volumes_ml: 3D segmentation with known spacing: label name -> volume in mL (background left out).
        windows: Sliding window: ``windows`` (in all) and ``reused`` (constant windows run only once).
        input: Non-identifying facts about the input (:func:`medvit.io.describe`).
        timing: Seconds spent reading, preprocessing, inferring and inverting.
        statistics: Segmentation, when asked for: per-label sizes, intensities in the input's units and world
            positions (:func:`medvit.inference.statistics.segmentation_statistics`).
        image: Segmentation with ``keep_image``: the input intensities as read, ``[C, *grid.spatial_shape]``
            (the read array itself, not a copy), for previews.
        window: Segmentation: the intensity range (input units) the package maps to its network input (its
            HU window ``a_min``..``a_max``, or ``0``..``scale``), for displays; ``None`` when it normalises.
    """

    task: str
    labels: dict[int, str]
    grid: InputGrid
    mask: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    class_probabilities: np.ndarray | None = None
    volumes_ml: dict[str, float] | None = None
    windows: dict[str, int] | None = None
    input: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    statistics: dict[str, Any] | None = None
    image: np.ndarray | None = None
    window: tuple[float, float] | None = None

    @property
    def affine(self) -> np.ndarray:
        return self.grid.affine

    def class_scores(self) -> dict[str, float]:
        """Classification probabilities by class name."""
        if self.class_probabilities is None:
            return {}
        return {
            self.labels[k]: float(p) for k, p in zip(sorted(self.labels), self.class_probabilities, strict=True)
        }


class Predictor:
    """Predict with a medvit model package on files, MetaTensors or arrays, on the input's own grid.

    Args:
        model: A package folder, run folder or ``.ckpt``, ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION``,
            or a loaded :class:`~medvit.package.ModelPackage`.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` (bf16 autocast where the device does bf16 natively), ``32`` or ``bf16``.
        overlap: Sliding-window overlap (default: the package's).
        batch_size: Windows per forward pass (default: the package's ``sw_batch_size``).
        tta: Flip-mirroring test-time augmentation over the package's ``tta_axes``.
        progress: Show a progress bar over the windows of each image.
        workers: Cells packages: post-processing processes (default: CPUs - 1; 0: in this process).
        engine: Where the network runs: ``torch``, ``onnxruntime`` or ``openvino`` (the package's ONNX export,
            made once into ``$MEDVIT_CACHE/exports/``; float32), or ``auto`` (torch or ONNX Runtime, whichever
            runs a batch of windows faster with the same logits); see :mod:`medvit.inference.engines`.

    Example:
        >>> pred = Predictor("my_package").predict(volume)  # numpy [C, I, J, K], identity affine
        >>> pred.mask.shape == volume.shape[1:]
        True
    """

    def __init__(
        self,
        model,
        *,
        device: str = "auto",
        precision: str = "auto",
        overlap: float | None = None,
        batch_size: int | None = None,
        tta: bool = False,
        progress: bool = False,
        workers: int | None = None,
        engine: str = "torch",
    ) -> None:
        from monai.transforms import Compose  # lazy: import medvit.inference stays free of MONAI

        self.package, self.source = resolve_model(model)
        spec = self.spec = self.package.spec
        if spec.kind.prediction is None:
            raise InputError(f"{self.package.path}: {spec.task!r} packages are not supported by predict yet")
        self.device, self.device_note = resolve_device(device)
        self.autocast_dtype = resolve_precision(precision, self.device)
        inf = spec.inference
        self.cells = spec.kind.prediction == "cells"
        self.workers = workers
        default_overlap = slides.DEFAULT_OVERLAP if self.cells else inf.overlap
        self.overlap = default_overlap if overlap is None else float(overlap)
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError(f"--overlap {overlap}: must be at least 0 and below 1")
        self.batch_size = inf.sw_batch_size if batch_size is None else int(batch_size)
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size {batch_size}: must be at least 1")
        self.tta_axes = [int(a) for a in inf.tta_axes] if tta else []
        if tta and not self.tta_axes:
            warnings.warn(f"{spec.name}: the package allows no TTA axes; --tta has no effect", MedvitWarning, 2)
        bad = [a for a in self.tta_axes if not 0 <= a < spec.spatial_dims]
        if bad:
            raise InputError(f"{self.package.path}: inference.tta_axes {bad} outside 0..{spec.spatial_dims - 1}")
        self.progress = progress
        self.values = sorted(spec.labels)
        self.network = self.package.build().to(self.device)
        # channels-last convolutions on the CPU (oneDNN's fast layout); CUDA keeps the layout it was built with
        self._layout = channels_last(self.network, spec.spatial_dims) if self.device.type == "cpu" else None
        self._transforms = Compose(preprocess_transforms(spec.preprocessing))
        # the network call: torch (None) or an exported network in a runtime, which computes in float32
        self.engine, self._runtime, self.engine_note = select_engine(self, engine, precision)
        if self._runtime is not None:
            self.autocast_dtype = None

    # -- options, for manifests -------------------------------------------------------------------------
    @property
    def precision(self) -> str:
        return precision_name(self.autocast_dtype)

    def options(self) -> dict[str, Any]:
        """The settings in force: device, precision, engine, window overlap and batch, TTA axes."""
        inf = self.spec.inference
        return {
            "device": str(self.device),
            "precision": self.precision,
            "engine": self.engine,
            "mode": inf.mode,
            "roi_size": inf.roi_size,
            "overlap": self.overlap,
            "batch_size": self.batch_size,
            "blend": inf.blend,
            "tta_axes": self.tta_axes,
        }

    # -- prediction -----------------------------------------------------------------------------------
    def predict(
        self,
        x,
        *,
        series: str | None = None,
        spacing: tuple[float, ...] | None = None,
        affine: np.ndarray | None = None,
        probabilities: bool = False,
        name: str | None = None,
        resample_uneven: bool = False,
        mpp: float | None = None,
        roi: tuple[int, int, int, int] | None = None,
        tissue_mask: str | os.PathLike | None = None,
        statistics: bool = False,
        keep_image: bool = False,
    ) -> Prediction | slides.CellsPrediction:
        """Predict one image; with a cells package, the nuclei of one slide or tile
        (:func:`medvit.inference.slides.predict_cells`).

        Args:
            x: A path (DICOM file/folder/zip, NIfTI, 2D image), a MetaTensor from :func:`medvit.io.read_image`,
                or an array/tensor, channel-first in the model's spatial dimensions (``[C, *S]``; ``[*S]`` is
                taken as one channel).
            series: DICOM inputs holding several series: the SeriesInstanceUID (or unique prefix) to read.
            spacing: Paths: voxel spacing where a DICOM input gives none. Arrays: the voxel spacing (mm).
            affine: Arrays: the voxel-to-RAS affine (4x4, or 3x3 for 2D); default identity (or ``spacing``).
            probabilities: Also return segmentation probabilities on the input grid.
            name: What to call the image in the progress bar.
            resample_uneven: Paths: resample a DICOM series with gaps onto a uniform grid (the mask is written
                on that grid, and the manifest's description says so) instead of refusing it.
            mpp: Cells: level-0 micrometres per pixel where the slide gives none (or to override it).
            roi: Cells: ``(x, y, w, h)`` level-0 pixels to restrict to.
            tissue_mask: Cells: a tissue mask image instead of tissue detection.
            statistics: Segmentation: also compute per-label statistics (``Prediction.statistics``); the read
                image is held until the mask is ready.
            keep_image: Segmentation: keep the read image on the prediction (``Prediction.image``), for
                previews.

        Raises:
            InputError: Unreadable input, wrong dimensionality or channel count for the model (one line).
        """
        if self.cells:
            if not isinstance(x, str | os.PathLike):
                raise InputError(f"cannot predict nuclei on a {type(x).__name__}: give a slide or tile path")
            return slides.predict_cells(self, x, mpp=mpp, roi=roi, tissue_mask=tissue_mask, workers=self.workers)
        t0 = time.perf_counter()
        image = self._load(x, series=series, spacing=spacing, affine=affine, resample_uneven=resample_uneven)
        grid = InputGrid(
            tuple(int(s) for s in image.shape),
            np.asarray(image.affine, dtype=np.float64),
            {k: image.meta[k] for k in _GRID_META if k in image.meta},
        )
        facts = describe(image)
        # intensities: for 3D statistics (2D ones count pixels) and previews
        keep = self.spec.kind.prediction == "mask" and (keep_image or statistics and len(grid.spatial_shape) == 3)
        intensities = to_numpy(image)[0] if keep else None  # the read array itself: no copy
        work, squeezed = self._fit(image)
        del image
        if keep or not isinstance(x, str | os.PathLike):  # the caller's array, or the one kept, stays as it is
            work = _private(work, intensities if keep else to_numpy(x)[0])
        timing = {"read_s": time.perf_counter() - t0}

        t = time.perf_counter()
        pre = self._preprocess(work)
        work_affine, work_shape = np.asarray(work.affine, dtype=np.float64), tuple(work.shape[1:])
        del work
        timing["preprocess_s"] = time.perf_counter() - t
        spec = self.spec
        result = Prediction(task=spec.task, labels=dict(spec.labels), grid=grid, input=facts, timing=timing)

        t = time.perf_counter()
        if spec.kind.prediction == "probabilities":
            result.class_probabilities = self._classify(pre)
            timing["infer_s"] = time.perf_counter() - t
            timing["total_s"] = time.perf_counter() - t0
            return result
        label = name or str(grid.meta.get("source", "image"))
        probs = self._segment(pre, label, result)
        pre_affine = np.asarray(pre.affine, dtype=np.float64)
        del pre
        timing["infer_s"] = time.perf_counter() - t

        t = time.perf_counter()
        to_pre = index_map(pre_affine, work_affine, spec.spatial_dims)
        mask, kept = labels_on_grid(
            probs, to_pre, work_shape, values=self.values, keep_probabilities=probabilities
        )
        del probs
        if squeezed:  # a 2D model on a one-slice volume: back to [I, J, 1]
            mask = mask[..., None]
            kept = None if kept is None else kept[..., None]
        result.mask, result.probabilities = mask, kept
        result.volumes_ml = self._volumes(mask, grid)
        timing["invert_s"] = time.perf_counter() - t
        result.window = _display_window(spec.preprocessing.intensity)
        if statistics:
            t = time.perf_counter()
            result.statistics = segmentation_statistics(
                mask,
                intensities,
                grid.affine,
                result.labels,
                spacing_known=bool(grid.meta.get("spacing_known", True)),
                modality=grid.meta.get("modality"),
            )
            timing["statistics_s"] = time.perf_counter() - t
        result.image = intensities if keep_image else None
        timing["total_s"] = time.perf_counter() - t0
        return result

    def _load(self, x, *, series, spacing, affine, resample_uneven=False):
        from monai.data import MetaTensor  # lazy: import medvit.inference stays free of MONAI

        if isinstance(x, str | os.PathLike):
            if str(x).lower().endswith(SLIDE_ONLY):
                raise InputError(f"{x}: a whole-slide image; predict it with a cells (pathology) package")
            return read_image(x, series=series, spacing=spacing, resample_uneven=resample_uneven)
        if isinstance(x, MetaTensor):
            return x
        if isinstance(x, np.ndarray | torch.Tensor):
            return array_image(x, self.spec.spatial_dims, affine=affine, spacing=spacing)
        raise InputError(f"cannot predict on a {type(x).__name__}: give a path, a MetaTensor or an array")

    def _fit(self, image):
        """Check the image against the model's dimensions and channels; a one-slice volume fits a 2D model."""
        from monai.data import MetaTensor  # lazy: import medvit.inference stays free of MONAI

        spec = self.spec
        src = image.meta.get("source", "input")
        dims, want = spec.spatial_dims, spec.preprocessing.in_channels
        spatial = tuple(int(s) for s in image.shape[1:])
        size = "x".join(str(s) for s in spatial)
        squeezed = False
        if dims == 3 and len(spatial) == 2:
            raise InputError(f"{src}: a 2D image ({size}) for a 3D model ({spec.name}); give a 3D volume")
        if dims == 2 and len(spatial) == 3:
            if spatial[2] != 1:
                raise InputError(f"{src}: a 3D volume ({size}) for a 2D model ({spec.name}); give a 2D image")
            affine = np.asarray(image.affine, dtype=np.float64)
            plane = np.diag([*np.linalg.norm(affine[:3, :2], axis=0), 1.0, 1.0])  # in-plane pixel spacing
            image = MetaTensor(image.as_tensor()[..., 0], affine=torch.from_numpy(plane), meta={"source": src})
            squeezed = True
        channels = int(image.shape[0])
        if channels != want and (channels, want) not in CHANNEL_FITS:
            raise InputError(f"{src}: image has {channels} channel(s); the model ({spec.name}) takes {want}")
        return image, squeezed

    def _preprocess(self, image):
        src = image.meta.get("source", "input")
        try:
            return self._transforms({"image": image})["image"]
        except (RuntimeError, ValueError) as exc:
            cause = exc.__cause__ or exc
            raise InputError(f"{src}: preprocessing failed ({one_line(cause, 200)})") from None

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        if self._runtime is not None:
            return self._runtime(batch)
        if self._layout is not None:
            batch = batch.contiguous(memory_format=self._layout)
        with autocast(self.device, self.autocast_dtype):
            out = self.network(batch)
        if isinstance(out, tuple | list):
            out = out[0]
        return out.float()

    def _probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        out = self._logits(batch)
        return torch.sigmoid(out) if self.spec.multi_label else out.softmax(1)

    def _scores(self, batch: torch.Tensor) -> torch.Tensor:
        """What windows blend: logits (as MONAI and nnU-Net blend them), or with TTA the log of the mean of the
        flipped probabilities (softmax of a blend of log-probabilities is that of a blend of logits, since they
        differ by one constant per voxel)."""
        if not self.tta_axes or self.spec.multi_label:
            return with_flip_tta(self._logits, self.tta_axes)(batch)
        return with_flip_tta(self._probabilities, self.tta_axes)(batch).clamp_(min=1e-30).log_()

    @torch.inference_mode()
    def _classify(self, pre) -> np.ndarray:
        x = pre.as_tensor()[None].to(self.device)
        fn = with_flip_tta(self._probabilities, self.tta_axes, spatial_outputs=False)
        return fn(x)[0].cpu().numpy().astype(np.float32)

    @torch.inference_mode()
    def _segment(self, pre, label: str, result: Prediction) -> torch.Tensor:
        """Probabilities ``[K, *S]`` (float32, CPU) on the preprocessed grid: window scores blended, then
        softmax (sigmoid for multi-label packages), in place."""
        x = pre.as_tensor()
        inf = self.spec.inference
        if inf.mode == "whole":
            out = self._scores(x[None].to(self.device))[0].cpu()
        else:
            result.windows = {}
            with progress_bar(label, enabled=self.progress) as update:
                out = sliding_window_with_fallback(
                    x,
                    self._scores,
                    roi_size=inf.roi_size,
                    num_outputs=len(self.values),
                    overlap=self.overlap,
                    batch_size=self.batch_size,
                    blend=inf.blend,
                    device=self.device,
                    progress=update,
                    stats=result.windows,
                )
            out = out.cpu()
        return out.sigmoid_() if self.spec.multi_label else _softmax_(out)

    def _volumes(self, mask: np.ndarray, grid: InputGrid) -> dict[str, float] | None:
        if len(grid.spatial_shape) != 3 or not grid.meta.get("spacing_known", True):
            return None
        voxel_ml = abs(float(np.linalg.det(grid.affine[:3, :3]))) / 1000.0
        counts = np.bincount(mask.ravel(), minlength=max(self.values) + 1)
        return {self.spec.labels[v]: round(float(counts[v]) * voxel_ml, 4) for v in self.values[1:]}


def _private(work, source: np.ndarray):
    """``work`` cloned when it is float32 and may share memory with ``source``: the package's normalisation
    runs in place on float32 data (MONAI's NormalizeIntensity), which would change the caller's array or the
    image kept for statistics. Other dtypes are copied by the cast to float32 anyway."""
    if work.dtype == torch.float32 and np.may_share_memory(to_numpy(work)[0], source):
        return work.clone()
    return work


def _display_window(intensity) -> tuple[float, float] | None:
    """The input range the package maps to its network input, for displays (``None``: it normalises)."""
    if intensity.kind == "window":
        return (float(intensity.a_min), float(intensity.a_max))
    if intensity.kind == "scale":
        return (0.0, float(intensity.scale))
    return None


def _softmax_(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the first axis, in place (one spatial-size temporary at a time)."""
    x.sub_(x.amax(0, keepdim=True)).exp_()
    return x.div_(x.sum(0, keepdim=True))


def array_image(x, dims: int, *, affine: np.ndarray | None = None, spacing: tuple[float, ...] | None = None):
    """An array or tensor as a channel-first MetaTensor with ``dims`` spatial axes.

    ``[*S]`` gets a channel axis; the affine is ``affine`` (4x4, or 3x3 for 2D), else ``diag(spacing)``, else
    the identity (then volumes are not reported: the spacing is unknown).
    """
    data = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if data.ndim == dims:
        data = data[None]
    if data.ndim != dims + 1:
        want = ", ".join(["C", *"IJK"[:dims]])
        raise InputError(f"array of shape {tuple(x.shape)}: expected [{want}] for a {dims}D model")
    known = affine is not None or spacing is not None
    if affine is None:
        if spacing is not None and (len(spacing) != dims or min(spacing) <= 0):
            raise InputError(f"spacing {tuple(spacing)}: expected {dims} positive numbers")
        affine = np.diag([*(spacing or [1.0] * dims), 1.0])
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape == (dims + 1, dims + 1) and dims == 2:
        full = np.eye(4)
        full[np.ix_([0, 1, 3], [0, 1, 3])] = affine
        affine = full
    if affine.shape != (4, 4):
        raise InputError(f"affine of shape {affine.shape}: expected 4x4 (or 3x3 for a 2D array)")
    return make_image(
        data,
        affine,
        format="array",
        source="array",
        modality=None,
        description={"series_uid": None, "num_slices": int(data.shape[-1])},
        spacing_known=known,
    )
