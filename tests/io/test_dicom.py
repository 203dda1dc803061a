"""DICOM reading on real files: geometry against SimpleITK, series handling, compression, bad input."""

from __future__ import annotations

import shutil
import warnings
import zipfile

import numpy as np
import pytest

from medvit.errors import GeometryError, InputError, MedvitWarning
from medvit.io import list_series, read_image
from medvit.io.geometry import voxel_to_world


def _read_quiet(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_image(path, **kw)


# ------------------------------------------------------------------------------- geometry vs SimpleITK


def test_series_matches_simpleitk(ct_series, sitk_affine):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(ct_series)))
    ref = reader.Execute()
    img = read_image(ct_series)

    assert img.shape == (1, *ref.GetSize())
    np.testing.assert_allclose(np.asarray(img.affine), sitk_affine(ref), atol=1e-4)
    # SimpleITK applies rescale slope/intercept too; its array is [K, J, I]
    np.testing.assert_array_equal(img[0].numpy(), sitk.GetArrayFromImage(ref).transpose(2, 1, 0))
    assert img.meta["modality"] == "CT"
    assert img.meta["description"]["num_slices"] == 5
    np.testing.assert_allclose(img.meta["spacing"], ref.GetSpacing(), atol=1e-6)


def test_single_file_matches_simpleitk(pydicom_files, sitk_affine):
    import SimpleITK as sitk

    path = pydicom_files / "CT_small.dcm"
    ref = sitk.ReadImage(str(path))
    img = read_image(path)
    assert img.shape == (1, *ref.GetSize())
    # in-plane axes and origin must agree (the slice axis of a single slice is only its thickness)
    np.testing.assert_allclose(np.asarray(img.affine)[:, [0, 1, 3]], sitk_affine(ref)[:, [0, 1, 3]], atol=1e-4)
    np.testing.assert_array_equal(img[0, :, :, 0].numpy(), sitk.GetArrayFromImage(ref)[0].T)


def test_voxel_world_positions_equal_image_position_patient(ct_series):
    import pydicom

    img = read_image(ct_series)
    positions = sorted(
        (np.asarray(pydicom.dcmread(f).ImagePositionPatient, float) for f in ct_series.iterdir()),
        key=lambda p: p[2],
    )
    k = np.arange(len(positions))
    world = voxel_to_world(np.asarray(img.affine), np.stack([0 * k, 0 * k, k], axis=1))
    lps = world * np.array([-1, -1, 1])
    np.testing.assert_allclose(lps, np.stack(positions), atol=1e-4)


def test_slices_sorted_by_position_not_by_name_or_instance_number(editable_series, ct_series):
    folder, edit = editable_series

    def scramble(ds, i):
        ds.InstanceNumber = [3, 1, 5, 2, 4][i]

    edit(scramble)
    for i, f in enumerate(sorted(folder.iterdir())):  # file names in a different order too
        f.rename(folder / f"IMG{(7 * i) % 5:04d}.dcm")
    np.testing.assert_array_equal(read_image(folder).numpy(), read_image(ct_series).numpy())
    np.testing.assert_allclose(np.asarray(read_image(folder).affine), np.asarray(read_image(ct_series).affine))


def test_rescale_slope_intercept_applied(editable_series, ct_series):
    folder, edit = editable_series

    def rescale(ds, i):
        ds.RescaleSlope = 2.5
        ds.RescaleIntercept = -1000

    import pydicom

    first = pydicom.dcmread(next(ct_series.iterdir()))
    slope, intercept = float(first.get("RescaleSlope", 1)), float(first.get("RescaleIntercept", 0))
    stored = (read_image(ct_series).numpy() - intercept) / slope
    edit(rescale)
    got = read_image(folder)
    assert got.dtype.is_floating_point
    np.testing.assert_allclose(got.numpy(), stored * 2.5 - 1000, rtol=1e-6)


def test_nested_folder_and_zip(ct_series, tmp_path):
    nested = tmp_path / "study" / "a" / "b"
    shutil.copytree(ct_series, nested)
    (tmp_path / "study" / "notes.txt").write_text("not an image")
    ref = read_image(ct_series)
    np.testing.assert_array_equal(read_image(tmp_path / "study").numpy(), ref.numpy())

    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in ct_series.iterdir():
            zf.write(f, f"export/CT/{f.name}")
        zf.writestr("export/README.txt", "hello")
    from_zip = read_image(archive)
    np.testing.assert_array_equal(from_zip.numpy(), ref.numpy())
    np.testing.assert_allclose(np.asarray(from_zip.affine), np.asarray(ref.affine))
    assert all("::" in s for s in from_zip.meta["dicom_sources"])


def test_enhanced_multiframe_equals_legacy_series(ct_series, tmp_path):
    """highdicom converts the real series into an enhanced CT multi-frame; both must read the same."""
    import highdicom as hd
    import pydicom

    legacy = [pydicom.dcmread(f) for f in sorted(ct_series.iterdir())]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=legacy,
        series_instance_uid=hd.UID(),
        series_number=99,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    path = tmp_path / "enhanced.dcm"
    enhanced.save_as(path)
    img, ref = read_image(path), read_image(ct_series)
    assert img.meta["format"] == "dicom-multiframe"
    np.testing.assert_array_equal(img.numpy(), ref.numpy())
    np.testing.assert_allclose(np.asarray(img.affine), np.asarray(ref.affine), atol=1e-5)


