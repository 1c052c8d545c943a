"""The solver registry is the one source of truth: config defaults, config comments and the README follow it."""
from pathlib import Path

import pytest
import yaml

from medrecon.errors import InputError
from pipelines.config import REPO_CONFIGS, config_names, load_config
from pipelines.registry import ADMM_DEFAULTS, FAST_END, SOLVERS, WARM_START_DEFAULTS, solver_table

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("modality,config", [("ct", "limited_angle_ct_90"), ("mri", "cs_mri_x4")])
@pytest.mark.parametrize("name", list(SOLVERS))
def test_resolved_config_takes_the_registry_defaults(name, modality, config):
    spec = SOLVERS[name]
    if modality not in spec.modalities:
        with pytest.raises(InputError, match=f"solver.name: {name} works only for"):
            load_config(config, [f"solver.name={name}"], check_files=False)
        return
    s = load_config(config, [f"solver.name={name}"], check_files=False).resolved().solver
    given = yaml.safe_load((ROOT / "configs" / f"{config}.yaml").read_text())
    d = spec.defaults(modality)
    assert s.steps == d["steps"]
    if spec.sampler is not None:  # diffusion samplers: the class is the source of its step defaults
        assert (s.steps, s.n_cg) == (spec.sampler.default_steps, spec.sampler.default_n_cg)
    if hasattr(s, "warm_start"):  # the modality's warm start, the solver's own values and the config's over it
        own = given["solver"]["warm_start"]
        config_acceleration = given.get("mri", {}).get("mask", {}).get("acceleration", 0.0)
        up_to, low = (spec.warm_low_acceleration or {}).get(modality, (0.0, {}))
        assert s.warm_start.model_dump() == {**WARM_START_DEFAULTS[modality], "iters": 100,
                                             **(spec.warm or {}).get(modality, {}),
                                             **(low if config_acceleration <= up_to else {}),
                                             **{k: v for k, v in own.items() if v is not None}}
    # how the fast samplers end (end_sigma: the config's, see test_config); the others keep their papers' last step
    assert hasattr(s, "final_sigma") == (name in ("fast", "slicewise_fast"))
    if hasattr(s, "final_sigma"):
        assert s.final_sigma == FAST_END[modality]["final_sigma"]
    if spec.z_tv == "default":
        own = (spec.admm or {}).get(modality, ADMM_DEFAULTS[modality])
        # the config's in-plane keys stay (null: their registry default), unless the solver leaves them behind
        # (admm_tv: NOT_TAKEN)
        left = getattr(spec.settings, "NOT_TAKEN", {}).get("admm", ())
        config_admm = given["solver"].get("admm", {})
        inplane = {key: default if key in left or config_admm.get(key) is None else config_admm[key]
                   for key, default in (("lam_xy", 0.0), ("at_pixel_mm", None), ("rho_xy_follows_pixel", None))}
        assert s.admm.model_dump() == {"at_slice_mm": None, "same_mask_scale": None, "rho_follows_spacing": None,
                                       **inplane, **own}
    elif spec.z_tv == "optional":
        assert s.admm.lam == 0.0
    else:
        assert not hasattr(s, "admm")


def test_a_knob_of_another_solver_is_an_error_that_names_it():
    with pytest.raises(InputError) as e:
        load_config("sparse_view_ct_8", ["solver.snr=0.2"], check_files=False)
    assert "solver.snr: not a setting of solver fast (it belongs to diffusion_mbir, slicewise_mbir, projection, " \
           "mcg)" in str(e.value)
    with pytest.raises(InputError, match="solver.zeta: not a setting of solver admm_tv"):
        load_config("sparse_view_ct_8", ["solver.name=admm_tv", "solver.zeta=2"], check_files=False)
    with pytest.raises(InputError, match="admm.lam_xy: the classical admm_tv has no in-plane weight"):
        load_config("sparse_view_ct_8", ["solver.name=admm_tv", "solver.admm.lam_xy=0.1"], check_files=False)
    for name in config_names():  # a file's in-plane weight for its sampler stays behind when admm_tv is asked for
        cfg = load_config(name, ["solver.name=admm_tv"], check_files=False)
        assert cfg.solver.name == "admm_tv" and not cfg.solver.admm.lam_xy, name
    with pytest.raises(InputError, match="solver.name: expected one of diffusion_mbir, fast"):
        load_config("sparse_view_ct_8", ["solver.name=magic"], check_files=False)


def test_switching_solver_leaves_the_files_other_settings_behind():
    cfg = load_config("sparse_view_ct_8", ["solver.name=fbp"], check_files=False)
    assert cfg.solver.name == "fbp" and not hasattr(cfg.solver, "eta")
    cfg = load_config("sparse_view_ct_8", ["solver.name=admm_tv"], check_files=False)
    assert cfg.solver.nonneg is True  # a setting both solvers take is kept from the file


@pytest.mark.parametrize("path", sorted(REPO_CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_config_comments_list_the_registry(path):
    cfg = load_config(path, check_files=False)
    line = next(l for l in path.read_text().splitlines() if l.strip().startswith("name:"))
    listed = [n.strip() for n in line.split("#", 1)[1].split("|")]
    assert listed == [n for n, s in SOLVERS.items() if cfg.modality in s.modalities]
    assert set(cfg.solver.model_fields_set) <= set(SOLVERS[cfg.solver.name].settings.model_fields)


def test_readme_solver_table_is_the_registry():
    assert solver_table() in (ROOT / "README.md").read_text()
