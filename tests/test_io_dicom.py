"""DICOM series reading and derived-series writing, checked against pydicom's bundled test series and,
when installed, the DICOM validator dciodvfy and the converter dcm2niix."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medrecon import InputError, Volume
from medrecon.io import list_series, read_nifti, read_volume, write_dicom_series, write_nifti

DICOMDIR_TESTS = Path(pydicom.__file__).parent / "data/test_files/dicomdirtests"
CT5N = DICOMDIR_TESTS / "98892001/CT5N"  # 5 slices, z decreases as InstanceNumber increases
CT2 = DICOMDIR_TESTS / "77654033/CT2"  # 4 slices, one 202.5 mm gap then 1.25 mm
MR700 = DICOMDIR_TESTS / "98892003/MR700"  # 7 radial slices (a different orientation each)

pytestmark = pytest.mark.skipif(not CT5N.is_dir(), reason="pydicom's test files are not installed")


def source_slices(folder):
    """(position along z, HU pixels (Y, X), dataset) of every file, read independently with pydicom."""
    out = []
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        out.append((float(ds.ImagePositionPatient[2]), hu, ds))
    return sorted(out, key=lambda t: t[0])


def oblique_volume(shape=(6, 8, 10), handed=1.0, seed=0):
    """A volume rotated about two axes (no voxel axis along a patient axis), float values in +-1000."""
    a, b = np.radians(30), np.radians(-20)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    direction = rz @ rx @ np.diag([1, 1, handed])
    data = np.random.default_rng(seed).uniform(-1000, 1000, shape).astype(np.float32)
    return Volume(data, (0.7, 0.8, 2.0), (10.0, -20.0, 30.0), direction)


def test_ct5n_comes_out_in_spatial_order_with_2_5mm_spacing():
    files = source_slices(CT5N)
    assert [int(ds.InstanceNumber) for _, _, ds in files] == [10, 9, 8, 7, 6]  # reversed on disk
    vol = read_volume(CT5N)
    assert vol.shape == (5, 16, 16)
    assert vol.spacing_zyx == pytest.approx((2.5, 0.488281, 0.488281), abs=1e-9)
    np.testing.assert_allclose(vol.direction, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(vol.origin, [-72.199997, -143.0, -1.2375], atol=1e-9)
    for k, (z, hu, _) in enumerate(files):
        assert vol.world_lps([0, 0, k])[2] == pytest.approx(z, abs=1e-9)
        np.testing.assert_array_equal(vol.data[k], hu)  # HU = slope * stored + intercept
    assert vol.meta["dicom"]["PatientID"] == "98890234" and vol.meta["dicom"]["Modality"] == "CT"
    assert vol.meta["warnings"] == []


def test_single_dicom_file_reads_as_one_slice():
    vol = read_volume(CT5N / "2062")
    assert vol.shape == (1, 16, 16) and vol.spacing_zyx[0] == pytest.approx(2.5)
    assert vol.origin[2] == pytest.approx(8.7625)


def test_nonuniform_spacing_refused_naming_the_fix():
    with pytest.raises(InputError, match="--resample") as e:
        read_volume(CT2)
    assert str(CT2) in str(e.value) and "202.5" in str(e.value)


def test_nonuniform_spacing_resampled_linearly_to_the_median():
    src = source_slices(CT2)
    z = np.array([t[0] for t in src])
    vol = read_volume(CT2, resample_nonuniform=True)
    assert vol.spacing_zyx[0] == pytest.approx(1.25)
    assert vol.shape[0] == round((z[-1] - z[0]) / 1.25) + 1 == 165
    # The grid passes through every source slice (202.5 = 162 * 1.25): those come back unchanged.
    for k, (_, hu, _) in zip([0, 162, 163, 164], src):
        np.testing.assert_allclose(vol.data[k], hu, atol=1e-3)
    # Half-way across the gap: the mean of its two end slices.
    np.testing.assert_allclose(vol.data[81], (src[0][1] + src[1][1]) / 2, atol=1e-3)
    assert "resampled" in vol.meta["warnings"][0]


def test_resampling_uneven_gaps_keeps_the_first_and_last_slice(tmp_path):
    """Slices at z = 0, 2, 4, 6, 9, 11 mm were resampled onto 0..10 mm at 2 mm: the last slice and 1 mm of the
    extent were lost, and the warning did not say so. The grid now runs from the first slice to the last at about
    the median gap (7 slices 11/6 mm apart), keeping both end slices exactly."""
    z = np.array([0.0, 2, 4, 6, 9, 11])
    values = 100.0 * np.arange(1, 7, dtype=np.float32)
    vol = Volume(np.broadcast_to(values[:, None, None], (6, 8, 8)).copy(), spacing=(1.0, 1.0, 2.0),
                 meta={"dicom": {"Modality": "CT"}})
    out = write_dicom_series(vol, tmp_path / "uneven")
    for f in out.iterdir():
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient[2] = z[round(float(ds.ImagePositionPatient[2]) / 2.0)]
        ds.save_as(f)
    with pytest.raises(InputError, match="onto a 1.833 mm grid"):
        read_volume(out)
    back = read_volume(out, resample_nonuniform=True)
    assert back.shape == (7, 8, 8) and back.spacing_zyx[0] == pytest.approx(11 / 6)
    assert back.world_lps([0, 0, 6])[2] == pytest.approx(11.0)
    np.testing.assert_allclose(back.data[:, 0, 0], np.interp(np.arange(7) * 11 / 6, z, values), rtol=1e-6)
    assert back.data[0, 0, 0] == 100.0 and back.data[-1, 0, 0] == 600.0
    assert any("onto 7 slices 1.833 mm apart from the first slice to the last" in w for w in back.meta["warnings"])


def test_radial_slices_refused():
    with pytest.raises(InputError, match="orientation"):
        read_volume(MR700)


def test_slices_a_little_apart_in_orientation_are_refused_saying_the_angle(tmp_path):
    """A 1e-3 difference in ImageOrientationPatient (rounding, a stack nudged between slices) was called
    'localizer or radial slices'; the message says the angle and both readings, and what to do."""
    write_dicom_series(Volume(np.zeros((4, 8, 8), np.float32), spacing=(1.0, 1.0, 2.0)), tmp_path / "s")
    f = sorted((tmp_path / "s").iterdir())[2]
    ds = pydicom.dcmread(f)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.999999, 0.001]  # about 0.0573 degrees about x
    ds.save_as(f)
    with pytest.raises(InputError, match=r"differ in orientation by up to 0\.0573 degrees .*"
                                         r"rounding or a stack re-positioned.*localizer or radial.*--series.*"
                                         r"resample") as e:
        read_volume(tmp_path / "s")
    assert f.name in str(e.value)


def test_per_slice_rescale_is_applied(tmp_path):
    shutil.copytree(CT5N, tmp_path / "s")
    ds = pydicom.dcmread(tmp_path / "s/2693")
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-500"
    ds.save_as(tmp_path / "s/2693")
    vol = read_volume(tmp_path / "s")
    k = [t[2].SOPInstanceUID for t in source_slices(CT5N)].index(ds.SOPInstanceUID)
    np.testing.assert_array_equal(vol.data[k], ds.pixel_array * 2.0 - 500)


def test_list_series_recursive(tmp_path):
    for src in (CT5N, CT2, MR700):
        shutil.copytree(src, tmp_path / "tree" / src.parent.name / src.name)
    (tmp_path / "tree/98892001/CT5N/notes.txt").write_text("not DICOM")
    damaged = tmp_path / "tree/98892001/CT5N/9999"
    damaged.write_bytes((CT5N / "2062").read_bytes()[:500])
    assert list_series(tmp_path / "tree") == []
    found = {s.n_files: s for s in list_series(tmp_path / "tree", recursive=True)}
    assert sorted(found) == [4, 5, 7]
    assert found[5].folder == tmp_path / "tree/98892001/CT5N" and found[5].modality == "CT"
    assert found[5].uid == str(pydicom.dcmread(CT5N / "2062").SeriesInstanceUID)
    assert [u.split(" ")[0] for u in found[5].unreadable] == [str(damaged)]
    assert found[4].unreadable == [] and found[7].description


def test_derived_series_round_trip_keeps_geometry_and_hu_exactly(tmp_path):
    src = read_volume(CT5N)
    out = write_dicom_series(src, tmp_path / "derived", series_description="medrecon test method")
    back = read_volume(out)
    np.testing.assert_array_equal(back.data, src.data)  # integer HU: slope 1, intercept 0
    np.testing.assert_allclose(back.affine_lps, src.affine_lps, atol=1e-9)

    # numbered the source's way round (CT5N's numbers fall as z rises): instance k of both lies at one position
    source = sorted(source_slices(CT5N), key=lambda t: int(t[2].InstanceNumber))
    written = sorted((pydicom.dcmread(f) for f in out.iterdir()), key=lambda d: int(d.InstanceNumber))
    assert [int(d.InstanceNumber) for d in written] == [1, 2, 3, 4, 5]
    assert len({d.SOPInstanceUID for d in written}) == 5
    s0 = source[0][2]
    for d, (_, hu, s) in zip(written, source):
        assert list(d.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert d.SOPClassUID == pydicom.uid.CTImageStorage and d.Modality == "CT"
        assert d.SeriesInstanceUID != s0.SeriesInstanceUID and d.SOPInstanceUID != s.SOPInstanceUID
        for kw in ("StudyInstanceUID", "PatientID", "PatientName", "FrameOfReferenceUID", "AccessionNumber"):
            assert d[kw].value == s0[kw].value
        assert d.SeriesDescription == "medrecon test method"
        np.testing.assert_allclose([float(v) for v in d.ImagePositionPatient],
                                   [float(v) for v in s.ImagePositionPatient], atol=1e-9)
        assert float(d.SliceLocation) == pytest.approx(float(s.ImagePositionPatient[2]))
        assert d.pixel_array.dtype == np.int16
        np.testing.assert_array_equal(d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept), hu)


def test_float_values_within_int16_quantisation_and_oblique_geometry_survives(tmp_path):
    vol = oblique_volume()
    back = read_volume(write_dicom_series(vol, tmp_path / "obl", modality="CT"))
    ds = pydicom.dcmread(next((tmp_path / "obl").iterdir()))
    assert [float(v) for v in ds.PixelSpacing] == [0.8, 0.7]  # (between rows = y, between columns = x)
    np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient],
                               np.concatenate([vol.direction[:, 0], vol.direction[:, 1]]), atol=1e-12)
    slope = float(ds.RescaleSlope)
    assert slope < 2000 / 60000  # the int16 range is used
    assert np.abs(back.data - vol.data).max() <= slope / 2 + 1e-3
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-12)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-9)
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-9)


def test_left_handed_volume_keeps_world_positions(tmp_path):
    vol = oblique_volume(handed=-1.0)  # slice axis opposite to row x column: read back in reverse
    back = read_volume(write_dicom_series(vol, tmp_path / "lh"))
    np.testing.assert_allclose(back.data, vol.data[::-1], atol=0.02)
    n = vol.shape[0] - 1
    corners = np.array([[0, 0, 0], [9, 0, 0], [0, 7, 0], [9, 7, 0]])
    np.testing.assert_allclose(back.world_lps(corners + [0, 0, n]), vol.world_lps(corners), atol=1e-9)


def test_nifti_source_gets_a_minimal_patient_study_module(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 3, 2), np.float32), np.diag([1.0, 1.0, 2.0, 1.0])), tmp_path / "a.nii")
    out = write_dicom_series(read_nifti(tmp_path / "a.nii"), tmp_path / "d", modality="MR")
    ds = pydicom.dcmread(next(out.iterdir()))
    assert str(ds.PatientName) == "Anonymous^medrecon" and ds.SOPClassUID == pydicom.uid.MRImageStorage
    assert ds.StudyInstanceUID and ds.FrameOfReferenceUID and ds.StudyInstanceUID != ds.SeriesInstanceUID
    # a patient of its own: PatientID "medrecon" on every such series filed all of them under one patient in a PACS
    other = pydicom.dcmread(next(write_dicom_series(read_nifti(tmp_path / "a.nii"), tmp_path / "e").iterdir()))
    assert ds.PatientID.startswith("MEDRECON-") and len(ds.PatientID) == 21 and other.PatientID != ds.PatientID


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
@pytest.mark.parametrize("case", ["ct-from-dicom", "mr-float", "ct-from-nifti", "secondary-capture", "ct-coronal",
                                  "deidentified"])
def test_derived_slice_passes_dciodvfy(tmp_path, case):
    """dicom3tools' validator finds no error (Laterality, a type 2C, was missing wherever the body part was
    unknown; a backslash in the description made it two values)."""
    src = read_volume(CT5N)
    coronal = Volume(src.data, src.spacing, src.origin, np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]),
                     meta={"dicom": {"Modality": "CT"}})
    vol, modality = {"ct-from-dicom": (src, None), "mr-float": (src.with_data(src.data * 0.37 + 0.1), "MR"),
                     "ct-from-nifti": (oblique_volume(), "CT"), "secondary-capture": (oblique_volume(), None),
                     "ct-coronal": (coronal, None), "deidentified": (src, None)}[case]
    out = write_dicom_series(vol, tmp_path / "d", modality=modality, series_description="lung\\soft",
                             deidentify=case == "deidentified")
    result = subprocess.run(["dciodvfy", str(next(out.iterdir()))], capture_output=True, text=True)
    report = result.stdout + result.stderr
    assert report.strip() and not [line for line in report.splitlines() if "Error" in line], report


def test_derived_attributes_say_what_the_series_is(tmp_path):
    """CT value 3 of ImageType is AXIAL only for transverse slices; a window whose centres and widths do not pair up
    is not copied; each slice references its own source instance (every slice listed all of them: N^2 items);
    --deidentify empties the study date a new study would get (today's); Laterality is left out for an unpaired
    body part."""
    src = read_volume(CT5N)
    coronal = Volume(src.data, src.spacing, src.origin, np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]),
                     meta={"dicom": {"Modality": "CT", "BodyPartExamined": "CHEST"}})
    ds = pydicom.dcmread(next(write_dicom_series(coronal, tmp_path / "cor", deidentify=True).iterdir()))
    assert list(ds.ImageType)[2] == "REFORMATTED" and ds.StudyDate == "" and ds.StudyTime == ""
    assert "Laterality" not in ds
    bad = src.with_data(src.data, dicom={**src.meta["dicom"], "WindowCenter": ["40", "-600"], "WindowWidth": "400",
                                         "WindowCenterWidthExplanation": ["A", "B", "C"]})
    files = sorted(write_dicom_series(bad, tmp_path / "ax").iterdir())
    ds = pydicom.dcmread(files[0])
    assert list(ds.ImageType)[2] == "AXIAL" and (ds.WindowCenter, ds.WindowWidth) == (40, 400)
    assert ds.WindowCenterWidthExplanation == "SOFT TISSUE" and ds.Laterality == ""
    for f in files:
        ds = pydicom.dcmread(f)
        listed = ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence
        assert [r.ReferencedSOPInstanceUID for r in listed] == [ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
    feet_first = Volume(src.data, src.spacing, src.origin, np.diag([1.0, 1.0, -1.0]),
                        meta={"dicom": {"Modality": "CT"}})  # transverse, z towards the feet
    assert list(pydicom.dcmread(next(write_dicom_series(feet_first, tmp_path / "ff").iterdir())).ImageType)[2] == \
        "AXIAL"
    two = src.with_data(src.data, dicom={**src.meta["dicom"], "WindowCenter": ["40", "-600"],
                                         "WindowWidth": ["400", "1500"], "WindowCenterWidthExplanation": ["A", "B", "C"]})
    ds = pydicom.dcmread(next(write_dicom_series(two, tmp_path / "two").iterdir()))
    assert list(ds.WindowWidth) == [400, 1500] and "WindowCenterWidthExplanation" not in ds  # 3 names, 2 windows
    nan = src.with_data(src.data, dicom={**src.meta["dicom"], "WindowCenter": "NaN", "WindowWidth": "400"})
    ds = pydicom.dcmread(next(write_dicom_series(nan, tmp_path / "nan").iterdir()))
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (40.0, 400.0)


def test_an_mr_series_resampled_stays_on_its_stored_scale(tmp_path):
    """MR viewers may ignore a rescale (the MR IOD has no Modality LUT): an integer MR series interpolated onto
    another grid was stored -32000..32000 through slope 0.0225, so such a viewer showed a near-binary image."""
    data = np.random.default_rng(0).integers(24, 1465, (3, 8, 8)).astype(np.float32)
    write_dicom_series(Volume(data, (1.0, 1.0, 2.0), meta={"dicom": {"Modality": "MR"}}), tmp_path / "src")
    src = read_volume(tmp_path / "src")
    ds = pydicom.dcmread(sorted(write_dicom_series(src.with_data(data + 0.37), tmp_path / "mr").iterdir())[0])
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, 0.0)
    assert np.array_equal(ds.pixel_array, np.round(data[0] + 0.37))
    floats = Volume(data / 1000, (1.0, 1.0, 2.0), meta={"dicom": {"Modality": "MR"}})  # not from DICOM: kept as is
    assert np.allclose(read_volume(write_dicom_series(floats, tmp_path / "f")).data, floats.data, atol=1e-4)
    for k, f in enumerate(sorted((tmp_path / "src").iterdir())):  # a slope per slice (4, 0.25, 0.25): no one scale
        ds = pydicom.dcmread(f)
        ds.RescaleSlope = "4" if k == 0 else "0.25"
        ds.save_as(f)
    per_slice = read_volume(tmp_path / "src")
    back = read_volume(write_dicom_series(per_slice, tmp_path / "p"))  # was re-quantised to 4: errors of 2.0
    assert np.abs(back.data - per_slice.data).max() < 0.2


def test_a_source_name_in_utf8_without_a_declared_character_set_is_read_as_utf8(tmp_path):
    folder = _ct_series(tmp_path, shape=(2, 8, 8))
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.PatientName = "x"
        ds.SpecificCharacterSet = None
        del ds.SpecificCharacterSet
        ds.SeriesDescription = "x"
        ds.data_element("PatientName").value = "Müller^Jürgen".encode("utf-8")  # as many systems write, declaring
        ds.data_element("SeriesDescription").value = "Kopf nativ\\Schädel".encode("utf-8")  # nothing
        ds.save_as(f)
    vol = read_volume(folder)
    assert vol.meta["dicom"]["PatientName"] == "Müller^Jürgen"  # not 'MÃ¼ller^JÃ¼rgen'
    assert vol.meta["dicom"]["SeriesDescription"] == ["Kopf nativ", "Schädel"]  # two values
    assert list_series(folder)[0].description == "Kopf nativ / Schädel"  # every reader of the header, not one
    ds = pydicom.dcmread(next(write_dicom_series(vol, tmp_path / "out").iterdir()))
    assert str(ds.PatientName) == "Müller^Jürgen" and ds.SpecificCharacterSet == "ISO_IR 192"


def _dcm2niix():
    for exe in (Path(sys.executable).parent / "dcm2niix", shutil.which("dcm2niix")):
        if exe and Path(exe).is_file():
            return str(exe)
    return None


@pytest.mark.skipif(_dcm2niix() is None, reason="dcm2niix not installed")
def test_dcm2niix_reads_our_series_with_our_affine(tmp_path):
    series = write_dicom_series(oblique_volume(), tmp_path / "obl", modality="CT")
    ours = write_nifti(read_volume(series), tmp_path / "ours.nii")
    (tmp_path / "d2n").mkdir()
    subprocess.run([_dcm2niix(), "-z", "n", "-b", "n", "-f", "theirs", "-o", str(tmp_path / "d2n"), str(series)],
                   check=True, capture_output=True)
    theirs = nib.load(tmp_path / "d2n/theirs.nii")
    # dcm2niix may flip voxel axes (it writes rows bottom-up): compare in the closest canonical order.
    a, b = nib.as_closest_canonical(nib.load(ours)), nib.as_closest_canonical(theirs)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)
    np.testing.assert_allclose(a.get_fdata(), b.get_fdata(), atol=1e-3)


def test_series_split_over_subfolders_is_found_by_uid(tmp_path):
    for i, f in enumerate(sorted(CT5N.iterdir())):
        (tmp_path / f"part{i % 2}").mkdir(exist_ok=True)
        shutil.copy(f, tmp_path / f"part{i % 2}" / f.name)
    uid = str(pydicom.dcmread(CT5N / "2062").SeriesInstanceUID)
    [info] = list_series(tmp_path, recursive=True)
    assert info.n_files == 5 and info.folder == tmp_path
    np.testing.assert_array_equal(read_volume(tmp_path, series=uid).data, read_volume(CT5N).data)


NIBABEL_CSA = Path(nib.__file__).parent / "nicom/tests/data/csa_slice_norm.dcm"  # a Siemens mosaic header, no pixels


def synthetic_mosaic(path: Path, tiles: np.ndarray, instance: str = "") -> pydicom.Dataset:
    """nibabel's oblique Siemens mosaic header (32 tiles of 64^2 in a 6 x 6 grid, CSA header included) with
    ``tiles`` (32, 64, 64) laid out row by row as its pixels; ``instance`` is appended to its SOPInstanceUID."""
    ds = pydicom.dcmread(NIBABEL_CSA)
    ds.SOPInstanceUID += instance
    n, h, w = tiles.shape
    grid = int(np.ceil(np.sqrt(n)))
    mosaic = np.zeros((grid * h, grid * w), np.uint16)
    for k in range(n):
        mosaic[(k // grid) * h:(k // grid + 1) * h, (k % grid) * w:(k % grid + 1) * w] = tiles[k]
    ds.Rows, ds.Columns = mosaic.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = mosaic.tobytes()
    ds["PixelData"].VR = "OW"
    ds.save_as(path)
    return ds


@pytest.mark.skipif(not NIBABEL_CSA.is_file(), reason="nibabel's test files are not installed")
def test_siemens_mosaic_unpacks_to_its_volume_with_its_oblique_geometry(tmp_path):
    tiles = np.random.default_rng(0).integers(0, 4000, (32, 64, 64)).astype(np.uint16)
    ds = synthetic_mosaic(tmp_path / "epi.dcm", tiles)
    v = read_volume(tmp_path / "epi.dcm")
    np.testing.assert_array_equal(v.data, tiles.astype(np.float32))  # tile k is slice k, rows are y
    np.testing.assert_allclose(v.spacing, (1.5, 1.5, 1.5), atol=1e-6)
    iop = np.array(ds.ImageOrientationPatient, float)
    r, c = iop[:3], iop[3:]
    np.testing.assert_allclose(v.direction[:, 0], r, atol=1e-6)
    np.testing.assert_allclose(v.direction[:, 1], c, atol=1e-6)
    np.testing.assert_allclose(v.direction[:, 2], np.cross(r, c), atol=1e-4)  # CSA's slice normal, rounded
    # ImagePositionPatient is the mosaic's corner; the first tile's corner lies (6 - 1) / 2 tiles of 64 x 1.5 mm
    # along the rows and the columns from it
    shift = (384 - 64) / 2 * 1.5
    np.testing.assert_allclose(v.origin, np.array(ds.ImagePositionPatient, float) + shift * (r + c), atol=1e-3)


@pytest.mark.skipif(not NIBABEL_CSA.is_file(), reason="nibabel's test files are not installed")
def test_folder_of_siemens_mosaics_is_refused_naming_a_file_to_read(tmp_path):
    tiles = np.ones((32, 64, 64), np.uint16)
    for k in (1, 2):
        synthetic_mosaic(tmp_path / f"t{k}.dcm", tiles, instance=f".{k}")
    with pytest.raises(InputError, match=r"2 Siemens mosaic images.*read one file"):
        read_volume(tmp_path)


@pytest.mark.skipif(not NIBABEL_CSA.is_file(), reason="nibabel's test files are not installed")
@pytest.mark.parametrize("slope, said", [(0, r"RescaleSlope is .0.*the header is damaged"),
                                         (1e35, r"RescaleSlope 1e\+35 and RescaleIntercept 0 give values up to")])
def test_a_siemens_mosaic_with_a_damaged_rescale_is_refused_naming_the_file(tmp_path, slope, said):
    """A mosaic was read past the rescale checks a stack meets: a slope of 0 read as a volume of one value, one of
    1e35 as values beyond any image's (float32 sums of them overflow), both without a word."""
    tiles = np.full((32, 64, 64), 100, np.uint16)
    ds = synthetic_mosaic(tmp_path / "epi.dcm", tiles)
    ds.RescaleSlope, ds.RescaleIntercept = slope, 0
    ds.save_as(tmp_path / "epi.dcm")
    with pytest.raises(InputError, match=f"{tmp_path / 'epi.dcm'}: {said}"):
        read_volume(tmp_path / "epi.dcm")


@pytest.mark.skipif(not NIBABEL_CSA.is_file(), reason="nibabel's test files are not installed")
def test_a_siemens_mosaic_clears_its_padding_as_a_stack_does(tmp_path):
    """A mosaic skipped the PixelPaddingValue step a stack's slices meet: the padding (outside the scanned area)
    was read as signal, 65535 here, not the 0 an MR stack's padding becomes."""
    tiles = np.full((32, 64, 64), 100, np.uint16)
    tiles[:, :4] = 65535
    ds = synthetic_mosaic(tmp_path / "epi.dcm", tiles)
    ds.add_new(0x00280120, "US", 65535)  # PixelPaddingValue
    ds.save_as(tmp_path / "epi.dcm")
    v = read_volume(tmp_path / "epi.dcm")
    assert v.data[:, :4].max() == 0.0 and (v.data[:, 4:] == 100.0).all()
    assert any(f"{32 * 4 * 64} pixels at the PixelPaddingValue" in w for w in v.meta["warnings"])


@pytest.mark.skipif(not NIBABEL_CSA.is_file(), reason="nibabel's test files are not installed")
def test_a_monochrome1_siemens_mosaic_reads_slope_times_stored_plus_intercept(tmp_path):
    """As a stack's MONOCHROME1 slices are (the inversion only says how to display them): nibabel does not invert
    them as GDCM does, so there is nothing to undo."""
    tiles = np.random.default_rng(1).integers(0, 4000, (32, 64, 64)).astype(np.uint16)
    ds = synthetic_mosaic(tmp_path / "epi.dcm", tiles)
    ds.PhotometricInterpretation, ds.RescaleSlope, ds.RescaleIntercept = "MONOCHROME1", 2, -10
    ds.save_as(tmp_path / "epi.dcm")
    np.testing.assert_array_equal(read_volume(tmp_path / "epi.dcm").data, tiles * 2.0 - 10)


# ---- inputs a scanner or PACS may hand over (thirty-ninth session's review) ------------------------------------
def _ct_series(tmp_path, name="ct", shape=(3, 12, 12)):
    vol = Volume(np.full(shape, 40.0, np.float32), spacing=(0.8, 0.8, 2.0), meta={"dicom": {"Modality": "CT"}})
    vol.data[:, :2] = -1000.0
    write_dicom_series(vol, tmp_path / name)
    return tmp_path / name


def test_copies_of_one_image_are_skipped_not_taken_for_echoes(tmp_path):
    folder = _ct_series(tmp_path)
    first = sorted(folder.iterdir())[0]
    shutil.copy(first, folder / "copy_of_first.dcm")  # the same SOPInstanceUID twice, as PACS exports do
    vol = read_volume(folder)
    assert vol.shape == (3, 12, 12)
    assert any("repeat another file's SOPInstanceUID" in w for w in vol.meta["warnings"])
    (folder / "copy_of_first.dcm").unlink()
    for f in sorted(folder.iterdir()):  # anonymised: every UID blanked (TotalSegmentator's example series)
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = ""
        ds.save_as(f)
    vol = read_volume(folder)
    assert vol.shape == (3, 12, 12) and not any("SOPInstanceUID" in w for w in vol.meta["warnings"])


def test_a_series_exported_twice_with_new_uids_is_named_as_copies_not_acquisitions(tmp_path):
    """An anonymiser that renews SOPInstanceUIDs makes copies that no UID names: they were called 'several
    acquisitions (echoes, phases)', in a folder that holds one."""
    folder = _ct_series(tmp_path)
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(folder / f"again_{f.name}")
    with pytest.raises(InputError, match="one image exported twice.*keep one export") as e:
        read_volume(folder)
    assert "echoes" not in str(e.value)
    for f in folder.glob("again_*"):  # another echo at the same positions stays 'several acquisitions'
        ds = pydicom.dcmread(f)
        ds.EchoNumbers = 2
        ds.save_as(f)
    with pytest.raises(InputError, match="several acquisitions"):
        read_volume(folder)


@pytest.mark.parametrize("tag,value", [("PixelSpacing", "0\\0"), ("PixelSpacing", "0.8"),
                                       ("ImageOrientationPatient", "1\\0\\0\\0\\1"),
                                       ("ImageOrientationPatient", "0\\0\\0\\0\\0\\0"),
                                       ("ImagePositionPatient", "0\\0")])
def test_damaged_geometry_tags_are_a_one_line_error_naming_the_file_and_tag(tmp_path, tag, value):
    folder = _ct_series(tmp_path)
    for f in sorted(folder.iterdir()):  # every slice, as a converter that writes them wrong does
        ds = pydicom.dcmread(f)
        ds[tag].value = value
        ds.save_as(f)
    f = sorted(folder.iterdir())[0]
    with pytest.raises(InputError, match=f"{f.name}: {tag} is .* the file's geometry is damaged"):
        read_volume(folder)


def test_a_missing_slice_in_a_thin_slice_series_is_refused(tmp_path):
    """0.3 mm slices, one left out: no slice lies 0.2 mm off the grid through the first and last, but one gap is
    twice the others; read as uniform, the series was stretched 10 % along z."""
    folder = _ct_series(tmp_path, shape=(12, 12, 12))
    for k, f in enumerate(sorted(folder.iterdir(), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))):
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = [0.0, 0.0, 0.3 * k]
        ds.save_as(f)
        if k == 6:
            f.unlink()
    with pytest.raises(InputError, match="a gap differs from the median by more than a factor 1.5: missing slices"):
        read_volume(folder)
    assert read_volume(folder, resample_nonuniform=True).shape[0] == 12


