"""`medrecon info` and `medrecon convert`, and every bad input through the CLI: exit status 2 and a message
naming the path (or, where medrecon goes on, exit 0 and a warning naming the file)."""
import json
import logging
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medrecon.errors import InputError
from medrecon.io import read_volume, write_volume
from medrecon.volume import Volume
from pipelines.cli import main

TESTS = Path(pydicom.__file__).parent / "data/test_files/dicomdirtests"
CT5N, CT2 = TESTS / "98892001/CT5N", TESTS / "77654033/CT2"

pytestmark = pytest.mark.skipif(not CT5N.is_dir(), reason="pydicom's test files are not installed")


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def edited_ct5n(tmp_path, edit):
    """A copy of CT5N with edit(k, dataset) applied to each slice, k counted along z (inferior first)."""
    folder = tmp_path / "series"
    shutil.copytree(CT5N, folder)
    files = sorted(folder.iterdir(), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        edit(k, ds)
        ds.save_as(f)
    return folder, files


def test_info_json_reports_zyx_shape_and_spacing(capsys):
    code, out, _ = run(capsys, "info", CT5N, "--json")
    assert code == 0
    d = json.loads(out)
    assert d["shape"] == [5, 16, 16]
    assert d["spacing"] == pytest.approx([2.5, 0.488281, 0.488281])
    assert d["orientation"] == "LPS" and d["modality"] == "CT"
    assert d["range"] == [-888.0, 85.0]  # HU of these slices (min/max of pydicom's pixels - 1024)
    assert [s["n_files"] for s in d["series"]] == [5] and "PatientName" not in out


def test_info_text(capsys):
    code, out, _ = run(capsys, "info", CT5N)
    assert code == 0 and "5 x 16 x 16" in out and "2.5, 0.488281, 0.488281" in out



def test_info_prints_a_tiny_spacing_with_its_digits_not_as_zero(tmp_path, capsys):
    """A NIfTI header at 1e-9 mm (meters read as mm, and then some) was printed as spacing 0, 0, 0: describe
    rounded it to six decimals. Its warning said 1e-09 while the spacing line said 0."""
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.diag([1e-9, 2e-9, 3e-9, 1])), tmp_path / "t.nii.gz")
    code, out, _ = run(capsys, "info", tmp_path / "t.nii.gz")
    assert code == 0 and "spacing (z,y,x) mm: 3e-09, 2e-09, 1e-09" in out, out
    assert json.loads(run(capsys, "info", tmp_path / "t.nii.gz", "--json")[1])["spacing"] == [3e-9, 2e-9, 1e-9]


def test_info_prints_a_path_holding_a_newline_on_one_line(tmp_path, capsys):
    """`info`'s own output printed such a path over two lines (its errors and warnings already escaped it)."""
    shutil.copytree(CT5N, folder := tmp_path / "a\nb")
    code, out, _ = run(capsys, "info", folder)
    assert code == 0 and f"path:          {tmp_path}/a\\nb (dicom)\n" in out, out
    (tie := tmp_path / "tie\tx").mkdir()
    for name in ("c", "d"):  # two series of one size: the line that names the folder
        from medrecon.io import write_dicom_series
        write_dicom_series(Volume(np.zeros((2, 8, 8), np.float32), meta={"dicom": {"Modality": "CT"}}),
                           tmp_path / name, series_description=name)
        for f in (tmp_path / name).iterdir():
            shutil.move(f, tie / f"{name}_{f.name}")
    code, out, _ = run(capsys, "info", tie)
    assert code == 0 and f"{tmp_path}/tie\\tx: the largest series are the same size" in out, out


def test_an_error_naming_a_path_with_a_newline_prints_on_one_line(tmp_path, capsys):
    """Paths are interpolated raw into messages: one holding a newline printed the error over two lines (and a
    warning likewise). The printed line escapes control characters; a config's several problems keep a line each."""
    import logging
    from pipelines.cli import _OneLine
    code, _, err = run(capsys, "info", tmp_path / "bad\nname" / "x.nii.gz")
    assert code == 2 and err.count("\n") == 1 and "bad\\nname" in err and "does not exist" in err, err
    line = _OneLine("warning: %(message)s").format(logging.makeLogRecord({"msg": "a\tb\nc: d", "levelno": 30}))
    assert line == "warning: a\\tb\\nc: d"
    code, _, err = run(capsys, "reconstruct", "-c", "cs_mri_x4", "-i", tmp_path / "x.nii.gz", "-o", tmp_path / "o",
                       "--set", "foo=1", "--set", "bar=2")
    assert code == 2 and "--set foo: unknown key" in err and "\n--set bar: unknown key" in err, err

def test_convert_dicom_nifti_dicom(tmp_path, capsys):
    assert run(capsys, "convert", CT5N, tmp_path / "ct.nii.gz")[0] == 0
    assert run(capsys, "convert", tmp_path / "ct.nii.gz", tmp_path / "dcm", "--modality", "CT")[0] == 0
    src, back = read_volume(CT5N), read_volume(tmp_path / "dcm")
    np.testing.assert_array_equal(back.data, src.data)
    np.testing.assert_allclose(back.affine_lps, src.affine_lps, atol=1e-4)  # NIfTI stores float32
    code, _, err = run(capsys, "convert", CT5N, tmp_path / "ct.nii.gz")
    assert code == 2 and "--overwrite" in err and str(tmp_path / "ct.nii.gz") in err
    assert run(capsys, "convert", CT5N, tmp_path / "ct.nii.gz", "--overwrite")[0] == 0
    code, _, err = run(capsys, "convert", tmp_path / "ct.nii.gz", tmp_path / "xx", "--modality", "XX")
    assert code == 2 and "--modality XX: give one of CT, MR, OT" in err and not (tmp_path / "xx").exists()
    assert run(capsys, "convert", tmp_path / "ct.nii.gz", tmp_path / "mr", "--modality", "mr")[0] == 0
    assert read_volume(tmp_path / "mr").meta["dicom"]["Modality"] == "MR"  # any case, written upper


@pytest.mark.parametrize("name, kind", [("ct.nii.gz", "NIfTI"), ("ct.mha", "NRRD/MHA")])
def test_convert_modality_to_a_file_without_one_is_refused_before_reading(tmp_path, capsys, name, kind):
    """--modality only reaches a DICOM series: to NIfTI or MHA it was dropped without a word; now exit 2 naming
    the option and the fix, and nothing is written (a missing input is not even read)."""
    code, _, err = run(capsys, "convert", CT5N, tmp_path / name, "--modality", "MR")
    assert code == 2 and f"--modality applies to DICOM output; {tmp_path / name} is {kind}" in err
    assert "give a folder path for a DICOM series" in err and not (tmp_path / name).exists()
    code, _, err = run(capsys, "convert", tmp_path / "nowhere", tmp_path / name, "--modality", "MR")
    assert code == 2 and "--modality applies" in err and "does not exist" not in err


