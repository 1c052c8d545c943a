"""One reconstruction problem: built once from a validated config and an input, solved by any registered solver.

Flow: input (volume -> simulated measurement, or a measurements file) -> ``Problem`` (prior, intensity map,
operator, data in model units, output grid) -> ``Problem.solve(settings)`` -> ``Problem.to_volume(x)``.
``reconstruct``, ``compare``, ``batch``, ``demo`` and the Python API all go through it.

Units: solvers work in the **model units** of an intensity map (the prior's, or the config's ``intensity``
section). With phi the measured quantity of a physical value (CT: mu per pixel, ``attenuation_per_pixel``;
MRI: the value itself) and HU = to_physical(x) affine in x, the data the solver sees are
    y_model = (y - b A(1)) / a,   a = phi(to_physical(1)) - phi(to_physical(0)),   b = phi(to_physical(0)),
so that A x = y_model exactly. The CT operator is the projector in pixel units (DiffusionMBIR's scaling,
so the paper's lam/rho keep their meaning). Measured k-space is scaled so that the zero-filled magnitude's
99.9th percentile is 1.

MRI images are complex for measured k-space (``mri.image: auto``; real for simulations from magnitude
volumes): the intensity map then acts on the real and the imaginary part alike (b (1 + i) above), so a
real-valued prior sees both parts in its own units (score-MRI), the image's mean phase is rotated to 0 at
load (so the real part carries the signal), and ``to_volume`` returns the magnitude (``phase_volume`` the
phase).
"""
from __future__ import annotations

import logging
import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from medrecon.device import resolve_device, resolve_precision
from medrecon.errors import InputError
from medrecon.io import read_volume
from medrecon.io.common import check_voxels
from medrecon.io.deidentify import input_label
from medrecon.linop import LinearOperator, slices_apart, whitened
from medrecon.metrics import per_axis_metrics
from medrecon.priors import Denoiser, IntensityMap
from medrecon.priors.train import adapt_prior, adaptation_options
from medrecon.solvers import admm_tv, cgls, sample_posterior, sirt
from medrecon.solvers.diffusion import sample_seeds
from medrecon.volume import Volume
from operators.ct import GEOMETRIES, attenuation_per_pixel, fbp, pixel_unit_projector
from operators.ct import poisson_weights_from_line_integrals
from operators.mri import (ESPIRIT_KERNEL_WIDTH, ESPIRIT_MIN_CALIBRATION, ESPIRIT_READOUT_CALIBRATION,
                           calibration_region, coil_support, mask_acceleration, mri_operator)
from operators.mri import with_real_input

from .config import Config, config_names, load_config, resolve_prior_path
from .crossval import cross_validate
from .measurement import Measurement, is_measurement_file
from .modality import MODALITY_OF_DICOM, Modality, intensity_card, modality_name, value_problem
from .raw_mri import is_measured_kspace, undersampled
from .prior_cards import PUBLIC_CARDS, load_prior_for
from .registry import SELF_ADAPT_DEFAULT, SELF_ADAPT_OFF, SOLVERS
from .simulation import MAGNITUDE_PERCENTILE, grid_offsets, magnitude_scale, mri_mask, simulate_volume

log = logging.getLogger("medrecon")
MAX_OBLONG = 1.5  # in-plane pixels more oblong than this need --resample (most likely a slice axis not the third)
GUIDED = ("projection", "mcg", "dps")  # samplers that apply A to chunks of slices (weights passed, not folded in)


@dataclass
class Solution:
    x: torch.Tensor  # model units
    std: torch.Tensor | None = None  # posterior std (samples > 1), model units
    nfe_per_slice: int = 0  # network evaluations
    backward_per_slice: int = 0  # backward passes through the network (mcg, dps)


