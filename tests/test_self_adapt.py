"""Self-adaptation (``solver.self_adapt``): a copy of the patch prior fine-tuned on the scan's own first result,
then a second pass with it (medrecon.priors.train.adapt_prior, Problem.solve)."""
import json

import numpy as np
import pytest
import torch

from medrecon.device import bf16_native
from medrecon.errors import InputError
from medrecon.io import read_volume, write_nifti
from medrecon.priors.patch import prepare_volumes
from medrecon.priors.train import adapt_prior
from pipelines import tasks
from pipelines.config import load_config
from pipelines.prior_cards import load_prior_for
from test_pipelines import _mr_volume

MR_WINDOW = {"physical_min": 0.0, "physical_max": 1.0, "unit": "normalised magnitude"}


def _weights(prior) -> dict:
    return {k: v.detach().clone() for k, v in prior.network.state_dict().items()}


def test_adapt_prior_fine_tunes_a_copy_and_leaves_the_prior_as_it_was():
    prior = load_prior_for("bundled:mri_patch")
    before = _weights(prior)
    data = prepare_volumes([_mr_volume((2, 64, 64))], MR_WINDOW)
    rng = torch.get_rng_state()
    adapted, record = adapt_prior(prior, data, 3, ema_decay=0.5, lr=1e-3)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's global RNG is not reseeded
    assert all(torch.equal(before[k], v) for k, v in prior.network.state_dict().items())  # untouched
    moved = max(float((v - before[k]).abs().max()) for k, v in adapted.network.state_dict().items())
    assert moved > 1e-6
    assert adapted.name == "mri_patch+self-adapted" and adapted.sha256 is None and prior.sha256
    assert (record["steps"], record["lr"], record["n_slices"]) == (3, 1e-3, 2)
    assert adapted.card["training"]["self_adaptation"] == record
    assert adapted.pixel_spacing_mm_range == prior.pixel_spacing_mm_range  # the copy keeps the prior's domain
    assert record["bf16"] == bf16_native(torch.device("cpu"))  # the card's amp: bf16 where the CPU has it
    assert adapt_prior(prior, data, 1, amp=False)[1]["bf16"] is False  # solver.precision=fp32 trains in fp32


def test_adapt_prior_refuses_a_prior_without_a_patch_training_record():
    prior = load_prior_for("bundled:mri")  # whole-slice 64x64
    data = prepare_volumes([_mr_volume((2, 64, 64))], MR_WINDOW)
    with pytest.raises(InputError, match="prior medrecon-mri64: self-adaptation fine-tunes a patch prior"):
        adapt_prior(prior, data, 2)


def test_self_adapt_settings_are_checked_and_only_belong_to_diffusion_solvers():
    with pytest.raises(InputError, match="self_adapt.steps"):
        load_config("cs_mri_x4", ["solver.self_adapt.steps=-1"], check_files=False)
    with pytest.raises(InputError, match="self_adapt"):
        load_config("cs_mri_x4", ["solver.name=admm_tv", "solver.self_adapt.steps=5"], check_files=False)
    assert load_config("cs_mri_x4", [], check_files=False).solver.self_adapt.steps is None  # the Problem decides


def test_default_adapts_the_fast_sampler_on_mr_images_with_a_patch_prior_only(tmp_path):
    """Null steps: registry.SELF_ADAPT_DEFAULT (500) for the fast sampler on MR images with a patch prior; 0 on CT,
    for other solvers, with a whole-slice prior (no error: nothing was asked), on 3D masks, and a set value as set."""
    from pipelines.problem import Problem
    from pipelines.registry import SELF_ADAPT_DEFAULT

    def steps(config, *overrides, resample=False):
        cfg = load_config(config, list(overrides), check_files=False).resolved()
        vol = _mr_volume((1, 64, 64))
        if cfg.modality == "ct":  # the same object in HU
            vol = vol.with_data(vol.data / vol.data.max() * 1000.0 - 1000.0)
        p = Problem.build(cfg, vol, resample=resample)
        return p.self_adapt_steps(p.config.solver)

    assert steps("cs_mri_x4") == SELF_ADAPT_DEFAULT["fast"]["mri"] == 500
    assert steps("cs_mri_x4", "solver.self_adapt.steps=0") == 0
    assert steps("cs_mri_x4", "solver.name=slicewise_fast") == 0
    assert steps("cs_mri_x4", "prior.path=bundled:mri", resample=True) == 0
    assert steps("sparse_view_ct_8", "ct.pixel_size=2.0") == 0
    assert steps("cs_mri_3d_poisson") == 0  # off on 3D masks (registry.SELF_ADAPT_OFF), and said so
    assert steps("cs_mri_3d_poisson", "solver.self_adapt.steps=20") == 20
    assert steps("cs_mri_x4", "mri.mode=3d", "mri.mask.kind=poisson2d") == 0
    # the data's own mask decides, not the config reconstructing them (a 3D measurements file under cs_mri_x4)
    from pipelines.simulation import simulate_volume
    _, meas = simulate_volume(load_config("cs_mri_3d_poisson", [], check_files=False).resolved(),
                              _mr_volume((4, 64, 64)), 64)
    p = Problem.build(load_config("cs_mri_x4", [], check_files=False).resolved(), meas)
    assert p.measurement.mask_layout == "3d" and p.self_adapt_steps(p.config.solver) == 0
    from dataclasses import replace  # a file written before the layout was recorded holds 2D slices
    assert replace(p.measurement, info={}).mask_layout == "2d"
    assert replace(p.measurement, modality="ct").mask_layout is None


