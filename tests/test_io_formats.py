"""NIfTI, NRRD/MHA and .npy reading and writing, world coordinates against DICOM, and atomic writes."""
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medrecon import InputError, Volume
from medrecon.io import atomic_path, read_volume, write_itk, write_nifti, write_volume

CT5N = Path(pydicom.__file__).parent / "data/test_files/dicomdirtests/98892001/CT5N"


def oblique_affine(handed=1.0):
    """A RAS affine with rotated, scaled axes (det sign = handed) and an offset."""
    a = np.radians(25)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rot = rot @ np.array([[1, 0, 0], [0, np.cos(2 * a), -np.sin(2 * a)], [0, np.sin(2 * a), np.cos(2 * a)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.9, 1.1, 2.5 * handed])
    affine[:3, 3] = [12.5, -40.25, 7.0]
    return affine


@pytest.mark.skipif(not CT5N.is_dir(), reason="pydicom's test files are not installed")
def test_dicom_to_nifti_keeps_world_coordinates_of_every_corner_voxel(tmp_path):
    write_nifti(read_volume(CT5N), tmp_path / "ct.nii.gz")
    img = nib.load(tmp_path / "ct.nii.gz")  # read back independently with nibabel (RAS)
    data = img.get_fdata()
    for f in CT5N.iterdir():
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        k = [kk for kk in range(data.shape[2]) if np.array_equal(data[:, :, kk].T, hu)]
        assert len(k) == 1  # NIfTI voxel (i, j) = DICOM pixel (row j, column i)
        ipp, iop = np.array(ds.ImagePositionPatient, float), np.array(ds.ImageOrientationPatient, float)
        dr, dc = (float(v) for v in ds.PixelSpacing)
        for i in (0, ds.Columns - 1):
            for j in (0, ds.Rows - 1):
                lps = ipp + i * dc * iop[:3] + j * dr * iop[3:]  # DICOM PS3.3 C.7.6.2.1.1
                ras = img.affine @ [i, j, k[0], 1]
                np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-4)


@pytest.mark.parametrize("handed", [1.0, -1.0])
def test_nifti_to_nifti_is_exact(tmp_path, handed):
    data = np.random.default_rng(1).normal(size=(7, 6, 5)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, oblique_affine(handed)), tmp_path / "in.nii.gz")
    vol = read_volume(tmp_path / "in.nii.gz")
    assert vol.shape == (5, 6, 7) and vol.is_oblique
    write_nifti(vol, tmp_path / "out.nii")
    src, out = nib.load(tmp_path / "in.nii.gz"), nib.load(tmp_path / "out.nii")
    np.testing.assert_array_equal(out.get_fdata(dtype=np.float32), data)
    np.testing.assert_array_equal(out.affine, src.affine)
    np.testing.assert_allclose(out.header.get_qform(), src.affine, atol=1e-5)


def test_scaled_integer_nifti_and_single_volume_4d(tmp_path):
    img = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4, 1), np.eye(4))
    img.header.set_slope_inter(0.5, -10)
    nib.save(img, tmp_path / "s.nii")
    vol = read_volume(tmp_path / "s.nii")
    assert vol.shape == (4, 3, 2)
    assert vol.data[3, 2, 1] == pytest.approx(23 * 0.5 - 10)
    assert vol.orientation == "".join(nib.aff2axcodes(np.eye(4))) == "RAS"


@pytest.mark.parametrize("kind,name", [(nib.Nifti1Pair, "p.hdr"), (nib.Nifti1Pair, "p.img"), (nib.Nifti2Pair, "q.hdr"),
                                       (nib.Nifti1Pair, "big.hdr"), (nib.Nifti1Pair, "UP.IMG"),
                                       (nib.AnalyzeImage, "a.hdr"), (nib.Nifti2Image, "n2.NII.GZ")])
def test_nifti_pairs_analyze_and_upper_case_nifti2_are_read(tmp_path, kind, name):
    """SPM's .hdr/.img pairs were 'unknown format' (and BART k-space to reconstruct); an upper-case NIfTI-2 name
    was read as NIfTI-1 and refused."""
    data = np.arange(24, dtype=np.float32).reshape(4, 3, 2)
    affine = np.diag([0.8, 0.9, 2.0, 1.0])
    img = kind(data, affine)
    if name.startswith("big"):  # written by a big-endian machine
        img = kind(data, affine, img.header.as_byteswapped(">"))
    if name.isupper():  # NAME.HDR + NAME.IMG, as written on a case-insensitive share
        img.to_filename(str(tmp_path / "lower.hdr"))
        for suffix in (".hdr", ".img"):
            (tmp_path / f"lower{suffix}").rename(tmp_path / f"UP{suffix.upper()}")
    else:
        img.to_filename(str(tmp_path / name.replace(".img", ".hdr")))
    vol = read_volume(tmp_path / name)
    assert np.array_equal(vol.data, data.transpose(2, 1, 0)) and vol.spacing == pytest.approx((0.8, 0.9, 2.0))
    if kind is not nib.AnalyzeImage:  # Analyze has no orientation: nibabel's default, warned
        np.testing.assert_allclose(vol.affine_ras, affine, atol=1e-6)


@pytest.mark.parametrize("name", ["k.h5", "sim.npz", "bart.cfl", "bart.hdr"])
def test_measurements_given_where_a_volume_is_read_are_named_as_such(tmp_path, name):
    """`medrecon info file_brain.h5` said 'unknown format' although reconstruct takes the file."""
    (tmp_path / name).write_bytes(b"\0" * 16)
    with pytest.raises(InputError, match=r"measurements \(a sinogram or k-space\), not an image volume; "
                                         "`medrecon reconstruct --input` reads them"):
        read_volume(tmp_path / name)