@dataclass
class Problem:
    """Everything a solver needs, built once (see the module docstring)."""

    config: Config  # resolved
    device: torch.device
    prior: Denoiser | None
    intensity: IntensityMap
    measurement: Measurement
    operator: LinearOperator  # model units
    data: torch.Tensor  # y in model units
    geometry: object | None = None  # CT geometry
    reference: Volume | None = None  # the simulated case's ground truth on the reconstruction grid
    source: Volume | None = None  # the input volume (DICOM metadata for the derived series)
    data_scale: float = 1.0  # measured k-space was divided by this
    sqrt_weights: torch.Tensor | None = None  # CT ray weights W^1/2 of the data term (see ``least_squares``)
    no_signal: float = 0.0  # the model value whose measured quantity is 0 (CT: mu 0, -1000 HU; MRI: 0), -b / a
    info: dict = field(default_factory=dict)
    adapted: tuple | None = None  # after a self-adapted solve: (the first result as a Volume, the adapted prior)

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def build(cls, cfg: Config, input, *, series: str | None = None, prior: Denoiser | None = None,
              load_prior: bool = True, resample: bool = False) -> "Problem":
        """From a volume (simulated first), a measurements file, a Volume or a Measurement.
        ``prior``: an already loaded prior, moved to the config's device (else loaded from the config when its
        solver needs one).
        ``resample``: allow resampling the input onto the prior's grid or pixel-size range (else a mismatch is
        an error that says what disagrees); every resampling is recorded in ``info["grid"]``.
        ``cfg``: a config as ``pipelines.load_config`` returns it, or resolved (``Config.resolved``, done here)."""
        if not isinstance(input, (Measurement, Volume, str, os.PathLike)):  # (an array failed inside pathlib)
            raise TypeError(f"give the input as a medrecon.Volume (an array: Volume(array, spacing=(x, y, z) mm)), a "
                            f"Measurement or a file path, not {type(input).__name__}")
        if not isinstance(cfg, Config):  # a dict or a config's name failed with an AttributeError inside
            raise TypeError(f"give the config as pipelines.load_config returns it (load_config('sparse_view_ct_8') or "
                            f"load_config(path, overrides)), not {type(cfg).__name__}")
        cfg = cfg.resolved()  # the solver's null settings filled in (a resolved config stays as it is)
        device = resolve_device(cfg.solver.device)
        if prior is None and load_prior and cfg.needs_prior:
            prior = configured_prior(cfg, device)
        elif prior is not None:  # one loaded elsewhere (on the CPU, say): run where we run
            prior = prior.to(device)
        if prior is not None and prior.intensity is None and (getattr(prior, "card", None) or {}).get(
                "architecture") in PUBLIC_CARDS:  # its [0, 1] model range would take the config's [-1, 1] window
            raise InputError(f"prior {prior.name}: a public checkpoint without an intensity map (medrecon.priors."
                             "load_prior adds none): load it with pipelines.prior_cards.load_prior_for, which adds "
                             "its default card, or give a model card with `intensity`")
        imap = prior.intensity if prior is not None and prior.intensity is not None else \
            IntensityMap(**cfg.intensity.model_dump())
        reference = source = None
        info: dict = {}
        if isinstance(input, Measurement):
            meas = input.check(input.info.get("source") or "the measurements")  # as a file is checked as read
        elif not isinstance(input, Volume) and is_measurement_file(input):
            if series is not None:  # it was passed over without a word
                raise InputError(f"{input} is a measurements file; --series applies to a folder of DICOM files")
            meas = Measurement.load(input)
            if cfg.outputs.deidentify:  # its info names the folder it was simulated from (a patient's, often)
                meas.info["source"] = input_label(input)
        else:
            if cfg.modality == "mri" and cfg.mri.retrospective:  # before the simulation, not after it
                named = input.meta.get("source") if isinstance(input, Volume) else Path(input).name
                raise InputError(f"{named or 'the input'}: {_RETROSPECTIVE_IMAGES}")
            source = input if isinstance(input, Volume) else read_volume(input, series=series)
            if isinstance(input, Volume):  # a file's voxels were checked as they were read
                check_voxels(input.data, "the input Volume")
            reference, meas, info["grid"] = simulate_on_its_grid(cfg, prior, source, resample)
        if meas.modality != cfg.modality:
            raise InputError(f"{meas.info.get('source') or 'the input'}: holds {meas.modality} measurements but "
                             f"the config is for {cfg.modality}")
        if cfg.modality == "mri" and cfg.mri.retrospective:
            meas = _retrospective(cfg, meas)
        check_view_angles(cfg, meas)
        check_grid(prior, meas)
        info["warnings"] = setting_warnings(cfg, meas, source, prior, resample)
        for w in info["warnings"]:
            log.warning(w)
        return cls.from_measurement(cfg, meas, device, prior, imap, reference=reference, source=source, info=info)

    @classmethod
    def from_measurement(cls, cfg, meas: Measurement, device, prior, imap: IntensityMap, **kw) -> "Problem":
        geom, scale, sqrt_w = None, 1.0, None
        if meas.modality == "ct":
            geom = meas.ct_geometry
            A = pixel_unit_projector(geom)
            y = torch.from_numpy(np.asarray(meas.data, np.float32))
            if ct_weighting(cfg, meas) == "poisson":
                sqrt_w = poisson_weights_from_line_integrals(y, capped=True).sqrt().to(device)
                kw.setdefault("info", {})["weighting"] = "poisson"

            def phi(u):
                return attenuation_per_pixel(u, geom.pixel_size_mm)
        else:
            cplx, measured = _complex_images(cfg, meas), is_measured_kspace(meas)
            A = _mri_operator(cfg, meas, cplx or measured)  # measured: scaled and aligned on complex images
            kw.setdefault("info", {})["coil_maps"] = coil_maps_used(cfg, meas)
            y = torch.from_numpy(np.asarray(meas.data, np.complex64))
            zero_filled = A.adjoint(y) if cplx or measured else None  # once: the scale and the rotation come from it
            if measured:
                scale = _measured_scale(zero_filled)
                y = y / scale
            if cplx or measured:  # a constant rotation: real images (mri.image=real) then fit the real part
                y = y * phase_rotation(zero_filled)  # a positive scale does not turn it
                if meas.reference is not None and kw.get("reference") is None:
                    kw["reference"] = meas.output_volume(meas.reference / scale, description="reference")
            if measured and not cplx:
                A = with_real_input(A)
            if measured and cplx:
                cfg = cfg.for_measured_kspace()  # its own solver defaults (registry.MEASURED_KSPACE)
            if cplx:
                kw.setdefault("info", {})["complex_images"] = True

            def phi(u):
                return u
        b = phi(imap.to_physical(0.0))
        a = phi(imap.to_physical(1.0)) - b
        y = y.to(device)
        ones = torch.ones(meas.grid.shape, device=device)
        if kw.get("info", {}).get("complex_images"):
            ones = torch.complex(ones, ones)  # the offset on the real and the imaginary part
        y_model = (y - b * A.forward(ones).to(y.dtype)) / a
        return cls(cfg, device, prior, imap, meas, A, y_model, geom, data_scale=scale, sqrt_weights=sqrt_w,
                   no_signal=-float(b) / float(a), **kw)

    # -- solving -------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.measurement.grid.shape)

    @property
    def slice_mm(self) -> float:
        """The distance between slices (mm), which the z-TV weight follows (``ADMM.weight``)."""
        return float(self.measurement.grid.spacing[2])

    @property
    def pixel_mm(self) -> float:
        """The in-plane pixel size (mm; the smaller side), which the in-plane TV weight follows (``ADMM.weight_xy``)."""
        return float(min(self.measurement.grid.spacing[:2]))

    @property
    def complex_images(self) -> bool:
        return bool(self.info.get("complex_images"))

    def bounds(self, settings) -> tuple[float, float] | None:
        """Clamp interval in model units: ``clip`` (physical units) and ``nonneg`` (not below the value that
        measures nothing, ``no_signal``: mu >= 0, i.e. -1000 HU, or MRI magnitude >= 0; not the intensity map's
        minimum, which a prior trained on a narrower window, e.g. -200..200 HU, puts above air); none for complex
        images."""
        if self.complex_images:
            return None
        lo, hi = (-math.inf, math.inf) if settings.clip is None else \
            (float(self.intensity.to_model(settings.clip[0])), float(self.intensity.to_model(settings.clip[1])))
        if settings.nonneg:
            lo = max(lo, self.no_signal)
            if lo >= hi:  # a clip wholly below what measures nothing: every voxel would be its top
                raise InputError(f"solver.clip {list(settings.clip)} lies below the lowest value nonneg allows "
                                 f"({float(self.intensity.to_physical(self.no_signal)):g}): raise clip's top, or set "
                                 "solver.nonneg=false")
        return None if (lo, hi) == (-math.inf, math.inf) else (lo, hi)

    def solve(self, settings=None, progress: bool = False, snapshot=None, snapshot_every: int = 0) -> Solution:
        """Run one registered solver (``settings``: a resolved solver section; default: the config's): with the
        settings cross-validation chose (``cross_validate``), and with ``self_adapt.steps`` a second time with a
        copy of the prior fine-tuned on the first result (kept in ``adapted``: (first result, adapted prior))."""
        s = settings or self.config.solver
        cv_nfe, self.adapted = 0, None
        if getattr(s, "cross_validate", None) is not None and s.cross_validate.enabled:
            s = cross_validate(self, s)  # the start_sigma and z-TV weight that predict held-out data best
            cv_nfe = self.info["cross_validation"]["network_evaluations_per_slice"]
        steps = self.self_adapt_steps(s)
        if steps and self.start_sigma(s) != 0:  # (0: CV kept the warm start)
            stage = tqdm.write if progress else (lambda text: None)
            stage(f"self-adapted reconstruction: pass 1 of 2, then {steps} steps fine-tuning the prior on its result, "
                  "then pass 2 (about 3x one pass)")
            warm = self.warm_start(s, progress)  # deterministic: both passes start from it
            first = self._run(s, progress, None, 0, warm)
            stage(f"pass 1 of 2 done; fine-tuning the prior on it ({steps} steps)")
            own, self.prior = self.prior, self._self_adapted_prior(s, steps, first.x, progress)
            stage("pass 2 of 2, with the fine-tuned prior")
            try:
                out = self._run(s, progress, snapshot, snapshot_every, warm)
            finally:
                self.prior = own
            out.nfe_per_slice += first.nfe_per_slice
            out.backward_per_slice += first.backward_per_slice  # both passes ran them (DPS, MCG)
        else:
            if steps:
                self.info["self_adapt"] = {"skipped": "cross-validation chose the warm start (no diffusion to adapt)"}
            out = self._run(s, progress, snapshot, snapshot_every)
        out.nfe_per_slice += cv_nfe
        bad = int((~torch.isfinite(out.x)).sum())
        if bad:  # a diverged run: say so here, not as a NaN in some later reader's message
            steps = [f"solver.{k}" for k in ("zeta", "lambda_proj") if k in type(s).model_fields]  # its own only
            fix = f"lower its step sizes ({', '.join(steps)})" if steps else "check the data's units and scale"
            raise InputError(f"solver {s.name} diverged: {bad} of {out.x.numel()} voxels are NaN or infinite; {fix} "
                             "or use the config's own solver")
        out.x = self.zero_unseen(out.x)
        if out.std is not None and self.seen is not None:
            out.std = torch.where(self.seen.to(out.std.device), out.std, 0.0)  # no spread where the result is set
        return out

    def zero_unseen(self, x: torch.Tensor) -> torch.Tensor:
        """MRI pixels no coil sees (outside the coil maps' support) set to physical 0: no data constrain them, and
        a sampler would leave noise and the prior's tile seams there."""
        return x if self.seen is None else torch.where(self.seen.to(x.device), x, self.physical_zero())

    @cached_property
    def seen(self) -> torch.Tensor | None:
        """The pixels some coil sees (``coil_support`` of the fixed operator; None: all of them, or CT)."""
        return None if self.measurement.modality == "ct" else coil_support(self.operator)

    def self_adapt_steps(self, s) -> int:
        """``solver.self_adapt.steps`` as set (a prior that cannot be adapted then stops here, before the first
        pass; without a prior, the first pass says what is missing); null: ``registry.SELF_ADAPT_DEFAULT`` for the
        solver and modality on images (not measured k-space) where the prior can be adapted, else 0."""
        a = getattr(s, "self_adapt", None)
        if a is None:  # not a diffusion solver
            return 0
        if a.steps is not None:
            if a.steps and self.prior is not None and (why := self._cannot_adapt(adaptation_options(self.prior))):
                raise InputError(f"solver.self_adapt.steps={a.steps}: {why}; set solver.self_adapt.steps=0")
            return a.steps
        modality = self.measurement.modality
        steps = SELF_ADAPT_DEFAULT.get(s.name, {}).get(modality, 0)
        if not steps or self.prior is None or is_measured_kspace(self.measurement):
            return 0
        off = SELF_ADAPT_OFF.get((modality, self.measurement.mask_layout))
        if off:
            self.info["self_adapt"] = {"skipped": f"off by default on {off}"}
            return 0
        try:
            why = self._cannot_adapt(adaptation_options(self.prior))
        except InputError:
            return 0
        if why:  # the default stands aside, and says so
            self.info["self_adapt"] = {"skipped": why}
            log.info(f"self-adaptation skipped: {why}")
            return 0
        return steps

    def _cannot_adapt(self, opts) -> str | None:
        """Why the first result cannot fine-tune a patch prior trained with ``opts`` (slices too small), or None."""
        from medrecon.priors.patch import too_small_for_patches
        g = self.measurement.grid
        why = too_small_for_patches(self.measurement.output_plane, g.spacing[:2], opts.patch_sizes,  # the first
                                    opts.pixel_spacing_range, opts.max_upsample)  # result's extent (output_grid)
        return why and f"the slices are too small to fine-tune prior {self.prior.name} on ({why})"

    def _self_adapted_prior(self, s, steps: int, first: torch.Tensor, progress: bool) -> Denoiser:
        """A copy of the prior fine-tuned on the first result (physical units, as ``medrecon train`` reads a
        volume; complex images: the magnitude, which beat their real and imaginary parts on measured k-space,
        RESULTS.md; in fp32 where ``solver.precision`` is fp32), recorded in ``info["self_adapt"]`` (with the first
        result's scores where there is a reference); ``adapted`` keeps the first result and the copy."""
        from medrecon.priors.patch import prepare_volumes

        first_vol = self.to_volume(self.zero_unseen(first), description="medrecon first pass")
        imap = self.intensity
        data = prepare_volumes([first_vol], vars(imap), model_range=(imap.model_min, imap.model_max),
                               modality=self.config.modality)
        a = s.self_adapt
        prior, record = adapt_prior(self.prior, data, steps, ema_decay=a.ema_decay, lr=a.lr, seed=s.seed,
                                    device=self.device, amp=self.info["precision"] != "fp32",
                                    progress=progress)
        if self.reference is not None:
            record["first_pass_scores"] = self.score(first_vol)
        self.info["self_adapt"] = record
        self.adapted = (first_vol, prior)
        return prior

    def _run(self, s, progress: bool, snapshot, snapshot_every: int, warm: torch.Tensor | None = None) -> Solution:
        """One solve with settings ``s``; ``warm``: its warm start when already computed (else computed here)."""
        if s.name in ("fbp", "zero_filled"):
            return Solution(self.linear_reconstruction(s.name))
        A, y = self.least_squares() if s.name not in GUIDED else (self.operator, self.data)
        start = self.physical_zero()
        if s.name == "cgls":  # each slice its own problem where the operator keeps them apart
            return Solution(cgls(A, y, n_iter=s.steps, x0=start, per_slice=slices_apart(A)))
        if s.name == "sirt":
            return Solution(sirt(A, y, n_iter=s.steps, x0=start))
        lam, rho, lam_xy, rho_xy = self._z_tv(s)
        if s.name == "admm_tv":
            with iteration_bar("ADMM-TV", s.steps, progress) as tick:
                return Solution(admm_tv(A, y, lam, rho, s.steps, axes=(0,) if s.tv == "z" else (0, 1, 2),
                                        n_cg=s.n_cg, x0=start, clip=self.bounds(s), callback=tick))
        if self.start_sigma(s) == 0:  # cross-validation chose the warm start itself: no diffusion
            return Solution(self.warm_start(s, progress))
        if self.prior is None:
            raise InputError(f"solver {s.name} needs a prior (prior.path)")
        if self.complex_images and s.name in GUIDED:
            raise InputError(f"solver {s.name} works on real images; use fast or diffusion_mbir for measured "
                             f"k-space, or set mri.image=real")
        self.prior.precision = self.info["precision"] = resolve_precision(s.precision, self.device,
                                                                          self.prior.bf16_measured)
        try:  # the sampler checks its arguments (e.g. end_sigma below the start) before the warm start's work
            solver = SOLVERS[s.name].sampler(
                self.prior, A, y, n_steps=s.steps, lam=lam, rho=rho, lam_xy=lam_xy, rho_xy=rho_xy, n_cg=s.n_cg,
                clip=self.bounds(s), chunk_size=s.chunk_size, seed=s.seed, progress=progress, snapshot=snapshot,
                snapshot_every=snapshot_every, start_sigma=self.start_sigma(s), **self._sampler_options(s))
        except ValueError as e:
            raise InputError(f"solver ({s.name}): {e}") from None
        x_init = warm.clone() if warm is not None else self.warm_start(s, progress)
        k = self.sample_count(s)
        if k > s.samples:
            log.info(f"one slice: the mean of {k} posterior samples (solver.single_slice_samples), each a full run")
        seeds = sample_seeds(solver.seed, k, s.antithetic) if k > 1 else None
        self.info["sample_seeds"] = seeds  # report.json: the seeds that ran (this solve's, not an earlier one's)
        self.info["antithetic_samples"] = bool(seeds) and s.antithetic  # each seed's second run: its noise negated
        if seeds:
            mean, std = sample_posterior(solver, k, seeds=seeds, x_init=x_init, antithetic=s.antithetic)
            out = Solution(mean, std, solver.nfe * k)
        else:
            out = Solution(solver.run(x_init=x_init), None, solver.nfe)
        out.backward_per_slice = solver.backward_passes * k
        return out

    @property
    def single_slice(self) -> bool:
        """One slice with nothing along z to couple (a 3D k-space mask couples the slices by itself)."""
        return self.measurement.grid.shape[0] == 1 and self.measurement.mask_layout != "3d"

    def sample_count(self, s) -> int:
        """The posterior samples a diffusion solve averages: ``samples``, at least ``single_slice_samples`` on a
        single slice."""
        return max(s.samples, s.single_slice_samples) if self.single_slice else s.samples

    def _z_tv(self, s) -> tuple[float, float, float, float]:
        """(lam, rho, lam_xy, rho_xy) of the solver's TV term: lam scaled to this volume's slice spacing and mask
        (``ADMM.weights``; 3D TV keeps its own), lam_xy the in-plane weight and rho_xy its penalty scaled to its
        pixel size (``ADMM.weight_xy``, ``ADMM.penalty_xy``), recorded in ``info["z_tv"]``; (0, 1, 0, 1) for
        solvers without one (slice-wise)."""
        if not hasattr(s, "admm"):
            return 0.0, 1.0, 0.0, 1.0
        same_mask = self.same_mask
        lam, rho = (s.admm.lam, s.admm.rho) if getattr(s, "tv", "z") == "3d" else \
            s.admm.weights(self.slice_mm, same_mask)
        lam_xy, rho_xy = s.admm.weight_xy(self.pixel_mm), s.admm.penalty_xy(rho, self.pixel_mm)
        self.info["z_tv"] = {"lam": lam, "rho": rho, "lam_xy": lam_xy, "rho_xy": rho_xy, "slice_mm": self.slice_mm,
                             "pixel_mm": self.pixel_mm, "same_mask": same_mask}
        return lam, rho, lam_xy, rho_xy

    def coarse_above(self, asked: float) -> float:
        """The fast sampler's two-scale noise level: ``asked`` where the prior was trained at twice this grid's pixel
        size (a patch prior's range), else 0 (off); recorded in ``info["two_scale"]``."""
        coarse_mm = 2 * self.pixel_mm
        span = getattr(self.prior, "pixel_spacing_mm_range", None)
        fits = getattr(self.prior, "image_size", None) is None and span is not None and in_pixel_range(coarse_mm, span)
        halvable = min(self.shape[-2:]) >= 2  # a 1-pixel side halves to 0 (it crashed)
        used = asked if fits and halvable else 0.0
        self.info["two_scale"] = {"coarse_above": used, "coarse_pixel_mm": round(coarse_mm, 4)}
        if asked and not used:
            self.info["two_scale"]["off"] = (
                f"slices of {self.shape[-2]} x {self.shape[-1]} pixels have no half size: one scale only"
                if not halvable else
                f"the coarse pixel {coarse_mm:.3g} mm is outside the pixel sizes prior {self.prior.name} was trained at"
                + (f" ({span[0]:.3g}-{span[1]:.3g} mm)" if span else "") + ": one scale only")
        return used

    @property
    def same_mask(self) -> bool:
        """MRI slices (2D layout) that share one k-space mask: their undersampling aliasing is the same on every slice."""
        m = self.measurement
        if m.mask_layout != "2d" or m.mask is None:
            return False
        mask = np.asarray(m.mask)
        return mask.ndim < 3 or bool((mask == mask[:1]).all())

    def linear_reconstruction(self, name: str) -> torch.Tensor:
        """FBP (CT; it inverts the mm projector, unweighted data) or zero-filled (MRI) of the data's deviation from
        the image that measures nothing (``no_signal``): the linear inverse of the physical data, whatever offset
        the intensity map puts on model 0 (a sparse-view FBP of a constant image is not constant)."""
        x0 = self.constant_image(self.no_signal)
        r = self.data - self.operator.forward(x0).to(self.data.dtype)
        if name == "zero_filled":
            return self.operator.adjoint(r) + x0
        x = fbp(r, self.geometry, self.config.ct.fbp_filter)
        return torch.as_tensor(x, device=self.device) * self.geometry.pixel_size_mm + x0

    def physical_zero(self) -> torch.Tensor:
        """The iterative solvers' start: physical value 0 in model units (CT: 0 HU; MRI: 0, i.e. model_min in the
        real and the imaginary part), so pixels the data do not see (outside the coil maps) stay 0, not the
        physical value of model 0."""
        return self.constant_image(float(self.intensity.to_model(0.0)))

    def constant_image(self, value: float) -> torch.Tensor:
        """A volume of ``value`` (model units; complex images: in the real and the imaginary part)."""
        x = torch.full(self.shape, value, device=self.device)
        return torch.complex(x, x) if self.complex_images else x

    @staticmethod
    def start_sigma(s) -> float | None:
        """The noise level a warm-started sampler's reverse diffusion starts at; None for a cold start."""
        w = getattr(s, "warm_start", None)
        return None if w is None or w.method == "none" else w.start_sigma

    def warm_start(self, s, progress: bool = False) -> torch.Tensor | None:
        """The start of a warm-started sampler: 3D ADMM-TV (rho = 10 lam, 5 CG steps); None for a cold start."""
        if self.start_sigma(s) is None:
            return None
        w = s.warm_start
        with iteration_bar("warm start (3D ADMM-TV)", w.iters, progress) as tick:
            return admm_tv(*self.least_squares(), w.lam, 10 * w.lam, w.iters, axes=(0, 1, 2), n_cg=5,
                           x0=self.physical_zero(), clip=self.bounds(s), callback=tick)

    def least_squares(self) -> tuple[LinearOperator, torch.Tensor]:
        """(A, y) of the data term 1/2 ||A x - y||^2 the iterative solvers minimise: W^1/2 A and W^1/2 y with
        CT ray weights (PWLS), else the operator and data themselves. The guided samplers take W instead
        (``weights``), as they apply A to chunks of slices."""
        return whitened(self.operator, self.data, self.sqrt_weights)

    def _sampler_options(self, s) -> dict:
        """Keyword arguments of the sampler class beyond the shared ones, from its settings."""
        opts = {k: getattr(s, k) for k in ("eta", "snr", "lambda_proj", "end_sigma", "final_sigma") if hasattr(s, k)}
        if hasattr(s, "coarse_above"):
            opts["coarse_above"] = self.coarse_above(s.coarse_above or 0.0)
        if s.name in GUIDED and self.sqrt_weights is not None:
            opts["weights"] = self.sqrt_weights ** 2
        if s.name == "mcg":
            opts["alpha"] = s.zeta
        if s.name == "dps":
            opts.update(zeta=s.zeta, likelihood=s.likelihood)
            if s.likelihood == "gaussian":
                opts.pop("weights", None)
            elif self.sqrt_weights is None:  # weights ~ detected counts, from the line integrals
                opts["weights"] = poisson_weights_from_line_integrals(
                    torch.from_numpy(np.asarray(self.measurement.data, np.float32)).to(self.device))
        return opts

    # -- results -------------------------------------------------------------------------------
    def score(self, vol: Volume, data_range: float | None = None) -> dict:
        """PSNR / SSIM per plane of ``vol`` against the reference, over the modality's window (CT: 2000 HU, MRI:
        1; whatever window a prior maps, e.g. a public checkpoint's -1024..3071, which scored 6.2 dB higher) unless
        ``data_range`` is given: how every benchmark and report.json score a result."""
        if data_range is None:
            window = intensity_card(self.config.modality)
            data_range = float(window["physical_max"] - window["physical_min"])
        return per_axis_metrics(self.reference.data, vol.data, data_range)

    def to_volume(self, x: torch.Tensor, description: str = "medrecon") -> Volume:
        """A model-unit estimate as a Volume in physical units on the output grid (complex images: magnitude)."""
        if x.is_complex():
            return self.output_grid(np.abs(self._physical_complex(x)), description=description)
        return self.output_grid(self.intensity.to_physical(x.real.float().cpu().numpy()), description=description)

    def phase_volume(self, x: torch.Tensor, description: str = "medrecon phase") -> Volume:
        """The phase (radians) of a complex estimate, after the load-time rotation (see the module doc)."""
        return self.output_grid(np.angle(self._physical_complex(x)), description=description)

    def output_grid(self, data: np.ndarray, **meta) -> Volume:
        """``data`` (on the solver's square grid) as the output Volume (``Measurement.output_volume``)."""
        return self.measurement.output_volume(data, **meta)

    def _physical_complex(self, x: torch.Tensor) -> np.ndarray:
        x = x.detach().cpu()
        to_phys = self.intensity.to_physical
        return to_phys(x.real.double().numpy()) + 1j * to_phys(x.imag.double().numpy())

    def prior_summary(self) -> dict | None:
        p = self.prior
        return None if p is None else {"name": p.name, "sha256": getattr(p, "sha256", None),
                                       "image_size": p.image_size}