def test_convert_plane_axial_restacks_a_sagittal_volume_without_moving_a_voxel(tmp_path, capsys, caplog):
    """--plane axial: a 3D acquisition stored as sagittal slices (which medrecon warns about, its priors being
    axial) written as axial slices, every voxel at its world position, and read back without the warning. The
    conversion itself says nothing of planes (it printed the warning advising --plane axial, the option given);
    --plane coronal warns of coronal slices, not of the input's sagittal ones."""
    sag = Volume(np.random.default_rng(2).random((6, 8, 10)).astype(np.float32), spacing=(1.0, 1.0, 1.3),
                 direction=np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]))  # x P, y I, z L
    write_volume(sag, tmp_path / "sag.nii.gz")
    with caplog.at_level(logging.WARNING, logger="medrecon"):
        code, out, _ = run(capsys, "convert", tmp_path / "sag.nii.gz", tmp_path / "ax.nii.gz", "--plane", "axial")
    assert code == 0 and "8 x 10 x 6" in out and "voxel axes LPS (axial slices)" in out
    assert "slices are" not in caplog.text and "--plane axial" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="medrecon"):
        assert run(capsys, "convert", tmp_path / "sag.nii.gz", tmp_path / "cor.nii.gz", "--plane", "coronal")[0] == 0
    assert caplog.text.count("slices are coronal") == 1 and "slices are sagittal" not in caplog.text
    assert "sag.nii.gz re-stacked as coronal slices: its slices are coronal" in caplog.text  # named as stored
    ax = read_volume(tmp_path / "ax.nii.gz")
    assert ax.orientation == "LPS" and not any("sagittal" in w for w in ax.meta.get("warnings", []))
    assert any("sagittal" in w for w in read_volume(tmp_path / "sag.nii.gz").meta.get("warnings", []))
    k = np.unravel_index(int(np.argmax(sag.data)), sag.shape)
    kk = np.unravel_index(int(np.argmax(ax.data)), ax.shape)
    np.testing.assert_allclose(ax.world_lps(kk[::-1]), sag.world_lps(k[::-1]), atol=1e-4)


def _bad_input(case, tmp_path):
    """(path the message must name, CLI arguments, text the message must contain) for one bad input."""
    out = tmp_path / "out.nii"
    if case == "missing":
        return tmp_path / "nowhere", ["info", tmp_path / "nowhere"], "does not exist"
    if case == "empty":
        (path := tmp_path / "empty").mkdir()
        return path, ["info", path], "empty"
    if case == "no-dicom":
        (path := tmp_path / "docs").mkdir()
        (path / "readme.txt").write_text("no images here")
        (path / "scan.dcm").write_bytes(os.urandom(2000))
        return path, ["info", path], "no readable DICOM"
    if case == "nonuniform":
        return CT2, ["convert", CT2, out], "--resample"
    if case == "tilt":  # each slice shifted 2.5 mm * tan(15 deg) along y: a sheared stack
        path, _ = edited_ct5n(tmp_path, lambda k, ds: setattr(ds, "ImagePositionPatient", [
            ds.ImagePositionPatient[0], -143.0 + k * 2.5 * np.tan(np.radians(15)), ds.ImagePositionPatient[2]]))
        return path, ["convert", path, out], "gantry tilt"
    if case == "nan-nifti":
        data = np.zeros((4, 4, 3), np.float32)
        data[0, 0, 0], data[1, 1, 1], data[2, 2, 2] = np.nan, np.nan, np.inf
        nib.save(nib.Nifti1Image(data, np.eye(4)), path := tmp_path / "bad.nii.gz")
        return path, ["convert", path, out], "2 NaN and 1 Inf"
    if case == "unknown-series":  # the message lists the series that are there
        return CT5N, ["info", CT5N, "--series", "1.2.3"], "1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.6"
    if case == "radial":
        path = TESTS / "98892003/MR700"
        return path, ["info", path], "orientation"
    if case == "input-as-output":
        shutil.copytree(CT5N, path := tmp_path / "in")
        return path, ["convert", path, path, "--overwrite"], "input"
    raise ValueError(case)


@pytest.mark.parametrize("case", ["missing", "empty", "no-dicom", "nonuniform", "tilt", "nan-nifti",
                                  "unknown-series", "radial", "input-as-output"])
def test_bad_input_exits_2_naming_the_path(tmp_path, capsys, case):
    path, args, expected = _bad_input(case, tmp_path)
    code, _, err = run(capsys, *args)
    assert code == 2, err
    assert str(path) in err and expected in err and "Traceback" not in err
    assert not (tmp_path / "out.nii").exists()
    if case == "input-as-output":
        assert sorted(f.name for f in path.iterdir()) == sorted(f.name for f in CT5N.iterdir())


def test_nonuniform_series_resampled_on_request(tmp_path, capsys):
    code, out, _ = run(capsys, "convert", CT2, tmp_path / "ct2.nii", "--resample")
    assert code == 0 and "165 x 16 x 16" in out
    assert nib.load(tmp_path / "ct2.nii").header.get_zooms()[2] == pytest.approx(1.25)


def test_the_uneven_spacing_refusal_names_the_option_for_the_command_line_and_python(tmp_path, capsys):
    """The refusal said "Pass --resample (resample_nonuniform=True)": a Python keyword in a command-line message,
    unmarked. It names the option first and says where the keyword belongs, in both of its forms."""
    folder, files = edited_ct5n(tmp_path, lambda k, ds: None)
    fix = "--resample (resample_nonuniform=True in Python)"
    code, _, err = run(capsys, "info", CT2)
    assert code == 2 and f"Pass {fix} to interpolate linearly" in err
    files[2].write_bytes(files[2].read_bytes()[:-100])  # a damaged slice leaves a gap
    code, _, err = run(capsys, "info", folder)
    assert code == 2 and f"or pass {fix} to interpolate over the gap" in err


