"""Measured MRI: complex images through the solvers, readout-oversampled fastMRI files end to end, ISMRMRD and
BART .cfl input, ESPIRiT maps."""
import math

import numpy as np
import pytest
import torch

from medrecon.errors import InputError
from medrecon.io import read_cfl, read_volume, write_cfl
from medrecon.solvers import admm_tv, cgls
from operators.mri import (ESPIRIT_READOUT_CALIBRATION, CalibrationRegion, CartesianMRI, calibration_region,
                           espirit_maps, fftc, ifftc, make_mask, mri_operator, synthetic_coil_maps)
from operators.mri.espirit import _centred_width, _plane
from pipelines.raw_mri import parse_ismrmrd_header

HEADER = """<?xml version="1.0"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
 <encoding>
  <encodedSpace><matrixSize><x>{ex}</x><y>{ey}</y><z>1</z></matrixSize>
   <fieldOfView_mm><x>{fx2}</x><y>{fy}</y><z>5</z></fieldOfView_mm></encodedSpace>
  <reconSpace><matrixSize><x>{rx}</x><y>{ry}</y><z>1</z></matrixSize>
   <fieldOfView_mm><x>{fx}</x><y>{fx}</y><z>5</z></fieldOfView_mm></reconSpace>
  <encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>{eym}</maximum><center>{eyc}</center>
  </kspace_encoding_step_1></encodingLimits>
 </encoding>
</ismrmrdHeader>"""