def configured_prior(cfg: Config, device) -> Denoiser:
    return load_prior_for(resolve_prior_path(cfg.prior.path, Path(cfg.source).parent), device=device)


def simulate_on_its_grid(cfg: Config, prior, source: Volume, resample: bool = False):
    """(reference, measurement, grid) of a volume: the domain checks, then the simulation on the reconstruction
    grid (``reconstruction_grid``), as ``reconstruct`` and ``simulate`` both make it."""
    check_domain(cfg, prior, source)
    grid = reconstruction_grid(cfg, prior, source, resample)
    reference, meas = simulate_volume(cfg, source, grid["size"], grid["pixel_mm"])
    crop = source_extent(source, grid["size"], grid["pixel_mm"])
    if crop is not None:  # the square grid's padding is the solver's, not the input's: outputs and scores leave it
        meas.info["crop"] = crop
        reference = reference.crop(*crop)
    return reference, meas, grid


def source_extent(source: Volume, size: int, pixel_mm: float) -> tuple | None:
    """((row0, row1), (col0, col1)): the pixels of the square size x size grid (centred on the slice centre, as
    ``resample_inplane`` places it) whose centres lie inside a non-square input's slices; None where they all do."""
    inside = [np.flatnonzero(np.abs(grid_offsets(size, pixel_mm, n, float(mm), pixel_mm)) < n * float(mm) / 2)
              for n, mm in ((source.shape[1], source.spacing[1]), (source.shape[2], source.spacing[0]))]
    if all(len(k) == size for k in inside):
        return None
    return tuple((int(k[0]), int(k[-1]) + 1) for k in inside)