def test_unwritable_output(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("a file, not a folder")
    dest = tmp_path / "file.txt/out.nii"
    code, _, err = run(capsys, "convert", CT5N, dest)
    assert code == 2 and str(tmp_path / "file.txt") in err and "writable" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_read_only_output_folder(tmp_path, capsys):
    (ro := tmp_path / "ro").mkdir()
    ro.chmod(0o500)
    try:
        code, _, err = run(capsys, "convert", CT5N, ro / "out.nii")
    finally:
        ro.chmod(0o700)
    assert code == 2 and str(ro / "out.nii") in err


def test_corrupt_slices_are_skipped_with_a_warning(tmp_path, capsys, caplog):
    folder, files = edited_ct5n(tmp_path, lambda k, ds: None)
    files[-1].write_bytes(files[-1].read_bytes()[:-100])  # top slice: pixel data cut short
    (folder / "9999").write_bytes(files[0].read_bytes()[:500])  # a header cut short
    with caplog.at_level(logging.WARNING, logger="medrecon"):
        code, out, err = run(capsys, "info", folder, "--json")
    assert code == 0, err
    assert json.loads(out)["shape"] == [4, 16, 16]
    assert str(files[-1]) in caplog.text and str(folder / "9999") in caplog.text
    # A damaged slice in the middle leaves a gap: refused as non-uniform spacing.
    files[2].write_bytes(files[2].read_bytes()[:-100])
    code, _, err = run(capsys, "info", folder)
    assert code == 2 and "--resample" in err and str(folder) in err


def test_missing_rescale_tags_assume_identity_with_a_warning(tmp_path, capsys, caplog):
    def drop(k, ds):
        del ds.RescaleSlope, ds.RescaleIntercept
    folder, files = edited_ct5n(tmp_path, drop)
    with caplog.at_level(logging.WARNING, logger="medrecon"):
        code, out, err = run(capsys, "convert", folder, tmp_path / "o.nii")
    assert code == 0, err
    assert "RescaleSlope" in caplog.text and f"{folder}: 5 of 5 CT slices" in caplog.text
    data = nib.load(tmp_path / "o.nii").get_fdata()
    np.testing.assert_array_equal(data[:, :, 1].T, pydicom.dcmread(files[1]).pixel_array)  # stored values


def test_mixed_series_default_to_the_largest_listing_all(tmp_path, capsys, caplog):
    shutil.copytree(CT5N, tmp_path / "mixed")
    for f in CT2.iterdir():
        shutil.copy(f, tmp_path / "mixed")
    uid5 = str(pydicom.dcmread(CT5N / "2062").SeriesInstanceUID)
    uid4 = str(pydicom.dcmread(CT2 / "17106").SeriesInstanceUID)
    with caplog.at_level(logging.WARNING, logger="medrecon"):
        code, out, _ = run(capsys, "info", tmp_path / "mixed", "--json")
    assert code == 0 and json.loads(out)["series_uid"] == uid5
    assert uid5 in caplog.text and uid4 in caplog.text and "--series" in caplog.text
    code, out, _ = run(capsys, "info", tmp_path / "mixed", "--json", "--series", uid4, "--resample")
    assert code == 0 and json.loads(out)["shape"][0] == 165


def test_one_file_of_a_series_given_alone_is_read_with_a_warning_naming_its_folder(tmp_path, caplog):
    """Sixty-third session: a file dragged from a series folder was read as a one-slice volume without a word.
    The console is told the folder; the warning kept for report.json says "its folder" (it named the folder above
    the file, which may name the patient, even with de-identification)."""
    folder, files = edited_ct5n(tmp_path, lambda k, ds: None)
    with caplog.at_level(logging.WARNING, logger="medrecon"):
        vol = read_volume(files[2])
    assert vol.data.shape[0] == 1
    tail = f"; give that folder to read the whole series (with --series {vol.meta['series_uid']} if it holds several)"
    assert f"{files[2]}: one slice of a series whose other files lie in {folder}{tail}" in caplog.text
    assert vol.meta["warnings"] == [f"{files[2]}: one slice of a series whose other files lie in its folder{tail}"]
    assert "geometry_assumed" not in vol.meta
    (tmp_path / "alone").mkdir()
    shutil.copy(files[2], tmp_path / "alone")
    assert read_volume(tmp_path / "alone" / files[2].name).meta["warnings"] == []


def test_the_lone_file_check_stops_at_the_first_other_file_of_the_series(tmp_path, monkeypatch):
    """Review of the sixty-fourth session: the check read every file's header in the folder to count the series'
    files (2,000 reads on a big folder for one warning); it needs only one other file of the series."""
    import medrecon.io.dispatch as dispatch
    folder, files = edited_ct5n(tmp_path, lambda k, ds: None)
    given = sorted(files)[2]
    read = []

    def counted(p, **kw):
        read.append(p)
        return real(p, **kw)
    real = dispatch.read_header
    monkeypatch.setattr(dispatch, "read_header", counted)
    vol = read_volume(given)
    assert read == [sorted(files)[0]]
    assert len(vol.meta["warnings"]) == 1 and "one slice of a series whose other files lie in its folder" in \
        vol.meta["warnings"][0]


def test_the_lone_file_warning_does_not_record_a_folder_named_like_the_patient(tmp_path):
    """Review of the sixty-third session: report.json's input_warnings held the folder above the file (scrub and
    named_only replace the file's own path only), de-identified or not."""
    from medrecon.io.deidentify import scrub
    from pipelines.tasks import named_only
    patient = tmp_path / "DOE^JOHN 1234567"
    shutil.copytree(CT5N, patient)
    f = sorted(patient.iterdir())[0]
    warned = read_volume(f).meta["warnings"]
    assert len(warned) == 1 and "one slice of a series" in warned[0]
    for recorded in (named_only(warned[0], f), scrub(warned[0], f)):
        assert "DOE" not in recorded and str(tmp_path) not in recorded


def test_the_lone_file_warning_is_skipped_when_its_folder_cannot_be_listed(tmp_path, monkeypatch):
    """Review of the sixty-third session: an execute-only folder's PermissionError ended the read in a traceback."""
    folder, files = edited_ct5n(tmp_path, lambda k, ds: None)
    real = Path.iterdir

    def refuse(self):
        if self == folder:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)
    monkeypatch.setattr(Path, "iterdir", refuse)
    vol = read_volume(files[2])
    assert vol.data.shape[0] == 1 and vol.meta["warnings"] == []


@pytest.mark.parametrize("edit", ["DX", "no geometry"])
def test_a_projection_image_given_alone_is_not_told_to_read_its_folder(tmp_path, edit):
    """Review of the sixty-third session: a radiograph (or a file without patient geometry) was told to give its
    folder, whose read is then refused."""
    def projection(k, ds):
        if edit == "DX":
            ds.Modality = "DX"
        else:
            del ds.ImagePositionPatient, ds.ImageOrientationPatient
    folder, files = edited_ct5n(tmp_path, lambda k, ds: None)
    for f in files:  # edited after sorting by position (edited_ct5n sorts by ImagePositionPatient)
        ds = pydicom.dcmread(f)
        projection(0, ds)
        ds.save_as(f)
    vol = read_volume(files[2])
    assert not any("one slice of a series" in w for w in vol.meta.get("warnings", []))
    assert vol.meta.get("geometry_assumed", False) is (edit == "no geometry")


