"""ADMM for anisotropic TV-regularised least squares — the one data-consistency step all solvers share.

    min_x  1/2 ||A x - y||^2 + lam * ||D x||_1

    x <- CG (n_cg iterations, warm-started at x) on (A^H A + rho D^H D) x = A^H y + rho D^H (z - u)
    z <- soft_threshold(D x + u, lam / rho)
    u <- u + D x - z

Complex images (MRI from measured k-space) run through the same step: CG uses the real inner product
Re<a, b>, and the soft threshold shrinks the magnitude of each complex difference and keeps its phase.

``D`` is a FiniteDifference along z (DiffusionMBIR) or along all three axes (3D TV). With lam = 0 the
TV term vanishes and the step is plain CG on the normal equations (slice-wise 2D baselines).
The solver state (z, u) is explicit: DiffusionMBIR keeps one ADMMState across all diffusion steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..linop import LinearOperator
from .cg import conjugate_gradient


@dataclass
class ADMMState:
    z: torch.Tensor
    u: torch.Tensor


def soft_threshold(v: torch.Tensor, t: float) -> torch.Tensor:
    """Proximal map of t|.|: real v -> sign(v) max(|v| - t, 0); complex v -> v max(|v| - t, 0) / |v|."""
    if v.is_complex():
        mag = v.abs()
        return v * (torch.clamp(mag - t, min=0.0) / mag.clamp_min(torch.finfo(mag.dtype).tiny))
    return torch.sign(v) * torch.clamp(v.abs() - t, min=0.0)


class ADMMTV:
    """One problem instance; ``step`` runs one ADMM iteration, ``solve`` runs the classical solver.

    ``nonneg`` clamps x at 0 and ``clip=(lo, hi)`` clamps x into an interval after each x-update
    (in the units of x). Both are projections applied outside the ADMM splitting: a practical
    safeguard, not part of the convex problem, and off by default; they need real images.
    x is complex when ``A.adjoint`` returns complex images (a complex-input MRI operator).
    """

    def __init__(self, A: LinearOperator, y: torch.Tensor, D: LinearOperator | None, lam: float, rho: float,
                 n_cg: int = 1, nonneg: bool = False, clip: tuple[float, float] | None = None):
        if lam < 0 or rho <= 0:
            raise ValueError(f"need lam >= 0 and rho > 0, got lam={lam}, rho={rho}")
        self.A, self.y, self.D = A, y, D
        self.lam, self.rho, self.n_cg = float(lam), float(rho), int(n_cg)
        self.nonneg, self.clip = nonneg, clip
        self.aty = A.adjoint(y)
        if self.aty.is_complex() and (nonneg or clip is not None):
            raise ValueError("nonneg/clip need real images; this operator's images are complex")

    @property
    def uses_tv(self) -> bool:
        return self.D is not None and self.lam > 0

    def init_state(self, x: torch.Tensor) -> ADMMState:
        """z = the shrunk differences of the start x (0 for a constant start), u = 0: a warm start keeps its
        z-structure instead of being pulled towards a volume constant along z by the first x-update."""
        if not self.uses_tv:
            return ADMMState(torch.zeros(0), torch.zeros(0))
        z = soft_threshold(self.D.forward(x), self.lam / self.rho)
        return ADMMState(z, torch.zeros_like(z))

    def _normal(self, x):
        out = self.A.normal(x)
        if self.uses_tv:
            out = out + self.rho * self.D.normal(x)
        return out

    def step(self, x: torch.Tensor, state: ADMMState) -> torch.Tensor:
        """One ADMM iteration from x; updates ``state`` in place and returns the new x."""
        rhs = self.aty
        if self.uses_tv:
            rhs = rhs + self.rho * self.D.adjoint(state.z - state.u)
        x = conjugate_gradient(self._normal, rhs, x, self.n_cg)
        x = self.project(x)
        if self.uses_tv:
            dx = self.D.forward(x)
            state.z = soft_threshold(dx + state.u, self.lam / self.rho)
            state.u = state.u + dx - state.z
        return x

    def project(self, x: torch.Tensor) -> torch.Tensor:
        if self.nonneg:
            x = torch.clamp(x, min=0.0)
        if self.clip is not None:
            x = torch.clamp(x, self.clip[0], self.clip[1])
        return x

    def objective(self, x: torch.Tensor) -> float:
        r = self.A.forward(x) - self.y
        f = 0.5 * float(torch.sum(torch.abs(r) ** 2))
        if self.uses_tv:
            f += self.lam * float(torch.sum(torch.abs(self.D.forward(x))))
        return f

    def solve(self, x0: torch.Tensor, n_iter: int, callback=None) -> torch.Tensor:
        """Classical ADMM-TV: n_iter iterations from x0 (e.g. zeros or FBP)."""
        x, state = x0, self.init_state(x0)
        for k in range(n_iter):
            x = self.step(x, state)
            if callback is not None:
                callback(k, x)
        return x
