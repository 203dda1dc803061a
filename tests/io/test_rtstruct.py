"""RTSTRUCT on pydicom's real CT series: read back with pydicom, its contours are filled independently (each
point taken to its referenced image's pixels through that image's own ImagePositionPatient, orientation and
PixelSpacing, polygons filled with scikit-image, nested ones as holes) and give the mask back; every point
lies half a voxel between a voxel of its structure and one outside it, through medvit's RAS affine with x and
y negated (DICOM is LPS). Non-square pixels (misplaced by rt-utils), multi-frame sources, references,
de-identification and refusals."""

from __future__ import annotations

import numpy as np
import pytest

from medvit.errors import InputError
from medvit.io import read_image, write_rtstruct
from medvit.io.palette import label_colour


def _dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def _sources(folder):
    """The series' datasets by SOPInstanceUID, read with pydicom (not through medvit)."""
    import pydicom

    return {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(f) for f in sorted(folder.iterdir()))}


def _fill(rtstruct, roi_number: int, image_for) -> dict[tuple[str, int | None], np.ndarray]:
    """ROI ``roi_number`` filled on each referenced image: ``{(SOPInstanceUID, frame): [rows, cols] bool}``.

    ``image_for(uid, frame) -> (position, row_cosine, column_cosine, (row spacing, column spacing), shape)``.
    """
    from skimage.draw import polygon

    (item,) = [c for c in rtstruct.ROIContourSequence if c.ReferencedROINumber == roi_number]
    filled: dict = {}
    for contour in item.get("ContourSequence", []):
        assert contour.ContourGeometricType == "CLOSED_PLANAR"
        (ref,) = contour.ContourImageSequence
        key = (ref.ReferencedSOPInstanceUID, ref.get("ReferencedFrameNumber"))
        ipp, row_cos, col_cos, (row_mm, col_mm), shape = image_for(*key)
        points = np.asarray(contour.ContourData, float).reshape(-1, 3)
        assert len(points) == contour.NumberOfContourPoints
        normal = np.cross(row_cos, col_cos)
        np.testing.assert_allclose((points - ipp) @ normal, 0, atol=1e-3)  # on the image's plane
        cols = (points - ipp) @ row_cos / col_mm  # DICOM: PixelSpacing is (between rows, between columns)
        rows = (points - ipp) @ col_cos / row_mm
        plane = np.zeros(shape, bool)
        rr, cc = polygon(rows, cols, shape)
        plane[rr, cc] ^= True  # even-odd: a contour inside another is a hole
        filled[key] = filled.get(key, np.zeros(shape, bool)) ^ plane
    return filled


def _single_frame_geometry(sources):
    def image_for(uid, frame):
        assert frame is None
        ds = sources[uid]
        iop = np.asarray(ds.ImageOrientationPatient, float)
        return (np.asarray(ds.ImagePositionPatient, float), iop[:3], iop[3:],
                tuple(float(v) for v in ds.PixelSpacing), (ds.Rows, ds.Columns))  # fmt: skip

    return image_for


def _two_labels(image) -> np.ndarray:
    hu = image[0].numpy()
    mask = np.zeros(hu.shape, np.uint8)
    mask[hu > 0] = 1
    mask[hu < -500] = 2
    return mask


