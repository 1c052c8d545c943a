"""Measured-data files that are broken or of the wrong kind: refused at load in one line naming the file (and the
key) and the fix, never a traceback, a bare "Aborted!" or a silently wrong result (sixty-sixth session's audit)."""
import json

import numpy as np
import pytest

from medrecon import Volume
from medrecon.errors import InputError
from operators.ct import ParallelBeamGeometry
from pipelines.cli import main
from pipelines.measurement import Measurement


def _ct(tmp_path, name="m.npz", **arrays):
    """A valid 2-slice, 8-view CT measurements file, with ``arrays`` replacing (None: removing) its own."""
    geom = ParallelBeamGeometry(16, np.linspace(0, 180, 8, endpoint=False), n_det=24, pixel_size_mm=2.0,
                                det_spacing_mm=2.0)
    rng = np.random.default_rng(0)
    meas = Measurement("ct", rng.uniform(0, 2, (2, 8, 24)).astype(np.float32),
                       Volume(np.zeros((2, 16, 16), np.float32), spacing=(2.0, 2.0, 5.0)), geom.to_dict())
    path = tmp_path / name
    meas.save(path)
    if arrays:
        z = dict(np.load(path))
        for k, v in arrays.items():
            z.pop(k) if v is None else z.__setitem__(k, v)
        np.savez(path, **z)
    return path


def _mri(tmp_path, name="k.npz", **arrays):
    """A valid 2-slice, 4-coil MRI measurements file, with ``arrays`` replacing its own."""
    rng = np.random.default_rng(0)
    k = (rng.normal(size=(2, 4, 16, 16)) + 1j * rng.normal(size=(2, 4, 16, 16))).astype(np.complex64)
    maps = np.full((4, 16, 16), 0.5, np.complex64)
    mask = np.zeros((1, 16), bool)
    mask[0, ::2] = True
    meas = Measurement("mri", k, Volume(np.zeros((2, 16, 16), np.float32), spacing=(2.0, 2.0, 5.0)), None, mask,
                       maps, {"layout": "2d"})
    path = tmp_path / name
    meas.save(path)
    z = dict(np.load(path))
    z.update(arrays)
    np.savez(path, **z)
    return path