def test_a_slice_without_patient_geometry_is_told_by_a_meta_flag_not_its_warning_text(tmp_path, monkeypatch):
    """Review of the sixty-fourth session: the lone-file check searched the warnings for NO_GEOMETRY's text, so a
    reworded warning would have told a slice without geometry to read its folder. The read sets
    ``meta['geometry_assumed']`` and the check reads that."""
    import medrecon.io.dicom_read as dicom_read
    monkeypatch.setattr(dicom_read, "NO_GEOMETRY", "no patient geometry (reworded)")
    folder, files = edited_ct5n(tmp_path, lambda k, ds: None)
    for f in files:
        ds = pydicom.dcmread(f)
        del ds.ImagePositionPatient, ds.ImageOrientationPatient
        ds.save_as(f)
    vol = read_volume(files[2])
    assert vol.meta["geometry_assumed"] is True
    assert vol.meta["warnings"] == [f"{files[2]}: no patient geometry (reworded)"]


def test_a_ct_slice_without_the_rescale_its_neighbours_have_is_refused(tmp_path, capsys):
    """Sixty-third session: one slice of a series at intercept -1024 without the tags was read 1024 HU off its
    neighbours, with the warning meant for a series that has none."""
    def drop(k, ds):
        if k == 1:
            del ds.RescaleIntercept
    folder, files = edited_ct5n(tmp_path, drop)
    code, _, err = run(capsys, "convert", folder, tmp_path / "o.nii")
    assert code == 2 and not (tmp_path / "o.nii").exists()
    assert f"1 of 5 CT slices lack RescaleIntercept (e.g. {files[1].name}: read with slope 1, intercept 0)" in err
    assert "intercept -1024" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("slope", [1, 2])
def test_ct_slices_lacking_only_rescale_slope_are_read_when_slope_1_gives_their_neighbours_rescale(
        tmp_path, capsys, slope):
    """Review of the sixty-third session: slices lacking only RescaleSlope (default 1) at their neighbours'
    intercept were refused as lacking both tags; refused only where the default slope differs from the others'."""
    def drop(k, ds):
        ds.RescaleSlope, ds.RescaleIntercept = slope, -1024
        if k in (1, 2):
            del ds.RescaleSlope
    folder, files = edited_ct5n(tmp_path, drop)
    code, _, err = run(capsys, "convert", folder, tmp_path / "o.nii")
    if slope == 1:  # the default slope is the others' 
        assert code == 0, err
        data = nib.load(tmp_path / "o.nii").get_fdata()
        np.testing.assert_array_equal(data[:, :, 1].T, pydicom.dcmread(files[1]).pixel_array - 1024.0)
    else:  # the others' slope is 2
        assert code == 2 and "2 of 5 CT slices lack RescaleSlope (e.g." in err and "slope 2, intercept -1024" in err


def test_ct_slices_without_tags_beside_slices_whose_rescales_differ_are_refused(tmp_path, capsys):
    """Review of the sixty-third session's mends: one slice with an explicit slope 1, intercept 0 among slices at
    intercept -1024 let a slice without the tags through silently (its defaults matched that one slice), 1024 HU
    off the rest."""
    def edit(k, ds):
        ds.RescaleSlope, ds.RescaleIntercept = 1, (0 if k == 3 else -1024)
        if k == 4:
            del ds.RescaleSlope, ds.RescaleIntercept
    folder, files = edited_ct5n(tmp_path, edit)
    code, _, err = run(capsys, "convert", folder, tmp_path / "o.nii")
    assert code == 2 and not (tmp_path / "o.nii").exists()
    assert f"1 of 5 CT slices lack RescaleSlope/RescaleIntercept (e.g. {files[4].name}" in err
    assert "slope 1, intercept -1024 or slope 1, intercept 0" in err and len(err.strip().splitlines()) == 1


def test_mr_slices_without_the_rescale_their_neighbours_have_are_refused(tmp_path, capsys):
    """Review of the sixty-third session's mends: the rule was CT's alone, so an MR slice without the tags among
    slices at intercept -1024 was read about 1024 off its neighbours without a word."""
    def edit(k, ds):
        ds.Modality, ds.RescaleSlope, ds.RescaleIntercept = "MR", 1, -1024
        if k == 2:
            del ds.RescaleSlope, ds.RescaleIntercept
    folder, files = edited_ct5n(tmp_path, edit)
    code, _, err = run(capsys, "convert", folder, tmp_path / "o.nii")
    assert code == 2 and f"1 of 5 MR slices lack RescaleSlope/RescaleIntercept (e.g. {files[2].name}" in err


@pytest.mark.parametrize("interpretation", ["MONOCHROME2", "MONOCHROME1"])
def test_photometric_interpretation_does_not_change_the_values(tmp_path, capsys, interpretation):
    """#13.1: the modality LUT gives HU whatever MONOCHROME1/2 says (GDCM's inversion is undone); the
    unsigned 12-bit case too."""
    for signed in (True, False):
        def edit(k, ds):
            ds.PhotometricInterpretation = interpretation
            if not signed:  # unsigned 12-bit stored values, slope 2
                stored = ds.pixel_array.astype(np.int32) + 1024
                ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
                ds.PixelData = stored.astype(np.uint16).tobytes()
                ds.RescaleSlope, ds.RescaleIntercept = 2, -3072
        folder, _ = edited_ct5n(tmp_path / f"{interpretation}{signed}", edit)
        want = read_volume(CT5N).data * (1 if signed else 2) + (0 if signed else 1024)
        np.testing.assert_array_equal(read_volume(folder).data, want)
        assert run(capsys, "convert", folder, tmp_path / f"{interpretation}{signed}.nii")[0] == 0
        assert np.corrcoef(nib.load(tmp_path / f"{interpretation}{signed}.nii").get_fdata().ravel(),
                           want.transpose(2, 1, 0).ravel())[0, 1] > 0.999


def test_rescale_slope_zero_is_refused(tmp_path, capsys):
    """#13.2"""
    folder, files = edited_ct5n(tmp_path, lambda k, ds: setattr(ds, "RescaleSlope", 0) if k == 2 else None)
    code, _, err = run(capsys, "convert", folder, tmp_path / "out.nii")
    assert code == 2 and "RescaleSlope" in err and files[2].name in err and not (tmp_path / "out.nii").exists()


@pytest.mark.parametrize("slope", [1e38, 1e34])
def test_a_rescale_slope_giving_values_beyond_any_image_is_refused_naming_the_file(tmp_path, capsys, slope):
    """Sixty-third session's audit: a slice with RescaleSlope 1e38 was read (values up to 3e38) and a reconstruction
    later met "the input Volume: ... Inf voxels", naming neither the file nor the cause."""
    folder, files = edited_ct5n(tmp_path, lambda k, ds: setattr(ds, "RescaleSlope", slope) if k == 2 else None)
    code, _, err = run(capsys, "info", folder)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(files[2]) in err and f"RescaleSlope {slope:g}" in err and "fix RescaleSlope" in err


