"""Denoisers backed by a neural network, one class per parameterisation (all in the VE view of base.py).

* ``VEScorePrior``  score network s(x, sigma) (score_sde NCSN++):  D = x + sigma^2 * s(x, sigma)
* ``VPEpsPrior``    eps network eps(x_t, t) on a discrete VP grid (ADM): sigma is snapped to the nearest
  native timestep t, then D = x - sigma_t * eps(sqrt(abar_t) * x, t), which is exactly DDS's Tweedie
  estimate (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) at x_t = sqrt(abar_t) * x.
* ``EDMPrior``      EDM-preconditioned network F (the priors medrecon trains):
  D = c_skip x + c_out F(c_in x, ln(sigma) / 4), with sigma_data from the card.

The network runs in float32 on its own device (``precision`` "bf16": under bf16 autocast, the convolutions
that read the image in fp32, ``bf16_autocast``); inputs are cast to it and the result back to the input's dtype and device. Gradients
flow only when the caller asks for them (x.requires_grad under grad mode), so samplers that do not
differentiate through the prior pay no autograd memory.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch

from ..errors import InputError
from ..io.common import file_sha256
from .base import Denoiser, IntensityMap, NoiseSchedule, VPSchedule


class NetworkPrior(Denoiser):
    """A Denoiser around ``network`` (an nn.Module in eval mode) with its model card.

    ``sha256`` is computed from ``weights_path`` at load where the card states one (and checked against it),
    else on first access (reading a 1.5 GB file takes seconds).
    """

    def __init__(self, network: torch.nn.Module, card: dict, schedule: NoiseSchedule, intensity: IntensityMap | None,
                 image_size: int | None, name: str | None = None, weights_path: str | Path | None = None):
        self.network = network.eval().requires_grad_(False)
        self.card = card
        self.schedule = schedule
        self.intensity = intensity
        self.image_size = image_size
        self.name = name or card.get("name", "prior")
        self.weights_path = Path(weights_path) if weights_path else None
        self._sha256 = None
        stated = card.get("sha256")
        if stated and self.sha256 is not None and self.sha256 != str(stated).lower():
            raise InputError(f"{self.weights_path}: SHA-256 {self.sha256[:16]}... is not the {str(stated)[:16]}... "
                             "its card states; the weights were replaced or damaged: restore them, or remove the "
                             "card's sha256 if they were changed on purpose")
        self._sha256 = self._sha256 or stated  # weights given in memory: what the card states

    @property
    def pixel_spacing_mm_range(self) -> tuple[float, float] | None:
        """(smallest, largest) in-plane pixel size in mm the prior was trained at, from the card: the
        ``pixel_spacing_mm_range`` of a patch prior, or the (x, y) ``pixel_spacing_mm`` of a whole-slice one."""
        r = self.card.get("pixel_spacing_mm_range") or self.card.get("pixel_spacing_mm")
        if not r:
            return None
        r = [float(v) for v in (r if isinstance(r, (list, tuple)) else [r])]
        return (min(r), max(r))

    @property
    def sha256(self) -> str | None:
        """The weights file's SHA-256 (computed once; a card's statement is checked against it at load)."""
        if self._sha256 is None and self.weights_path is not None and self.weights_path.is_file():
            self._sha256 = file_sha256(self.weights_path)
        return self._sha256

    def to(self, device) -> "NetworkPrior":
        self.network.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def arithmetic(self):
        """The context every network call runs in: bf16 autocast where ``precision`` is bf16, else exact fp32."""
        if self.precision != "bf16":
            return exact_fp32(self.device.type)
        cached = getattr(self, "_image_convs", None)  # (network, its image convolutions): found once per network
        if cached is None or cached[0] is not self.network:
            self._image_convs = cached = (self.network, image_convs(self.network))
        return bf16_autocast(self.network, self.device.type, cached[1])

    def _on_network(self, fn, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``fn(x, sigma)`` on the network's device and dtype in its arithmetic, returned in x's."""
        dev, dt = self.device, next(self.network.parameters()).dtype
        with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad), self.arithmetic():
            out = fn(x.to(dev, dt), sigma.to(dev, dt))
        return out.to(x.device, x.dtype)

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self._on_network(self._denoise_native, x, sigma)

    def _denoise_native(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _fp32_forward(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast(x.device.type, enabled=False), exact_fp32(x.device.type):
        return type(conv).forward(conv, x.float())


@contextmanager
def exact_fp32(device_type: str):
    """fp32 convolutions that are fp32: on CUDA, cuDNN's TF32 (torch's default on Ampere and later: a 10-bit
    mantissa, as coarse as fp16's) off for the duration, then as it was. A caller who set cuDNN's conv and RNN
    flags apart with torch's newer API keeps them (torch refuses to read one flag for both then)."""
    cudnn = torch.backends.cudnn
    try:
        before = cudnn.allow_tf32 if device_type == "cuda" else None
    except RuntimeError:
        before = None
    if before is None:
        yield
        return
    cudnn.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32 = before


def image_convs(network: torch.nn.Module) -> list:
    """The convolutions that read the image itself: the first ``Conv2d`` (in registration order: the input
    convolution) and any other with as many input channels (NCSN++'s input-pyramid convolutions)."""
    convs = [m for m in network.modules() if isinstance(m, torch.nn.Conv2d)]
    return [m for m in convs if m.in_channels == convs[0].in_channels] if convs else []


@contextmanager
def bf16_autocast(network: torch.nn.Module, device_type: str, reading_image: list | None = None):
    """bf16 autocast for ``network`` with the convolutions that read the image itself (``image_convs``) in fp32.
    bf16 rounds an image near 1 to steps of 2^-7; fed to the network at small noise
    levels that rounding is a large part of the noise it must estimate (on a CT slice at sigma 0.02: 17 % of the
    denoising error; with the input convolution in fp32, 3 %; keeping the output convolution in fp32 as well
    changed nothing; RESULTS.md, "Thirty-eighth session")."""
    reading_image = image_convs(network) if reading_image is None else reading_image  # given: computed once
    for m in reading_image:
        m.forward = partial(_fp32_forward, m)  # an instance attribute: shadows the class's forward
    try:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            yield
    finally:
        for m in reading_image:
            del m.forward


def _bcast(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, 1, 1, 1)


class VEScorePrior(NetworkPrior):
    """Continuous VE score model: the network takes (x, sigma) and returns the score (score_sde, NCSN++)."""

    def score(self, x: torch.Tensor, sigma: torch.Tensor, context=None) -> torch.Tensor:
        sigma = self._checked(x, sigma)
        self.nfe += x.shape[0]
        return self._on_network(self.network, x, sigma)

    def _denoise_native(self, x, sigma):
        return x + _bcast(sigma) ** 2 * self.network(x, sigma)


class VPEpsPrior(NetworkPrior):
    """Discrete VP eps-model (guided-diffusion ADM with learned sigma: channel 0..C-1 is eps, the rest ignored)."""

    schedule: VPSchedule

    def eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps(x_t, t) in the network's own VP convention (t integer timesteps, float or int tensor)."""
        return self.network(x_t, t)[:, : x_t.shape[1]]

    def _denoise_native(self, x, sigma):
        t = self.schedule.timestep_of_sigma(sigma).to(x.device)
        abar = self.schedule.alphas_cumprod.to(x.device, torch.float64)[t]
        sigma_t = torch.sqrt((1.0 - abar) / abar).to(x.dtype)
        scale = torch.sqrt(abar).to(x.dtype)
        return x - _bcast(sigma_t) * self.eps(_bcast(scale) * x, t.to(x.dtype))


def edm_coefficients(sigma: torch.Tensor, sigma_data: float):
    """EDM preconditioning (Karras et al. 2022): c_skip, c_out, c_in, c_noise for per-sample sigma (B,)."""
    s2, d2 = sigma ** 2, sigma_data ** 2
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / torch.sqrt(s2 + d2)
    c_in = 1.0 / torch.sqrt(s2 + d2)
    return c_skip, c_out, c_in, torch.log(sigma) / 4.0


class EDMPrior(NetworkPrior):
    """EDM-preconditioned denoiser around a diffusers UNet2DModel (medrecon's own trained priors)."""

    bf16_measured = True  # the bundled patch priors, validation and held-out runs (RESULTS.md, thirty-eighth session)

    def __init__(self, *args, sigma_data: float = 0.5, **kw):
        super().__init__(*args, **kw)
        self.sigma_data = float(sigma_data)

    def _denoise_native(self, x, sigma):
        return edm_denoise(self.network, x, sigma, self.sigma_data)


def edm_denoise(unet: torch.nn.Module, x: torch.Tensor, sigma: torch.Tensor, sigma_data: float,
                cond: torch.Tensor | None = None, context: torch.Tensor | None = None) -> torch.Tensor:
    """D(x, sigma) of an EDM-preconditioned diffusers UNet2DModel (shared by training and inference).

    ``cond`` (B, C, H, W): extra input channels appended after the scaled image, not preconditioned (the
    patch prior's pixel positions, see patch.py). ``context`` (B, K, H, W): noisy images at the same sigma
    that inform the estimate of x (a 2.5D prior's neighbouring slices), preconditioned like x and appended
    last. The network has 1 + C + K input channels and estimates x only."""
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, sigma_data)
    inp = _bcast(c_in) * x
    if cond is not None:
        inp = torch.cat([inp, cond.to(inp.dtype)], dim=1)
    if context is not None:
        inp = torch.cat([inp, _bcast(c_in) * context.to(inp.dtype)], dim=1)
    f = unet(inp, c_noise).sample
    return _bcast(c_skip) * x + _bcast(c_out) * f.to(x.dtype)


__all__ = ["NetworkPrior", "VEScorePrior", "VPEpsPrior", "EDMPrior", "edm_coefficients", "edm_denoise",
           "file_sha256"]