def test_self_adapted_reconstruction_reports_both_passes_and_keeps_the_adapted_prior(tmp_path):
    """Two passes on a simulated x4 MR case; the second with the prior fine-tuned on the first. Thresholds: the
    zero-filled image of this case scores about 25 dB, both passes about 37 dB; 10 steps of fine-tuning may move
    the result by a few tenths, not by a dB. The saved prior reproduces the second pass to float32 precision."""
    src = tmp_path / "mr.nii.gz"
    write_nifti(_mr_volume((3, 64, 64)), src)
    common = ["solver.steps=6", "outputs.preview=false", "solver.precision=fp32"]
    run = tasks.reconstruct("cs_mri_x4", src, tmp_path / "out", common + ["solver.self_adapt.steps=10"])
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    sa = rep["self_adapt"]
    first, second = sa["first_pass_scores"]["psnr"]["axial"], rep["vs_reference"]["psnr"]["axial"]
    assert first > 32 and second > 32 and abs(second - first) < 1.0
    assert (sa["steps"], sa["ema_decay"], sa["from"]) == (10, 0.99, "mri_patch")
    assert rep["precision"] == "fp32" and sa["bf16"] is False  # fp32 inference: the adaptation trains in fp32 too
    assert {"self_adapt/first_pass.nii.gz", "self_adapt/prior/"} <= set(rep["files"])
    page = json.loads((tmp_path / "out" / "index_files" / "summary.json").read_text())
    assert page["methods"] == ["reference", "first pass (before self-adaptation)", "reconstruction"]
    assert set(page["metrics"]) >= {"first pass (before self-adaptation)", "reconstruction"}  # both scored
    first_vol = read_volume(tmp_path / "out" / "self_adapt" / "first_pass.nii.gz")
    assert first_vol.shape == run.recon.shape and not np.allclose(first_vol.data, run.recon.data, atol=1e-4)
    again = tasks.reconstruct("cs_mri_x4", src, tmp_path / "again",
                              common + [f"prior.path={tmp_path / 'out' / 'self_adapt' / 'prior'}",
                                        "solver.self_adapt.steps=0"])
    np.testing.assert_allclose(again.recon.data, run.recon.data, atol=1e-4)
    assert again.report["prior"]["name"] == "mri_patch+self-adapted"
    assert rep["network_evaluations_per_slice"] == 2 * again.report["network_evaluations_per_slice"]  # both passes


def _adapted_with_cross_validation(tmp_path, steps: int, start_sigma: str, lam: str):
    """A 2-slice MR image reconstructed with 2 steps of self-adaptation and cross-validation over these factors."""
    src = tmp_path / "mr.nii.gz"
    write_nifti(_mr_volume((2, 64, 64)), src)
    return tasks.reconstruct("cs_mri_x4", src, tmp_path / "out",
                             [f"solver.steps={steps}", "outputs.preview=false", "solver.self_adapt.steps=2",
                              "solver.cross_validate.enabled=true", f"solver.cross_validate.start_sigma={start_sigma}",
                              f"solver.cross_validate.lam={lam}"])


def test_cross_validation_candidates_run_the_prior_as_it_is_and_only_the_choice_is_adapted(tmp_path, monkeypatch):
    from pipelines import problem
    calls = []
    real = problem.adapt_prior

    def counted(prior, data, steps, **kw):
        calls.append(steps)
        return real(prior, data, steps, **kw)

    monkeypatch.setattr(problem, "adapt_prior", counted)
    run = _adapted_with_cross_validation(tmp_path, steps=4, start_sigma="[1.0]", lam="[1.0,2.0]")
    assert calls == [2]
    assert len(run.report["cross_validation"]["candidates"]) == 2 and run.report["self_adapt"]["steps"] == 2


def test_a_prior_that_cannot_be_adapted_stops_before_the_first_pass(tmp_path, monkeypatch):
    from pipelines.problem import Problem
    ran = []
    monkeypatch.setattr(Problem, "_run", lambda self, *a: ran.append(1))
    src = tmp_path / "mr.nii.gz"
    write_nifti(_mr_volume((2, 64, 64)), src)
    with pytest.raises(InputError, match="self-adaptation fine-tunes a patch prior"):
        tasks.reconstruct("cs_mri_x4", src, tmp_path / "out", ["prior.path=bundled:mri", "solver.self_adapt.steps=5"],
                          resample=True)
    assert ran == [] and not (tmp_path / "out").exists()


