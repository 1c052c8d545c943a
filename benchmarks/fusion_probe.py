"""Can the classical solution repair the diffusion result where the prior does not know the anatomy? Two fusions
of the config's fast-sampler result x_d (seed 0) with 3D ADMM-TV, scored against the reference (axial PSNR):

- refine: min_x 1/2 ||A x - y||_W^2 + lam TV3D(x) + mu/2 ||x - x_d||^2 from x_d (ADMM, 50 iterations; mu relative
  to the largest eigenvalue of A^T W A): a data-consistent TV repair that keeps what it cannot improve;
- gate: with a second sampler seed x_2, m = (x_d + x_2) / 2 and v = the smoothed (x_d - x_2)^2 / 2 (the pixel's
  posterior variance, estimated from two samples), m + v / (v + tau^2) (x_tv - m): the tuned ADMM-TV where the
  samples disagree.

    python benchmarks/fusion_probe.py --case ct4 --scan ct_abdomen --pixel 1.5 --out out/fusion
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from scipy.ndimage import gaussian_filter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_real import CASES, case_prior, fast, load  # noqa: E402
from medrecon.linop import FiniteDifference  # noqa: E402
from medrecon.solvers.admm import ADMMTV  # noqa: E402
from pipelines.compare import admm_tv_settings, method_configs  # noqa: E402
from pipelines.problem import Problem  # noqa: E402

NATIVE = {"ct8": (5.0, 0.4), "ct4": (2.0, 1.2)}  # the baseline's lam and the config's start sigma (NATIVE.json)


class ProxADMMTV(ADMMTV):
    """ADMM-TV with mu/2 ||x - x_d||^2 added: A^T W A + mu I in the CG step, A^T W y + mu x_d on the right."""

    def __init__(self, A, y, D, lam, rho, x_d, mu, **kw):
        super().__init__(A, y, D, lam, rho, **kw)
        self.mu = mu
        self.aty = self.aty + mu * x_d

    def _normal(self, x):
        return super()._normal(x) + self.mu * x


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="ct4", choices=list(NATIVE))
    ap.add_argument("--scan", required=True, help="a registered scan or a volume file")
    ap.add_argument("--pixel", type=float, required=True)
    ap.add_argument("--slices", type=int, default=6)
    ap.add_argument("--out", type=Path, required=True, help="results JSON and the cached sampler results")
    a = ap.parse_args(argv)
    config, modality = CASES[a.case]
    lam_tv, start_sigma = NATIVE[a.case]
    methods = {"seed0": fast(50, 1.0, start_sigma), "seed1": {**fast(50, 1.0, start_sigma), "seed": 1},
               "admm_tv": admm_tv_settings(lam_tv)}
    cfgs = method_configs(config, methods, [f"prior.path={case_prior(a.case)}", f"{modality}.pixel_size={a.pixel}"])
    name = Path(a.scan).name.split(".")[0]
    problem = Problem.build(cfgs["seed0"], load(a.scan, a.slices))
    psnr = lambda x: problem.score(problem.to_volume(x))["psnr"]["axial"]  # noqa: E731
    a.out.mkdir(parents=True, exist_ok=True)
    x = {}
    for label, cfg in cfgs.items():
        cache = a.out / f"{a.case}_{name}_{label}.pt"
        if cache.exists():
            x[label] = torch.load(cache)
        else:
            x[label] = problem.solve(cfg.solver).x
            torch.save(x[label], cache)
    xd, x2, xtv = x["seed0"], x["seed1"], x["admm_tv"]
    res = {k: round(psnr(v), 3) for k, v in x.items()}
    res["mean of 2 seeds"] = round(psnr((xd + x2) / 2), 3)
    print(json.dumps(res), flush=True)
    A, y = problem.least_squares()
    L = A.norm(n_iter=20, dtype=xd.dtype, batch=xd.shape[:xd.ndim - len(A.in_shape)]) ** 2  # of A^T W A
    D = FiniteDifference(xd.shape, (0, 1, 2), "neumann")
    res["refine"] = {}
    for lam in (0.25, 0.5, 1.0, 2.0):
        for mu in (1e-3, 3e-3, 1e-2, 3e-2, 1e-1):
            s = ProxADMMTV(A, y, D, lam, 10 * lam, xd, mu * L, n_cg=5, clip=problem.bounds(cfgs["seed0"].solver))
            res["refine"][f"lam {lam:g}, mu {mu:g}"] = round(psnr(s.solve(xd.clone(), 50)) - res["seed0"], 3)
    m, d2 = (xd + x2) / 2, (xd - x2) ** 2 / 2
    res["gate"] = {}
    for sigma in (0, 2, 4):  # smoothing of each slice, in pixels
        v = torch.from_numpy(gaussian_filter(d2.numpy(), (0, sigma, sigma), mode="mirror", truncate=3.0)) if sigma else d2
        for tau in (0.25, 0.5, 1, 2, 4):
            w = v / (v + (tau * v.mean().sqrt()) ** 2)
            res["gate"][f"smooth {sigma}, tau {tau:g}"] = round(psnr(m + w * (xtv - m)) - res["seed0"], 3)
    print(json.dumps(res, indent=1), flush=True)
    (a.out / f"{a.case}_{name}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
