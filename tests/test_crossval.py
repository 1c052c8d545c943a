"""Cross-validation on held-out measurements (``solver.cross_validate``, pipelines.crossval)."""
import json

import numpy as np
import pytest
import torch

from medrecon.errors import InputError
from medrecon.io import read_volume, write_nifti
from medrecon.priors.base import GaussianDenoiser, IntensityMap
from pipelines import problem as problem_module
from pipelines import tasks
from pipelines.config import load_config
from pipelines.crossval import fit_problem, heldout_error, holdout_mask
from pipelines.phantoms import ct_phantom
from pipelines.problem import Problem
from test_pipelines import _mr_volume


def _problem(tmp_path, config, volume, *overrides):
    src = tmp_path / "in.nii.gz"
    write_nifti(volume, src)
    cfg = load_config(config, ["solver.name=admm_tv", "solver.steps=30", *overrides], check_files=False).resolved()
    return Problem.build(cfg, read_volume(src))


def test_ct_holds_out_whole_views_spread_over_the_arc(tmp_path):
    p = _problem(tmp_path, "sparse_view_ct_8", ct_phantom((3, 32, 32), seed=1), "ct.image_size=32")
    for fraction, n in ((0.125, 1), (0.25, 2)):
        keep, what = holdout_mask(p, fraction)
        held = sorted(set((keep == 0).nonzero()[:, 1].tolist()))
        assert len(held) == n and str(held) in what
        assert bool((keep[:, held, :] == 0).all()) and int((keep == 0).sum()) == n * keep.shape[0] * keep.shape[2]
    assert held[1] - held[0] == 4  # 2 of 8 views: opposite halves of the arc
    (tmp_path / "one").mkdir()
    one = _problem(tmp_path / "one", "sparse_view_ct_8", ct_phantom((3, 32, 32), seed=1), "ct.image_size=32",
                   "ct.n_views=1")
    with pytest.raises(InputError, match="solver.cross_validate.enabled=false"):
        holdout_mask(one, 0.125)
    (tmp_path / "two").mkdir()  # one of two views is half the data, not the 12.5 % asked: refused
    two = _problem(tmp_path / "two", "sparse_view_ct_8", ct_phantom((3, 32, 32), seed=1), "ct.image_size=32",
                   "ct.n_views=2")
    with pytest.raises(InputError, match="one of 2 views is 50% of the data, more than twice holdout 0.125"):
        holdout_mask(two, 0.125)


def test_mri_holds_out_sampled_lines_outside_the_centre(tmp_path):
    p = _problem(tmp_path, "cs_mri_x4", _mr_volume(), "mri.image_size=64")
    keep, _ = holdout_mask(p, 0.2)
    held = (keep == 0).any(dim=1)  # (Z, W) positions held out, whole lines along the readout
    sampled = (p.data.abs() > 0).any(dim=1)
    assert bool(((keep == 0).sum(dim=1)[held] == keep.shape[1]).all())  # every held-out line is whole
    assert bool(sampled[held].all())  # only lines that were measured
    cols, c = sampled.all(0).tolist(), keep.shape[-1] // 2
    lo, hi = c, c
    while cols[lo - 1]:
        lo -= 1
    while cols[hi + 1]:
        hi += 1
    assert hi - lo >= 3 and not bool(held[:, lo:hi + 1].any())  # none of the fully sampled centre
    outer = int(sampled.sum()) - (hi + 1 - lo) * sampled.shape[0]
    assert int(held.sum()) == round(0.2 * outer)


def test_mri_3d_multicoil_holds_out_whole_readout_lines_of_every_coil(tmp_path):
    p = _problem(tmp_path, "cs_mri_3d_poisson", _mr_volume((8, 32, 32)), "mri.image_size=32", "mri.coils=multi",
                 "mri.n_coils=2")
    y = p.data  # (C, Z, Y, X)
    keep, _ = holdout_mask(p, 0.2)
    held = (keep == 0).any(dim=2)  # (C, Z, X)
    assert y.ndim == 4 and bool(held.any())
    assert bool((held == held[:1]).all())  # the same positions in every coil
    assert bool(((keep == 0).sum(dim=2)[held] == y.shape[2]).all())  # whole readout lines
    assert bool((y.abs() > 0).any(dim=2)[held].all())  # only sampled positions
    zc, xc = y.shape[1] // 2, y.shape[3] // 2
    assert not bool(held[:, zc, xc].any())  # not the k-space centre


def test_the_fit_problem_never_sees_the_held_out_data(tmp_path):
    """Changing the held-out measurements changes the held-out error but not the reconstruction fitted without
    them."""
    p = _problem(tmp_path, "sparse_view_ct_8", ct_phantom((3, 32, 32), seed=2), "ct.image_size=32")
    keep, _ = holdout_mask(p, 0.25)
    x = fit_problem(p, keep).solve().x
    err = heldout_error(p, keep, x)
    p.data = p.data + 5.0 * (1 - keep)  # only the held-out views change
    x2 = fit_problem(p, keep).solve().x
    assert torch.equal(x, x2)
    assert heldout_error(p, keep, x2) > 2 * err > 0