def _check_points_on_voxel_boundaries(rtstruct, roi_number, mask, affine, slice_of_uid):
    """Every contour point, LPS -> RAS -> medvit voxel index, sits on its slice, half a voxel between a voxel
    of the structure and one outside it (the contour runs along the voxel edges)."""
    inv = np.linalg.inv(affine)
    (item,) = [c for c in rtstruct.ROIContourSequence if c.ReferencedROINumber == roi_number]
    padded = np.pad(mask == roi_number, ((1, 1), (1, 1), (0, 0)))
    for contour in item.ContourSequence:
        k = slice_of_uid[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
        lps = np.asarray(contour.ContourData, float).reshape(-1, 3)
        ras = lps * [-1.0, -1.0, 1.0]
        ijk = (np.c_[ras, np.ones(len(ras))] @ inv.T)[:, :3]
        np.testing.assert_allclose(ijk[:, 2], k, atol=1e-3)
        for i, j in ijk[:, :2]:
            half = [abs(v - np.floor(v) - 0.5) < 1e-3 for v in (i, j)]
            assert sum(half) == 1, (i, j)  # a point between two voxel centres along one axis
            a = (int(np.floor(i)), int(round(j))) if half[0] else (int(round(i)), int(np.floor(j)))
            b = (a[0] + 1, a[1]) if half[0] else (a[0], a[1] + 1)
            inside = {bool(padded[a[0] + 1, a[1] + 1, k]), bool(padded[b[0] + 1, b[1] + 1, k])}
            assert inside == {True, False}, (i, j, k)


def test_contours_give_the_mask_back_and_lie_on_its_voxels(ct_series, tmp_path):
    import pydicom

    image = read_image(ct_series)
    mask = _two_labels(image)
    out = write_rtstruct(mask, image, tmp_path / "rt.dcm", label_names={1: "soft tissue", 2: "air", 3: "absent"})
    rt = pydicom.dcmread(out)
    sources = _sources(ct_series)
    order = [pydicom.dcmread(s, stop_before_pixels=True).SOPInstanceUID for s in image.meta["dicom_sources"]]
    first = next(iter(sources.values()))

    assert rt.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3" and rt.Modality == "RTSTRUCT"
    assert rt.StudyInstanceUID == first.StudyInstanceUID
    (frame,) = rt.ReferencedFrameOfReferenceSequence
    assert frame.FrameOfReferenceUID == first.FrameOfReferenceUID
    (series,) = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    assert [r.ReferencedSOPInstanceUID for r in series.ContourImageSequence] == order
    rois = {r.ROINumber: r for r in rt.StructureSetROISequence}
    assert {n: r.ROIName for n, r in rois.items()} == {1: "soft tissue", 2: "air"}  # the labels present
    assert all(r.ReferencedFrameOfReferenceUID == first.FrameOfReferenceUID for r in rois.values())
    colours = {c.ReferencedROINumber: tuple(c.ROIDisplayColor) for c in rt.ROIContourSequence}
    assert colours == {1: label_colour(1), 2: label_colour(2)} and len(set(colours.values())) == 2

    image_for = _single_frame_geometry(sources)
    slice_of = {u: k for k, u in enumerate(order)}
    for value in (1, 2):
        filled = _fill(rt, value, image_for)
        empty = np.zeros((16, 16), bool)
        volume = np.stack([filled.get((uid, None), empty) for uid in order], -1)  # [row, col, k]
        truth = mask.transpose(1, 0, 2) == value  # medvit's [I=column, J=row, K]
        assert truth.sum() > 10
        assert _dice(volume, truth) >= 0.95
        np.testing.assert_array_equal(volume, truth)  # here, exactly
        _check_points_on_voxel_boundaries(rt, value, mask, np.asarray(image.affine), slice_of)


def test_non_square_pixels_and_a_hole(editable_series, tmp_path):
    """PixelSpacing 0.4 mm between rows and 0.9 mm between columns (rt-utils swaps them); a ring with a hole."""
    import pydicom

    folder, edit = editable_series
    edit(lambda ds, i: setattr(ds, "PixelSpacing", [0.4, 0.9]))
    image = read_image(folder)
    mask = np.zeros(image.shape[1:], np.uint8)
    mask[3:12, 2:9, 1:4] = 1
    mask[5:9, 4:7, 2] = 0  # a hole on the middle slice
    mask[13:15, 11:14, 3] = 1  # and a second island
    rt = pydicom.dcmread(write_rtstruct(mask, image, tmp_path / "rt.dcm", label_names={1: "ring"}))
    sources = _sources(folder)
    order = [pydicom.dcmread(s, stop_before_pixels=True).SOPInstanceUID for s in image.meta["dicom_sources"]]
    filled = _fill(rt, 1, _single_frame_geometry(sources))
    volume = np.stack([filled.get((uid, None), np.zeros((16, 16), bool)) for uid in order], -1)
    np.testing.assert_array_equal(volume, mask.transpose(1, 0, 2) == 1)
    _check_points_on_voxel_boundaries(rt, 1, mask, np.asarray(image.affine), {u: k for k, u in enumerate(order)})


def test_multiframe_source_references_frames(ct_series, tmp_path):
    import highdicom as hd
    import pydicom

    legacy = [pydicom.dcmread(f) for f in sorted(ct_series.iterdir())]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=legacy, series_instance_uid=hd.UID(), series_number=99, sop_instance_uid=hd.UID(),
        instance_number=1,
    )  # fmt: skip
    enhanced.save_as(tmp_path / "enhanced.dcm")
    image = read_image(tmp_path / "enhanced.dcm")
    mask = _two_labels(image)
    rt = pydicom.dcmread(write_rtstruct(mask, image, tmp_path / "rt.dcm", label_names={1: "soft", 2: "air"}))
    mf = pydicom.dcmread(tmp_path / "enhanced.dcm")
    shared = mf.SharedFunctionalGroupsSequence[0]
    spacing = tuple(float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    positions = [np.asarray(f.PlanePositionSequence[0].ImagePositionPatient, float)
                 for f in mf.PerFrameFunctionalGroupsSequence]  # fmt: skip

    def image_for(uid, frame):
        assert uid == mf.SOPInstanceUID and frame is not None
        return positions[frame - 1], iop[:3], iop[3:], spacing, (mf.Rows, mf.Columns)

    frames = [f + 1 for f in image.meta["dicom_frames"]]
    for value in (1, 2):
        filled = _fill(rt, value, image_for)
        volume = np.stack([filled.get((mf.SOPInstanceUID, f), np.zeros((16, 16), bool)) for f in frames], -1)
        np.testing.assert_array_equal(volume, mask.transpose(1, 0, 2) == value)


def test_deidentified_and_empty(ct_series, tmp_path):
    """Nothing found: every label is an ROI without contours; --deidentify: no patient identifier, UIDs kept."""
    import pydicom

    image = read_image(ct_series)
    first = pydicom.dcmread(image.meta["dicom_sources"][0], stop_before_pixels=True)
    out = write_rtstruct(np.zeros(image.shape[1:], np.uint8), image, tmp_path / "rt.dcm",
                         label_names={1: "liver", 2: "spleen"}, deidentify=True)  # fmt: skip
    rt = pydicom.dcmread(out)
    assert [r.ROIName for r in rt.StructureSetROISequence] == ["liver", "spleen"]
    assert all("ContourSequence" not in c for c in rt.ROIContourSequence)
    assert rt.PatientName == "Anonymous" and rt.PatientIdentityRemoved == "YES"
    assert rt.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == first.FrameOfReferenceUID
    raw = out.read_bytes()
    for value in (str(first.PatientName), str(first.PatientID)):
        assert value.encode() not in raw, value
    identified = pydicom.dcmread(write_rtstruct(np.zeros(image.shape[1:], np.uint8), image, tmp_path / "id.dcm"))
    assert identified.PatientName == first.PatientName and identified.PatientID == first.PatientID


def _frames_without_positions(ct_series, path):
    """The series as one multi-frame file whose frames have no position or orientation (as cine has)."""
    import highdicom as hd
    import pydicom

    legacy = [pydicom.dcmread(f) for f in sorted(ct_series.iterdir())]
    ds = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=legacy, series_instance_uid=hd.UID(), series_number=99, sop_instance_uid=hd.UID(),
        instance_number=1,
    )  # fmt: skip
    for group in ds.PerFrameFunctionalGroupsSequence:
        del group.PlanePositionSequence
    del ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence
    ds.save_as(path)
    return path


