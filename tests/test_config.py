"""Task configs: every bundled YAML validates; typical mistakes give these exact messages."""
from pathlib import Path

import pytest
import yaml

from medrecon.errors import InputError
from pipelines.commands_recon import app  # noqa: F401  (the CLI module imports cleanly)
from pipelines.registry import FAST_ZTV
from pipelines.config import REPO_CONFIGS, Config, load_config, resolve_config_path

REQUIRED = ["sparse_view_ct_8", "sparse_view_ct_4", "sparse_view_ct_2", "limited_angle_ct_90", "cs_mri_x4",
            "cs_mri_x8", "cs_mri_3d_poisson"]


@pytest.mark.parametrize("name", REQUIRED)
def test_bundled_configs_validate(name):
    cfg = load_config(name, check_files=False).resolved()
    assert cfg.task == name
    assert cfg.solver.steps == 50 and cfg.solver.n_cg == 5  # fast sampler defaults
    adm = cfg.solver.admm
    inplane = {"sparse_view_ct_8": 0.3, "sparse_view_ct_4": 0.3, "sparse_view_ct_2": 1.0,  # the configs' own (README)
               "limited_angle_ct_90": 1.0}.get(name, 0.0)
    at_pixel = 0.977 if name in ("sparse_view_ct_8", "sparse_view_ct_4") else None  # lam_xy follows the pixel (README)
    assert adm.model_dump() == {"at_slice_mm": None, "same_mask_scale": None, "rho_follows_spacing": None,
                                **FAST_ZTV[cfg.modality], "lam_xy": inplane, "at_pixel_mm": at_pixel,
                                "rho_xy_follows_pixel": True if name == "sparse_view_ct_8" else None}  # README
    assert cfg.solver.warm_start.method == "admm_tv"  # the default starts from the classical solution
    assert cfg.solver.end_sigma == (0.02 if name == "sparse_view_ct_8" else None)  # 8 views: tuned (README)
    assert cfg.solver.final_sigma == 0.02
    # measured, then held out (README): 4 views two samples on a slice; MR x4 a pair on a slice; 90 deg and MR x8 a
    # pair on every input; antithetic pairs fell short at 4 views
    assert cfg.solver.single_slice_samples == (2 if name in ("sparse_view_ct_4", "cs_mri_x4", "cs_mri_x8",
                                                             "cs_mri_3d_poisson") else 1)  # MR: the registry's
    assert cfg.solver.samples == (2 if name in ("limited_angle_ct_90", "cs_mri_x8") else 1)
    assert cfg.solver.antithetic == (name in ("limited_angle_ct_90", "cs_mri_x4", "cs_mri_x8"))


@pytest.mark.parametrize("name", ["cs_mri_x4", "cs_mri_x8"])
def test_measured_kspace_averages_one_posterior_sample_unless_the_config_sets_more(name):
    """The MR configs leave solver.samples null: an antithetic pair on images (x8; a single slice at x4), one on
    measured k-space, where the pairs gained <= 0.01 dB at up to 2.3x the time (README); a value the user sets
    is kept on measured k-space too."""
    images, measured = (load_config(name, check_files=False).resolved(measured_kspace=m) for m in (False, True))
    assert (images.solver.samples, images.solver.single_slice_samples) == ((2, 2) if name == "cs_mri_x8" else (1, 2))
    assert (measured.solver.samples, measured.solver.single_slice_samples) == (1, 1)
    given = load_config(name, ["solver.samples=2", "solver.single_slice_samples=3"], check_files=False)
    assert (given.resolved(measured_kspace=True).solver.samples,
            given.resolved(measured_kspace=True).solver.single_slice_samples) == (2, 3)


def test_config_contents_match_their_task():
    assert load_config("sparse_view_ct_4", check_files=False).ct.n_views == 4
    assert load_config("limited_angle_ct_90", check_files=False).ct.wedge_deg == 90.0
    m = load_config("cs_mri_3d_poisson", check_files=False).mri
    assert (m.mode, m.mask.kind) == ("3d", "poisson2d")
    assert load_config("cs_mri_x8", check_files=False).mri.mask.acceleration == 8.0


def _write(tmp_path, text) -> Path:
    p = tmp_path / "my.yaml"
    p.write_text(text)
    return p


BASE = """task: t
modality: ct
ct: {n_views: 8}
solver:
  name: admm_tv
  admm: {lam: 0.04, rho: 10.0}
"""


def _problems(path, overrides=()):
    with pytest.raises(InputError) as e:
        load_config(path, list(overrides))
    return str(e.value).splitlines()