def test_enhanced_dicom_with_one_frame_per_file_is_refused_naming_the_converter(tmp_path):
    """Geometry in functional groups: read before as 1 mm pixels at the origin with a false rescale warning."""
    from pydicom.dataset import Dataset
    folder = _ct_series(tmp_path)
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.SharedFunctionalGroupsSequence = [Dataset()]
        del ds.PixelSpacing
        ds.save_as(f)
    with pytest.raises(InputError, match="multi-frame \\(enhanced\\).*dcm2niix"):
        read_volume(folder)


def _multi_frame(ds, modality="CT", frames=2, colour=False, groups=False):
    ds.Modality, ds.NumberOfFrames = modality, frames
    if colour:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    if groups:
        from pydicom.dataset import Dataset
        ds.SharedFunctionalGroupsSequence = [Dataset()]


@pytest.mark.parametrize("edit, said", [
    (lambda ds: _multi_frame(ds, "US", 120, colour=True), "is a colour image; medrecon reads grayscale CT/MR"),
    (lambda ds: _multi_frame(ds, "SEG", 3, groups=True), "is a SEG object, not an image volume"),
    (lambda ds: _multi_frame(ds, "RTDOSE", 15), "is a RTDOSE object, not an image volume"),
    (lambda ds: _multi_frame(ds, "MR", 10, groups=True), "is a multi-frame \\(enhanced\\) DICOM image.*dcm2niix")],
    ids=["colour cine", "SEG", "RT dose", "enhanced MR"])
