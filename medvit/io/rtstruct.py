"""DICOM RT Structure Set output for segmentations of DICOM inputs: one ROI per label, planar contours.

Written with pydicom. The contours of each label on each slice are the 0.5 iso-lines of its binary mask
(:func:`skimage.measure.find_contours`), which run half a voxel outside the structure's voxel centres, so
that filling them (a pixel belongs when its centre is inside; nested contours are holes, the even-odd rule)
gives the mask back. Points go to patient coordinates through the input grid's affine (voxel -> RAS, then
x and y negated for DICOM's LPS), which holds for any row/column spacing, orientation and gantry tilt.

rt-utils (what TotalSegmentator uses) was not used: it re-reads and re-sorts the series from a folder (no
zips, no multi-frame, no choice between series in one folder), scales the row direction by the row spacing
(contours misplaced when PixelSpacing is not square, qurit/rt-utils#92) and needs OpenCV.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

import medvit
from medvit.errors import InputError
from medvit.io.atomic import atomic_path
from medvit.io.dicom_scan import frames_of, load_source_dataset
from medvit.io.dicom_seg import deidentify_dataset
from medvit.io.meta import to_numpy
from medvit.io.palette import label_colour

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
_STUDY_COMPONENT_CLASS = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management, what RT objects reference
# copied from the source (type 2 in the Patient and General Study modules: present, maybe empty)
_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                  "ReferringPhysicianName", "StudyID", "AccessionNumber")  # fmt: skip


def write_rtstruct(
    mask,
    reference,
    path: str | Path,
    *,
    label_names: dict[int, str] | None = None,
    colours: dict[int, tuple[int, int, int]] | None = None,
    series_description: str = "medvit segmentation",
    deidentify: bool = False,
) -> Path:
    """Write a label mask on a DICOM input's grid as an RT Structure Set referencing the source series.

    One ROI per label present in the mask (all labels, without contours, when none is), named from
    ``label_names`` and shown in ``colours``; per slice, one CLOSED_PLANAR contour per boundary (outer
    outlines and holes) in patient coordinates (LPS mm), each referencing its source image (and frame, for
    a multi-frame source). The structure set references the source's frame of reference, study and series.

    Args:
        mask: Integer labels on the reference's grid, ``[I, J, K]`` or ``[1, I, J, K]``.
        reference: The image :func:`medvit.io.read_image` returned for the DICOM input (or a prediction's
            grid): ``shape`` ``[C, I, J, K]``, the voxel-to-RAS ``affine`` and ``meta["dicom_sources"]``.
        path: Output ``.dcm`` path (written atomically).
        label_names: ``{label value: name}``; values without a name are called ``label_N``.
        colours: ``{label value: (r, g, b)}``; default :func:`medvit.io.palette.label_colour`.
        series_description: SeriesDescription of the new RTSTRUCT series.
        deidentify: Write it de-identified (:func:`medvit.io.dicom_seg.deidentify_dataset`).

    Raises:
        InputError: The reference is not a DICOM series with patient geometry, or the mask does not fit it.
    """
    path = Path(path)
    meta = getattr(reference, "meta", {}) or {}
    sources, frame_idx = meta.get("dicom_sources"), meta.get("dicom_frames")
    grid = tuple(int(s) for s in reference.shape[1:])
    if not sources:
        what = meta.get("source", "this input")
        raise InputError(
            f"{path}: RTSTRUCT needs a DICOM input read slice by slice; {what} is not one (or was resampled)"
        )
    if len(grid) != 3 or len(sources) != grid[2]:
        raise InputError(f"{path}: RTSTRUCT needs a DICOM series with patient geometry (positions, orientation)")
    data, _ = to_numpy(mask)
    if data.ndim == 4:
        data = data[0]
    if tuple(data.shape) != grid:
        raise InputError(f"{path}: mask shape {tuple(data.shape)} is not the input grid {grid}")
    if data.dtype.kind not in "iu":
        if data.dtype.kind != "b" and np.any(data != np.round(data)):
            raise InputError(f"{path}: RTSTRUCT needs integer labels")
        data = data.astype(np.int64)
    if data.size and data.min() < 0:
        raise InputError(f"{path}: negative label values in the mask")
    boxes = _boxes(data)
    present = sorted(boxes)
    names = {int(k): str(v) for k, v in (label_names or {}).items() if int(k) > 0}
    unknown = set(present) - set(names) if label_names is not None else set()
    if unknown:
        raise InputError(f"{path}: mask holds labels {sorted(unknown)} missing from label_names")
    rois = present or sorted(names) or [1]
    affine, _ = to_numpy(getattr(reference, "affine", None))
    affine = np.asarray(affine, dtype=np.float64)

    datasets = {s: load_source_dataset(s) for s in dict.fromkeys(sources)}
    frames = [None if not frame_idx or frame_idx[k] is None else int(frame_idx[k]) for k in range(len(sources))]
    geometry = {s: frames_of(s, ds) for s, ds in datasets.items()}
    placed = [geometry[s][f or 0] for s, f in zip(sources, frames, strict=True)]
    if any(f.ipp is None or f.iop is None for f in placed):  # cine and photographs: frames, not positions
        raise InputError(f"{path}: RTSTRUCT needs a DICOM series with patient geometry (positions, orientation)")
    first = datasets[sources[0]]
    frame_uid = first.get("FrameOfReferenceUID")
    if not frame_uid:
        raise InputError(f"{path}: the source series has no FrameOfReferenceUID; RTSTRUCT cannot reference it")
    slices = [_image_ref(datasets[s], None if f is None else f + 1) for s, f in zip(sources, frames, strict=True)]

    ds = _structure_set(first, series_description)
    ds.ReferencedFrameOfReferenceSequence = [_frame_of_reference(first, frame_uid, slices)]
    colours = colours or {}
    structure_rois, roi_contours, observations = [], [], []
    for number, value in enumerate(rois, start=1):
        name = names.get(value, f"label_{value}")
        structure_rois.append(_dataset(ROINumber=value, ReferencedFrameOfReferenceUID=frame_uid,
                                       ROIName=name[:64], ROIGenerationAlgorithm="AUTOMATIC",
                                       ROIGenerationDescription=f"medvit {medvit.__version__}"))  # fmt: skip
        item = _dataset(ROIDisplayColor=list(colours.get(value, label_colour(value))), ReferencedROINumber=value)
        found = _contours(data, value, affine, boxes[value]) if value in boxes else []
        contours = [_contour(points, slices[k], n) for n, (k, points) in enumerate(found, 1)]
        if contours:
            item.ContourSequence = contours
        roi_contours.append(item)
        observations.append(
            _dataset(
                ObservationNumber=number, ReferencedROINumber=value, RTROIInterpretedType="", ROIInterpreter=""
            )
        )
    ds.StructureSetROISequence = structure_rois
    ds.ROIContourSequence = roi_contours
    ds.RTROIObservationsSequence = observations
    ds.ApprovalStatus = "UNAPPROVED"  # machine-made contours: for review before clinical use
    if deidentify:
        deidentify_dataset(ds)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def _dataset(**values):
    from pydicom.dataset import Dataset  # lazy: pydicom only for DICOM outputs

    ds = Dataset()
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def _image_ref(source, frame_number: int | None):
    ref = _dataset(ReferencedSOPClassUID=source.SOPClassUID, ReferencedSOPInstanceUID=source.SOPInstanceUID)
    if frame_number is not None:  # type 1C: the image is one frame of a multi-frame instance
        ref.ReferencedFrameNumber = frame_number
    return ref


def _structure_set(source, series_description: str):
    """The dataset with every module but the ROIs: file meta, SOP common, patient and study (copied from the
    source), RT series, equipment and the structure set's own attributes."""
    from pydicom.dataset import FileMetaDataset  # lazy: pydicom only for DICOM outputs
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # lazy: as above

    now = dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds = _dataset(SpecificCharacterSet="ISO_IR 192", SOPClassUID=RTSTRUCT_SOP_CLASS, SOPInstanceUID=generate_uid())
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = file_meta
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    for key in _PATIENT_STUDY:
        setattr(ds, key, source.get(key, ""))
    ds.StudyInstanceUID = source.StudyInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 9901
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = series_description
    ds.OperatorsName = ""
    ds.Manufacturer = ds.ManufacturerModelName = "medvit"
    ds.SoftwareVersions = medvit.__version__
    ds.StructureSetLabel = "medvit"  # SH: 16 characters at most
    ds.StructureSetName = "medvit segmentation"
    ds.StructureSetDate, ds.StructureSetTime = date, time
    ds.InstanceNumber = 1
    return ds


