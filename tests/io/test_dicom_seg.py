"""DICOM-SEG written for DICOM inputs: opens with highdicom, references the source, frames match the mask."""

from __future__ import annotations

import numpy as np
import pytest

from medvit.errors import InputError
from medvit.io import read_image, write_dicom_seg


def _mask(img) -> np.ndarray:
    mask = np.zeros(img.shape[1:], np.uint8)
    mask[2:6, 3:9, 1:3] = 1
    mask[10:14, 10:12, 4] = 2
    return mask


def test_seg_references_series_and_matches_mask(ct_series, tmp_path):
    import highdicom as hd
    import pydicom

    img = read_image(ct_series)
    mask = _mask(img)
    out = write_dicom_seg(mask, img, tmp_path / "case_seg.dcm", label_names={1: "liver", 2: "lesion"})
    seg = hd.seg.segread(out)
    first = pydicom.dcmread(next(ct_series.iterdir()), stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "lesion"]

    # frames in the source's slice order: [K, rows, cols] -> medvit's [I, J, K]
    sop_uids = [pydicom.dcmread(s, stop_before_pixels=True).SOPInstanceUID for s in img.meta["dicom_sources"]]
    labels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=sop_uids, combine_segments=True, skip_overlap_checks=True
    )
    np.testing.assert_array_equal(np.transpose(labels, (2, 1, 0)), mask)


def test_empty_mask_still_valid(ct_series, tmp_path):
    import highdicom as hd

    img = read_image(ct_series)
    out = write_dicom_seg(np.zeros(img.shape[1:], np.uint8), img, tmp_path / "empty.dcm")
    seg = hd.seg.segread(out)
    assert len(seg.SegmentSequence) == 1


def test_enhanced_multiframe_source(ct_series, tmp_path):
    import highdicom as hd
    import pydicom

    legacy = [pydicom.dcmread(f) for f in sorted(ct_series.iterdir())]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=legacy, series_instance_uid=hd.UID(), series_number=99,
        sop_instance_uid=hd.UID(), instance_number=1,
    )  # fmt: skip
    enhanced.save_as(tmp_path / "enh.dcm")
    img = read_image(tmp_path / "enh.dcm")
    mask = _mask(img)
    out = write_dicom_seg(mask, img, tmp_path / "seg.dcm")
    seg = hd.seg.segread(out)
    frames = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=enhanced.SOPInstanceUID,
        source_frame_numbers=[f + 1 for f in img.meta["dicom_frames"]],
        combine_segments=True,
        skip_overlap_checks=True,
    )
    np.testing.assert_array_equal(np.transpose(frames, (2, 1, 0)), mask)


def test_bad_requests_leave_nothing(ct_series, nibabel_files, tmp_path):
    img = read_image(ct_series)
    with pytest.raises(InputError, match=r"bad\.dcm: mask shape \(3, 3, 3\) is not the input grid \(16, 16, 5\)"):
        write_dicom_seg(np.zeros((3, 3, 3)), img, tmp_path / "bad.dcm")
    nifti = read_image(nibabel_files / "anatomical.nii")
    with pytest.raises(InputError, match=r"bad\.dcm: DICOM-SEG needs a DICOM input"):
        write_dicom_seg(np.zeros(nifti.shape[1:]), nifti, tmp_path / "bad.dcm")
    with pytest.raises(InputError, match=r"missing from label_names"):
        write_dicom_seg(_mask(img), img, tmp_path / "bad.dcm", label_names={1: "liver"})
    assert list(tmp_path.iterdir()) == []