def test_a_multi_frame_file_is_named_as_what_it_is(tmp_path, edit, said):
    """A colour ultrasound cine, a SEG and a 15-frame RT dose were all called 'a multi-frame (enhanced) DICOM image
    ... convert it to NIfTI first (e.g. dcm2niix)', wrong advice for all three; an enhanced MR still is."""
    f = sorted(_ct_series(tmp_path).iterdir())[0]
    ds = pydicom.dcmread(f)
    edit(ds)
    ds.save_as(f)
    with pytest.raises(InputError, match=f"^{re.escape(str(f))} {said}"):
        read_volume(f)


def test_unsigned_16_bit_integers_survive_a_derived_series_exactly(tmp_path):
    """An MR series stored 0..65535 came back with errors up to 0.5 (slope 1.024): slope 1 and an intercept keep it."""
    data = np.arange(3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8) * 341.0
    assert data.max() == 65131.0
    write_dicom_series(Volume(data, spacing=(1.0, 1.0, 2.0), meta={"dicom": {"Modality": "MR"}}), tmp_path / "s")
    assert np.array_equal(read_volume(tmp_path / "s").data, data)
    data[data == 0] = 100  # 100 .. 65131: the values themselves, intercept 0 (a viewer ignoring it saw 100 less)
    write_dicom_series(Volume(data, spacing=(1.0, 1.0, 2.0), meta={"dicom": {"Modality": "MR"}}), tmp_path / "t")
    first = pydicom.dcmread(sorted((tmp_path / "t").iterdir())[0])
    assert float(first.RescaleIntercept) == 0 and first.PixelRepresentation == 0
    assert np.array_equal(read_volume(tmp_path / "t").data, data)