def in_pixel_range(pixel_mm: float, span: tuple[float, float]) -> bool:
    """Whether a pixel size lies in a prior's trained range (1 % slack for rounded card values)."""
    return span[0] * 0.99 <= pixel_mm <= span[1] * 1.01


def reconstruction_grid(cfg: Config, prior, source: Volume, resample: bool = False) -> dict:
    """The in-plane grid of the reconstruction: the input's own (square: the larger side, the other padded) at
    its own pixel size, unless the config names ``image_size``/``pixel_size`` (an explicit resampling) or a
    whole-slice prior needs its own size (allowed only with ``resample``). A pixel size outside the prior's
    training range is an error unless ``resample``, which then moves it into the range. Returns
    {size, pixel_mm, source_pixel_mm, resampled, reason}."""
    op = cfg.operator
    sx, sy = float(source.spacing[0]), float(source.spacing[1])
    fov = max(source.shape[2] * sx, source.shape[1] * sy)
    native = min(sx, sy)
    size, pixel, reason = round(fov / native), native, None
    aniso = max(sx, sy) / native  # square pixels are interpolated from oblong ones: say so, refuse a mixed-up axis
    if aniso > MAX_OBLONG and not resample:
        raise InputError(
            f"{source.meta.get('source', 'the input')}: in-plane pixels of {sx:.3g} x {sy:.3g} mm: one side "
            f"would be interpolated {aniso:.1f}x onto square {native:.3g} mm pixels. If the slices are not the "
            f"volume's third axis (a sagittal or coronal volume), reslice it to axial first; pass --resample to "
            f"interpolate anyway")
    oblong = f"non-square pixels ({sx:.3g} x {sy:.3g} mm) interpolated onto square {native:.3g} mm pixels" \
        if aniso > 1.01 else None
    if op.pixel_size is not None or op.image_size is not None:
        pixel = op.pixel_size or fov / op.image_size
        size = op.image_size or round(fov / pixel)
        reason = f"{cfg.modality}.image_size/pixel_size in the config"
    fixed = getattr(prior, "image_size", None)
    if fixed is not None and size != fixed:
        if not resample and reason is None:
            raise InputError(
                f"{source.meta.get('source', 'the input')}: slices of {source.shape[1]}x{source.shape[2]} at "
                f"{native:.3g} mm, but prior {prior.name} works on {fixed}x{fixed} slices only: use a prior that "
                f"works at any size (a patch prior, e.g. prior.path=bundled:{cfg.modality}_patch), train one on your "
                f"scans (medrecon train --arch patch), or pass --resample to resample the input onto {fixed}x{fixed}")
        if op.image_size is not None and op.image_size != fixed:
            raise InputError(f"{cfg.modality}.image_size: {op.image_size}, but prior {prior.name} works on "
                             f"{fixed}x{fixed} slices only (set {cfg.modality}.image_size={fixed} or leave it null)")
        size, pixel = fixed, op.pixel_size or fov / fixed
        reason = reason or f"--resample onto the {fixed}x{fixed} grid of prior {prior.name}"
    span = getattr(prior, "pixel_spacing_mm_range", None) if fixed is None else None
    if span is not None and not in_pixel_range(pixel, span):
        if not resample:
            raise InputError(
                f"{source.meta.get('source', 'the input')}: pixel size {pixel:.3g} mm is outside the range prior "
                f"{prior.name} was trained on ({span[0]:.3g}-{span[1]:.3g} mm): set {cfg.modality}.pixel_size inside "
                f"it, use a prior trained at this pixel size (medrecon train --arch patch on your scans, whose range takes "
                f"in their own pixel sizes; --pixel-range LO HI widens it), or pass "
                f"--resample to move it into the range")
        pixel = min(max(pixel, span[0]), span[1])
        size = round(fov / pixel)
        reason = f"--resample into the pixel-size range of prior {prior.name}"
    return {"size": int(size), "pixel_mm": float(pixel), "source_pixel_mm": [sx, sy],
            "resampled": bool(abs(pixel - native) > 1e-6 * native or oblong), "reason": reason or oblong}