@pytest.mark.parametrize("cut", ["empty", "half", "tail"])
def test_an_empty_or_truncated_measurements_file_is_one_line_naming_it_not_a_traceback(tmp_path, cut, capsys):
    good = _ct(tmp_path).read_bytes()
    bad = tmp_path / "bad.npz"
    bad.write_bytes({"empty": b"", "half": good[:len(good) // 2], "tail": good[:-30]}[cut])
    with pytest.raises(InputError, match=r"bad.npz: cannot read measurements: the file is empty, truncated or "
                                         r"corrupt .*write it again with medrecon simulate"):
        Measurement.load(bad)
    # from the command line: one line (an empty file was click's bare "Aborted!", a truncated one a traceback)
    rc = main(["reconstruct", "-c", "sparse_view_ct_8", "-i", str(bad), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "bad.npz: cannot read measurements" in err, err
    assert not (tmp_path / "out").exists()


def test_a_corrupt_member_of_a_measurements_file_is_refused_naming_it(tmp_path):
    good = bytearray(_ct(tmp_path).read_bytes())
    i = len(good) // 3
    good[i:i + 20] = b"\0" * 20
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(good))
    with pytest.raises(InputError, match=r"bad.npz: cannot read measurements: the file is empty, truncated or "
                                         r"corrupt"):
        Measurement.load(bad)


@pytest.mark.parametrize("key", ["grid", "info", "modality"])
def test_a_measurements_file_without_a_key_is_told_which_and_what_the_file_holds(tmp_path, key):
    with pytest.raises(InputError, match=rf"m.npz: no '{key}' array: a measurements file holds 'format', "
                                         r"'modality', 'data', 'grid' \(JSON\)"):
        Measurement.load(_ct(tmp_path, **{key: None}))


@pytest.mark.parametrize("key, value, kind", [("grid", "null", "NoneType"), ("info", "[1]", "list"),
                                               ("grid", "3", "int")])
def test_a_grid_or_info_that_is_not_a_json_object_is_refused_naming_the_key(tmp_path, key, value, kind):
    with pytest.raises(InputError, match=rf"m.npz: cannot read measurements \(its '{key}' must hold a JSON object, "
                                         rf"not {kind}\)"):
        Measurement.load(_ct(tmp_path, **{key: np.array(value)}))


@pytest.mark.parametrize("dtype", [np.complex64, bool])
def test_a_ct_sinogram_that_is_not_real_numbers_is_refused(tmp_path, dtype):
    """A complex sinogram lost its imaginary part with only numpy's ComplexWarning; a bool one passed as 0/1."""
    data = np.load(_ct(tmp_path, "ok.npz"))["data"]
    with pytest.raises(InputError, match=rf"m.npz: the sinogram is {np.dtype(dtype).name}, but a CT sinogram holds "
                                         r"real line integrals"):
        Measurement.load(_ct(tmp_path, data=(data > 1 if dtype is bool else data.astype(dtype))))


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_real_k_space_in_a_measurements_file_is_refused_as_a_raw_files_is(tmp_path, dtype):
    k = np.load(_mri(tmp_path, "ok.npz"))["data"]
    with pytest.raises(InputError, match=rf"k.npz: kspace is real-valued \({np.dtype(dtype).name}\), but measured "
                                         r"k-space is complex"):
        Measurement.load(_mri(tmp_path, data=(k.real * 100).astype(dtype)))


def test_coil_maps_or_a_mask_holding_nan_and_coil_maps_of_zeros_are_refused_naming_the_key(tmp_path):
    """Each reconstructed an image of zeros without a word."""
    maps = np.full((4, 16, 16), 0.5, np.complex64)
    maps[:, 3] = np.nan
    with pytest.raises(InputError, match=r"k.npz: its 'coil_maps' holds NaN or infinite values"):
        Measurement.load(_mri(tmp_path, coil_maps=maps))
    with pytest.raises(InputError, match=r"k.npz: its 'coil_maps' hold only zeros: store the coils' maps, or leave "
                                         r"them out"):
        Measurement.load(_mri(tmp_path, coil_maps=np.zeros((4, 16, 16), np.complex64)))
    mask = np.zeros((1, 16), np.float32)
    mask[0, ::2] = np.nan
    with pytest.raises(InputError, match=r"k.npz: its 'mask' holds NaN or infinite values: store finite ones \(1 "
                                         r"where k-space was measured"):
        Measurement.load(_mri(tmp_path, mask=mask))


def test_measurements_of_no_values_are_refused_at_load_not_in_the_solver(tmp_path, capsys):
    """0 slices: a torch traceback in the solver (a .npz) or a reshape's in the raw reader (HDF5, .cfl)."""
    import h5py
    from medrecon.io import write_cfl
    geom = ParallelBeamGeometry(16, np.linspace(0, 180, 8, endpoint=False), n_det=24, pixel_size_mm=2.0,
                                det_spacing_mm=2.0)
    Measurement("ct", np.zeros((0, 8, 24), np.float32), Volume(np.zeros((0, 16, 16), np.float32)),
                geom.to_dict()).save(tmp_path / "none.npz")
    with h5py.File(tmp_path / "none.h5", "w") as f:
        f["kspace"] = np.zeros((0, 4, 16, 16), np.complex64)
    write_cfl(tmp_path / "none", np.zeros((16, 0, 1, 4), np.complex64))
    for name in ("none.npz", "none.h5", "none.cfl"):
        with pytest.raises(InputError, match=rf"{name}: the measurements hold no values \(shape \("):
            Measurement.load(tmp_path / name)
    rc = main(["reconstruct", "-c", "sparse_view_ct_8", "-i", str(tmp_path / "none.npz"), "-o", str(tmp_path / "o"),
               "--set", "solver.name=fbp"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "hold no values" in err, err
    assert not (tmp_path / "o").exists()


def test_a_bart_header_of_negative_sizes_and_an_hdf5_kspace_group_are_refused_in_one_line(tmp_path):
    """Both were tracebacks (numpy's reshape; h5py's Group has no dtype)."""
    import h5py
    from medrecon.io import write_cfl
    write_cfl(tmp_path / "k", np.ones((16, 16, 1, 4), np.complex64))
    (tmp_path / "k.hdr").write_text("# Dimensions\n-16 -16 1 4 1\n")
    with pytest.raises(InputError, match=r"k.hdr: the '# Dimensions' line must hold sizes >= 0, got \[-16, -16, 1, 4"):
        Measurement.load(tmp_path / "k.cfl")
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f.create_group("kspace")
    with pytest.raises(InputError, match=r"g.h5: 'kspace' is a group, not a dataset"):
        Measurement.load(tmp_path / "g.h5")


def test_coil_maps_of_several_coils_stored_with_single_coil_k_space_are_refused(tmp_path):
    """The operator dropped them for single-coil k-space, and the file was reconstructed without a word."""
    k = np.load(_mri(tmp_path, "ok.npz"))["data"][:, 0]
    with pytest.raises(InputError, match=r"k.npz: coil maps of 4 coils \(4, 16, 16\) are stored with single-coil "
                                         r"k-space \(2, 16, 16\): store the coils' k-space as \(slices, coils, H, W\)"):
        Measurement.load(_mri(tmp_path, data=k))
    Measurement.load(_mri(tmp_path, "one.npz", data=k, coil_maps=np.ones((1, 16, 16), np.complex64)))  # one coil


@pytest.mark.parametrize("ref, said", [
    (np.ones((2, 10, 10), np.float32), r"its 'reference' has shape \(2, 10, 10\), the recon grid is \(2, 16, 16\)"),
    (np.full((2, 16, 16), np.nan, np.float32), r"its 'reference': 512 NaN and 0 Inf voxels"),
    (np.ones((2, 16, 16), np.complex64), r"its 'reference': voxels of type complex64 are not supported")])
def test_a_reference_stored_in_a_measurements_file_is_checked_at_load_naming_it(tmp_path, ref, said):
    """Of another shape: a traceback after the reconstruction; NaN: blamed on the output's reference.nii.gz;
    complex: cut to its real part with numpy's warning."""
    with pytest.raises(InputError, match=rf"k.npz: {said}"):
        Measurement.load(_mri(tmp_path, reference=ref))


def test_a_measurements_file_of_another_format_is_refused_not_read_as_if_it_were_this_one(tmp_path):
    with pytest.raises(InputError, match=r"m.npz: its format is 'medrecon-measurements-2', not "
                                         r"'medrecon-measurements-1', the one this medrecon reads"):
        Measurement.load(_ct(tmp_path, format=np.array("medrecon-measurements-2")))