def test_a_single_slice_without_geometry_and_zero_thickness_gets_1_mm(tmp_path):
    folder = _ct_series(tmp_path, shape=(1, 12, 12))
    f = next(folder.iterdir())
    ds = pydicom.dcmread(f)
    del ds.ImagePositionPatient, ds.ImageOrientationPatient
    ds.SliceThickness = 0
    ds.save_as(f)
    assert read_volume(folder).spacing_zyx[0] == 1.0  # a ValueError traceback before
    ds.PixelSpacing, ds.ImagerPixelSpacing = None, "0\\0"
    del ds.PixelSpacing
    ds.save_as(f)
    with pytest.raises(InputError, match="ImagerPixelSpacing is .* the file's geometry is damaged"):
        read_volume(folder)


def test_a_sagittal_volume_is_read_with_a_warning_that_its_slices_are_not_axial(tmp_path):
    sag = np.array([[0, 0, -1, 0], [1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]], float)  # RAS: i->A, j->I, k->L
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), sag), tmp_path / "sag.nii.gz")
    vol = read_volume(tmp_path / "sag.nii.gz")
    assert vol.orientation[2] in "LR" and any("slices are sagittal" in w for w in vol.meta["warnings"])
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), tmp_path / "ax.nii.gz")
    assert not read_volume(tmp_path / "ax.nii.gz").meta["warnings"]  # axial: nothing to say


def test_restacking_in_memory_replaces_the_plane_warning_and_keeps_the_others(tmp_path):
    """Volume.in_plane: a Python user who re-stacks a sagittal volume as axial no longer carries the read-time
    'slices are sagittal' warning into report.json; other warnings stay; re-stacking to sagittal warns again."""
    sag = np.array([[0, 0, -1, 0], [1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]], float)  # RAS: i->A, j->I, k->L
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), sag), tmp_path / "sag.nii.gz")
    vol = read_volume(tmp_path / "sag.nii.gz")
    vol.meta["warnings"].append("another warning")
    axial = vol.in_plane("axial")
    assert axial.meta["warnings"] == ["another warning"] and len(vol.meta["warnings"]) == 2
    back = axial.in_plane("sagittal")
    assert back.meta["warnings"][0] == "another warning"
    assert len(back.meta["warnings"]) == 2 and "slices are sagittal" in back.meta["warnings"][1]
    assert "warnings" not in Volume(np.zeros((2, 3, 3), np.float32)).in_plane("axial").meta  # none made up
    assert read_volume(tmp_path / "sag.nii.gz", plane="axial").meta["warnings"] == []  # re-stacked as it is read
    coronal = read_volume(tmp_path / "sag.nii.gz", plane="coronal").meta["warnings"]
    assert len(coronal) == 1 and "slices are coronal" in coronal[0]  # kept once, though in_plane kept it too


def test_nifti_without_sform_or_qform_says_so_and_keeps_the_codes_at_zero(tmp_path):
    img = nib.Nifti1Image(np.zeros((6, 6, 3), np.float32), None)
    img.set_sform(None, code=0)
    img.set_qform(None, code=0)
    nib.save(img, tmp_path / "bare.nii.gz")
    vol = read_volume(tmp_path / "bare.nii.gz")
    assert any("neither sform nor qform" in w for w in vol.meta["warnings"])
    write_nifti(vol, tmp_path / "out.nii.gz")
    h = nib.load(tmp_path / "out.nii.gz").header
    assert (int(h["sform_code"]), int(h["qform_code"])) == (0, 0)  # not promoted to scanner coordinates
    from operators.ct import ParallelBeamGeometry
    from pipelines.measurement import Measurement  # nor through a measurements file (simulate, then reconstruct)
    geom = ParallelBeamGeometry(vol.shape[-1], (0.0, 90.0))  # (a CT file needs its geometry)
    Measurement("ct", np.zeros((vol.shape[0], *geom.sino_shape)), vol.with_data(np.zeros(vol.shape, np.float32)),
                geom.to_dict()).save(tmp_path / "m.npz")
    grid = Measurement.load(tmp_path / "m.npz").grid
    write_nifti(grid, tmp_path / "grid.nii.gz")
    h = nib.load(tmp_path / "grid.nii.gz").header
    assert (int(h["sform_code"]), int(h["qform_code"])) == (0, 0)


def test_nifti_spatial_units_other_than_mm_are_converted(tmp_path):
    img = nib.Nifti1Image(np.zeros((6, 6, 3), np.float32), np.diag([0.001, 0.001, 0.002, 1.0]))
    img.header.set_xyzt_units("meter")
    nib.save(img, tmp_path / "m.nii.gz")
    vol = read_volume(tmp_path / "m.nii.gz")
    assert np.allclose(vol.spacing, (1.0, 1.0, 2.0)) and any("meters" in w for w in vol.meta["warnings"])


def test_a_slice_no_decoder_reads_is_skipped_naming_its_transfer_syntax(tmp_path):
    folder = _ct_series(tmp_path, shape=(4, 12, 12))
    f = sorted(folder.iterdir())[3]
    ds = pydicom.dcmread(f)
    from pydicom.encaps import encapsulate
    ds.PixelData = encapsulate([b"\x00" * 64])  # one fragment of bytes that are no HTJ2K stream
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.201"  # HTJ2K
    ds.save_as(f, enforce_file_format=True)
    vol = read_volume(folder)
    assert vol.shape[0] == 3
    assert any(f.name in w and "transfer syntax High-Throughput JPEG 2000" in w for w in vol.meta["warnings"])


def test_nifti_whose_sform_and_qform_disagree_says_which_it_used(tmp_path):
    img = nib.Nifti1Image(np.zeros((6, 6, 3), np.float32), np.diag([1.0, 1.0, 2.0, 1.0]))
    img.set_qform(np.diag([-1.0, 1.0, 2.0, 1.0]), code=1)  # x flipped in the qform only
    img.set_sform(np.diag([1.0, 1.0, 2.0, 1.0]), code=1)
    nib.save(img, tmp_path / "both.nii.gz")
    assert any("sform and qform disagree" in w for w in read_volume(tmp_path / "both.nii.gz").meta["warnings"])
    img.set_qform(np.diag([1.0, 1.0, 2.0, 1.0]), code=1)
    nib.save(img, tmp_path / "agree.nii.gz")
    assert not read_volume(tmp_path / "agree.nii.gz").meta["warnings"]


def test_a_sheared_sform_falls_back_to_the_qform_and_is_refused_without_one(tmp_path):
    sheared = np.array([[1.0, 0.3, 0, 0], [0, 1.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]])  # y leans along x
    img = nib.Nifti1Image(np.zeros((6, 6, 3), np.float32), None)
    img.set_sform(sheared, code=1)
    img.set_qform(np.diag([1.0, 1.0, 2.0, 1.0]), code=1)
    nib.save(img, tmp_path / "q.nii.gz")
    vol = read_volume(tmp_path / "q.nii.gz")
    assert np.allclose(vol.spacing, (1.0, 1.0, 2.0)) and any("qform is used" in w for w in vol.meta["warnings"])
    write_nifti(vol, tmp_path / "out.nii.gz")
    assert np.allclose(nib.load(tmp_path / "out.nii.gz").header.get_sform(), np.diag([1.0, 1.0, 2.0, 1.0]))
    img.set_qform(None, code=0)
    nib.save(img, tmp_path / "s.nii.gz")
    with pytest.raises(InputError, match="s.nii.gz: the NIfTI affine is sheared"):
        read_volume(tmp_path / "s.nii.gz")


