"""3D reconstruction with a slice-wise 2D diffusion prior and TV along z (DiffusionMBIR and a DDS-style sampler).

Both samplers work on a volume x of shape (Z, H, W) in the prior's model units, in the VE view of the
denoiser contract (x = x0 + sigma * n, D(x, sigma) ~= E[x0 | x]), so any prior (VE score model, VP
eps-model) runs in either sampler. The network sees chunks of slices (chunk, 1, H, W); the operator A
sees the whole volume (its ``in_shape`` is (H, W) for a slice-wise operator, or (Z, H, W)).

Data consistency is the one shared ADMM step (``ADMMTV.step``) for
    min_x 1/2 ||A x - y||^2 + lam ||D_z x||_1,  D_z = FiniteDifference(volume, axes=(0,), boundary),
with z and u created once per run and shared by all diffusion steps. lam = 0 switches the z-TV term off
and gives the slice-wise 2D baseline through the same code path. ``lam_xy`` > 0 adds an in-plane TV term
lam_xy (||D_y x||_1 + ||D_x x||_1) to the same step (its own threshold lam_xy / rho_xy; rho_xy defaults to
rho): a light one removes the grain a slice prior leaves along the few views' streak directions. lam and rho have
no default here: the weights depend on the modality and the image scaling, which the core does not know (the
caller, e.g. the pipelines' solver registry, supplies them).

Complex volumes (MRI from measured k-space, a complex-input operator): the real-valued prior sees the real
and the imaginary part as two images in one batch (score-MRI, Chung and Ye 2022), the noise is complex
with variance sigma^2 per part, and the ADMM step's z-TV shrinks magnitudes of complex differences.

Randomness: one ``torch.Generator`` per run, seeded; each step draws its noise for the whole volume at
once, so the result does not depend on the chunk size; a patch prior's tile shifts restart from the same
seed. A run with ``antithetic=True`` draws the same numbers negated: the antithetic twin of its seed's run
(``sample_posterior``). No solver ever takes the ground truth.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..device import cuda_free_bytes, reset_cuda_peak
from ..linop import FiniteDifference, LinearOperator
from ..priors.base import Denoiser, stack_indices
from .admm import ADMMState, ADMMTV, axis_weights


def through_parts(fn: Callable, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    """fn(batch, context) on a real batch (c, ...); a complex x (and its context) goes through as its real and
    imaginary parts, one batch of 2c."""
    if not x.is_complex():
        return fn(x, context)
    parts = None if context is None else torch.cat([context.real, context.imag])
    out = fn(torch.cat([x.real, x.imag]), parts)
    return torch.complex(out[: len(x)], out[len(x):])


def _per_plane(v: torch.Tensor, fn: Callable) -> torch.Tensor:
    """fn on every (H, W) plane of a real or complex (..., H, W) tensor, as a batch (N, 1, H, W); complex: each part."""
    if v.is_complex():
        return torch.complex(_per_plane(v.real, fn), _per_plane(v.imag, fn))
    out = fn(v.reshape(-1, 1, *v.shape[-2:]))
    return out.reshape(*v.shape[:-2], *out.shape[-2:])


def halve(v: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (..., H // 2, W // 2): the means of 2x2 pixels (area; an odd side averages uneven windows)."""
    return _per_plane(v, lambda b: F.interpolate(b, size=(b.shape[-2] // 2, b.shape[-1] // 2), mode="area"))


def double(v: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(..., h, w) -> (..., *size): bilinear interpolation back onto the finer grid."""
    return _per_plane(v, lambda b: F.interpolate(b, size=tuple(size), mode="bilinear", align_corners=False))


@dataclass
class SamplerState:
    """Everything a run carries from step to step (the solver object itself holds only configuration)."""

    x: torch.Tensor               # current sample (Z, H, W), VE view, model units
    admm: ADMMState               # ADMM split variable z and scaled dual u, shared across all steps
    generator: torch.Generator    # the run's only source of randomness
    chunk_size: int               # slices per network call
    step: int = 0                 # diffusion steps done
    nfe: int = 0                  # network evaluations per slice so far
    backward: int = 0             # backward passes through the network per slice so far (guided samplers)


def auto_chunk_size(prior: Denoiser, hw: Sequence[int], device: torch.device, cpu_default: int = 8,
                    fraction: float = 0.8, grad: bool = False) -> int:
    """Slices per network call. CPU: ``cpu_default``. CUDA: ``fraction`` of the free memory divided by the
    per-slice activation cost measured with one trial forward of two slices (call it after the volume
    state is allocated: the state is then already out of the free memory), and its backward pass with ``grad``
    (guided samplers keep a chunk's graph). The trial counts in neither the prior's ``nfe`` nor the run's
    CUDA peak; a patch prior's tile shifts are reseeded after it (``init_state``)."""
    if device.type != "cuda":
        return cpu_default
    trial, nfe = 2, prior.nfe
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    reset_cuda_peak(device, carry=True)
    with torch.enable_grad() if grad else nullcontext():
        x = torch.zeros(trial, 1, *hw, device=device, requires_grad=grad)
        out = prior.denoise(x, prior.schedule.sigma_max)
        if grad:
            torch.autograd.grad(out, x, torch.ones_like(out))
    del x, out
    torch.cuda.synchronize(device)
    prior.nfe = nfe
    per_slice = max((torch.cuda.max_memory_allocated(device) - base) / trial, 1.0)
    return max(1, int(fraction * cuda_free_bytes(device) / per_slice))


def noise_levels(schedule, n_steps: int, start_sigma: float | None = None,
                 end_sigma: float | None = None) -> torch.Tensor:
    """``n_steps`` sampling noise levels (float64, descending) on the schedule's own grid. With ``start_sigma``
    and/or ``end_sigma``: the part of a finer grid between them, refined until it holds ``n_steps`` levels (on a
    VP's DDS grid, whose refinement overshoots, n_steps of its levels spread over the range; fewer only where a
    discrete schedule has no more). The grid's own levels: with few steps the first lies below ``start_sigma``
    and the last above ``end_sigma``, by up to one step of the grid (the bundled priors' geometric VE grid: 20 steps from
    0.8 run 0.630 to 0.002, 50 steps from 0.8 start at 0.730, 50 from 0.4 to 0.02 run 0.388 to 0.0207; the tuned
    values were chosen with this). A start above the prior's largest level or a range holding no level is an error. A start below the prior's largest level is a warm start (Come-Closer-Diffuse-Faster, Chung, Sim, Ye,
    CVPR 2022, starts the reverse diffusion from a noised cheap reconstruction); an end above its smallest stops
    the reverse diffusion there, spending no steps on levels too small to change the result."""
    lo, hi = schedule.sigma_min, schedule.sigma_max
    top = hi if start_sigma is None else min(float(start_sigma), hi)
    bottom = lo if end_sigma is None else max(float(end_sigma), lo)
    if start_sigma is not None and start_sigma <= lo:
        raise ValueError(f"start_sigma {start_sigma} is below the prior's smallest noise level {lo}")
    if start_sigma is not None and start_sigma > hi * (1 + 1e-6):  # it ran from hi: a cold start, reported as warm
        raise ValueError(f"start_sigma {start_sigma:g} is above the prior's largest noise level {hi:g}: lower it (a "
                         "warm start begins well below), or set warm_start.method: none for a cold start")
    if bottom >= top:
        start = "the warm start's start_sigma" if start_sigma is not None else "the prior's largest noise level"
        raise ValueError(f"end_sigma {end_sigma:g} is not below {start} {top:g}, where the reverse diffusion starts: "
                         f"lower end_sigma or set it to null")
    if (top, bottom) == (hi, lo):
        return schedule.sampling_sigmas(n_steps).double().cpu()
    span = math.log(hi / lo) / math.log(top / bottom)
    cap = getattr(schedule, "num_timesteps", None)  # a discrete schedule has no finer grid than its own
    n_full = max(n_steps, math.ceil(n_steps * span))
    while True:  # refine the grid until the range holds n_steps levels (or a discrete schedule has no more)
        n_full = n_full if cap is None else min(n_full, cap)
        sigmas = schedule.sampling_sigmas(n_full).double().cpu()
        sigmas = sigmas[(sigmas <= top * (1 + 1e-9)) & (sigmas >= bottom * (1 - 1e-9))]
        if len(sigmas) > n_steps:  # a discrete grid overshoots: n_steps of its levels, spread over the range
            return sigmas[torch.linspace(0, len(sigmas) - 1, n_steps).round().long()]
        if len(sigmas) == n_steps or n_full == cap:
            if not len(sigmas):
                raise ValueError(f"no noise level of the prior's {cap}-step grid lies between end_sigma {bottom:g} "
                                 f"and start_sigma {top:g}: widen the range")
            return sigmas
        n_full += 1


class DiffusionSolver:
    """Shared machinery: prior, data-consistency problem, chunking, seed, progress and snapshots.

    Subclasses implement ``_step(state, i) -> estimate`` (one diffusion step plus one data-consistency
    step, updating ``state`` in place) and ``nfe_per_step``.

    Parameters: ``prior`` (Denoiser), ``A`` (LinearOperator on slices or on the volume), ``y`` (its
    measurement of the volume, model units), ``n_steps`` (diffusion steps; a VP prior caps them at its
    number of timesteps), ``lam``/``rho`` (z-TV weight and ADMM penalty, required: lam = 0 is the slice-wise
    2D baseline, rho > 0 is then unused unless ``lam_xy`` > 0), ``lam_xy`` (in-plane TV weight, default 0: none),
    ``rho_xy`` (the in-plane term's own ADMM penalty; None: rho),
    ``n_cg`` (CG iterations per ADMM step), ``boundary`` of D_z (``"neumann"``: the first and last slices
    are not tied; ``"periodic"``: the reference code's wrap-around), ``nonneg``/``clip`` (projections after
    the CG update, see ``ADMMTV``), ``chunk_size`` (None: ``auto_chunk_size``), ``seed``, ``progress``
    (tqdm bar with step, NFE and ETA), ``start_sigma`` (warm start: the reverse diffusion begins at this noise
    level around ``run(x_init=...)``, see ``noise_levels``), ``end_sigma`` (the smallest noise level of the
    reverse diffusion; None: the prior's), ``final_sigma`` (> 0: the result is the prior's estimate
    D(x, final_sigma) of the last step's output (then ``nonneg``/``clip``), one more network evaluation per
    slice; it removes the fine grain the last data-consistency step and the small-noise steps leave; 0: none),
    ``snapshot(step, estimate)`` called every ``snapshot_every`` steps and after the last one (the estimate
    tensor may be reused by the next step: copy it to keep it).

    ``nonneg`` and ``clip`` act on what the ADMM step updates: the Tweedie estimate in FastSampler (a clean
    image: safe), the noisy sample in DiffusionMBIR (clamping a noisy sample biases it; off by default).
    """

    #: a subclass's defaults for ``n_steps`` / ``n_cg`` (the single source the pipelines' registry reads)
    default_steps = 50
    default_n_cg = 1
    nfe_per_step = 1
    backward_per_step = 0

    def __init__(self, prior: Denoiser, A: LinearOperator, y: torch.Tensor, *, n_steps: int | None = None,
                 lam: float, rho: float, lam_xy: float = 0.0, rho_xy: float | None = None, n_cg: int | None = None,
                 boundary: str = "neumann", nonneg: bool = False, clip: tuple[float, float] | None = None,
                 chunk_size: int | None = None,
                 seed: int = 0, progress: bool = False, start_sigma: float | None = None,
                 end_sigma: float | None = None, final_sigma: float = 0.0,
                 snapshot: Callable[[int, torch.Tensor], None] | None = None, snapshot_every: int = 0):
        self.prior, self.device = prior, prior.device
        if not torch.is_tensor(y):  # a numpy array failed deep inside with "no attribute 'to'"
            raise TypeError(f"y: give the measurements as a torch tensor (torch.from_numpy(y)), not {type(y).__name__}")
        y = y.to(self.device, torch.complex64 if y.is_complex() else torch.float32)
        batch = y.shape[: y.ndim - len(A.out_shape)]
        self.shape = tuple(batch) + A.in_shape
        if len(self.shape) != 3:
            raise ValueError(f"the volume must be (Z, H, W); operator {A} with measurement {tuple(y.shape)} "
                             f"gives {self.shape}")
        if lam < 0 or lam_xy < 0:
            raise ValueError(f"TV weights must be >= 0, got lam={lam}, lam_xy={lam_xy}")
        self.lam, self.lam_xy = float(lam), float(lam_xy)  # the z-TV and in-plane TV weights (public settings)
        axes, lams = axis_weights((lam, lam_xy, lam_xy))
        rho_xy = rho if rho_xy is None else rho_xy
        rhos = tuple((rho, rho_xy, rho_xy)[a] for a in axes)
        D = FiniteDifference(self.shape, axes=axes, boundary=boundary) if axes else None
        self.dc = ADMMTV(A, y, D, lams or 0.0, rhos or rho, self.default_n_cg if n_cg is None else n_cg, nonneg,
                         clip)
        self.is_complex = self.dc.aty.is_complex()  # complex images: the prior sees real and imaginary parts
        self.sigmas = noise_levels(prior.schedule, n_steps or self.default_steps, start_sigma, end_sigma)
        if not 0 <= final_sigma <= prior.schedule.sigma_max:  # above it, the estimate is a blur of the prior's mean
            raise ValueError(f"final_sigma {final_sigma:g} must lie in [0, {prior.schedule.sigma_max:g}] (the prior's "
                             "largest noise level); it is small, e.g. 0.02, or 0 for none")
        self.final_sigma = float(final_sigma)
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size, self.seed, self.progress = chunk_size, int(seed), progress
        self.snapshot, self.snapshot_every = snapshot, int(snapshot_every)
        self.nfe = self.backward_passes = 0
        self.antithetic = False  # this run's noise negated (init_state sets it per run)

    @property
    def n_steps(self) -> int:
        return len(self.sigmas)

    def sigma_pair(self, i: int) -> tuple[float, float]:
        """(sigma_i, sigma_{i+1}) with sigma_N = 0 after the last step."""
        nxt = float(self.sigmas[i + 1]) if i + 1 < self.n_steps else 0.0
        return float(self.sigmas[i]), nxt

    # -- state ------------------------------------------------------------------------------------
    def init_state(self, x_init: torch.Tensor | None = None, seed: int | None = None,
                   antithetic: bool = False) -> SamplerState:
        """x = x_init + sigma_0 * noise (x_init defaults to zeros): the start of the reverse diffusion. A prior with
        randomness of its own (a patch prior's tile shifts) is reseeded from the run's seed, so a run does not
        depend on what ran before it in the process (another method, the previous study of a batch).
        ``antithetic``: every noise draw of the run negated (its tile shifts are the seed's own)."""
        seed = self.seed if seed is None else int(seed)
        self.antithetic = bool(antithetic)
        g = torch.Generator(device=self.device).manual_seed(seed)
        x = self.noise(g).mul_(float(self.sigmas[0]))
        start = torch.zeros_like(x) if x_init is None else x_init.to(x)
        if tuple(start.shape) != self.shape:
            raise ValueError(f"x_init has shape {tuple(start.shape)}, expected {self.shape}")
        x += start
        admm = self.dc.init_state(start)  # z from the start's differences, not the noise's
        chunk = self.chunk_size or max(1, auto_chunk_size(self.prior, self.shape[1:], self.device,
                                                          grad=getattr(self, "guided", False))
                                       // (2 if self.is_complex else 1))
        if hasattr(self.prior, "reseed"):  # after the chunk trial: a run does not depend on whether it had one
            self.prior.reseed(seed)
        return SamplerState(x, admm, g, min(chunk, self.shape[0]))

    def noise(self, g: torch.Generator, n: int | None = None) -> torch.Tensor:
        """Standard normal noise for the whole volume (or n volumes), drawn at once (chunk-independent);
        complex volumes: unit variance in the real and in the imaginary part. Negated in an antithetic run."""
        shape = self.shape if n is None else (n, *self.shape)
        z = torch.randn((*shape, 2) if self.is_complex else shape, generator=g, device=self.device,
                        dtype=torch.float32)
        z = torch.view_as_complex(z) if self.is_complex else z
        return z.neg_() if self.antithetic else z

    def chunks(self, chunk_size: int) -> list[slice]:
        """The z ranges of the network calls: ``chunk_size`` slices each (the last one may be shorter)."""
        z = self.shape[0]
        return [slice(s, min(s + chunk_size, z)) for s in range(0, z, chunk_size)]

    def volume_pass(self, chunk_size: int):
        """The chunks of one pass of the network over the volume; a patch prior tiles every chunk of a pass alike
        (``PatchPrior.one_tiling``), so the result does not depend on the chunk size."""
        tiling = getattr(self.prior, "one_tiling", None)
        with tiling() if tiling is not None else nullcontext():
            for sl in self.chunks(chunk_size):
                if tiling is not None:
                    self.prior.next_chunk()
                yield sl

    def neighbours(self, x: torch.Tensor, sl: slice) -> torch.Tensor | None:
        """The noisy neighbouring slices a 2.5D prior sees with the chunk ``sl`` of the volume x (Z, H, W):
        (c, 2k, H, W), k slices below then k above each (the edge slice repeats); None for a 2D prior."""
        k = self.prior.context_slices
        if not k:
            return None
        return x[torch.tensor([stack_indices(z, x.shape[0], k)[1:] for z in range(sl.start, sl.stop)],
                              device=x.device)]

    def denoise(self, x: torch.Tensor, sigma: float, context: torch.Tensor | None = None) -> torch.Tensor:
        """D(x, sigma) on a chunk of slices (c, H, W) -> (c, H, W): one network evaluation per slice
        (per part of a complex slice); ``context``: a 2.5D prior's neighbours (``neighbours``)."""
        return through_parts(lambda v, ctx: self.prior.denoise(v.unsqueeze(1), sigma, ctx).squeeze(1), x, context)

    def denoise_volume(self, x: torch.Tensor, sigma: float, chunk_size: int) -> torch.Tensor:
        """D(x, sigma) on the whole volume (Z, H, W), ``chunk_size`` slices per network call."""
        out = torch.empty_like(x)
        for sl in self.volume_pass(chunk_size):
            out[sl] = self.denoise(x[sl], sigma, self.neighbours(x, sl))
        return out

    def score(self, x: torch.Tensor, sigma: float, context: torch.Tensor | None = None) -> torch.Tensor:
        """The prior's score on a chunk (c, H, W): (D(x, sigma) - x) / sigma^2, or a VE score network's own output."""
        return through_parts(lambda v, ctx: self.prior.score(v.unsqueeze(1), sigma, ctx).squeeze(1), x, context)

    def langevin(self, x: torch.Tensor, sigma: float, z: torch.Tensor, snr: float,
                 context: torch.Tensor | None = None) -> torch.Tensor:
        """One Langevin corrector step on a chunk (c, H, W) with noise z: e = 2 (snr ||z|| / ||s(x)||)^2 per slice,
        x + e s(x) + sqrt(2e) z (one network evaluation per slice)."""
        s = self.score(x, sigma, context)
        ratio = torch.linalg.vector_norm(z.flatten(1), dim=1) / \
            torch.linalg.vector_norm(s.flatten(1), dim=1).clamp_min(1e-30)
        e = (2.0 * (snr * ratio) ** 2).view(-1, 1, 1)
        return x + e * s + torch.sqrt(2.0 * e) * z

    # -- driver -----------------------------------------------------------------------------------
    def _step(self, state: SamplerState, i: int) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, state: SamplerState) -> torch.Tensor:
        """One diffusion step with its data-consistency step; returns the current image estimate."""
        # the last step's estimate on two tile grids where no final denoising follows; not where the step keeps a
        # graph (MCG/DPS): chunks are sized for one grid's activations, and the last step would need twice that
        last_estimate = state.step + 1 == self.n_steps and self.final_sigma == 0 and not self.backward_per_step
        with self.prior.seamless() if last_estimate else nullcontext():
            est = self._step(state, state.step)
        state.step += 1
        state.nfe += self.nfe_per_step
        state.backward += self.backward_per_step
        if state.step == self.n_steps and self.final_sigma > 0:
            with self.prior.seamless():
                est = state.x = self.denoise_volume(est, self.final_sigma, state.chunk_size)
            state.nfe += 1
        if state.step == self.n_steps:  # the result within nonneg/clip (samplers without a data step had none)
            est = state.x = self.dc.project(est)
        return est

    @torch.no_grad()
    def run(self, shape: Sequence[int] | None = None, x_init: torch.Tensor | None = None,
            seed: int | None = None, note: str = "", antithetic: bool = False) -> torch.Tensor:
        """The whole reverse diffusion; returns the reconstruction (Z, H, W) in model units. ``note`` is added
        to the progress bar's name (e.g. which posterior sample this is); ``antithetic``: the seed's run with
        every noise draw negated."""
        if shape is not None and tuple(shape) != self.shape:
            raise ValueError(f"shape {tuple(shape)} does not match the measurement's volume {self.shape}")
        state = self.init_state(x_init, seed, antithetic)
        bar = tqdm(total=self.n_steps, desc=" ".join(filter(None, [type(self).__name__, note])), unit="step",
                   disable=not self.progress)
        est = state.x
        while state.step < self.n_steps:
            est = self.step(state)
            self.nfe, self.backward_passes = state.nfe, state.backward
            bar.set_postfix(nfe=state.nfe, refresh=False)  # before update() redraws: shows this step's NFE
            bar.update(1)
            if self.snapshot is not None and (state.step == self.n_steps or (
                    self.snapshot_every > 0 and state.step % self.snapshot_every == 0)):
                self.snapshot(state.step, est)
        bar.close()
        return est


class DiffusionMBIR(DiffusionSolver):
    """DiffusionMBIR (Chung et al., CVPR 2023), faithful to the reference by default.

    Noise levels: ``prior.schedule.sampling_sigmas(n_steps)`` (VE prior: sigma(t), t = linspace(1, 1e-5, N);
    VP prior: its own sigma grid). Step i, sigma = sigma_i, g2 = sigma_i^2 - sigma_{i+1}^2 (sigma_N = 0),
    score s(x) = prior.score(x, sigma) (= (D(x, sigma) - x) / sigma^2; a VE score network returns its own
    output), for every chunk of slices:
      predictor (reverse diffusion):  x <- x + g2 * s(x) + sqrt(g2) * z1
      corrector (one Langevin step):  e = 2 (snr ||z2|| / ||s(x)||)^2 per slice,  x <- x + e s(x) + sqrt(2e) z2
    (both at sigma_i, as the reference does), then ONE ADMM iteration (``n_cg`` CG steps, default 1) on the
    whole volume, applied to the noisy sample x itself; its output is carried on as the next sample, so the
    noise is carried on too (the reference returns this x after the last step). Two network evaluations
    per slice per step (4000 for N = 2000).

    Deviation from the reference: the corrector's step size uses per-slice norms (the reference averages
    the norms over its batch of slices), so the result does not depend on the chunk size.
    """

    default_steps = 2000
    default_n_cg = 1
    nfe_per_step = 2

    def __init__(self, prior: Denoiser, A: LinearOperator, y: torch.Tensor, *, snr: float = 0.16, **kwargs):
        super().__init__(prior, A, y, **kwargs)
        self.snr = float(snr)

    def _step(self, state, i):
        sigma, sigma_next = self.sigma_pair(i)
        g2 = sigma ** 2 - sigma_next ** 2
        z_pred, z_corr = self.noise(state.generator, 2)
        # in place, except for a 2.5D prior, whose neighbours must come from state.x as the step found it
        moved = torch.empty_like(state.x) if self.prior.context_slices else state.x
        for sl in self.volume_pass(state.chunk_size):
            xc, context = state.x[sl], self.neighbours(state.x, sl)
            xc = xc + g2 * self.score(xc, sigma, context) + math.sqrt(g2) * z_pred[sl]
            moved[sl] = self.langevin(xc, sigma, z_corr[sl], self.snr, context)
        del z_pred, z_corr
        state.x = self.dc.step(moved, state.admm)
        return state.x


class FastSampler(DiffusionSolver):
    """DDS-style fast sampler (Chung, Lee, Ye, ICLR 2024): DDIM steps with data consistency on Tweedie.

    Noise levels: ``prior.schedule.sampling_sigmas(n_steps)`` (VP prior: the DDS grid t = T - T//n, ..., 0;
    VE prior: geometric sigma grid). Starts at x = sigma_0 * noise. Step i:
      x0 = D(x, sigma_i) per chunk (Tweedie),  x0' = one ADMM iteration from x0 (``n_cg`` CG steps, default 5,
      shared z and u),  eps = (x - x0) / sigma_i,
      x <- x0' + sigma_{i+1} (eta * noise + sqrt(1 - eta^2) * eps)
    which is DDS's VP update divided by sqrt(abar_{i+1}). The last step returns x0'. One network evaluation
    per slice per step (default 50); ``coarse_above`` > 0: two above that noise level (``denoise``).

    Not an exact posterior sampler: with a fixed eta the fresh noise per step does not shrink with the step
    size, and on a Gaussian prior the output variance is about 0.7 of the posterior variance at 50 steps
    (tests/test_samplers.py), so its ``sample_posterior`` standard deviations run low; DiffusionMBIR's are
    within a few percent.
    """

    default_steps = 50
    default_n_cg = 5
    nfe_per_step = 1

    def __init__(self, prior: Denoiser, A: LinearOperator, y: torch.Tensor, *, eta: float = 0.85,
                 coarse_above: float = 0.0, **kwargs):
        super().__init__(prior, A, y, **kwargs)
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {eta}")
        if coarse_above < 0:
            raise ValueError(f"coarse_above must be >= 0, got {coarse_above}")
        self.eta, self.coarse_above = float(eta), float(coarse_above)

    def two_scale(self, sigma: float) -> bool:
        """Whether the Tweedie estimate at ``sigma`` is two-scale (``denoise``)."""
        return 0.0 < self.coarse_above < sigma

    def denoise(self, x: torch.Tensor, sigma: float, context: torch.Tensor | None = None) -> torch.Tensor:
        """D(x, sigma); above ``coarse_above`` two-scale: the network also denoises the chunk at twice the pixel size
        (2x2 means, noise sigma / 2, twice the anatomy per tile), and that estimate's low frequencies replace the
        full-resolution estimate's: D = D_fine + up(D_coarse - down(D_fine)) (up is linear, so one interpolation).
        The caller makes sure the prior knows the coarser pixel (a patch prior trained over a range of pixel sizes)."""
        fine = super().denoise(x, sigma, context)
        if not self.two_scale(sigma):
            return fine
        coarse = super().denoise(halve(x), sigma / 2, None if context is None else halve(context))
        return fine + double(coarse - halve(fine), x.shape[-2:])

    def _step(self, state, i):
        sigma, sigma_next = self.sigma_pair(i)
        x0 = self.denoise_volume(state.x, sigma, state.chunk_size)
        state.nfe += self.two_scale(sigma)  # the coarse pass: one more network evaluation (a quarter of the pixels)
        x0_dc = self.dc.step(x0, state.admm)
        if i + 1 == self.n_steps:
            state.x = x0_dc
            return x0_dc
        eps = state.x.sub_(x0).div_(sigma)       # the sample is not needed any more: reuse its memory
        del x0
        eps.mul_(sigma_next * math.sqrt(1.0 - self.eta ** 2))
        eps.add_(self.noise(state.generator), alpha=sigma_next * self.eta).add_(x0_dc)
        state.x = eps
        return x0_dc


def sample_seeds(base: int, k: int, antithetic: bool = False) -> list[int]:
    """The seeds of K posterior samples: ``base`` itself (the single run's sample comes first), then K - 1 drawn
    from (base, j) by numpy's SeedSequence (consecutive seeds made the runs of seeds 0 and 1 share K - 1 samples).
    ``antithetic``: each seed twice, in pairs (a run and its negated twin; ``sample_posterior``)."""
    if antithetic:
        return [s for s in sample_seeds(base, (k + 1) // 2) for _ in (0, 1)][:k]
    entropy = int(base) % 2 ** 64  # SeedSequence takes no negative seed; torch does
    return [int(base)] + [int(np.random.SeedSequence([entropy, j]).generate_state(1)[0]) for j in range(1, k)]


def sample_posterior(solver: DiffusionSolver | Callable[[int], DiffusionSolver], k: int,
                     seeds: Sequence[int] | None = None, x_init: torch.Tensor | None = None,
                     antithetic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """K posterior samples, one after the other; returns their voxel-wise mean and standard deviation.

    ``solver`` is a solver (run with each seed) or a factory ``seed -> solver``. Seeds default to
    ``sample_seeds(base, k, antithetic)`` with ``base`` the solver's seed (0 for a factory). ``antithetic``:
    every second sample is its predecessor's run with the noise negated (antithetic variates: the pair's mean
    cancels the noise's first-order effect, so it lies nearer the posterior mean than two independent samples';
    its std is then a rough spread, not an estimate of the posterior's). Welford's running update keeps two
    volumes besides the current sample. The std is the sample standard deviation (divisor K - 1; zero for K = 1).
    """
    if k < 1:
        raise ValueError(f"need at least one sample, got k={k}")
    base = solver.seed if isinstance(solver, DiffusionSolver) else 0
    seeds = sample_seeds(base, k, antithetic) if seeds is None else list(seeds)
    if len(seeds) != k:
        raise ValueError(f"got {len(seeds)} seeds for {k} samples")
    if antithetic and any(seeds[i] != seeds[i - 1] for i in range(1, k, 2)):  # a twin of another seed is no twin
        raise ValueError(f"antithetic samples come in pairs of one seed (sample_seeds(base, k, antithetic=True)), "
                         f"got {list(seeds)}")
    mean = m2 = None
    for n, s in enumerate(seeds, start=1):
        note = f"sample {n}/{k}"  # on the progress bar: a run of K samples takes K times one
        twin = antithetic and n % 2 == 0
        x = (solver if isinstance(solver, DiffusionSolver) else solver(s)).run(x_init=x_init, seed=s, note=note,
                                                                                antithetic=twin)
        if mean is None:
            mean, m2 = x.clone(), torch.zeros_like(x.real)
            continue
        delta = x - mean
        mean += delta / n
        m2 += (delta.conj() * (x - mean)).real  # complex images: the spread of |x - mean|, a real std
    std = torch.sqrt(m2 / (k - 1)) if k > 1 else m2
    return mean, std


__all__ = ["DiffusionMBIR", "DiffusionSolver", "FastSampler", "SamplerState", "auto_chunk_size", "noise_levels",
           "sample_posterior", "sample_seeds", "through_parts"]
