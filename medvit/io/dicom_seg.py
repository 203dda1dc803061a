"""DICOM-SEG output (through highdicom) for segmentations of DICOM inputs, referencing the source series."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import medvit
from medvit.errors import InputError, one_line
from medvit.io.atomic import atomic_path
from medvit.io.dicom_scan import load_source_dataset
from medvit.io.meta import to_numpy


def _segment_descriptions(labels: dict[int, str], version: str):
    import highdicom as hd  # lazy: highdicom only for DICOM-SEG output (not info, convert, cards)
    from pydicom.sr.codedict import codes  # lazy: as highdicom

    algorithm = hd.AlgorithmIdentificationSequence(
        name="medvit", version=version, family=codes.cid7162.ArtificialIntelligence
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=int(value),
            segment_label=str(name)[:64],
            segmented_property_category=hd.sr.CodedConcept("85756007", "SCT", "Tissue"),
            segmented_property_type=hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=f"medvit segment {int(value)}",
        )
        for value, name in sorted(labels.items())
    ]


def write_dicom_seg(
    mask,
    reference,
    path: str | Path,
    *,
    label_names: dict[int, str] | None = None,
    series_description: str = "medvit segmentation",
    deidentify: bool = False,
) -> Path:
    """Write a label mask on a DICOM input's grid as a DICOM Segmentation (one segment per label).

    Args:
        mask: integer labels on the reference's grid, ``[I, J, K]`` or ``[1, I, J, K]``.
        reference: the image returned by :func:`medvit.io.read_image` for the DICOM input; its recorded
            source files are re-read to reference the series.
        path: output ``.dcm`` path (written atomically).
        label_names: ``{label value: name}``; values without a name are called ``label_N``.
        series_description: SeriesDescription of the new SEG series.
        deidentify: Write it de-identified (:func:`deidentify_dataset`): no patient name, ID, birth date,
            study dates, accession number, physicians, institution or free text; UIDs kept, so that it still
            references its source series.
    """
    import highdicom as hd  # lazy: highdicom only for DICOM-SEG output (not info, convert, cards)

    path = Path(path)
    meta = getattr(reference, "meta", {}) or {}
    sources, frame_idx = meta.get("dicom_sources"), meta.get("dicom_frames")
    if not sources:
        raise InputError(f"{path}: DICOM-SEG needs a DICOM input; {meta.get('source', 'this input')} is not one")
    data, _ = to_numpy(mask)
    grid = tuple(int(s) for s in reference.shape[1:])
    if data.ndim == len(grid) + 1:
        data = data[0]
    if tuple(data.shape) != grid:
        raise InputError(f"{path}: mask shape {tuple(data.shape)} is not the input grid {grid}")
    if data.dtype.kind == "f" and np.any(data != np.round(data)):
        raise InputError(f"{path}: DICOM-SEG needs integer labels")
    data = data.astype(np.int64)
    if data.min() < 0:
        raise InputError(f"{path}: negative label values in the mask")

    if len(grid) == 3:
        frames = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))  # [K, rows, cols] in slice order
    else:  # pixel grid [H, W]: one frame
        frames = data[None]
    present = {int(v) for v in np.unique(frames) if v > 0}
    if label_names is None:
        labels = {value: f"label_{value}" for value in sorted(present)}
    else:
        labels = {int(k): v for k, v in label_names.items() if int(k) > 0}
        unknown = present - set(labels)
        if unknown:
            raise InputError(f"{path}: mask holds labels {sorted(unknown)} missing from label_names")
    if not labels:
        labels = {1: "label_1"}  # an empty result is still a valid SEG with one (empty) segment

    datasets = [load_source_dataset(s) for s in dict.fromkeys(sources)]
    if len(datasets) == 1 and frame_idx and frame_idx[0] is not None:  # one multi-frame source
        n_frames = int(datasets[0].get("NumberOfFrames", 1))
        ordered = np.zeros((n_frames, *frames.shape[1:]), dtype=frames.dtype)
        ordered[np.asarray(frame_idx)] = frames
        frames = ordered
    frames = frames.astype(np.uint16 if max(labels) > 255 else np.uint8)

    try:
        seg = hd.seg.Segmentation(
            source_images=datasets,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=_segment_descriptions(labels, medvit.__version__),
            series_instance_uid=hd.UID(),
            series_number=9900,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="medvit",
            manufacturer_model_name="medvit",
            software_versions=medvit.__version__,
            device_serial_number="medvit",
            series_description=series_description,
            omit_empty_frames=False,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: cannot build a DICOM-SEG for this input ({one_line(exc)})") from None
    if deidentify:
        deidentify_dataset(seg)
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path


# PS3.15 Annex E, Basic Application Level Confidentiality Profile: the attributes a derived object copies from
# its source that identify the patient, the visit or the people involved. "Z" (type 2 in the IODs): kept
# with an empty value (a dummy for name and ID, which PACS need to file the object); "X": removed.
_DUMMY = {"PatientName": "Anonymous", "PatientID": "ANONYMOUS"}
_EMPTY = ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
          "ReferringPhysicianName", "ContentCreatorName")  # fmt: skip
_REMOVE = ("PatientBirthTime", "PatientAge", "PatientSize", "PatientWeight", "PatientAddress",
           "PatientTelephoneNumbers", "PatientMotherBirthName", "OtherPatientIDs", "OtherPatientNames",
           "OtherPatientIDsSequence", "PatientBirthName", "EthnicGroup", "Occupation", "MilitaryRank",
           "MedicalRecordLocator", "PatientComments", "AdditionalPatientHistory",
           "PatientInsurancePlanCodeSequence",
           "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "ResponsiblePerson",
           "ResponsibleOrganization", "PatientState", "PregnancyStatus", "SmokingStatus", "MedicalAlerts",
           "Allergies", "StudyDescription", "SeriesDescription", "ProtocolName", "ImageComments",
           "ClinicalTrialSponsorName", "ClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID",
           "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
           "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "OperatorsName", "PhysiciansOfRecord",
           "RequestingPhysician", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
           "AdmissionID", "AdmittingDiagnosesDescription", "PerformedProcedureStepDescription",
           "RequestedProcedureDescription", "RequestAttributesSequence", "ReferencedPatientSequence",
           "ReferencedStudySequence", "AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime")  # fmt: skip
# ContentDate/Time, SeriesDate/Time and InstanceCreationDate/Time stay: they are when medvit made the object
# (Content Date and Time are type 1 in a Segmentation), not the patient's dates
_METHOD_CODES = (("113100", "Basic Application Confidentiality Profile"), ("113110", "Retain UIDs Option"))
DEIDENTIFICATION_METHOD = "medvit: PS3.15 Basic Profile, Retain UIDs Option"  # LO: at most 64 characters


def deidentify_dataset(ds) -> None:
    """De-identify a dataset medvit derived from a source study, in place (PS3.15 Annex E, Basic Application
    Level Confidentiality Profile with the Retain UIDs Option): patient name and ID become dummies, birth
    date, sex, study date and time, accession number, study ID and physicians are emptied, other identifying
    attributes, dates and free text are removed (also inside sequences), private elements are removed, and
    ``PatientIdentityRemoved``/``DeidentificationMethod`` say so. Study, series, frame-of-reference and
    referenced-instance UIDs are kept, so the object still references its source; whoever holds the source
    study can therefore link the two."""
    from pydicom.dataset import Dataset  # lazy: pydicom only for DICOM outputs

    def clean(item) -> None:
        for key in _REMOVE:
            if key in item:
                delattr(item, key)
        for elem in list(item):
            if elem.VR == "SQ":
                for child in elem.value:
                    clean(child)

    ds.remove_private_tags()
    clean(ds)
    for key, value in _DUMMY.items():
        setattr(ds, key, value)
    for key in _EMPTY:
        if key in ds:
            setattr(ds, key, "")
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    methods = []
    for value, meaning in _METHOD_CODES:  # CID 7050, De-identification Method
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        methods.append(item)
    ds.DeidentificationMethodCodeSequence = methods