def test_wrong_type_unknown_key_with_suggestion(tmp_path):
    p = _write(tmp_path, BASE.replace("rho: 10.0}", "rho: ten, rhoo: 1}"))
    assert _problems(p) == [f'{p}: solver.admm.rho: expected a number, got "ten"',
                            f'{p}: solver.admm.rhoo: unknown key (did you mean "rho"?)']


def test_missing_prior_file(tmp_path):
    p = _write(tmp_path, BASE.replace("admm_tv", "fast") + "prior: {path: /x/y}\n")
    assert _problems(p) == [f"{p}: prior.path: file not found: /x/y (give a prior directory or bundled:ct_patch)"]
    # a classical solver does not need the prior, so the same file is fine with it
    assert load_config(p, ["solver.name=admm_tv"]).solver.name == "admm_tv"


def test_bad_set_overrides(tmp_path):
    p = _write(tmp_path, BASE)
    # named as overrides (--set on the command line), not as the file, which does not hold them
    assert _problems(p, ["solver.steps=fifty"]) == ['overrides: solver.steps: expected an integer, got "fifty"']
    assert _problems(p, ["solver.stepz=5"]) == ['overrides: solver.stepz: unknown key (did you mean "steps"?)']
    assert _problems(p, ["solvr.steps=5"]) == ['overrides: solvr: unknown key (did you mean "solver"?)']  # the section
    assert _problems(p, ["solver.steps"]) == ["overrides: solver.steps: expected KEY=VALUE (e.g. 'solver.steps=50')"]
    assert _problems(p, ["solver.name.x=1"]) == ["overrides: solver.name.x=1: solver.name is a value, not a section"]
    assert _problems(p, ["solver.admm={rho: ten}"]) == ['overrides: solver.admm.rho: expected a number, got "ten"']
    assert _problems(_write(tmp_path, BASE + "solver_: 1\n"), ["solver.steps=5"])[0].startswith(str(tmp_path))


def test_more_typical_mistakes(tmp_path):
    p = _write(tmp_path, BASE.replace("n_views: 8", "n_views: 8, wedge_deg: 90, beam: cone")
               + "noise: {kind: complex_gaussian}\nsolver_: 1\n")
    assert _problems(p) == [
        f'{p}: ct.beam: expected one of "parallel" or "fan", got "cone"',
        f'{p}: solver_: unknown key (did you mean "solver"?)',
    ]
    p2 = _write(tmp_path, BASE.replace("n_views: 8", "n_views: 8, wedge_deg: 90"))
    assert _problems(p2) == [f"{p2}: ct: give exactly one of n_views (sparse view) or wedge_deg (limited angle)"]
    p3 = _write(tmp_path, BASE + "noise: {kind: complex_gaussian}\n")
    assert _problems(p3) == [f"{p3}: noise.kind: complex_gaussian does not fit modality ct "
                             f"(use one of poisson, gaussian, none)"]
    p4 = _write(tmp_path, BASE.replace("n_views: 8", "n_views: -2"))
    assert _problems(p4) == [f"{p4}: ct.n_views: must be > 0, got -2"]
    p5 = _write(tmp_path, BASE.replace("n_views: 8", "n_views: 8, fbp_filter: hanning"))
    assert _problems(p5) == [
        f'{p5}: ct.fbp_filter: expected one of "ram-lak", "shepp-logan", "cosine", "hamming" or "hann", got "hanning"']
    with pytest.raises(InputError, match="mask.kind poisson2d samples the .kz, kx. plane of a 3D acquisition"):
        load_config("cs_mri_x4", ["mri.mask.kind=poisson2d"], check_files=False)  # failed later, mid-simulation
    p6 = _write(tmp_path, BASE.replace("n_views: 8", "wedge_deg: 200"))
    assert _problems(p6) == [
        f"{p6}: ct: wedge_deg 200: a parallel beam's views repeat after 180 degrees; give at most 180, or beam: fan"]


def test_set_overrides_apply_with_yaml_types(tmp_path):
    p = _write(tmp_path, BASE)
    cfg = load_config(p, ["solver.steps=7", "solver.clip=[-1000, 2000]", "noise.kind=gaussian",
                          "noise.sigma=0.01"])
    assert cfg.solver.steps == 7 and cfg.solver.clip == (-1000.0, 2000.0)
    assert cfg.noise.sigma == 0.01 and cfg.source == str(p)
    assert load_config(p, ["ct.n_views=010"]).ct.n_views == 10  # decimal, not YAML 1.1's octal 8
    with pytest.raises(InputError, match="^overrides: ct.n_views: expected an integer, got true$"):
        load_config(p, ["ct.n_views=true"])  # not 1 view