@contextmanager
def iteration_bar(desc: str, total: int, progress: bool):
    """A progress bar over an iterative solver's ``total`` iterations (its ``callback``); None when not shown."""
    if not progress:
        yield None
        return
    with tqdm(total=total, desc=desc, unit="it") as bar:
        yield lambda k, x: bar.update(1)


def check_domain(cfg: Config, prior, source: Volume) -> None:
    """Stop when the input, the config and the prior disagree on what the data are."""
    problems = []
    where = source.meta.get("source", "the input")
    dicom_modality = str((source.meta.get("dicom") or {}).get("Modality", "") or "")
    if MODALITY_OF_DICOM.get(dicom_modality, cfg.modality) != cfg.modality:
        problems.append(f"{where}: a {dicom_modality} series, but the config is for {cfg.modality}: use a "
                        f"{MODALITY_OF_DICOM[dicom_modality]} config")
    card = (getattr(prior, "card", None) or {}) if prior is not None else {}
    card_modality, card_unit = modality_name(card.get("modality")), (card.get("intensity") or {}).get("unit")
    if card_modality and card_modality != cfg.modality:
        problems.append(f"prior {prior.name} was trained on {card_modality} but the config is for {cfg.modality}: "
                        f"use a {cfg.modality} prior")
    elif not card_modality and card_unit and cfg.intensity.unit and card_unit != cfg.intensity.unit:
        problems.append(f"prior {prior.name} was trained on values in {card_unit} but the config's are in "  # no
                        f"{cfg.intensity.unit}: use a {cfg.modality} prior")  # modality recorded: its unit tells
    why = value_problem(source, cfg.modality, where)
    if why:
        problems.append(why)
    if problems:
        raise InputError("; ".join(problems))


