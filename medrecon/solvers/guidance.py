"""The DiffusionMBIR paper's slice-wise diffusion baselines as samplers of the same framework.

* ``ProjectionSampler`` — projection-type data consistency (Song, Shen, Xing, Ermon, ICLR 2022, "Solving
  inverse problems in medical imaging with score-based generative models").
* ``MCGSampler`` — manifold-constrained gradient followed by the projection (Chung, Sim, Ryu, Ye, NeurIPS 2022).
* ``DPSSampler`` — diffusion posterior sampling: the manifold-constrained gradient alone, step zeta/||r||
  (Chung, Kim, Mccann, Klasky, Ye, ICLR 2023), Gaussian or weighted (Poisson) likelihood.

All three share one VE reverse process, the one of ``DiffusionMBIR`` (denoiser contract, any prior). Step i,
sigma = sigma_i, sigma' = sigma_{i+1} (0 after the last step), g2 = sigma^2 - sigma'^2:

    x0 = D(x, sigma) per chunk (Tweedie)  [MCG/DPS: with the gradient G = grad_x sum_s ||y_s - A x0_s||^2_W]
    x <- x + g2 (x0 - x) / sigma^2 + sqrt(g2) z1                  (reverse-diffusion predictor)
    x <- x - c / ||r_s|| * G          per slice s, r = y - A x0   (MCG: c = alpha, DPS: c = zeta)
    x <- Langevin corrector at sigma (snr > 0; as DiffusionMBIR)  (second network evaluation)
    x <- x + lambda_proj * A^+(y_sigma' - A x),  y_sigma' = y + sigma' A z3    (projection, MCG)
    x <- one shared ADMM z-TV step (``ADMMTV.step``, only when lam > 0; off by default: slice-wise baselines)

A^+ is ``n_cg`` CG iterations on the normal equations started from x (``conjugate_gradient``; whole volume).
For MRI with an orthonormal masked FFT, when A^H A = Re F^H M F is a projector (complex images, or a real
image with a mask symmetric under k -> -k) one CG iteration is exact and the projection with lambda_proj = 1
replaces the sampled k-space of x by the noised measurement: Song et al.'s k-space step. For a real image
and an asymmetric mask, k-space replacement followed by taking the real part is not a projection; CG then
gives the least-squares step instead.

The gradient flows through the network only one chunk at a time: the chunk's x gets ``requires_grad``, the
network is evaluated with grad enabled, and the data-term gradient dL/dx0 = -2 A^H W (y - A x0) is pulled
back with one vector-Jacobian product; the graph is freed before the next chunk (memory of one chunk).
With a slice-wise operator (``A.in_shape`` = (H, W)) this costs no extra network evaluation; with a
volume operator (in_shape (Z, H, W), e.g. 3D MRI masks) dL/dx0 needs the whole x0 first, so the chunks
are denoised twice (one more evaluation per slice and step) and ||r|| is the volume's norm.

Counters per slice: ``nfe`` (network evaluations) and ``backward_passes`` (vector-Jacobian products).
"""
from __future__ import annotations

import math

import torch

from ..linop import LinearOperator, slices_apart, whitened
from ..priors.base import Denoiser
from ..priors.network import exact_fp32
from .cg import conjugate_gradient
from .diffusion import DiffusionSolver, SamplerState


def poisson_weights(counts: torch.Tensor, floor: float = 1.0) -> torch.Tensor:
    """DPS's Poisson likelihood as weighted least squares: W = diag(1 / (2 max(y, floor))) for counts y."""
    return 1.0 / (2.0 * counts.clamp_min(floor))