def test_npy_without_voxels_or_of_python_objects_is_told_what_it_is(tmp_path):
    """An empty (0, 128, 128) array was told to 'split 4D data'; an object array saved with numpy.save was told to
    'save the array with numpy.save'."""
    np.save(tmp_path / "empty.npy", np.zeros((0, 128, 128), np.float32))
    np.save(tmp_path / "objects.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"empty.npy: holds no voxels \(shape \(0, 128, 128\)\); give a volume"):
        read_volume(tmp_path / "empty.npy")
    with pytest.raises(InputError, match=r"objects.npy: it holds Python objects \(dtype object\), not numbers; "
                                         r"save a numeric array, e.g. numpy.save\(path, array.astype"):
        read_volume(tmp_path / "objects.npy")


def test_a_degenerate_sform_falls_back_on_the_qform_as_itk_does(tmp_path):
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    affine[:3, 3] = [1, 2, 3]
    img = nib.Nifti1Image(np.zeros((4, 5, 3), np.int16), affine)
    img.set_qform(affine, code=1)
    img.set_sform(np.zeros((4, 4)), code=1)
    nib.save(img, tmp_path / "z.nii")
    vol = read_volume(tmp_path / "z.nii")
    itk = sitk.ReadImage(str(tmp_path / "z.nii"))
    np.testing.assert_allclose(vol.origin, itk.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(vol.spacing, itk.GetSpacing(), atol=1e-6)
    assert any("sform is degenerate" in w for w in vol.meta["warnings"])
    assert not any("disagree" in w for w in vol.meta["warnings"])  # the degenerate sform is not compared


def test_orientation_assigns_each_patient_axis_once_as_nibabel_does():
    """A 40/40 degree double oblique was 'RAR' (x and z both 'right'); nibabel's aff2axcodes says RAS."""
    def rot(axis, deg):
        c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
        i, j = [(1, 2), (0, 2), (0, 1)][axis]
        m = np.eye(3)
        m[i, i] = m[j, j] = c
        m[i, j], m[j, i] = -s, s
        return m
    rng = np.random.default_rng(0)
    for ax, ay in [(40, 40), (50, 45)] + [tuple(rng.uniform(0, 90, 2)) for _ in range(200)]:
        A = np.eye(4)
        A[:3, :3] = rot(0, ax) @ rot(1, ay) @ np.diag([1.0, 1.0, 3.0])
        vol = Volume.from_affine_ras(np.arange(24, dtype=np.float32).reshape(2, 3, 4), A)
        assert vol.orientation == "".join(nib.aff2axcodes(A))
        shown = vol.nearest_lps()  # the preview's order: every voxel where it was
        k = np.unravel_index(7, vol.shape)
        kk = np.argwhere(shown.data == vol.data[k])[0]
        np.testing.assert_allclose(shown.world_lps(kk[::-1]), vol.world_lps(np.array(k[::-1])), atol=1e-9)


def test_nifti_with_several_volumes_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((2, 3, 4, 2), np.float32), np.eye(4)), tmp_path / "t.nii")
    with pytest.raises(InputError, match="4D"):
        read_volume(tmp_path / "t.nii")


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_itk_formats_round_trip_with_lps_geometry(tmp_path, suffix):
    vol = Volume.from_affine_ras(np.random.default_rng(2).normal(size=(5, 6, 7)), oblique_affine())
    write_itk(vol, tmp_path / f"v{suffix}")
    img = sitk.ReadImage(str(tmp_path / f"v{suffix}"))  # independent reader: ITK geometry is LPS
    np.testing.assert_allclose(img.GetOrigin(), vol.origin, atol=1e-9)
    np.testing.assert_allclose(np.array(img.GetDirection()).reshape(3, 3), vol.direction, atol=1e-9)
    back = read_volume(tmp_path / f"v{suffix}")
    np.testing.assert_array_equal(back.data, vol.data)
    np.testing.assert_allclose(back.affine_ras, vol.affine_ras, atol=1e-9)


@pytest.mark.parametrize("name", ["a.MHA", "b.Mha", "c.Nrrd", "d.Nii.Gz", "e.Nii"])
def test_output_names_with_upper_case_suffixes_round_trip_and_leave_nothing_behind(tmp_path, name):
    vol = Volume(np.arange(24, dtype=np.float32).reshape(2, 3, 4), (1.0, 1.0, 2.0))
    write_volume(vol, tmp_path / name)  # "nothing was written" before: the libraries chose by a lower-case suffix
    assert np.array_equal(read_volume(tmp_path / name).data, vol.data)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.parametrize("suffix,data", [(".mhd", "vol.raw"), (".nhdr", "vol.raw")])
def test_a_detached_headers_data_file_is_an_input_too(tmp_path, suffix, data):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4), np.float32)), str(tmp_path / f"vol{suffix}"))
    assert (tmp_path / data).is_file()
    vol = read_volume(tmp_path / f"vol{suffix}")
    with pytest.raises(InputError, match="inputs are never modified"):  # a DICOM folder replaced its voxels
        with atomic_path(tmp_path / data, overwrite=True, protect=[vol.meta["source"]]) as tmp:
            tmp.mkdir()


def test_npy_spacing_is_zyx_and_defaults_to_1mm_with_a_warning(tmp_path, caplog):
    np.save(tmp_path / "a.npy", np.ones((3, 4, 5), np.float32))
    assert read_volume(tmp_path / "a.npy", spacing=(2.5, 0.7, 0.6)).spacing_zyx == (2.5, 0.7, 0.6)
    vol = read_volume(tmp_path / "a.npy")
    assert vol.spacing == (1.0, 1.0, 1.0) and "--spacing" in vol.meta["warnings"][0]
    assert "--spacing" in caplog.text


