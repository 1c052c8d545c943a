"""Conjugate gradients on a symmetric positive (semi-)definite system M x = b (the normal equations)."""
from __future__ import annotations

from typing import Callable

import torch

from ..linop import inner


def conjugate_gradient(apply_m: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, x0: torch.Tensor,
                       n_iter: int, tol: float = 0.0) -> torch.Tensor:
    """``n_iter`` CG iterations for M x = b started from x0 (the whole tensor is one system).

    Stops early when ||r|| <= tol * ||b||, with tol at least 100 machine epsilons of the dtype: past that point
    the residual is rounding noise and a further step can divide by p.Mp ~ 0 (e.g. A^T A a projector, as for a
    masked orthonormal FFT, is solved exactly by one step). With n_iter = 1 this is one steepest-descent step
    with exact line search, as in DiffusionMBIR's single CG iteration per diffusion step.
    """
    x = x0.clone()
    r = b - apply_m(x)
    p = r.clone()
    rs = inner(r, r)
    eps = torch.finfo(b.real.dtype if b.is_complex() else b.dtype).eps
    stop = (max(tol, 100 * eps) * torch.linalg.vector_norm(b)) ** 2
    for _ in range(n_iter):
        if rs <= stop or rs == 0:
            break
        mp = apply_m(p)
        pmp = inner(p, mp)
        # Breakdown guard: once the residual lies in M's null space (e.g. A^T A a projector, converged after one
        # step in float32) p.Mp is ~0 or rounding-negative and another step would divide by it.
        if not torch.isfinite(pmp) or pmp <= 1e-12 * rs:
            break
        alpha = rs / pmp
        x = x + alpha * p
        r = r - alpha * mp
        rs_new = inner(r, r)
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x
