"""End to end through the CLI: simulate -> reconstruct -> evaluate for every task family, on tiny volumes.

Quality is asserted against the simulated reference (no inverse crime, with noise): the regularised solver
must beat the direct one (FBP / zero-filled) by a stated margin. Numbers measured when written are noted.
"""
import json
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medrecon.errors import InputError
from medrecon.io import read_volume, write_dicom_series, write_nifti
from medrecon.priors.base import MODEL_RANGE, GaussianDenoiser, IntensityMap
from medrecon.volume import Volume
from pipelines import tasks
from pipelines.measurement import Measurement
from pipelines import problem as problem_module
from pipelines.problem import Problem
from pipelines.simulation import CT_FLOOR_HU, resample_inplane, simulate_ct
from pipelines.cli import main
from pipelines.config import load_config
from pipelines.registry import FAST_END, FAST_ZTV, SOLVERS
from pipelines.phantoms import ct_phantom


def _mr_volume(shape=(6, 64, 64)) -> Volume:
    """Smooth nested ellipses in [0, 1] that drift slowly along z (an MR-like test object)."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    v = np.zeros(shape)
    for cy, cx, ry, rx, val in ((0, 0, 0.85, 0.7, 0.4), (0.2, -0.25, 0.3, 0.2, 0.9), (-0.3, 0.2, 0.2, 0.3, 0.7),
                                (0.1, 0.3, 0.12, 0.12, 1.0)):
        r = ((y - cy - 0.05 * z) / ry) ** 2 + ((x - cx) / rx) ** 2
        v = np.where(r < 1, val, v)
    return Volume(v.astype(np.float32), spacing=(1.0, 1.0, 2.0), origin=(-30.0, -20.0, 5.0))


@pytest.fixture(scope="module")
def ct_nifti(tmp_path_factory):
    p = tmp_path_factory.mktemp("ct") / "phantom.nii.gz"
    write_nifti(ct_phantom((5, 64, 64), seed=3), p)
    return p


@pytest.fixture(scope="module")
def mr_nifti(tmp_path_factory):
    p = tmp_path_factory.mktemp("mr") / "brain.nii.gz"
    write_nifti(_mr_volume(), p)
    return p


def _cli(*args):
    assert main([str(a) for a in args]) == 0, f"medrecon {' '.join(map(str, args))} failed"


def _psnr(tmp, ref, recon):
    out = tmp / f"metrics_{recon.parent.name}.json"
    _cli("evaluate", "--reference", ref, "--input", recon, "--output", out)
    return json.loads(out.read_text())


def _run_family(tmp, config, volume, sets, direct, regularised, solver_sets=(), steps=25):
    """Simulate once; reconstruct with the direct method and with the regularised one (``solver_sets``: its
    own solver settings, which the direct method does not take)."""
    sim = tmp / "sim"
    _cli("simulate", "--config", config, "--input", volume, "--output", sim, *sum((["--set", s] for s in sets), []))
    ref_path, meas = sim / "reference.nii.gz", sim / "measurements.npz"
    assert ref_path.is_file() and meas.is_file()
    results = {}
    for name, own in ((direct, []), (regularised, list(solver_sets))):
        out = tmp / name
        _cli("reconstruct", "--config", config, "--input", meas, "--output", out, "--quiet",
             *sum((["--set", s] for s in sets + [f"solver.name={name}", f"solver.steps={steps}"] + own), []))
        ref_img, rec_img = nib.load(ref_path), nib.load(out / "recon.nii.gz")
        assert np.allclose(ref_img.affine, rec_img.affine) and ref_img.shape == rec_img.shape
        rep = json.loads((out / "report.json").read_text())
        assert rep["config"]["solver"]["name"] == name and rep["seed"] == 0
        assert rep["timings_s"]["solve"] > 0 and rep["peak_memory"]["rss_mib"] > 10
        assert rep["software"]["medrecon"] and rep["network_evaluations_per_slice"] == 0
        assert Image.open(out / "preview.png").size[1] == 256 + 14  # thin slab: a 14-pixel line says "z xN"
        results[name] = _psnr(tmp, ref_path, out / "recon.nii.gz")
        assert rep["vs_reference"] is None  # measurements without a reference: nothing to score against
    return results


def test_sparse_view_ct(tmp_path, ct_nifti):
    m = _run_family(tmp_path, "sparse_view_ct_8", ct_nifti, ["ct.image_size=32"], "fbp", "admm_tv", ["solver.tv=3d"])
    # measured: FBP 16.9 dB, ADMM-TV 24.5 dB axial
    assert m["admm_tv"]["psnr"]["axial"] > m["fbp"]["psnr"]["axial"] + 4.0
    assert m["admm_tv"]["ssim"]["axial"] > m["fbp"]["ssim"]["axial"]
    assert m["admm_tv"]["data_range"] == pytest.approx(m["fbp"]["data_range"])


def test_limited_angle_ct(tmp_path, ct_nifti):
    m = _run_family(tmp_path, "limited_angle_ct_90", ct_nifti, ["ct.image_size=32"], "fbp",
                    "admm_tv", ["solver.tv=3d"])
    assert m["admm_tv"]["psnr"]["axial"] > m["fbp"]["psnr"]["axial"] + 3.0


def test_cs_mri_2d(tmp_path, mr_nifti):
    m = _run_family(tmp_path, "cs_mri_x4", mr_nifti, ["mri.image_size=32"], "zero_filled", "admm_tv",
                    ["solver.admm.lam=0.002", "solver.admm.rho=0.05", "solver.tv=3d"])
    assert m["admm_tv"]["psnr"]["axial"] > m["zero_filled"]["psnr"]["axial"] + 1.0


def test_cs_mri_3d_poisson_multicoil(tmp_path, mr_nifti):
    m = _run_family(tmp_path, "cs_mri_3d_poisson", mr_nifti,
                    ["mri.image_size=32", "mri.coils=multi", "mri.n_coils=4", "mri.mask.acceleration=4"],
                    "zero_filled", "admm_tv", ["solver.admm.lam=0.002", "solver.admm.rho=0.05", "solver.tv=3d"])
    assert m["admm_tv"]["psnr"]["axial"] > m["zero_filled"]["psnr"]["axial"] + 1.0


def test_ct_units_round_trip_without_noise(ct_nifti):
    """The data term in model units reproduces the simulated line integrals (only discretisation differs)."""
    from pipelines.config import load_config
    cfg = load_config("sparse_view_ct_8", ["noise.kind=none", "ct.image_size=32", "solver.name=fbp"]).resolved()
    p = Problem.build(cfg, read_volume(ct_nifti))
    ref, meas, imap, A, y = p.reference, p.measurement, p.intensity, p.operator, p.data
    x = torch.from_numpy(imap.to_model(ref.data))
    assert float((A.forward(x) - y).norm() / y.norm()) < 0.05  # measured 0.028 at 32² (finer-grid projection)
    # and the data are physical: the water-equivalent path length of the central ray is plausible
    assert 0.5 < float(meas.data.max()) < 20


def test_problem_build_takes_a_config_as_load_config_returns_it():
    """A config straight from pipelines.load_config (nulls not yet filled) crashed Problem.build ('NoneType' object
    has no attribute 'model_dump') or its solve (None * float); it is resolved there, as .resolved() would."""
    from pipelines.config import load_config
    vol = Volume(ct_phantom((3, 32, 32), seed=3).data, spacing=(2.0, 2.0, 3.0))
    for overrides in (["solver.name=admm_tv", "solver.steps=3"], ["solver.steps=2"]):  # the second: the sampler
        cfg = load_config("sparse_view_ct_8", overrides)
        p = Problem.build(cfg, vol)
        assert p.config.solver.n_cg is not None and p.config.fingerprint() == cfg.fingerprint()
        resolved = Problem.build(cfg.resolved(), vol, prior=p.prior)
        assert resolved.config == p.config and torch.equal(p.solve().x, resolved.solve().x)
    once = cfg.resolved()
    assert once.resolved() is once  # resolving a resolved config changes nothing


def test_problem_build_and_compare_methods_refuse_an_array_naming_what_to_give():
    """An array or a tensor failed inside pathlib ('expected str, bytes or os.PathLike object, not ndarray')."""
    from pipelines.compare import admm_tv_settings, compare_methods
    data = ct_phantom((2, 16, 16), seed=0).data
    want = r"give the input as a medrecon.Volume \(an array: Volume\(array, spacing=\(x, y, z\) mm\)\), a " \
           r"Measurement or a file path, not "
    for given in (data, torch.from_numpy(data)):
        with pytest.raises(TypeError, match=want + type(given).__name__):
            Problem.build(tasks.prepare_config("sparse_view_ct_8", ["solver.name=fbp"]), given)
        with pytest.raises(TypeError, match=want + type(given).__name__):
            compare_methods("sparse_view_ct_8", given, {"a": admm_tv_settings(1.0)})
    for given in ("sparse_view_ct_8", {"name": "sparse_view_ct_8"}):  # an AttributeError inside
        with pytest.raises(TypeError, match=r"give the config as pipelines.load_config returns it .*not " +
                           type(given).__name__):
            Problem.build(given, ct_phantom((2, 16, 16), seed=0))


def test_mri_simulation_matches_operator_on_the_same_grid(mr_nifti):
    """With upsample=1 and no noise the simulated k-space is exactly the operator applied to the reference (in the
    model units of the default intensity map, which every trained prior shares)."""
    from pipelines.config import load_config
    cfg = load_config("cs_mri_x4", ["noise.kind=none", "simulation.upsample=1", "mri.image_size=32",
                                    "solver.name=zero_filled"]).resolved()
    p = Problem.build(cfg, read_volume(mr_nifti))
    assert (p.intensity.physical_min, p.intensity.physical_max) == (0.0, 1.0)
    assert (p.intensity.model_min, p.intensity.model_max) == MODEL_RANGE
    ref, A, y = p.reference, p.operator, p.data
    assert torch.allclose(A.forward(torch.from_numpy(p.intensity.to_model(ref.data))), y, atol=1e-5)


def test_ct_padding_outside_the_scan_circle_is_air_in_data_and_reference():
    """Scanners pad outside their reconstruction circle with -2048 or -3024 HU: the data see it as air (mu >= 0),
    and the reference must too, or every method is scored against values no attenuation can have."""
    from pipelines.config import load_config

    cfg = load_config("sparse_view_ct_8", ["noise.kind=none"])
    hu = ct_phantom((2, 32, 32), seed=3).data
    yy, xx = np.mgrid[:32, :32]
    outside = (yy - 15.5) ** 2 + (xx - 15.5) ** 2 > 15.5 ** 2
    air = Volume(np.where(outside, -1024.0, hu), (1.0, 1.0, 2.0))  # air as scanners store it
    padded = air.with_data(np.where(outside, -2048.0, hu))
    ref_air, meas_air = simulate_ct(cfg, air, 32, 1.0)
    ref_pad, meas_pad = simulate_ct(cfg, padded, 32, 1.0)
    assert ref_pad.data.min() == CT_FLOOR_HU == -1000.0  # mu = 0: what the data make of both
    assert np.array_equal(meas_pad.data, meas_air.data)  # the padding projects as the air it stands for
    assert np.array_equal(ref_pad.data, ref_air.data)
    assert meas_pad.info["reference_floor_hu"] == CT_FLOOR_HU


def test_dicom_source_gives_a_derived_series_and_simulation(tmp_path):
    src = tmp_path / "series"
    write_dicom_series(ct_phantom((4, 48, 48), seed=5), src, series_description="test CT")
    out = tmp_path / "out"
    _cli("reconstruct", "--config", "sparse_view_ct_8", "--input", src, "--output", out, "--quiet",
         "--set", "solver.name=admm_tv", "--set", "solver.steps=10", "--set", "ct.image_size=32")
    assert (out / "simulation" / "measurements.npz").is_file()
    back = read_volume(out / "dicom")
    ref = read_volume(out / "simulation" / "reference.nii.gz")
    assert back.shape == (4, 32, 32) and np.allclose(back.affine_lps, ref.affine_lps, atol=1e-3)
    rec = read_volume(out / "recon.nii.gz")
    assert np.abs(back.data - rec.data).max() < 1.0  # int16 storage with rescale: sub-HU round-off
    rep = json.loads((out / "report.json").read_text())
    assert rep["z_tv"]["lam"] == 0.04  # the paper's, at no spacing
    scored = rep["vs_reference"]  # scored against the simulation's reference, as evaluate does over 2000 HU
    assert scored["reference"] == "simulation/reference.nii.gz" and scored["data_range"] == 2000.0
    again = tmp_path / "again.json"
    _cli("evaluate", "--reference", out / "simulation" / "reference.nii.gz", "--input", out / "recon.nii.gz",
         "--output", again, "--data-range", 2000)
    assert scored["psnr"]["axial"] == pytest.approx(json.loads(again.read_text())["psnr"]["axial"], abs=1e-3)
    assert main(["reconstruct", "--config", "sparse_view_ct_8", "--input", str(src), "--output", str(out)]) == 2
    _cli("reconstruct", "--config", "sparse_view_ct_8", "--input", src, "--output", out, "--quiet", "--overwrite",
         "--set", "solver.name=fbp", "--set", "ct.image_size=32")
    assert json.loads((out / "report.json").read_text())["config"]["solver"]["name"] == "fbp"


def test_single_slice_samples_average_more_samples_only_where_there_is_one_slice(tmp_path, mr_nifti, monkeypatch,
                                                                                  caplog):
    """solver.single_slice_samples: a single slice has no neighbours for z-TV to average the sampling noise over,
    so it gets at least that many samples (their mean, and std.nii.gz); a volume of several slices keeps
    ``samples``."""
    prior = GaussianDenoiser(mean=0.3, var=0.1)
    prior.image_size, prior.intensity, prior.sha256 = 32, IntensityMap(0.0, 1.0, unit="normalised"), "abc"
    monkeypatch.setattr(problem_module, "configured_prior", lambda cfg, device: prior)
    (tmp_path / "prior").mkdir()
    vol = read_volume(mr_nifti)
    one = write_nifti(Volume(vol.data[:1], vol.spacing, vol.origin, vol.direction), tmp_path / "one.nii.gz")
    sets = [f"prior.path={tmp_path / 'prior'}", "solver.steps=2", "solver.single_slice_samples=3",
            "solver.antithetic=false"]  # independent samples (cs_mri_x4 pairs them); "pairs" below asks again
    from medrecon.solvers.diffusion import sample_seeds
    caplog.set_level("INFO", logger="medrecon")
    single = tasks.reconstruct("cs_mri_x4", one, tmp_path / "single", overrides=sets, resample=True)
    assert single.report["sample_seeds"] == sample_seeds(0, 3) and (tmp_path / "single" / "std.nii.gz").exists()
    assert "one slice: the mean of 3 posterior samples" in caplog.text  # the user is told why it runs three times
    several = tasks.reconstruct("cs_mri_x4", mr_nifti, tmp_path / "several", overrides=sets, resample=True)
    assert vol.data.shape[0] > 1 and several.report["sample_seeds"] is None
    assert not (tmp_path / "several" / "std.nii.gz").exists()
    more = tasks.reconstruct("cs_mri_x4", one, tmp_path / "more", overrides=[*sets, "solver.samples=4"],
                             resample=True)
    assert more.report["sample_seeds"] == sample_seeds(0, 4)  # samples above it stands
    pairs = tasks.reconstruct("cs_mri_x4", one, tmp_path / "pairs", overrides=[*sets, "solver.antithetic=true"],
                              resample=True)
    assert pairs.report["sample_seeds"] == [0, 0, sample_seeds(0, 2)[1]] and pairs.report["antithetic_samples"]
    assert single.report["antithetic_samples"] is False  # independent samples unless asked


def test_diffusion_path_with_an_analytic_prior(tmp_path, mr_nifti, monkeypatch):
    """The fast sampler with a Gaussian prior runs end to end, counts its network evaluations and gives std."""
    prior = GaussianDenoiser(mean=0.3, var=0.1)
    prior.image_size, prior.intensity, prior.sha256 = 32, IntensityMap(0.0, 1.0, unit="normalised"), "abc"
    monkeypatch.setattr(problem_module, "configured_prior", lambda cfg, device: prior)
    (tmp_path / "prior").mkdir()
    out = tmp_path / "out"
    res = tasks.reconstruct("cs_mri_x4", mr_nifti, out, overrides=[f"prior.path={tmp_path / 'prior'}",
                                                                 "solver.steps=8", "solver.samples=2",
                                                                 "outputs.snapshots_every=4",
                                                                 "solver.precision=bf16"], resample=True)
    rep = json.loads((out / "report.json").read_text())
    assert rep["precision"] == prior.precision == "bf16"  # the setting reaches the prior and the report
    auto = tasks.reconstruct("cs_mri_x4", mr_nifti, tmp_path / "auto", resample=True,
                             overrides=[f"prior.path={tmp_path / 'prior'}", "solver.steps=2"])
    assert auto.report["precision"] == "fp32"  # auto: bf16 only for priors measured in it, not this one
    # 8 steps and the final denoising (the registry's final_sigma), 2 samples
    assert rep["config"]["solver"]["final_sigma"] == FAST_END["mri"]["final_sigma"] > 0
    assert rep["config"]["solver"]["end_sigma"] is None  # MRI ends at the prior's smallest noise level
    assert rep["network_evaluations_per_slice"] == 18 and rep["prior"]["sha256"] == "abc"
    from medrecon.solvers.diffusion import sample_seeds
    assert rep["antithetic_samples"] and rep["sample_seeds"] == sample_seeds(rep["seed"], 2, antithetic=True)  # config
    assert auto.report["sample_seeds"] is None  # a volume: one sample (the config pairs only a single slice's)
    assert rep["config"]["mri"]["image_size"] == 32
    assert rep["grid"]["resampled"] and "--resample" in rep["grid"]["reason"]  # 64x64 input, 32x32 prior
    zt = rep["z_tv"]  # the registry's weight, scaled to this volume's slice spacing
    assert zt["slice_mm"] == pytest.approx(float(read_volume(mr_nifti).spacing[2]))
    lam, rho, at_mm, scale = (FAST_ZTV["mri"][k] for k in ("lam", "rho", "at_slice_mm", "same_mask_scale"))
    # one simulated mask for all slices: same_mask
    assert zt["same_mask"] and zt["lam"] == pytest.approx(lam * scale * at_mm / zt["slice_mm"])
    assert zt["rho"] == pytest.approx(rho * scale * at_mm / zt["slice_mm"])  # rho follows the spacing too (MRI)
    assert zt["lam_xy"] == 0.0  # no in-plane TV on MRI
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["sample1_step_00004.nii.gz", "sample1_step_00008.nii.gz",
                                                                       "step_00004.nii.gz", "step_00008.nii.gz"]
    std = nib.load(out / "std.nii.gz").get_fdata()
    assert std.shape == (32, 32, 6) and std.max() > 0
    zf = tasks.reconstruct("cs_mri_x4", out / "simulation" / "measurements.npz", tmp_path / "zf",
                           overrides=["solver.name=zero_filled"])
    # a simulation's measurements are no raw MRI: their dicom/ was written as measured k-space's, at x1000 under a
    # new patient (1.2x the source's values); as for CT measurements, none is written
    assert not (tmp_path / "zf" / "dicom").exists()
    ref = read_volume(out / "simulation" / "reference.nii.gz")
    m_fast = tasks.evaluate(ref, res.recon, data_range=1.0)
    # A Gaussian prior samples the unmeasured k-space as noise, so it cannot beat zero filling; what this checks
    # is the plumbing: model <-> physical units (the measured DC gives the mean) and a sane image (measured
    # 19.6 dB against 20.2 dB for zero filling).
    assert m_fast["psnr"]["axial"] > 15.0
    assert abs(float(res.recon.data.mean()) - float(ref.data.mean())) < 0.02
    assert abs(float(zf.recon.data.mean()) - float(ref.data.mean())) < 0.02


def test_fastmri_hdf5_input(tmp_path, mr_nifti):
    """fastMRI-style HDF5 (kspace only) is rescaled and reconstructed like the same data from an npz."""
    import h5py
    sim = tmp_path / "sim"
    tasks.simulate("cs_mri_x4", mr_nifti, sim, overrides=["mri.image_size=32", "noise.kind=none"])
    meas = Measurement.load(sim / "measurements.npz")
    with h5py.File(tmp_path / "file.h5", "w") as f:
        f["kspace"] = meas.data * 1000.0  # arbitrary scanner scale
    a = tasks.reconstruct("cs_mri_x4", sim / "measurements.npz", tmp_path / "a",
                          overrides=["solver.name=zero_filled", "mri.image_size=32"])
    b = tasks.reconstruct("cs_mri_x4", tmp_path / "file.h5", tmp_path / "b",
                          overrides=["solver.name=zero_filled", "mri.image_size=32", "mri.image=real"])
    s = b.report["measured_data_scale"]
    assert s > 0 and np.allclose(b.recon.data * s, a.recon.data * 1000.0, rtol=1e-3, atol=1e-3 * s)
    # measured k-space defaults to complex images: the magnitude of A^H y, never below |its real part|
    c = tasks.reconstruct("cs_mri_x4", tmp_path / "file.h5", tmp_path / "c",
                          overrides=["solver.name=zero_filled", "mri.image_size=32"])
    assert np.all(c.recon.data * s >= np.abs(a.recon.data) * 1000.0 - 1e-3 * s)


def test_evaluate_errors_and_python_api(tmp_path, ct_nifti):
    import pipelines
    v = read_volume(ct_nifti)
    m = pipelines.evaluate(v, v.with_data(v.data + 10.0), data_range=2000.0)
    assert m["psnr"]["volume"] == pytest.approx(10 * np.log10(2000.0 ** 2 / 100.0), abs=1e-6)
    assert main(["evaluate", "--reference", str(ct_nifti), "--input", str(tmp_path / "missing.nii.gz")]) == 2
    moved = Volume(v.data, tuple(np.array(v.spacing) * 0.5), v.origin, v.direction)  # same shape, half the size
    only_spacing = r"same shape but lie on different grids \(spacing [^,]+, [^,]+, [^,]+\) vs .* mm\)"
    with pytest.raises(InputError, match=only_spacing):
        pipelines.evaluate(v, moved)  # only what differs is named: here the spacing
    c, s_ = np.cos(np.radians(5.0)), np.sin(np.radians(5.0))
    turn = np.array([[c, -s_, 0], [s_, c, 0], [0, 0, 1]])
    turned = Volume(v.data, v.spacing, v.origin, np.asarray(v.direction) @ turn)
    with pytest.raises(InputError, match=r"different grids \(axes rotated by up to 5 degrees\)"):
        pipelines.evaluate(v, turned)  # the same axis letters: the angle says what differs


def test_native_grid_by_default_and_domain_checks(tmp_path, ct_nifti, mr_nifti, monkeypatch):
    """No silent resampling: the input's own grid by default; a prior whose grid or pixel-size range disagrees,
    a DICOM modality or values that contradict the config stop with a message naming the fix."""
    from pipelines.problem import reconstruction_grid
    v = read_volume(ct_nifti)
    cfg = tasks.prepare_config("sparse_view_ct_8", ["solver.name=fbp"])
    g = reconstruction_grid(cfg, None, v)
    assert (g["size"], g["pixel_mm"], g["resampled"]) == (max(v.shape[1:]), v.spacing[0], False)
    p = Problem.build(cfg, v)
    assert p.shape[1:] == (g["size"],) * 2 and p.info["grid"] == g

    fixed = GaussianDenoiser(mean=0.3, var=0.1)
    fixed.image_size, fixed.name = 16, "tiny"
    with pytest.raises(InputError, match="works on 16x16 slices only.*--resample"):
        reconstruction_grid(cfg, fixed, v)
    assert reconstruction_grid(cfg, fixed, v, resample=True)["size"] == 16

    lo = 2 * v.spacing[0]

    class AnySize(GaussianDenoiser):
        image_size, name, pixel_spacing_mm_range = None, "patchy", (lo, 2 * lo)
    with pytest.raises(InputError, match="outside the range prior patchy was trained on"):
        reconstruction_grid(cfg, AnySize(0.3, 0.1), v)
    g = reconstruction_grid(cfg, AnySize(0.3, 0.1), v, resample=True)
    assert g["pixel_mm"] == lo and g["size"] == round(max(v.shape[1:]) / 2) and g["resampled"]

    with pytest.raises(InputError, match="do not look like CT in HU"):
        Problem.build(cfg, read_volume(mr_nifti))
    with pytest.raises(InputError, match="do not look like CT in HU"):  # attenuation values (1/mm), not HU
        Problem.build(cfg, v.with_data(np.clip(v.data, -1000, None) * 1.9e-5 + 0.019))
    inside = v.with_data(np.where(v.data < -120, -120.0, v.data))  # a field of view inside the body: fat, no air
    Problem.build(cfg, inside)
    mri = tasks.prepare_config("cs_mri_x4", ["solver.name=zero_filled"])
    with pytest.raises(InputError, match="do not look like MR magnitudes"):  # CT in HU under an MRI config
        Problem.build(mri, v)
    mr = read_volume(mr_nifti)
    top = float(np.percentile(mr.data, 99.5))
    Problem.build(mri, mr.with_data(mr.data - 0.01 * top))  # a slightly negative background is still MR
    mr_series = tmp_path / "mr"
    write_dicom_series(read_volume(mr_nifti), mr_series, modality="MR")
    with pytest.raises(InputError, match="a MR series, but the config is for ct: use a mri config"):
        Problem.build(cfg, mr_series)


def test_oblong_pixels_phase_images_and_ct_without_rescale_are_not_taken_silently(tmp_path, ct_nifti, mr_nifti):
    """Non-square in-plane pixels are interpolated onto square ones and say so (a 4:1 ratio, likely a slice axis
    that is not the third, stops unless --resample); a DICOM MR series with negative values (phase, real or
    imaginary images) is not a magnitude; a DICOM CT series read without RescaleIntercept must still look like HU."""
    from pipelines.problem import check_domain, reconstruction_grid
    cfg = tasks.prepare_config("sparse_view_ct_8", ["solver.name=fbp"])
    v = read_volume(ct_nifti)
    g = reconstruction_grid(cfg, None, Volume(v.data, spacing=(0.8, 1.0, 2.0)))
    assert g["resampled"] and g["pixel_mm"] == 0.8 and "non-square pixels (0.8 x 1 mm)" in g["reason"]
    with pytest.raises(InputError, match="interpolated 4.4x onto square 0.9 mm pixels.*reslice it to axial"):
        reconstruction_grid(cfg, None, Volume(v.data, spacing=(0.9, 4.0, 0.9)))
    assert reconstruction_grid(cfg, None, Volume(v.data, spacing=(0.9, 4.0, 0.9)), resample=True)["resampled"]

    mri = tasks.prepare_config("cs_mri_x4", ["solver.name=zero_filled"])
    phase = read_volume(mr_nifti)
    phase = phase.with_data(phase.data * 2 - phase.data.max(), dicom={"Modality": "MR"})
    with pytest.raises(InputError, match="do not look like MR magnitudes"):
        check_domain(mri, None, phase)
    stored = v.with_data(v.data + 1024, dicom={"Modality": "CT"}, rescale_assumed=True)  # stored values as HU
    with pytest.raises(InputError, match="do not look like CT in HU"):
        check_domain(cfg, None, stored)
    check_domain(cfg, None, stored.with_data(stored.data, rescale_assumed=False))  # a series with a rescale: trusted


@pytest.mark.parametrize("name, config, clinical, finer", [
    ("ct_patch", "sparse_view_ct_8", (0.55, 0.7, 0.977), 0.4),
    ("ct_patch_wide", "sparse_view_ct_8", (0.55, 0.7, 0.977), 0.4),
    ("mri_patch", "cs_mri_x4", (0.65, 0.78125, 0.9), 0.5)])
def test_bundled_patch_priors_take_clinical_pixel_sizes_at_their_own_grid(name, config, clinical, finer):
    """Clinical CT has 0.5-0.8 mm pixels, brain MR often 0.7-0.8 mm: the bundled patch priors' cards cover them
    (CT since the twenty-eighth session, MR since the twenty-ninth), so such a series is reconstructed on its own
    grid; finer than the range, it stops with the fix named."""
    from pipelines.prior_cards import load_prior_for
    from pipelines.problem import reconstruction_grid
    prior = load_prior_for(f"bundled:{name}")
    cfg = tasks.prepare_config(config, [])
    data = _mr_volume().data
    for mm in clinical:
        g = reconstruction_grid(cfg, prior, Volume(data, spacing=(mm, mm, 2.0)))
        assert (g["pixel_mm"], g["resampled"]) == (mm, False)
    with pytest.raises(InputError, match=f"outside the range prior {name} was trained on.*--resample"):
        reconstruction_grid(cfg, prior, Volume(data, spacing=(finer, finer, 2.0)))


def _fast_ct(src, out, *extra):
    return main(["reconstruct", "--config", "sparse_view_ct_8", "--input", str(src), "--output", str(out), "--quiet",
                 "--set", "solver.name=fbp", "--set", "ct.image_size=16", *map(str, extra)])


def test_overwrite_keeps_the_old_output_until_the_new_one_is_complete(tmp_path, monkeypatch, capsys):
    """#13.4: reconstruct --overwrite killed -9 mid-run left out/k1 absent; #13.15: and left .medrecon-tmp-*."""
    import pipelines.tasks as tasks
    src, out = tmp_path / "series", tmp_path / "k1"
    write_dicom_series(ct_phantom((3, 24, 24), seed=1), src, series_description="CT")
    assert _fast_ct(src, out) == 0
    before = (out / "report.json").read_text()
    marker = json.loads((out / ".medrecon-output").read_text())
    assert marker["series_uid"] and len(marker["files_sha256"]) == 64  # #13.3: the output names its series
    report = json.loads(before)
    assert report["series_uid"] == marker["series_uid"] and report["input"] == "series"  # #13.18: a name only
    real = tasks.Problem.solve
    seen = []

    def killed(self, *a, **k):  # nothing after this point runs, as after kill -9; leave the temporary behind
        seen.append((out / "report.json").read_text() == before)
        tmp = next(tmp_path.glob(".medrecon-tmp-*-k1"))
        tmp.rename(tmp_path / ".medrecon-tmp-999999999-0badcafe-k1")
        raise KeyboardInterrupt

    monkeypatch.setattr(tasks.Problem, "solve", killed)
    capsys.readouterr()
    assert _fast_ct(src, out, "--overwrite") == 130  # exit 128 + SIGINT
    assert capsys.readouterr().err.startswith("interrupted (SIGINT): nothing half-written is kept")
    assert seen == [True] and (out / "report.json").read_text() == before
    monkeypatch.setattr(tasks.Problem, "solve", real)
    assert _fast_ct(src, out, "--overwrite") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k1", "series"]  # the killed run's temporary is gone
    (notes := tmp_path / "notes").mkdir()
    (notes / "notes.txt").write_text("mine")
    assert _fast_ct(src, notes, "--overwrite") == 2 and (notes / "notes.txt").read_text() == "mine"  # #13.5


