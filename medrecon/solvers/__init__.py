"""Solvers: CG, the shared ADMM-TV step, and the classical reconstructions built on them."""
from .admm import ADMMState, ADMMTV, soft_threshold
from .cg import conjugate_gradient
from .classical import admm_tv, cg_normal, cgls, sirt

__all__ = ["ADMMState", "ADMMTV", "soft_threshold", "conjugate_gradient", "admm_tv", "cg_normal", "cgls", "sirt"]