def _raw_nifti(tmp_path, name, edit, data=None):
    """A .nii whose header ``edit(header)`` changes after nibabel wrote it (nibabel refuses to write such headers)."""
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) if data is None else data
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.0, 1.0])), tmp_path / "ok.nii")
    raw = (tmp_path / "ok.nii").read_bytes()
    header = nib.load(tmp_path / "ok.nii").header.copy()
    header["vox_offset"] = 352
    edit(header)
    (tmp_path / name).write_bytes(header.binaryblock + raw[348:])
    return tmp_path / name


def test_a_damaged_nifti_is_told_in_one_line_with_the_fix(tmp_path, capfd, caplog):
    """Sixty-third session: a truncated .nii reached the terminal in two lines (nibabel's "- could the file be
    damaged?"); a NaN scl_inter was told to "convert it to a numeric data type"; a zero pixdim was mended by
    nibabel, which printed its line twice naming no file."""
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20), np.int16), np.eye(4)), tmp_path / "a.nii")
    raw = (tmp_path / "a.nii").read_bytes()
    (tmp_path / "cut.nii").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "cut.nii")
    assert "\n" not in str(e.value) and "cut.nii: the file is truncated" in str(e.value)
    assert "16000 bytes of voxel data but it holds 7824" in str(e.value)
    with pytest.raises(InputError, match="nan.nii: its scaling is invalid .*fix scl_slope and scl_inter") as e:
        read_volume(_raw_nifti(tmp_path, "nan.nii", lambda h: [h.__setitem__(k, v) for k, v in
                                                                 (("scl_slope", 1.0), ("scl_inter", np.nan))]))
    assert "\n" not in str(e.value)

    def zero_pixdim(h):
        h["pixdim"][1:4] = 0
        h["sform_code"] = 0
    capfd.readouterr()
    vol = read_volume(_raw_nifti(tmp_path, "zero.nii", zero_pixdim))
    said = [w for w in vol.meta["warnings"] if "pixdim" in w]
    assert len(said) == 1 and said[0].startswith(f"{tmp_path / 'zero.nii'}: pixdim[1,2,3] should be non-zero")
    assert vol.spacing == (1.0, 1.0, 1.0) and "pixdim" not in capfd.readouterr().err  # nothing bare on fd 2


@pytest.mark.skipif(not CT5N.is_dir(), reason="pydicom's test files are not installed")
@pytest.mark.parametrize("name", ["a.nii", "a.nii.gz"])
def test_a_dicom_file_or_npy_array_named_nifti_is_told_what_it_is(tmp_path, name):
    """Sixty-third session's audit: a DICOM file or a .npy named .nii was told "check that the file is complete"."""
    np.save(tmp_path / "a.npy", np.zeros((2, 3, 4), np.float32))
    for source, what, suffix in ((next(CT5N.iterdir()), "a DICOM file", ".dcm"),
                                 (tmp_path / "a.npy", "a NumPy array", ".npy")):
        misnamed = tmp_path / name
        misnamed.write_bytes(source.read_bytes())
        with pytest.raises(InputError) as e:
            read_volume(misnamed)
        assert str(e.value) == f"{misnamed}: {what}, not NIfTI as its name says; rename it to {suffix} and give it again"


def _mha(path, fields, data=np.zeros((2, 3, 4), "<i2")):
    path.write_bytes((f"ObjectType = Image\nNDims = 3\nDimSize = 4 3 2\nElementType = MET_SHORT\n"
                      f"ElementByteOrderMSB = False\n{fields}ElementDataFile = LOCAL\n").encode() + data.tobytes())
    return path


def test_a_damaged_nrrd_or_metaimage_is_told_in_one_line_naming_what_is_wrong(tmp_path, capfd):
    """Sixty-third session: a truncated .mha was said to be "No such file or directory" (a stale errno) after
    MetaImage's own line reached the terminal bare; a .mhd whose .raw is missing was told the same."""
    full = _mha(tmp_path / "full.mha", "ElementSpacing = 1 1 2\n")
    (tmp_path / "cut.mha").write_bytes(full.read_bytes()[:-30])
    capfd.readouterr()
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "cut.mha")
    assert "cut.mha: its voxel data is truncated (18 of the 48 bytes its header declares)" in str(e.value)
    assert "No such file" not in str(e.value) and capfd.readouterr().err == ""
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4), np.float32)), str(tmp_path / "vol.mhd"))
    (tmp_path / "vol.raw").unlink()
    with pytest.raises(InputError, match="vol.mhd: its data file vol.raw does not exist"):
        read_volume(tmp_path / "vol.mhd")


@pytest.mark.parametrize("name,fields", [
    ("s.mha", "ElementSpacing = 1 1 2\nTransformMatrix = 1 0 0 0.5 1 0 0 0 1\n"),
    ("s.nrrd", "space: left-posterior-superior\nspace directions: (1,0,0) (0.5,1,0) (0,0,2)\n")])
def test_a_sheared_nrrd_or_metaimage_is_refused_as_a_sheared_nifti_is(tmp_path, name, fields):
    """Sixty-third session: read as if its axes were orthogonal (NIfTI's shear was refused)."""
    data = np.zeros((2, 3, 4), "<i2")
    if name.endswith(".mha"):
        _mha(tmp_path / name, fields, data)
    else:
        (tmp_path / name).write_bytes(("NRRD0004\ntype: short\ndimension: 3\nsizes: 4 3 2\nendian: little\n"
                                       f"encoding: raw\n{fields}\n").encode() + data.tobytes())
    with pytest.raises(InputError, match=f"{name}: its voxel axes are not orthogonal"):
        read_volume(tmp_path / name)


