"""The denoiser contract that every sampler talks to, with noise schedules and intensity maps.

A prior is a denoiser D(x, sigma) ~= E[x0 | x = x0 + sigma * n] on a batch of slices (B, 1, H, W) with
per-sample sigma (B,), in the model's native intensity scale, in this variance-exploding (VE) view
whatever the network's own parameterisation (Karras et al., EDM 2022):

* VE score model s(x, sigma):          D = x + sigma^2 * s
* VP eps-model at step t with abar_t:  sigma = sqrt((1 - abar) / abar),  D = x - sigma * eps(sqrt(abar) * x, t)
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..errors import InputError


#: the model range of every prior medrecon trains and of runs without a prior, so that a weight acting on model
#: units (a TV lam, a noise level) means the same with and without such a prior
MODEL_RANGE = (-1.0, 1.0)


@dataclass(frozen=True)
class IntensityMap:
    """Affine map between physical units (HU, normalised magnitude) and the model's range (default
    ``MODEL_RANGE``)."""

    physical_min: float
    physical_max: float
    model_min: float = MODEL_RANGE[0]
    model_max: float = MODEL_RANGE[1]
    unit: str = "HU"

    @property
    def scale(self) -> float:
        return (self.model_max - self.model_min) / (self.physical_max - self.physical_min)

    def to_model(self, v):
        return (v - self.physical_min) * self.scale + self.model_min

    def to_physical(self, m):
        return (m - self.model_min) / self.scale + self.physical_min

    @classmethod
    def from_dict(cls, d: dict, where: str = "the intensity card") -> "IntensityMap":
        """From a card's ``intensity`` section; an InputError naming ``where`` when it lacks the physical window."""
        missing = [k for k in ("physical_min", "physical_max") if not isinstance(d, dict) or k not in d]
        if missing:
            raise InputError(f"{where}: intensity needs {', '.join(missing)} (the physical window the model range "
                             "stands for); add it")
        values = {k: d[k] for k in ("physical_min", "physical_max", "model_min", "model_max") if k in d}
        try:
            values = {k: float(v) for k, v in values.items()}
        except (TypeError, ValueError):
            raise InputError(f"{where}: intensity {', '.join(f'{k}: {v!r}' for k, v in values.items())}: give "
                             "numbers") from None
        out = cls(**values, **({"unit": d["unit"]} if "unit" in d else {}))
        if not all(math.isfinite(v) for v in values.values()) or not (out.physical_max > out.physical_min and
                                                                     out.model_max > out.model_min):
            raise InputError(f"{where}: intensity window [{out.physical_min}, {out.physical_max}] -> [{out.model_min}, "
                             f"{out.model_max}]: give finite numbers with physical_min < physical_max and model_min "
                             "< model_max")
        return out


class NoiseSchedule:
    """The noise levels a prior was trained on, in the VE view (sigma), descending for sampling."""

    kind = "abstract"

    def sampling_sigmas(self, n_steps: int) -> torch.Tensor:
        """n_steps noise levels from high to low, in float64, on the model's native grid."""
        raise NotImplementedError

    @property
    def sigma_max(self) -> float:
        raise NotImplementedError

    @property
    def sigma_min(self) -> float:
        raise NotImplementedError


class VESchedule(NoiseSchedule):
    """Geometric VE SDE: sigma(t) = sigma_min * (sigma_max / sigma_min)^t, t in [eps, 1] (score_sde)."""

    kind = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 378.0, num_scales: int = 2000, eps: float = 1e-5):
        self._min, self._max, self.num_scales, self.eps = float(sigma_min), float(sigma_max), int(num_scales), eps

    @property
    def sigma_min(self):
        return self._min

    @property
    def sigma_max(self):
        return self._max

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self._min * (self._max / self._min) ** t

    def sampling_times(self, n_steps: int) -> torch.Tensor:
        return torch.linspace(1.0, self.eps, n_steps, dtype=torch.float64)

    def sampling_sigmas(self, n_steps: int) -> torch.Tensor:
        return self.sigma(self.sampling_times(n_steps))

    def to_dict(self):
        return {"type": "ve", "sigma_min": self._min, "sigma_max": self._max, "num_scales": self.num_scales}