def test_an_html_file_beside_a_series_is_passed_over_without_pydicom_complaints(tmp_path, caplog):
    """A CD's index.htm is read with force=True (old headerless DICOM) and is not DICOM: pydicom's VR warnings
    about it were printed once per file of every batch."""
    vol = Volume(np.zeros((2, 8, 8), np.float32), (1.0, 1.0, 2.0), meta={"dicom": {"Modality": "CT"}})
    write_dicom_series(vol, tmp_path / "s")
    (tmp_path / "s" / "index.htm").write_text("<!DOCTYPE html><html><body>CD viewer</body></html>\n")
    with caplog.at_level("DEBUG"):
        assert [s.n_files for s in list_series(tmp_path / "s")] == [2]
    assert not [r for r in caplog.records if r.name.startswith("pydicom") and r.levelno >= 30]


def test_slices_gdcm_refuses_are_read_by_pydicom_and_undecodable_ones_say_why(tmp_path):
    """GDCM (ITK >= 5.4) refuses a series whose SpacingBetweenSlices is 0, which scanners write on single-slice
    and 2D acquisitions: every slice was called 'truncated or damaged'. Such slices are read one by one (pydicom
    where SimpleITK refuses), with the same values; pixel data nothing decodes is named with pydicom's reason."""
    src = read_volume(CT5N)
    out = write_dicom_series(src, tmp_path / "derived")
    for f in out.iterdir():
        ds = pydicom.dcmread(f)
        ds.SpacingBetweenSlices = "0"
        ds.save_as(f)
    back = read_volume(out)
    np.testing.assert_array_equal(back.data, src.data)
    np.testing.assert_allclose(back.affine_lps, src.affine_lps, atol=1e-9)
    for f in out.iterdir():
        f.write_bytes(f.read_bytes()[:-600])  # every slice cut inside its pixels
    with pytest.raises(InputError, match=r"no slice could be decoded \(e.g. IM\d+\.dcm: pixel data cannot be decoded"):
        read_volume(out)


def test_pixels_at_the_padding_value_are_air_not_values(tmp_path):
    """PixelPaddingValue marks pixels outside the scanned area (stored unsigned, -2000 HU of padding was read as
    +62512 HU; here signed, the same rule on the rescaled value). Those pixels become air (-1000 HU) with a
    warning; every other pixel keeps its value."""
    src = read_volume(CT5N)
    out = write_dicom_series(src, tmp_path / "padded")
    for f in out.iterdir():
        ds = pydicom.dcmread(f)
        px = ds.pixel_array.copy()
        px[:4, :4] = -2000 - int(float(ds.RescaleIntercept))  # stored so that the rescale gives -2000 HU
        ds.PixelData = px.astype(np.int16).tobytes()
        ds.add_new("PixelPaddingValue", "SS", int(px[0, 0]))
        ds.save_as(f)
    back = read_volume(out)
    assert np.all(back.data[:, :4, :4] == -1000.0)
    np.testing.assert_array_equal(back.data[:, 4:, :], src.data[:, 4:, :])
    assert any("PixelPaddingValue" in w for w in back.meta["warnings"])
    for f in out.iterdir():  # padding declared at -1024 HU, the scanner's floor, which lungs hold too: kept
        ds = pydicom.dcmread(f)
        px = ds.pixel_array.copy()
        px[:4, :4] = -1024 - int(float(ds.RescaleIntercept))
        ds.PixelData = px.astype(np.int16).tobytes()
        ds.PixelPaddingValue = int(px[0, 0])
        ds.save_as(f)
    floor = read_volume(out)
    assert np.all(floor.data[:, :4, :4] == -1024.0) and not any("PixelPadding" in w for w in floor.meta["warnings"])


def test_two_time_points_interleaved_in_one_series_are_refused_naming_the_tag(tmp_path):
    """Two phases half a slice apart were read as one stack alternating between them; slices that differ in a tag
    of no acquisition meaning (AcquisitionNumber by concatenation) stay one volume."""
    src = read_volume(CT5N)
    out = write_dicom_series(src, tmp_path / "phases")
    for k, f in enumerate(sorted(out.iterdir())):
        ds = pydicom.dcmread(f)
        ds.TemporalPositionIdentifier = 1 + k % 2
        ds.AcquisitionNumber = 1 + k % 2
        ds.save_as(f)
    with pytest.raises(InputError, match=r"several acquisitions interleaved.*TemporalPositionIdentifier 1: 3 slices"):
        read_volume(out)
    for f in out.iterdir():
        ds = pydicom.dcmread(f)
        del ds.TemporalPositionIdentifier
        ds.save_as(f)
    np.testing.assert_array_equal(read_volume(out).data, src.data)  # AcquisitionNumber alone: one volume
    for k, f in enumerate(sorted(out.iterdir())):
        ds = pydicom.dcmread(f)
        ds.EchoTime = "22" if k % 2 else "22.0000"  # one echo time, written two ways
        ds.save_as(f)
    np.testing.assert_array_equal(read_volume(out).data, src.data)


def test_a_scout_filed_in_the_scans_own_series_is_left_out_with_a_warning(tmp_path):
    """A localizer in the CT's own series (another orientation) stopped the read with 'choose another series with
    --series', which cannot help: it is left out, and the series reads as the scan."""
    src = read_volume(CT5N)
    out = write_dicom_series(src, tmp_path / "with_scout")
    first = sorted(out.iterdir())[0]
    ds = pydicom.dcmread(first)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(out / "scout.dcm")
    back = read_volume(out)
    np.testing.assert_array_equal(back.data, src.data)
    assert any("left out 1 localizer (scout) image(s)" in w for w in back.meta["warnings"])


def test_slices_in_pairs_a_hair_apart_are_named_as_acquisitions_and_never_resampled_onto_the_hair(tmp_path):
    """Two untagged acquisitions 0.01 mm apart were diagnosed as missing slices, and --resample made a 0.01 mm
    grid (12 slices became 402)."""
    src = read_volume(CT5N)
    out = write_dicom_series(src, tmp_path / "pairs")
    for f in sorted(out.iterdir()):
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [float(ds.ImagePositionPatient[2]) + 0.01]
        ds.save_as(out / f"b_{f.name}")
    with pytest.raises(InputError, match="slices lie nearly at one position.*several acquisitions"):
        read_volume(out)
    with pytest.raises(InputError, match="slices lie nearly at one position"):  # never a 0.01 mm grid
        read_volume(out, resample_nonuniform=True)


def test_a_dicom_file_that_is_no_image_says_what_it_is(tmp_path):
    """A DICOMDIR or a structured report given as the input was 'skipped unreadable file (not a DICOM file)' and
    'check the files are complete DICOM images'; one line now says what it is and what to give."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ComprehensiveSRStorage, ExplicitVRLittleEndian, generate_uid
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = ComprehensiveSRStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SeriesInstanceUID, ds.Modality = generate_uid(), "SR"
    ds.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    with pytest.raises(InputError, match=r"report.dcm: a DICOM file of Comprehensive SR Storage, not an image$"):
        read_volume(tmp_path / "report.dcm")


def test_a_single_slice_takes_the_size_of_a_negative_spacing_between_slices(tmp_path):
    """SpacingBetweenSlices is negative where slices run against the normal; one slice with -5 got 1 mm."""
    src = read_volume(CT5N)
    out = write_dicom_series(src.slab(0, 1), tmp_path / "one")
    f = next(out.iterdir())
    ds = pydicom.dcmread(f)
    ds.SpacingBetweenSlices, ds.SliceThickness = "-5", "3"  # the spacing, not the thickness
    ds.save_as(f)
    assert read_volume(f).spacing[2] == 5.0


def test_a_thin_slice_series_with_a_missing_slice_is_not_taken_for_acquisitions(tmp_path):
    """0.08 mm slices (dental cone-beam CT) with one missing are a gap to report or resample, not 'several
    acquisitions' (the 0.1 mm rule is relative to the other gaps)."""
    vol = Volume(np.random.default_rng(0).normal(size=(8, 16, 16)).astype(np.float32) * 100, spacing=(0.08, 0.08, 0.08),
                 meta={"dicom": {"Modality": "CT"}})
    out = write_dicom_series(vol, tmp_path / "thin")
    sorted(out.iterdir())[4].unlink()
    with pytest.raises(InputError, match="slice spacing is not uniform"):
        read_volume(out)
    assert read_volume(out, resample_nonuniform=True).shape == (8, 16, 16)


def test_the_derived_series_opens_in_the_sources_window_or_soft_tissue(tmp_path):
    """The window was the values' 1st-99th percentile, mostly air for CT (the demo's series opened at L -406 W 1189,
    soft tissue a flat grey); now the source's own window (its units are the derived values'), else 40 / 400 HU."""
    src = read_volume(CT5N)
    lung = src.with_data(src.data, dicom={**src.meta["dicom"], "WindowCenter": "-600", "WindowWidth": "1500"})
    out = pydicom.dcmread(next(write_dicom_series(lung, tmp_path / "from_dicom").iterdir()))
    assert (float(out.WindowCenter), float(out.WindowWidth)) == (-600.0, 1500.0)
    plain = Volume(src.data, src.spacing, src.origin, src.direction, meta={"dicom": {"Modality": "CT"}})
    out = pydicom.dcmread(next(write_dicom_series(plain, tmp_path / "from_nifti").iterdir()))
    assert (float(out.WindowCenter), float(out.WindowWidth)) == (40.0, 400.0)


def test_an_oblique_series_with_rounded_positions_is_no_gantry_tilt_and_a_zero_window_is_not_copied(tmp_path):
    """An oblique MR series stores positions rounded to 0.1 mm, so its slices drift up to 0.1 mm sideways: four of
    them were refused as 'gantry tilt'. A source window of width 0 (a GE series) was copied into the derived
    series, which the standard forbids."""
    src = read_volume(CT5N)
    out = write_dicom_series(src.with_data(src.data, dicom={**src.meta["dicom"], "WindowCenter": "0",
                                                            "WindowWidth": "0"}), tmp_path / "oblique")
    for k, f in enumerate(sorted(out.iterdir())):
        ds = pydicom.dcmread(f)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x + (0.08 if k % 2 else 0.0), y, z]  # rounding's sideways jitter
        ds.save_as(f)
        assert float(ds.WindowWidth) >= 1
    assert read_volume(out).shape == src.shape