def test_a_nrrd_or_metaimage_without_spacing_is_read_at_1mm_with_a_warning(tmp_path, caplog):
    """Sixty-third session: 1 mm was assumed without a word (a .npy is warned of the same)."""
    (tmp_path / "n.nrrd").write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 3 2\nendian: little\n"
                                      b"encoding: raw\n\n" + np.zeros(24, "<i2").tobytes())
    for path, field in ((tmp_path / "n.nrrd", "spacings:"), (_mha(tmp_path / "m.mha", ""), "ElementSpacing")):
        vol = read_volume(path)
        assert vol.spacing == (1.0, 1.0, 1.0) and f"{path}: its header gives no voxel spacing" in caplog.text
        assert field in vol.meta["warnings"][0]
    assert read_volume(_mha(tmp_path / "given.mha", "ElementSpacing = 1 1 2\n")).meta["warnings"] == []


def test_a_folder_holding_a_nifti_or_metaimage_names_the_file_to_give(tmp_path):
    """Sixty-third session: `-i folder/` of a folder holding scan.nii.gz was told only that it holds no DICOM."""
    (tmp_path / "f").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.eye(4)), tmp_path / "f" / "scan.nii.gz")
    (tmp_path / "f" / "notes.txt").write_text("scanned 2024")
    with pytest.raises(InputError, match=r"f holds no readable DICOM image files; it holds scan.nii.gz: give that "
                                         r"file as the input \(.*f/scan.nii.gz\)$"):
        read_volume(tmp_path / "f")


def test_a_spacing_no_scan_has_is_warned_as_units_read_wrongly(tmp_path, caplog):
    """Sixty-third session: a NIfTI in meters with its units unset (0.001 mm voxels) was simulated and
    reconstructed without a word (a classical solver has no pixel-size range to stop it)."""
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.diag([0.001, 0.001, 0.003, 1])), tmp_path / "m.nii")
    vol = read_volume(tmp_path / "m.nii")
    assert any(w.startswith(f"{tmp_path / 'm.nii'}: voxel spacing (z, y, x) 0.003, 0.001, 0.001 mm is outside")
               for w in vol.meta["warnings"]) and "meters or microns" in caplog.text
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.diag([0.5, 0.5, 5.0, 1])), tmp_path / "ok.nii")
    assert read_volume(tmp_path / "ok.nii").meta["warnings"] == []


def test_write_volume_dispatches_on_the_path(tmp_path):
    vol = Volume(np.arange(24, dtype=np.float32).reshape(2, 3, 4), (0.5, 0.5, 2.0))
    assert nib.load(write_volume(vol, tmp_path / "a.nii.gz")).shape == (4, 3, 2)
    assert len(list(write_volume(vol, tmp_path / "series").iterdir())) == 2
    with pytest.raises(InputError, match="folder"):
        write_volume(vol, tmp_path / "x.dcm")


def test_atomic_path_never_overwrites_unless_asked(tmp_path):
    dest = tmp_path / "out.txt"
    dest.write_text("old")
    with pytest.raises(InputError, match="--overwrite"):
        with atomic_path(dest) as tmp:
            tmp.write_text("new")
    assert dest.read_text() == "old"
    with atomic_path(dest, overwrite=True) as tmp:
        tmp.write_text("new")
        assert dest.read_text() == "old"  # nothing visible until the block ends
    assert dest.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def _visible(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_atomic_path_replaces_folders_and_cleans_up_after_errors(tmp_path):
    dest = tmp_path / "series"
    dest.mkdir()  # an empty folder is free to use
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_path(dest, overwrite=True) as tmp:
            tmp.mkdir()
            (tmp / "b").write_text("2")
            raise RuntimeError("interrupted")
    assert _visible(dest) == ["a"]
    with atomic_path(dest, overwrite=True) as tmp:
        tmp.mkdir()
        (tmp / "b").write_text("2")
    assert _visible(dest) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]  # no temporary left behind


def test_a_failed_write_removes_the_parent_folders_it_made_and_only_those(tmp_path):
    """A failed write into a new nested destination left the folders made for it behind, empty."""
    kept = tmp_path / "kept"
    kept.mkdir()  # existed before, empty: never removed
    for dest in (kept / "a" / "b" / "recon.nii.gz", kept / "c" / "series"):
        with pytest.raises(RuntimeError):
            with atomic_path(dest) as tmp:
                tmp.write_text("half")
                raise RuntimeError("interrupted")
        assert kept.is_dir() and not any(kept.iterdir())
    (kept / "a").mkdir()
    with pytest.raises(InputError, match="cannot create the output folder"):  # b is made, its sub-folder cannot be
        with atomic_path(kept / "a" / "b" / ("x" * 300) / "out.nii.gz"):
            pass
    assert (kept / "a").is_dir() and not any((kept / "a").iterdir())
    with atomic_path(kept / "d" / "e" / "ok.txt") as tmp:  # a finished write keeps them
        tmp.write_text("1")
    assert (kept / "d" / "e" / "ok.txt").read_text() == "1"


def test_a_write_keeps_its_parent_folder_when_another_writes_failure_removes_the_folders_it_made(tmp_path,
                                                                                                  monkeypatch):
    """Two processes write into one new folder: the first made it, the second found it; the first's write failed
    and removed the folder it made, empty, before the second's temporary was in it, and the second's write failed
    too ('No such file or directory'). Now a write keeps an empty file of its own in its parent while it lasts, and
    a parent removed before that file is in it is made again. The other process's removal is done here in between,
    as it would happen."""
    import medrecon.io.atomic as atomic
    shared = tmp_path / "series"
    shared.mkdir()  # made by the other process, whose failed write then removes it if empty
    with atomic_path(shared / "recon.nii.gz") as tmp:
        atomic.remove_empty_folders([shared])
        tmp.write_text("ours")
    assert (shared / "recon.nii.gz").read_text() == "ours"

    real, removed = atomic._make_folders, []

    def then_removed(folder, made):  # the other process removes the folder right after this one found it
        real(folder, made)
        if not removed:
            removed.append(folder)
            atomic.remove_empty_folders([folder])
    monkeypatch.setattr(atomic, "_make_folders", then_removed)
    with atomic_path(tmp_path / "other" / "recon.nii.gz") as tmp:
        tmp.write_text("ours")
    assert removed and sorted(p.name for p in (tmp_path / "other").iterdir()) == ["recon.nii.gz"]
    removed.clear()
    with pytest.raises(RuntimeError):  # the folder made again is this write's: removed when it fails
        with atomic_path(tmp_path / "third" / "recon.nii.gz") as tmp:
            raise RuntimeError("interrupted")
    assert removed and not (tmp_path / "third").exists()