class GuidedSampler(DiffusionSolver):
    """VE predictor(-corrector) reverse diffusion with optional manifold-constrained gradient and projection.

    Subclasses set ``guided`` (take the gradient step, size ``step_scale / ||r||``) and ``projects``.
    Parameters besides ``DiffusionSolver``'s: ``snr`` (Langevin corrector, 0 = predictor only),
    ``lambda_proj`` (projection blending weight in [0, 1]), ``step_scale`` (alpha / zeta), ``weights``
    (likelihood weights W, the shape of y; None = Gaussian, W = I: the gradient, the projection and the z-TV
    step all fit the W-weighted residual, as the other solvers' PWLS does). ``n_cg`` counts the CG iterations of
    the projection and of the optional z-TV step.

    z-TV is optional here, unlike in ``DiffusionSolver``: ``lam`` defaults to 0 (the papers' slice-wise
    baselines) and then ``rho`` is unused and may be left out; with ``lam > 0`` the ADMM penalty ``rho`` must
    be given (its value depends on the modality and scaling, which the core does not know).
    """

    default_steps = 1000    # the papers use 1000 (DPS) to 2000 (score-SDE, MCG) steps
    default_n_cg = 5
    guided = False
    projects = False

    def __init__(self, prior: Denoiser, A: LinearOperator, y: torch.Tensor, *, lam: float = 0.0,
                 rho: float | None = None, snr: float = 0.16, lambda_proj: float = 1.0, step_scale: float = 1.0,
                 weights: torch.Tensor | None = None, **kwargs):
        if rho is None:
            if lam > 0 or kwargs.get("lam_xy", 0) > 0:
                raise ValueError(f"TV (lam={lam}, lam_xy={kwargs.get('lam_xy', 0)}) needs the ADMM penalty rho")
            rho = 1.0                        # unused: without z-TV the ADMM step is never taken
        w = None if weights is None else weights.to(y.device, torch.float32).expand_as(y)
        super().__init__(prior, *whitened(A, y, None if w is None else w.sqrt()), lam=lam, rho=rho,
                         **kwargs)  # the projection and z-TV fit the weighted residual (PWLS)
        if self.is_complex:
            raise ValueError(f"{type(self).__name__} works on real images; use a real-input operator "
                             f"(DiffusionMBIR and FastSampler take complex images)")
        if not 0.0 <= lambda_proj <= 1.0:
            raise ValueError(f"lambda_proj must lie in [0, 1], got {lambda_proj}")
        if snr < 0 or step_scale < 0:
            raise ValueError(f"need snr >= 0 and a step scale >= 0, got snr={snr}, step={step_scale}")
        self.A, self.y = A, y.to(self.dc.y.device, self.dc.y.dtype)  # the gradient applies W itself
        self.snr, self.lambda_proj, self.step_scale = float(snr), float(lambda_proj), float(step_scale)
        self.weights = None if w is None else w.to(self.device)
        self.slicewise_op = len(A.in_shape) == 2 and not getattr(A, "per_slice", False)  # one mask per slice: whole
        # a residual norm per slice wherever slices are separate problems, whether A takes chunks or the stack
        self.norm_per_slice = slices_apart(A)
        self.nfe_per_step = 1 + (self.snr > 0) + (self.guided and not self.slicewise_op)
        self.backward_per_step = int(self.guided)

    # -- the manifold-constrained gradient ----------------------------------------------------------
    def data_gradient(self, x0: torch.Tensor, sl: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """dL/dx0 = -2 A^H W (y - A x0) and ||r||_W per slice (one norm for an operator coupling the slices).
        ``sl`` selects the slices of y (slice-wise operator); None means the whole volume."""
        y = self.y if sl is None else self.y[sl]
        r = y - self.A.forward(x0)
        wr = r if self.weights is None else (self.weights if sl is None else self.weights[sl]) * r
        dims = tuple(range(1, r.ndim)) if self.norm_per_slice else tuple(range(r.ndim))
        norm = torch.sqrt(torch.sum(torch.real(r.conj() * wr), dim=dims))
        return -2.0 * self.A.adjoint(wr).real.to(x0.dtype), norm

    def _pullback(self, xc: torch.Tensor, sigma: float, sl: slice, g0: torch.Tensor | None,
                  context: torch.Tensor | None = None):
        """D(xc) and the vector-Jacobian product of D at xc with dL/dx0 (computed here from the chunk's slices
        ``sl`` when ``g0`` is None: slice-wise operator); ``context``: a 2.5D prior's neighbours, held fixed.
        The graph lives only inside this call."""
        with torch.enable_grad():
            xg = xc.detach().requires_grad_(True)
            x0 = self.denoise(xg, sigma, context)
            norm = None
            if g0 is None:
                g0, norm = self.data_gradient(x0.detach(), sl)
            with exact_fp32(xg.device.type):  # fp32 convolutions of the backward in fp32, as their forward
                grad, = torch.autograd.grad(x0, xg, g0)
        return x0.detach(), grad, norm

    def tweedie(self, x: torch.Tensor, sigma: float, chunk_size: int):
        """(x0, G, ||r||): x0 = D(x, sigma), G = grad_x sum_s ||y_s - A D(x_s, sigma)||^2_W (None when not
        ``guided``), r = y - A x0 per slice; chunk by chunk (x: the whole volume)."""
        if not self.guided:
            return self.denoise_volume(x, sigma, chunk_size), None, None
        grad, norms, g0 = torch.empty_like(x), [], None
        if not self.slicewise_op:            # dL/dx0 needs the whole x0: one extra pass without a graph
            g0, norm = self.data_gradient(self.denoise_volume(x, sigma, chunk_size))
            norms = [norm.expand(x.shape[0])]
        x0 = torch.empty_like(x)
        for sl in self.volume_pass(chunk_size):
            x0[sl], grad[sl], n = self._pullback(x[sl], sigma, sl, None if g0 is None else g0[sl],
                                                 self.neighbours(x, sl))
            if n is not None:
                norms.append(n)
        return x0, grad, torch.cat(norms)

    # -- projection -----------------------------------------------------------------------------------
    def project(self, x: torch.Tensor, sigma: float, g: torch.Generator) -> torch.Tensor:
        """x + lambda_proj * A^+(y_sigma - A x), y_sigma = y + sigma A z (n_cg CG steps on the normal equations)."""
        A, y = self.dc.A, self.dc.y  # weighted where the data term is (PWLS)
        y = y if sigma == 0 else y + sigma * A.forward(self.noise(g)).to(y.dtype)
        full = conjugate_gradient(A.normal, A.adjoint(y).real, x, self.dc.n_cg,  # each slice its own system
                                  system_dims=2 if self.norm_per_slice else None)
        return torch.lerp(x, full, self.lambda_proj)

    # -- one step ---------------------------------------------------------------------------------------
    def _step(self, state: SamplerState, i: int) -> torch.Tensor:
        sigma, sigma_next = self.sigma_pair(i)
        g2 = sigma ** 2 - sigma_next ** 2
        x0, grad, norm = self.tweedie(state.x, sigma, state.chunk_size)
        x = state.x.add_(x0.sub_(state.x), alpha=g2 / sigma ** 2)
        x.add_(self.noise(state.generator), alpha=math.sqrt(g2))
        del x0
        if grad is not None:
            step = self.step_scale / norm.clamp_min(1e-30)
            x.sub_(step.view(-1, 1, 1) * grad)
            del grad
        if self.snr > 0:
            # in place, except for a 2.5D prior, whose neighbours must come from x as the step found it
            z, corrected = self.noise(state.generator), (torch.empty_like(x) if self.prior.context_slices else x)
            for sl in self.volume_pass(state.chunk_size):
                corrected[sl] = self.langevin(x[sl], sigma, z[sl], self.snr, self.neighbours(x, sl))
            x = corrected
        if self.projects:
            x = self.project(x, sigma_next, state.generator)
        if self.dc.uses_tv:
            x = self.dc.step(x, state.admm)
        state.x = x
        return x


class ProjectionSampler(GuidedSampler):
    """Projection-type consistency (Song et al. 2022): predictor-corrector, then x + lambda_proj A^+(y_sigma' - A x)."""

    projects = True


class MCGSampler(GuidedSampler):
    """MCG (Chung et al. 2022): predictor-corrector, manifold-constrained gradient step alpha/||r|| * G, projection.

    ``alpha`` is the gradient step scale (the reference codes' weight on grad ||r|| is 2 alpha)."""

    guided = projects = True

    def __init__(self, prior, A, y, *, alpha: float = 1.0, **kwargs):
        super().__init__(prior, A, y, step_scale=alpha, **kwargs)


class DPSSampler(GuidedSampler):
    """DPS (Chung et al. 2023): reverse diffusion with the gradient step zeta/||r||_W * grad ||r||^2_W, no projection.

    ``likelihood="gaussian"`` (W = I) or ``"poisson"``: weighted least squares with ``weights`` (e.g. detected
    counts for CT line integrals, the inverse variances) or, without weights, DPS's W = 1/(2 max(y, 1)) for
    a count measurement y. No corrector by default (snr = 0), as DPS's ancestral sampler."""

    guided = True

    def __init__(self, prior, A, y, *, zeta: float = 1.0, likelihood: str = "gaussian",
                 weights: torch.Tensor | None = None, snr: float = 0.0, **kwargs):
        if likelihood not in ("gaussian", "poisson"):
            raise ValueError(f"likelihood must be 'gaussian' or 'poisson', got {likelihood!r}")
        if likelihood == "poisson" and weights is None:
            weights = poisson_weights(y.real.float())
        if likelihood == "gaussian" and weights is not None:
            raise ValueError("weights need likelihood='poisson'")
        super().__init__(prior, A, y, step_scale=zeta, weights=weights, snr=snr, **kwargs)
        self.likelihood = likelihood


__all__ = ["DPSSampler", "GuidedSampler", "MCGSampler", "ProjectionSampler", "poisson_weights"]
