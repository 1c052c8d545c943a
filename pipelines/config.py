"""Task configs: pydantic models, YAML loading, ``--set key.path=value`` overrides, readable errors.

A config is validated completely before anything runs. Every problem is reported on its own line as
``<config file>: <key path>: <what is wrong>``, for example::

    configs/my.yaml: solver.admm.rho: expected a number, got "ten"
    configs/my.yaml: solver.admm.rhoo: unknown key (did you mean "rho"?)
    configs/my.yaml: prior.path: file not found: /x/y (give a prior directory or bundled:ct_patch)
    --set solver.steps: expected an integer, got "ten"

A problem an override caused is named by its source: ``--set`` on the command line, ``overrides:`` from Python
(``pipelines.OVERRIDES_FROM``).

The ``solver:`` section holds the settings of one solver (``pipelines.registry``): a key of another solver is
an error that names the solver. When ``--set solver.name=X`` switches to another solver than the file's, the
file's solver keys that X does not take are left behind (they were settings of the file's solver), while
keys given with ``--set`` must belong to X.

Values left ``null`` are filled by :meth:`Config.resolved` from the registry (steps and CG iterations per
solver, z-TV weight and ADMM penalty per modality).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import re
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, field_validator, model_validator

from medrecon.bundled import PREFIX as BUNDLED_PREFIX, bundled_prior_path
from medrecon.errors import InputError
from operators.ct.fbp import FILTERS

from . import OVERRIDES_FROM
from .modality import intensity_card, modality_name
from .registry import SOLVERS, FastSettings, Section, Seed, SolverSettings
from .yaml_settings import model_at, parse_yaml, read_settings_text, refuse_folder, unknown_key_hint, yaml_load

# the bundled configs: where a wheel installs them (pyproject maps configs/ to pipelines.configs; first, so that
# another package's top-level configs/ in site-packages is never taken), else configs/ of a checkout
REPO_CONFIGS = next((p for p in (Path(__file__).resolve().parent / "configs", Path(__file__).resolve().parents[1] /
                                 "configs") if p.is_dir()), Path(__file__).resolve().parents[1] / "configs")


def _as_override(problem: str) -> str:
    """A problem an override caused, named by its source: '--set KEY: ...', or 'overrides: KEY: ...' from Python."""
    source = OVERRIDES_FROM.get()
    return f"{source} {problem}" if source.startswith("-") else f"{source}: {problem}"


# ---------------------------------------------------------------------------------------------- CT
class Detector(Section):
    n_det: Optional[int] = Field(None, gt=0)  # null: about sqrt(2) * image_size bins, centred on the pixel rows
    spacing: Optional[float] = Field(None, gt=0)  # mm; null: the reconstruction pixel size


class Fan(Section):
    source_distance: Optional[float] = Field(None, gt=0)  # source to rotation centre, mm; null: 2x the width
    detector_distance: Optional[float] = Field(None, ge=0)  # rotation centre to detector, mm; null: 1x width


class CT(Section):
    beam: Literal["parallel", "fan"] = "parallel"
    n_views: Optional[int] = Field(None, gt=0)  # sparse view: uniform over 180 deg (parallel) / 360 (fan)
    wedge_deg: Optional[float] = Field(None, gt=0, le=360)  # limited angle: one view per degree
    image_size: Optional[int] = Field(None, gt=0)  # null: the input's own (problem.reconstruction_grid)
    pixel_size: Optional[float] = Field(None, gt=0)  # mm; null: the input's field of view / image_size
    detector: Detector = Detector()
    fan: Fan = Fan()
    fbp_filter: Literal[FILTERS] = "ram-lak"
    # Data term of the iterative solvers: poisson = ray weights from the counts (PWLS, operators.ct.physics),
    # none = plain least squares; auto = poisson unless the data's noise is recorded as gaussian or none.
    weighting: Literal["auto", "poisson", "none"] = "auto"

    @model_validator(mode="after")
    def _one_angle_spec(self):
        if (self.n_views is None) == (self.wedge_deg is None):
            raise ValueError("give exactly one of n_views (sparse view) or wedge_deg (limited angle)")
        if self.wedge_deg is not None and self.wedge_deg < 2:  # one view a degree: fewer than 2 is one view
            raise ValueError(f"wedge_deg {self.wedge_deg:g}: give a wedge of at least 2 degrees (views are one degree "
                             "apart), or n_views for a sparse-view scan")
        if self.beam == "parallel" and self.wedge_deg is not None and self.wedge_deg > 180:
            raise ValueError(f"wedge_deg {self.wedge_deg:g}: a parallel beam's views repeat after 180 degrees; "
                             "give at most 180, or beam: fan")
        return self


# --------------------------------------------------------------------------------------------- MRI
class Mask(Section):
    kind: Literal["uniform1d", "gaussian1d", "equispaced1d", "poisson2d"] = "uniform1d"
    acceleration: float = Field(4.0, gt=1)
    center_fraction: float = Field(0.08, gt=0, lt=1)
    seed: Seed = 0


class MRI(Section):
    mode: Literal["2d", "3d"] = "2d"  # 2d: same mask on every slice; 3d: mask over (kz, kx), readout y (rows)
    image_size: Optional[int] = Field(None, gt=0)  # null: the input's own (problem.reconstruction_grid)
    pixel_size: Optional[float] = Field(None, gt=0)  # mm; null: the input's field of view / image_size
    mask: Mask = Mask()
    coils: Literal["single", "multi"] = "single"
    n_coils: int = Field(8, gt=0)  # simulation only
    # multi-coil: stored maps | simple estimate from the k-space centre | ESPIRiT (from the sampled centre)
    coil_maps: Literal["given", "estimate", "espirit"] = "given"
    # auto: complex for measured k-space, real for simulation from magnitude volumes | real | complex
    image: Literal["auto", "real", "complex"] = "auto"
    # measured k-space: keep only the lines of `mask` (a fully sampled file undersampled retrospectively)
    retrospective: bool = False

    @model_validator(mode="after")
    def _poisson_is_3d(self):
        if self.mask.kind == "poisson2d" and self.mode != "3d":
            raise ValueError("mask.kind poisson2d samples the (kz, kx) plane of a 3D acquisition: set mode: 3d, or "
                             "use a 1D mask kind for 2D slices")
        if self.retrospective and self.mode != "2d":
            raise ValueError("retrospective undersampling masks the lines of measured k-space, which is read as 2D "
                             "slices: set mode: 2d and a 1D mask kind")
        return self


# ------------------------------------------------------------------------------------ the rest
class Prior(Section):
    path: Optional[str] = None  # a prior directory, or bundled:NAME (ct_patch, mri_patch, ct, mri)


class Noise(Section):
    kind: Literal["poisson", "gaussian", "complex_gaussian", "none"] = "none"
    # CT incident photons per detector bin; at most 1e18: numpy's Poisson sampler takes no mean above about 9.2e18
    # (noise.I0=1e308 passed and the simulation stopped with a traceback, 'lam value too large')
    I0: float = Field(1e5, gt=0, le=1e18)
    # gaussian: line-integral units (CT); complex: per real/imag part (MRI); at most 1e30, so that the simulated
    # data stay finite in single precision (1e300 simulated infinities, and the run was told its solver diverged)
    sigma: float = Field(0.0, ge=0, le=1e30)
    seed: Seed = 0


class Simulation(Section):
    upsample: int = Field(2, ge=1)  # simulate on a grid this much finer (no inverse crime)


class Outputs(Section):
    dicom: bool = True
    preview: bool = True
    snapshots_every: int = Field(0, ge=0)
    window: Optional[tuple[float, float]] = None  # preview window, physical units; null: 1st-99th pct
    deidentify: bool = False  # nothing identifying in the output folder (medrecon.io.deidentify; dicom/: PS3.15)
    phase: bool = False  # complex MRI images: also write phase.nii.gz (radians)

    @model_validator(mode="after")
    def _window_rises(self):
        if self.window is not None and not self.window[0] < self.window[1]:
            raise ValueError(f"window {list(self.window)}: give [low, high] with low < high (physical units), e.g. "
                             "[-1000, 1000] for CT (a reversed window inverted the preview, an empty one blacked it)")
        return self


class Intensity(Section):
    physical_min: float
    physical_max: float
    unit: str = "HU"


class Config(Section):
    task: str
    modality: Literal["ct", "mri"]
    ct: Optional[CT] = None
    mri: Optional[MRI] = None
    prior: Prior = Prior()
    solver: SolverSettings = Field(default_factory=FastSettings)
    noise: Noise = Noise()
    simulation: Simulation = Simulation()
    outputs: Outputs = Outputs()
    intensity: Optional[Intensity] = None  # used when the solver has no prior
    _source: str = PrivateAttr("<config>")
    _given: Optional["Config"] = PrivateAttr(None)  # resolved(): the config before its nulls were filled

    _modality_in_any_case = field_validator("modality", mode="before")(modality_name)  # `modality: CT` is ct

    @model_validator(mode="after")
    def _consistent(self):
        other = "mri" if self.modality == "ct" else "ct"
        if getattr(self, self.modality) is None:
            raise ValueError(f"{self.modality}: section missing (modality is {self.modality})")
        if getattr(self, other) is not None:
            raise ValueError(f"{other}: remove this section (modality is {self.modality})")
        allowed = {"ct": ("poisson", "gaussian", "none"), "mri": ("complex_gaussian", "none")}[self.modality]
        if self.noise.kind not in allowed:
            raise ValueError(f"noise.kind: {self.noise.kind} does not fit modality {self.modality} "
                             f"(use one of {', '.join(allowed)})")
        spec = SOLVERS[self.solver.name]
        if self.modality not in spec.modalities:
            raise ValueError(f"solver.name: {spec.name} works only for {', '.join(spec.modalities)} "
                             f"(see the solver table in the README)")
        if getattr(self.solver, "likelihood", None) == "poisson" and self.modality != "ct":
            raise ValueError("solver.likelihood: poisson works only with CT data")
        return self

    # -- derived values ------------------------------------------------------------------------
    @property
    def source(self) -> str:
        return self._source

    @property
    def operator(self) -> CT | MRI:
        return self.ct if self.modality == "ct" else self.mri

    @property
    def image_size(self) -> int | None:
        return self.operator.image_size

    @property
    def needs_prior(self) -> bool:
        return SOLVERS[self.solver.name].needs_prior

    def resolved(self, measured_kspace: bool = False) -> "Config":
        """A copy with every null solver value replaced by its registry default (the config 'as run');
        ``measured_kspace``: the defaults for complex images of measured k-space (``registry.MEASURED_KSPACE``).
        A resolved config resolves to itself (with ``measured_kspace``: its source's measured-k-space defaults)."""
        if self._given is not None:
            return self.for_measured_kspace() if measured_kspace else self
        d = self.model_dump()
        acceleration = self.mri.mask.acceleration if self.modality == "mri" else None
        for key, value in SOLVERS[self.solver.name].defaults(self.modality, measured_kspace, acceleration).items():
            if isinstance(value, dict):  # a sub-section: its null keys, each with the key it is tied to (if any)
                section, tied = d["solver"][key], getattr(type(getattr(self.solver, key)), "TIED", {})
                section.update({k: v for k, v in value.items()
                                if section.get(k) is None and section.get(tied.get(k, k)) is None})
            elif d["solver"].get(key) is None:
                d["solver"][key] = value
        if d["intensity"] is None:
            d["intensity"] = {k: v for k, v in intensity_card(self.modality).items() if k in Intensity.model_fields}
        out = Config.model_validate(d)
        out._source, out._given = self._source, self
        return out

    def for_measured_kspace(self) -> "Config":
        """This resolved config with the defaults for complex images of measured k-space in the values its
        source left null; itself when it was not made by ``resolved``."""
        return self if self._given is None else self._given.resolved(measured_kspace=True)

    def set_by_source(self, *keys: str) -> bool:
        """Whether the config as given (before ``resolved`` filled its nulls) sets the value at ``keys``, e.g.
        ("solver", "cross_validate", "enabled"); True for a config not made by ``resolved``."""
        if self._given is None:
            return True
        value = self._given
        for k in keys:
            value = getattr(value, k, None)
        return value is not None

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    #: settings that say where or in what pieces a run computes, not what it computes (results do not depend on
    #: them): a batch rerun on another machine, or with smaller chunks, is the same batch
    WHERE_IT_RUNS: ClassVar[tuple] = ("device", "chunk_size")
    #: keys added after outputs were made with configs that lacked them, and their defaults: left out of the
    #: fingerprint at that default, so a batch's earlier outputs still match (the default does what the key's
    #: absence did)
    ADDED_KEYS: ClassVar[dict] = {("mri", "retrospective"): False}

    def fingerprint(self) -> str:
        """SHA-256 of the config as given (before ``resolved``), without ``WHERE_IT_RUNS`` and ``ADDED_KEYS`` at
        their defaults: a batch's outputs made with another differ."""
        given = (self if self._given is None else self._given).to_dict()
        for key in self.WHERE_IT_RUNS:
            given["solver"].pop(key, None)
        for (section, key), default in self.ADDED_KEYS.items():
            if isinstance(given.get(section), dict) and given[section].get(key, default) == default:
                given[section].pop(key, None)
        return hashlib.sha256(json.dumps(given, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------------- loading
def config_names() -> list[str]:
    return sorted(p.stem for p in REPO_CONFIGS.glob("*.yaml"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A YAML file path, or a bare name of one in the repository's configs/ folder."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if len(p.parts) == 1:
        for cand in (REPO_CONFIGS / p.name, REPO_CONFIGS / f"{p.name}.yaml", REPO_CONFIGS / f"{p.name}.yml"):
            if cand.is_file():
                return cand
    refuse_folder(name_or_path, "config file")  # "not found" sent the user looking for a file that is there
    names = config_names()
    raise InputError(f"config not found: {name_or_path} (give a YAML file or one of: {', '.join(names)})" if names
                     else f"config not found: {name_or_path}, and no bundled configs are installed ({REPO_CONFIGS} "
                          "is missing): give a YAML file, or reinstall medrecon")


def override_list(overrides) -> list[str]:
    """``overrides`` as a list of 'KEY=VALUE' strings: one string is one override (a Python caller's
    ``overrides="solver.steps=50"``); anything but strings is refused naming the fix."""
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, (dict, bytes)):
        raise InputError(f"overrides: give a list of 'KEY=VALUE' strings, e.g. ['solver.steps=50'], not "
                         f"{type(overrides).__name__}")
    given = list(overrides)  # once: a generator is read here only
    if not all(isinstance(o, str) for o in given):
        raise InputError("overrides: give a list of 'KEY=VALUE' strings, e.g. ['solver.steps=50'], not a list of "
                         "other values")
    return given


def override_keys(overrides) -> set[str]:
    """Every key the 'KEY=VALUE' ``overrides`` give a value: each KEY and, for a section given whole
    (``outputs={deidentify: true}``), the keys under it."""
    keys: set[str] = set()
    for o in override_list(overrides):
        _apply_override({}, o, keys)
    return keys


def load_config(source: str | Path | dict | Config, overrides: list[str] | tuple[str, ...] = (),
                check_files: bool = True) -> Config:
    """Load, override and validate a config; raise InputError listing every problem. ``overrides``: 'KEY=VALUE'
    strings (``override_list``: one string, or any iterable of them)."""
    overrides = override_list(overrides)
    if isinstance(source, Config):
        raw, label = source.model_dump(), source.source
    elif isinstance(source, dict):
        raw, label = json.loads(json.dumps(source)), "<config>"
    else:
        path = resolve_config_path(source)
        label = str(path)
        text = read_settings_text(path)
        raw = parse_yaml(text, label)
        if raw is None and not overrides:  # one line, not "required key missing" for each (--set may give them)
            names = config_names()
            raise InputError(f"{label}: the file is empty{' (it holds only comments)' if text.strip() else ''}; "
                             "write the config's keys in it (task, modality, ...)" +
                             (f", e.g. start from a copy of {REPO_CONFIGS / names[0]}.yaml" if names else ""))
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise InputError(f"{label}: expected a mapping of keys at the top level")
    file_solver = dict(raw.get("solver") or {}) if isinstance(raw.get("solver"), dict) else None
    in_file = _key_paths(raw)  # before the overrides: a problem under a section only --set made is --set's
    written: set[str] = set()  # every key a --set gave a value (the leaves of a section given whole)
    problems = [p for o in overrides for p in _apply_override(raw, o, written)]
    if problems:
        raise InputError(lines=[_as_override(p) for p in problems])
    if file_solver is not None:
        _leave_other_solvers_keys(raw, file_solver, overrides)
    cfg = None
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        problems = list(dict.fromkeys(_describe(err) for err in e.errors()))  # window: [] misses [0] and [1]: one line
    if cfg is not None and check_files:
        problems += _check_files(cfg, Path(label).parent if label != "<config>" else Path("."))
    if problems:
        given = {str(o).split("=", 1)[0].strip() for o in overrides}  # a key set with --set is named as such

        known = in_file | {""}  # "" : keys that share no section

        def by_set(problem: str) -> bool:
            """Whether a problem is a --set's: its key is one set, or lies under a section set whole that the file
            does not hold itself (a merged section keeps the file's keys, whose problems stay the file's); a
            section --set misspelt or a solver key --set kept after a switch; or a key in a section only --set
            made (intensity.physical_max, with intensity.physical_min set)."""
            key, _, message = problem.partition(":")
            key = re.sub(r"\[\d+\]", "", key)  # a list's element (outputs.window[0]) is the list's key
            return key in written or any((key.startswith(g + ".") and key not in in_file)
                       or (g.startswith(key + ".") and ("unknown key" in message or "not a setting of solver" in message
                                                        or g.rsplit(".", 1)[1] in message))
                       or _shared_section(key, g) not in known
                       for g in given)
        raise InputError(lines=[_as_override(p) if by_set(p) else f"{label}: {p}" for p in problems])
    cfg._source = label
    return cfg


def _key_paths(node: dict, prefix: str = "") -> set[str]:
    """Every dotted key path of a nested mapping (sections and values)."""
    out = set()
    for k, v in node.items():
        path = f"{prefix}{k}"
        out.add(path)
        if isinstance(v, dict):
            out |= _key_paths(v, path + ".")
    return out


def _shared_section(a: str, b: str) -> str:
    """The longest dotted prefix two keys share ('' for none): 'intensity' of intensity.physical_min/max."""
    shared = []
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        shared.append(x)
    return ".".join(shared)


def _leave_other_solvers_keys(raw: dict, file_solver: dict, overrides) -> None:
    """After ``--set solver.name=X`` (X not the file's solver): drop the file's solver keys X does not take."""
    section = raw.get("solver")
    name = section.get("name") if isinstance(section, dict) else None
    if name == file_solver.get("name") or name not in SOLVERS:
        return
    keys = [o.partition("=")[0].strip().split(".")[1:] for o in overrides if o.strip().startswith("solver.")]
    given = {k[0] for k in keys if k}
    settings = SOLVERS[name].settings
    raw["solver"] = {k: v for k, v in section.items() if k in given or k in settings.model_fields}
    for sub, refused in getattr(settings, "NOT_TAKEN", {}).items():  # e.g. admm_tv: the samplers' admm.lam_xy
        if isinstance(raw["solver"].get(sub), dict):
            raw["solver"][sub] = {k: v for k, v in raw["solver"][sub].items()
                                  if k not in refused or [sub, k] in keys}


def _apply_override(raw: dict, item: str, written: set | None = None) -> list[str]:
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        example = "--set solver.steps=50" if OVERRIDES_FROM.get() == "--set" else "'solver.steps=50'"
        return [f"{item}: expected KEY=VALUE (e.g. {example})"]
    try:
        text = value.strip()
        # a decimal integer is one even with leading zeros (YAML 1.1 reads 010 as octal 8)
        parsed = int(text) if re.fullmatch(r"[+-]?\d+", text) else yaml_load(text) if text else None
    except yaml.YAMLError:
        parsed = value
    node, parts = raw, key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            return [f"{item}: {'.'.join(parts[:i + 1])} is a value, not a section"]
        node = child
    node[parts[-1]] = _merged(node.get(parts[-1]), parsed)
    if written is not None:
        written |= {key} | ({f"{key}.{k}" for k in _key_paths(parsed)} if isinstance(parsed, dict) else set())
    return []


def _merged(old, new):
    """A section given with --set (``solver.admm={lam: 0.3}``) over the file's: its keys replace the file's, the
    others stay (it replaced the whole section, dropping a config's tuned lam_xy and start_sigma)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return {**old, **{k: _merged(old.get(k), v) for k, v in new.items()}}
    return new


# -------------------------------------------------------------------------- error messages
def _show(value: Any) -> str:
    try:
        return json.dumps(value)
    except TypeError:
        return repr(value)


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _solver_loc(loc: tuple) -> tuple[tuple, str | None]:
    """Pydantic puts the solver's name into the key path of its errors (solver.fast.eta): take it out."""
    if len(loc) > 1 and loc[0] == "solver" and loc[1] in SOLVERS:
        return (loc[0], *loc[2:]), str(loc[1])
    return loc, None


def section_at(loc: tuple, solver: str | None = None) -> type[BaseModel] | None:
    """The config section class at a key path (to suggest its field names)."""
    if solver is not None and loc and loc[0] == "solver":
        return model_at(SOLVERS[solver].settings, loc[1:])
    return model_at(Config, loc)


_EXPECT = {"float_parsing": "a number", "float_type": "a number", "int_parsing": "an integer",
           "int_type": "an integer", "int_from_float": "an integer", "bool_parsing": "true or false",
           "bool_type": "true or false", "string_type": "a string", "model_type": "a section (key: value lines)",
           "model_attributes_type": "a section (key: value lines)", "dict_type": "a section (key: value lines)",
           "tuple_type": "a list [low, high]", "list_type": "a list", "finite_number": "a finite number"}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _describe(err: dict) -> str:
    (loc, solver), kind, ctx = _solver_loc(tuple(err["loc"])), err["type"], err.get("ctx") or {}
    if kind == "key_problem":  # a section's own check of one key (registry.Section): named by the key
        loc, err = (*loc, ctx["key"]), {**err, "msg": ctx["problem"]}
    where = _loc(loc) or "(top level)"
    if kind == "extra_forbidden":
        hint = unknown_key_hint(section_at(loc[:-1], solver), loc[-1])
        owners = [n for n, s in SOLVERS.items() if loc[-1] in s.settings.model_fields]
        if solver is not None and len(loc) == 2 and owners:
            return f"{where}: not a setting of solver {solver} (it belongs to {', '.join(owners)})"
        return f"{where}: unknown key ({hint})"
    if kind == "invalid_key":  # YAML read the key as a number, true/false (yes, on, ...) or null
        where = ".".join(str(part) for part in loc[:-1]) + "." * (len(loc) > 1) + _show(err["input"])
        return f"{where}: a key must be a name, got {_show(err['input'])}; write the key meant (or quote it)"
    if kind == "union_tag_invalid":
        given = err["input"].get("name") if isinstance(err["input"], dict) else ctx.get("tag")  # the tag is str()'s
        return f"{where}.name: expected one of {', '.join(SOLVERS)}, got {_show(given)}"
    if kind == "union_tag_not_found":
        return f"{where}.name: required key missing (one of {', '.join(SOLVERS)})"
    if kind == "missing" and loc and isinstance(loc[-1], int):
        return f"{_loc(loc[:-1])}: expected a list [low, high]"
    if kind == "missing":
        return f"{where}: required key missing"
    if kind == "string_type":  # YAML read it as a number, true/false (no, on, ...), a date (2020-01-01) or null
        value = err["input"]
        shown = f"the date {value.isoformat()}" if isinstance(value, datetime.date) else _show(value)
        fix = "give a value" if value is None else "write it in quotes"
        return f"{where}: expected a string, got {shown}; {fix}"
    if kind in _EXPECT:
        return f"{where}: expected {_EXPECT[kind]}, got {_show(err['input'])}"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", '"')
        return f"{where}: expected one of {expected}, got {_show(err['input'])}"
    if kind in _BOUNDS:
        bound = next(v for k, v in ctx.items())
        return f"{where}: must be {_BOUNDS[kind]} {bound}, got {_show(err['input'])}"
    if kind in ("too_short", "too_long"):  # a list's bound; a tuple's (a pair such as a window) exact length
        n = ctx["min_length"] if kind == "too_short" else ctx["max_length"]
        bound = f"{'' if ctx.get('field_type') == 'Tuple' else 'at least ' if kind == 'too_short' else 'at most '}" \
                f"{n} value{'s' * (n != 1)}"
        return f"{where}: expected {bound}, got {_show(err['input'])}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}" if loc else msg  # whole-config checks name their keys themselves


# ---------------------------------------------------------------------------- file checks
def resolve_prior_path(spec: str, base_dir: Path = Path(".")) -> Path:
    """``bundled:NAME`` -> medrecon/assets/priors/NAME; a path as given, else relative to the config."""
    if spec.startswith(BUNDLED_PREFIX):
        return bundled_prior_path(spec)
    p = Path(spec).expanduser()
    if not p.is_absolute() and not p.exists() and (base_dir / p).exists():
        p = base_dir / p
    return p


def _check_files(cfg: Config, base_dir: Path) -> list[str]:
    if not cfg.needs_prior:
        return []
    hint = f"give a prior directory or bundled:{cfg.modality}_patch"
    if not cfg.prior.path:
        return [f"prior.path: solver {cfg.solver.name} needs a prior ({hint})"]
    try:
        p = resolve_prior_path(cfg.prior.path, base_dir)
    except InputError as e:
        return [f"prior.path: {e}"]
    if not p.exists():
        return [f"prior.path: file not found: {p} ({hint})"]
    return []