def test_a_derived_mr_series_keeps_the_acquired_slice_thickness(tmp_path):
    """5 mm slices 7 mm apart (a gap, as mr_brain_pd) came out 7 mm thick: SliceThickness is the source's, the
    spacing stays in SpacingBetweenSlices and the positions."""
    data = np.random.default_rng(0).uniform(0, 500, (3, 16, 16)).astype(np.float32)
    vol = Volume(np.round(data), spacing=(1.0, 1.0, 7.0), meta={"dicom": {"Modality": "MR", "SliceThickness": "5"}})
    ds = pydicom.dcmread(sorted(write_dicom_series(vol, tmp_path / "mr").iterdir())[0])
    assert (float(ds.SliceThickness), float(ds.SpacingBetweenSlices)) == (5.0, 7.0)
    assert read_volume(tmp_path / "mr").spacing[2] == pytest.approx(7.0)


def test_a_derived_series_of_a_source_with_a_fractional_rescale_keeps_its_stored_scale(tmp_path):
    """A Philips MR series stores 0..630 through RescaleSlope 2.5: its values are multiples of 2.5, not whole, so
    the derived series got a new full-range scale (stored -32000..29895, which viewers ignoring MR rescaling show
    as such). Values on the source's rescale are stored through it."""
    stored = np.random.default_rng(0).integers(0, 630, (3, 16, 16))
    vol = Volume((stored * 2.5).astype(np.float32), meta={"dicom": {"Modality": "MR", "RescaleSlope": "2.5",
                                                                   "RescaleIntercept": "0"}})
    ds = pydicom.dcmread(sorted(write_dicom_series(vol, tmp_path / "philips").iterdir())[0])
    assert float(ds.RescaleSlope) == 2.5 and float(ds.RescaleIntercept) == 0.0
    np.testing.assert_array_equal(ds.pixel_array, stored[0])
    wide = vol.with_data(np.where(np.arange(16) % 2, 100000.0, -2.5)[None, None, :] * np.ones((3, 16, 1), np.float32))
    back = read_volume(write_dicom_series(wide, tmp_path / "wide"))  # -1 .. 40000 steps: neither int16 nor uint16
    np.testing.assert_allclose(back.data, wide.data, atol=2.0)  # another scale, nothing clipped to 0


def test_a_source_whose_uids_live_in_the_file_meta_only_is_still_referenced_and_numbered_its_way(tmp_path):
    """An anonymised series (the demo's abdomen CT) keeps each SOPInstanceUID in the file meta only: the derived
    series then referenced no source image and numbered its slices against the source's order."""
    src_dir = write_dicom_series(read_volume(CT5N), tmp_path / "anon")
    for k, f in enumerate(sorted(src_dir.iterdir())):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = 10 - k  # numbers that fall as z rises, as the abdomen series' do
        del ds.SOPInstanceUID
        ds.save_as(f)
    vol = read_volume(src_dir)
    out = sorted((pydicom.dcmread(f) for f in write_dicom_series(vol, tmp_path / "derived").iterdir()),
                 key=lambda d: float(d.ImagePositionPatient[2]))
    assert [int(d.InstanceNumber) for d in out] == [5, 4, 3, 2, 1]
    assert all("SourceImageSequence" in d for d in out)


def test_padding_of_12_bit_signed_pixels_written_unsigned_is_read_as_either_width(tmp_path):
    """Padding -2000 on 12-bit signed pixels may be written unsigned as the 16-bit pattern (63536) or the 12-bit one
    (2096); only the 12-bit one was matched, and the 16-bit one left -2000 HU in the image."""
    from medrecon.io.dicom_read import _stored_value

    for written in (63536, 2096):
        ds = pydicom.Dataset()
        ds.PixelRepresentation, ds.BitsAllocated, ds.BitsStored = 1, 16, 12
        ds.add_new("PixelPaddingValue", "US", written)
        assert _stored_value(ds, "PixelPaddingValue") == -2000
    ds.PixelRepresentation = 0  # unsigned pixels: the value as written
    assert _stored_value(ds, "PixelPaddingValue") == 2096


def test_padding_smeared_by_a_lossy_codec_and_padding_written_unsigned_are_air(tmp_path):
    """CT padding below the values scans hold takes along every value below them (lossy JPEG 2000 spreads the
    -2000 HU padding's edge into -3995..-1025 HU, which stayed); padding of a signed image written as US (63536 for
    -2000) is the same bits as two's complement (it was never matched)."""
    src = read_volume(CT5N)
    out = write_dicom_series(src, tmp_path / "padded")
    for f in out.iterdir():
        ds = pydicom.dcmread(f)
        px = ds.pixel_array.copy()
        pad = -2000 - int(float(ds.RescaleIntercept))
        px[:4, :4] = pad
        px[4, :4] = pad - 900  # the codec's smear, below the padding
        px[5, :4] = pad + 700  # and above it, still below -1024 HU
        ds.PixelData = px.astype(np.int16).tobytes()
        ds.add_new("PixelPaddingValue", "US", pad & 0xFFFF)  # unsigned, as some writers store it
        ds.save_as(f)
    back = read_volume(out)
    assert np.all(back.data[:, :6, :4] == -1000.0)
    np.testing.assert_array_equal(back.data[:, 6:, :], src.data[:, 6:, :])
    np.testing.assert_array_equal(back.data[:, :, 4:], src.data[:, :, 4:])


def _edit_copy(src_folder, dest, edit):
    """A copy of a series with ``edit(k, ds)`` applied to its k-th file (sorted by name)."""
    dest.mkdir(parents=True)
    for k, f in enumerate(sorted(src_folder.iterdir())):
        ds = pydicom.dcmread(f)
        edit(k, ds)
        ds.save_as(dest / f.name)
    return dest


def test_damaged_number_of_frames_is_one_line_naming_the_file(tmp_path):
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    def edit(k, ds):
        if k == 2:  # pydicom refuses to write '1A' as IS; a raw element goes out as it is (pydicom's badVR.dcm)
            ds[0x00280008] = RawDataElement(Tag(0x00280008), "IS", 2, b"1A", 0, False, True)
    out = _edit_copy(CT5N, tmp_path / "s", edit)
    bad = sorted(out.iterdir())[2]
    with pytest.raises(InputError, match=rf"{bad.name}: NumberOfFrames is '1A', not a whole number"):
        read_volume(out)


def test_pixel_spacing_written_to_different_precision_is_one_spacing(tmp_path):
    """0.488281 in one file and 0.4882810001 in another is one pixel size (orientation had a tolerance, spacing
    none); a real difference is still refused."""
    def edit(k, ds):
        if k == 1:
            ds.PixelSpacing = [f"{float(v) * (1 + 2e-7):.10f}" for v in ds.PixelSpacing]
    vol = read_volume(_edit_copy(CT5N, tmp_path / "a", edit))
    assert vol.spacing_zyx[1:] == pytest.approx((0.488281, 0.488281), abs=1e-9)

    def edit_far(k, ds):
        if k == 1:
            ds.PixelSpacing = [f"{float(v) * 1.01:.6f}" for v in ds.PixelSpacing]
    with pytest.raises(InputError, match="differ in PixelSpacing"):
        read_volume(_edit_copy(CT5N, tmp_path / "b", edit_far))


def test_images_whose_series_uid_was_deleted_are_read_as_one_series(tmp_path):
    """An anonymiser that deletes SeriesInstanceUID (rather than blanking it) left whole images called
    'damaged: truncated file?'; they are one series per folder, as blank UIDs are."""
    out = _edit_copy(CT5N, tmp_path / "s", lambda k, ds: delattr(ds, "SeriesInstanceUID"))
    (info,) = list_series(out)
    assert info.uid == "" and info.n_files == 5 and not info.unreadable
    np.testing.assert_array_equal(read_volume(out).data, read_volume(CT5N).data)


def test_file_names_that_are_not_utf8_are_read(tmp_path):
    """A series copied from an old share with Latin-1 names (b'Sch\\xe4del0.dcm') crashed every reader, and the
    batch's whole plan, where the file list is hashed."""
    if sys.platform == "darwin":
        pytest.skip("macOS file systems refuse names that are not UTF-8")
    folder = tmp_path / "s"
    folder.mkdir()
    for k, f in enumerate(sorted(CT5N.iterdir())):
        name = os.fsdecode(b"Sch\xe4del" + str(k).encode() + b".dcm")
        shutil.copy(f, folder / name)
    (info,) = list_series(folder)
    assert len(info.files_sha256) == 64
    np.testing.assert_array_equal(read_volume(folder).data, read_volume(CT5N).data)


def test_a_folder_of_a_scan_and_its_scouts_reads_the_scan(tmp_path):
    """The default series is the largest that may be a volume, as the batch decides: a 2-slice scan beside a
    3-image scout series read the scouts and refused them ('localizer or radial slices'); a one-slice scan beside
    one topogram was a tie."""
    def scan(k, ds):
        ds.SeriesInstanceUID = "1.2.3.4.1"
    def scout(k, ds):
        ds.SeriesInstanceUID = "1.2.3.4.2"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.SOPInstanceUID = f"1.2.3.4.2.{k}"
    files = sorted(CT5N.iterdir())
    for n_scan, n_scout in ((2, 3), (1, 1)):
        folder = tmp_path / f"{n_scan}_{n_scout}"
        _edit_copy(CT5N, folder / "scan", scan)
        _edit_copy(CT5N, folder / "scout", scout)
        for f in files[n_scan:]:
            (folder / "scan" / f.name).unlink()
        for f in files[n_scout:]:
            (folder / "scout" / f.name).unlink()
        for sub in ("scan", "scout"):
            for f in (folder / sub).iterdir():
                f.rename(folder / f"{sub}_{f.name}")
            (folder / sub).rmdir()
        vol = read_volume(folder)
        assert vol.meta["series_uid"] == "1.2.3.4.1" and vol.shape[0] == n_scan
        assert any("largest that may be a volume" in w and "a localizer (scout)" in w for w in vol.meta["warnings"])


def test_choose_series_says_its_note_with_descriptions_and_records_it_without():
    """The note on the series passed over comes as (said, recorded) from choose_series, whose listing decides
    what a report keeps; the reader no longer rewrites its text."""
    from medrecon.io import SeriesInfo, choose_series
    scan = SeriesInfo("1.2.1", [Path(f"s{k}") for k in range(3)], "Abdomen Doe Jane", "CT")
    scout = SeriesInfo("1.2.2", [Path("t0")], "Topogram Doe Jane", "CT", not_a_volume="a localizer (scout)")
    chosen, (said, recorded) = choose_series([scan, scout], None, "f")
    assert chosen is scan and said.startswith("f holds 2 series; reading the largest that may be a volume, 1.2.1")
    assert "Topogram Doe Jane" in said and "Doe" not in recorded
    assert recorded == said.replace(" 'Abdomen Doe Jane'", "").replace(" 'Topogram Doe Jane'", "")