def ct_weighting(cfg: Config, meas: Measurement) -> str:
    """'poisson' or 'none': ``ct.weighting``, with auto = poisson unless the data's noise is recorded as
    gaussian or none (transmission data of unknown noise are counts)."""
    if cfg.ct.weighting != "auto":
        return cfg.ct.weighting
    return "none" if (meas.info.get("noise") or {}).get("kind") in ("gaussian", "none") else "poisson"


def scan_deg(cfg: Config) -> float:
    """The angles a CT config's views cover: its wedge, else a full scan (180 degrees parallel, 360 fan)."""
    return cfg.ct.wedge_deg if cfg.ct.wedge_deg is not None else GEOMETRIES[cfg.ct.beam].full_scan_deg


def check_view_angles(cfg: Config, meas: Measurement) -> None:
    """CT views are stored in degrees (the geometry's ``angles_deg``): views spanning under 2.5 pi degrees (a turn in
    radians and a bit) and under a quarter of the config's scan were given in radians, and are refused. Data over a config's own wedge span at
    least half of it (one view per degree, 2 degrees at least), so cannot trip it; views truly that close pass
    under a config for their wedge."""
    if meas.modality != "ct" or cfg.modality != "ct":
        return
    angles = meas.ct_geometry.angles_deg
    lo, hi, want = min(angles), max(angles), scan_deg(cfg)
    if len(angles) > 1 and hi - lo < min(1.25 * 2 * math.pi, want / 4):  # a turn and a bit, as in radians
        raise InputError(f"{meas.info.get('source') or 'the measurements'}: its {len(angles)} views span {lo:.3g} to "
                         f"{hi:.3g} degrees, but the config expects views over {want:g} degrees: radians given where "
                         "degrees are expected? the geometry's angles_deg are in degrees (numpy.degrees of radians); "
                         "views truly that close: --set ct.n_views=null --set "
                         f"ct.wedge_deg={max(2, math.ceil(hi - lo))}")


def check_grid(prior, meas: Measurement) -> None:
    """The measurements' grid must be one the prior works on: its slice size, or its pixel-size range."""
    size = getattr(prior, "image_size", None)
    if size is not None and meas.grid.shape[-2:] != (size, size):
        raise InputError(f"the measurements are on a {meas.grid.shape[-2]}x{meas.grid.shape[-1]} grid but prior "
                         f"{prior.name} was trained at {size}x{size}: use a matching prior or a classical "
                         f"solver (--set solver.name=admm_tv)")
    span = getattr(prior, "pixel_spacing_mm_range", None) if size is None else None
    pixel = float(min(meas.grid.spacing[:2]))
    if span is not None and not in_pixel_range(pixel, span):
        simulated = "noise" in meas.info  # (a simulation records its noise; measured data cannot be simulated again)
        also = ", or simulate the measurements at a pixel size inside the range" if simulated else ""
        raise InputError(f"{meas.info.get('source') or 'the measurements'}: pixel size {pixel:.3g} mm is outside the "
                         f"range prior {prior.name} was trained on ({span[0]:.3g}-{span[1]:.3g} mm): use a prior "
                         "trained at this pixel size (medrecon train --arch patch on your scans; --pixel-range LO HI widens its "
                         "range) or a classical solver (--set "
                         f"solver.name=admm_tv){also}")


def _complex_images(cfg: Config, meas: Measurement) -> bool:
    mode = cfg.mri.image
    return is_measured_kspace(meas) if mode == "auto" else mode == "complex"


#: an MR prior trained on volumes divided by a lower percentile than this sees reconstruct's (MAGNITUDE_PERCENTILE)
#: tissue darker than it learned it: the bundled priors use 99.5 (0.87-0.93 of their training brightness, measured)
MIN_TRAINING_PERCENTILE = 99.0


def training_percentile(prior) -> float | None:
    """The percentile an MR prior's training volumes were divided by, from its card (``medrecon train`` records
    ``normalisation_percentile``; earlier cards say it in ``normalisation``), or None."""
    imap = ((getattr(prior, "card", None) or {}).get("intensity") or {}) if prior is not None else {}
    if imap.get("normalisation_percentile") is not None:
        return float(imap["normalisation_percentile"])
    found = re.search(r"/ ([0-9.]+)th percentile", str(imap.get("normalisation") or ""))
    return float(found.group(1)) if found else None