def test_refusals(ct_series, nibabel_files, tmp_path):
    frames = read_image(_frames_without_positions(ct_series, tmp_path / "cine.dcm"))  # a pixel grid [C, H, W, F]
    assert frames.shape[1:] == (16, 16, 5) and len(frames.meta["dicom_sources"]) == 5
    with pytest.raises(InputError, match=r"rt\.dcm: RTSTRUCT needs a DICOM series with patient geometry"):
        write_rtstruct(np.ones(frames.shape[1:], np.uint8), frames, tmp_path / "out" / "rt.dcm")
    assert not (tmp_path / "out").exists()
    image = read_image(ct_series)
    nifti = read_image(nibabel_files / "anatomical.nii")
    with pytest.raises(InputError, match=r"rt\.dcm: RTSTRUCT needs a DICOM input"):
        write_rtstruct(np.zeros(nifti.shape[1:], np.uint8), nifti, tmp_path / "rt.dcm")
    with pytest.raises(InputError, match=r"rt\.dcm: mask shape \(4, 4, 4\) is not the input grid \(16, 16, 5\)"):
        write_rtstruct(np.zeros((4, 4, 4), np.uint8), image, tmp_path / "rt.dcm")
    mask = np.zeros(image.shape[1:], np.uint8)
    mask[0, 0, 0] = 7
    with pytest.raises(InputError, match=r"labels \[7\] missing from label_names"):
        write_rtstruct(mask, image, tmp_path / "rt.dcm", label_names={1: "a"})
    assert not list(tmp_path.glob("rt.dcm")) and not (tmp_path / "out").exists()