class VPSchedule(NoiseSchedule):
    """Discrete VP (DDPM) schedule: abar_t = prod_{s<=t}(1 - beta_s), t = 0..T-1."""

    kind = "vp"

    def __init__(self, betas: torch.Tensor | None = None, beta_start: float = 1e-4, beta_end: float = 0.02,
                 num_timesteps: int = 1000):
        if betas is None:
            betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64).float()
        self.betas = betas.float()
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.sigmas = torch.sqrt((1.0 - self.alphas_cumprod.double()) / self.alphas_cumprod.double())
        self.beta_start, self.beta_end = float(self.betas[0]), float(self.betas[-1])

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    @property
    def sigma_min(self):
        return float(self.sigmas[0])

    @property
    def sigma_max(self):
        return float(self.sigmas[-1])

    @staticmethod
    def alpha_bar_of_sigma(sigma):
        return 1.0 / (1.0 + sigma ** 2)

    def timestep_of_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """The native timestep whose sigma is nearest in log-space (exact on the native grid)."""
        ls = torch.log(self.sigmas.to(sigma.device))
        return torch.argmin((torch.log(sigma.double())[:, None] - ls[None, :]).abs(), dim=1)

    def sampling_timesteps(self, n_steps: int) -> torch.Tensor:
        """DDS/DDIM grid: skip = T // n, t = T - skip, ..., 0 (descending); at most T steps."""
        T = self.num_timesteps
        n_steps = min(int(n_steps), T)  # more steps than timesteps: every timestep once
        if T % n_steps == 0:  # DDS's grid exactly: T - skip, ..., skip, 0
            skip = T // n_steps
            return torch.arange(T - skip, -1, -skip)
        return torch.linspace(T - T / n_steps, 0, n_steps).round().long().unique_consecutive()

    def sampling_sigmas(self, n_steps: int) -> torch.Tensor:
        return self.sigmas[self.sampling_timesteps(n_steps)]

    def to_dict(self):
        return {"type": "vp", "beta_start": self.beta_start, "beta_end": self.beta_end,
                "num_timesteps": self.num_timesteps}


def schedule_from_dict(d: dict) -> NoiseSchedule:
    kind = d.get("type")
    if kind == "ve":
        return VESchedule(d.get("sigma_min", 0.01), d.get("sigma_max", 378.0), d.get("num_scales", 2000))
    if kind == "vp":
        return VPSchedule(beta_start=d.get("beta_start", 1e-4), beta_end=d.get("beta_end", 0.02),
                          num_timesteps=d.get("num_timesteps", 1000))
    raise ValueError(f"unknown noise schedule type {kind!r} (expected 've' or 'vp')")


def stack_indices(z: int, z_n: int, k: int, z_flip: bool = False) -> list[int]:
    """Slice z of z_n, then the k slices below and the k above it (the edge slice repeats past the volume's
    ends): the order of a 2.5D prior's input (``Denoiser.denoise``). ``z_flip`` swaps below and above."""
    below = [max(z - d, 0) for d in range(k, 0, -1)]
    above = [min(z + d, z_n - 1) for d in range(1, k + 1)]
    if z_flip:
        below, above = above[::-1], below[::-1]
    return [z] + below + above