def setting_warnings(cfg: Config, meas: Measurement, source: Volume | None, prior, resample: bool) -> list[str]:
    """What the settings do that the user may not expect, for the log and report.json: measurements under a config
    tuned for another acquisition; multi-coil k-space without its coil maps (estimated), or with ESPIRiT maps from
    too narrow a calibration box; a simulated detector too small for the image; --resample with no prior; admm_tv's
    z-only TV on one slice."""
    out = []
    pct = training_percentile(prior)
    if cfg.modality == "mri" and pct is not None and pct < MIN_TRAINING_PERCENTILE:
        out.append(f"prior {prior.name} was trained on MR volumes divided by their {pct:g}th percentile, while "
                   f"reconstruct divides by the {MAGNITUDE_PERCENTILE:g}th: tissue reaches the prior darker than it "
                   "learned it; train with the default --mri-percentile 99.5")
    if cfg.outputs.snapshots_every and SOLVERS[cfg.solver.name].sampler is None:
        out.append(f"outputs.snapshots_every {cfg.outputs.snapshots_every}: solver {cfg.solver.name} writes no "
                   "snapshots (only the diffusion samplers do)")
    if cfg.solver.name == "admm_tv" and cfg.solver.tv == "z" and meas.grid.shape[0] == 1:
        out.append("solver.tv=z on one slice: TV along z has nothing to smooth, so admm_tv is unregularised here; "
                   "set solver.tv=3d")
    out += [w for w in [coil_maps_warning(cfg, meas), espirit_warning(cfg, meas)] if w]
    if source is None:
        return out + list(meas.info.get("warnings") or []) + [w for w in [acquisition_differs(cfg, meas)] if w] + \
            measured_geometry_overrides(cfg, meas)
    if meas.modality == "ct" and cfg.ct.detector.n_det is not None:
        geom = meas.ct_geometry
        if cfg.ct.detector.n_det < getattr(geom, "bins_to_cover", 0):  # the data miss the image's edges: FBP bends
            out.append(f"ct.detector.n_det {cfg.ct.detector.n_det}: the detector does not see the whole image in "
                       f"every view ({geom.bins_to_cover} bins would); leave it null for the default")
    sx, sy = source.spacing[:2]
    used = "resampled_from_positions" in source.meta or max(sx, sy) > MAX_OBLONG * min(sx, sy)  # what it allowed
    if resample and prior is None and not used:  # beside a prior's run, this one would be on another grid
        m = cfg.modality
        grid_set = [f"{m}.{k}" for k in ("image_size", "pixel_size") if getattr(getattr(cfg, m), k) is not None]
        out.append(f"--resample changes nothing for solver {cfg.solver.name}, which uses no prior: " + (
            f"the grid is the one {' and '.join(grid_set)} set" if grid_set else
            f"the input's own grid is kept (set {m}.pixel_size or {m}.image_size to put a comparison on the "
            "prior's grid)"))
    return out


def measured_geometry(meas: Measurement) -> dict:
    """The ``ct`` config values a CT measurements file fixes (its grid, detector and fan distances), as dotted keys;
    {} for other data."""
    if meas.modality != "ct" or meas.geometry is None:
        return {}
    g = meas.ct_geometry
    out = {"ct.beam": g.type, "ct.image_size": int(g.image_size), "ct.pixel_size": float(g.pixel_size_mm),
           "ct.detector.n_det": int(g.n_det), "ct.detector.spacing": float(g.det_spacing_mm)}
    if g.type == "fan":
        out.update({"ct.fan.source_distance": float(g.source_origin_mm), "ct.fan.detector_distance": float(g.origin_det_mm)})
    return out


def measured_geometry_overrides(cfg: Config, meas: Measurement) -> list[str]:
    """A warning per ``ct`` value the config sets that a measurements file fixes otherwise (the file's is used)."""
    out = []
    for key, used in measured_geometry(meas).items():
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        if key != "ct.beam" and node is not None and not (node == used or (isinstance(used, float) and
                                                                          math.isclose(node, used, rel_tol=1e-6))):
            out.append(f"{key} {node}: the measurements fix it at {used:g}, which is used (the config's value is not)")
    return out


def acquisition_differs(cfg: Config, meas: Measurement) -> str | None:
    """What the measurements' acquisition does not share with the config's, whose tuned settings then run on data
    they were not tuned for (8-view data under sparse_view_ct_4's 4-view settings, say), naming the configs that
    fit; None when they agree."""
    differs = _acquisition_problem(cfg, meas)
    if differs is None:
        return None
    fit = [name for name in config_names() if _acquisition_problem(load_config(name, check_files=False), meas) is None]
    return f"{meas.info.get('source') or 'the measurements'}: {differs}; its settings are used as they are" + \
        (f" ({', '.join(fit)} {'fits' if len(fit) == 1 else 'fit'} the data)" if fit else "")


#: how the data were sampled, by ``Measurement.mask_layout`` (the config's ``mri.mode``)
MASK_LAYOUTS = {"2d": "slice by slice (mri.mode 2d)", "3d": "over (kz, kx) as one 3D acquisition (mri.mode 3d)"}


_RETROSPECTIVE_IMAGES = ("mri.retrospective undersamples measured k-space files (fastMRI or ISMRMRD HDF5, BART "
                         ".cfl); images and their simulations are sampled with the config's mask anyway: leave "
                         "mri.retrospective false")


def _retrospective(cfg: Config, meas: Measurement) -> Measurement:
    """mri.retrospective: measured k-space with only the lines of the config's mask kept (raw_mri.undersampled)."""
    if not is_measured_kspace(meas):
        raise InputError(f"{meas.info.get('source') or 'the input'}: {_RETROSPECTIVE_IMAGES}")
    m = cfg.mri.mask
    how = f"{m.kind} x{m.acceleration:g}, centre {m.center_fraction:g}, seed {m.seed} (mri.retrospective)"
    log.info(f"{meas.info.get('source')}: undersampled retrospectively, {how}")
    return undersampled(meas, mri_mask(cfg, np.shape(meas.data)[-2:]), how)