def test_cross_validation_chooses_the_smallest_held_out_error_and_reports_its_search(tmp_path, monkeypatch):
    prior = GaussianDenoiser(mean=0.3, var=0.1)
    prior.image_size, prior.intensity, prior.sha256 = 32, IntensityMap(0.0, 1.0, unit="normalised"), "abc"
    monkeypatch.setattr(problem_module, "configured_prior", lambda cfg, device: prior)
    (tmp_path / "prior").mkdir()
    src = tmp_path / "mr.nii.gz"
    write_nifti(_mr_volume((4, 32, 32)), src)
    out = tmp_path / "out"
    tasks.reconstruct("cs_mri_x4", src, out, overrides=[f"prior.path={tmp_path / 'prior'}", "solver.steps=3",
                                                      "solver.cross_validate.enabled=true"])
    rep = json.loads((out / "report.json").read_text())
    cv = rep["cross_validation"]
    tried = cv["candidates"]
    assert len(tried) == 5  # 3 noise levels, then 2 more weights at the chosen level
    sigma0, lam0 = rep["config"]["solver"]["warm_start"]["start_sigma"], rep["config"]["solver"]["admm"]["lam"]
    first = [c for c in tried if c["lam"] == lam0][:3]
    assert sorted(c["start_sigma"] for c in first) == pytest.approx([0.5 * sigma0, sigma0, 1.5 * sigma0])
    assert cv["chosen"]["start_sigma"] == min(first, key=lambda c: c["heldout_error"])["start_sigma"]
    second = [c for c in tried if c["start_sigma"] == cv["chosen"]["start_sigma"]]
    assert cv["chosen"]["lam"] == min(second, key=lambda c: c["heldout_error"])["lam"]
    assert all(np.isfinite(c["heldout_error"]) and c["heldout_error"] > 0 for c in tried)
    # the final reconstruction used the chosen weight, scaled to the slice spacing like any other
    adm = rep["config"]["solver"]["admm"]
    assert rep["z_tv"]["lam"] == pytest.approx(cv["chosen"]["lam"] * adm["same_mask_scale"] * adm["at_slice_mm"]
                                               / rep["z_tv"]["slice_mm"])


def test_one_slice_searches_no_z_tv_weight_and_a_bad_factor_names_its_key(tmp_path, monkeypatch):
    """z-TV does nothing on one slice: three identical candidates cost two reconstructions; a factor taking
    start_sigma below the prior's noise levels said only 'start_sigma 0.001 is below ...'."""
    prior = GaussianDenoiser(mean=0.3, var=0.1)
    prior.image_size, prior.intensity, prior.sha256 = 32, IntensityMap(0.0, 1.0, unit="normalised"), "abc"
    monkeypatch.setattr(problem_module, "configured_prior", lambda cfg, device: prior)
    (tmp_path / "prior").mkdir()
    write_nifti(_mr_volume((1, 32, 32)), src := tmp_path / "mr.nii.gz")
    sets = [f"prior.path={tmp_path / 'prior'}", "solver.steps=3", "solver.cross_validate.enabled=true"]
    rep = tasks.reconstruct("cs_mri_x4", src, tmp_path / "out", overrides=sets).report
    assert len(rep["cross_validation"]["candidates"]) == 3  # the noise levels only
    with pytest.raises(InputError, match=r"solver.cross_validate: the candidate start_sigma .* \(a factor of "
                                         r"solver.cross_validate.start_sigma"):
        tasks.reconstruct("cs_mri_x4", src, tmp_path / "bad", overrides=sets + [
            "solver.cross_validate.start_sigma=[1e-6]"])


def test_same_mask_tells_one_mask_for_all_slices_from_a_mask_per_slice(tmp_path):
    """The z-TV scale for shared masks (``ADMM.same_mask_scale``) applies only when every slice has the same mask."""
    import dataclasses
    p = _problem(tmp_path, "cs_mri_x4", _mr_volume((3, 32, 32)), "mri.image_size=32")
    assert p.same_mask  # the simulation's one mask
    m = np.asarray(p.measurement.mask, bool).reshape(1, 1, -1)
    p.measurement = dataclasses.replace(p.measurement, mask=np.repeat(m, 3, axis=0))
    assert p.same_mask  # one mask per slice, all equal
    varied = np.repeat(m, 3, axis=0)
    varied[1] = np.roll(varied[1], 1)
    p.measurement = dataclasses.replace(p.measurement, mask=varied)
    assert not p.same_mask
    (tmp_path / "ct").mkdir()
    ct = _problem(tmp_path / "ct", "sparse_view_ct_8", ct_phantom((3, 32, 32), seed=1), "ct.image_size=32")
    assert not ct.same_mask


def test_a_noise_factor_of_zero_is_the_warm_start_itself_and_wins_when_the_prior_does_not_suit(tmp_path):
    """``cross_validate.start_sigma`` factor 0: the warm start (3D ADMM-TV) with no diffusion. A prior far from the
    scan (every pixel pulled to one value) predicts the held-out lines worse, so 0 is chosen, no weight is searched,
    and the result is the warm start; a noise factor below 0 is refused."""
    prior = GaussianDenoiser(mean=0.9, var=1e-4)
    prior.image_size, prior.intensity, prior.sha256 = 32, IntensityMap(0.0, 1.0, unit="normalised"), "abc"
    src = tmp_path / "mr.nii.gz"
    write_nifti(_mr_volume((4, 32, 32)), src)
    cv_set = ["solver.cross_validate.enabled=true", "solver.cross_validate.start_sigma=[0, 1]",
              "solver.cross_validate.lam=[1]"]
    cfg = load_config("cs_mri_x4", ["mri.image_size=32", "solver.steps=3", *cv_set], check_files=False).resolved()
    p = Problem.build(cfg, read_volume(src), prior=prior)
    x = p.solve().x
    cv = p.info["cross_validation"]
    errors = {c["start_sigma"]: c["heldout_error"] for c in cv["candidates"]}
    assert len(errors) == 2 and cv["chosen"]["start_sigma"] == 0
    assert 0 < errors[0] < errors[cfg.solver.warm_start.start_sigma]
    assert torch.equal(x, p.warm_start(cfg.solver))
    with pytest.raises(InputError, match="start_sigma"):
        load_config("cs_mri_x4", ["solver.cross_validate.start_sigma=[-1, 1]"], check_files=False)