def test_reconstruct_and_batch_offer_resample_for_uneven_series(tmp_path, capsys):
    """#13.13: the error says "Pass --resample", and reconstruct (and batch, simulate) now have it."""
    import pydicom
    src = tmp_path / "series"
    write_dicom_series(ct_phantom((4, 24, 24), seed=1), src, series_description="CT")
    last = sorted(src.glob("*.dcm"))[-1]
    ds = pydicom.dcmread(last)
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1],
                               float(ds.ImagePositionPatient[2]) + 2.0]
    ds.save_as(last)
    assert _fast_ct(src, tmp_path / "a") == 2
    assert "--resample" in capsys.readouterr().err
    assert _fast_ct(src, tmp_path / "a", "--resample") == 0
    for command in ("reconstruct", "batch", "simulate", "info", "convert"):
        assert main([command, "--help"]) == 0
        assert "--resample" in capsys.readouterr().out, command


def test_evaluate_single_slice_and_unwritable_output(tmp_path, capsys):
    """#13.16: a one-slice volume gets the planes SSIM can score (the others null, with a note); #13.7: an
    unwritable --output is one line, exit 2."""
    import pipelines
    v = Volume(np.random.default_rng(0).normal(size=(1, 16, 16)).astype(np.float32), (1.0, 1.0, 2.0))
    write_nifti(v, ref := tmp_path / "ref.nii.gz")
    write_nifti(v.with_data(v.data + 0.1), rec := tmp_path / "rec.nii.gz")
    m = pipelines.evaluate(ref, rec)
    assert 0 < m["ssim"]["axial"] < 1 and m["ssim"]["coronal"] is None and m["ssim"]["sagittal"] is None
    assert m["ssim"]["volume"] == pytest.approx(m["ssim"]["axial"]) and len(m["notes"]) == 3  # + the PSNR note
    assert all(np.isfinite(list(m["psnr"].values())))
    (tmp_path / "file").write_text("x")
    code = main(["evaluate", "-r", str(ref), "-i", str(rec), "-o", str(tmp_path / "file" / "m.json")])
    err = capsys.readouterr().err
    assert code == 2 and "error:" in err and str(tmp_path / "file") in err and "Traceback" not in err
    assert main(["evaluate", "-r", str(ref), "-i", str(rec), "-o", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["ssim"]["coronal"] is None
    (tmp_path / "notes.txt").write_text("precious")  # an existing file is replaced only with --overwrite
    assert main(["evaluate", "-r", str(ref), "-i", str(rec), "-o", str(tmp_path / "notes.txt")]) == 2
    assert (tmp_path / "notes.txt").read_text() == "precious" and "--overwrite" in capsys.readouterr().err
    assert main(["evaluate", "-r", str(ref), "-i", str(rec), "-o", str(tmp_path / "m.json"), "--overwrite"]) == 0


def test_phantom_unwritable_output(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code = main(["phantom", str(tmp_path / "file" / "ph"), "--shape", "4,8,8"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot create the output folder" in err and "Traceback" not in err


def test_phantom_refuses_bad_arguments_before_making_its_folder(tmp_path, capsys):
    """A reversed --seeds range wrote nothing and exited 0; a bad --seeds, --shape or --slice-thickness was refused
    after the output folder was made, leaving it empty."""
    out = tmp_path / "ph"
    for args, said in ((["--seeds", "5-3"], "--seeds '5-3': the range 5-3 is reversed; write 3-5"),
                       (["--seeds", "abc"], "--seeds 'abc': expected a range"), (["--seeds", ""], "--seeds '':"),
                       (["--shape", "0,8,8"], "three positive sizes"),
                       (["--slice-thickness", "-1"], "must be positive")):
        assert main(["phantom", str(out), "--shape", "2,8,8", *args]) == 2, args
        assert said in capsys.readouterr().err and not out.exists(), args
    assert main(["phantom", str(out), "--shape", "2,8,8", "--seeds", "3-4"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ct_seed0003.nii.gz", "ct_seed0004.nii.gz"]


def _starved_phantom() -> Volume:
    """A wide water ellipse (500 x 200 mm) with two dense bone rods at its ends: its lateral rays cross ~10 mu-path
    lengths (a few photons at I0 = 1e5), its vertical ones ~4."""
    n, px = 64, 8.0
    yy, xx = (np.mgrid[:n, :n] - (n - 1) / 2) * px
    hu = np.full((n, n), -1000.0)
    hu[(xx / 250) ** 2 + (yy / 100) ** 2 <= 1] = 0.0
    for cx in (-200.0, 200.0):
        hu[(xx - cx) ** 2 + yy ** 2 <= 30.0 ** 2] = 1500.0
    return Volume(np.repeat(hu[None], 2, axis=0).astype(np.float32), (px, px, px))


def test_poisson_weighting_removes_photon_starvation_streaks():
    """PWLS ray weights (ct.weighting=poisson, the default under Poisson noise) on a phantom whose lateral view is
    photon-starved: the noise's imprint on ADMM-TV (RMS difference to the noise-free reconstruction of the same
    solver) is well below that of plain least squares."""
    from pipelines.config import load_config
    src = _starved_phantom()

    def recon(weighting, noise):
        cfg = load_config("sparse_view_ct_8", ["ct.image_size=32", "ct.pixel_size=16", f"ct.weighting={weighting}",
                                               f"noise.kind={noise}", "solver.name=admm_tv", "solver.steps=60",
                                               "solver.admm.lam=1.0", "solver.admm.rho=10.0"]).resolved()
        p = Problem.build(cfg, src)
        assert (p.sqrt_weights is not None) == (weighting == "poisson")
        if noise == "poisson":
            assert float(p.measurement.data.max()) > 8.0  # some rays are starved: < 35 photons
        return p.to_volume(p.solve().x).data

    imprint = {w: float(np.sqrt(np.mean((recon(w, "poisson") - recon(w, "none")) ** 2))) for w in ("poisson", "none")}
    assert imprint["poisson"] < 0.7 * imprint["none"], imprint  # HU; measured 22 vs 39 (0.56x)


def test_ztv_weight_is_scaled_by_the_slice_spacing_and_3d_tv_is_not(ct_nifti):
    """``admm.at_slice_mm`` scales the z-TV weight to the volume's slice spacing (report.json's ``z_tv``)."""
    from pipelines.config import load_config

    def z_tv(*overrides):
        cfg = load_config("sparse_view_ct_8", ["solver.name=admm_tv", "solver.steps=1", "ct.image_size=32",
                                               "solver.admm.lam=0.3", "solver.admm.at_slice_mm=1.0", *overrides],
                          check_files=False).resolved()
        p = Problem.build(cfg, read_volume(ct_nifti))
        p.solve()
        return p.info["z_tv"]
    zt = z_tv()
    assert zt["lam"] == pytest.approx(0.3 / zt["slice_mm"]) and zt["slice_mm"] != 1.0
    assert z_tv("solver.tv=3d")["lam"] == 0.3


def test_inplane_weight_and_penalty_are_scaled_by_the_pixel_size(ct_nifti, monkeypatch):
    """``admm.at_pixel_mm`` scales the sampler's in-plane TV weight to the grid's pixel size, and with
    ``rho_xy_follows_pixel`` its ADMM penalty too: the sampler's ADMM step gets them (report.json's ``z_tv``: the
    values used and the pixel size)."""
    from pipelines.config import load_config

    built = _record_fast_samplers(monkeypatch)
    prior = GaussianDenoiser(mean=0.0, var=0.1)
    prior.intensity = IntensityMap(-1000.0, 1000.0, -1.0, 1.0, unit="HU")
    sets = ["ct.image_size=32", "ct.pixel_size=2.0", "solver.admm.lam_xy=0.4", "solver.admm.at_pixel_mm=1.0",
            "solver.steps=2"]
    for follows in (False, True):
        cfg = load_config("sparse_view_ct_8", sets + [f"solver.admm.rho_xy_follows_pixel={str(follows).lower()}"],
                          check_files=False).resolved()
        p = Problem.build(cfg, read_volume(ct_nifti), prior=prior)
        p.solve()
        zt = p.info["z_tv"]
        assert zt["pixel_mm"] == p.pixel_mm != 1.0
        assert zt["lam_xy"] == pytest.approx(0.4 / p.pixel_mm)
        assert zt["rho_xy"] == pytest.approx(zt["rho"] / p.pixel_mm if follows else zt["rho"])
        assert built[-1].dc.lams[1:] == (zt["lam_xy"],) * 2 and built[-1].dc.rhos == (zt["rho"], *(zt["rho_xy"],) * 2)


def _record_fast_samplers(monkeypatch) -> list:
    """The fast samplers Problem.solve builds from now on, in a list (the registry's class, recording itself)."""
    import dataclasses
    from pipelines.registry import SOLVERS
    from medrecon.solvers import FastSampler

    built = []

    class Recording(FastSampler):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            built.append(self)

    monkeypatch.setitem(SOLVERS, "fast", dataclasses.replace(SOLVERS["fast"], sampler=Recording))
    return built


def test_the_fast_sampler_gets_its_ending_from_the_config(ct_nifti, monkeypatch):
    """solver.end_sigma / final_sigma (the config's and the registry's, or set) reach the sampler Problem.solve
    builds; an end_sigma not below the start is a one-line error before any work."""
    from pipelines.config import load_config
    built = _record_fast_samplers(monkeypatch)
    prior = GaussianDenoiser(mean=0.0, var=0.1)
    prior.intensity = IntensityMap(-1000.0, 1000.0, -1.0, 1.0, unit="HU")
    for overrides, (end, final) in (([], (0.02, FAST_END["ct"]["final_sigma"])),  # sparse_view_ct_8's end
                                    (["solver.end_sigma=0.1", "solver.final_sigma=0"], (0.1, 0.0))):
        cfg = load_config("sparse_view_ct_8", ["solver.steps=4", "ct.image_size=32", *overrides],
                          check_files=False).resolved()
        Problem.build(cfg, read_volume(ct_nifti), prior=prior, resample=True).solve()
        last = float(built[-1].sigmas[-1])  # the grid's last level at or just above end_sigma
        assert built[-1].final_sigma == final and len(built[-1].sigmas) == 4 and end * (1 - 1e-9) <= last < 4 * end
    cfg = load_config("sparse_view_ct_8", ["solver.steps=4", "ct.image_size=32", "solver.end_sigma=0.5"],
                      check_files=False).resolved()  # the config's warm start begins at 0.4
    monkeypatch.setattr(Problem, "warm_start", lambda self, s: pytest.fail("the warm start ran before the check"))
    with pytest.raises(InputError, match="end_sigma 0.5 is not below the warm start's start_sigma 0.4"):
        Problem.build(cfg, read_volume(ct_nifti), prior=prior, resample=True).solve()


def test_two_scale_denoising_only_where_the_prior_knows_twice_the_pixel(ct_nifti, monkeypatch):
    """solver.coarse_above (sparse_view_ct_8's 0.1, or set) reaches the fast sampler when twice the grid's pixel lies
    in the prior's trained pixel range; else the sampler gets 0 and report.json's two_scale says why."""
    from pipelines.config import load_config
    built = _record_fast_samplers(monkeypatch)
    vol = read_volume(ct_nifti)
    pixel32 = vol.shape[2] * float(vol.spacing[0]) / 32
    prior = GaussianDenoiser(mean=0.0, var=0.1)
    prior.intensity, prior.name = IntensityMap(-1000.0, 1000.0, -1.0, 1.0, unit="HU"), "stub"
    prior.pixel_spacing_mm_range = (pixel32, 2 * pixel32)  # grids of 32 and 16 pixels: both inside
    for size, overrides, expect in ((32, [], 0.1), (32, ["solver.coarse_above=0.3"], 0.3), (16, [], 0.0),
                                    (32, ["solver.coarse_above=null"], 0.0)):
        cfg = load_config("sparse_view_ct_8", ["solver.steps=2", f"ct.image_size={size}", *overrides],
                          check_files=False).resolved()
        p = Problem.build(cfg, vol, prior=prior)
        p.solve()
        assert built[-1].coarse_above == expect and p.info["two_scale"]["coarse_above"] == expect
        assert p.info["two_scale"]["coarse_pixel_mm"] == pytest.approx(2 * pixel32 * 32 / size, rel=1e-3)
        off = p.info["two_scale"].get("off", "")  # why a pass that was asked for did not run
        assert ("outside the pixel sizes prior stub was trained at" in off) == (size == 16)
    prior.image_size = 16  # a whole-slice prior knows one slice size: no coarse pass, though its range holds it
    prior.pixel_spacing_mm_range = (pixel32, 4 * pixel32)
    cfg = load_config("sparse_view_ct_8", ["solver.steps=2", "ct.image_size=16"], check_files=False).resolved()
    Problem.build(cfg, vol, prior=prior).solve()
    assert built[-1].coarse_above == 0.0


def test_comparison_table_of_a_single_slice_has_dashes_for_the_missing_planes():
    """One slice has no coronal or sagittal plane: the table says so instead of failing (bench_real on CT_small)."""
    from pipelines.compare import MethodResult, markdown_table
    m = {"psnr": {"axial": 25.614, "coronal": None, "sagittal": None},
         "ssim": {"axial": 0.6691, "coronal": None, "sagittal": None}}
    r = MethodResult("fast", "fast", None, m, 51, 0, 11.94, 12.0)
    row = markdown_table([r]).strip().splitlines()[-1]
    assert row == "| fast | 25.61 | – | – | 0.669 | – | – | 51 | 0 | 11.9 | 12 |"


def test_finer_grid_of_the_same_field_of_view_keeps_a_body_cut_by_the_edge():
    """The simulation projects a 2x finer grid of the reconstruction's field of view: its outer samples lie
    within the source's outer pixels (a quarter pixel beyond their centres) and must take their values, not
    the padding — else a body cut by the field of view loses a rim in the data. Beyond the pixels: padding."""
    data = np.full((1, 30, 30), 40.0, np.float32)
    data[0, 0, 0] = -1000.0  # the minimum, i.e. the padding value
    vol = Volume(data, spacing=(1.0, 1.0, 2.0))
    fine = resample_inplane(vol, 60, 0.5).data[0]
    assert np.all(fine[3:, :] == 40.0) and np.all(fine[:, 3:] == 40.0)  # every edge but the air corner
    wide = resample_inplane(vol, 40, 1.0).data[0]  # 5 mm beyond the source on each side: padding there
    assert np.all(wide[:4] == -1000.0) and np.all(wide[:, -4:] == -1000.0) and wide[20, 20] == 40.0


def test_reference_holds_the_partial_pixels_the_data_see_at_a_cut():
    """Where the field of view cuts the body mid-pixel of the reference grid, a reference pixel is the area mix of
    body and padding, the mean of the finer grid the data are projected from (before, a pixel whose centre lay
    beyond the cut was air: a row of errors of several hundred HU on a body cut at the edge, for every method)."""
    data = np.full((1, 30, 30), 40.0, np.float32)
    data[0, 0, 0] = -1000.0  # the padding value
    vol = Volume(data, spacing=(1.0, 1.0, 2.0))
    coarse = resample_inplane(vol, 16, 2.0).data[0]  # 32 mm: the source's edges fall mid-pixel on every side
    fine = resample_inplane(vol, 32, 1.0).data[0]
    block = fine.reshape(16, 2, 16, 2).mean((1, 3))
    assert coarse[8, -1] == pytest.approx(-480.0) and coarse[-1, -1] == pytest.approx(-740.0)  # 1/2, 1/4 body
    assert np.allclose(coarse[3:, 3:], block[3:, 3:], atol=1e-3)  # away from the air corner (prefiltered here)
    # pixels wholly inside the scan keep their values to the bit (a whole-body scan's data do not change)
    flat = np.full((1, 40, 40), 37.3, np.float32)
    flat[0, 0, 0] = -1000.0  # one air pixel, so the padding (the scan's minimum) differs from the body value
    inside = resample_inplane(Volume(flat, spacing=(0.977, 0.977, 2.0)), 25, 1.3).data[0, 4:-4, 4:-4]
    assert np.all(inside == np.float32(37.3))


@pytest.mark.parametrize("coils, n", [("single", 40), ("multi", 40), ("single", 39), ("multi", 39)])
def test_simulated_mri_reference_is_what_fully_sampled_noise_free_data_reconstruct(coils, n):
    """The MRI reference is the image the simulated k-space holds (the 2x finer image limited to the grid's
    band): fully sampled, noise-free data reconstruct it to float32 precision (single coil: exactly the
    inverse FFT; several coils: up to the coarse coil maps' model error). An interpolated reference, as
    before, lay 27 dB away on a real brain — a ceiling no method could pass. The band is the object's own: on an
    odd grid the band's DC used to sit one sample off fftc's centre, a phase ramp over the whole image whose real
    part (reference and data alike) was the object striped diagonally (110 % away from it; 12 % now, its edges)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[-1:1:n * 1j, -1:1:n * 1j]
    data = np.stack([(xx ** 2 + yy ** 2 < 0.7) * (0.5 + 0.4 * np.sin(5 * xx + k) * np.cos(4 * yy))
                     + 0.05 * rng.random((n, n)) for k in range(3)]).astype(np.float32)
    vol = Volume(data, spacing=(1.0, 1.0, 4.0))
    cfg = tasks.prepare_config("cs_mri_x4", ["solver.name=zero_filled", "mri.pixel_size=1.0", "noise.sigma=0",
                                             "mri.mask.acceleration=1.0001", "mri.mask.center_fraction=0.9999",
                                             f"mri.coils={coils}"])
    p = Problem.build(cfg, vol)
    x = p.to_volume(p.solve(cfg.solver).x).data
    err = np.abs(x - p.reference.data).max()
    assert err < (1e-5 if coils == "single" else 0.05), err
    interp = resample_inplane(vol, n, 1.0).data
    interp = interp / np.abs(interp).max()
    assert np.abs(interp - p.reference.data).max() > 20 * min(err, 1e-3)  # not the interpolated image
    assert np.linalg.norm(p.reference.data - interp) < 0.2 * np.linalg.norm(interp)  # but the same object


@pytest.mark.parametrize("config, lam", [("sparse_view_ct_8", 1.0), ("cs_mri_x4", 0.01)])
def test_admm_tv_means_the_same_with_and_without_a_trained_prior(ct_nifti, mr_nifti, config, lam):
    """A comparison builds its problem with the prior's intensity map and runs ADMM-TV in it; a plain admm_tv run
    has no prior. A trained prior maps the window to MODEL_RANGE, as a run without one does, so one lam gives one
    result (before, [0, 1] without a prior: the same lam was twice as strong, and benchmark baselines tuned
    without the prior ran at half strength beside it)."""
    from pipelines.config import load_config
    modality = "ct" if config.startswith("sparse") else "mri"
    cfg = load_config(config, [f"{modality}.image_size=32", "solver.name=admm_tv", "solver.tv=3d",
                               f"solver.admm.lam={lam}", f"solver.admm.rho={10 * lam}"]).resolved()
    vol = read_volume(ct_nifti if modality == "ct" else mr_nifti)
    lo, hi = (-1000.0, 1000.0) if modality == "ct" else (0.0, 1.0)
    prior = GaussianDenoiser(mean=0.0, var=0.1)
    prior.intensity = IntensityMap(lo, hi, *MODEL_RANGE)
    old = GaussianDenoiser(mean=0.0, var=0.1)
    old.intensity = IntensityMap(lo, hi, 0.0, 1.0)  # the old default map: the same lam twice as strong
    runs = []
    for p in (None, prior, old):
        problem = Problem.build(cfg, vol, prior=p, resample=True)
        runs.append(problem.to_volume(problem.solve().x).data)
    scale = float(np.abs(runs[0]).max())
    assert np.abs(runs[1] - runs[0]).max() <= 1e-4 * scale  # one map, one problem: the same iterates
    assert np.abs(runs[2] - runs[0]).max() > 0.02 * scale  # the check tells the maps apart (measured 0.33 CT, 0.07 MRI)


@pytest.mark.parametrize("config, solver, extra", [("sparse_view_ct_8", "fbp", []),
                                                   ("cs_mri_x4", "zero_filled", ["mri.coils=multi", "mri.n_coils=4"])])
def test_linear_reconstructions_do_not_depend_on_the_intensity_maps_offset(ct_nifti, mr_nifti, config, solver, extra):
    """FBP and zero-filled invert the physical data: the same image whether model 0 is -1000 HU ([0, 1]) or 0 HU
    ([-1, 1], every trained prior's). Before, an 8-view FBP beside a prior also reconstructed the offset's constant
    image, whose sparse-view FBP is streaks (ct_tumour1: 5.06 dB against 8.67); with coil maps, a zero-filled image
    of the offset is not constant either."""
    from pipelines.config import load_config
    modality = "ct" if solver == "fbp" else "mri"
    cfg = load_config(config, [f"{modality}.image_size=32", f"solver.name={solver}", *extra]).resolved()
    vol = read_volume(ct_nifti if modality == "ct" else mr_nifti)
    lo, hi = (-1000.0, 1000.0) if modality == "ct" else (0.0, 1.0)
    runs = []
    for model_range in ((0.0, 1.0), MODEL_RANGE):
        prior = GaussianDenoiser(mean=0.0, var=0.1)
        prior.intensity = IntensityMap(lo, hi, *model_range)
        problem = Problem.build(cfg, vol, prior=prior, resample=True)
        runs.append(problem.to_volume(problem.solve().x).data)
    assert np.abs(runs[1] - runs[0]).max() <= 1e-4 * (hi - lo)  # float32 FBP / FFT of data scaled by 2


@pytest.mark.gpu
def test_a_prior_loaded_on_the_cpu_runs_on_the_gpu_and_the_chunk_trial_changes_nothing():
    """``Problem.build`` moves a prior it is given to the config's device (the demo loads its prior on the CPU),
    and on CUDA the automatic chunk size (a trial forward through the patch prior) leaves the result as the same
    chunk size set by hand gives it: the tile shifts are reseeded after the trial. Tolerance: cuDNN may pick
    other convolution algorithms between calls, a few 1e-6 relative in model units, far below 0.5 HU."""
    from pipelines.compare import compare_methods
    from pipelines.prior_cards import load_prior_for

    prior = load_prior_for("bundled:ct_patch")
    assert prior.device.type == "cpu"
    src = ct_phantom((2, 64, 64), seed=1001, pixel_size_mm=1.0)
    methods = {"auto": {"name": "fast"}, "by hand": {"name": "fast", "chunk_size": 2}}
    _, (auto, by_hand) = compare_methods("sparse_view_ct_8", src, methods, prior=prior,
                                         common=["solver.device=cuda", "solver.steps=3", "solver.precision=fp32"])
    assert prior.device.type == "cuda" and auto.peak_cuda_mib > 0
    assert auto.nfe_per_slice == by_hand.nfe_per_slice
    np.testing.assert_allclose(auto.volume.data, by_hand.volume.data, atol=0.5)


def test_the_automatic_chunk_size_trial_leaves_the_patch_prior_tile_shifts_as_they_were(monkeypatch):
    """On CUDA ``auto_chunk_size`` runs one trial denoising, which draws a tile offset of the patch prior; the
    sampler reseeds the prior after it, so the result is the one a chunk size set by hand gives. Here on the CPU
    with the CUDA branch's trial stood in (the GPU test above runs the real one); tile shifts move a 3-step
    result by far more than the 1e-4 HU allowed (same arithmetic, same order: bit-identical expected)."""
    from medrecon.solvers import diffusion
    from pipelines.compare import compare_methods
    from pipelines.prior_cards import load_prior_for

    def trial_like_cuda(prior, hw, device, **kw):
        prior.denoise(torch.zeros(2, 1, *hw), prior.schedule.sigma_max)
        return 2
    monkeypatch.setattr(diffusion, "auto_chunk_size", trial_like_cuda)
    src = ct_phantom((2, 48, 48), seed=1001, pixel_size_mm=1.0)
    methods = {"auto": {"name": "fast"}, "by hand": {"name": "fast", "chunk_size": 2},
               "other shifts": {"name": "fast", "chunk_size": 2, "seed": 1}}
    _, (auto, by_hand, other) = compare_methods("sparse_view_ct_8", src, methods,
                                                prior=load_prior_for("bundled:ct_patch"),
                                                common=["solver.steps=3", "solver.precision=fp32"])
    np.testing.assert_allclose(auto.volume.data, by_hand.volume.data, atol=1e-4)
    assert np.abs(other.volume.data - by_hand.volume.data).max() > 1.0  # the seed (tile shifts, noise) matters


def test_what_was_warned_about_the_input_is_in_the_report(tmp_path, ct_nifti):
    """A warning while reading (here: copies of one image in the series folder) is kept in report.json."""
    src = tmp_path / "series"
    write_dicom_series(read_volume(ct_nifti), src)
    shutil.copy(sorted(src.iterdir())[0], src / "copy.dcm")
    assert _fast_ct(src, tmp_path / "out") == 0
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any("repeat another file's SOPInstanceUID" in w for w in rep["input_warnings"])


def test_a_sinogram_that_does_not_fit_its_stored_geometry_is_a_one_line_error(tmp_path, ct_nifti):
    sim = tmp_path / "sim"
    tasks.simulate("limited_angle_ct_90", ct_nifti, sim, overrides=["ct.image_size=32"])
    meas = Measurement.load(sim / "measurements.npz")
    meas.data = meas.data[:, :80]  # 80 of the 90 views
    meas.save(tmp_path / "cut.npz")
    with pytest.raises(InputError, match=r"cut.npz: the sinogram \(\d+, 80, \d+\) and grid .* do not fit"):
        Measurement.load(tmp_path / "cut.npz")


def _measured_ct(path, sinogram=None, angles_deg=None, n=16, pixel=4.0, slices=2, **info):
    """A CT measurements.npz as README's "A measured CT sinogram" writes one (no simulation info): ``sinogram``
    (slices, views, bins), by default the line integrals -log(I/I0) of a water disc of radius 25 mm."""
    from operators.ct import MU_WATER, ParallelBeamGeometry
    angles = np.linspace(0, 180, 8, endpoint=False) if angles_deg is None else angles_deg
    geom = ParallelBeamGeometry(n, angles, pixel_size_mm=pixel, det_spacing_mm=pixel)
    if sinogram is None:
        s = (np.arange(geom.n_det) - (geom.n_det - 1) / 2) * pixel
        chord = 2 * MU_WATER * np.sqrt(np.maximum(25.0 ** 2 - s ** 2, 0))
        sinogram = np.broadcast_to(chord, (slices, len(angles), geom.n_det)).astype(np.float32)
    grid = Volume(np.zeros((slices, n, n), np.float32), spacing=(pixel, pixel, 5.0))
    Measurement("ct", sinogram, grid, geom.to_dict(), info=info).save(path)
    return path


def test_a_measured_sinogram_that_does_not_fit_is_told_what_the_file_must_hold_not_to_simulate(tmp_path):
    """A user's sinogram stored (bins, views) was told to "write the measurements again (medrecon simulate)", and a
    measured file outside a prior's pixel range to "simulate the measurements at a pixel size inside the range":
    neither applies to a measured sinogram."""
    from types import SimpleNamespace

    from pipelines.problem import check_grid
    good = Measurement.load(_measured_ct(tmp_path / "good.npz"))
    _measured_ct(bad := tmp_path / "bad.npz", np.swapaxes(good.data, 1, 2))
    with pytest.raises(InputError, match=r"bad.npz: the sinogram \(2, 24, 8\) and grid \(2, 16, 16\) do not fit the "
                                         r"geometry stored with them, which needs \(slices, 8, 24\) and \(slices, 16, "
                                         r"16\): .*\(slices, views, bins\)") as e:
        Measurement.load(bad)
    assert "simulate" not in str(e.value)
    prior = SimpleNamespace(name="p", pixel_spacing_mm_range=(0.5, 1.0))
    with pytest.raises(InputError, match="outside the range prior p was trained on") as e:
        check_grid(prior, good)
    assert "simulate" not in str(e.value)
    simulated = Measurement.load(_measured_ct(tmp_path / "sim.npz", noise={"kind": "poisson"}))
    with pytest.raises(InputError, match="or simulate the measurements at a pixel size inside the range"):
        check_grid(prior, simulated)


def test_a_sinogram_that_cannot_be_line_integrals_is_refused_and_simulations_even_wide_or_noisy_pass(tmp_path,
                                                                                                     ct_nifti):
    """Detector counts (1e5 exp(-p)) were reconstructed without a word to -78 dB, and a sinogram mostly below 0
    (an offset subtracted, log(I/I0) without its minus) likewise. Refused now; what a simulation writes (a wide field
    of view of dense bone without noise, the lowest dose, strong gaussian noise) and a few negative values pass."""
    sim = tmp_path / "sim"
    tasks.simulate("sparse_view_ct_8", ct_nifti, sim, overrides=["ct.image_size=16"])
    z = dict(np.load(sim / "measurements.npz"))
    p = z["data"]
    refused = {"counts": (1e5 * np.exp(-p), r"the sinogram reaches 1.006e\+05 \(99th percentile\).* looks like "
                                            r"detector counts or intensities: give the line integrals -log\(I/I0\)"),
               "offset": (p - 1, r"half the sinogram is below -0\.\d+ .*-log\(I/I0\) are >= 0 up to noise"),
               "flipped": (-p, r"half the sinogram .* lowest 1 % reaches -\d.*log\(I/I0\) without its minus sign")}
    for name, (data, said) in refused.items():
        np.savez(bad := tmp_path / f"{name}.npz", **{**z, "data": data.astype(np.float32)})
        with pytest.raises(InputError, match=rf"{name}.npz: " + said):
            Measurement.load(bad)
    few = p.copy()
    few[0, 3, 2:8] = -0.5  # a bad detector bin's worth
    np.savez(tmp_path / "few.npz", **{**z, "data": few})
    assert Measurement.load(tmp_path / "few.npz").data.min() == -0.5
    wide = np.full((1, 32, 32), -1000.0, np.float32)  # 800 mm across: a 780 mm disc of 3000 HU bone, mu 0.08/mm
    yy, xx = np.mgrid[:32, :32] - 15.5
    wide[0][np.hypot(yy, xx) < 15.6] = 3000.0
    write_nifti(Volume(wide, spacing=(25.0, 25.0, 5.0)), tmp_path / "wide.nii.gz")
    for k, (source, sets) in enumerate(((tmp_path / "wide.nii.gz", ["noise.kind=none"]),
                                        (ct_nifti, ["noise.I0=10", "ct.image_size=16"]),
                                        (ct_nifti, ["noise.kind=gaussian", "noise.sigma=1", "ct.image_size=16"]))):
        tasks.simulate("sparse_view_ct_8", source, out := tmp_path / f"sim{k}", overrides=sets)
        data = Measurement.load(out / "measurements.npz").data
        assert data.max() > 60 or data.min() < -0.5  # as far as simulations go: 64 through the bone, -0.74 and -3.9


def test_a_measurements_modality_is_read_in_any_case_and_an_unknown_one_is_refused(tmp_path):
    """modality "CT" in a measurements.npz said "holds CT measurements but the config is for ct"."""
    upper = _measured_ct(tmp_path / "upper.npz")
    np.savez(upper, **{**np.load(upper), "modality": np.array(" CT")})
    res = tasks.reconstruct("sparse_view_ct_8", upper, tmp_path / "a", overrides=["solver.name=fbp"])
    assert res.recon.shape == (2, 16, 16) and Measurement.load(upper).modality == "ct"
    np.savez(pet := tmp_path / "pet.npz", **{**np.load(upper), "modality": np.array("PET")})
    with pytest.raises(InputError, match=r"pet.npz: cannot read measurements \(modality 'PET': give 'ct' or 'mri'\)"):
        tasks.reconstruct("sparse_view_ct_8", pet, tmp_path / "b", overrides=["solver.name=fbp"])


def test_ct_angles_in_radians_are_refused_and_views_over_less_than_the_configs_scan_are_warned(tmp_path):
    """8 views at 0..2.75 "degrees" (radians given) passed sparse_view_ct_8 without a word: the "views over N
    degrees" check ran only under a wedge config. Legitimate limited-angle data, and views truly within a narrow
    wedge under a config for it, pass."""
    fbp = ["solver.name=fbp"]
    full = np.linspace(0, 180, 8, endpoint=False)
    for name, config, angles in (("sparse", "sparse_view_ct_8", full),
                                 ("wedge", "limited_angle_ct_90", np.arange(90.0))):
        _measured_ct(bad := tmp_path / f"{name}_rad.npz", angles_deg=np.deg2rad(angles))
        with pytest.raises(InputError, match=rf"{name}_rad.npz: its {len(angles)} views span 0 to \d\.\d+ degrees, "
                                             rf"but the config expects views over {angles[-1] + angles[1]:g} degrees: "
                                             r"radians given where degrees are expected\? .*numpy.degrees"):
            tasks.reconstruct(config, bad, tmp_path / f"{name}_out", overrides=fbp)
        res = tasks.reconstruct(config, _measured_ct(tmp_path / f"{name}.npz", angles_deg=angles), tmp_path / name,
                                overrides=fbp)
        assert res.report["input_warnings"] == []
    turn = np.linspace(0, 2 * np.pi, 8)  # review: a full turn in radians with its endpoint spans 2 pi exactly
    with pytest.raises(InputError, match="radians given where degrees are expected"):
        tasks.reconstruct("sparse_view_ct_8", _measured_ct(tmp_path / "turn.npz", angles_deg=turn), tmp_path / "t",
                          overrides=fbp)
    narrow = ["ct.n_views=null", "ct.wedge_deg=3", *fbp]  # views truly 0.39 degrees apart: a config for them
    res = tasks.reconstruct("sparse_view_ct_8", _measured_ct(tmp_path / "narrow.npz", angles_deg=np.deg2rad(full)),
                            tmp_path / "narrow", overrides=narrow)
    assert res.recon.shape == (2, 16, 16)
    half = _measured_ct(tmp_path / "half.npz", angles_deg=np.linspace(0, 90, 8))  # 8 views, but over 90 degrees
    res = tasks.reconstruct("sparse_view_ct_8", half, tmp_path / "half", overrides=fbp)
    assert any("views over 103 degrees, but the config is tuned for a full 180 degree scan" in w
               for w in res.report["input_warnings"])


def test_a_ct_measurements_file_without_its_geometry_is_refused_naming_what_it_needs(tmp_path, ct_nifti):
    """A CT measurements.npz without 'geometry' failed with "TypeError: 'NoneType' object is not subscriptable" deep
    in operators.ct; a geometry that cannot be read (no angles) with a TypeError naming no file."""
    sim = tmp_path / "sim"
    tasks.simulate("sparse_view_ct_8", ct_nifti, sim, overrides=["ct.image_size=16"])
    z = dict(np.load(sim / "measurements.npz"))
    np.savez(bare := tmp_path / "bare.npz", **{k: v for k, v in z.items() if k != "geometry"})
    with pytest.raises(InputError, match=r"bare.npz: a CT measurements file needs a 'geometry' array .*angles_deg"):
        tasks.reconstruct("sparse_view_ct_8", bare, tmp_path / "a", overrides=["solver.name=fbp"])
    made = Measurement("ct", z["data"], read_volume(ct_nifti).slab(0, 1), info={"source": "my_sinogram"})
    with pytest.raises(InputError, match="my_sinogram: a CT measurements file needs a 'geometry' array"):
        Problem.build(tasks.prepare_config("sparse_view_ct_8", ["solver.name=fbp"]), made)  # in Python: a TypeError
    geometry = json.loads(str(z["geometry"]))
    del geometry["angles_deg"]
    np.savez(noangles := tmp_path / "noangles.npz", **{**z, "geometry": np.array(json.dumps(geometry))})
    with pytest.raises(InputError, match=r"noangles.npz: its geometry cannot be read \(.*angles_deg.*\); a CT "
                                         "measurements file needs a 'geometry' array"):
        Measurement.load(noangles)
    assert not (tmp_path / "a").exists()


def test_a_ct_geometry_is_read_once_per_build(tmp_path, ct_nifti, monkeypatch):
    """Measurement.check, check_view_angles, setting_warnings (acquisition_differs once per config) and
    from_measurement each read the geometry dict again: up to five times in one Problem.build. Now once
    (Measurement.ct_geometry), from a file as from a simulation."""
    from operators.ct.geometry import _Geometry
    read = []

    def counted(cls, d):
        read.append(d["type"])
        return from_dict(cls, d)
    from_dict = _Geometry.from_dict.__func__
    sim = tmp_path / "sim"
    tasks.simulate("sparse_view_ct_8", ct_nifti, sim, overrides=["ct.image_size=16"])
    monkeypatch.setattr(_Geometry, "from_dict", classmethod(counted))
    cfg = tasks.prepare_config("sparse_view_ct_8", ["solver.name=fbp", "ct.image_size=16", "ct.detector.n_det=30"])
    for given in (sim / "measurements.npz", read_volume(ct_nifti)):
        read.clear()
        p = Problem.build(cfg, given)
        assert read == ["parallel"] and p.geometry is p.measurement.ct_geometry


def test_simulate_keeps_the_inputs_grid_and_a_prior_refuses_measurements_outside_its_pixel_range(tmp_path, ct_nifti):
    sim = tmp_path / "sim"
    tasks.simulate("sparse_view_ct_8", ct_nifti, sim, overrides=["prior.path=/no/such/prior"])  # none needed here
    ref = read_volume(sim / "reference.nii.gz")  # no image_size: the phantom's own 64 x 64 at 6 mm
    assert ref.shape == (5, 64, 64) and np.allclose(ref.spacing, read_volume(ct_nifti).spacing)
    with pytest.raises(InputError, match="pixel size 6 mm is outside the range prior ct_patch_wide was trained on"):
        tasks.reconstruct("sparse_view_ct_8", sim / "measurements.npz", tmp_path / "fast")
    res = tasks.reconstruct("sparse_view_ct_8", sim / "measurements.npz", tmp_path / "tv",
                            overrides=["solver.name=admm_tv", "solver.steps=10"])
    assert res.recon.shape == (5, 64, 64)


def test_measurements_with_infinite_or_nan_values_are_refused_at_load_naming_the_first(tmp_path, ct_nifti):
    """-log(0 counts) in a measured sinogram: FBP turned its slice into NaN and the run failed at the end,
    blaming a temporary output file."""
    sim = tmp_path / "sim"
    tasks.simulate("sparse_view_ct_8", ct_nifti, sim, overrides=["ct.image_size=16"])
    z = dict(np.load(sim / "measurements.npz"))
    z["data"][1, 3, 5] = np.inf
    np.savez(bad := tmp_path / "bad.npz", **z)
    with pytest.raises(InputError, match=r"bad.npz: 1 measured values are NaN or infinite \(the first at index "
                                         r"\(1, 3, 5\)\); floor the counts"):
        Measurement.load(bad)


def test_measurements_under_a_config_tuned_for_another_acquisition_are_warned_in_the_report(tmp_path, ct_nifti):
    """8-view data reconstructed with sparse_view_ct_4 ran the 4-view tuning without a word, and report.json
    said n_views 4."""
    sim = tmp_path / "sim"
    tasks.simulate("sparse_view_ct_8", ct_nifti, sim, overrides=["ct.image_size=16"])
    sets = ["solver.name=admm_tv", "solver.steps=2"]
    res = tasks.reconstruct("sparse_view_ct_4", sim / "measurements.npz", tmp_path / "four", overrides=sets)
    assert any("8 views, but the config is tuned for 4" in w and "sparse_view_ct_8" in w
               for w in res.report["input_warnings"])
    same = tasks.reconstruct("sparse_view_ct_8", sim / "measurements.npz", tmp_path / "eight", overrides=sets)
    assert same.report["input_warnings"] == []
    # the file fixes the grid and detector: a config's own values were dropped without a word, and report.json's
    # "config as run" recorded them (pixel size 1 mm, bins 0.5 mm) for a run on the file's grid
    fixed = Measurement.load(sim / "measurements.npz").geometry
    res = tasks.reconstruct("sparse_view_ct_8", sim / "measurements.npz", tmp_path / "set",
                            overrides=[*sets, "ct.pixel_size=1", "ct.detector.spacing=0.5"])
    ct = res.report["config"]["ct"]
    assert ct["pixel_size"] == pytest.approx(fixed["pixel_size_mm"]) != 1.0
    assert ct["detector"]["spacing"] == pytest.approx(fixed["det_spacing_mm"]) and ct["image_size"] == 16
    assert sum("the measurements fix it at" in w for w in res.report["input_warnings"]) == 2


def test_mri_measurements_under_a_config_of_another_mask_layout_are_warned_and_the_hint_names_its_layout(
        tmp_path, mr_nifti):
    """2D-mask x8 data under cs_mri_x4 named cs_mri_3d_poisson (a 3D Poisson mask over (kz, kx), also x8) among the
    configs that fit, and under cs_mri_3d_poisson ran without a word; 3D-mask data under cs_mri_x8 likewise."""
    from pipelines.config import load_config
    from pipelines.problem import acquisition_differs
    for config in ("cs_mri_x8", "cs_mri_3d_poisson"):
        tasks.simulate(config, mr_nifti, tmp_path / config, overrides=["mri.image_size=16"])
    slices, volume = (Measurement.load(tmp_path / c / "measurements.npz") for c in ("cs_mri_x8", "cs_mri_3d_poisson"))
    said = acquisition_differs(load_config("cs_mri_x4", check_files=False), slices)
    assert "sampled x8, but the config is tuned for x4" in said and "(cs_mri_x8 fits the data)" in said
    said = acquisition_differs(load_config("cs_mri_3d_poisson", check_files=False), slices)
    assert said and "sampled slice by slice (mri.mode 2d), but the config is for mri.mode 3d" in said
    assert "(cs_mri_x8 fits the data)" in said
    said = acquisition_differs(load_config("cs_mri_x8", check_files=False), volume)
    assert said and "one 3D acquisition (mri.mode 3d), but the config is for mri.mode 2d" in said
    assert "(cs_mri_3d_poisson fits the data)" in said
    assert acquisition_differs(load_config("cs_mri_3d_poisson", check_files=False), volume) is None


@pytest.mark.parametrize("value", [-1000.0, 40.0])
def test_a_ct_volume_of_one_value_is_refused_as_an_mr_one_is(tmp_path, value):
    """Sixty-third session's audit: an all-air CT volume (-1000 HU throughout) reconstructed without a word while a
    constant MR volume was refused; a DICOM CT series too (its HU check trusts its rescale tags)."""
    from pipelines.modality import value_problem
    volume = Volume(np.full((2, 16, 16), value, np.float32), (1.0, 1.0, 2.0), meta={"dicom": {"Modality": "CT"}})
    write_nifti(volume, blank := tmp_path / "blank.nii.gz")
    with pytest.raises(InputError) as e:
        tasks.reconstruct("sparse_view_ct_8", blank, tmp_path / "out", overrides=["solver.name=fbp"])
    assert str(e.value).startswith(f"{blank}: every voxel is {value:g} HU: an image with no anatomy")
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()
    assert value_problem(volume, "ct", "series").startswith("series: every voxel is")


@pytest.mark.parametrize("value", [0.0, 5.0])
def test_an_mr_volume_of_one_value_is_refused_naming_the_file(tmp_path, value):
    """An all-zero (or constant) volume under an MRI config reconstructed to "PSNR 58.89 dB" with no warning, while
    CT configs refused it and evaluate refuses a constant reference."""
    write_nifti(Volume(np.full((2, 16, 16), value, np.float32), (1.0, 1.0, 2.0)), blank := tmp_path / "blank.nii.gz")
    with pytest.raises(InputError, match=rf"blank.nii.gz: every voxel is {value:g}: an image with no signal"):
        tasks.reconstruct("cs_mri_x4", blank, tmp_path / "out", overrides=["solver.name=zero_filled"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,config", [(s.name, {"ct": "sparse_view_ct_8", "mri": "cs_mri_x4"}[m])
                                         for s in SOLVERS.values() if not s.needs_prior for m in s.modalities])
def test_every_classical_solver_reconstructs_each_modality_it_lists(tmp_path, ct_nifti, mr_nifti, name, config):
    """The registry's modalities are a promise (README's solver table): SIRT listed MRI and stopped with a
    TypeError on its complex data."""
    source = ct_nifti if config.startswith("sparse") else mr_nifti
    size = "ct.image_size=32" if config.startswith("sparse") else "mri.image_size=32"
    res = tasks.reconstruct(config, source, tmp_path / name, overrides=[f"solver.name={name}", "solver.steps=5", size])
    ref = read_volume(tmp_path / name / "simulation" / "reference.nii.gz").data
    assert np.corrcoef(ref.ravel(), res.recon.data.ravel())[0, 1] > 0.5


@pytest.mark.parametrize("kind", ["dicom", "nrrd"])
def test_measurements_simulated_from_any_format_reconstruct(tmp_path, ct_nifti, kind):
    """A measurements.npz simulated from DICOM or NRRD (no NIfTI codes to keep) crashed after the whole solve
    (its grid's meta was None)."""
    from medrecon.io import write_volume
    src = read_volume(ct_nifti).slab(0, 2)
    path = tmp_path / ("src" if kind == "dicom" else "src.nrrd")
    write_dicom_series(src, path, modality="CT") if kind == "dicom" else write_volume(src, path)
    sets = ["solver.name=fbp", "ct.image_size=32"]
    tasks.simulate("sparse_view_ct_8", path, tmp_path / "sim", sets)
    res = tasks.reconstruct("sparse_view_ct_8", tmp_path / "sim" / "measurements.npz", tmp_path / "r", sets)
    import hashlib  # a measurements file is identified by its bytes
    assert res.report["input_sha256"] == hashlib.sha256((tmp_path / "sim" / "measurements.npz").read_bytes()).hexdigest()
    ref = read_volume(tmp_path / "sim" / "reference.nii.gz").data
    assert np.corrcoef(ref.ravel(), read_volume(tmp_path / "r" / "recon.nii.gz").data.ravel())[0, 1] > 0.6


def test_the_config_report_json_records_reruns_on_the_same_grid(tmp_path, ct_nifti):
    """report.json's config recorded the grid's size but not its pixel: a run whose grid was moved (into a prior's
    pixel range, or by image_size) reran at field of view / size, another pixel (152 HU apart)."""
    import yaml
    res = tasks.reconstruct("sparse_view_ct_8", ct_nifti, tmp_path / "a", ["solver.name=fbp", "ct.image_size=40"])
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(res.report["config"]))
    assert res.report["config"]["ct"]["pixel_size"] == pytest.approx(res.recon.spacing[0])
    again = tasks.reconstruct(tmp_path / "a.yaml", ct_nifti, tmp_path / "b")
    assert again.recon.spacing == res.recon.spacing and np.array_equal(again.recon.data, res.recon.data)


def test_report_json_identifies_the_input_voxels_and_the_software(tmp_path, ct_nifti):
    """A DICOM slice edited in place keeps its names and sizes (all files_sha256 sees); the version number is the
    same in every commit; bf16 results depend on the thread count. report.json now records each."""
    sets = ["solver.name=fbp", "ct.image_size=16"]
    a = tasks.reconstruct("sparse_view_ct_8", ct_nifti, tmp_path / "a", sets).report
    src = read_volume(ct_nifti)
    write_nifti(src.with_data(src.data + np.float32(1.0)), edited := tmp_path / "phantom.nii.gz")
    b = tasks.reconstruct("sparse_view_ct_8", edited, tmp_path / "b", sets).report
    assert len(a["input_sha256"]) == 64 and a["input_sha256"] != b["input_sha256"]
    assert a["runtime"]["torch_threads"] == torch.get_num_threads() >= 1
    assert {"medrecon_commit", "astra-toolbox", "pydicom", "SimpleITK"} <= set(a["software"])
    if (Path(__file__).resolve().parents[1] / ".git").exists():  # a checkout: its commit is read, and git is never
        import subprocess  # asked in a way that rewrites its index (git describe --dirty did, locking a user's git)
        from pipelines import outputs
        calls, real = [], subprocess.run
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(outputs.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or real(cmd, **kw))
            assert outputs._checkout_commit.__wrapped__()  # uncached: git really runs
        assert calls and all(c[:2] == ["git", "--no-optional-locks"] and "describe" not in c for c in calls)


def test_classical_runs_say_what_they_ignore_or_cannot_do(tmp_path, ct_nifti):
    """--resample with a solver that has no prior, and z-only TV on one slice (unregularised), are warned."""
    write_nifti(read_volume(ct_nifti).slab(2, 3), one := tmp_path / "one.nii.gz")
    sets = ["solver.name=admm_tv", "solver.steps=2", "ct.image_size=16"]
    res = tasks.reconstruct("sparse_view_ct_8", one, tmp_path / "one", overrides=sets, resample=True)
    warned = " ".join(res.report["input_warnings"])
    assert "--resample changes nothing for solver admm_tv" in warned and "set solver.tv=3d" in warned
    res = tasks.reconstruct("sparse_view_ct_8", one, tmp_path / "three", overrides=sets + ["solver.tv=3d"])
    assert res.report["input_warnings"] == []
    res = tasks.reconstruct("sparse_view_ct_8", one, tmp_path / "pixel", resample=True, overrides=[
        "solver.name=fbp", "ct.pixel_size=4"])  # the grid the warning would tell them to set is set
    assert res.report["input_warnings"] == ["--resample changes nothing for solver fbp, which uses no prior: the "
                                            "grid is the one ct.pixel_size set"] and res.recon.spacing[0] == 4
    src = read_volume(ct_nifti).slab(0, 2)
    write_nifti(src.__class__(src.data, (src.spacing[0], 2 * src.spacing[1], src.spacing[2]), src.origin,
                              src.direction), oblong := tmp_path / "oblong.nii.gz")  # 2:1 pixels: --resample is used
    res = tasks.reconstruct("sparse_view_ct_8", oblong, tmp_path / "oblong", overrides=sets[:2], resample=True)
    assert not any("--resample changes nothing" in w for w in res.report["input_warnings"])
    res = tasks.reconstruct("sparse_view_ct_8", one, tmp_path / "short", overrides=sets + ["ct.detector.n_det=12"])
    assert any("ct.detector.n_det 12: the detector does not see the whole image in every view (23 bins would)" in w
               for w in res.report["input_warnings"])


@pytest.mark.parametrize("name", ["res.nii.gz", "notes.txt"])
def test_an_output_folder_named_or_existing_as_a_file_is_refused(tmp_path, ct_nifti, name):
    """-o res.nii.gz made a folder of that name; --overwrite replaced a user's notes.txt by a folder."""
    out = tmp_path / name
    if name.endswith(".txt"):
        out.write_text("mine")
    with pytest.raises(InputError, match="the output is a folder"):
        tasks.reconstruct("sparse_view_ct_8", ct_nifti, out, overwrite=True,
                          overrides=["solver.name=fbp", "ct.image_size=16"])
    assert not out.exists() or out.read_text() == "mine"


def test_nonneg_holds_values_at_mu_zero_whatever_the_priors_window(ct_nifti):
    """``solver.nonneg`` keeps mu >= 0 (-1000 HU): a CT prior trained on a narrower window (-200..200 HU) must not
    floor the reconstruction at its window's bottom (air and lung came back at -200 HU)."""
    from pipelines.config import load_config
    for window, floor_hu in (((-1000.0, 1000.0), -1000.0), ((-200.0, 200.0), -1000.0)):
        prior = GaussianDenoiser(mean=0.0, var=0.1)
        prior.intensity = IntensityMap(*window, unit="HU")
        cfg = load_config("sparse_view_ct_8", ["solver.steps=2"])
        problem = Problem.build(cfg, read_volume(ct_nifti), prior=prior)
        lo, hi = problem.bounds(cfg.solver)
        assert float(problem.intensity.to_physical(lo)) == pytest.approx(floor_hu, abs=1e-3) and hi == np.inf


def test_one_bright_voxel_does_not_rescale_simulated_mr_tissue():
    """Simulated MR magnitude is normalised by its 99.9th percentile, not its maximum: one voxel at 50x (a vessel,
    an artefact) put the tissue near 0.02, where the prior took much of it for background (11.9 dB against 3D
    ADMM-TV's 21.3 on a real brain)."""
    from pipelines.config import load_config
    from pipelines.simulation import simulate_volume
    cfg = load_config("cs_mri_x4")
    clean = _mr_volume((4, 96, 96))
    spiked = clean.data.copy()
    spiked[2, 40, 40] = 50 * clean.data.max()
    ref_clean, _ = simulate_volume(cfg, clean, 96)
    ref_spiked, _ = simulate_volume(cfg, clean.with_data(spiked), 96)
    tissue = ref_clean.data > 0.2
    tissue[2, 36:45, 36:45] = False
    ratio = ref_spiked.data[tissue] / ref_clean.data[tissue]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.01)


def test_a_non_square_input_comes_back_on_its_own_grid(tmp_path):
    """The solvers work on a square grid (the larger side; the other padded); the outputs, the reference and the
    scores are the input's own extent: a 40 x 64 slab came back as 64 x 64 with 24 rows of padded air, which also
    raised its PSNR (2.2 dB on a reviewer's 96 x 160 slab)."""
    src = ct_phantom((3, 64, 64), seed=3)
    # an even and an odd difference between the sides (odd: the square grid is aligned with the input's pixels)
    for k, (rows, cols) in enumerate(((slice(12, 52), slice(0, 64)), (slice(12, 51), slice(0, 64)),
                                      (slice(0, 64), slice(1, 64)))):
        slab = Volume(src.data[:, rows, cols].copy(), src.spacing,
                      tuple(src.world_lps([float(cols.start), float(rows.start), 0.0])), src.direction)
        write_nifti(slab, p := tmp_path / f"slab{k}.nii.gz")
        res = tasks.reconstruct("sparse_view_ct_8", p, tmp_path / f"out{k}", overrides=["solver.name=fbp"])
        for f in ("recon.nii.gz", "simulation/reference.nii.gz"):
            got = read_volume(tmp_path / f"out{k}" / f)
            assert got.shape == slab.shape and np.allclose(got.origin, slab.origin, atol=1e-3), (k, f)
        ref = read_volume(tmp_path / f"out{k}" / "simulation" / "reference.nii.gz")
        assert np.allclose(ref.data, np.maximum(slab.data, -1000), atol=1e-3), k  # the input's own pixels
        again = tasks.reconstruct("sparse_view_ct_8", tmp_path / f"out{k}" / "simulation" / "measurements.npz",
                                  tmp_path / f"again{k}", overrides=["solver.name=fbp"])
        assert again.recon.shape == slab.shape and np.allclose(again.recon.data, res.recon.data, atol=1e-3)
        on_input = tasks.evaluate(slab, res.recon, data_range=2000.0)["psnr"]["axial"]
        assert res.report["vs_reference"]["psnr"]["axial"] == pytest.approx(on_input, abs=1.5)


def test_a_slab_too_narrow_to_adapt_on_is_skipped_not_a_failure(tmp_path):
    """Self-adaptation's size check must see the first result's own extent (the cropped output), not the solver's
    square grid: a 40 x 128 MR slab passed the check on 128 x 128 and then failed after the first pass with a
    training option's message."""
    mr = _mr_volume((3, 128, 128))
    slab = Volume(mr.data[:, 44:84].copy(), (1.0, 1.0, 2.0), tuple(mr.world_lps([0.0, 44.0, 0.0])))
    write_nifti(slab, p := tmp_path / "slab.nii.gz")
    res = tasks.reconstruct("cs_mri_x4", p, tmp_path / "out", overrides=["solver.steps=2",
                                                                       "solver.cross_validate.enabled=false"])
    assert res.recon.shape == slab.shape and "too small" in res.report["self_adapt"]["skipped"]


def test_report_warnings_name_the_input_without_the_folders_above_it(tmp_path, monkeypatch):
    """report.json's input_warnings write the input's path as its name; an input given as '.' (run inside the
    series folder) deleted every '.' of the warnings (2.5 mm became 25 mm)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ser").mkdir()
    warning = f"{tmp_path / 'ser' / 'IM1.dcm'}: slices 2.5 mm apart"
    assert tasks.named_only(warning, Path("ser")) == "ser/IM1.dcm: slices 2.5 mm apart"
    monkeypatch.chdir(tmp_path / "ser")
    assert tasks.named_only(warning, Path(".")) == "ser/IM1.dcm: slices 2.5 mm apart"


def test_a_derived_mr_series_is_in_the_sources_units(tmp_path):
    """The derived DICOM of an MR series holds the source's units as whole numbers (RescaleSlope 1): it held the
    normalised magnitude (0..1) through a RescaleSlope of about 1e-5, which MR viewers that ignore rescaling (the MR
    Image IOD has no Modality LUT) showed as -32000..32000 with a window of 0.3 / 1."""
    import pydicom
    from pipelines.config import load_config
    from pipelines.simulation import simulate_volume
    mr = _mr_volume((3, 64, 64))
    src = Volume(np.round(mr.data * 30000).astype(np.float32), mr.spacing, mr.origin,
                 meta={"dicom": {"Modality": "MR", "PatientID": "P1"}})
    write_dicom_series(src, tmp_path / "src")
    res = tasks.reconstruct("cs_mri_x4", tmp_path / "src", tmp_path / "out", overrides=["solver.name=zero_filled"])
    first = pydicom.dcmread(sorted((tmp_path / "out" / "dicom").iterdir())[0])
    assert float(first.RescaleSlope) == 1.0 and float(first.RescaleIntercept) == 0.0
    derived = read_volume(tmp_path / "out" / "dicom")
    scale = float(np.percentile(read_volume(tmp_path / "src").data, 99.9))
    assert np.allclose(derived.data, res.recon.data * scale, atol=0.6)  # whole numbers of the source's units
    assert 20000 < float(np.percentile(derived.data, 99)) < 40000
    # a source of small floats (a Philips series after rescaling, a quantitative map) is not rounded to 4 levels
    small = Volume(mr.data * 3.2, mr.spacing, mr.origin, meta={"dicom": {"Modality": "MR", "PatientID": "P1"}})
    write_dicom_series(small, tmp_path / "small")
    res = tasks.reconstruct("cs_mri_x4", tmp_path / "small", tmp_path / "out_small",
                            overrides=["solver.name=zero_filled"])
    derived = read_volume(tmp_path / "out_small" / "dicom")
    assert len(np.unique(derived.data)) > 100 and float(derived.data.max()) < 5
    # the scale is the input's own percentile, not the padded square's (an oblong slab's zeros lowered it)
    _, meas = simulate_volume(load_config("cs_mri_x4"), mr.with_data(mr.data).slab(0, 3).crop((0, 40), (0, 64)), 64)
    assert meas.info["scale"] == pytest.approx(float(np.percentile(mr.data[:3, :40, :64], 99.9)), rel=1e-6)


def test_scores_are_over_the_modality_window_and_a_diverged_run_says_so(tmp_path, ct_nifti, monkeypatch):
    """report.json scores CT over 2000 HU whatever window the prior maps (a public checkpoint's -1024..3071 scored
    6.2 dB higher); a run that diverges to NaN is one line naming the solver (it was a ValueError traceback about
    the reference, or a message about a temporary file); a reversed preview window is refused."""
    from pipelines.config import load_config
    prior = GaussianDenoiser(mean=0.0, var=0.1)
    prior.intensity = IntensityMap(-1024.0, 3071.0, unit="HU")
    cfg = load_config("sparse_view_ct_8", ["solver.name=fbp"])
    problem = Problem.build(cfg, read_volume(ct_nifti), prior=prior)
    assert problem.score(problem.reference)["data_range"] == 2000.0
    monkeypatch.setattr(Problem, "_run", lambda self, *a, **k: problem_module.Solution(
        torch.full(self.shape, float("nan"))))
    with pytest.raises(InputError, match="solver fbp diverged: .* NaN or infinite; check the data's units") as e:
        problem.solve()  # fbp has no step sizes to lower (the message named solver.zeta, solver.lambda_proj)
    assert "zeta" not in str(e.value)
    with pytest.raises(InputError, match=r"solver dps diverged: .* lower its step sizes \(solver\.zeta\)"):
        problem.solve(load_config("sparse_view_ct_8", ["solver.name=dps"]).solver)
    with pytest.raises(InputError, match="window .* low < high"):
        load_config("sparse_view_ct_8", ["outputs.window=[1000,-1000]"])


def test_evaluate_compares_one_grid_stored_in_two_axis_orders(tmp_path, ct_nifti):
    """A RAS copy of a result (nibabel's as_closest_canonical) is the same voxel grid stored in another order:
    evaluate aligns the two (Volume.nearest_lps) and says so; it was refused with a message naming only spacing
    and origin, which were equal."""
    vol = read_volume(ct_nifti)
    ras = nib.as_closest_canonical(nib.load(ct_nifti))
    nib.save(ras, copy := tmp_path / "ras.nii.gz")
    noisy = vol.with_data(vol.data + np.random.default_rng(0).normal(0, 20, vol.shape).astype(np.float32))
    write_nifti(noisy, noisy_path := tmp_path / "noisy.nii.gz")
    direct = tasks.evaluate(ct_nifti, noisy_path, data_range=2000.0)
    crossed = tasks.evaluate(copy, noisy_path, data_range=2000.0)
    assert crossed["psnr"]["volume"] == pytest.approx(direct["psnr"]["volume"], abs=1e-6)
    assert any("axis orders" in n for n in crossed["notes"])


def test_python_api_names_stay_functions_once_their_modules_are_loaded(tmp_path, ct_nifti):
    """``pipelines.simulate`` / ``pipelines.batch`` are the functions even after their modules were imported (the
    package attribute a submodule import binds used to shadow them: the second call hit a module)."""
    import pipelines
    import pipelines.batching
    import pipelines.simulation  # noqa: F401  (what reconstruct imports on its way)

    assert pipelines.batch is pipelines.batching.batch
    for i in range(2):
        pipelines.simulate("sparse_view_ct_8", ct_nifti, tmp_path / f"sim{i}", overrides=["ct.image_size=32"])
        res = pipelines.reconstruct("sparse_view_ct_8", tmp_path / f"sim{i}" / "measurements.npz", tmp_path / f"rec{i}",
                                    overrides=["ct.image_size=32", "solver.name=fbp"])
        assert (tmp_path / f"rec{i}" / "recon.nii.gz").is_file() and res is not None


def test_python_callers_get_one_line_errors_for_what_the_cli_cannot_pass(tmp_path, mr_nifti):
    """A research script's mistakes: a complex array or a bad geometry in a Volume, NaN voxels in an in-memory
    Volume, overrides as one string or a dict, a Volume where a path is wanted, a prior whose card records its
    unit but no modality (the README's own training recipe before it passed modality=)."""
    from types import SimpleNamespace

    from pipelines.compare import compare_methods
    from pipelines.problem import check_domain
    ok = np.zeros((2, 16, 16), np.float32)
    with pytest.raises(InputError, match="type complex128 is not supported.*numpy.abs"):
        Volume(ok * np.exp(0.7j))
    for bad, what in (({"spacing": (1.0, 1.0)}, "spacing must be three"), ({"origin": (0, np.nan, 0)}, "origin"),
                      ({"direction": np.zeros((3, 3))}, "direction must be an invertible")):
        with pytest.raises(ValueError, match=what):
            Volume(ok, **bad)
    nan = ok.copy()
    nan[0, 3, 3] = np.nan
    with pytest.raises(InputError, match="the input Volume: 1 NaN"):
        compare_methods("cs_mri_x4", Volume(nan), {"zf": {"name": "zero_filled"}})
    with pytest.raises(InputError, match="NaN"):
        write_nifti(Volume(nan), tmp_path / "nan.nii.gz")
    assert not (tmp_path / "nan.nii.gz").exists()

    assert tasks.prepare_config("cs_mri_x4", (f"solver.steps={n}" for n in [7])).solver.steps == 7  # a generator
    res = tasks.reconstruct("cs_mri_x4", mr_nifti, tmp_path / "one", overrides="solver.name=zero_filled")
    assert res.report["config"]["solver"]["name"] == "zero_filled"  # one string is one override
    with pytest.raises(InputError, match="overrides: give a list of 'KEY=VALUE' strings.*not dict"):
        tasks.reconstruct("cs_mri_x4", mr_nifti, tmp_path / "two", overrides={"solver.name": "zero_filled"})
    with pytest.raises(InputError, match="input: give a path, not Volume.*write_nifti"):
        tasks.reconstruct("cs_mri_x4", read_volume(mr_nifti), tmp_path / "three")
    with pytest.raises(InputError, match="data_range: give a number"):
        tasks.evaluate(read_volume(mr_nifti), read_volume(mr_nifti), data_range="wide")

    cfg = tasks.prepare_config("cs_mri_x4", ["solver.name=zero_filled"])
    hu_prior = SimpleNamespace(name="own", card={"intensity": {"unit": "HU"}})  # modality null, unit HU
    with pytest.raises(InputError, match="prior own was trained on values in HU but the config's are in normalised"):
        check_domain(cfg, hu_prior, read_volume(mr_nifti))
    check_domain(cfg, SimpleNamespace(name="own", card={"intensity": {"unit": "normalised magnitude"}}),
                 read_volume(mr_nifti))
    check_domain(cfg, SimpleNamespace(name="own", card={"modality": "MRI"}), read_volume(mr_nifti))  # any case
    with pytest.raises(InputError, match="prior own was trained on ct but the config is for mri"):
        check_domain(cfg, SimpleNamespace(name="own", card={"modality": "CT"}), read_volume(mr_nifti))


def test_simulated_noise_and_mask_follow_the_config():
    """MRI: the k-space noise is noise.sigma per real and imaginary part on the sampled points (0 elsewhere) and
    the mask is the config's own (kind, acceleration, centre fraction, seed); CT: noise.seed draws the noise."""
    from operators.mri import make_mask
    from pipelines.simulation import simulate_mri
    src = _mr_volume((2, 64, 64))
    cfg = tasks.prepare_config("cs_mri_x4", ["mri.mask.center_fraction=0.12", "mri.mask.seed=3", "noise.sigma=0.01"])
    quiet = tasks.prepare_config("cs_mri_x4", ["mri.mask.center_fraction=0.12", "mri.mask.seed=3", "noise.kind=none"])
    _, noisy = simulate_mri(cfg, src, 64)
    _, clean = simulate_mri(quiet, src, 64)
    m = cfg.mri.mask
    mask = np.broadcast_to(np.asarray(make_mask(m.kind, (64, 64), m.acceleration, m.center_fraction, m.seed), bool),
                           noisy.data.shape)
    assert np.array_equal(np.broadcast_to(np.asarray(noisy.mask, bool), noisy.data.shape), mask)
    d = noisy.data - clean.data
    assert np.all(d[~mask] == 0)
    for part in (d[mask].real, d[mask].imag):
        assert np.std(part) == pytest.approx(0.01, rel=0.1)

    ct = ct_phantom((1, 32, 32), seed=0)
    seeds = [simulate_ct(tasks.prepare_config("sparse_view_ct_8", [f"noise.seed={s}"]), ct, 32)[1].data
             for s in (0, 0, 1)]
    assert np.array_equal(seeds[0], seeds[1]) and not np.array_equal(seeds[0], seeds[2])


def test_the_warm_start_and_admm_tv_show_their_progress(tmp_path, ct_nifti, capsys):
    """The 3D ADMM-TV warm start (most of a large series' time: ~690 s of 865 s on 20 x 512^2) and the ADMM-TV
    solver show a bar with progress on, nothing with it off; the sampler's bar follows the warm start's."""
    common = ["ct.image_size=32", "ct.pixel_size=2.0", "solver.steps=2", "solver.warm_start={lam: 1.0, iters: 4}"]
    tasks.reconstruct("sparse_view_ct_8", ct_nifti, tmp_path / "a", common, progress=True)
    err = capsys.readouterr().err
    assert "warm start (3D ADMM-TV)" in err and "4/4" in err and err.index("4/4") < err.index("FastSampler")
    tasks.reconstruct("sparse_view_ct_8", ct_nifti, tmp_path / "b", ["ct.image_size=32", "solver.name=admm_tv",
                                                                      "solver.steps=3"], progress=True)
    assert "ADMM-TV" in (err := capsys.readouterr().err) and "3/3" in err
    tasks.reconstruct("sparse_view_ct_8", ct_nifti, tmp_path / "c", common)
    assert "ADMM-TV" not in capsys.readouterr().err


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's /proc/self/clear_refs")
def test_compare_peak_memory_counts_a_short_lived_allocation_once():
    """A comparison's peak memory is the block's own: 128 MiB touched and freed inside it count (a 20 ms poll
    could miss them), and memory the process held at its peak before the block does not."""
    from pipelines.compare import PeakMemory
    big = np.ones(256 * 2 ** 20 // 8)  # the process's earlier peak
    del big
    with PeakMemory(torch.device("cpu")) as mem:
        block = np.ones(128 * 2 ** 20 // 8)
        del block
    assert 120 < mem.cpu_mib < 160


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's /proc/self/clear_refs")
def test_report_gives_the_series_own_peak_memory_not_the_process(tmp_path, mr_nifti):
    """A batch worker runs many series: each report.json's rss peak is that series' (a 4 x 512^2 series before a
    small one gave the small one 1406 MiB against 779 run alone)."""
    from pipelines.outputs import peak_memory
    big = np.ones(512 * 2 ** 20 // 8)  # 512 MiB touched, then freed: the process's peak, not the series'
    del big
    before = peak_memory()["rss_mib"]
    rep = tasks.reconstruct("cs_mri_x4", mr_nifti, tmp_path / "r", ["solver.name=zero_filled"]).report
    assert rep["peak_memory"]["rss_mib"] < before - 300


def test_an_mr_prior_trained_at_a_low_percentile_is_warned_about():
    """--mri-percentile was written into the card and never used: an MR prior trained on volumes divided by their
    90th percentile sees reconstruct's tissue (divided by the 99.9th) at about half its training brightness, with no
    word. The bundled priors (99.5, in the card's text) pass; a new card records the number."""
    from types import SimpleNamespace

    from pipelines.commands_train import training_intensity
    from pipelines.config import load_config
    from pipelines.modality import Modality
    from pipelines.problem import setting_warnings, training_percentile

    cfg = load_config("cs_mri_x4", [])
    meas = SimpleNamespace(modality="mri", mask=None, geometry=None, info={}, grid=None, data=None, coil_maps=None)
    for pct, warned in ((90.0, True), (99.5, False)):
        imap, _ = training_intensity(Modality.mri, None, pct)
        prior = SimpleNamespace(name="mine", card={"intensity": imap})
        assert training_percentile(prior) == pct
        said = [w for w in setting_warnings(cfg, meas, None, prior, False) if "percentile" in w]
        assert bool(said) == warned and (not warned or "90th percentile" in said[0])
    from medrecon.priors import load_prior
    assert training_percentile(load_prior("bundled:mri_patch")) == 99.5  # the card's text, before the number


def test_evaluate_says_when_the_two_volumes_hold_other_units(tmp_path):
    """An MR run's dicom/ holds the source's units and its reference the normalised magnitude: evaluate scored
    -53 dB without a word. Volumes on one scale get no note."""
    rng = np.random.default_rng(0)
    ref = Volume(rng.uniform(0, 1, (3, 16, 16)).astype(np.float32), (1.0, 1.0, 2.0))
    near = tasks.evaluate(ref, ref.with_data(ref.data * 1.05))
    assert not any("other scales" in n for n in near.get("notes", []))
    far = tasks.evaluate(ref, ref.with_data(ref.data * 900.0))
    assert any("other scales" in n and "recon.nii.gz" in n for n in far["notes"])


def test_snapshots_asked_of_a_solver_that_takes_none_are_warned_about(tmp_path, ct_nifti):
    """outputs.snapshots_every on admm_tv wrote no snapshots/ and said nothing (solver.samples is refused there)."""
    res = tasks.reconstruct("sparse_view_ct_8", ct_nifti, tmp_path / "a", overrides=[
        "solver.name=admm_tv", "solver.steps=2", "ct.image_size=16", "outputs.snapshots_every=1"])
    assert any("writes no snapshots" in w for w in res.report["input_warnings"])
    assert not (tmp_path / "a" / "snapshots").exists()


def test_a_measurements_file_is_named_in_its_errors_and_takes_no_series(tmp_path, ct_nifti):
    """Reconstructing out/sim/measurements.npz with an MRI config said 'phantom.nii.gz: holds ct measurements', a
    file the user had not given; --series on it was passed over without a word."""
    sim = tmp_path / "sim"
    tasks.simulate("sparse_view_ct_8", ct_nifti, sim, overrides=["ct.image_size=16"])
    npz = sim / "measurements.npz"
    with pytest.raises(InputError, match=rf"{npz} \(simulated from phantom.nii.gz\): holds ct measurements but the "
                                         "config is for mri"):
        tasks.reconstruct("cs_mri_x4", npz, tmp_path / "a")
    with pytest.raises(InputError, match="is a measurements file; --series applies to a folder of DICOM files"):
        tasks.reconstruct("sparse_view_ct_8", npz, tmp_path / "b", series="1.2.3", overrides=["solver.name=fbp"])


def test_the_page_shows_the_volumes_in_memory_without_reading_them_back(tmp_path, caplog):
    """The series page read recon.nii.gz and reference.nii.gz back from the output's temporary folder: for an input
    without sform and qform each re-read warned again, naming .medrecon-tmp-... paths gone once the run ended."""
    import logging

    from pipelines.phantoms import ct_phantom

    src = ct_phantom((2, 32, 32), seed=1)
    img = nib.Nifti1Image(src.data.transpose(2, 1, 0), np.diag([2.0, 2.0, 3.0, 1.0]))
    img.set_sform(None, code=0)
    img.set_qform(None, code=0)
    nib.save(img, tmp_path / "nocodes.nii.gz")
    with caplog.at_level(logging.WARNING, logger="medrecon"):
        tasks.reconstruct("sparse_view_ct_8", tmp_path / "nocodes.nii.gz", tmp_path / "out",
                          overrides=["solver.name=fbp"])
    assert not [r.getMessage() for r in caplog.records if ".medrecon-tmp" in r.getMessage()]
    assert (tmp_path / "out" / "index.html").is_file()


def test_an_output_path_that_cannot_be_used_is_refused_before_the_work_saying_why(tmp_path, ct_nifti, monkeypatch):
    """reconstruct -o afile said 'afile already exists; pass --overwrite'; with --overwrite it then refused the file
    as an output folder, after the reading and the simulation, and told to drop a suffix it did not have. -o . and
    -o the input's folder said 'already exists; pass --overwrite', which was then refused too."""
    (tmp_path / "afile").write_text("mine")
    for folder in ("here", "in"):
        (tmp_path / folder).mkdir()
    (tmp_path / "here" / "notes.txt").write_text("mine")  # the folder the shell is in
    shutil.copy(ct_nifti, inp := tmp_path / "in" / "ct.nii.gz")
    monkeypatch.chdir(tmp_path / "here")
    for out, why in ((tmp_path / "afile", "afile is an existing file, not a folder; the output is a folder"),
                     (".", "the output would replace the folder this command runs in"),
                     (inp.parent, "contains or lies inside the input")):
        for overwrite in (False, True):
            with pytest.raises(InputError, match=why) as e:
                tasks.reconstruct("sparse_view_ct_8", inp, out, overwrite=overwrite, overrides=["solver.name=fbp"])
            assert "--overwrite" not in str(e.value) and "suffix" not in str(e.value)
    assert (tmp_path / "afile").read_text() == "mine" and os.listdir(tmp_path / "in") == ["ct.nii.gz"]


def test_running_out_of_memory_after_the_solve_keeps_the_result(tmp_path, ct_nifti, monkeypatch):
    """A MemoryError while scoring or drawing the page, after a finished solve, threw the whole output away (both
    ran inside the output's atomic write) and blamed the problem's size."""
    def short(*a, **k):
        raise MemoryError
    monkeypatch.setattr(tasks, "write_series_page", short)
    monkeypatch.setattr(problem_module.Problem, "score", short)
    res = tasks.reconstruct("sparse_view_ct_8", ct_nifti, tmp_path / "out", overrides=["solver.name=fbp",
                                                                                       "ct.image_size=16"])
    assert (tmp_path / "out" / "recon.nii.gz").is_file() and res.report["vs_reference"] is None
    assert not (tmp_path / "out" / "index.html").exists()  # the page left out, said in the log


def test_inputs_too_large_for_memory_are_refused_before_reading_in_every_format(tmp_path, monkeypatch):
    """Only NIfTI and npy were checked: a DICOM series or an NRRD too large was read until SimpleITK failed to
    allocate (told as a damaged file); a 4D NIfTI was told it does not fit before being refused as 4D. The
    available memory also counts the container's and ulimit's limits (tested where they apply)."""
    import SimpleITK as sitk

    from medrecon.io import common

    vol = Volume(np.zeros((8, 64, 64), np.float32))
    write_dicom_series(vol, tmp_path / "dcm")
    sitk.WriteImage(sitk.GetImageFromArray(vol.data), str(tmp_path / "v.nrrd"))
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 40, 3), np.float32), np.eye(4)), tmp_path / "four.nii.gz")  # > 64 KiB
    np.save(tmp_path / "four.npy", np.zeros((3, 8, 64, 64), np.float32))
    monkeypatch.setattr(common, "available_memory", lambda: 64 * 1024)
    for path in (tmp_path / "dcm", tmp_path / "v.nrrd"):
        with pytest.raises(InputError, match=r"as float32 needs .* GiB but only .* is available"):
            read_volume(path)
    for four in ("four.nii.gz", "four.npy"):  # too large for the memory too: refused as 4D, first
        with pytest.raises(InputError, match="split 4D data into single volumes first"):
            read_volume(tmp_path / four)


@pytest.mark.parametrize("config, key, value", [("sparse_view_ct_8", "ct.n_views", 4096),
                                                ("cs_mri_x4", "mri.n_coils", 512)])
def test_a_simulation_too_large_for_the_memory_is_one_line_naming_its_key(config, key, value, monkeypatch):
    """ct.n_views=1e9 in `simulate` was killed by the kernel without a word (mri.n_coils=1e8 ran until stopped): the
    simulated data's size is checked first, the message naming the key (here a machine of 256 KiB)."""
    from medrecon.io import common
    from pipelines.simulation import simulate_volume

    cfg = load_config(config, [f"{key}={value}", *(["mri.coils=multi"] if key.startswith("mri") else [])])
    src = Volume(np.zeros((2, 16, 16), np.float32), (1.0, 1.0, 1.0))
    monkeypatch.setattr(common, "available_memory", lambda: 256 * 1024)
    with pytest.raises(InputError, match=rf"simulating 2 slices of 16x16 with {value} .* lower {re.escape(key)}"):
        simulate_volume(cfg, src, 16)
    monkeypatch.setattr(common, "available_memory", lambda: None)  # where unknown, nothing is refused
    assert simulate_volume(cfg, src, 16)[1].data.size > 0


def test_slices_of_one_pixel_run_the_default_sampler_on_one_scale_and_wide_slices_are_no_dicom(tmp_path):
    """A (4, 1, 1) volume crashed sparse_view_ct_8's fast sampler: its two-scale pass halved the 1-pixel side to 0.
    A slice wider than 65535 pixels failed to write as DICOM with 'choose a location with enough free space'."""
    np.save(tmp_path / "thin.npy", np.random.default_rng(0).uniform(-1000, 1000, (4, 1, 1)).astype(np.float32))
    res = tasks.reconstruct("sparse_view_ct_8", tmp_path / "thin.npy", tmp_path / "out",
                            overrides=["solver.steps=2", "ct.pixel_size=1"])
    assert "have no half size" in res.report["two_scale"]["off"]
    with pytest.raises(InputError, match="exceed DICOM's 65535 Rows / Columns"):
        write_dicom_series(Volume(np.zeros((1, 1, 65536), np.float32)), tmp_path / "wide")


def test_a_sinogram_that_looks_like_transmitted_fractions_is_warned_of_in_the_report(tmp_path):
    """I/I0 given as a sinogram passed as small line integrals without a word; it is now warned of in report.json's
    input_warnings (a warning: true line integrals of a cropped hollow object can look so), and line integrals are
    not."""
    good = _measured_ct(tmp_path / "good.npz")
    frac = _measured_ct(tmp_path / "frac.npz", np.exp(-Measurement.load(good).data))
    said = [[w for w in tasks.reconstruct("sparse_view_ct_8", f, tmp_path / f.stem, overrides=[
        "solver.name=fbp", "outputs.dicom=false", "outputs.preview=false"]).report["input_warnings"]
        if "transmitted fractions" in w] for f in (good, frac)]
    assert said[0] == [] and len(said[1]) == 1 and said[1][0].startswith("frac.npz: the sinogram lies at 1 at the "), said