def test_a_non_finite_rescale_intercept_is_refused(tmp_path, capsys):
    folder, files = edited_ct5n(tmp_path, lambda k, ds: setattr(ds, "RescaleIntercept", "inf") if k == 3 else None)
    code, _, err = run(capsys, "info", folder)
    assert code == 2 and f"{files[3]}: RescaleIntercept is 'inf'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_a_negative_rescale_slope_on_one_slice_is_refused_naming_it(tmp_path, capsys, modality):
    """Sixty-third session's audit: a slice at slope -1 among slope-1 slices was read inverted without a word. CT
    slopes are positive (HU rise with the stored value): a negative one is refused on every slice of a CT series;
    elsewhere a slope whose sign differs from the other slices'."""
    def edit(k, ds):
        ds.Modality = modality
        if k == 1:
            ds.RescaleSlope = -1
    folder, files = edited_ct5n(tmp_path / "one", edit)
    code, _, err = run(capsys, "info", folder)
    assert code == 2 and f"{files[1]}: RescaleSlope is -1, negative while" in err
    assert len(err.strip().splitlines()) == 1
    folder, files = edited_ct5n(tmp_path / "all", lambda k, ds: (setattr(ds, "Modality", modality),
                                                                  setattr(ds, "RescaleSlope", -1)))
    code, _, err = run(capsys, "info", folder)
    if modality == "CT":
        assert code == 2 and "RescaleSlope is -1, negative, so HU would fall" in err
    else:  # one sign throughout: the scanner's own mapping
        assert code == 0, err


@pytest.mark.parametrize("tag", ["Modality", "FrameOfReferenceUID"])
def test_slices_of_one_series_that_differ_in_modality_or_frame_of_reference_are_refused(tmp_path, capsys, tag):
    """Sixty-third session's audit: one slice of a CT series marked MR, or in another frame of reference (its
    position in another coordinate system), was stacked with the others without a word."""
    value = "MR" if tag == "Modality" else pydicom.uid.generate_uid()
    folder, files = edited_ct5n(tmp_path, lambda k, ds: setattr(ds, tag, value) if k == 2 else None)
    code, _, err = run(capsys, "info", folder)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"the slices differ in {tag}" in err and files[2].name in err and str(value) in err and "--series" in err
    if tag == "FrameOfReferenceUID":
        assert "coordinate frames" in err
    # a slice without the tag is not told apart from the others
    folder, _ = edited_ct5n(tmp_path / "absent", lambda k, ds: delattr(ds, tag) if k == 2 else None)
    assert run(capsys, "info", folder)[0] == 0


def test_slightly_uneven_spacing_of_real_scanners_is_accepted(tmp_path, capsys):
    """#13.13: gaps of 2.45-2.55 mm (positions rounded by the scanner) are within the 0.2 mm tolerance and
    read as uniform with a note; a missing slice is still refused and the message says which tolerance."""
    jitter = [0.0, 0.05, -0.04, 0.06, 0.0]
    folder, _ = edited_ct5n(tmp_path / "a", lambda k, ds: setattr(ds, "ImagePositionPatient", [
        *ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + jitter[k]]))
    code, out, err = run(capsys, "info", folder, "--json")
    assert code == 0 and json.loads(out)["shape"] == [5, 16, 16]
    assert "tolerance" in " ".join(json.loads(out)["warnings"])
    code, _, err = run(capsys, "info", CT2)
    assert code == 2 and "0.2 mm" in err and "--resample" in err


def test_truncated_and_huge_npy_and_nifti(tmp_path, capsys):
    """#13.8: a truncated or header-only .npy is called truncated; a huge one is refused before reading."""
    np.save(ok := tmp_path / "ok.npy", np.zeros((2, 3, 4), np.float32))
    data = ok.read_bytes()
    (cut := tmp_path / "cut.npy").write_bytes(data[:-10])
    (header := tmp_path / "header.npy").write_bytes(data[:128])
    huge = tmp_path / "huge.npy"
    with open(huge, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (8192,) * 3})
        f.truncate(f.tell() + 8192 ** 3 * 4)  # sparse: 2 TiB declared and present
    for path, text in ((cut, "truncated"), (header, "truncated"), (huge, "GiB")):
        code, _, err = run(capsys, "info", path)
        assert code == 2 and str(path) in err and text in err and "Traceback" not in err, err
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), big := tmp_path / "big.nii")
    hdr = nib.load(big).header.copy()
    hdr.set_data_shape((8192, 8192, 8192))
    with open(big, "r+b") as f:
        f.write(hdr.binaryblock)
        f.truncate(int(hdr.get_data_offset()) + 8192 ** 3 * 4)
    code, _, err = run(capsys, "info", big)
    assert code == 2 and "memory" in err and "complete" not in err


@pytest.mark.parametrize("spacing", ["nan,1,1", "1,inf,1", "0,1,1"])
def test_spacing_that_is_not_a_positive_finite_number_is_one_line(tmp_path, capsys, spacing):
    np.save(a := tmp_path / "a.npy", np.zeros((2, 3, 4), np.float32))
    for cmd in (["info", a], ["convert", a, tmp_path / "a.nii.gz"]):
        code, _, err = run(capsys, *cmd, "--spacing", spacing)
        assert code == 2 and "three positive numbers" in err and "Traceback" not in err, err


@pytest.mark.parametrize("args, named", [
    (["evaluate", "-r", "{t}/a.nii.gz", "-i", "{t}/b.nii.gz", "-o", "{t}/out", "--data-range", "nan"],
     "--data-range nan: give finite numbers"),
    (["phantom", "{t}/out", "--shape", "4,16,16", "--slice-thickness", "inf"],
     "--slice-thickness inf: give finite numbers"),
    (["batch", "{t}", "{t}/out", "-c", "sparse_view_ct_8", "--cpus-per-series", "inf"],
     "--cpus-per-series inf: give finite numbers"),
    (["pacs", "listen", "{t}/out", "-c", "sparse_view_ct_8", "--stable-seconds", "-inf"],
     "--stable-seconds -inf: give finite numbers")])
def test_numbers_that_are_not_finite_are_refused_by_every_command_naming_the_option(tmp_path, capsys, args, named):
    """Only `train` refused them: `phantom --slice-thickness inf` was a traceback that left its folder, `evaluate
    --data-range nan` named no option, `--stable-seconds -inf` and the Ray shares were taken as given."""
    code, _, err = run(capsys, *(a.format(t=tmp_path) for a in args))
    assert code == 2 and named in err and "Traceback" not in err and not (tmp_path / "out").exists(), err