def test_slices_too_small_to_adapt_on_are_skipped_by_default_and_refused_when_asked(tmp_path, monkeypatch):
    """40 x 40 MR pixels at 1 mm hold no 64-pixel training patch: the default crashed after the whole first pass;
    now it reconstructs once and says why, and a set steps value stops before any work naming the fix."""
    from pipelines.problem import Problem
    src = tmp_path / "tiny.nii.gz"
    write_nifti(_mr_volume((1, 40, 40)), src)
    run = tasks.reconstruct("cs_mri_x4", src, tmp_path / "out", ["solver.steps=3", "outputs.preview=false"])
    assert "too small to fine-tune prior mri_patch" in run.report["self_adapt"]["skipped"]
    ran = []
    monkeypatch.setattr(Problem, "_run", lambda self, *a: ran.append(1))
    with pytest.raises(InputError, match=r"solver.self_adapt.steps=5: the slices are too small .* set "
                                         r"solver.self_adapt.steps=0"):
        tasks.reconstruct("cs_mri_x4", src, tmp_path / "asked", ["solver.self_adapt.steps=5"])
    assert ran == []


def test_a_self_adaptation_cross_validation_leaves_no_diffusion_for_is_recorded_as_skipped(tmp_path):
    run = _adapted_with_cross_validation(tmp_path, steps=3, start_sigma="[0.0]", lam="[1.0]")
    assert run.report["cross_validation"]["chosen"]["start_sigma"] == 0.0
    assert "cross-validation chose the warm start" in run.report["self_adapt"]["skipped"]


def test_complex_first_pass_adapts_on_its_magnitude_and_measured_kspace_is_off_by_default(monkeypatch):
    """Measured k-space (complex images): asked for, the adaptation trains on the first pass's magnitude (one image
    per slice, inside the prior's window; its real and imaginary parts lost on the measured T2 slice, RESULTS.md,
    thirty-fourth session); not asked for, it does not run."""
    from medrecon.priors.base import IntensityMap
    from pipelines import problem
    from pipelines.problem import Problem
    from test_mri_raw import _measured_with_support
    seen = {}
    real = problem.adapt_prior

    def spy(prior, data, steps, **kw):
        seen.update(data=data, kw=kw)
        return real(prior, data, 1, **kw)

    monkeypatch.setattr(problem, "adapt_prior", spy)
    x, _, meas = _measured_with_support(n=64)
    cfg = load_config("cs_mri_x4", ["mri.coil_maps=given", "mri.image=complex", "solver.steps=3",
                                    "solver.self_adapt.steps=5"], check_files=False).resolved()
    p = Problem.from_measurement(cfg, meas, torch.device("cpu"), load_prior_for("bundled:mri_patch"),
                                 IntensityMap(0.0, 1.0, -1.0, 1.0))
    p.solve()
    data = seen["data"]
    assert data.n_slices == 2 and min(float(v.min()) for v in data.volumes) >= -1.0
    assert np.iscomplexobj(x) and x.real.min() < -0.3 * np.abs(x).max()  # parts would lie below the window
    default = p.config.solver.model_copy(update={"self_adapt": p.config.solver.self_adapt.model_copy(
        update={"steps": None})})
    assert p.self_adapt_steps(default) == 0  # measured k-space: off unless asked


def test_a_self_adapted_run_computes_its_warm_start_once_and_says_its_passes(tmp_path, monkeypatch, capsys):
    """The second pass recomputed the same deterministic 3D ADMM-TV warm start (26 s of 258 on 20 x 256^2), and
    nothing said that a finished first bar was a third of the run."""
    import pipelines.problem as problem_module
    calls, real = [], problem_module.admm_tv
    monkeypatch.setattr(problem_module, "admm_tv", lambda *a, **k: calls.append(1) or real(*a, **k))
    src = tmp_path / "mr.nii.gz"
    write_nifti(_mr_volume((2, 64, 64)), src)
    tasks.reconstruct("cs_mri_x4", src, tmp_path / "out", ["solver.steps=2", "solver.self_adapt.steps=2",
                                                            "outputs.preview=false"], progress=True)
    assert len(calls) == 1
    err = capsys.readouterr()
    said = err.out + err.err
    assert "pass 1 of 2" in said and "pass 2 of 2" in said


def test_a_self_adapted_guided_sampler_counts_the_backward_passes_of_both_passes(tmp_path):
    """report.json added the first pass's network evaluations to the second's but not its backward passes (DPS,
    3 steps: nfe 6, backward 3, though 6 ran)."""
    src = tmp_path / "mr.nii.gz"
    write_nifti(_mr_volume((2, 64, 64)), src)
    common = ["solver.name=dps", "solver.steps=3", "outputs.preview=false", "outputs.dicom=false"]
    one = tasks.reconstruct("cs_mri_x4", src, tmp_path / "one", common + ["solver.self_adapt.steps=0"]).report
    two = tasks.reconstruct("cs_mri_x4", src, tmp_path / "two", common + ["solver.self_adapt.steps=1"]).report
    assert one["backward_passes_per_slice"] > 0
    assert two["backward_passes_per_slice"] == 2 * one["backward_passes_per_slice"]
    assert two["network_evaluations_per_slice"] == 2 * one["network_evaluations_per_slice"]