def _acquisition_problem(cfg: Config, meas: Measurement) -> str | None:
    if cfg.modality != meas.modality:
        return f"{meas.modality} data, a {cfg.modality} config"
    if meas.modality == "ct" and meas.geometry is not None:
        g, c = meas.ct_geometry, cfg.ct
        arc = math.degrees(float(g.view_weights_rad.sum()))
        if g.type != c.beam:
            return f"{g.type}-beam data, but the config is for a {c.beam} beam"
        if c.n_views is not None and g.n_angles != c.n_views:
            return f"{g.n_angles} views, but the config is tuned for {c.n_views}"
        if abs(arc - scan_deg(cfg)) > 1.5:
            scan = f"a {c.wedge_deg:g} degree wedge" if c.wedge_deg is not None else \
                f"a full {scan_deg(cfg):g} degree scan"
            return f"views over {arc:.0f} degrees, but the config is tuned for {scan}"
    if meas.modality == "mri" and meas.mask is not None:
        if meas.mask_layout != cfg.mri.mode:
            return f"sampled {MASK_LAYOUTS[meas.mask_layout]}, but the config is for mri.mode {cfg.mri.mode}"
        have, want = mask_acceleration(meas.mask), cfg.mri.mask.acceleration
        before = meas.info.get("acceleration_before_retrospective")
        if before is not None and abs(before - 1) > 0.25:  # the config's mask on a file's own: the two compound
            return (f"already undersampled (x{before:.3g}) before mri.retrospective, whose mask makes it x{have:.3g}: "
                    "give a fully sampled file, or leave mri.retrospective false to reconstruct it as measured")
        if abs(have - 1) <= 0.25 and is_measured_kspace(meas):  # as fastMRI's train and val files are
            return (f"fully sampled (x{have:.3g}), but the config is tuned for x{want:g}: the reconstruction leaves "
                    f"no line out, so its result and score are not x{want:g}'s; to undersample it retrospectively "
                    f"with the config's mask, --set mri.retrospective=true")
        if abs(have / want - 1) > 0.25:
            return f"sampled x{have:.3g}, but the config is tuned for x{want:g}"
    return None


def coil_maps_used(cfg: Config, meas: Measurement) -> str:
    """Where the coil maps come from, as report.json says: mri.coil_maps, except that multi-coil data asked to use
    the given maps but holding none get estimated ones (warned: :func:`coil_maps_warning`); single-coil data need
    none."""
    if np.ndim(meas.data) != 4:  # (Z, C, H, W) or (C, Z, Y, X): mri_operator's own test for coils
        return "none (single coil)"
    return "estimated (none given)" if coil_maps_warning(cfg, meas) else cfg.mri.coil_maps


def coil_maps_warning(cfg: Config, meas: Measurement) -> str | None:
    """The warning (one of :func:`setting_warnings`) for multi-coil k-space asked to use its given coil maps but
    holding none, whose maps are then estimated; None otherwise."""
    if meas.modality != "mri" or np.ndim(meas.data) != 4 or cfg.mri.coil_maps != "given" or meas.coil_maps is not None:
        return None
    return (f"{meas.info.get('source') or 'the measurements'}: no coil maps stored with the multi-coil data; "
            "estimating them (mri.coil_maps=estimate; espirit for ESPIRiT)")


def espirit_warning(cfg: Config, meas: Measurement) -> str | None:
    """The warning (one of :func:`setting_warnings`) for ESPIRiT maps asked of multi-coil k-space whose calibration
    region (``calibration_region``, the one ESPIRiT uses) holds under ``ESPIRIT_MIN_CALIBRATION`` lines along the
    phase encoding (a 3D mask: along either of kz, kx), or under twice the kernel's width (12 samples) along the
    readout; None otherwise. In 3D (a 40^3 and a 64^3 phantom, 8 simulated coil maps) centres of 8 to 10 gave no
    maps at all and 11 and 14 covered the whole object, so the same 11 holds."""
    if meas.modality != "mri" or np.ndim(meas.data) != 4 or cfg.mri.coil_maps != "espirit":
        return None
    three_d = meas.mask_layout == "3d"
    try:
        region = calibration_region(meas.mask, ndim=3 if three_d else 2)
    except InputError:  # no sampled centre: mri_operator refuses it, naming the file
        return None
    shape = np.shape(meas.data)[-3:] if three_d else np.shape(meas.data)[-2:]
    used = [b.stop - b.start for b in region.within(shape)]
    pe = [w for w, p in zip(used, region.lines) if p] or used
    lines = min(pe)
    readout = min([w for w, p in zip(used, region.lines) if not p] or [ESPIRIT_READOUT_CALIBRATION])
    short = readout < 2 * ESPIRIT_KERNEL_WIDTH
    if lines >= ESPIRIT_MIN_CALIBRATION and not short:
        return None
    source = meas.info.get("source") or "the measurements"
    if three_d:
        centre = f"a {' x '.join(map(str, pe))} calibration centre (kz x kx, the mask's fully sampled centre)"
        n = min(s for s, p in zip(shape, region.lines) if p) if any(region.lines) else min(shape)
        risk = (f"under {ESPIRIT_MIN_CALIBRATION} wide they can cover little or none of the volume (no maps at all "
                "from 8 to 10 wide on 3D phantoms with 8 coils)")
        advice = (f"a centre at least {ESPIRIT_MIN_CALIBRATION} wide "
                  f"(mri.mask.center_fraction >= {ESPIRIT_MIN_CALIBRATION / n:.3g})")
    else:
        centre = f"{lines} calibration lines (the mask's fully sampled centre)"
        risk = (f"under {ESPIRIT_MIN_CALIBRATION} lines they can leave part of the object without coil sensitivity "
                "(0.8 and 14.3 dB under the estimated maps on two measured brains at 10 lines)")
        advice = f"at least {ESPIRIT_MIN_CALIBRATION} central lines (mri.mask.center_fraction)"
    said = [centre] if lines < ESPIRIT_MIN_CALIBRATION else []
    if short:
        said.append(f"{readout} readout samples sampled on every calibration line (under "
                    f"{2 * ESPIRIT_KERNEL_WIDTH}, twice the kernel)")
    return (f"{source}: ESPIRiT coil maps from {' and '.join(said)}: {risk}; set mri.coil_maps=estimate, or sample "
            f"{advice}" + (" and a longer readout around the k-space centre" if short else ""))


def _mri_operator(cfg: Config, meas: Measurement, complex_images: bool) -> LinearOperator:
    """The measurements' operator; what does not fit it (a mask or coil maps of the wrong shape) names the file."""
    k = torch.from_numpy(np.asarray(meas.data))
    three_d = meas.mask_layout == "3d"
    try:
        return mri_operator(meas.grid.shape if three_d else meas.grid.shape[1:], meas.mask, kspace=k,
                            coil_maps=None if meas.coil_maps is None else torch.from_numpy(np.asarray(meas.coil_maps)),
                            maps_from=cfg.mri.coil_maps, three_d=three_d, real_input=not complex_images,
                            kspace_shape=meas.info.get("kspace_shape"))
    except InputError as e:
        raise InputError(f"{meas.info.get('source') or 'the measurements'}: {e}") from None


def phase_rotation(image: torch.Tensor) -> complex:
    """exp(-i theta), theta the magnitude-weighted mean phase of a complex image (a constant rotation: the
    magnitude is unchanged, and a real-valued prior then sees the signal in the real part)."""
    s = torch.sum(image * image.abs())
    return complex(torch.exp(-1j * torch.angle(s))) if s.abs() > 0 else 1.0


def _measured_scale(zero_filled: torch.Tensor) -> float:
    """Normalisation of measured k-space: the zero-filled image's MAGNITUDE_PERCENTILE becomes 1 (as a simulation's
    image's does)."""
    zf = zero_filled.abs().flatten()
    return magnitude_scale(zf[:: max(1, zf.numel() // 1_000_000)].float().cpu().numpy())  # a million at most


__all__ = ["Problem", "Solution", "check_domain", "check_grid", "configured_prior", "phase_rotation",
           "reconstruction_grid"]