@pytest.mark.parametrize("option, value", [("--lr", "nan"), ("--heldout-fraction", "inf"), ("--time-limit", "NaN")])
def test_not_finite_numbers_for_options_with_a_range_get_the_shared_line(tmp_path, capsys, option, value):
    """The range of `--lr` (min=0) refused `nan` at parse time, before check_finite, in its own words ("Input
    should be greater than or equal to 0"); now the one line every number option gives. Out of range is the range's."""
    code, _, err = run(capsys, "train", "-o", tmp_path / "out", option, value)
    assert code == 2 and f"{option} {float(value):g}: give finite numbers" in err and "Input should" not in err, err
    code, _, err = run(capsys, "train", "-o", tmp_path / "out", option, "-1")
    assert code == 2 and f"Invalid value for '{option}'" in err and "greater than or equal to 0" in err, err
    assert not (tmp_path / "out").exists()


def test_not_finite_numbers_are_refused_without_typers_conversion_internals(tmp_path):
    """The refusal hooks typer's internals (typer._coercion.build_runtime_param, the parameter's _runtime_param
    slot, typer 0.29). A typer without them left the whole CLI unable to import; now it falls back to refusing
    NaN and infinity when the command is invoked, in the same line (a ranged option may use its range's words)."""
    import subprocess
    import sys
    script = ("import sys, typer.main, typer._coercion\n"
              "del typer._coercion.build_runtime_param\n"  # as a typer that renamed it: the import fails
              "from pipelines.cli import main\n"
              f"sys.exit(main(['evaluate', '-r', '{tmp_path}/a.nii.gz', '-i', '{tmp_path}/b.nii.gz', "
              f"'-o', '{tmp_path}/out', '--data-range', 'nan']))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent, timeout=300)
    assert done.returncode == 2 and "--data-range nan: give finite numbers" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_the_fallback_refusal_names_the_option(monkeypatch, tmp_path, capsys):
    """Where typer's conversion slot is missing (build_runtime_param None), FiniteCommand refuses at invoke."""
    import pipelines.app
    import pipelines.cli
    from typer.main import get_command
    monkeypatch.setattr(pipelines.app, "build_runtime_param", None)
    assert not get_command(pipelines.cli.app).commands["phantom"].converts  # the conversion is typer's own
    code, _, err = run(capsys, "phantom", tmp_path / "out", "--shape", "4,16,16", "--slice-thickness", "inf")
    assert code == 2 and "--slice-thickness inf: give finite numbers" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_modality_choices_on_the_command_line_are_in_any_case(tmp_path, capsys):
    """`--modality MRI` / `CT` were refused ("'CT' is not one of 'ct', 'mri'") while a config or a measurements
    file took any case; --help still lists the choices."""
    assert run(capsys, "phantom", tmp_path / "mr", "--modality", "MRI", "--shape", "4,16,16", "--seeds", "0")[0] == 0
    assert [p.name for p in (tmp_path / "mr").iterdir()] == ["mri_seed0000.nii.gz"]
    code, _, err = run(capsys, "train", "-o", tmp_path / "out", "--modality", "CT", "--data", tmp_path / "nowhere")
    assert code == 2 and "no such file or folder" in err and "--modality" not in err, err
    code, _, err = run(capsys, "train", "-o", tmp_path / "out", "--modality", "PET")
    assert code == 2 and "'PET' is not one of 'ct', 'mri'" in err, err
    for command in ("train", "phantom"):
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and "--modality <ct|mri>" in out, out


def _leaf_commands():
    """Every command of the CLI, of the sub-apps too (`data`, `pacs`), as click builds it."""
    import typer

    from pipelines.cli import app

    def leaves(cmd):
        subs = getattr(cmd, "commands", None)
        return [leaf for c in subs.values() for leaf in leaves(c)] if subs is not None else [cmd]
    return leaves(typer.main.get_command(app))


def test_every_command_checks_its_numbers():
    """Every command, of the sub-apps too (`data`, `pacs`), is a FiniteCommand (pipelines.app)."""
    from pipelines.app import FiniteCommand

    commands = _leaf_commands()
    assert len(commands) > 10 and all(isinstance(c, FiniteCommand) for c in commands), \
        [c.name for c in commands if not isinstance(c, FiniteCommand)]


@pytest.mark.parametrize("value", ["nan", "-inf"])
def test_every_float_option_refuses_non_finite_values_as_they_are_converted(value):
    """NaN and infinity went through the options' conversion: the command refused them at invoke, and an option with
    a range refused nan in the range's words, which the command re-parsed its arguments to replace. The conversion
    of every float option (tuples too) now refuses them first, naming the option, before its range or the others."""
    from pipelines.app import _takes_floats

    checked = 0
    for command in _leaf_commands():
        for p in filter(_takes_floats, command.params):
            given = [value] * p.nargs
            with pytest.raises(InputError, match=f"^{p.opts[0]} {' '.join(given)}: give finite numbers$"):
                command.make_context(command.name, [p.opts[0], *given])
            checked += 1
    assert checked > 20


def test_info_wording_and_multi_valued_description(tmp_path, capsys):
    """#13.19: the orientation line reads plainly; a multi-valued SeriesDescription is text, not a list."""
    folder, _ = edited_ct5n(tmp_path, lambda k, ds: setattr(ds, "SeriesDescription", ["Chest", "Lung"]))
    code, out, _ = run(capsys, "info", folder)
    assert code == 0 and "'Chest / Lung'" in out and "[" not in out
    assert "LPS: voxel axes x, y, z run towards patient left, posterior, superior" in out
    assert json.loads(run(capsys, "info", folder, "--json")[1])["series_description"] == "Chest / Lung"


def test_deidentified_dicom_output_and_window_tags(tmp_path, capsys):
    """#13.18: --deidentify writes no patient identifiers (PS3.15 basic profile); #13.19: WindowCenter/Width, and
    Laterality empty only where the body part is unknown (this source names none: dciodvfy, run since the
    forty-fourth session, calls an absent Laterality there an error and an empty one a warning; it is left out
    for unpaired parts, tests/test_io_dicom.py)."""
    src = pydicom.dcmread(next(CT5N.iterdir()))
    assert run(capsys, "convert", CT5N, tmp_path / "plain")[0] == 0
    assert run(capsys, "convert", CT5N, tmp_path / "anon", "--deidentify")[0] == 0
    plain = pydicom.dcmread(next((tmp_path / "plain").glob("*.dcm")))
    anon = pydicom.dcmread(next((tmp_path / "anon").glob("*.dcm")))
    assert plain.PatientName == src.PatientName and plain.StudyInstanceUID == src.StudyInstanceUID
    assert "WindowCenter" in plain and float(plain.WindowWidth) >= 1 and plain.Laterality == ""
    assert str(anon.PatientName) == "Anonymous" and anon.PatientIdentityRemoved == "YES"
    assert anon.PatientID.startswith("DEID-") and src.PatientID not in anon.PatientID  # a pseudonym, not ''
    assert anon.StudyInstanceUID != src.StudyInstanceUID and anon.FrameOfReferenceUID != src.FrameOfReferenceUID
    for keyword in ("PatientBirthDate", "StudyDate", "AccessionNumber", "ReferringPhysicianName"):
        assert anon.get(keyword, "") == "", keyword
    assert "StudyDescription" not in anon and "SeriesDate" not in anon
    originals = {str(pydicom.dcmread(f).SOPInstanceUID) for f in CT5N.iterdir()} | {str(src.SeriesInstanceUID)}
    slices = [pydicom.dcmread(f) for f in sorted((tmp_path / "anon").glob("*.dcm"))]
    named = {str(d.ReferencedSeriesSequence[0].SeriesInstanceUID) for d in slices} | \
        {str(d.SourceImageSequence[0].ReferencedSOPInstanceUID) for d in slices} | \
        {str(i.ReferencedSOPInstanceUID) for d in slices for i in d.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert len(named) == len(originals) and not named & originals  # every source referenced, none traceably
    assert str(plain.ReferencedSeriesSequence[0].SeriesInstanceUID) == str(src.SeriesInstanceUID)
    again = tmp_path / "anon2"
    assert run(capsys, "convert", CT5N, again, "--deidentify")[0] == 0  # the same source: the same new study UID
    assert pydicom.dcmread(next(again.glob("*.dcm"))).StudyInstanceUID == anon.StudyInstanceUID


def test_nifti_output_of_a_named_patient_holds_no_identifier_and_takes_the_description(tmp_path, capsys, caplog):
    """--deidentify and --description did nothing for NIfTI output, without a word: a series flagged with burned-in
    text was written (its pixels hold it). NIfTI holds the voxels and geometry only (a new header; nothing else is
    written beside it); --deidentify refuses identifying pixels there too; --description is the header's descrip
    (80 bytes: a longer one is cut, with a warning); NRRD/MHA, which has no such field, refuses it."""
    import gzip

    def named(k, ds):
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "PID4711", "19700101"
        ds.InstitutionName, ds.AccessionNumber, ds.SeriesDescription = "St Zeta Hospital", "ACC9876", "Jane's chest"
    folder, files = edited_ct5n(tmp_path / "named", named)
    src = pydicom.dcmread(files[0])
    out = tmp_path / "out"
    assert run(capsys, "convert", folder, out / "ct.nii.gz", "--deidentify")[0] == 0
    assert [p.name for p in out.iterdir()] == ["ct.nii.gz"]
    raw = gzip.decompress((out / "ct.nii.gz").read_bytes())
    identifiers = ["Doe^Jane", "PID4711", "19700101", "St Zeta", "ACC9876", "Jane's chest", str(src.StudyDate),
                   str(src.StudyInstanceUID), str(src.SeriesInstanceUID), str(src.FrameOfReferenceUID)]
    assert [i for i in identifiers if i.encode() in raw] == []
    header = nib.load(out / "ct.nii.gz").header
    assert [header[k].item() for k in ("descrip", "aux_file", "intent_name", "db_name")] == [b""] * 4
    assert len(header.extensions) == 0

    burned, _ = edited_ct5n(tmp_path / "burned", lambda k, ds: setattr(ds, "BurnedInAnnotation", "YES"))
    code, _, err = run(capsys, "convert", burned, out / "burned.nii.gz", "--deidentify")
    assert code == 2 and "BurnedInAnnotation YES: identifying text" in err and not (out / "burned.nii.gz").exists()

    assert run(capsys, "convert", folder, out / "d.nii.gz", "--description", "follow-up 3")[0] == 0
    assert nib.load(out / "d.nii.gz").header["descrip"].item() == b"follow-up 3"
    assert run(capsys, "convert", folder, out / "long.nii.gz", "--description", "é" * 45)[0] == 0  # 90 bytes
    assert nib.load(out / "long.nii.gz").header["descrip"].item() == ("é" * 40).encode()  # not within a character
    assert "the description is 90 bytes, NIfTI's descrip holds 80: cut to" in caplog.text
    code, _, err = run(capsys, "convert", folder, out / "d.nrrd", "--description", "follow-up 3")
    assert code == 2 and "--description applies to DICOM and NIfTI output; " in err and not (out / "d.nrrd").exists()


def test_info_lists_a_folder_whose_largest_series_tie(tmp_path, capsys):
    """`info` ('what is in a DICOM folder') refused to show anything when two series have as many files."""
    from medrecon import Volume
    from medrecon.io import write_dicom_series
    for name in ("a", "b"):
        write_dicom_series(Volume(np.zeros((2, 8, 8), np.float32), meta={"dicom": {"Modality": "CT"}}),
                           tmp_path / name, series_description=name)
        for f in (tmp_path / name).iterdir():
            shutil.move(f, tmp_path / f"{name}_{f.name}")
    code, out, _ = run(capsys, "info", tmp_path)
    assert code == 0 and out.count("  series ") == 2 and "choose one with --series UID" in out
    code, out, _ = run(capsys, "info", tmp_path, "--json")
    assert code == 0 and len(json.loads(out)["series"]) == 2
    code, _, err = run(capsys, "convert", tmp_path, tmp_path / "x.nii.gz")
    assert code == 2 and "same size" in err


def test_info_reads_the_scan_beside_a_scout_series_of_as_many_images(tmp_path, capsys):
    """info called a 2-slice CT and a 2-image scout series a tie, while convert read the CT."""
    from medrecon import Volume
    from medrecon.io import write_dicom_series
    write_dicom_series(Volume(np.zeros((2, 8, 8), np.float32), meta={"dicom": {"Modality": "CT"}}), tmp_path / "ct")
    write_dicom_series(Volume(np.zeros((2, 8, 8), np.float32), meta={"dicom": {"Modality": "CT"}}), tmp_path / "sc")
    for f in (tmp_path / "sc").iterdir():
        ds = pydicom.dcmread(f)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.save_as(f)
    for name in ("ct", "sc"):
        for f in (tmp_path / name).iterdir():
            shutil.move(f, tmp_path / f"{name}_{f.name}")
    code, out, err = run(capsys, "info", tmp_path)
    assert code == 0 and "choose one with --series UID" not in out, out + err


def test_a_deidentified_run_refuses_burned_in_text_before_the_work(tmp_path, monkeypatch):
    """outputs.deidentify's refusals (a source saying BurnedInAnnotation YES on any slice, not only the first; a
    key that is no secret) came from the DICOM writer, after the whole solve, whose result was then lost."""
    from pipelines import tasks
    from pipelines.problem import Problem

    out = tmp_path / "s"
    out.mkdir()
    for k, f in enumerate(sorted(CT5N.iterdir())):
        ds = pydicom.dcmread(f)
        ds.BurnedInAnnotation = "YES" if k == 3 else "NO"
        ds.save_as(out / f.name)
    built = []
    monkeypatch.setattr(Problem, "build", classmethod(lambda cls, *a, **k: built.append(1)))
    with pytest.raises(InputError, match="BurnedInAnnotation YES"):
        tasks.reconstruct("sparse_view_ct_8", out, tmp_path / "o", overrides=["outputs.deidentify=true",
                                                                             "solver.name=fbp"])
    assert not built


def test_a_deidentified_reconstruction_holds_no_identifier_in_any_file(tmp_path, capsys):
    """outputs.deidentify de-identified dicom/ alone: report.json and the output's marker kept the source's
    SeriesInstanceUID and file-list hash, report.json its voxel hash, the input folder's name (a patient's here, also
    in its read warnings) and the day it ran, measurements.npz the folder's name; with outputs.dicom false the
    burned-in check was skipped, though simulation/ and the result hold the source's voxels. Now no byte of any file
    holds them; the source series goes by its de-identified UID (the one dicom/ references), the input by a keyed
    pseudonym of its path; --overwrite and the refusal without it work as before."""
    from dicom_trees import leaked, write_named_series

    src = tmp_path / "lab" / "Zyxwaldo_Quintessa_PID4711"
    said = write_named_series(src, topogram=True)  # a second series: the note on it listed UIDs and descriptions
    out = tmp_path / "out"
    args = ["reconstruct", "-c", "sparse_view_ct_8", "-i", src, "-o", out, "--quiet", "--set", "solver.name=fbp",
            "--set", "outputs.deidentify=true"]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    assert any("holds 2 series" in w for w in json.loads((out / "report.json").read_text())["input_warnings"])
    today = __import__("datetime").date.today()
    assert leaked(out, said + [today.isoformat(), today.strftime("%Y%m%d")]) == []
    report = json.loads((out / "report.json").read_text())
    marker = json.loads((out / ".medrecon-output").read_text())
    derived = pydicom.dcmread(next((out / "dicom").iterdir()))
    assert report["series_uid"] == marker["series_uid"] == derived.ReferencedSeriesSequence[0].SeriesInstanceUID
    assert marker["deidentified"] is True and report["input"].startswith("input-") and report["input_files"] == 3
    assert run(capsys, "evaluate", "-r", out / "simulation" / "reference.nii.gz", "-i", out / "recon.nii.gz")[0] == 0
    code, _, err = run(capsys, *args)
    assert code == 2 and "already exists" in err
    assert run(capsys, *args, "--overwrite")[0] == 0 and leaked(out, said) == []
    # a measurements file simulated without de-identification names the folder it was made from (its info's
    # source), which report.json's warnings said ('... (simulated from Zyxwaldo_Quintessa_PID4711): ...')
    sim = tmp_path / "sim"
    code, _, err = run(capsys, "simulate", "-c", "sparse_view_ct_8", "-i", src, "-o", sim)
    assert code == 0, err
    code, _, err = run(capsys, *args[:4], sim / "measurements.npz", "-o", tmp_path / "m", *args[7:],
                       "--set", "ct.n_views=9")  # against the file's 8 views: a warning naming the file
    assert code == 0, err
    assert leaked(tmp_path / "m", said) == []
    assert any(w.startswith("input-") for w in json.loads((tmp_path / "m" / "report.json").read_text())[
        "input_warnings"])
    for f in src.iterdir():  # identifying text in the pixels: refused whatever the output formats
        ds = pydicom.dcmread(f)
        ds.BurnedInAnnotation = "YES"
        ds.save_as(f)
    code, _, err = run(capsys, *args[:6], tmp_path / "o2", *args[7:], "--set", "outputs.dicom=false")
    assert code == 2 and "BurnedInAnnotation YES" in err and not (tmp_path / "o2").exists()


def test_an_rt_dose_file_is_refused_as_what_it_is_not_read_as_an_image(tmp_path, capsys):
    """A single RT Dose file was read as an image of raw stored integers (795000..1254000, DoseGridScaling 1e-6
    ignored), converted, and reconstructed by an MR config into a 'RTDOSE' Secondary Capture series; folders and
    batch pass it over as 'a RTDOSE object'. Every command now refuses it, naming the file and what it is."""
    dose = tmp_path / "rtdose_1frame.dcm"
    shutil.copy(TESTS.parent / "rtdose_1frame.dcm", dose)
    said = f"{dose} is a RTDOSE object, not an image volume"
    for args in (["info", dose], ["convert", dose, tmp_path / "dose.nii.gz"], ["convert", dose, tmp_path / "d"],
                 ["reconstruct", "--config", "cs_mri_x4", "--input", dose, "--output", tmp_path / "rec",
                  "--set", "solver.name=zero_filled"]):
        code, _, err = run(capsys, *args)
        assert code == 2 and said in err and len(err.strip().splitlines()) == 1, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == [dose.name]  # nothing written


def test_convert_prints_the_path_it_wrote_on_one_line_with_control_characters_escaped(tmp_path, capsys):
    """`convert`'s "wrote PATH" (like every line of normal output naming a user's path) printed the path raw: a
    newline in it split the line and a terminal escape reached the terminal. It is escaped as errors are."""
    (folder := tmp_path / "a\nb\x1b[31m").mkdir()
    code, out, _ = run(capsys, "convert", CT5N, folder / "ct.nii.gz")
    assert code == 0 and out.count("\n") == 1 and "\x1b" not in out, out
    assert out.startswith(f"wrote {tmp_path}/a\\nb\\x1b[31m/ct.nii.gz: shape (Z,Y,X) 5 x 16 x 16"), out


def test_an_unstyled_output_line_carries_no_terminal_escape_where_colour_is_on(tmp_path):
    """Every line printed through ``pipelines.app.say`` went through ``typer.secho``, which ends a line with a reset
    escape (ESC [0m) where colour is on (a terminal): `convert`'s "wrote PATH" carried one. A line without a style
    is now printed plain (``typer.echo``)."""
    from typer.testing import CliRunner

    from pipelines.cli import app
    res = CliRunner().invoke(app, ["convert", str(CT5N), str(tmp_path / "ct.nii.gz")], color=True)
    assert res.exit_code == 0 and res.output.startswith("wrote ") and "\x1b[" not in res.output, repr(res.output)
