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