# ----------------------------------------------------------------------------------- compressed pixels


@pytest.mark.parametrize(
    "name",
    ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm"],
)
def test_lossless_syntaxes_decode_exactly(pydicom_files, name):
    ref = read_image(pydicom_files / "MR_small.dcm")
    img = read_image(pydicom_files / name)
    np.testing.assert_array_equal(img.numpy(), ref.numpy())
    np.testing.assert_allclose(np.asarray(img.affine), np.asarray(ref.affine))


@pytest.mark.parametrize(
    "name, channels",
    [("SC_rgb_jpeg_dcmtk.dcm", 3), ("JPGExtended.dcm", 1), ("JPEG2000.dcm", 1), ("SC_rgb_rle.dcm", 3)],
)
def test_compressed_syntaxes_decode(pydicom_files, name, channels):
    img = read_image(pydicom_files / name)
    assert img.shape[0] == channels
    assert float(img.float().std()) > 0


def test_jpeg_baseline_close_to_rle_original(pydicom_files):
    lossless = read_image(pydicom_files / "SC_rgb_rle.dcm").float()
    lossy = read_image(pydicom_files / "SC_rgb_jpeg_dcmtk.dcm").float()
    assert lossless.shape == lossy.shape
    assert float((lossless - lossy).abs().mean()) < 3.0


def test_photograph_dicom_is_a_pixel_grid(pydicom_files, tmp_path):
    import pydicom

    img = read_image(pydicom_files / "SC_rgb_rle.dcm")  # secondary capture: no patient geometry
    assert img.shape == (3, 100, 100)
    assert img.meta["spacing_known"] is True  # it carries PixelSpacing
    ds = pydicom.dcmread(pydicom_files / "SC_rgb_rle.dcm")
    del ds.PixelSpacing
    ds.save_as(tmp_path / "photo.dcm")
    img = read_image(tmp_path / "photo.dcm")
    assert img.shape == (3, 100, 100)
    assert img.meta["spacing_known"] is False


# ------------------------------------------------------------------------------------- series handling


def test_several_series_need_a_choice(pydicom_files, ct_series):
    root = pydicom_files / "dicomdirtests" / "98892001"
    with pytest.raises(InputError, match=r"holds 3 series; pick one with series=") as err:
        read_image(root)
    assert "SmartScore" not in str(err.value) and "5 slice(s)" in str(err.value)  # free text stays out
    assert "\n" not in str(err.value)
    uid = "1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.6"
    np.testing.assert_array_equal(read_image(root, series=uid).numpy(), read_image(ct_series).numpy())
    prefix = uid[: uid.rindex(".") + 1] + "6"
    assert read_image(root, series=prefix).shape == (1, 16, 16, 5)
    listing = list_series(root)
    assert {s["num_slices"] for s in listing} == {1, 5}


def test_series_selection_errors(pydicom_files):
    root = pydicom_files / "dicomdirtests" / "98892001"
    with pytest.raises(InputError, match="no series matches '9.9.9'"):
        read_image(root, series="9.9.9")
    with pytest.raises(InputError, match=r"matches 3 series|mixes 2 orientations"):
        read_image(root, series="1.3.6.1.4.1.5962")


def test_mixed_orientations_are_an_error(mixed_orientation_series):
    with pytest.raises(InputError, match=r"mixes 7 orientations or image sizes") as err:
        read_image(mixed_orientation_series)
    assert "#1" in str(err.value)
    one = read_image(mixed_orientation_series, series=list_series(mixed_orientation_series)[0]["series_uid"])
    assert one.shape == (1, 16, 16, 1)


def test_a_gap_between_slices_is_an_error_naming_it(uneven_series):
    """Steps 202.5, 1.25, 1.25 mm: on the mean step the middle slices would land ~100 mm from where they are."""
    with pytest.raises(
        GeometryError, match=r"202\.5 mm step between slices 0 and 1 where the median step is 1\.25"
    ):
        read_image(uneven_series)


def test_a_gap_is_resampled_from_the_true_positions_when_asked(uneven_series):
    import pydicom

    with pytest.warns(MedvitWarning, match=r"resampled from 4 unevenly placed slices"):
        img = read_image(uneven_series, resample_uneven=True)
    assert img.shape == (1, 16, 16, 165)  # (105.52 + 99.48) / 1.25 + 1
    assert img.meta["description"]["resampled"] == {
        "from_slices": 4, "to_slices": 165, "step_mm": 1.25, "largest_gap_mm": 202.5}  # fmt: skip
    world = voxel_to_world(np.asarray(img.affine), np.array([[0, 0, 0], [0, 0, 164]]))
    np.testing.assert_allclose(world[:, 2], [-99.48, 105.52], atol=1e-3)  # the ends exactly where they are
    files = sorted(uneven_series.iterdir(), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    last = pydicom.dcmread(files[-1])
    expected = last.pixel_array.T * float(last.RescaleSlope) + float(last.RescaleIntercept)
    np.testing.assert_allclose(img[0, :, :, -1].numpy(), expected, atol=1e-3)  # a true slice is kept as is
    assert "dicom_sources" not in img.meta or not img.meta.get("dicom_sources")  # no DICOM-SEG on a new grid


def test_uneven_steps_within_the_gap_tolerance_warn_with_values(editable_series):
    folder, edit = editable_series

    def shift(ds, i):
        if abs(float(ds.ImagePositionPatient[2]) - 3.7625) < 1e-3:
            ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], 3.2]

    edit(shift)
    with pytest.warns(MedvitWarning, match=r"uneven slice spacing.*1\.938, 3\.062"):
        img = read_image(folder)
    assert img.shape == (1, 16, 16, 5)


