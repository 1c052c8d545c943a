"""Classical reconstructions: least squares (CG on the normal equations, CGLS), SIRT and ADMM-TV.

All take a ``LinearOperator`` A and measurements y whose trailing dims are ``A.out_shape`` (leading dims
are a batch, e.g. the slices of a volume for a slice-wise operator) and return x with trailing dims
``A.in_shape``. They work on any device and dtype of y. None of them sees a ground truth; choosing
lam/rho against a reference image is a benchmark's job, not a solver's.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..linop import FiniteDifference, LinearOperator, inner, inner_per
from .admm import ADMMTV
from .cg import broken_down, conjugate_gradient, stop_threshold


def _start(A: LinearOperator, aty: torch.Tensor, x0: torch.Tensor | None) -> torch.Tensor:
    return torch.zeros_like(aty) if x0 is None else x0.to(device=aty.device, dtype=aty.dtype)


def cg_normal(A: LinearOperator, y: torch.Tensor, x0: torch.Tensor | None = None, n_iter: int = 50,
              lam: float = 0.0, tol: float = 0.0) -> torch.Tensor:
    """CG on (A^H A + lam I) x = A^H y: least squares (lam = 0) or Tikhonov; least-squares SENSE for MRI."""
    aty = A.adjoint(y)
    apply = A.normal if lam == 0 else (lambda v: A.normal(v) + lam * v)
    return conjugate_gradient(apply, aty, _start(A, aty, x0), n_iter, tol)


def cgls(A: LinearOperator, y: torch.Tensor, x0: torch.Tensor | None = None, n_iter: int = 50,
         tol: float = 0.0, per_slice: bool = False) -> torch.Tensor:
    """CGLS for min ||A x - y||^2 (CG on the normal equations without forming them; better conditioned).

    Stops early when ||A^H r|| <= tol * ||A^H y||, tol at least 100 machine epsilons of the dtype, and at a
    breakdown (||A p||^2 rounding noise), as ``conjugate_gradient`` does: past convergence both are rounding noise
    and their ratio sent a masked-FFT (MRI) problem to 1e6 at the default 50 steps.
    """
    aty = A.adjoint(y)
    x = _start(A, aty, x0)
    r = y - A.forward(x) if x0 is not None else y.clone()
    s = A.adjoint(r) if x0 is not None else aty
    if per_slice and x.ndim > 1:
        return _cgls_per_slice(A, aty, x, r, s, n_iter, tol)
    p = s.clone()
    gamma = inner(s, s)
    stop = stop_threshold(aty, tol)
    scale = None
    for _ in range(n_iter):
        if gamma <= stop or gamma == 0:
            break
        q = A.forward(p)
        qq = inner(q, q)
        scale = qq / gamma if scale is None else scale
        if broken_down(qq, gamma, scale):
            break
        alpha = gamma / qq
        x = x + alpha * p
        r = r - alpha * q
        s = A.adjoint(r)
        gamma_new = inner(s, s)
        p = s + (gamma_new / gamma) * p
        gamma = gamma_new
    return x


def _cgls_per_slice(A, aty, x, r, s, n_iter: int, tol: float) -> torch.Tensor:
    """``cgls`` with each slice (the first axis of x and of y) a problem of its own, for an operator acting on the
    slices apart: one step length for the stack moved a slice by up to 27 HU at 50 steps when only the others'
    data changed."""
    def dot(u):  # ||u||^2 per slice, shaped to broadcast along the slices
        return inner_per(u, u, tuple(range(1, u.ndim)))

    def along(v, like):  # a per-slice value shaped for tensors of like's dims
        return v.reshape(v.shape[0], *([1] * (like.ndim - 1)))
    stop = stop_threshold(aty, tol, tuple(range(1, aty.ndim)))
    p, gamma = s.clone(), dot(s)
    active = (gamma > stop) & (gamma != 0)
    scale = None
    for _ in range(n_iter):
        if not bool(active.any()):
            break
        q = A.forward(p)
        qq = along(dot(q), gamma)
        safe = torch.where(gamma > 0, gamma, torch.ones_like(gamma))
        scale = torch.where(active, qq / safe, torch.zeros_like(qq)) if scale is None else scale
        active = active & torch.isfinite(qq) & (qq > 1e-12 * gamma * scale)
        alpha = torch.where(active, gamma / torch.where(active, qq, torch.ones_like(qq)), torch.zeros_like(qq))
        x = torch.where(active, x + alpha * p, x)
        r = torch.where(along(active, r), r - along(alpha, r) * q, r)
        s = A.adjoint(r)
        gamma_new = dot(s)
        p = torch.where(active, s + torch.where(active, gamma_new / safe, torch.zeros_like(gamma)) * p, p)
        gamma = torch.where(active, gamma_new, gamma)
        active = active & (gamma > stop) & (gamma != 0)
    return x


def sirt(A: LinearOperator, y: torch.Tensor, x0: torch.Tensor | None = None, n_iter: int = 100,
         nonneg: bool = False) -> torch.Tensor:
    """SIRT: x <- x + C A^T R (y - A x), R = 1/row sums, C = 1/column sums (for A with entries >= 0, CT).

    Rays or pixels with a zero sum get weight 0. ``nonneg`` clamps x at 0 after each step.
    """
    if y.is_complex():
        raise TypeError("SIRT is for real, non-negative operators such as CT projectors")
    ones_in = torch.ones(A.in_shape, dtype=y.dtype, device=y.device)
    row = A.forward(ones_in)
    col = A.adjoint(torch.ones(A.out_shape, dtype=y.dtype, device=y.device))
    tiny = torch.finfo(y.dtype).tiny
    R = torch.where(row > tiny, 1.0 / row.clamp(min=tiny), torch.zeros_like(row))
    C = torch.where(col > tiny, 1.0 / col.clamp(min=tiny), torch.zeros_like(col))
    batch = y.shape[: y.ndim - len(A.out_shape)]
    x = torch.zeros(*batch, *A.in_shape, dtype=y.dtype, device=y.device) if x0 is None else x0.to(y)
    for _ in range(n_iter):
        x = x + C * A.adjoint(R * (y - A.forward(x)))
        if nonneg:
            x = x.clamp(min=0.0)
    return x


def admm_tv(A: LinearOperator, y: torch.Tensor, lam: float, rho: float, n_iter: int,
            axes: Sequence[int] = (0,), n_cg: int = 5, x0: torch.Tensor | None = None,
            boundary: str = "neumann", nonneg: bool = False, clip: tuple[float, float] | None = None,
            callback: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """ADMM for min 1/2||A x - y||^2 + lam ||D x||_1 with the shared ``ADMMTV`` step (anisotropic TV).

    D is a ``FiniteDifference`` over the axes of the whole reconstruction x (batch dims included): for a
    slice-wise operator applied to a (Z, n, n) volume, ``axes=(0,)`` is TV along z (DiffusionMBIR) and
    ``axes=(0, 1, 2)`` is 3D TV; for one (n, n) slice ``axes=(0, 1)`` is 2D TV. ``boundary`` is
    "neumann" (no difference across the last slice) or "periodic" (the reference's wrap-around).
    x is complex for a complex-input operator (TV then shrinks the magnitude of complex differences).
    Starts from zeros unless x0 is given.
    """
    shape = (*y.shape[: y.ndim - len(A.out_shape)], *A.in_shape)
    D = FiniteDifference(shape, axes, boundary)
    solver = ADMMTV(A, y, D, lam, rho, n_cg=n_cg, nonneg=nonneg, clip=clip)
    return solver.solve(_start(A, solver.aty, x0), n_iter, callback)