def test_a_cd_root_names_the_folders_that_hold_series(tmp_path):
    """A CD export's root (PT000000/ST000000/SE000000/...) sent the user down one level per error."""
    shutil.copytree(CT5N, tmp_path / "cd" / "PT000000" / "ST000000" / "SE000000")
    with pytest.raises(InputError, match=r"sub-folders hold PT000000/ST000000/SE000000 \(5 files, CT"):
        read_volume(tmp_path / "cd")
    # one series split over sub-folders (DICOM/0001, 0002): the message named '.', the folder it refused
    files = sorted(CT5N.iterdir())
    for k, f in enumerate(files):
        (tmp_path / "split" / f"000{1 + k // 3}").mkdir(parents=True, exist_ok=True)
        shutil.copy(f, tmp_path / "split" / f"000{1 + k // 3}" / f.name)
    uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    with pytest.raises(InputError, match=rf"series {uid} across its sub-folders \(5 files.*--series UID"):
        read_volume(tmp_path / "split")
    assert read_volume(tmp_path / "split", series=uid).shape == (5, 16, 16)


def test_a_palette_colour_image_is_refused_as_colour(tmp_path):
    """PALETTE COLOR pixels are indices into a colour table (an ultrasound, a screenshot): they were read as grey
    values; they are a colour image, passed over as such in a folder."""
    def edit(k, ds):
        ds.PhotometricInterpretation = "PALETTE COLOR"
    out = _edit_copy(CT5N, tmp_path / "s", edit)
    with pytest.raises(InputError, match="is a colour image"):
        read_volume(out)
    assert list_series(out)[0].not_a_volume == "a colour image"


def test_a_slice_whose_pixel_data_are_shorter_than_its_header_says_is_damaged(tmp_path):
    """SimpleITK filled the missing bytes with whatever memory held (-1714 HU in a -996 HU slice; another value each
    read) and the series read without a word; pydicom refuses the same file. It is a damaged file now."""
    def edit(k, ds):
        if k == 2:
            ds.PixelData = ds.PixelData[: len(ds.PixelData) * 3 // 4]
    out = _edit_copy(CT5N, tmp_path / "s", edit)
    bad = sorted(out.iterdir())[2].name
    with pytest.raises(InputError, match=rf"slices are missing where 1 damaged file\(s\) could not be read \({bad}; "
                                         r"e.g. 5 mm between"):  # the gap it leaves, not a regular one
        read_volume(out)


def test_deidentified_uids_need_this_sites_key_and_burned_in_text_is_refused(tmp_path, monkeypatch):
    """De-identified UIDs were a hash of the source UID with a fixed public salt: anyone holding the source UIDs
    (the PACS) could recompute them. They are keyed now (one key per site, made once, owner-only): another key,
    other UIDs; the same key, the same mapping. A source saying BurnedInAnnotation YES was written with
    PatientIdentityRemoved YES and the flag dropped; it is refused, and copied without --deidentify."""
    import os

    src = read_volume(CT5N)
    a = pydicom.dcmread(next(write_dicom_series(src, tmp_path / "a", deidentify=True).iterdir()))
    b = pydicom.dcmread(next(write_dicom_series(src, tmp_path / "b", deidentify=True).iterdir()))
    key = next(Path(os.environ["XDG_CONFIG_HOME"]).glob("medrecon/deidentify.key"))
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert a.StudyInstanceUID == b.StudyInstanceUID and a.PatientID == b.PatientID  # one key: one mapping
    monkeypatch.setenv("MEDRECON_DEID_KEY", key.read_text())  # the key file's text on another machine: one mapping
    same = pydicom.dcmread(next(write_dicom_series(src, tmp_path / "s", deidentify=True).iterdir()))
    assert same.StudyInstanceUID == a.StudyInstanceUID and same.PatientID == a.PatientID
    monkeypatch.setenv("MEDRECON_DEID_KEY", "another site's secret")
    c = pydicom.dcmread(next(write_dicom_series(src, tmp_path / "c", deidentify=True).iterdir()))
    assert c.StudyInstanceUID != a.StudyInstanceUID and c.PatientID != a.PatientID
    monkeypatch.setenv("MEDRECON_DEID_KEY", "2024010120240101")  # a passphrase of 16, hex-looking: taken as text
    write_dicom_series(src, tmp_path / "h", deidentify=True)
    monkeypatch.setenv("MEDRECON_DEID_KEY", "short")  # an empty or short key is no secret: refused
    with pytest.raises(InputError, match="at least 16 characters"):
        write_dicom_series(src, tmp_path / "f", deidentify=True)
    monkeypatch.delenv("MEDRECON_DEID_KEY")
    key.write_text("")
    with pytest.raises(InputError, match="too short to be secret"):
        write_dicom_series(src, tmp_path / "g", deidentify=True)
    key.unlink()
    from pydicom.uid import generate_uid
    assert a.StudyInstanceUID != generate_uid(entropy_srcs=["medrecon-deidentify", src.meta["dicom"]["StudyInstanceUID"]])
    burned = src.with_data(src.data)
    burned.meta["dicom"] = {**src.meta["dicom"], "BurnedInAnnotation": "YES"}
    with pytest.raises(InputError, match="BurnedInAnnotation YES: identifying text or features are in its pixels"):
        write_dicom_series(burned, tmp_path / "d", deidentify=True)
    assert pydicom.dcmread(next(write_dicom_series(burned, tmp_path / "e").iterdir())).BurnedInAnnotation == "YES"


def test_threads_making_the_key_at_once_all_get_the_one_key_written(tmp_path, monkeypatch):
    """deidentify_key wrote its key to '.deidentify.key.<pid>', one name for every thread of a process (and for
    containers with the same PID), opened with O_TRUNC: threads making it at once truncated each other's file, read
    empty or half-written keys, or linked one key and used another (the reviewer's 200 trials x 6 threads: 335
    errors, 30 empty keys, 109 keys that were not the file's). Now each writes a temporary file of its own
    (mkstemp, 0600) and links it only where no key is, and all read the one that won."""
    import os
    import threading

    from medrecon.io.deidentify import deidentify_key

    monkeypatch.delenv("MEDRECON_DEID_KEY", raising=False)
    for trial in range(25):
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / str(trial)))
        start, got = threading.Barrier(6), []

        def make():
            start.wait()
            try:
                got.append(deidentify_key())
            except Exception as e:  # noqa: BLE001 (what a thread met is the result)
                got.append(repr(e))
        threads = [threading.Thread(target=make) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        folder = tmp_path / str(trial) / "medrecon"
        assert got == [deidentify_key()] * 6 and len(got[0]) == 32
        assert os.listdir(folder) == ["deidentify.key"]  # no temporary file left
        assert oct((folder / "deidentify.key").stat().st_mode & 0o777) == "0o600"


def test_values_a_fifth_of_a_step_off_the_sources_scale_are_not_taken_for_on_it():
    """on_lattice used allclose's relative tolerance: at 20000 steps of 2.5, 50000.375 (0.15 of a step off) passed
    as on the steps and was rounded. float32 data that are on it, however large, still pass."""
    from medrecon.io.dicom_write import on_lattice

    assert not on_lattice(np.array([50000.375, 50025.375]), (2.5, 0.0))
    assert on_lattice(np.array([50000.0, 50025.0, 2.5 * 30001], np.float32), (2.5, 0.0))
    assert on_lattice(np.float32([0.1 * 7, 0.1 * 123456]), (0.1, 0.0))


def test_a_secondary_capture_names_its_axes_with_dicoms_letters(tmp_path):
    """PatientOrientation of a coronal Secondary Capture was ['L', 'I']; DICOM's letters are A/P/R/L/H/F."""
    coronal = Volume(np.zeros((2, 3, 4), np.float32), (1.0, 1.0, 1.0), (0, 0, 0),
                     np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]))
    ds = pydicom.dcmread(next(write_dicom_series(coronal, tmp_path / "sc", modality="OT").iterdir()))
    assert list(ds.PatientOrientation) == ["L", "F"]
    row = np.array([0.622, 0.501, 0.602]) / np.linalg.norm([0.622, 0.501, 0.602])  # a double-oblique row: its
    col = np.cross([0.0, 0.0, 1.0], row)                                           # largest part first (was 'P')
    col /= np.linalg.norm(col)
    tilted = Volume(np.zeros((2, 3, 4), np.float32), (1.0, 1.0, 1.0), (0, 0, 0),
                    np.stack([row, col, np.cross(row, col)], axis=1))
    ds = pydicom.dcmread(next(write_dicom_series(tilted, tmp_path / "sc2", modality="OT").iterdir()))
    assert ds.PatientOrientation[0] == "LHP"
    big = Volume(np.zeros((1, 3, 4), np.float32), meta={"dicom": {"SeriesNumber": "2147483600", "Modality": "CT"}})
    assert int(pydicom.dcmread(next(write_dicom_series(big, tmp_path / "n").iterdir())).SeriesNumber) < 2 ** 31


def test_a_damaged_series_of_a_compression_gdcm_reads_is_damaged_not_missing_a_decoder(tmp_path):
    """Review: SimpleITK's GDCM decodes JPEG-LS; pydicom here has no plugin for it, so a damaged JPEG-LS series was
    told to 'pip install' a decoder and, being an InputError, stopped a training folder it used to be skipped in."""
    from pydicom.data import get_testdata_file

    from medrecon.errors import UnreadableError
    src, series = get_testdata_file("MR_small_jpeg_ls_lossless.dcm"), pydicom.uid.generate_uid()
    for i in range(3):
        ds = pydicom.dcmread(src)
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.InstanceNumber = series, pydicom.uid.generate_uid(), i + 1
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 2.0 * i], [1, 0, 0, 0, 1, 0]
        ds.save_as(tmp_path / f"s{i}.dcm")
    assert read_volume(tmp_path).shape == (3, 64, 64)  # GDCM reads them whole
    for f in tmp_path.iterdir():
        raw = bytearray(f.read_bytes())
        raw[-3000:-2000] = b"\xff" * 1000  # inside the JPEG-LS stream
        f.write_bytes(bytes(raw))
    with pytest.raises(UnreadableError, match="truncated or damaged file") as e:
        read_volume(tmp_path)
    assert "pip install" not in str(e.value)


