"""Conjugate gradients on a symmetric positive (semi-)definite system M x = b (the normal equations)."""
from __future__ import annotations

from typing import Callable

import torch

from ..linop import inner, inner_per


def stop_threshold(b: torch.Tensor, tol: float, dims: tuple | None = None) -> torch.Tensor:
    """(max(tol, 100 eps) ||b||)^2: below it a CG residual is rounding noise of b's dtype (``dims``: per system,
    the norm over those dimensions, kept for broadcasting)."""
    eps = torch.finfo(b.real.dtype if b.is_complex() else b.dtype).eps
    norm = torch.linalg.vector_norm(b) if dims is None else torch.linalg.vector_norm(b, dim=dims, keepdim=True)
    return (max(tol, 100 * eps) * norm) ** 2


def broken_down(curvature: torch.Tensor, residual: torch.Tensor, scale: torch.Tensor | float = 1.0) -> bool:
    """Whether a CG step's curvature (p.Mp, ||A p||^2) is rounding noise against the residual's square times
    ``scale`` (the first step's ratio of the two: M's own size, so that an operator of norm 1e-8 is not taken for
    a null space), or not finite: once the residual lies in M's null space (e.g. A^T A a projector, converged
    after one step in float32) another step would divide by it."""
    return not bool(torch.isfinite(curvature)) or bool(curvature <= 1e-12 * residual * scale)


def conjugate_gradient(apply_m: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, x0: torch.Tensor,
                       n_iter: int, tol: float = 0.0, system_dims: int | None = None) -> torch.Tensor:
    """``n_iter`` CG iterations for M x = b started from x0: the whole tensor is one system, or with
    ``system_dims`` k each slice over the last k dimensions is a system of its own (M must act on them apart: a
    slice-wise operator's normal operator), with its own step lengths and stop.

    Stops early when ||r|| <= tol * ||b||, with tol at least 100 machine epsilons of the dtype: past that point
    the residual is rounding noise and a further step can divide by p.Mp ~ 0 (e.g. A^T A a projector, as for a
    masked orthonormal FFT, is solved exactly by one step). With n_iter = 1 this is one steepest-descent step
    with exact line search, as in DiffusionMBIR's single CG iteration per diffusion step.
    """
    if system_dims is not None and b.ndim > system_dims:
        return _cg_per_system(apply_m, b, x0, n_iter, tol, system_dims)
    x = x0.clone()
    r = b - apply_m(x)
    p = r.clone()
    rs = inner(r, r)
    stop = stop_threshold(b, tol)
    scale = None
    for _ in range(n_iter):
        if rs <= stop or rs == 0:
            break
        mp = apply_m(p)
        pmp = inner(p, mp)
        scale = pmp / rs if scale is None else scale
        if broken_down(pmp, rs, scale):
            break
        alpha = rs / pmp
        x = x + alpha * p
        r = r - alpha * mp
        rs_new = inner(r, r)
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x


def _cg_per_system(apply_m, b: torch.Tensor, x0: torch.Tensor, n_iter: int, tol: float, k: int) -> torch.Tensor:
    """``conjugate_gradient`` with each slice over the last ``k`` dimensions a system of its own: one joint step
    length made a slice's update depend on the other slices' data (107 HU in one step, with z-TV off)."""
    dims = tuple(range(b.ndim - k, b.ndim))

    def dot(u, v):  # Re<u, v> per system, shaped to broadcast against u
        return inner_per(u, v, dims)
    stop = stop_threshold(b, tol, dims)
    x = x0.clone()
    r = b - apply_m(x)
    p = r.clone()
    rs = dot(r, r)
    scale = None
    active = (rs > stop) & (rs != 0)
    for _ in range(n_iter):
        if not bool(active.any()):
            break
        mp = apply_m(p)
        pmp = dot(p, mp)
        safe_rs = torch.where(rs > 0, rs, torch.ones_like(rs))
        scale = torch.where(active, pmp / safe_rs, torch.zeros_like(pmp)) if scale is None else scale
        active = active & torch.isfinite(pmp) & (pmp > 1e-12 * rs * scale)  # broken_down, per system
        alpha = torch.where(active, rs / torch.where(active, pmp, torch.ones_like(pmp)), torch.zeros_like(pmp))
        x = torch.where(active, x + alpha * p, x)  # where: an inactive system's inf/NaN curvature reaches nothing
        r = torch.where(active, r - alpha * mp, r)
        rs_new = dot(r, r)
        beta = torch.where(active, rs_new / safe_rs, torch.zeros_like(rs))
        p = torch.where(active, r + beta * p, p)
        rs = torch.where(active, rs_new, rs)
        active = active & (rs > stop) & (rs != 0)
    return x