def test_atomic_path_protects_inputs_and_folders_with_subfolders(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in/sub").mkdir()
    for dest in (tmp_path / "in", tmp_path / "in/new.nii", tmp_path):
        with pytest.raises(InputError, match="input"):
            with atomic_path(dest, overwrite=True, protect=[tmp_path / "in"]):
                pass
    with pytest.raises(InputError, match="medrecon did not write"):
        with atomic_path(tmp_path / "in", overwrite=True):
            pass
    assert (tmp_path / "in/sub").is_dir()


def test_overwrite_never_replaces_a_folder_medrecon_did_not_write(tmp_path):
    """#13.5: a folder holding only a user's files is not an output (a notes.txt was lost)."""
    (dest := tmp_path / "notes").mkdir()
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="medrecon did not write"):
        with atomic_path(dest, overwrite=True) as tmp:
            tmp.mkdir()
    vol = Volume(np.zeros((2, 3, 4), np.float32), (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="medrecon did not write"):
        write_volume(vol, dest, overwrite=True)
    assert (dest / "notes.txt").read_text() == "mine"
    write_volume(vol, tmp_path / "series")  # a derived DICOM series is recognised as medrecon's (no extra file)
    assert _visible(tmp_path / "series") == ["IM0001.dcm", "IM0002.dcm"] and len(list((tmp_path / "series").iterdir())) == 2
    write_volume(vol, tmp_path / "series", overwrite=True)


def test_killed_overwrite_keeps_the_old_output_and_the_next_run_cleans_up(tmp_path):
    """#13.4/#13.15: the old output stays in place until the new one is complete; temporaries of killed
    runs (or an old output set aside by a killed swap) are dealt with by the next write."""
    dest = tmp_path / "k1"
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("old")
    dead = tmp_path / ".medrecon-tmp-999999999-0badcafe-k1"  # no such process
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(dest, overwrite=True) as tmp:
            tmp.mkdir()
            (tmp / "b").write_text("new")
            tmp.rename(dead)  # as if the process had been killed here, its temporary left behind
            raise KeyboardInterrupt
    assert _visible(dest) == ["a"] and dead.is_dir()
    with atomic_path(dest, overwrite=True) as tmp:
        assert not dead.exists()  # the killed run's temporary is gone
        tmp.mkdir()
        (tmp / "b").write_text("new")
    assert _visible(dest) == ["b"] and sorted(p.name for p in tmp_path.iterdir()) == ["k1"]
    # killed between the two renames of the fallback swap: dest missing, the old output aside
    dest.rename(tmp_path / ".medrecon-tmp-old-999999999-0badcafe-k1")
    with pytest.raises(InputError, match="--overwrite"):  # the old output is back, so this is refused
        with atomic_path(dest) as tmp:
            pass
    assert _visible(dest) == ["b"]


def test_a_temporary_of_an_earlier_process_with_this_pid_is_stale(tmp_path):
    """In a container every run is PID 1: a run the OOM killer ended left a temporary with the PID of the next
    run, which took it for its own and kept it forever. Only the temporaries this process is writing are live."""
    import os
    dest = tmp_path / "k2"
    earlier = tmp_path / f".medrecon-tmp-{os.getpid()}-0badcafe-k2"
    earlier.mkdir()
    with atomic_path(dest) as tmp:
        assert not earlier.exists()
        tmp.mkdir()
        with atomic_path(tmp / "inner.txt") as inner:  # this process's own outer temporary stays
            assert tmp.is_dir()
            inner.write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k2"] and (dest / "inner.txt").is_file()


def test_a_failed_write_inside_an_output_names_that_output_not_its_temporary(tmp_path):
    """A disk-full error while a batch writes recon.nii.gz named '.medrecon-tmp-PID-HEX-series/recon.nii.gz', a
    folder removed right after; it names the output folder the user will look for."""
    dest = tmp_path / "series_1"
    with pytest.raises(InputError) as err:
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            with atomic_path(tmp / "recon.nii.gz") as inner:
                inner.mkdir()
                raise OSError(28, "No space left on device")
    assert f"cannot write {dest / 'recon.nii.gz'}: No space left on device" in str(err.value)
    assert ".medrecon-tmp" not in str(err.value)
    nan = Volume(np.full((2, 4, 4), np.nan, np.float32))
    with pytest.raises(InputError) as err:  # refused voxels, named the same way
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            write_nifti(nan, tmp / "recon.nii.gz")
    assert str(err.value).startswith(f"{dest / 'recon.nii.gz'}: 32 NaN")


def test_central_window_keeps_every_voxel_where_it_was():
    """Volume.central_window (the benchmarks' field of view inside the body): the window's voxels keep their
    world positions under an oblique direction and anisotropic pixels; a side shorter than the window stays."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    vol = Volume(rng.normal(size=(3, 40, 30)).astype(np.float32), spacing=(0.5, 2.0, 3.0),
                 origin=(10.0, -5.0, 7.0), direction=q)
    win = vol.central_window(20.0)  # 20 mm: 10 rows of 2 mm, 40 columns of 0.5 mm > 30: all columns
    assert win.shape == (3, 10, 30)
    i0 = (40 - 10) // 2
    assert np.array_equal(win.data, vol.data[:, i0:i0 + 10, :])
    idx = np.array([[3.0, 4.0, 2.0], [29.0, 0.0, 0.0]])  # (x, y, z) in the window
    assert np.allclose(win.world_lps(idx), vol.world_lps(idx + [0.0, i0, 0.0]))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names a synced descriptor through /proc")
def test_atomic_path_syncs_every_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    import os

    import medrecon.io.atomic as atomic
    synced, real_fsync = [], os.fsync

    def spy(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", spy)
    with atomic.atomic_path(tmp_path / "out") as tmp:
        (tmp / "sub").mkdir(parents=True)
        (tmp / "a.txt").write_text("a")
        (tmp / "sub" / "b.txt").write_text("b")
    names = [p.relative_to(tmp_path) if p.is_relative_to(tmp_path) else p for p in synced]
    written = {Path("a.txt"), Path("sub/b.txt"), Path("sub"), Path(atomic.MARKER)}
    assert {Path(*n.parts[1:]) for n in names[:-1] if n.parts and n.parts[0].startswith(".medrecon-tmp")} >= written
    assert synced[-1] == tmp_path  # the rename, once every file was on disk


@pytest.mark.parametrize("name", ["out.nii.gzz", "out.txt", "notes.md"])
def test_an_output_named_like_a_file_of_another_type_is_refused(tmp_path, name):
    """out.nii.gzz became a DICOM series folder of that name without a word."""
    vol = Volume(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(InputError, match="give a folder path without a suffix"):
        write_volume(vol, tmp_path / name)
    write_volume(vol, tmp_path / "series.v2")  # a folder name with a dot stays a DICOM folder
    assert (tmp_path / "series.v2").is_dir()


def test_an_output_given_as_a_symbolic_link_is_written_where_it_points(tmp_path):
    """--overwrite onto a linked output folder replaced the link by a folder and left the old output at the target."""
    real, link = tmp_path / "real", tmp_path / "link"
    with atomic_path(real) as tmp:
        tmp.mkdir()
        (tmp / "report.json").write_text("old")
    link.symlink_to(real)
    with atomic_path(link, overwrite=True) as tmp:
        tmp.mkdir()
        (tmp / "report.json").write_text("new")
    assert link.is_symlink() and (real / "report.json").read_text() == "new"


def test_overwrite_keeps_what_a_user_added_to_an_output_and_dot_is_a_destination(tmp_path, monkeypatch):
    """--overwrite swapped out a whole marked output folder, with the notes and segmentations a user had put in it
    (also inside its sub-folders); files medrecon added later (a PACS transfer's record, marked) and a desktop's
    .DS_Store are replaced like the rest. `-o .` put the temporary inside the output and failed after the whole
    run; now it is refused at once (the swap would leave the shell in a deleted folder)."""
    from medrecon.io.atomic import mark_as_written

    def write(dest, overwrite=False):
        with atomic_path(dest, overwrite=overwrite) as tmp:
            tmp.mkdir()
            (tmp / "recon.nii.gz").write_text("r")

    out = tmp_path / "out"
    write(out)
    (out / "pacs.json").write_text("{}")
    mark_as_written(out, "pacs.json")
    write(out, overwrite=True)
    assert _visible(out) == ["recon.nii.gz"]
    (out / "notes_dr_smith.txt").write_text("mine")
    with pytest.raises(InputError, match=r"holds notes_dr_smith.txt, which medrecon did not write there; move it out"):
        write(out, overwrite=True)
    assert (out / "notes_dr_smith.txt").read_text() == "mine"
    (out / "simulation").mkdir()  # inside a sub-folder too (only the top level was compared)
    (out / "notes_dr_smith.txt").unlink()
    (out / "simulation" / "liver_seg.nii.gz").write_text("mine")
    with pytest.raises(InputError, match=r"holds simulation/liver_seg.nii.gz, which medrecon did not write"):
        write(out, overwrite=True)
    (out / "simulation" / "liver_seg.nii.gz").unlink()
    (out / ".DS_Store").write_text("finder")  # a desktop's own file is no user's work
    write(out, overwrite=True)
    (here := tmp_path / "here").mkdir()
    monkeypatch.chdir(here)  # '-o .' would swap out the folder the shell is in: refused before the work
    with pytest.raises(InputError, match="would replace the folder this command runs in"):
        write(Path("."))
    write(Path("out"))
    assert _visible(here / "out") == ["recon.nii.gz"]


def test_an_os_error_without_strerror_is_told_in_one_line():
    """pydicom re-raises a full disk as OSError(text) whose text holds a traceback: that went into the 'one-line'
    error and the batch manifest."""
    from medrecon.io.atomic import os_reason

    e = OSError("With tag (7FE0,0010) got exception: [Errno 28] No space left on device\nTraceback (most recent...")
    assert os_reason(e) == "No space left on device"
    assert os_reason(OSError("first line\nsecond")) == "first line"
    assert os_reason(OSError(13, "Permission denied")) == "Permission denied"


@pytest.mark.parametrize("codes_in, codes_out", [((2, 0), (2, 2)), ((0, 2), (2, 2)), ((4, 0), (4, 4)),
                                                  ((1, 1), (1, 1)), ((3, 2), (3, 2))])
def test_nifti_form_codes_survive_a_round_trip(tmp_path, codes_in, codes_out):
    """A form whose code was 0 was written with code 1 (scanner): an MNI-space (4) or aligned (2) volume then held
    a qform a qform-first reader took for scanner coordinates. The one code read stands for both."""
    from medrecon.io import read_nifti

    img = nib.Nifti1Image(np.zeros((4, 3, 2), np.float32), np.diag([1.0, 1.0, 2.0, 1.0]))
    img.set_sform(img.affine, code=codes_in[0])
    img.set_qform(img.affine, code=codes_in[1])
    nib.save(img, tmp_path / "a.nii.gz")
    write_nifti(read_nifti(tmp_path / "a.nii.gz"), tmp_path / "b.nii.gz")
    h = nib.load(tmp_path / "b.nii.gz").header
    assert (int(h["sform_code"]), int(h["qform_code"])) == codes_out


def test_an_spm_analyze_image_keeps_its_mat_geometry_in_nifti(tmp_path):
    """SPM's Analyze pairs hold their geometry in a .mat beside the header, no sform or qform: the geometry was read,
    but the codes 0 went to the NIfTI written, whose readers then rebuilt a default grid (left and right swapped,
    the origin moved)."""
    from medrecon.io import read_nifti

    aff = np.diag([2.0, 3.0, 4.0, 1.0])
    aff[:3, 3] = [10, 20, 30]
    nib.save(nib.Spm2AnalyzeImage(np.arange(24, dtype=np.int16).reshape(4, 3, 2), aff), tmp_path / "spm.hdr")
    vol = read_nifti(tmp_path / "spm.hdr")
    assert not any("neither sform nor qform" in w for w in vol.meta["warnings"])
    write_nifti(vol, tmp_path / "out.nii.gz")
    np.testing.assert_allclose(nib.load(tmp_path / "out.nii.gz").affine, aff, atol=1e-6)


def test_the_memory_a_job_may_use_is_read_from_its_own_cgroup_without_the_file_cache(tmp_path):
    """The machine's MemAvailable alone let a container or Slurm job be killed without a word; its cgroup's limit is
    read from this process's own cgroup path and its ancestors (v2 and v1), and the usage counts no inactive file
    cache (a container that had read many files showed no room)."""
    from medrecon.io.common import _cgroup_room

    gib = 2 ** 30
    job = tmp_path / "v2" / "slurm" / "job_7"
    job.mkdir(parents=True)
    (tmp_path / "v2" / "slurm" / "memory.max").write_text(str(16 * gib))
    (tmp_path / "v2" / "slurm" / "memory.current").write_text(str(int(15.9 * gib)))
    (tmp_path / "v2" / "slurm" / "memory.stat").write_text(f"anon 1000\ninactive_file {14 * gib}\n")
    (job / "memory.max").write_text("max")
    (tmp_path / "self_v2").write_text("0::/slurm/job_7\n")
    room = _cgroup_room(tmp_path / "self_v2", tmp_path / "v2")
    assert room == [16 * gib - (int(15.9 * gib) - 14 * gib)]  # about 14.1 GiB, not 0.1
    v1 = tmp_path / "v1" / "memory" / "docker" / "abc"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(str(8 * gib))
    (v1 / "memory.usage_in_bytes").write_text(str(3 * gib))
    (v1 / "memory.stat").write_text(f"total_inactive_file {gib}\n")
    (tmp_path / "v1" / "memory" / "memory.limit_in_bytes").write_text(str(2 ** 63 - 4096))  # the root: no limit
    (tmp_path / "self_v1").write_text("9:pids:/\n4:memory:/docker/abc\n")
    assert _cgroup_room(tmp_path / "self_v1", tmp_path / "v1") == [6 * gib]


def test_an_output_written_before_markers_listed_files_is_replaced_and_a_deleted_cwd_does_not_stop_a_write(
        tmp_path, monkeypatch):
    """A marker of before the forty-fifth session lists the top-level names only: --overwrite then refused every
    such output with sub-folders ('holds dicom/IM00000.dcm, which medrecon did not write'). A shell left in a
    deleted folder made every write fail (Path.cwd())."""
    import json

    out = tmp_path / "old"
    (out / "dicom").mkdir(parents=True)
    (out / "dicom" / "IM0001.dcm").write_text("x")
    (out / "recon.nii.gz").write_text("r")
    (out / ".medrecon-output").write_text(json.dumps({"medrecon": "0.1.0", "entries": ["dicom", "recon.nii.gz"]}))
    with atomic_path(out, overwrite=True) as tmp:
        tmp.mkdir()
        (tmp / "recon.nii.gz").write_text("new")
    assert (out / "recon.nii.gz").read_text() == "new"
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with atomic_path(tmp_path / "elsewhere") as tmp:
        tmp.write_text("ok")
    assert (tmp_path / "elsewhere").read_text() == "ok"


@pytest.mark.parametrize("plane, letters", [("axial", "LPS"), ("coronal", "LIP"), ("sagittal", "PIL")])
def test_in_plane_restacks_every_voxel_where_it_was_head_up(plane, letters):
    """Volume.in_plane (training a prior on every plane): slices along the plane's normal, rows from superior
    down; each voxel keeps its value at its world position, whatever order the volume was stored in (RAS)."""
    A = np.diag([-0.5, 0.7, 1.3, 1.0])
    A[:3, 3] = (10.0, 20.0, 30.0)
    vol = Volume.from_affine_ras(np.random.default_rng(1).random((5, 6, 7)).astype(np.float32), A)
    out = vol.in_plane(plane)
    assert out.orientation == letters and out.data.size == vol.data.size
    zyx = np.argwhere(np.ones(out.shape, bool))
    old = np.linalg.solve(vol.direction @ np.diag(vol.spacing), (out.world_lps(zyx[:, ::-1]) - vol.origin).T).T
    xyz = np.rint(old).astype(int)
    np.testing.assert_allclose(old, xyz, atol=1e-9)  # on the old grid: no interpolation
    np.testing.assert_array_equal(out.data[tuple(zyx.T)], vol.data[xyz[:, 2], xyz[:, 1], xyz[:, 0]])
    with pytest.raises(ValueError, match="plane must be"):
        vol.in_plane("oblique")


def test_nibabel_info_notes_are_not_kept_as_warnings_with_logging_at_debug(tmp_path):
    """Review of the sixty-third session: with the root logger at DEBUG, nibabel's INFO note on a qfac of 0
    ("pixdim[0] (qfac) should be 1 (default) or -1") became a recorded warning of the volume."""
    def zero_qfac(h):
        h["pixdim"][0] = 0
    path = _raw_nifti(tmp_path, "q.nii", zero_qfac)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    try:
        vol = read_volume(path)
    finally:
        root.setLevel(level)
    assert not any("qfac" in w for w in vol.meta.get("warnings", []))


def test_a_detached_data_file_name_with_a_space_is_kept_whole(tmp_path):
    """Review of the sixty-third session: `data file: my data.raw` was taken as "my" where the file was absent
    (its split meant for patterns, which are left out anyway)."""
    from medrecon.io.atomic import with_data_files
    hdr = tmp_path / "a.nhdr"
    hdr.write_text("NRRD0004\ntype: uint8\ndimension: 3\nsizes: 2 2 2\nencoding: raw\ndata file: my data.raw\n\n")
    assert with_data_files(hdr) == [hdr, tmp_path / "my data.raw"]
    hdr.write_text("NRRD0004\ntype: uint8\ndimension: 3\nsizes: 2 2 2\nencoding: raw\ndata file: LIST 2\na.raw\n")
    assert with_data_files(hdr) == [hdr]


def test_writes_and_the_batch_lock_need_no_o_nofollow(tmp_path):
    """Review of the sixty-third session: os.O_NOFOLLOW is absent on Windows; the pin of a write used it bare. Run in
    a fresh interpreter with os.O_NOFOLLOW deleted before medrecon is imported (deleting it here, after atomic.py
    read it at import, tested nothing: a bare os.O_NOFOLLOW at import passed)."""
    import subprocess
    import sys
    script = """
import os, sys
del os.O_NOFOLLOW
from pathlib import Path
import numpy as np
from medrecon import Volume
from medrecon.io import write_volume
from pipelines.batching import _lock_file
out = Path(sys.argv[1])
write_volume(Volume(np.zeros((2, 3, 4), np.float32), (1.0, 1.0, 1.0)), out / "sub" / "a.nii")
assert (out / "sub" / "a.nii").is_file()
f, _ = _lock_file(out / "LOCK")
f.close()
"""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "sub" / "a.nii").is_file() and (tmp_path / "LOCK").exists()


def test_nrrd_reads_leave_fd_2_alone_and_still_say_why_they_fail(tmp_path, monkeypatch):
    """Review of the sixty-third session: every NRRD read redirected fd 2 for the whole read (serialised with other
    reads, and other threads' lines lost); teem's reason comes in the exception, so only MetaImage captures."""
    import medrecon.io.native_stderr as native_stderr

    def no_capture():
        raise AssertionError("fd 2 redirected for an NRRD read")
    monkeypatch.setattr(native_stderr, "_native_stderr", no_capture)
    data = np.arange(24, dtype="<i2")
    head = b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 3 2\nendian: little\nencoding: raw\nspacings: 1 1 2\n\n"
    (tmp_path / "n.nrrd").write_bytes(head + data.tobytes())
    assert read_volume(tmp_path / "n.nrrd").data.shape == (2, 3, 4)
    (tmp_path / "cut.nrrd").write_bytes(head + data.tobytes()[:-10])
    with pytest.raises(InputError, match=r"cut.nrrd: .*fread got only 19 2-sized things, not 24"):
        read_volume(tmp_path / "cut.nrrd")


def test_an_orthogonal_but_scaled_metaimage_direction_is_not_called_sheared(tmp_path):
    """Review of the sixty-third session: TransformMatrix 2 0 0 0 2 0 0 0 2 (orthogonal, not unit) was refused as
    "not orthogonal (a sheared grid)"."""
    path = _mha(tmp_path / "s.mha", "ElementSpacing = 1 1 2\nTransformMatrix = 2 0 0 0 2 0 0 0 2\n")
    vol = read_volume(path)  # ITK places voxel (1, 1, 1) at (2, 2, 4): unit axes, twice the spacing
    np.testing.assert_allclose(vol.direction, np.eye(3))
    assert vol.spacing == (2.0, 2.0, 4.0)
    assert any("not of unit length" in w for w in vol.meta["warnings"])


def test_a_rotation_written_to_four_digits_is_read_as_orthonormal(tmp_path):
    """Review of the sixty-third session's mends: a rotation whose columns are 0.99992 long (0.6 0.7999 ...) was
    refused as sheared: orthogonality was tested before the columns were normalised."""
    path = _mha(tmp_path / "r.mha", "ElementSpacing = 1 1 2\nTransformMatrix = 0.6 0.7999 0 -0.7999 0.6 0 0 0 1\n")
    vol = read_volume(path)
    np.testing.assert_allclose(vol.direction.T @ vol.direction, np.eye(3), atol=1e-12)
    assert vol.spacing == (1.0, 1.0, 2.0) and not any("unit length" in w for w in vol.meta["warnings"])


@pytest.mark.parametrize("name", ["a.npy", "a.nrrd"])
def test_the_implausible_spacing_advice_is_worded_by_format(tmp_path, name):
    """Review of the sixty-third session: a .npy (whose spacing is the caller's) and an NRRD were told to fix
    "pixdim and its units", NIfTI's fields."""
    data = np.zeros((2, 3, 4), np.float32)
    if name.endswith(".npy"):
        np.save(tmp_path / name, data)
        vol = read_volume(tmp_path / name, spacing=(0.001, 0.001, 0.001))
    else:
        write_volume(Volume(data, (0.001, 0.001, 0.001)), tmp_path / name)
        vol = read_volume(tmp_path / name)
    said = [w for w in vol.meta["warnings"] if "unlikely for a scan" in w]
    assert len(said) == 1 and "pixdim" not in said[0]
    assert ("--spacing z,y,x" if name.endswith(".npy") else "spacings or space directions") in said[0]
