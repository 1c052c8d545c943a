"""Solvers: CG, the shared ADMM-TV step, the classical reconstructions and the diffusion samplers built on them."""
from .admm import ADMMState, ADMMTV, axis_weights, soft_threshold
from .cg import conjugate_gradient
from .classical import admm_tv, cg_normal, cgls, sirt
from .diffusion import DiffusionMBIR, DiffusionSolver, FastSampler, SamplerState, auto_chunk_size, sample_posterior
from .guidance import DPSSampler, GuidedSampler, MCGSampler, ProjectionSampler, poisson_weights

__all__ = ["ADMMState", "ADMMTV", "axis_weights", "soft_threshold", "conjugate_gradient", "admm_tv", "cg_normal",
           "cgls", "sirt",
           "DiffusionMBIR", "DiffusionSolver", "FastSampler", "SamplerState", "auto_chunk_size", "sample_posterior",
           "DPSSampler", "GuidedSampler", "MCGSampler", "ProjectionSampler", "poisson_weights"]