def test_gantry_tilt_keeps_exact_world_positions(editable_series):
    folder, edit = editable_series
    positions = {}

    def tilt(ds, i):
        z = float(ds.ImagePositionPatient[2])
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], -143.0 + 0.5 * z, z]  # atan(0.5) = 26.57 degrees
        positions[z] = np.asarray(ds.ImagePositionPatient, float)

    edit(tilt)
    with pytest.warns(MedvitWarning, match=r"gantry tilt of 26\.57 degrees"):
        img = read_image(folder)
    expected = np.stack([positions[z] for z in sorted(positions)])
    k = np.arange(5)
    lps = voxel_to_world(np.asarray(img.affine), np.stack([0 * k, 0 * k, k], 1)) * np.array([-1, -1, 1])
    np.testing.assert_allclose(lps, expected, atol=1e-4)


def test_missing_pixel_spacing_is_an_error_not_one_mm(editable_series):
    folder, edit = editable_series
    edit(lambda ds, i: delattr(ds, "PixelSpacing"))
    with pytest.raises(GeometryError, match=r"has no PixelSpacing; pass the voxel spacing explicitly"):
        read_image(folder)
    img = read_image(folder, spacing=(0.7, 0.8))
    np.testing.assert_allclose(img.meta["spacing"], [0.7, 0.8, 2.5])


def test_duplicate_positions_are_an_error(editable_series):
    folder, edit = editable_series
    edit(lambda ds, i: setattr(ds, "ImagePositionPatient", [-72.2, -143.0, 1.0 if i < 2 else 5.0 + i]))
    with pytest.raises(GeometryError, match="already used position"):
        read_image(folder)


# -------------------------------------------------------------------------------------------- bad input


def test_truncated_pixel_data(pydicom_files):
    with pytest.raises(InputError, match=r"MR_truncated\.dcm: corrupt or truncated DICOM pixel data"):
        read_image(pydicom_files / "MR_truncated.dcm")


def test_dicom_without_pixel_data(pydicom_files):
    with pytest.raises(InputError, match=r"rtplan\.dcm: DICOM file has no pixel data"):
        read_image(pydicom_files / "rtplan.dcm")


def test_truncated_header(pydicom_files, tmp_path):
    data = (pydicom_files / "CT_small.dcm").read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[:700])
    with pytest.raises(InputError, match=r"cut\.dcm: (corrupt|DICOM file has no pixel data|not a DICOM)"):
        read_image(path)


def test_not_an_image(tmp_path):
    path = tmp_path / "report.txt"
    path.write_text("Findings: none.\n" * 20)
    with pytest.raises(InputError, match=r"report\.txt: not a DICOM, NIfTI or 2D image file"):
        read_image(path)


def test_empty_file_and_missing_path(tmp_path):
    empty = tmp_path / "empty.dcm"
    empty.touch()
    with pytest.raises(InputError, match=r"empty\.dcm: empty file"):
        read_image(empty)
    with pytest.raises(InputError, match=r"nowhere\.nii\.gz: no such file or directory"):
        read_image(tmp_path / "nowhere.nii.gz")


def test_folder_without_images(tmp_path, pydicom_files):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    shutil.copy(pydicom_files / "rtplan.dcm", folder)
    with pytest.raises(InputError, match=r"docs: no readable images \(2 file\(s\) scanned: 1 not DICOM, 1 DICOM"):
        read_image(folder)


# --------------------------------------------------------------------------------------------- privacy


IDENTIFIERS = ("Doe^Jane", "PID-778899", "19610101", "ACC-12345", "St Elsewhere Hospital", "Dr^Who")


@pytest.fixture
def identified_series(editable_series):
    folder, edit = editable_series

    def identify(ds, i):
        ds.PatientName = "Doe^Jane"
        ds.PatientID = "PID-778899"
        ds.PatientBirthDate = "19610101"
        ds.AccessionNumber = "ACC-12345"
        ds.InstitutionName = "St Elsewhere Hospital"
        ds.ReferringPhysicianName = "Dr^Who"

    return edit(identify)


def test_no_identifiers_in_meta(identified_series):
    img = read_image(identified_series)
    text = repr(img.meta) + repr(list_series(identified_series))
    for ident in IDENTIFIERS:
        assert ident not in text
