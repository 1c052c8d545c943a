"""ADMM for anisotropic TV-regularised least squares — the one data-consistency step all solvers share.

    min_x  1/2 ||A x - y||^2 + sum_a lam_a ||D_a x||_1   (lam: one weight, or one per axis of D)

    x <- CG (n_cg iterations, warm-started at x) on (A^H A + sum_a rho_a D_a^H D_a) x
                                                    = A^H y + sum_a rho_a D_a^H (z_a - u_a)
    z <- soft_threshold(D x + u, lam / rho)     (per axis: lam_a / rho_a)
    u <- u + D x - z

rho, like lam, is one penalty or one per axis of D (ADMM with a diagonal penalty: the scaled dual u keeps its
form per axis).

Complex images (MRI from measured k-space) run through the same step: CG uses the real inner product
Re<a, b>, and the soft threshold shrinks the magnitude of each complex difference and keeps its phase.

``D`` is a FiniteDifference along z (DiffusionMBIR) or along all three axes (3D TV). With lam = 0 the
TV term vanishes and the step is plain CG on the normal equations (slice-wise 2D baselines).
The solver state (z, u) is explicit: DiffusionMBIR keeps one ADMMState across all diffusion steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..linop import LinearOperator, slices_apart
from .cg import conjugate_gradient


@dataclass
class ADMMState:
    z: torch.Tensor
    u: torch.Tensor


def soft_threshold(v: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Proximal map of t|.| (t a number or a tensor broadcasting against v): real v -> sign(v) max(|v| - t, 0);
    complex v -> v max(|v| - t, 0) / |v|."""
    if v.is_complex():
        mag = v.abs()
        return v * (torch.clamp(mag - t, min=0.0) / mag.clamp_min(torch.finfo(mag.dtype).tiny))
    return torch.sign(v) * torch.clamp(v.abs() - t, min=0.0)


def _per_axis_values(v) -> tuple[float, ...]:
    """One number or a sequence of them (numpy/torch scalars too) as a tuple of floats."""
    return (float(v),) if np.ndim(v) == 0 else tuple(float(x) for x in v)


def _broadcast(values: tuple[float, ...], n: int) -> tuple[float, ...]:
    return values * n if len(values) == 1 else values


def axis_weights(lams) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The axes whose TV weight in ``lams`` (one per volume axis) is > 0, and those weights: D's axes and
    ``ADMMTV``'s per-axis lam (e.g. (lam_z, lam_xy, lam_xy) -> z-TV plus in-plane TV)."""
    axes = tuple(a for a, w in enumerate(lams) if w > 0)
    return axes, tuple(float(lams[a]) for a in axes)


class ADMMTV:
    """One problem instance; ``step`` runs one ADMM iteration, ``solve`` runs the classical solver.

    ``nonneg`` clamps x at 0 and ``clip=(lo, hi)`` clamps x into an interval after each x-update
    (in the units of x). Both are projections applied outside the ADMM splitting: a practical
    safeguard, not part of the convex problem, and off by default; they need real images.
    x is complex when ``A.adjoint`` returns complex images (a complex-input MRI operator).
    """

    def __init__(self, A: LinearOperator, y: torch.Tensor, D: LinearOperator | None, lam: float | Sequence[float],
                 rho: float | Sequence[float], n_cg: int = 1, nonneg: bool = False,
                 clip: tuple[float, float] | None = None):
        lams, rhos = _per_axis_values(lam), _per_axis_values(rho)
        if min(lams) < 0 or min(rhos) <= 0:
            raise ValueError(f"need lam >= 0 and rho > 0, got lam={lam}, rho={rho}")
        n_axes = max(len(lams), len(rhos))
        for name, values in (("TV weights", lams), ("ADMM penalties", rhos)):
            if len(values) > 1 and (D is None or len(values) != D.out_shape[0]):
                raise ValueError(f"{len(values)} {name} for the {0 if D is None else D.out_shape[0]} axes of D")
        self.A, self.y, self.D = A, y, D
        self.lams, self.rhos, self.n_cg = _broadcast(lams, n_axes), _broadcast(rhos, n_axes), int(n_cg)
        self.nonneg, self.clip = nonneg, clip
        self._axis_tensors: dict = {}  # _per_axis's tensors
        self.aty = A.adjoint(y)
        if self.aty.is_complex() and (nonneg or clip is not None):
            raise ValueError("nonneg/clip need real images; this operator's images are complex")

    @property
    def uses_tv(self) -> bool:
        return self.D is not None and max(self.lams) > 0

    @property
    def slice_systems(self) -> int | None:
        """2 where the data step is one system per slice (an operator acting on slices apart, and no TV along z to
        couple them; in-plane TV does not): CG then takes each slice's own step lengths, so a slice's result does
        not depend on the others' data; else None."""
        along_z = self.uses_tv and 0 in getattr(self.D, "axes", (0,))
        return 2 if slices_apart(self.A) and not along_z else None

    def _per_axis(self, v: torch.Tensor, values: Sequence[float]):
        """One value per axis of D, shaped to broadcast against D's output v (a float when they are all equal); the
        tensor is made once per values, dtype and device (the CG operator asks for it every iteration: on a GPU each
        new one was a host-to-device copy)."""
        if len(set(values)) == 1:
            return values[0]
        key = (tuple(values), v.real.dtype, v.device)
        if key not in self._axis_tensors:
            shape = (-1, *([1] * (len(self.D.out_shape) - 1)))
            self._axis_tensors[key] = torch.tensor(values, dtype=v.real.dtype, device=v.device).view(shape)
        return self._axis_tensors[key]

    def _threshold(self, v: torch.Tensor):
        return self._per_axis(v, [lam / rho for lam, rho in zip(self.lams, self.rhos)])

    def _penalised(self, v: torch.Tensor) -> torch.Tensor:
        """D^H (rho v): the penalty's part of the x-update, each axis of v with its own rho."""
        return self.D.adjoint(self._per_axis(v, self.rhos) * v)

    def init_state(self, x: torch.Tensor) -> ADMMState:
        """z = the shrunk differences of the start x (0 for a constant start), u = 0: a warm start keeps its
        z-structure instead of being pulled towards a volume constant along z by the first x-update."""
        if not self.uses_tv:
            return ADMMState(torch.zeros(0), torch.zeros(0))
        dx = self.D.forward(x)
        z = soft_threshold(dx, self._threshold(dx))
        return ADMMState(z, torch.zeros_like(z))

    def _normal(self, x):
        out = self.A.normal(x)
        if self.uses_tv:
            out = out + self._penalised(self.D.forward(x))
        return out

    def step(self, x: torch.Tensor, state: ADMMState) -> torch.Tensor:
        """One ADMM iteration from x; updates ``state`` in place and returns the new x."""
        rhs = self.aty
        if self.uses_tv:
            rhs = rhs + self._penalised(state.z - state.u)
        x = conjugate_gradient(self._normal, rhs, x, self.n_cg, system_dims=self.slice_systems)
        x = self.project(x)
        if self.uses_tv:
            dx = self.D.forward(x)
            state.z = soft_threshold(dx + state.u, self._threshold(dx))
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
            dx = self.D.forward(x)
            f += float(torch.sum(self._per_axis(dx, self.lams) * torch.abs(dx)))
        return f

    def solve(self, x0: torch.Tensor, n_iter: int, callback=None) -> torch.Tensor:
        """Classical ADMM-TV: n_iter iterations from x0 (e.g. zeros or FBP)."""
        x, state = x0, self.init_state(x0)
        for k in range(n_iter):
            x = self.step(x, state)
            if callback is not None:
                callback(k, x)
        return x