def test_decimal_strings_stay_within_16_characters(tmp_path):
    """A slice at z = -99.99999999999989 mm (ct_lung2's 53rd, in floating point) was written as '-100.000000000000',
    17 characters where DS allows 16 (pydicom's format_number_as_ds; dciodvfy: 'Length invalid for this VR')."""
    from medrecon.io.dicom_write import decimal_string
    for x in (-99.99999999999989, 99.99999999999989, -0.00001234567891234, 123456789.123456, -1e-20, 0.5):
        assert len(decimal_string(x)) <= 16 and abs(float(decimal_string(x)) - x) <= 1e-9 * max(1.0, abs(x))
    vol = Volume(np.zeros((2, 4, 4), np.float32), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, -99.99999999999989))
    for f in write_dicom_series(vol, tmp_path / "s").iterdir():
        ds = pydicom.dcmread(f)
        assert all(len(str(v.original_string if hasattr(v, "original_string") else v)) <= 16
                   for v in [*ds.ImagePositionPatient, ds.SliceLocation])


def _jpeg12_series(tmp_path, name="series"):
    """3 slices of pydicom's JPGExtended.dcm (JPEG Extended, 12 bits: GDCM prints on fd 2 decoding each)."""
    from pydicom.data import get_testdata_file

    src = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))
    series = tmp_path / name
    series.mkdir()
    for k in range(3):
        src.SOPInstanceUID, src.InstanceNumber = pydicom.uid.generate_uid(), k + 1
        src.ImagePositionPatient, src.ImageOrientationPatient = [0, 0, 2.0 * k], [1, 0, 0, 0, 1, 0]
        src.save_as(series / f"IM{k}.dcm")
    return series


def test_what_gdcms_decoder_prints_is_said_once_naming_the_files(tmp_path, caplog, capfd):
    """GDCM printed "Unsupported JPEG data precision 12" on the terminal for every 12-bit JPEG slice it decoded
    (it then retries with its 12-bit decoder), naming no file; now one warning names the files."""
    series = _jpeg12_series(tmp_path)
    with caplog.at_level("WARNING"):
        vol = read_volume(series)
    assert vol.shape == (3, 1024, 256)
    assert "Unsupported JPEG" not in capfd.readouterr().err  # not bare on the terminal
    said = [r.getMessage() for r in caplog.records if "GDCM" in r.getMessage()]
    assert len(said) == 1 and re.fullmatch(
        re.escape(f'{series}: GDCM\'s decoder printed "Unsupported JPEG data precision 12" (') + r"\d+" + re.escape(
            " times) while decoding 3 of its files (e.g. IM0.dcm) (JPEG Extended (Process 2 and 4)) and decoded "
            "them; if the image looks wrong, decompress it, e.g. gdcmconv --raw or dcmdjpeg"), said[0])
    assert said[0] in vol.meta["warnings"]


def test_native_stderr_is_captured_only_in_its_block_and_always_given_back(capfd, monkeypatch):
    """fd 2 is restored after the block, also when it raises (the error is not swallowed), and where ``sys.stderr``
    is no real file or fd 2 cannot be duplicated."""
    import io

    from medrecon.io import native_stderr

    with native_stderr._native_stderr() as printed:
        os.write(2, b"native line\n\n  second  \n")
    assert printed == ["native line", "second"] and capfd.readouterr().err == ""
    with pytest.raises(RuntimeError, match="boom"):
        with native_stderr._native_stderr() as printed:
            os.write(2, b"before the error\n")
            raise RuntimeError("boom")
    os.write(2, b"after\n")
    assert printed == ["before the error"] and capfd.readouterr().err == "after\n"
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # replaced by a caller: fd 2 is still what C writes to
    with native_stderr._native_stderr() as printed:
        os.write(2, b"native\n")
    assert printed == ["native"]

    def no_fd(fd):
        raise OSError(9, "Bad file descriptor")

    with monkeypatch.context() as m:  # no usable fd 2: the block runs, nothing is captured
        m.setattr(os, "dup", no_fd)
        with native_stderr._native_stderr() as printed:
            ran = True
    assert ran and printed == []
def test_scrub_replaces_the_input_its_files_and_names_and_nothing_else(tmp_path, monkeypatch):
    """What de-identified records say instead of the input (medrecon.io.deidentify.scrub): its path in any form, with
    a file of it by that file's keyed pseudonym and anything further down by the folder's label; the names of the
    input, the folders between it and the root and its files on their own; a sibling folder, the root's other
    paths (as INPUT_ROOT) and short numbers are not the input."""
    from medrecon.io.deidentify import input_label, scrub

    monkeypatch.chdir(tmp_path)
    folder = Path("lab") / "Doe Jane" / "Zyx_CT"
    folder.mkdir(parents=True)
    for name in ("Zyx 001.dcm", "1"):
        (folder / name).write_bytes(b"")
    label, here = input_label(folder), str(folder.absolute())
    text = scrub(f"{here}/Zyx 001.dcm: bad; {folder}/sub/x.dcm; Zyx_CT and Doe Jane; {here}-2; "
                 f"{Path('lab').absolute()}/other/y: 1 damaged file; {folder.resolve()}", folder, within=[Path("lab")])
    pseudonym = text.split(":")[0].split("/")[1]
    assert text == (f"{label}/{pseudonym}: bad; {label}; {label} and {label}; INPUT_ROOT; INPUT_ROOT: 1 damaged "
                    f"file; {label}") and pseudonym.startswith("file-")
    assert scrub(f"{here}-2 and {here}2: 1 file", folder) == f"{here}-2 and {here}2: 1 file"  # not the input
    # a name on its own: a patient's or an MRN (4 digits or more) replaced, a generic folder word or a count kept
    # ('none of its 1 input-... file(s)' for a folder named DICOM; 'a input-... scan' for one named ct)
    for name in ("Zed^Zoe_77777777/DICOM", "ct", "Smith/12345", "Smith/1234/CT"):
        (Path("tree") / name).mkdir(parents=True)
    said = "none of its 1 DICOM file(s) can be read; a ct scan of Smith, MRN 12345 (12 files) in 1234"
    for name, expected in [("Zed^Zoe_77777777/DICOM", said), ("ct", said),
                           ("Smith/12345", said.replace("Smith", "L").replace("12345", "L")),
                           ("Smith/1234/CT", said.replace("Smith", "L")[:-4] + "L")]:
        inp = Path("tree") / name
        assert scrub(said, inp, within=[Path("tree")]) == expected.replace("L", input_label(inp)), name
    (Path("tree") / "Li").mkdir()
    assert scrub("Li of 1 series", Path("tree") / "Li") == f"{input_label(Path('tree') / 'Li')} of 1 series"
    assert scrub("Zed^Zoe_77777777 said", Path("tree") / "Zed^Zoe_77777777" / "DICOM", within=[Path("tree")]) == \
        f"{input_label(Path('tree') / 'Zed^Zoe_77777777' / 'DICOM')} said"
    # a UID (another series' in a note on the folder) by its de-identified UID; numbers and versions stay
    from medrecon.io.deidentify import deidentified_uid
    assert scrub("series 1.2.840.10008.99 (2 files); 0.05 mm, 3.11.4.", folder) == \
        f"series {deidentified_uid('1.2.840.10008.99')} (2 files); 0.05 mm, 3.11.4."


def test_native_stderr_in_two_threads_saves_and_restores_fd2_once(capfd):
    """Two threads' captures overlapping left fd 2 on a deleted temporary file for good (the second saved the fd 2
    the first had redirected, and restored it); one redirect at a time now, each block with its own lines."""
    import threading

    from medrecon.io import native_stderr

    first_in, second_tried, got = threading.Event(), threading.Event(), {}

    def first():
        with native_stderr._native_stderr() as printed:
            first_in.set()
            second_tried.wait(0.5)  # before: the second thread redirected fd 2 meanwhile
            os.write(2, b"first\n")
        got["first"] = printed

    def second():
        first_in.wait(5)
        second_tried.set()
        with native_stderr._native_stderr() as printed:
            os.write(2, b"second\n")
        got["second"] = printed

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    [t.start() for t in threads]
    [t.join(10) for t in threads]
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"
    assert got == {"first": ["first"], "second": ["second"]}


def test_concurrent_compressed_reads_leave_fd2_working(tmp_path, capfd):
    import threading

    series = _jpeg12_series(tmp_path)
    vols, errors = [], []

    def read():
        try:
            vols.append(read_volume(series))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=read) for _ in range(4)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    os.write(2, b"after the reads\n")
    assert not errors and len(vols) == 4
    assert capfd.readouterr().err.endswith("after the reads\n")
    assert all(any("GDCM's decoder printed" in w for w in v.meta["warnings"]) for v in vols)


def test_an_uncompressed_read_leaves_fd2_alone(tmp_path, capfd, monkeypatch):
    """Only encapsulated transfer syntaxes go through a decoder that prints: another thread's line on fd 2 during an
    uncompressed read (pacs listen's SCP logging a refusal) reached no terminal and was said as GDCM's."""
    import threading

    from medrecon.io import dicom_read

    series = _ct_series(tmp_path)
    real = dicom_read.sitk.GetArrayFromImage

    def with_chatter(image):  # runs inside the native read's block
        t = threading.Thread(target=os.write, args=(2, b"refused images from AE title 'EVIL'\n"))
        t.start()
        t.join()
        return real(image)

    monkeypatch.setattr(dicom_read.sitk, "GetArrayFromImage", with_chatter)
    vol = read_volume(series)
    assert "refused images from AE title 'EVIL'" in capfd.readouterr().err
    assert not any("GDCM" in w for w in vol.meta["warnings"])


def test_no_temporary_folder_reads_without_the_capture(tmp_path, monkeypatch):
    """A read-only container (no usable temporary folder): every DICOM read failed with FileNotFoundError from the
    capture's TemporaryFile; now the read goes on without it."""
    import tempfile

    ct, jpeg = _ct_series(tmp_path), _jpeg12_series(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "nonexistent"))
    assert read_volume(ct).shape == (3, 12, 12)
    assert read_volume(jpeg).shape == (3, 1024, 256)