class Denoiser:
    """Base class of every prior. Subclasses implement ``_denoise``.

    Attributes: ``schedule`` (NoiseSchedule), ``card`` (the model card as a dict), ``image_size``
    (int or None when any size works), ``intensity`` (IntensityMap from physical units to model range),
    ``context_slices`` (k: a 2.5D prior also sees the k noisy slices on each side of the one it denoises).
    """

    schedule: NoiseSchedule
    image_size: int | None = None
    card: dict
    intensity: IntensityMap | None = None
    name: str = "prior"
    nfe: int = 0  # slices denoised so far: a denoise() call on B slices adds B (set to 0 to restart counting)
    sha256: str | None = None  # SHA-256 of the weights file, for reports (None for analytic priors)
    network = None  # the torch.nn.Module behind the prior, if any
    context_slices: int = 0  # 2.5D: noisy neighbouring slices on each side the denoiser also sees
    precision: str = "fp32"  # the network's arithmetic: fp32, or bf16 (autocast; the EDM scalings stay fp32)
    bf16_measured: bool = False  # whether solver.precision=auto may pick bf16: its quality was measured in bf16

    def seamless(self):
        """A context for the estimate a sampler returns (its final denoising): a patch prior averages tile grids
        there so that no tile seam is left in the result; nothing for whole-slice priors."""
        return nullcontext()

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """D(x, sigma) for x (B, 1, H, W) and sigma (B,) or a scalar. ``context`` (B, 2k, H, W): for a 2.5D
        prior (k = ``context_slices``), the k slices below and then the k above each slice, noisy at the same
        sigma; None: the slice stands in for its neighbours (a caller with single slices). Ignored when k = 0."""
        sigma = self._checked(x, sigma)
        self.nfe += x.shape[0]
        k = self.context_slices
        if not k:
            return self._denoise(x, sigma)
        if context is None:
            context = x.expand(-1, 2 * k, -1, -1)
        if tuple(context.shape) != (x.shape[0], 2 * k, *x.shape[-2:]):
            raise ValueError(f"{self.name}: context must be (B, {2 * k}, H, W) for x {tuple(x.shape)}, "
                             f"got {tuple(context.shape)}")
        return self._denoise(torch.cat([x, context.to(x)], dim=1), sigma)  # the centre slice first

    def _checked(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Validate the slice shape against the prior; sigma as a (B,) tensor in x's dtype and device."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"{self.name}: expected slices of shape (B, 1, H, W), got {tuple(x.shape)}")
        if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"{self.name}: this prior was trained at {self.image_size}x{self.image_size}; "
                             f"got slices of {x.shape[-2]}x{x.shape[-1]} (resample the volume first)")
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        return sigma

    def score(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Score of the noisy density, (D(x, sigma) - x) / sigma^2 (Tweedie); VE score priors return it directly."""
        s2 = self._checked(x, sigma).view(-1, 1, 1, 1) ** 2
        return (self.denoise(x, sigma, context) - x) / s2

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to(self, device) -> "Denoiser":
        return self

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")


class GaussianDenoiser(Denoiser):
    """Exact denoiser of the Gaussian prior x0 ~ N(mean, var * I) (per pixel): an analytic test prior.

    D(x, sigma) = (var * x + sigma^2 * mean) / (var + sigma^2).
    """

    name = "gaussian"

    def __init__(self, mean: torch.Tensor | float = 0.0, var: torch.Tensor | float = 1.0,
                 schedule: NoiseSchedule | None = None):
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.var = torch.as_tensor(var, dtype=torch.float64)
        self.schedule = schedule or VESchedule(0.01, 50.0, 1000)
        self.card = {"name": "gaussian", "schedule": self.schedule.to_dict()}

    def _denoise(self, x, sigma):
        s2 = (sigma.to(x.dtype) ** 2).view(-1, *([1] * (x.ndim - 1)))
        mean = self.mean.to(x.device, x.dtype)
        var = self.var.to(x.device, x.dtype)
        return (var * x + s2 * mean) / (var + s2)


def sigma_to_vp(sigma: torch.Tensor) -> torch.Tensor:
    """abar for a VE sigma: abar = 1 / (1 + sigma^2)."""
    return 1.0 / (1.0 + sigma ** 2)


def vp_to_sigma(alpha_bar: torch.Tensor) -> torch.Tensor:
    """VE sigma for a VP abar: sigma = sqrt((1 - abar) / abar)."""
    return torch.sqrt((1.0 - alpha_bar) / alpha_bar)


__all__ = ["Denoiser", "GaussianDenoiser", "IntensityMap", "NoiseSchedule", "VESchedule", "VPSchedule",
           "schedule_from_dict", "sigma_to_vp", "stack_indices", "vp_to_sigma"]