def test_config_resolution_by_name_and_errors(tmp_path):
    assert resolve_config_path("sparse_view_ct_8") == REPO_CONFIGS / "sparse_view_ct_8.yaml"
    with pytest.raises(InputError, match="config not found: nope"):
        resolve_config_path("nope")
    bad = _write(tmp_path, "task: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(bad)
    assert yaml.safe_load((REPO_CONFIGS / "cs_mri_x4.yaml").read_text())["modality"] == "mri"
    twice = _write(tmp_path, (REPO_CONFIGS / "sparse_view_ct_8.yaml").read_text().replace(
        "  seed: 0\n", "  seed: 0\n  seed: 5\n", 1))  # PyYAML alone keeps the last without a word
    with pytest.raises(InputError, match=r":? line \d+, column 3: not valid YAML \(key 'seed' given twice in one "
                                         r"section\); fix the syntax"):
        load_config(twice)


def test_ztv_weight_follows_the_slice_spacing():
    """The registry's tuned z-TV weight holds at its tuning scan's slice spacing and is scaled by that spacing
    over the data's (thicker slices: weaker z coupling); a lam the user sets is used as is."""
    adm = load_config("sparse_view_ct_8", check_files=False).resolved().solver.admm
    assert adm.weight(1.5) == pytest.approx(0.5) and adm.weight(5.0) == pytest.approx(0.15)
    own = load_config("sparse_view_ct_8", ["solver.admm.lam=0.2"], check_files=False).resolved().solver.admm
    assert own.at_slice_mm is None and own.weight(5.0) == 0.2
    both = load_config("cs_mri_x4", ["solver.admm.lam=0.2", "solver.admm.at_slice_mm=1.0"],
                       check_files=False).resolved().solver.admm
    assert both.weight(4.0) == pytest.approx(0.05)
    assert both.same_mask_scale is None and both.weights(4.0, same_mask=True) == (pytest.approx(0.05), both.rho)


def test_inplane_weight_follows_the_pixel_size():
    """The 8- and 4-view in-plane TV weight holds at the pixel size it was chosen at and is scaled by that size over
    the data's (coarser pixels: a weaker weight); without at_pixel_mm (the other configs) it is used as is."""
    adm = load_config("sparse_view_ct_8", check_files=False).resolved().solver.admm
    assert adm.weight_xy(adm.at_pixel_mm) == pytest.approx(adm.lam_xy)
    assert adm.weight_xy(2 * adm.at_pixel_mm) == pytest.approx(adm.lam_xy / 2)
    fixed = load_config("sparse_view_ct_8", ["solver.admm.at_pixel_mm=null"], check_files=False).resolved()
    assert fixed.solver.admm.weight_xy(2.0) == fixed.solver.admm.lam_xy == 0.3
    two = load_config("sparse_view_ct_2", check_files=False).resolved().solver.admm
    assert two.at_pixel_mm is None and two.weight_xy(2.0) == two.lam_xy
    classical = load_config("sparse_view_ct_8", ["solver.name=admm_tv"], check_files=False).resolved().solver.admm
    assert classical.lam_xy == 0.0 and classical.at_pixel_mm is None  # the classical admm_tv leaves the keys behind
    assert classical.rho_xy_follows_pixel is None


def test_inplane_penalty_follows_the_pixel_size_at_8_views():
    """``rho_xy_follows_pixel`` (8 views: on): the in-plane ADMM penalty is z-TV's rho scaled as lam_xy is (the
    threshold lam_xy / rho_xy the same at every pixel size); off (false; null, 4 views), the in-plane term shares
    z-TV's rho."""
    adm = load_config("sparse_view_ct_8", check_files=False).resolved().solver.admm  # 8 views: on (README)
    assert adm.penalty_xy(10.0, adm.at_pixel_mm) == pytest.approx(10.0)
    assert adm.penalty_xy(10.0, 2 * adm.at_pixel_mm) == pytest.approx(5.0)
    assert adm.weight_xy(2.0) / adm.penalty_xy(10.0, 2.0) == pytest.approx(adm.lam_xy / 10.0)
    off = load_config("sparse_view_ct_8", ["solver.admm.rho_xy_follows_pixel=false"],
                      check_files=False).resolved().solver.admm
    assert off.penalty_xy(10.0, 2.0) == 10.0
    four = load_config("sparse_view_ct_4", check_files=False).resolved().solver.admm
    assert four.rho_xy_follows_pixel is None and four.penalty_xy(10.0, 2.0) == 10.0
    fixed = load_config("sparse_view_ct_8", ["solver.admm.at_pixel_mm=null"], check_files=False).resolved()
    assert fixed.solver.admm.penalty_xy(10.0, 2.0) == 10.0  # at_pixel_mm null: the weight and the penalty as is


def test_ztv_of_mri_slices_sharing_one_mask_is_weaker():
    """On MRI slices that share one k-space mask the registry's z-TV lam and rho are scaled together."""
    adm = load_config("cs_mri_x4", check_files=False).resolved().solver.admm
    lam, rho, at_mm, scale = (FAST_ZTV["mri"][k] for k in ("lam", "rho", "at_slice_mm", "same_mask_scale"))
    assert adm.weights(at_mm, same_mask=False) == (pytest.approx(lam), rho)
    assert adm.weights(at_mm, same_mask=True) == (pytest.approx(lam * scale), pytest.approx(rho * scale))
    # thicker slices: lam and (MRI) rho both follow the spacing, so the threshold lam / rho stays
    assert adm.weights(4 * at_mm, same_mask=True) == (pytest.approx(lam * scale / 4), pytest.approx(rho * scale / 4))
    ct = load_config("sparse_view_ct_8", check_files=False).resolved().solver.admm  # CT: rho as is
    assert ct.weights(2 * ct.at_slice_mm) == (pytest.approx(ct.lam / 2), ct.rho)


def test_diffusion_mbir_has_its_own_ct_warm_start():
    """DiffusionMBIR restarts lower than the fast sampler on CT (its corrector's noise; registry.MBIR_WARM)."""
    mbir, fast = (load_config("sparse_view_ct_2", [f"solver.name={n}"], check_files=False).resolved().solver
                  .warm_start for n in ("diffusion_mbir", "fast"))
    assert (mbir.start_sigma, fast.start_sigma) == (0.3, 0.8) and mbir.lam == fast.lam == 1.0
    eight = load_config("sparse_view_ct_8", check_files=False).resolved().solver.warm_start  # its own, for 50 steps
    assert (eight.start_sigma, eight.lam) == (0.4, 1.0)
    wedge = load_config("limited_angle_ct_90", check_files=False).resolved().solver.warm_start  # more TV at 90 deg
    assert (wedge.start_sigma, wedge.lam) == (0.8, 5.0)


def test_fast_samplers_restart_mri_lower_up_to_x4():
    """Up to x4 the fast samplers restart MR images at registry.FAST_WARM_LOW_ACCELERATION's sigma (chosen at the
    scans' own pixel size, thirty-seventh session); x8, DiffusionMBIR and measured k-space keep their own, and a
    config's value still wins."""
    from pipelines.registry import FAST_WARM_LOW_ACCELERATION, WARM_START_DEFAULTS
    low = FAST_WARM_LOW_ACCELERATION["mri"][1]["start_sigma"]
    modality = WARM_START_DEFAULTS["mri"]["start_sigma"]
    assert low != modality  # else the assertions below could not tell the two apart

    def warm(config, *more):
        return load_config(config, list(more), check_files=False).resolved().solver.warm_start.start_sigma

    assert warm("cs_mri_x4") == warm("cs_mri_x4", "solver.name=slicewise_fast") == low
    assert warm("cs_mri_x4", "mri.mask.acceleration=3") == low
    assert warm("cs_mri_x8") == warm("cs_mri_x4", "mri.mask.acceleration=6") == modality
    assert warm("cs_mri_x4", "solver.name=diffusion_mbir") == modality
    assert warm("cs_mri_x4", "solver.warm_start.start_sigma=0.5") == 0.5


def test_a_whole_section_check_tripped_by_set_names_set_not_the_file():
    """Checks over a whole section (one of n_views / wedge_deg; a parallel wedge over 180 degrees) report the
    section, not the key: a --set that tripped them was blamed on the config file."""
    with pytest.raises(InputError) as e:
        load_config("limited_angle_ct_90", ["ct.wedge_deg=200"])
    assert str(e.value).startswith("overrides: ct: wedge_deg 200")
    with pytest.raises(InputError) as e:
        load_config("limited_angle_ct_90", ["ct.n_views=8"])
    assert str(e.value).startswith("overrides: ct: give exactly one of n_views")
    with pytest.raises(InputError, match="overrides: ct: wedge_deg 0.5: give a wedge of at least 2 degrees"):
        load_config("limited_angle_ct_90", ["ct.wedge_deg=0.5"])  # one view, silently


def test_a_clip_that_is_no_interval_is_refused_naming_the_key(tmp_path):
    """solver.clip [500, -500] ran and wrote a volume of -500 HU everywhere (torch.clamp with low > high gives high);
    a clip wholly below the -1000 HU nonneg allows wrote -2000 everywhere; a final_sigma above the prior's largest
    noise level (100 against 80) returned a washed-out volume (12 dB)."""
    for value in ("[500, -500]", "[0, 0]"):
        with pytest.raises(InputError, match=r"clip .*give \[low, high\] with low < high"):
            load_config("sparse_view_ct_8", [f"solver.clip={value}"], check_files=False)
    from medrecon.io import write_nifti
    from pipelines.phantoms import ct_phantom
    from pipelines.tasks import reconstruct

    src = tmp_path / "ct.nii.gz"
    write_nifti(ct_phantom((2, 32, 32), seed=0), src)
    with pytest.raises(InputError, match=r"solver.clip \[-5000.0, -2000.0\] lies below the lowest value nonneg allows "
                                         r"\(-1000\)"):
        reconstruct("sparse_view_ct_8", src, tmp_path / "a", overrides=["solver.name=admm_tv", "solver.steps=2",
                                                                        "solver.nonneg=true", "solver.clip=[-5000,-2000]"])
    with pytest.raises(InputError, match=r"final_sigma 100 must lie in \[0, 80\]"):
        reconstruct("sparse_view_ct_8", src, tmp_path / "b", overrides=["solver.steps=2", "solver.final_sigma=100",
                                                                        "ct.pixel_size=2"])


def test_set_sections_merge_and_values_that_would_fail_later_are_refused_first(tmp_path):
    """--set 'solver.warm_start={lam: 2}' replaced the whole section: sparse_view_ct_4 ran from σ 0.8 instead of its
    tuned 1.2 (and solver.admm={lam: 0.3} dropped its lam_xy) without a word. Seeds numpy or torch cannot take
    (-1, 10^20) and empty cross-validation lists passed the check and failed mid-run with a traceback."""
    cfg = load_config("sparse_view_ct_4", ["solver.warm_start={lam: 2}", "solver.admm={lam: 0.3}"], check_files=False)
    assert cfg.solver.warm_start.start_sigma == 1.2 and cfg.solver.warm_start.lam == 2
    assert cfg.solver.admm.lam_xy == 0.3 and cfg.solver.admm.lam == 0.3
    for bad in ("noise.seed=-1", "solver.seed=99999999999999999999", "solver.cross_validate.lam=[]",
                "solver.cross_validate.start_sigma=[]", "solver.cross_validate.lam=[-1]"):
        with pytest.raises(InputError, match=bad.split("=")[0].replace("solver.", "")):
            load_config("sparse_view_ct_4", [bad], check_files=False)
    with pytest.raises(InputError, match="mask.seed"):
        load_config("cs_mri_x4", ["mri.mask.seed=-1"], check_files=False)


def test_mistakes_made_with_set_are_named_as_set_not_as_the_bundled_file(tmp_path):
    """The Quick start's one-pass tip after a solver switch, a section of the other modality and a half-given
    intensity section were blamed on configs/*.yaml, which holds none of them."""
    cases = [("cs_mri_x4", ["solver.name=admm_tv", "solver.self_adapt.steps=0"], "overrides: solver.self_adapt: not a setting"),
             ("sparse_view_ct_8", ["mri.pixel_size=1"], "overrides: mri: remove this section"),
             ("sparse_view_ct_8", ["intensity.physical_min=-1024"], "overrides: intensity.physical_max: required key missing")]
    for name, sets, said in cases:
        with pytest.raises(InputError) as e:
            load_config(name, sets, check_files=False)
        assert str(e.value).startswith(said), str(e.value)
    p = _write(tmp_path, BASE.replace("n_views: 8", "n_views: 8, wedge_deg: 90"))  # the file's own mistake
    with pytest.raises(InputError, match=rf"^{p}: ct: give exactly one"):
        load_config(str(p), ["solver.steps=5"], check_files=False)
    bad = _write(tmp_path, BASE.replace("name: admm_tv\n  admm: {lam: 0.04, rho: 10.0}",  # stays the file's under
                                        "name: fast\n  admm: {lam_xy: -0.1}"))               # a merge
    with pytest.raises(InputError, match=rf"^{bad}: solver.admm.lam_xy: must be >= 0"):
        load_config(str(bad), ["solver.admm={rho: 1}"], check_files=False)


def test_a_key_added_later_leaves_the_fingerprint_at_its_default():
    """mri.retrospective (sixtieth session) changed every MR config's fingerprint, so a batch rerun into an earlier
    output root found every finished series 'reconfigured'. At its default the key is left out of the hash."""
    import hashlib
    import json

    cfg = load_config("cs_mri_x4")
    before = cfg.to_dict()
    before["mri"].pop("retrospective")
    for key in Config.WHERE_IT_RUNS:
        before["solver"].pop(key, None)
    assert cfg.fingerprint() == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    assert load_config("cs_mri_x4", ["mri.retrospective=true"]).fingerprint() != cfg.fingerprint()
    # the fingerprint earlier outputs recorded (fifty-ninth session), whatever the hashing's implementation
    assert cfg.fingerprint() == "764772a72057cb5dd400bfb2c958919609c078757160a632194dfa630aea7e1c"


def test_an_unhashable_yaml_key_is_a_yaml_error_not_a_traceback(tmp_path):
    bad = _write(tmp_path, "task: x\n? [a, b]\n: 1\n")
    with pytest.raises(InputError, match=r"line 2, column 3: not valid YAML \(found unhashable key\)"):
        load_config(bad)


@pytest.mark.parametrize("text", ["", "# a comment only\n", "---\n"])
def test_an_empty_config_file_is_told_empty_in_one_line(tmp_path, text):
    """Sixty-third session's audit: an empty file (or one of comments) was told "task: required key missing" and
    "modality: required key missing", not that it is empty."""
    empty = _write(tmp_path, text)
    with pytest.raises(InputError) as e:
        load_config(empty)
    assert str(e.value).startswith(f"{empty}: the file is empty") and "\n" not in str(e.value)
    assert ("holds only comments" in str(e.value)) == bool(text.strip()) and ".yaml" in str(e.value)
    # keys given with --set: the empty file is no problem of its own (what they leave out is told as before)
    with pytest.raises(InputError, match="ct: section missing"):
        load_config(empty, ["task=sparse_view_ct_4", "modality=ct"], check_files=False)


def test_seeds_run_up_to_the_bound_the_readme_states():
    """The README says seeds go from 0 below 2^63, while 2^63 - 1 was refused as 'must be <=
    9223372036854774784' (2^63 - 1024). Every seed up to 2^63 - 1 is taken and runs; 2^63 is refused naming the
    bound."""
    import torch
    from pipelines.phantoms import ct_phantom
    from pipelines.problem import Problem
    from medrecon.volume import Volume
    SEED_MAX = 2 ** 63 - 1
    with pytest.raises(InputError, match=rf"overrides: solver.seed: must be <= {SEED_MAX}, got {SEED_MAX + 1}$"):
        load_config("sparse_view_ct_8", [f"solver.seed={SEED_MAX + 1}"], check_files=False)
    vol = Volume(ct_phantom((1, 32, 32), seed=0).data, spacing=(2.0, 2.0, 3.0))
    cfg = load_config("sparse_view_ct_8", [f"solver.seed={SEED_MAX}", f"noise.seed={SEED_MAX}", "solver.steps=2",
                                           "solver.samples=2"])
    sol = Problem.build(cfg, vol).solve()
    assert torch.isfinite(sol.x).all() and sol.std is not None
    mri = load_config("cs_mri_x4", [f"mri.mask.seed={SEED_MAX}", f"noise.seed={SEED_MAX}", "noise.sigma=0.01",
                                    "noise.kind=complex_gaussian", "solver.name=zero_filled"])
    assert torch.isfinite(Problem.build(mri, vol.with_data(vol.data / 1000 + 1)).solve().x).all()


def test_override_errors_are_named_by_their_source(tmp_path, capsys):
    """pipelines.load_config(NAME, ["solver.admm.rhoo=10"]) said '--set solver.admm.rhoo: unknown key', though no
    --set was used: from Python an override is named as the 'overrides' argument, on the command line as --set."""
    from pipelines.cli import main
    for _ in range(2):  # the command line's name does not stay behind after it ran
        with pytest.raises(InputError, match=r'^overrides: solver.admm.rhoo: unknown key \(did you mean "rho"\?\)$'):
            load_config("sparse_view_ct_8", ["solver.admm.rhoo=10"], check_files=False)
        for sets, said in ((["solver.admm.rhoo=10"], '--set solver.admm.rhoo: unknown key (did you mean "rho"?)'),
                           (["solver.steps"], "--set solver.steps: expected KEY=VALUE (e.g. --set solver.steps=50)")):
            assert main(["reconstruct", "-c", "sparse_view_ct_8", "-i", str(tmp_path / "in.nii.gz"), "-o",
                         str(tmp_path / "out"), *(a for s in sets for a in ("--set", s))]) == 2
            assert f"error: {said}" in capsys.readouterr().err


@pytest.mark.parametrize("name, written", [("sparse_view_ct_8", "CT"), ("sparse_view_ct_8", "Ct"),
                                           ("cs_mri_x4", "MRI"), ("cs_mri_x4", " Mri ")])
def test_a_user_config_file_may_write_its_modality_in_any_case(tmp_path, name, written):
    """`modality: CT` in a user's config file was refused ('modality: expected one of "ct" or "mri", got "CT"') though
    a measurements file's modality is read in any case: both are pipelines.modality.modality_name's."""
    text = (REPO_CONFIGS / f"{name}.yaml").read_text()
    lower = "modality: mri\n" if name.startswith("cs_mri") else "modality: ct\n"
    assert lower in text
    user = _write(tmp_path, text.replace(lower, f"modality: {written!r}\n"))
    cfg, bundled = load_config(user), load_config(name)
    assert cfg.modality == bundled.modality and cfg.fingerprint() == bundled.fingerprint()
    assert cfg.resolved().to_dict() == bundled.resolved().to_dict()
    with pytest.raises(InputError, match='modality: expected one of "ct" or "mri", got "xray"'):
        load_config(_write(tmp_path, text.replace(lower, "modality: xray\n")))


def test_a_list_too_short_is_told_its_bound_not_an_exact_length():
    """An empty list where at least one value is needed said "expected 1 values", as if exactly one were."""
    with pytest.raises(InputError, match=r"solver\.cross_validate\.lam: expected at least 1 value, got \[\]"):
        load_config("sparse_view_ct_8", ["solver.cross_validate.lam=[]"], check_files=False)
    with pytest.raises(InputError, match=r"outputs\.window: expected 2 values, got \[1, 2, 3\]"):  # a pair: exactly
        load_config("sparse_view_ct_8", ["outputs.window=[1,2,3]"], check_files=False)


def test_a_bad_element_of_a_list_set_with_set_is_named_as_set():
    """--set outputs.window=[.nan,1] (or solver.clip) was blamed on the bundled file ('configs/sparse_view_ct_8.yaml:
    outputs.window[0]: expected a finite number'), which holds a good window: an element's key is its list's."""
    for sets, said in ((["outputs.window=[.nan, 1]"], "overrides: outputs.window[0]: expected a finite number"),
                       (["solver.clip=[0, .inf]"], "overrides: solver.clip[1]: expected a finite number")):
        with pytest.raises(InputError) as e:
            load_config("sparse_view_ct_8", sets, check_files=False)
        assert str(e.value).startswith(said), str(e.value)


def test_an_empty_pair_is_told_once(tmp_path):
    """window: [] (or --set solver.clip=[]) printed 'outputs.window: expected a list [low, high]' twice, once for each
    missing element."""
    text = (REPO_CONFIGS / "sparse_view_ct_8.yaml").read_text()
    user = _write(tmp_path, text.replace("window: [-1000.0, 1000.0]", "window: []"))
    with pytest.raises(InputError) as e:
        load_config(user, check_files=False)
    assert str(e.value) == f"{user}: outputs.window: expected a list [low, high]"
    with pytest.raises(InputError) as e:
        load_config("sparse_view_ct_8", ["solver.clip=[]"], check_files=False)
    assert str(e.value) == "overrides: solver.clip: expected a list [low, high]"


def test_a_config_path_that_is_a_folder_is_told_a_folder(tmp_path):
    """-c some_folder said 'config not found: some_folder', though the folder is there: it is told a folder, with the
    YAML files in it."""
    (tmp_path / "mine.yaml").write_text("task: x\n")
    with pytest.raises(InputError) as e:
        load_config(tmp_path)
    assert str(e.value) == f"{tmp_path}: a folder, not a config file; give a YAML file (in it: mine.yaml)"
    for i in range(6):
        (tmp_path / f"more{i}.yaml").write_text("task: x\n")
    with pytest.raises(InputError, match=r"\(in it: mine.yaml, more0.yaml, more1.yaml, more2.yaml, more3.yaml, ...\)$"):
        load_config(tmp_path)
    folder = tmp_path / "named.yaml"
    folder.mkdir()
    with pytest.raises(InputError, match=r"named.yaml: a folder, not a config file; give a YAML file$"):
        load_config(folder)


def test_a_key_yaml_reads_as_no_name_is_told_with_the_fix(tmp_path):
    """A key YAML reads as a number, true/false or null ('1:', 'on:', '~:') said '[1]: Keys should be strings', as if
    a list element were wrong, naming no fix."""
    text = (REPO_CONFIGS / "sparse_view_ct_8.yaml").read_text()
    for key, said in (("1", "ct.1: a key must be a name, got 1"), ("on", "ct.true: a key must be a name, got true"),
                      ("~", "ct.null: a key must be a name, got null")):
        user = _write(tmp_path, text.replace("  beam: parallel", f"  {key}: parallel"))
        with pytest.raises(InputError) as e:
            load_config(user, check_files=False)
        assert str(e.value) == f"{user}: {said}; write the key meant (or quote it)"


def test_a_whole_number_beyond_64_bits_is_refused_naming_its_key(tmp_path):
    """--set solver.steps=10^30 passed the check and the run stopped after the simulation with 'solver (fast):
    Overflow when unpacking long long' (numpy and torch take 64-bit integers); true for a number named the section
    ('ct: n_views: expected a number'), not the key."""
    big = 10 ** 30
    for name, key in (("sparse_view_ct_8", "solver.steps"), ("sparse_view_ct_8", "ct.n_views"),
                      ("sparse_view_ct_8", "simulation.upsample"), ("cs_mri_x4", "solver.self_adapt.steps"),
                      ("cs_mri_x4", "mri.n_coils")):
        with pytest.raises(InputError) as e:
            load_config(name, [f"{key}={big}"], check_files=False)
        assert str(e.value) == f"overrides: {key}: must be <= {2 ** 63 - 1}, got {big}"
    text = (REPO_CONFIGS / "sparse_view_ct_8.yaml").read_text()
    user = _write(tmp_path, text.replace("  seed: 0\n  device", f"  seed: {big}\n  device"))
    with pytest.raises(InputError, match=rf"^{user}: solver.seed: must be <= {2 ** 63 - 1}, got {big}$"):
        load_config(user, check_files=False)
    with pytest.raises(InputError, match="^overrides: solver.steps: expected an integer, got false$"):
        load_config("sparse_view_ct_8", ["solver.steps=no"], check_files=False)
    assert load_config("sparse_view_ct_8", [f"solver.seed={2 ** 63 - 1}"], check_files=False).solver.seed == 2 ** 63 - 1


@pytest.mark.parametrize("written, said", [("no", "got false; write it in quotes"), ("2020-01-01", "got the date 2020-01-01; write it in quotes"),
                                           ("8", "got 8; write it in quotes"), ("", "got null; give a value")])
def test_a_string_yaml_reads_as_something_else_is_told_the_fix(tmp_path, written, said):
    """task: no (YAML 1.1's false) or task: 2020-01-01 said 'expected a string, got false' or 'got
    datetime.date(2020, 1, 1)' (Python's repr), naming no fix: quoting it is."""
    text = (REPO_CONFIGS / "sparse_view_ct_8.yaml").read_text()
    user = _write(tmp_path, text.replace("task: sparse_view_ct_8", f"task: {written}"))
    with pytest.raises(InputError) as e:
        load_config(user, check_files=False)
    assert str(e.value) == f"{user}: task: expected a string, {said}"


def test_an_incident_count_numpy_cannot_sample_is_refused_at_load_time(tmp_path):
    """noise.I0=1e308 passed the check and the simulation stopped with a traceback ('ValueError: lam value too
    large', numpy's Poisson sampler); 1e18 still simulates."""
    with pytest.raises(InputError, match=r"^overrides: noise.I0: must be <= 1e\+18, got \"1e308\"$"):
        load_config("sparse_view_ct_8", ["noise.I0=1e308"], check_files=False)
    import numpy as np
    from operators.ct.physics import noisy_line_integrals
    cfg = load_config("sparse_view_ct_8", ["noise.I0=1e18"], check_files=False)
    y = noisy_line_integrals(np.full((2, 3), 0.5), "poisson", np.random.default_rng(0), I0=cfg.noise.I0)
    assert np.isfinite(y).all()


@pytest.mark.parametrize("name, sets", [("sparse_view_ct_8", ["noise.kind=gaussian"]), ("cs_mri_x4", [])])
def test_a_noise_too_large_for_single_precision_is_told_by_its_key(name, sets):
    """noise.sigma=1e300 simulated infinite measurements (with numpy's 'overflow encountered in cast' warning) and the
    run stopped with 'solver fbp diverged ... lower its step sizes (e.g. solver.zeta, solver.lambda_proj)', keys
    fbp has not. Now refused at load time by its key; the largest sigma allowed simulates finite data."""
    import warnings
    import numpy as np
    from medrecon.volume import Volume
    from pipelines.phantoms import ct_phantom
    from pipelines.simulation import simulate_volume
    with pytest.raises(InputError, match=r"^overrides: noise.sigma: must be <= 1e\+30"):
        load_config(name, [*sets, "noise.sigma=1.0e+300"], check_files=False)
    cfg = load_config(name, [*sets, "noise.sigma=1.0e+30"], check_files=False)
    vol = Volume(ct_phantom((1, 16, 16), seed=0).data + 1000.0, spacing=(2.0, 2.0, 3.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(simulate_volume(cfg, vol, 16)[1].data).all()


def test_a_solver_name_that_is_no_string_is_shown_as_written():
    """solver.name=null (or 5) said 'got "None"' (the union's tag is the name's str()), as if "None" were written."""
    for value, shown in (("null", "null"), ("5", "5"), ("Fast", '"Fast"')):
        with pytest.raises(InputError, match=rf"^overrides: solver.name: expected one of diffusion_mbir, .*, got {shown}$"):
            load_config("sparse_view_ct_8", [f"solver.name={value}"], check_files=False)