def header(ex=64, ey=36, rx=32, ry=32, fov=220.0):
    return HEADER.format(ex=ex, ey=ey, rx=rx, ry=ry, fx=fov, fx2=2 * fov, fy=fov * ey / ry, eym=ey - 1,
                         eyc=ey // 2)


def smooth_phase_image(z, n, seed=0):
    """A piecewise-constant magnitude (discs) times a smooth phase ramp: a measured-like complex image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    out = []
    for k in range(z):
        mag = 0.8 * (xx ** 2 + yy ** 2 < 0.6) + 0.4 * ((xx - 0.2) ** 2 + (yy + 0.1) ** 2 < 0.08)
        phase = 1.2 * np.pi * (0.6 * xx + 0.4 * yy) + 0.5 * np.sin(2 * yy) + 0.1 * k + rng.uniform(-0.2, 0.2)
        out.append(mag * np.exp(1j * phase))
    return np.stack(out).astype(np.complex64)


# ---------------------------------------------------------------------------------------------- complex
def test_complex_images_reach_the_noise_level_real_images_do_not():
    """A real-valued image cannot fit the k-space of an image with a smooth phase: its data residual stays far
    above the noise. The complex path (CGLS, ADMM-TV with complex soft threshold) reaches it."""
    z, n, sigma = 3, 32, 0.002
    x = torch.from_numpy(smooth_phase_image(z, n))
    maps = torch.from_numpy(synthetic_coil_maps(4, (n, n)))
    mask = make_mask("uniform1d", (n, n), 2, 0.16, seed=1)
    Ac = CartesianMRI((n, n), mask, coil_maps=maps)
    g = torch.Generator().manual_seed(0)
    y = Ac.forward(x)
    y = y + sigma * torch.complex(torch.randn(y.shape, generator=g), torch.randn(y.shape, generator=g)) * \
        torch.as_tensor(mask)
    n_meas = z * maps.shape[0] * n * float(np.asarray(mask).sum())
    noise_rms = sigma * math.sqrt(2)

    def rms(A, xh):
        return float(torch.linalg.vector_norm(A.forward(xh) - y)) / math.sqrt(n_meas)

    Ar = CartesianMRI((n, n), mask, coil_maps=maps, real_input=True)
    real_ls = cgls(Ar, y, n_iter=100)
    assert not real_ls.is_complex() and rms(Ar, real_ls) > 10 * noise_rms
    cplx_ls = cgls(Ac, y, n_iter=100)
    assert cplx_ls.is_complex() and rms(Ac, cplx_ls) < 1.0 * noise_rms
    tv = admm_tv(Ac, y, lam=1e-4, rho=1e-2, n_iter=60, axes=(0, 1, 2))
    assert tv.is_complex() and rms(Ac, tv) < 1.2 * noise_rms
    err = float(torch.linalg.vector_norm(tv - x) / torch.linalg.vector_norm(x))
    assert err < float(torch.linalg.vector_norm(cplx_ls - x) / torch.linalg.vector_norm(x))
    real_tv = admm_tv(Ar, y, lam=1e-4, rho=1e-2, n_iter=60, axes=(0, 1, 2))
    assert rms(Ar, real_tv) > 10 * noise_rms


def test_complex_soft_threshold_shrinks_magnitude_keeps_phase():
    from medrecon.solvers import soft_threshold
    v = torch.tensor([3 + 4j, 0.3 + 0.4j, 0j], dtype=torch.complex64)
    out = soft_threshold(v, 1.0)
    assert torch.allclose(out, torch.tensor([2.4 + 3.2j, 0, 0], dtype=torch.complex64))


def test_diffusion_sampler_runs_on_complex_volumes_with_real_imag_batching():
    """FastSampler and DiffusionMBIR on a complex volume: the prior sees 2c real images per chunk of c slices,
    and with an exact Gaussian prior the result fits the data to the noise level."""
    from medrecon.priors.base import GaussianDenoiser, VESchedule
    from medrecon.solvers import DiffusionMBIR, FastSampler
    z, n = 4, 16
    x = torch.from_numpy(smooth_phase_image(z, n)) * 0.5
    mask = make_mask("uniform1d", (n, n), 2, 0.25, seed=0)
    A = CartesianMRI((n, n), mask)
    y = A.forward(x)
    seen = []

    class Spy(GaussianDenoiser):
        def _denoise(self, v, s):
            seen.append((tuple(v.shape), v.dtype))
            return super()._denoise(v, s)

    prior = Spy(torch.zeros(n, n), 0.5, VESchedule(0.01, 10.0))
    for cls, tol in ((FastSampler, 0.05), (DiffusionMBIR, 0.2)):  # MBIR returns its last (noisy) sample
        seen.clear()
        out = cls(prior, A, y, n_steps=20, lam=1e-3, rho=0.1, chunk_size=2, seed=0).run()
        assert out.is_complex() and out.shape == (z, n, n)
        assert seen[0] == ((4, 1, n, n), torch.float32)  # chunk of 2 complex slices -> 4 real images
        resid = float(torch.linalg.vector_norm(A.forward(out) - y) / torch.linalg.vector_norm(y))
        assert resid < tol, (cls.__name__, resid)


# ---------------------------------------------------------------------------------------------- files
def test_cfl_round_trip_is_exact(tmp_path):
    a = (np.random.default_rng(0).standard_normal((5, 4, 1, 3)) + 1j * np.random.default_rng(1).standard_normal(
        (5, 4, 1, 3))).astype(np.complex64)
    base = write_cfl(tmp_path / "k", a)
    assert (tmp_path / "k.hdr").read_text().splitlines()[0] == "# Dimensions"
    b = read_cfl(str(base) + ".cfl")
    assert b.shape == a.shape and b.dtype == np.complex64 and np.array_equal(a, b)
    (tmp_path / "k.cfl").write_bytes(b"\0" * 8)
    with pytest.raises(InputError, match="header says"):
        read_cfl(base)


def test_ismrmrd_header_parsing():
    h = parse_ismrmrd_header(header())
    assert h["encoded"]["matrix"] == [64, 36, 1] and h["recon"]["matrix"] == [32, 32, 1]
    assert h["recon"]["fov_mm"] == [220.0, 220.0, 5.0] and h["ky_center"] == 18
    with pytest.raises(InputError, match="XML"):
        parse_ismrmrd_header("<not xml")


def _oversampled_case(z=2, c=4, ex=64, ey=36, rx=32, ry=32, seed=0):
    """Image (z, rx, ry) with coil maps, k-space on the encoded matrix (readout x2, phase 36 > 32)."""
    x = smooth_phase_image(z, rx, seed)
    maps = synthetic_coil_maps(c, (rx, ry))
    mask = make_mask("equispaced1d", (ex, ey), 2, 0.25, seed=0)
    A = CartesianMRI((rx, ry), np.ones((ex, ey), bool), coil_maps=maps, kspace_shape=(ex, ey))
    k = A.forward(torch.from_numpy(x)).numpy()
    rss = np.sqrt((np.abs(ifftc(torch.from_numpy(k), 2).numpy()[..., ex // 2 - rx // 2: ex // 2 + rx // 2,
                                                              ey // 2 - ry // 2: ey // 2 + ry // 2]) ** 2).sum(1))
    return x, k * mask, mask.reshape(-1), rss.astype(np.float32), maps


def write_fastmri(path, k, mask, rss, xml, maps=None):
    import h5py
    with h5py.File(path, "w") as f:
        if maps is not None:
            f["sens_maps"] = maps
        f["kspace"] = k
        f["mask"] = mask.astype(np.float32)
        f["reconstruction_rss"] = rss
        f["ismrmrd_header"] = xml


def test_oversampled_operator_crops_to_the_recon_matrix():
    x, k, mask, rss, maps = _oversampled_case()
    A = mri_operator((2, 32, 32), mask, kspace=torch.from_numpy(k), coil_maps=torch.from_numpy(maps),
                     real_input=False, kspace_shape=(64, 36))
    assert A.in_shape == (32, 32) and A.out_shape == (4, 64, 36)
    assert torch.allclose(A.forward(torch.from_numpy(x)), torch.from_numpy(k), atol=1e-5)
    with pytest.raises(InputError, match="recon matrix"):
        CartesianMRI((32, 40), mask, kspace_shape=(64, 36))


def test_reconstruct_fastmri_multicoil_oversampled_writes_nifti_and_mr_dicom(tmp_path):
    import pydicom
    from medrecon.io import read_nifti
    from pipelines.tasks import reconstruct
    x, k, mask, rss, maps = _oversampled_case()
    src = tmp_path / "scan.h5"
    write_fastmri(src, k, mask, rss, header(), np.stack([maps, maps]))
    res = reconstruct("cs_mri_x4", src, tmp_path / "out", overrides=[
        "solver.name=cgls", "solver.steps=30", "outputs.phase=true"])
    out = tmp_path / "out"
    vol = read_nifti(out / "recon.nii.gz")
    assert vol.shape == (2, 32, 32)
    assert np.allclose(vol.spacing, (220 / 32, 220 / 32, 5.0))
    ref = read_nifti(out / "reference.nii.gz").data
    rel = np.linalg.norm(vol.data - ref) / np.linalg.norm(ref)
    assert rel < 0.01, rel  # magnitude of the x2 reconstruction against the file's own RSS
    assert (out / "phase.nii.gz").is_file()
    files = sorted((out / "dicom").glob("*.dcm"))
    assert len(files) == 2
    ds = pydicom.dcmread(files[0])
    assert ds.Modality == "MR" and ds.SOPClassUID == pydicom.uid.MRImageStorage
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx([220 / 32, 220 / 32])
    assert float(ds.SliceThickness) == pytest.approx(5.0)
    # whole numbers with slope 1 (normalised magnitude x 1000): viewers that ignore MR rescaling show them as they are
    assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == 0.0
    assert np.allclose(read_volume(out / "dicom").data, np.round(vol.data * 1000), atol=0.5)
    assert res.report["measured_data_scale"] > 0 and res.report["coil_maps"] == "given"
    write_fastmri(bare := tmp_path / "bare.h5", k, mask, rss, header())  # no maps: estimated, and said so
    res = reconstruct("cs_mri_x4", bare, tmp_path / "bare", overrides=["solver.name=zero_filled",
                                                                        "mri.coil_maps=given"])
    assert res.report["coil_maps"] == "estimated (none given)"


def test_estimated_coil_maps_are_kept_in_report_input_warnings(tmp_path):
    """Multi-coil k-space without coil maps (as fastMRI's files are) under mri.coil_maps=given: the maps are
    estimated, which was only logged; report.json's input_warnings now keep it, as the acquisition warnings are.
    Maps in the file, or mri.coil_maps=estimate asked for, are not warned."""
    from pipelines.tasks import reconstruct
    x, k, mask, rss, maps = _oversampled_case()
    write_fastmri(bare := tmp_path / "bare.h5", k, mask, rss, header())
    write_fastmri(given := tmp_path / "given.h5", k, mask, rss, header(), np.stack([maps, maps]))

    def said(src, *overrides):
        res = reconstruct("cs_mri_x4", src, tmp_path / f"{src.stem}{len(overrides)}",
                          overrides=["solver.name=zero_filled", *overrides])
        return res.report["coil_maps"], [w for w in res.report["input_warnings"] if "coil maps" in w]

    assert said(bare) == ("estimated (none given)", [
        "bare.h5: no coil maps stored with the multi-coil data; estimating them (mri.coil_maps=estimate; espirit for "
        "ESPIRiT)"])
    assert said(given) == ("given", [])
    assert said(bare, "mri.coil_maps=estimate") == ("estimate", [])


def _narrow_box_file(tmp_path, lines: int):
    """Measured-like k-space (fastMRI layout) whose fully sampled centre is ``lines`` wide, outer lines every 4th."""
    x, _, _, rss, maps = _oversampled_case()
    full = CartesianMRI((32, 32), np.ones((64, 36), bool), coil_maps=maps, kspace_shape=(64, 36)).forward(
        torch.from_numpy(x)).numpy()
    mask = np.zeros(36, np.float32)
    mask[::4] = 1  # outer lines, none next to the centre
    lo = 18 - lines // 2
    mask[lo - 1: lo + lines + 1] = 0
    mask[lo: lo + lines] = 1
    assert _centred_box(mask) == lines
    write_fastmri(src := tmp_path / f"c{lines}.h5", full * mask, mask, rss, header())
    return src


def test_espirit_maps_from_a_narrow_calibration_region_are_warned(tmp_path):
    """ESPIRiT maps from 10 calibration lines (by 64 readout samples) scored 0.8 and 14.3 dB under the estimated maps
    on two measured brains (the T2 slice and the VFA brain, x4); from 11 lines they matched or beat them (the square
    box of the sixty-second session needed 13). The lines (the mask's fully sampled centre) and the setting that does
    better are said."""
    from pipelines.config import load_config
    from pipelines.measurement import Measurement
    from pipelines.problem import espirit_warning

    def said(lines, maps_from="espirit"):
        cfg = load_config("cs_mri_x4", [f"mri.coil_maps={maps_from}"], check_files=False)
        return espirit_warning(cfg, Measurement.load(_narrow_box_file(tmp_path, lines)))

    assert said(10) == (
        f"{tmp_path / 'c10.h5'}: ESPIRiT coil maps from 10 calibration lines (the mask's fully sampled centre): under 11 "
        "lines they can leave part of the object without coil sensitivity (0.8 and 14.3 dB under the estimated "
        "maps on two measured brains at 10 lines); set mri.coil_maps=estimate, or sample at least 11 central "
        "lines (mri.mask.center_fraction)")
    assert said(11) is None and said(12) is None and said(10, "estimate") is None


def test_the_narrow_calibration_region_warning_reaches_report_input_warnings(tmp_path):
    from pipelines.tasks import reconstruct
    res = reconstruct("cs_mri_x4", _narrow_box_file(tmp_path, 10), tmp_path / "out",
                      overrides=["solver.name=zero_filled", "mri.coil_maps=espirit"])
    assert [w for w in res.report["input_warnings"] if "ESPIRiT" in w] == [
        "c10.h5: ESPIRiT coil maps from 10 calibration lines (the mask's fully sampled centre): under 11 lines "
        "they can leave part of the object without coil sensitivity (0.8 and 14.3 dB under the estimated maps on two "
        "measured brains at 10 lines); set mri.coil_maps=estimate, or sample at least 11 central lines "
        "(mri.mask.center_fraction)"]


def test_a_nan_sample_in_measured_kspace_is_refused_naming_it(tmp_path):
    """One NaN zeroed its slice's coil maps, hence the slice, and ADMM-TV's z coupling then the whole volume."""
    from pipelines.measurement import Measurement
    _, k, mask, rss, maps = _oversampled_case()
    k[1, 2, 10, 20] = np.nan
    write_fastmri(src := tmp_path / "nan.h5", k, mask, rss, header())
    with pytest.raises(InputError, match=r"1 measured values are NaN or infinite \(the first at index \(1, 2, 10, "
                                         r"20\)\); set them to 0 and leave them out of the mask"):
        Measurement.load(src)


def test_a_nan_in_kspace_without_a_mask_is_refused_before_the_mask_is_inferred(tmp_path):
    """Without a stored mask, the mask was inferred from the non-zero columns first (abs(k).sum() > 0 is False
    for NaN): a NaN sample dropped its whole column, unseen, and a NaN readout row in one coil (a NaN in every
    column) left a mask of nothing ('sampled x36', then 'the sampling mask samples nothing', no file named). Now
    the values are checked as read, the index in the file's own order (BART's for .cfl)."""
    import h5py
    from pipelines.measurement import Measurement
    _, k, _, rss, _ = _oversampled_case()
    for name, where in (("sample.h5", (1, 2, 10, 20)), ("row.h5", (0, 1, 7, slice(None)))):
        bad = k.copy()
        bad[where] = np.nan
        with h5py.File(src := tmp_path / name, "w") as f:
            f["kspace"] = bad
            f["reconstruction_rss"] = rss
        first = tuple(0 if isinstance(i, slice) else i for i in where)
        with pytest.raises(InputError, match=rf"{name}: \d+ measured values are NaN or infinite \(the first at index "
                                             rf"\({', '.join(map(str, first))}\)\); set them to 0"):
            Measurement.load(src)
    bart = np.moveaxis(k[0], 0, -1)[:, :, None, :].copy()  # (RO, PE1, 1, COIL)
    bart[5, 7, 0, 1] = np.nan
    write_cfl(tmp_path / "nan", bart)
    with pytest.raises(InputError, match=r"the first at index \(5, 7, 0, 1\) \(BART's dimension order\)"):
        Measurement.load(tmp_path / "nan.cfl")


def test_the_kspace_checks_share_one_pass_over_the_whole_array(tmp_path, monkeypatch):
    """The checks of a fastMRI file as read (NaN, uncentred, lines along rows, the inferred mask, a stale mask)
    share one |k| summed over coils (raw_mri._energy): np.abs runs once over the whole k-space and np.isfinite
    not at all. Each made its own pass before (abs twice and isfinite once without a mask: 0.37 s of a 0.8 s load
    of 16 slices x 16 coils x 640 x 368, 0.09 s after)."""
    from pipelines.measurement import Measurement
    _, k, mask, rss, _ = _oversampled_case()
    calls = {"abs": 0, "isfinite": 0}

    def counted(name, fn):
        def run(a, *args, **kw):
            calls[name] += np.size(a) == k.size
            return fn(a, *args, **kw)
        return run

    for name in calls:
        monkeypatch.setattr(np, name, counted(name, getattr(np, name)))
    for stored in (mask, None):
        write_fastmri(src := tmp_path / "k.h5", k, np.ones_like(mask) if stored is None else stored, rss, header())
        if stored is None:
            import h5py
            with h5py.File(src, "a") as f:
                del f["mask"]
        calls.update(abs=0, isfinite=0)
        meas = Measurement.load(src)
        assert calls == {"abs": 1, "isfinite": 0}, (stored is None, calls)
        assert np.array_equal(meas.mask.any(axis=0), np.asarray(mask, bool))


def test_a_nan_in_the_files_reference_is_refused_naming_the_file_and_its_dataset(tmp_path):
    """It was blamed on OUTPUT/reference.nii.gz, a file that is then never written."""
    from pipelines.measurement import Measurement
    _, k, mask, rss, _ = _oversampled_case()
    rss[0, 5, 5] = np.nan
    write_fastmri(tmp_path / "ref.h5", k, mask, rss, header())
    with pytest.raises(InputError, match=r"ref.h5: reconstruction_rss: 1 NaN and 0 Inf voxels out of 2048; replace"):
        Measurement.load(tmp_path / "ref.h5")


def test_a_stored_mask_sampling_columns_without_data_is_warned_in_report_input_warnings(tmp_path):
    """x4 k-space stored with mask = ones (a stale mask) was reported fully sampled and reconstructed at zero-filled
    quality (its empty columns fitted as measured zeros) without a word."""
    from pipelines.tasks import reconstruct
    x, k, mask, rss, maps = _oversampled_case()
    write_fastmri(tmp_path / "ones.h5", k, np.ones_like(mask), rss, header(), np.stack([maps, maps]))
    write_fastmri(tmp_path / "own.h5", k, mask, rss, header(), np.stack([maps, maps]))

    def warned(src):
        res = reconstruct("cs_mri_x4", src, tmp_path / src.stem, overrides=["solver.name=zero_filled"])
        return [w for w in res.report["input_warnings"] if "hold only zeros" in w]

    held = np.flatnonzero(np.asarray(mask).reshape(-1, mask.shape[-1]).any(axis=0))
    inside = int((np.asarray(mask).reshape(-1, mask.shape[-1]).any(axis=0)[held[0]:held[-1]] == 0).sum())
    assert warned(tmp_path / "ones.h5") == [  # the empty columns between measured ones (at the edges: padding)
        f"ones.h5: the mask samples {inside} columns that hold only zeros (a mask of other data?): "
        "they are fitted as measured zeros; store the mask of the lines acquired, or leave it out (the non-zero "
        "columns are then taken)"]
    assert warned(tmp_path / "own.h5") == []
    padded = k.copy()
    padded[..., :3] = padded[..., -3:] = 0  # zero-padded edges marked sampled (fastMRI's knee files) are no stale mask
    own = mask.copy()
    own[..., :3] = own[..., -3:] = 1
    write_fastmri(tmp_path / "padded.h5", padded, own, rss, header(), np.stack([maps, maps]))
    assert warned(tmp_path / "padded.h5") == []


def test_read_cfl_kspace_as_measurement(tmp_path):
    from pipelines.measurement import Measurement
    _, k, mask, _, _ = _oversampled_case(z=1)
    write_cfl(tmp_path / "ks", np.moveaxis(k[0], 0, -1)[:, :, None, :])  # (RO, PE1, 1, COIL)
    m = Measurement.load(tmp_path / "ks.cfl")
    assert m.data.shape == (1, 4, 64, 36) and np.array_equal(m.data[0], k[0])
    from pipelines.measurement import is_measurement_file
    import nibabel as nib  # a NIfTI-1 pair's .hdr is an image, not BART's header (it was read as k-space)
    nib.Nifti1Pair(np.zeros((4, 4, 2), np.float32), np.eye(4)).to_filename(str(tmp_path / "image.hdr"))
    assert is_measurement_file(tmp_path / "ks.hdr") and not is_measurement_file(tmp_path / "image.hdr")
    (tmp_path / "ks.cfl").rename(tmp_path / "KS.CFL")
    (tmp_path / "ks.hdr").rename(tmp_path / "KS.HDR")
    assert np.array_equal(Measurement.load(tmp_path / "KS.CFL").data, m.data)  # upper case: read as .npz before
    assert np.array_equal(m.mask[0] > 0, mask > 0)
    _, k, mask, _, _ = _oversampled_case(z=2)  # two slices, the second missing every other line of the first
    k[1, ..., np.flatnonzero(mask)[::2]] = 0
    a = np.zeros((64, 36, 1, 4) + (1,) * 9 + (2,), np.complex64)
    a[..., 0] = np.moveaxis(k[0], 0, -1)[:, :, None, :].reshape(64, 36, 1, 4, *(1,) * 9)
    a[..., 1] = np.moveaxis(k[1], 0, -1)[:, :, None, :].reshape(64, 36, 1, 4, *(1,) * 9)
    write_cfl(tmp_path / "two", a)
    m = Measurement.load(tmp_path / "two.cfl")
    assert m.mask.shape == (2, 64, 36) and m.mask[1, 0].sum() == (mask > 0).sum() // 2  # its own lines, not the union


def test_ismrmrd_raw_data(tmp_path):
    ismrmrd = pytest.importorskip("ismrmrd")
    from pipelines.measurement import Measurement
    _, k, mask, _, _ = _oversampled_case(z=2)
    path = tmp_path / "raw.h5"
    dset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    dset.write_xml_header(header())
    for s in range(2):
        for ky in np.flatnonzero(mask):
            acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(k[s, :, :, ky]))
            acq.idx.kspace_encode_step_1 = int(ky)
            acq.idx.slice = s
            dset.append_acquisition(acq)
    extra = [("phase correction", ismrmrd.ACQ_IS_PHASECORR_DATA, 99.0, {}),  # skipped
             ("second average", None, 2.0, {"average": 1})]                  # averaged with the first
    for _, flag, value, idx in extra:
        acq = ismrmrd.Acquisition.from_array(np.full(k.shape[1:3], value, np.complex64))
        acq.idx.kspace_encode_step_1 = int(np.flatnonzero(mask)[0])
        for key, v in idx.items():
            setattr(acq.idx, key, v)
        if flag is not None:
            acq.set_flag(flag)
        dset.append_acquisition(acq)
    dset.close()
    m = Measurement.load(path)
    first = int(np.flatnonzero(mask)[0])
    expected = k.copy()
    expected[0, :, :, first] = (k[0, :, :, first] + 2.0) / 2  # the repeated line averaged; phase correction out
    assert m.data.shape == k.shape and np.allclose(m.data, expected)
    assert m.grid.shape == (2, 32, 32) and m.info["kspace_shape"] == [64, 36]
    dset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
    echo = ismrmrd.Acquisition.from_array(np.ascontiguousarray(k[0, :, :, first]))
    echo.idx.kspace_encode_step_1, echo.idx.contrast = first, 1  # a second echo of the same line
    dset.append_acquisition(echo)
    dset.close()
    with pytest.raises(InputError, match=r"span idx.contrast \[0, 1\]: medrecon reads one 2D multi-slice image"):
        Measurement.load(path)


def test_slices_sampled_on_different_lines_get_a_mask_each(tmp_path):
    """fastMRI without 'mask' (and ISMRMRD): the union of the slices' lines made each slice's unacquired lines
    measured zeros; slices that share their lines keep one (H, W) mask."""
    from pipelines.measurement import Measurement
    _, k, mask, rss, _ = _oversampled_case(z=2)
    write_fastmri(same := tmp_path / "same.h5", k, mask, rss, header())
    with __import__("h5py").File(same, "r+") as f:
        del f["mask"]
    assert Measurement.load(same).mask.shape == (64, 36)
    k[1, ..., np.flatnonzero(mask)[::2]] = 0  # slice 1 lacks every other of slice 0's lines
    write_fastmri(other := tmp_path / "other.h5", k, mask, rss, header())
    with __import__("h5py").File(other, "r+") as f:
        del f["mask"]
    m = Measurement.load(other).mask
    assert m.shape == (2, 64, 36) and np.array_equal(m[0, 0] > 0, mask > 0)
    assert m[1, 0].sum() == (mask > 0).sum() // 2 and not (m[1] > m[0]).any()


def test_kspace_whose_lines_run_along_the_rows_is_refused_without_a_mask(tmp_path):
    """x2 k-space with its phase-encode lines along the rows (axis -2) and no mask: every column held data, so the
    mask of the non-zero columns called it fully sampled (x1, and the warning suggested mri.retrospective) and its
    missing rows were fitted as measured zeros (zero-filled quality). Empty rows at the edges (a partial echo, a
    zero-padded readout) are read."""
    import h5py
    from pipelines.measurement import Measurement
    _, k, _, _, _ = _oversampled_case(ex=36, ey=36, rx=36, ry=36)  # x2, every other column and a centre
    with h5py.File(tmp_path / "rows.h5", "w") as f:
        f["kspace"] = np.swapaxes(k, -1, -2)
    with pytest.raises(InputError, match=r"rows.h5: 16 of its 36 rows are empty between rows holding data, while every "
                                         r"column holds data: its phase-encode lines run along the rows \(axis -2\); "
                                         r"medrecon expects them along the last axis \(columns W\): transpose the last "
                                         r"two axes of kspace \(and of the reference\)"):
        Measurement.load(tmp_path / "rows.h5")
    full = fftc(torch.from_numpy(smooth_phase_image(2, 36)), 2).numpy()
    full[..., :6, :] = 0  # a partial echo: its first readout samples unmeasured, every line measured
    with h5py.File(tmp_path / "echo.h5", "w") as f:
        f["kspace"] = full
    assert Measurement.load(tmp_path / "echo.h5").mask.all()  # every line


def test_a_stored_mask_that_does_not_fit_the_kspace_is_refused_naming_the_file_and_the_fix(tmp_path):
    """A 2D mask of the wrong shape failed with numpy's 'operands could not be broadcast' traceback; a 1D one of the
    wrong length said 'mask has 128 entries but the k-space has 132 columns', naming neither the file nor the fix,
    also where the mask's length is the row count (the lines along the rows: a transpose)."""
    from pipelines.measurement import Measurement
    _, k, mask, rss, _ = _oversampled_case()  # k-space (2, 4, 64, 36)

    def load(m):
        write_fastmri(tmp_path / "m.h5", k, m, rss, header())
        return Measurement.load(tmp_path / "m.h5")

    with pytest.raises(InputError, match=r"m.h5: mask of shape \(32, 36\) does not fit kspace \(2, 4, 64, 36\): store "
                                         r"it as \(36,\), one entry per phase-encode column, or as \(H, W\) = "
                                         r"\(64, 36\)"):
        load(np.ones((32, 36)))
    with pytest.raises(InputError, match=r"m.h5: mask has 30 entries but kspace \(2, 4, 64, 36\) has 36 columns: store "
                                         r"it as \(36,\)"):
        load(np.ones(30))
    with pytest.raises(InputError, match=r"m.h5: mask has 64 entries .* its phase-encode lines run along the rows "
                                         r"\(axis -2\)\? .*transpose the last two axes of kspace \(and of the "
                                         r"reference\)"):
        load(np.ones(64))
    assert load(mask[None]).mask.shape == (64, 36)  # (1, W), and per slice (Z, 1, W), broadcast
    assert load(np.stack([mask, mask])[:, None]).mask.shape == (2, 64, 36)


def test_missing_empty_and_misfitting_masks_and_maps_are_refused_naming_the_file(tmp_path):
    """An all-zero mask was first warned 'sampled x36' (mask_acceleration divided by max(sum, 1)), then refused as
    'the sampling mask samples nothing' without the file; an MRI .npz without 'mask' said the same (the mask is
    missing, not empty); a mask or coil maps that do not fit the npz's k-space named no file."""
    from operators.mri import mask_acceleration
    from pipelines.config import load_config
    from pipelines.measurement import Measurement
    from pipelines.problem import Problem
    from medrecon.volume import Volume
    _, k, mask, rss, maps = _oversampled_case(ex=32, ey=32)
    assert mask_acceleration(np.zeros(32)) == math.inf
    write_fastmri(tmp_path / "zeros.h5", k, np.zeros_like(mask), rss, header(ex=32, ey=32))
    with pytest.raises(InputError, match=r"zeros.h5: its mask samples nothing \(all zero\): store 1 where k-space was "
                                         r"measured \(a fastMRI file may leave 'mask' out"):
        Measurement.load(tmp_path / "zeros.h5")
    with __import__("h5py").File(tmp_path / "nothing.h5", "w") as f:
        f["kspace"] = np.zeros_like(k)
    with pytest.raises(InputError, match=r"nothing.h5: kspace holds only zeros"):
        Measurement.load(tmp_path / "nothing.h5")
    write_fastmri(tmp_path / "nothing_masked.h5", np.zeros_like(k), mask, rss, header(ex=32, ey=32))
    with pytest.raises(InputError, match=r"nothing_masked.h5: kspace holds only zeros"):  # review: its mask stored,
        Measurement.load(tmp_path / "nothing_masked.h5")  # it loaded, then 'diverged ... lower its step sizes'
    grid = Volume(np.zeros((2, 32, 32), np.float32))

    def npz(name, **kw):
        Measurement("mri", k, grid, **kw).save(tmp_path / name)
        return tmp_path / name

    with pytest.raises(InputError, match=r"bare.npz: no sampling mask: MRI measurements need a 'mask' array"):
        Measurement.load(npz("bare.npz"))
    with pytest.raises(InputError, match=r"empty.npz: its mask samples nothing"):
        Measurement.load(npz("empty.npz", mask=np.zeros((1, 32), np.float32)))
    cfg = load_config("cs_mri_x4", ["solver.name=zero_filled"])
    with pytest.raises(InputError, match=r"short.npz: mask of shape \(1, 30\) does not broadcast to k-space "
                                         r"\(32, 32\): give it the k-space's shape"):
        Problem.build(cfg, npz("short.npz", mask=np.ones((1, 30), np.float32)))
    with pytest.raises(InputError, match=r"maps.npz: coil maps of shape \(3, 32, 32\) do not fit k-space"):
        Problem.build(cfg, npz("maps.npz", mask=mask[None], coil_maps=maps[:3]))


def test_kspace_of_only_zeros_is_refused_and_scanned_for_once(tmp_path, monkeypatch):
    """Measurement.check scanned a raw file's k-space for a non-zero sample (np.any) after its reader's summed pass
    (raw_mri._energy) had found it out; the reader now says (Measurement.holds_data), and an npz's k-space, read
    with no such pass, is scanned once. The refusals are as they were, of sampled lines of zeros too."""
    from pipelines.measurement import Measurement
    from medrecon.volume import Volume
    _, k, mask, rss, _ = _oversampled_case(ex=32, ey=32)
    scans = []

    def counted(a, *args, **kw):
        scans.extend([np.shape(a)] if np.iscomplexobj(a) and np.size(a) >= k[:, 0].size else [])
        return np_any(a, *args, **kw)
    np_any = np.any
    monkeypatch.setattr(np, "any", counted)
    write_fastmri(tmp_path / "k.h5", k, mask, rss, header(ex=32, ey=32))
    Measurement.load(tmp_path / "k.h5")
    write_cfl(tmp_path / "k", np.moveaxis(k[0], 0, -1)[:, :, None, :])
    Measurement.load(tmp_path / "k.cfl")
    assert scans == []
    outside = np.where(mask > 0, 0, np.roll(k, 1, axis=-1))  # data only in columns the mask leaves out
    assert np.abs(outside).max() > 0
    write_fastmri(tmp_path / "outside.h5", outside, mask, rss, header(ex=32, ey=32))
    with pytest.raises(InputError, match=r"outside.h5: kspace holds only zeros"):
        Measurement.load(tmp_path / "outside.h5")
    Measurement("mri", np.zeros_like(k), Volume(np.zeros((2, 32, 32), np.float32)), mask=mask[None]).save(
        tmp_path / "zeros.npz")
    with pytest.raises(InputError, match=r"zeros.npz: kspace holds only zeros"):
        Measurement.load(tmp_path / "zeros.npz")
    assert scans == [k.shape]


def test_kspace_stored_as_real_and_imaginary_parts_is_refused(tmp_path):
    """(Z, H, W, 2) float single-coil k-space passed as multi-coil (Z, C=H, H=W, W=2) onto a (Z, W, 2) grid."""
    import h5py
    from pipelines.measurement import Measurement
    k = np.zeros((2, 16, 12, 2), np.float32)
    with h5py.File(path := tmp_path / "ri.h5", "w") as f:
        f["kspace"] = k
    with pytest.raises(InputError, match=r"kspace is real with a last axis of 2 .*store it as complex"):
        Measurement.load(path)


def test_kspace_as_a_real_imag_compound_is_read_and_real_valued_kspace_is_refused(tmp_path):
    """A compound dataset of fields real/imag (h5py makes complex only of r/i) failed with numpy's TypeError
    'Cannot cast array data'; real-valued k-space (its imaginary part lost) was reconstructed as complex data with a
    zero imaginary part, 17.76 dB against 45.63, without a word."""
    import h5py
    from pipelines.measurement import Measurement
    _, k, mask, rss, _ = _oversampled_case()
    write_fastmri(tmp_path / "complex.h5", k, mask, rss, header())
    pair = np.empty(k.shape, np.dtype([("real", "<f4"), ("imag", "<f4")]))
    pair["real"], pair["imag"] = k.real, k.imag
    write_fastmri(tmp_path / "compound.h5", pair, mask, rss, header())
    assert np.array_equal(Measurement.load(tmp_path / "compound.h5").data,
                          Measurement.load(tmp_path / "complex.h5").data)
    other = np.zeros(k.shape, np.dtype([("mag", "<f4"), ("phase", "<f4")]))
    write_fastmri(tmp_path / "magphase.h5", other, mask, rss, header())
    with pytest.raises(InputError, match=r"magphase.h5: kspace is a compound of fields \('mag', 'phase'\): store it as "
                                         "complex"):
        Measurement.load(tmp_path / "magphase.h5")
    write_fastmri(tmp_path / "real.h5", k.real, mask, rss, header())
    with pytest.raises(InputError, match=r"real.h5: kspace is real-valued \(float32\), but measured k-space is "
                                         "complex: its imaginary part was lost or magnitudes were stored"):
        Measurement.load(tmp_path / "real.h5")
    with h5py.File(tmp_path / "real.h5", "r+") as f:  # integers too
        del f["kspace"]
        f["kspace"] = np.abs(k).astype(np.int16)
    with pytest.raises(InputError, match=r"kspace is real-valued \(int16\)"):
        Measurement.load(tmp_path / "real.h5")


def test_uncentred_kspace_is_refused_and_a_centred_partial_echo_is_not(tmp_path):
    """k-space with DC at index 0 (numpy.fft's convention, not fastMRI's centred one) was reconstructed without a
    word: 22.41 dB fully sampled, -0.38 dB at x4 retrospectively (coil maps estimated from high frequencies). A
    partial echo and partial Fourier (peak at the centre, a block of the matrix empty), a linear phase (peak a few
    samples off) and partial Fourier stored without its empty 3/8 (peak 0.3 of the matrix off) are read."""
    from pipelines.measurement import Measurement
    x, k, mask, rss, _ = _oversampled_case()  # (2, 4, 64, 36), every other line

    def load(name, kspace):
        write_fastmri(tmp_path / name, kspace, mask, rss, header())
        return Measurement.load(tmp_path / name)

    echo = k.copy()
    echo[..., :24, :] = 0  # the first 3/8 of every readout unmeasured
    echo[..., 27:] = 0  # and 9 of 36 phase-encode columns (partial Fourier)
    load("echo.h5", echo)
    load("ramp.h5", np.roll(k, (4, 3), axis=(-2, -1)))  # a linear phase in the image: the peak a few samples off
    with __import__("h5py").File(tmp_path / "short.h5", "w") as f:
        f["kspace"] = k[..., 13:]  # 23 of 36 columns, DC at column 5
    Measurement.load(tmp_path / "short.h5")
    # (the test image's own phase ramp puts its peak at (34, 19), hence (2, 1) uncentred)
    with pytest.raises(InputError, match=r"uncentred.h5: k-space looks uncentred: its energy peaks at \(2, 1\), at the "
                                         r"edge of the 64 x 36 matrix, not near its centre \(32, 18\) .* apply "
                                         r"numpy.fft.fftshift\(kspace, axes=\(-2, -1\)\)"):
        load("uncentred.h5", np.fft.ifftshift(k, axes=(-2, -1)))
    with pytest.raises(InputError, match=r"axes=\(-1,\)\)"):  # one axis left uncentred
        load("columns.h5", np.fft.ifftshift(k, axes=-1))
    write_cfl(tmp_path / "uncentred", np.moveaxis(np.fft.ifftshift(k[0], axes=(-2, -1)), 0, -1)[:, :, None, :])
    with pytest.raises(InputError, match=r"axes=\(0, 1\)\)"):  # BART's RO and PE1
        Measurement.load(tmp_path / "uncentred.cfl")


def _write_ismrmrd(path, k, mask, xml, first=0, centre=0):
    """Each sampled line of k (Z, C, RO, PE) as one acquisition, from readout sample ``first`` on."""
    import ismrmrd
    dset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    dset.write_xml_header(xml)
    for s in range(k.shape[0]):
        for ky in np.flatnonzero(mask):
            acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(k[s, :, first:, ky]))
            acq.idx.kspace_encode_step_1, acq.idx.slice, acq.center_sample = int(ky), s, centre
            dset.append_acquisition(acq)
    dset.close()


def test_ismrmrd_partial_echo_is_placed_by_its_center_sample_and_other_trajectories_refused(tmp_path):
    pytest.importorskip("ismrmrd")
    from pipelines.measurement import Measurement
    _, k, mask, _, _ = _oversampled_case(z=1)  # readout 64 samples, echo at 32
    _write_ismrmrd(tmp_path / "pe.h5", k, mask, header(), first=12, centre=20)  # 52 samples, echo at sample 20
    m = Measurement.load(tmp_path / "pe.h5")
    assert m.data.shape == k.shape and np.allclose(m.data[..., 12:, :], k[..., 12:, :])
    assert not m.data[..., :12, :].any() and not m.mask[:12].any() and m.mask[12:].any()
    # 52 samples with the echo at sample 40 need a readout of 80 centred on it, longer than the encoded 64: the
    # readout grew and the pixels shrank by 64/80 under an unchanged spacing; refused as a header that is wrong
    _write_ismrmrd(tmp_path / "late.h5", k, mask, header(), first=12, centre=40)
    with pytest.raises(InputError, match=r"lines of 52 samples with the echo at sample 40 do not fit a readout of 64"):
        Measurement.load(tmp_path / "late.h5")
    _write_ismrmrd(tmp_path / "radial.h5", k, mask, header().replace("</encoding>",
                                                                      "<trajectory>radial</trajectory></encoding>"))
    with pytest.raises(InputError, match="trajectory is radial: medrecon reads Cartesian k-space"):
        Measurement.load(tmp_path / "radial.h5")


# ---------------------------------------------------------------------------------------------- ESPIRiT
def _centred_box(mask, default: int = 24, ndim: int = 2) -> int:
    """The widest centred square box the mask samples on every slice (at most ``default``)."""
    return _centred_width(_plane(mask, ndim), default)


def test_the_centred_box_and_calibration_region_of_a_1d_mask():
    """The test's centred-box helper (espirit._centred_width) and the public calibration_region on the same mask:
    the 8 central lines (0.125 of 64) along the phase-encode axis, the readout sampled throughout."""
    m = make_mask("uniform1d", (64, 64), 4, 0.125, seed=0)
    assert _centred_box(m, default=64) >= 8
    region = calibration_region(m, default=64)
    assert region.widths == (64, 8) and region.lines == (False, True)
    with pytest.raises(InputError, match="centre"):
        calibration_region(np.zeros(16, bool))


def test_espirit_maps_agree_with_the_known_maps():
    n, c = 48, 6
    x = np.abs(smooth_phase_image(1, n)[0]) + 0.05
    maps = synthetic_coil_maps(c, (n, n))
    k = fftc(torch.from_numpy(maps * x), 2)
    mask = make_mask("uniform1d", (n, n), 3, 0.34, seed=0)
    A = mri_operator((1, n, n), mask, kspace=k[None] * torch.as_tensor(mask), maps_from="espirit",
                     real_input=False)
    est = A.ops[0].coil_maps.numpy()
    # ESPIRiT maps are defined up to one phase per pixel: compare |<E, S>| (1 = the same subspace)
    agree = np.abs((est * maps.conj()).sum(0))[x > 0.3]  # inside the object (ESPIRiT zeroes the rest)
    assert np.percentile(agree, 1) > 0.97, np.percentile(agree, [1, 5, 50])


def _box_mask(n: int, box: int):
    """A (1, n) line mask: ``box`` central lines and every 4th line beside them."""
    mask = np.zeros((1, n), np.float32)
    mask[0, ::4] = 1
    mask[0, n // 2 - box // 2 - 1: n // 2 - box // 2 + box + 1] = 0
    mask[0, n // 2 - box // 2: n // 2 - box // 2 + box] = 1
    assert _centred_box(mask, default=n) == box
    return mask


def test_calibration_region_is_the_readout_by_the_central_lines():
    """Along an axis the mask samples throughout (the readout) the region takes ESPIRIT_READOUT_CALIBRATION samples;
    along the phase encoding the central lines (_centred_box); in 3D Poisson's (Z, 1, X) mask too."""
    ro = ESPIRIT_READOUT_CALIBRATION
    m = _box_mask(96, 11)
    assert calibration_region(m).widths == (ro, 11)
    assert calibration_region(np.repeat(m, 96, axis=0)).widths == (ro, 11)  # the mask as (H, W), full columns
    assert calibration_region(np.repeat(m, 96, axis=0).T).widths == (11, ro)  # lines along rows
    assert calibration_region(_box_mask(96, 30)).widths == (ro, 24)  # the lines at most 24, as before
    p3 = make_mask("poisson2d", (16, 8, 32), 3, 0.5, seed=0)  # (Z, 1, X): y is read out
    assert calibration_region(p3, ndim=3).widths == (8, ro, 8)
    assert calibration_region(np.ones((96, 96), bool)).widths == (ro, ro)  # fully sampled


def test_calibration_region_of_a_partial_echo_is_the_echo_by_the_lines():
    """A per-sample mask with a partial echo or a zero-filled readout (load_ismrmrd's, load_cfl's from energy > 0) is
    not the same all along the readout: the region is still the readout (the positions sampled on every calibration
    line, at most ESPIRIT_READOUT_CALIBRATION) by the lines, not the lines x lines square (which covered 90 % of the
    T2 brain at 11 lines, the rectangle all of it)."""
    ro = ESPIRIT_READOUT_CALIBRATION
    m = np.repeat(_box_mask(96, 11), 96, axis=0)
    echo = m * (np.arange(96)[:, None] >= 36)  # 5/8 of the readout: 60 samples, the centre 12 rows into them
    region = calibration_region(echo)
    assert region.widths == (60, 11) and region.lines == (False, True)
    long_echo = np.repeat(m, 2, axis=0) * (np.arange(192)[:, None] >= 72)  # 120 samples: 64 around the centre
    assert calibration_region(long_echo) == CalibrationRegion((ro, 11), (-24, -5), (False, True))
    short = m * (np.abs(np.arange(96) - 48)[:, None] <= 4)[:, :]  # rows 44..52 only: 9 readout samples
    assert calibration_region(short).widths == (9, 11)
    near = m * (np.arange(96)[:, None] >= 40)  # the echo starts 8 before the centre: rows 40..95, all 56 of them
    assert calibration_region(near) == CalibrationRegion((56, 11), (-8, -5), (False, True))


def test_a_mask_of_one_central_block_has_its_lines_along_the_block():
    """Review of the sixty-third session's mends: a (1, W) mask sampling only 10 central lines (no line skipped
    beyond them) was taken as a readout on both axes, and its warning told the same 10 lines twice."""
    cols = np.zeros((1, 96), bool)
    cols[0, 43:53] = True
    region = calibration_region(cols)
    assert region.lines == (False, True) and region.widths == (ESPIRIT_READOUT_CALIBRATION, 10)


def test_calibration_lines_are_the_sampled_run_not_a_centred_box():
    """11 sampled columns 192..202 of 396 (the centre 198 among them) are 11 calibration lines, though the widest box
    centred at n // 2 - w // 2 holds 10; a random line next to the run is one more; more than 24 are cut to 24
    around the centre."""
    cols = np.zeros(396, bool)
    cols[::8] = True
    cols[186:210] = False
    cols[192:203] = True
    assert _centred_box(cols) == 10
    assert calibration_region(cols) == CalibrationRegion((ESPIRIT_READOUT_CALIBRATION, 11), (-32, -6), (False, True))
    cols[191] = True
    assert calibration_region(cols).widths[1] == 12 and calibration_region(cols).starts[1] == -7
    cols[150:240] = True
    assert calibration_region(cols).widths[1] == 24 and calibration_region(cols).starts[1] == -12
    k = np.zeros((1, 2, 8, 396), np.complex64)
    cols[150:240] = False
    cols[191:203] = True
    assert k[(Ellipsis,) + calibration_region(cols).within(k.shape[-2:])].shape == (1, 2, 8, 12)


def test_a_short_readout_under_the_calibration_lines_is_warned(tmp_path):
    """The warning judges the region ESPIRiT uses: a partial echo leaves 11 lines by the echo unwarned; a readout
    of 9 samples sampled on every calibration line is said, with its numbers."""
    from pipelines.config import load_config
    from pipelines.measurement import Measurement
    from pipelines.problem import espirit_warning
    src = _narrow_box_file(tmp_path, 11)
    cfg = load_config("cs_mri_x4", ["mri.coil_maps=espirit"], check_files=False)
    meas = Measurement.load(src)
    h = np.shape(meas.data)[-2]
    meas.mask = np.broadcast_to(np.asarray(meas.mask), np.shape(meas.data)[-2:]) * \
        (np.arange(h)[:, None] >= 3 * h // 8)
    assert espirit_warning(cfg, meas) is None
    meas.mask = meas.mask * (np.abs(np.arange(h) - h // 2)[:, None] <= 4)
    said = espirit_warning(cfg, meas)
    assert "ESPIRiT coil maps from 9 readout samples sampled on every calibration line (under 12, twice the " \
           "kernel)" in said and said.endswith("and a longer readout around the k-space centre"), said


def _espirit_case(box: int, n: int = 96, c: int = 8):
    """The phantom's (1, C, n, n) k-space with ``box`` central lines (``_box_mask``), its mask, true maps, object."""
    x = smooth_phase_image(1, n)[0]
    true = synthetic_coil_maps(c, (n, n))
    mask = _box_mask(n, box)
    k = (fftc(torch.from_numpy(true * x), 2) * torch.as_tensor(mask))[None]
    return k, mask, true, x


def _coil_maps(A):
    return (A.ops[0].coil_maps if hasattr(A, "ops") else A.coil_maps).numpy().reshape(-1, *A.in_shape[-2:])


def test_rectangular_calibration_covers_the_object_where_the_square_box_does_not():
    """An 11-line centre: the square 11 x 11 box (sigpy's, until the sixty-third session) left 7 % of the object
    without coil sensitivity (its SENSE image 46 % off there); the 64 x 11 region, which mri.coil_maps=espirit
    now calibrates on, covers all of it with the true maps (|<E, S>| >= 0.99) and its image is within 4 %."""
    from medrecon.solvers import cgls
    k, mask, true, x = _espirit_case(11)
    obj = np.abs(x) > 0.3
    rect = mri_operator((1, 96, 96), mask, kspace=k, maps_from="espirit", real_input=False)
    square_maps = espirit_maps(k, _centred_box(mask))
    square = mri_operator((1, 96, 96), mask, kspace=k, coil_maps=square_maps, real_input=False)

    def coverage(A):
        return (np.abs(_coil_maps(A)).sum(0) > 0)[obj].mean()

    def error(A):
        xr = cgls(A, k * torch.as_tensor(mask), n_iter=30).numpy().reshape(96, 96)
        return np.linalg.norm((np.abs(xr) - np.abs(x))[obj]) / np.linalg.norm(np.abs(x)[obj])

    assert coverage(square) < 0.95 and coverage(rect) == 1.0, (coverage(square), coverage(rect))
    agree = np.abs((_coil_maps(rect) * true.conj()).sum(0))[obj]  # 1 = the same map up to a phase per pixel
    assert np.percentile(agree, 1) > 0.99, np.percentile(agree, [1, 50])
    assert error(rect) < 0.04 and error(square) > 0.3, (error(rect), error(square))


def test_rectangular_and_square_calibration_agree_on_a_wide_box():
    """24 central lines: the 64 x 24 region's maps and the 24 x 24 box's are the same up to a phase per pixel
    (|<E_rect, E_square>| >= 0.999 in the object)."""
    k, mask, _, x = _espirit_case(24)
    rect, square = (espirit_maps(k, w)[0].numpy() for w in (calibration_region(mask), 24))
    agree = np.abs((rect * square.conj()).sum(0))[np.abs(x) > 0.3]
    assert agree.min() > 0.999, np.percentile(agree, [0, 1])


def test_espirit_maps_are_sigpys_stored_ones():
    """sigpy's EspiritCalib maps, stored (tests/fixtures/espirit_sigpy.npz: sigpy 0.1.27, 8 coils, 48 x 48, its 24 x
    24 calibration block, the rest of k-space zero), are ours without sigpy: the same support, |<E, S>| >= 0.9999 and
    the same values to 1e-4 (ours follow its kernels, scaling and crop, with exact eigenvectors where it iterates).
    Generated once with (numpy, sigpy; ``k`` centred, orthonormal)::

        rng = np.random.default_rng(63); n, c, box = 48, 8, 24
        y, x = np.mgrid[-1:1:n * 1j, -1:1:n * 1j]
        obj = (x ** 2 / 0.7 + y ** 2 / 0.5 < 1) * (1 + 0.3 * np.cos(3 * x)) * np.exp(1j * (x + 0.5 * y))
        ang = 2 * np.pi * np.arange(c) / c
        coils = np.exp(-((x[None] - 1.2 * np.cos(ang)[:, None, None]) ** 2
                         + (y[None] - 1.2 * np.sin(ang)[:, None, None]) ** 2) / 1.5) * np.exp(1j * ang[:, None, None])
        img = coils * obj + 0.01 * (rng.standard_normal((c, n, n)) + 1j * rng.standard_normal((c, n, n)))
        k = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(img, axes=(1, 2)), axes=(1, 2), norm="ortho"), axes=(1, 2))
        calib = k[:, 12:36, 12:36].astype(np.complex64)
        full = np.zeros((c, n, n), np.complex64); full[:, 12:36, 12:36] = calib
        maps = EspiritCalib(full, calib_width=box, show_pbar=False).run().astype(np.complex64)
        np.savez_compressed("tests/fixtures/espirit_sigpy.npz", calib=calib, maps=maps)
    """
    from pathlib import Path
    stored = np.load(Path(__file__).parent / "fixtures" / "espirit_sigpy.npz")
    calib, theirs = stored["calib"], stored["maps"]
    k = np.zeros((1, *theirs.shape), np.complex64)
    k[0, :, 12:36, 12:36] = calib
    ours = espirit_maps(k, 24)[0].numpy()
    support = np.abs(theirs).sum(0) > 0
    assert 0.5 < support.mean() < 1 and np.array_equal(np.abs(ours).sum(0) > 0, support)
    assert np.abs((ours * theirs.conj()).sum(0))[support].min() >= 0.9999
    assert np.abs(ours - theirs).max() < 1e-4  # the same maps, phase included (both relative to coil 0)


def test_the_centred_box_and_calibration_region_of_a_3d_poisson_mask_are_its_centre_box():
    """The test's centred-box helper (espirit._centred_width) and the public calibration_region on the same mask:
    8 wide along kz and kx, the axis of size 1 (read out) at ESPIRIT_READOUT_CALIBRATION."""
    m = make_mask("poisson2d", (16, 8, 32), 3, 0.5, seed=0)  # (Z, 1, X); centre box 8 x 16, the rest sparse
    assert m.shape == (16, 1, 32) and _centred_box(m, default=24, ndim=3) == 8
    region = calibration_region(m, ndim=3)
    assert region.widths == (8, ESPIRIT_READOUT_CALIBRATION, 8) and region.lines == (True, False, True)
    with pytest.raises(InputError, match="centre"):  # read as 2D, no column is sampled on every slice
        calibration_region(m, ndim=2)


def test_espirit_maps_of_3d_poisson_k_space_agree_with_the_known_maps():
    z, n, c = 40, 40, 4  # a 20-wide calibration box: enough rows for a 3D kernel of 6^3 x 4 coils
    x = np.abs(smooth_phase_image(z, n)) + 0.05  # (Z, Y, X)
    maps = synthetic_coil_maps(c, (n, n))  # the same on every slice
    mask = make_mask("poisson2d", (z, n, n), 3, 0.5, seed=0)
    k = fftc(torch.from_numpy(maps[:, None] * x[None]), 3) * torch.as_tensor(mask)
    A = mri_operator((z, n, n), mask, kspace=k, maps_from="espirit", three_d=True, real_input=False)
    est = A.coil_maps.numpy()  # (C, Z, Y, X)
    agree = np.abs((est * maps[:, None].conj()).sum(0))[x > 0.3]
    assert np.percentile(agree, 1) > 0.97, np.percentile(agree, [1, 5, 50])  # 1 = the same subspace
    small = make_mask("poisson2d", (16, 16, 16), 3, 0.5, seed=0)  # an 8-wide box: no maps (recon all zero)
    ks = fftc(torch.from_numpy(maps[:, None, 12:28, 12:28] * x[None, :16, 12:28, 12:28]), 3) * torch.as_tensor(small)
    with pytest.raises(InputError, match="ESPIRiT found no coil sensitivity in slice 0 .*mri.coil_maps=estimate"):
        mri_operator((16, 16, 16), small, kspace=ks, maps_from="espirit", three_d=True, real_input=False)


def _measured_with_support(z=2, n=32):
    """Measured-like multi-coil k-space whose coil maps vanish outside a disc (as ESPIRiT's outside the head)."""
    from medrecon.volume import Volume
    from pipelines.measurement import Measurement
    from pipelines.raw_mri import MEASURED
    x = smooth_phase_image(z, n)
    yy, xx = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    support = (xx ** 2 + yy ** 2 < 0.8).astype(np.float32)
    maps = (synthetic_coil_maps(4, (n, n)) * support).astype(np.complex64)
    mask = np.stack([make_mask("uniform1d", (n, n), 2, 0.16, seed=s) for s in range(z)]).astype(np.float32)
    k = (fftc(torch.from_numpy(x[:, None] * maps[None]), 2).numpy() * mask[:, None]).astype(np.complex64)
    meas = Measurement("mri", k, Volume(np.zeros((z, n, n), np.float32)), None, mask, maps[None].repeat(z, 0),
                       {"layout": "2d", "units": MEASURED}, reference=np.abs(x))
    return x, support, meas


def test_pixels_outside_the_coil_maps_stay_zero_in_prior_model_units():
    """With a prior's intensity map (physical 0..1 -> model -1..1) the iterative solvers start from physical 0:
    pixels no coil sees (ESPIRiT maps vanish outside the head) stay 0, not the physical value of model 0."""
    from medrecon.priors.base import IntensityMap
    from pipelines.config import load_config
    from pipelines.problem import Problem
    x, support, meas = _measured_with_support()
    cfg = load_config("cs_mri_x4", ["mri.coil_maps=given", "mri.image=complex", "solver.name=admm_tv",
                                    "solver.tv=3d", "solver.steps=20", "solver.nonneg=false",
                                    "solver.admm.lam=0.001", "solver.admm.rho=0.01"], check_files=False).resolved()
    p = Problem.from_measurement(cfg, meas, torch.device("cpu"), None, IntensityMap(0.0, 1.0, -1.0, 1.0))
    mag = p.to_volume(p.solve().x).data
    outside = support == 0
    assert mag[:, outside].max() < 0.01 * mag.max()  # exactly the start value: no data, no TV pull there
    inside = (support > 0) & (np.abs(x[0]) > 0)
    assert np.median(mag[0][inside]) > 0.3 * mag.max()


def test_real_images_of_measured_k_space_are_phase_aligned_first():
    """mri.image=real (the guided solvers' images) on measured k-space of an object with one phase: the data
    are rotated so that the signal lies in the real part, and the real image is as good as the complex one."""
    from medrecon.metrics import psnr
    from medrecon.priors.base import IntensityMap
    from pipelines.config import load_config
    from pipelines.problem import Problem
    x, support, meas = _measured_with_support()
    x = np.abs(x) * np.exp(1.1j)  # an object of one phase, as a magnitude image seen by a scanner
    meas.data = (fftc(torch.from_numpy(x[:, None] * meas.coil_maps), 2).numpy() * meas.mask[:, None]).astype(
        np.complex64)
    scores = {}
    for image in ("real", "complex"):
        cfg = load_config("cs_mri_x4", ["mri.coil_maps=given", f"mri.image={image}", "solver.name=admm_tv",
                                        "solver.tv=3d", "solver.steps=30", "solver.admm.lam=0.0003",
                                        "solver.admm.rho=0.01"], check_files=False).resolved()
        p = Problem.from_measurement(cfg, meas, torch.device("cpu"), None, IntensityMap(0.0, 1.0, -1.0, 1.0))
        mag = np.abs(p.to_volume(p.solve().x).data) * p.data_scale
        scores[image] = psnr(mag * support, np.abs(x) * support, data_range=float(np.abs(x).max()))
    assert scores["real"] > 40 and scores["complex"] > 40, scores  # the real image scored 11 dB unaligned


def test_samplers_leave_pixels_no_coil_sees_at_zero():
    """A diffusion sampler adds noise everywhere and only the prior removes it where no data constrain the image:
    every result is physical 0 outside the coil maps' support (coil_support), and inside it the data are fitted."""
    from medrecon.priors.base import GaussianDenoiser, IntensityMap, VESchedule
    from operators.mri import coil_support
    from pipelines.config import load_config
    from pipelines.problem import Problem
    x, support, meas = _measured_with_support()
    n = x.shape[-1]
    prior = GaussianDenoiser(torch.zeros(n, n), 0.5, VESchedule(0.01, 10.0))
    cfg = load_config("cs_mri_x4", ["mri.coil_maps=given", "mri.image=complex", "solver.steps=10",
                                    "solver.warm_start.start_sigma=0.3"], check_files=False).resolved()
    p = Problem.from_measurement(cfg, meas, torch.device("cpu"), prior, IntensityMap(0.0, 1.0, -1.0, 1.0))
    assert torch.equal(coil_support(p.operator), torch.from_numpy(support > 0)[None].expand(2, n, n))
    mag = p.to_volume(p.solve().x).data
    assert np.all(mag[:, support == 0] == 0)
    inside = (support > 0) & (np.abs(x[0]) > 0)
    assert np.median(mag[0][inside]) > 0.3 * mag.max()


def test_cross_validation_runs_on_the_complex_images_of_measured_kspace():
    """The fit without held-out lines is the same complex-image problem (a sampler's nonneg/clip would refuse a
    real-image reading of it), and its runs' records stay out of the problem's own info."""
    from medrecon.priors.base import GaussianDenoiser, IntensityMap, VESchedule
    from pipelines.config import load_config
    from pipelines.crossval import fit_problem, heldout_error, holdout_mask
    from pipelines.problem import Problem
    x, support, meas = _measured_with_support()
    prior = GaussianDenoiser(torch.zeros(x.shape[-1], x.shape[-1]), 0.5, VESchedule(0.01, 10.0))
    cfg = load_config("cs_mri_x4", ["mri.coil_maps=given", "solver.steps=4"], check_files=False).resolved()
    p = Problem.from_measurement(cfg, meas, torch.device("cpu"), prior, IntensityMap(0.0, 1.0, -1.0, 1.0))
    keep, _ = holdout_mask(p, 0.25)
    fit = fit_problem(p, keep)
    assert p.complex_images and fit.complex_images
    err = heldout_error(p, keep, fit.solve().x)
    assert 0 < err < 1 and "z_tv" in fit.info and "z_tv" not in p.info


def test_default_cross_validation_steps_aside_on_fully_sampled_kspace_but_a_requested_one_does_not():
    """Measured k-space cross-validates by default (MEASURED_KSPACE); with every line sampled there is nothing to
    hold out: the default is skipped (and recorded), while a config that asks for it gets the error naming the key."""
    from medrecon.priors.base import GaussianDenoiser, IntensityMap, VESchedule
    from pipelines.config import load_config
    from pipelines.problem import Problem
    x, support, meas = _measured_with_support()
    meas.data = (fftc(torch.from_numpy(x[:, None] * meas.coil_maps), 2)).numpy().astype(np.complex64)  # all lines
    meas.mask = np.ones_like(meas.mask)
    prior = GaussianDenoiser(torch.zeros(x.shape[-1], x.shape[-1]), 0.5, VESchedule(0.01, 10.0))

    def build(*overrides):
        cfg = load_config("cs_mri_x4", ["mri.coil_maps=given", "solver.steps=3", *overrides],
                          check_files=False).resolved()
        return Problem.from_measurement(cfg, meas, torch.device("cpu"), prior, IntensityMap(0.0, 1.0, -1.0, 1.0))

    p = build()
    assert p.config.solver.cross_validate.enabled  # the measured-k-space default
    mag = p.to_volume(p.solve().x).data
    assert "no sampled k-space lines" in p.info["cross_validation"]["skipped"]
    ref = p.reference.data  # the reference in the measured data's normalisation
    assert np.abs(mag - ref).mean() < 0.01 * ref.max(), np.abs(mag - ref).mean() / ref.max()  # the data fitted
    with pytest.raises(InputError, match="solver.cross_validate.enabled=false"):
        build("solver.cross_validate.enabled=true").solve()


def test_measured_kspace_takes_its_own_solver_defaults_unless_the_config_sets_them(tmp_path):
    """Complex images of measured k-space resolve the fast sampler's (and DiffusionMBIR's) null steps and warm-start
    sigma from registry.MEASURED_KSPACE; values the config gives are kept; a real image (the magnitude/phase split)
    keeps the modality's."""
    from pipelines.config import load_config
    from pipelines.problem import Problem
    from pipelines.registry import MEASURED_KSPACE, SOLVERS
    x, k, mask, rss, maps = _oversampled_case()
    src = tmp_path / "scan.h5"
    write_fastmri(src, k, mask, rss, header(fov=64.0), np.stack([maps, maps]))  # 2 mm pixels: in the prior's range
    measured = MEASURED_KSPACE["fast"]

    def built(*overrides):
        return Problem.build(load_config("cs_mri_x4", list(overrides)).resolved(), src).config.solver

    s = built()
    assert s.steps == measured["steps"] and s.warm_start.start_sigma == measured["warm_start"]["start_sigma"]
    assert s.cross_validate.model_dump(include={"enabled", "start_sigma", "lam"}) == measured["cross_validate"]
    s = built("solver.steps=7", "solver.warm_start.start_sigma=0.5", "solver.cross_validate.enabled=false")
    assert s.steps == 7 and s.warm_start.start_sigma == 0.5 and s.cross_validate.enabled is False
    mbir = built("solver.name=diffusion_mbir")  # DiffusionMBIR too: 20 steps, not the paper's 2000
    paper = SOLVERS["diffusion_mbir"].defaults("mri")["steps"]
    assert mbir.steps == MEASURED_KSPACE["diffusion_mbir"]["steps"] != paper
    real = load_config("cs_mri_x4", ["mri.image=real"]).resolved()
    s = Problem.build(real, src).config.solver
    magnitude = SOLVERS["fast"].defaults("mri", acceleration=real.mri.mask.acceleration)  # the config's (x4)
    assert magnitude["steps"] != measured["steps"]  # else the first assertion could not tell the two apart
    assert s.steps == magnitude["steps"] and s.warm_start.start_sigma == magnitude["warm_start"]["start_sigma"]
    assert s.cross_validate.enabled is False and s.cross_validate.start_sigma == [0.5, 1.0, 1.5]
    from pipelines.tasks import reconstruct
    res = reconstruct("cs_mri_x4", src, tmp_path / "out")  # report.json records the values used
    assert res.report["config"]["solver"]["steps"] == measured["steps"]
    # the cross-validation's candidates (the warm start: none; the diffusion: its steps and the final denoising),
    # then the chosen setting's run on all the data
    cv = res.report["cross_validation"]
    run = measured["steps"] + 1
    assert cv["network_evaluations_per_slice"] == run
    assert res.report["network_evaluations_per_slice"] == run + (0 if cv["chosen"]["start_sigma"] == 0 else run)


def test_fastmri_single_coil_files_are_scored_against_their_own_image(tmp_path):
    """fastMRI single-coil files hold reconstruction_rss of the multi-coil data they were emulated from and
    reconstruction_esc, the image of their own k-space: the reference must be the latter."""
    import h5py
    from pipelines.raw_mri import load_fastmri
    k = np.zeros((2, 16, 12), np.complex64)
    with h5py.File(tmp_path / "sc.h5", "w") as f:
        f["kspace"] = k
        f["reconstruction_rss"] = np.full((2, 16, 12), 7.0, np.float32)
        f["reconstruction_esc"] = np.full((2, 16, 12), 3.0, np.float32)
    assert float(load_fastmri(tmp_path / "sc.h5").reference.max()) == 3.0


def test_full_kspace_stored_with_a_mask_is_the_masked_kspace(tmp_path):
    """A fastMRI file of full k-space and a mask (retrospective undersampling) kept the lines outside the mask; the
    operator masks them, but cross-validation, which tells sampled lines by y != 0, took all of k-space as the
    centre and stepped aside ('no sampled k-space lines outside the fully sampled centre'), so the same data gave
    another result stored masked."""
    from pipelines.raw_mri import load_fastmri

    x, k, mask, rss, maps = _oversampled_case()
    full = CartesianMRI((32, 32), np.ones((64, 36), bool), coil_maps=maps,
                        kspace_shape=(64, 36)).forward(torch.from_numpy(x)).numpy()
    write_fastmri(tmp_path / "full.h5", full, mask, rss, header(), np.stack([maps, maps]))
    write_fastmri(tmp_path / "masked.h5", k, mask, rss, header(), np.stack([maps, maps]))
    a, b = load_fastmri(tmp_path / "full.h5"), load_fastmri(tmp_path / "masked.h5")
    np.testing.assert_allclose(a.data, b.data, atol=1e-5)
    assert np.count_nonzero(np.abs(a.data).sum(axis=(0, 1, 2))) == np.count_nonzero(mask)


def test_ismrmrd_slices_are_placed_by_their_positions(tmp_path):
    """The slice spacing was the header's FOV z, a slice's thickness: 5 mm slices 6 mm apart were written 5 mm apart
    (and z-TV weighted for 5 mm). Slices are now ordered and spaced by their acquisitions' positions along
    slice_dir; an interleaved numbering (idx.slice not in space order) is put in order."""
    ismrmrd = pytest.importorskip("ismrmrd")
    from pipelines.measurement import Measurement
    _, k, mask, _, _ = _oversampled_case(z=3)
    z_of_index = [0.0, 12.0, 6.0]  # slice 1 lies last in space
    path = tmp_path / "gaps.h5"
    dset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    dset.write_xml_header(header())  # FOV z 5 mm: the thickness
    for s in range(3):
        for ky in np.flatnonzero(mask):
            acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(k[s, :, :, ky]))
            acq.idx.kspace_encode_step_1, acq.idx.slice = int(ky), s
            acq.position[:] = (1.0, 2.0, z_of_index[s])
            acq.slice_dir[:] = (0.0, 0.0, 1.0)
            dset.append_acquisition(acq)
    dset.close()
    m = Measurement.load(path)
    assert m.grid.spacing[2] == pytest.approx(6.0) and m.info["slice_spacing_mm"] == pytest.approx(6.0)
    assert np.allclose(m.data, k[[0, 2, 1]])


def test_a_header_whose_recon_pixel_is_not_its_encoded_pixel_is_warned_about(tmp_path):
    """A scanner's interpolated recon matrix (ismrmrd#131: readout pixels of 7.19 mm encoded, 3.59 mm in the recon
    space) gave a 100 mm bar a length of 50 mm without a word: medrecon's crop and pixel size assume the two equal.
    The headers written here (readout oversampled twice) have equal pixels and no warning."""
    from pipelines.measurement import Measurement
    from pipelines.tasks import reconstruct

    x, k, mask, rss, maps = _oversampled_case()
    write_fastmri(tmp_path / "ok.h5", k, mask, rss, header(), np.stack([maps, maps]))
    assert not Measurement.load(tmp_path / "ok.h5").info.get("warnings")
    odd = header().replace("<x>440.0</x>", "<x>880.0</x>")  # the encoded readout FOV doubled: 13.75 mm pixels
    assert odd != header()
    write_fastmri(tmp_path / "odd.h5", k, mask, rss, odd, np.stack([maps, maps]))
    res = reconstruct("cs_mri_x4", tmp_path / "odd.h5", tmp_path / "out", overrides=["solver.name=zero_filled"])
    assert any("recon pixel differs from its encoded pixel (x 13.8 mm encoded against 6.88 mm)" in w
               for w in res.report["input_warnings"])


def test_measured_kspace_sampled_otherwise_than_the_config_is_warned_and_a_fully_sampled_file_says_how_to_mask_it(
        tmp_path):
    """Measured k-space never got the acquisition warning: a fully sampled fastMRI file (as fastMRI's train and val
    files are) ran under cs_mri_x8 fully sampled and scored near-perfect without a word. The acceleration counts
    phase-encode columns, so a partial echo's unmeasured readout samples do not raise it."""
    import h5py
    from operators.mri import mask_acceleration
    from pipelines.tasks import reconstruct
    x = smooth_phase_image(2, 32)
    full = fftc(torch.from_numpy(x), 2).numpy()

    def run(name, config, mask=None):
        with h5py.File(tmp_path / name, "w") as f:
            f["kspace"] = full if mask is None else full * mask
            f["reconstruction_esc"] = np.abs(x)
            if mask is not None:
                f["mask"] = mask
        res = reconstruct(config, tmp_path / name, tmp_path / name.replace(".h5", ""),
                          overrides=["solver.name=zero_filled"])
        return res.report["input_warnings"]

    said = run("full.h5", "cs_mri_x8")
    assert len(said) == 1 and said[0].startswith("full.h5: fully sampled (x1), but the config is tuned for x8")
    assert "to undersample it retrospectively with the config's mask, --set mri.retrospective=true" in said[0]
    # a file holding the config's own mask: no warning; a x2 mask under cs_mri_x4 is named
    assert run("x8.h5", "cs_mri_x8", make_mask("uniform1d", (1, 32), 8, 0.04).ravel()) == []
    said = run("x2.h5", "cs_mri_x4", make_mask("equispaced1d", (1, 32), 2, 0.25).ravel())
    assert len(said) == 1 and "x2.h5: sampled x2, but the config is tuned for x4" in said[0]
    echo = np.ones((32, 32), bool) & make_mask("uniform1d", (1, 32), 4, 0.08)
    echo[:8] = False  # a partial echo: the first readout samples of every line unmeasured
    assert mask_acceleration(echo) == pytest.approx(4.0)


def test_a_fully_sampled_file_is_undersampled_retrospectively_with_the_configs_mask(tmp_path):
    """mri.retrospective: a fully sampled fastMRI file (train and val files are) keeps only the lines of the config's
    mask, the file's own unmeasured samples staying unmeasured; the reference stays the full k-space's image, so
    the score is the x4 reconstruction's. Simulated measurements and 3D masks are refused naming the key."""
    import h5py
    from pipelines.config import load_config
    from pipelines.problem import Problem
    from pipelines.tasks import reconstruct, simulate
    x = smooth_phase_image(2, 32)
    full = fftc(torch.from_numpy(x), 2).numpy()
    echo = np.ones((32, 32), bool)
    echo[:4] = False  # the file's own mask: a partial echo, its first readout samples of every line unmeasured
    with h5py.File(tmp_path / "echo.h5", "w") as f:
        f["kspace"] = full * echo
        f["mask"] = echo.astype(np.float32)
        f["reconstruction_esc"] = np.abs(x)
    with h5py.File(tmp_path / "full.h5", "w") as f:
        f["kspace"] = full
        f["reconstruction_esc"] = np.abs(x)
    keep = make_mask("uniform1d", (32, 32), 4.0, 0.08, 0)
    cfg = load_config("cs_mri_x4", ["mri.retrospective=true", "solver.name=zero_filled"]).resolved()
    p = Problem.build(cfg, tmp_path / "echo.h5")
    assert np.array_equal(p.measurement.mask, (keep & echo).astype(np.float32))
    assert np.array_equal(np.asarray(p.measurement.data) != 0, np.broadcast_to(keep & echo & (full != 0), full.shape))
    assert p.measurement.info["retrospective_mask"].startswith("uniform1d x4, centre 0.08, seed 0")
    low = reconstruct("cs_mri_x4", tmp_path / "full.h5", tmp_path / "x4",
                      overrides=["mri.retrospective=true", "solver.name=zero_filled"])
    high = reconstruct("cs_mri_x4", tmp_path / "full.h5", tmp_path / "x1", overrides=["solver.name=zero_filled"])
    assert low.report["input_warnings"] == [] and len(high.report["input_warnings"]) == 1
    assert low.report["retrospective_mask"].startswith("uniform1d x4") and high.report["retrospective_mask"] is None
    x2 = reconstruct("cs_mri_x4", _write_x2(tmp_path, full, x), tmp_path / "on_x2",
                     overrides=["mri.retrospective=true", "solver.name=zero_filled"])
    said = x2.report["input_warnings"]  # a file of its own x2 mask: the two compound, and no config 'fits'
    assert len(said) == 1 and "already undersampled (x2) before mri.retrospective, whose mask makes it x" in said[0]
    assert "fit the data" not in said[0] and "fits the data" not in said[0]
    a, b = (r.report["vs_reference"]["psnr"]["axial"] for r in (low, high))
    assert b > a + 10  # the full k-space gives back its own image; a quarter of its lines does not
    simulate("cs_mri_x4", tmp_path / "x1" / "recon.nii.gz", tmp_path / "sim")
    for given in (tmp_path / "sim" / "measurements.npz", tmp_path / "x1" / "recon.nii.gz"):  # an image: refused
        with pytest.raises(InputError, match=f"{given.name}( .*)?: mri.retrospective undersamples measured k-space "
                                             ".* leave mri.retro"):
            reconstruct("cs_mri_x4", given, tmp_path / "r", overrides=["mri.retrospective=true",
                                                                        "solver.name=zero_filled"])
    with pytest.raises(InputError, match="retrospective undersampling masks the lines of measured k-space"):
        load_config("cs_mri_3d_poisson", ["mri.retrospective=true"])


def test_report_records_the_mask_measured_kspace_was_reconstructed_with(tmp_path):
    """report.json showed only the config's mri.mask (uniform1d x4 seed 0) for a file reconstructed with its own x2
    mask; measured_mask now says where the mask came from and both accelerations."""
    import h5py
    from operators.mri import mask_acceleration
    from pipelines.tasks import reconstruct
    x = smooth_phase_image(2, 32)
    full = fftc(torch.from_numpy(x), 2).numpy()
    with h5py.File(tmp_path / "full.h5", "w") as f:
        f["kspace"] = full
    own = reconstruct("cs_mri_x4", _write_x2(tmp_path, full, x), tmp_path / "own",
                      overrides=["solver.name=zero_filled"])
    assert own.report["measured_mask"] == {"source": "file", "acceleration": 2.0, "file_acceleration": 2.0}
    retro = reconstruct("cs_mri_x4", tmp_path / "full.h5", tmp_path / "retro",
                        overrides=["solver.name=zero_filled", "mri.retrospective=true"])
    keep = make_mask("uniform1d", (32, 32), 4.0, 0.08, 0)
    assert retro.report["measured_mask"] == {"source": "non-zero columns", "file_acceleration": 1.0,
                                             "acceleration": 4.0}


def _write_x2(tmp_path, full, x):
    """A fastMRI file holding its own x2 mask (every other column)."""
    import h5py
    m = np.zeros(full.shape[-1], np.float32)
    m[::2] = 1
    with h5py.File(tmp_path / "x2.h5", "w") as f:
        f["kspace"] = full * m
        f["mask"] = m
        f["reconstruction_esc"] = np.abs(x)
    return tmp_path / "x2.h5"


def test_espirit_maps_from_a_narrow_3d_poisson_centre_are_warned():
    """A 3D Poisson mask's (kz, kx) centre under 11 wide: on a 40^3 and a 64^3 phantom with 8 simulated coil maps,
    ESPIRiT found no coil sensitivity at all from 8, 9 and 10 wide and covered the whole object at 11 and 14; the
    warning (once only for 2D masks) says the centre, the setting and the centre fraction that does better."""
    from medrecon.volume import Volume
    from pipelines.config import load_config
    from pipelines.measurement import Measurement
    from pipelines.problem import espirit_warning

    def said(width, maps_from="espirit", n=32):
        cfg = load_config("cs_mri_3d_poisson", ["mri.coils=multi", f"mri.coil_maps={maps_from}"], check_files=False)
        mask = make_mask("poisson2d", (n, n, n), 4, (width + 0.4) / n, seed=0)
        assert calibration_region(mask, ndim=3).widths[::2] == (width, width)
        meas = Measurement("mri", np.zeros((8, n, n, n), np.complex64), Volume(np.zeros((n, n, n), np.float32)),
                           None, mask, None, {"layout": "3d", "source": "p.h5"})
        return espirit_warning(cfg, meas)

    assert said(8) == (
        "p.h5: ESPIRiT coil maps from a 8 x 8 calibration centre (kz x kx, the mask's fully sampled centre): under 11 "
        "wide they can cover little or none of the volume (no maps at all from 8 to 10 wide on 3D phantoms with 8 "
        "coils); set mri.coil_maps=estimate, or sample a centre at least 11 wide (mri.mask.center_fraction >= 0.344)")
    assert said(11) is None and said(14) is None and said(8, "estimate") is None
