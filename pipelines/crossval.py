"""Per-scan weights by cross-validation on held-out measurements (``solver.cross_validate``).

Part of the measurements is held out (CT: whole views spread over the arc; MRI: sampled phase-encode lines
outside the fully sampled centre), each candidate setting reconstructs from the rest, and each is scored by
how well its estimate predicts what was held out: the data term's residual on the held-out part (ray-weighted
for PWLS CT), relative to the held-out data's norm. The best candidate then reconstructs from all the data.

Candidates are factors of the settings' own warm-start noise level and z-TV weight, searched one after the
other (noise level at the given weight, then the weight at the chosen level), so the cost is
``len(start_sigma) + len(lam) - 1`` extra reconstructions. A noise-level factor 0 is the warm start itself (3D
ADMM-TV, no diffusion): chosen, the result is the warm start, and no weight is searched.
"""
from __future__ import annotations

import dataclasses
import logging

import torch

from medrecon.errors import InputError
from operators.mri import central_run

log = logging.getLogger("medrecon")


def holdout_mask(problem, fraction: float, seed: int = 0) -> tuple[torch.Tensor, str]:
    """(keep, description): keep is 1 on the measurements fitted and 0 on those held out (the data's shape)."""
    y = problem.data
    keep = torch.ones(y.shape, device=y.device)
    if problem.measurement.modality == "ct":  # y: (Z, views, bins)
        n_views = y.shape[-2]
        n = min(n_views - 1, max(1, round(fraction * n_views)))
        if n < 1:
            raise InputError(f"solver.cross_validate: needs at least two views to hold one out, the data have "
                             f"{n_views}: set solver.cross_validate.enabled=false")
        if n / n_views > 2 * fraction:  # one view of 2 is far more than holdout asks
            raise InputError(f"solver.cross_validate: holding out one of {n_views} views is {n / n_views:.0%} of "
                             f"the data, more than twice holdout {fraction:g}: set solver.cross_validate.enabled="
                             "false (or raise solver.cross_validate.holdout to accept it)")
        views = sorted({(n_views // 2 + seed + round(k * n_views / n)) % n_views for k in range(n)})
        keep[..., views, :] = 0
        return keep, f"views {views} of {n_views}"
    # MRI: phase-encode positions are (z, last axis), z the first axis in 2D ((Z, [C,] H, W)) and the third from the
    # end in 3D ((C,) Z, Y, X)); the readout is axis -2, kept or held out whole
    three_d = problem.measurement.mask_layout == "3d"
    z_axis = y.ndim - 3 if three_d else 0
    sampled = (y.abs() > 0).amax(dim=tuple(d for d in range(y.ndim) if d not in (z_axis, y.ndim - 1))).cpu()
    outer = sampled.clone()
    if three_d:  # the fully sampled block around the k-space centre
        zc, wc = sampled.shape[0] // 2, sampled.shape[1] // 2
        outer[central_run(sampled[:, wc]), central_run(sampled[zc])] = False
    else:  # the fully sampled central lines of every slice
        outer[:, central_run(sampled.all(0))] = False
    n_centre = int(sampled.sum() - outer.sum())
    where = outer.nonzero()
    n = max(1, round(fraction * len(where)))
    if len(where) < 2:
        raise InputError("solver.cross_validate: no sampled k-space lines outside the fully sampled centre to hold "
                         "out: set solver.cross_validate.enabled=false")
    g = torch.Generator().manual_seed(int(seed))
    for z, w in where[torch.randperm(len(where), generator=g)[:n]].tolist():
        index = [slice(None)] * y.ndim
        index[z_axis], index[-1] = z, w
        keep[tuple(index)] = 0
    return keep, f"{n} of {int(sampled.sum())} sampled lines (none of the {n_centre} central ones)"


def fit_problem(problem, keep: torch.Tensor):
    """The problem without the held-out measurements (their data-term weight set to 0). It keeps what ``info``
    says of the problem (complex images) in a copy, where its own runs' records go."""
    sw = problem.sqrt_weights
    return dataclasses.replace(problem, sqrt_weights=keep if sw is None else sw * keep, info=dict(problem.info))


def heldout_error(problem, keep: torch.Tensor, x: torch.Tensor) -> float:
    """||held-out part of (A x - y)||^2 / ||held-out part of y||^2 in the data term's (weighted) norm."""
    A, y = problem.least_squares()
    held = 1 - keep
    r = (A.forward(x) - y) * held
    return float((r.abs() ** 2).sum() / ((y * held).abs() ** 2).sum().clamp_min(1e-30))


def with_values(settings, start_sigma: float, lam: float):
    """The settings with this warm-start noise level and z-TV weight, cross-validation off."""
    return settings.model_copy(update={
        "warm_start": settings.warm_start.model_copy(update={"start_sigma": start_sigma}),
        "admm": settings.admm.model_copy(update={"lam": lam}),
        "cross_validate": settings.cross_validate.model_copy(update={"enabled": False})})


def cross_validate(problem, settings):
    """The settings whose start_sigma and z-TV lam predict the held-out measurements best; the search is recorded
    in ``problem.info["cross_validation"]``."""
    cv = settings.cross_validate
    sigma0, lam0 = settings.warm_start.start_sigma, settings.admm.lam
    try:
        keep, held = holdout_mask(problem, cv.holdout, cv.seed)
    except InputError as e:
        if problem.config.set_by_source("solver", "cross_validate", "enabled"):
            raise  # asked for by the config, not a default (measured k-space's)
        log.info(f"cross-validation (on by default here) skipped: {e}")  # e.g. fully sampled k-space
        problem.info["cross_validation"] = {"skipped": str(e), "network_evaluations_per_slice": 0}
        return with_values(settings, sigma0, lam0)
    fit = fit_problem(problem, keep)
    tried: dict[tuple[float, float], float] = {}
    nfe = 0

    def score(sigma, lam):
        nonlocal nfe
        if (sigma, lam) not in tried:
            no_adapt = settings.self_adapt.model_copy(update={"steps": 0})  # candidates: the prior as it is
            try:
                sol = fit.solve(with_values(settings, sigma, lam).model_copy(update={"self_adapt": no_adapt}))
            except InputError as e:  # e.g. a factor that takes start_sigma below the prior's noise levels
                raise InputError(f"solver.cross_validate: the candidate start_sigma {sigma:.3g} (a factor of "
                                 f"solver.cross_validate.start_sigma times {sigma0:.3g}), z-TV lam {lam:.3g}: {e}; "
                                 "choose other factors") from None
            nfe += sol.nfe_per_slice
            tried[(sigma, lam)] = heldout_error(problem, keep, sol.x)
            log.info(f"cross-validation: start_sigma {sigma:.3g}, z-TV lam {lam:.3g}: held-out error "
                     f"{tried[(sigma, lam)]:.5f}")
        return tried[(sigma, lam)]

    cold = settings.warm_start.method == "none"
    sigma = sigma0 if cold else min((sigma0 * f for f in cv.start_sigma), key=lambda s: score(s, lam0))
    # no diffusion (sigma 0), or one slice: the z-TV weight does not act
    lam = lam0 if sigma == 0 or problem.single_slice else min((lam0 * f for f in cv.lam), key=lambda v: score(sigma, v))
    log.info(f"cross-validation ({held} held out) chose start_sigma {sigma:.3g}, z-TV lam {lam:.3g}"
             + (": the warm start itself, no diffusion" if sigma == 0 else ""))
    problem.info["cross_validation"] = {
        "held_out": held, "chosen": {"start_sigma": sigma, "lam": lam},
        "candidates": [{"start_sigma": s, "lam": v, "heldout_error": e} for (s, v), e in tried.items()],
        "network_evaluations_per_slice": nfe}  # of the candidates' runs
    return with_values(settings, sigma, lam)


__all__ = ["cross_validate", "fit_problem", "heldout_error", "holdout_mask"]