def _frame_of_reference(source, frame_uid: str, slices: list):
    series = _dataset(SeriesInstanceUID=source.SeriesInstanceUID, ContourImageSequence=slices)
    study = _dataset(
        ReferencedSOPClassUID=_STUDY_COMPONENT_CLASS,
        ReferencedSOPInstanceUID=source.StudyInstanceUID,
        RTReferencedSeriesSequence=[series],
    )
    return _dataset(FrameOfReferenceUID=frame_uid, RTReferencedStudySequence=[study])


def _contour(points: np.ndarray, image_ref, number: int):
    """One CLOSED_PLANAR contour item: ``points`` ``[N, 3]`` LPS mm (not repeating the first at the end)."""
    from pydicom.valuerep import format_number_as_ds  # lazy: pydicom only for DICOM outputs

    item = _dataset(ContourImageSequence=[image_ref], ContourGeometricType="CLOSED_PLANAR")
    item.NumberOfContourPoints = len(points)
    item.ContourNumber = number
    item.ContourData = [format_number_as_ds(float(v)) for v in np.round(points, 4).ravel()]
    return item


def _boxes(data: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """Label value -> the index box it occupies, for the values present (one pass, no copy of the mask)."""
    from scipy import ndimage  # lazy: SciPy only for RTSTRUCT here

    return {v: box for v, box in enumerate(ndimage.find_objects(data), start=1) if box is not None}


def _contours(data: np.ndarray, value: int, affine: np.ndarray, box: tuple[slice, ...]):
    """``(slice index, [N, 3] LPS points)`` for every boundary of ``data == value`` on every slice of ``box``."""
    from skimage.measure import approximate_polygon, find_contours  # lazy: scikit-image only for RTSTRUCT

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    inside = data[box] == value
    offset = np.array([box[0].start - 1.0, box[1].start - 1.0])  # the box's corner, less the 1-voxel pad
    for dk in range(inside.shape[2]):
        plane = np.pad(inside[:, :, dk], 1)  # padded: outlines touching the edge close too
        if not plane.any():
            continue
        k = box[2].start + dk
        for ring in find_contours(plane.astype(np.float32), 0.5):  # (i, j) in the padded plane
            ring = approximate_polygon(ring, tolerance=0)[:-1] + offset  # collinear points out; closure implied
            if len(ring) < 3:
                continue
            ijk = np.column_stack([ring, np.full(len(ring), float(k)), np.ones(len(ring))])
            yield k, (ijk @ lps.T)[:, :3]
