"""Record the fast sampler's own errors on training scans (sixteenth session; input for
``medrecon train --sampler-errors``, see ``medrecon.priors.sampler_errors``).

Inside a warm-started sampler the prior is never shown a clean slice plus Gaussian noise: at step i it sees
x0' + sigma_i n, where x0' (the warm start, then each step's data-consistent estimate) carries the errors the
few views leave (streaks along the views, blocks of ADMM-TV, missing fine detail). This script runs a config's
fast sampler on slabs of training scans and saves, per step, e_i = x0'_i - x (model units) with the noise level
sigma_i that the next denoiser call adds, and the reference x:

    python benchmarks/sampler_errors.py --case ct8 --scans ct_chest_contrast ct_lung1 --at 0.25 0.75 \\
        --out out/s16/errors

Writes OUT/<case>_<scan>_<start>.npz (reference (Z, H, W), errors (S, Z, H, W) float16, sigmas (S,)) and prints
the run's axial PSNR. Slabs are placed at fractions --at of the scan's depth, away from the central slab that
bench_real and tune_ztv score on.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_real import CASES, case_prior  # noqa: E402
from medrecon.io import read_volume  # noqa: E402
from medrecon.metrics import psnr  # noqa: E402
from medrecon.solvers.diffusion import DiffusionSolver, FastSampler  # noqa: E402
from pipelines import datasets  # noqa: E402
from pipelines.compare import method_configs  # noqa: E402
from pipelines.problem import Problem  # noqa: E402


def record_run(cfg, vol) -> dict:
    """Run cfg's fast sampler on vol; the reference and every step's (error, next noise level)."""
    problem = Problem.build(cfg, vol)
    steps: list[tuple[torch.Tensor, float]] = []
    init, step = DiffusionSolver.init_state, FastSampler._step

    def init_state(self, x_init=None, seed=None, antithetic=False):
        if x_init is not None:
            steps.append((x_init.detach().clone().float(), float(self.sigmas[0])))
        return init(self, x_init, seed, antithetic)

    def _step(self, state, i):
        out = step(self, state, i)
        if i + 1 < self.n_steps:
            steps.append((out.detach().clone().float(), float(self.sigma_pair(i)[1])))
        return out

    DiffusionSolver.init_state, FastSampler._step = init_state, _step
    try:
        sol = problem.solve(cfg.solver, False)
    finally:
        DiffusionSolver.init_state, FastSampler._step = init, step
    if problem.measurement.info.get("crop"):  # the reference is the input's extent, the states the square grid's
        raise SystemExit("sampler_errors.py compares the sampler's states with the reference pixel by pixel: give "
                         "it square slices (crop the input)")
    ref = torch.as_tensor(np.asarray(problem.intensity.to_model(problem.reference.data), dtype=np.float32))
    result = problem.to_volume(sol.x)
    score = psnr(problem.reference.data, result.data, 2000.0)
    errors = torch.stack([s[0].real.cpu() - ref for s in steps]).to(torch.float16).numpy()
    return {"reference": ref.numpy(), "errors": errors, "sigmas": np.array([s[1] for s in steps], np.float32),
            "psnr": score}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="ct8", choices=[k for k, v in CASES.items() if v[1] == "ct"])
    ap.add_argument("--scans", nargs="+", required=True, help="training scans (pipelines.datasets) or volume files")
    ap.add_argument("--at", nargs="+", type=float, default=[0.25, 0.75], help="slab positions (fractions of depth)")
    ap.add_argument("--slices", type=int, default=6)
    ap.add_argument("--pixel", type=float, default=2.0)
    ap.add_argument("--prior", default=None, help="prior.path (default: the case's config's)")
    ap.add_argument("--set", nargs="*", default=[], help="more solver settings, key=value (e.g. steps=50)")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "sampler_errors")
    a = ap.parse_args(argv)
    config = CASES[a.case][0]
    a.out.mkdir(parents=True, exist_ok=True)
    solver = {"name": "fast", **{k: float(v) for k, v in (s.split("=") for s in a.set)}}
    if "steps" in solver:
        solver["steps"] = int(solver["steps"])
    cfg = method_configs(config, {"fast": solver}, [f"prior.path={case_prior(a.case, a.prior)}", f"ct.pixel_size={a.pixel}"])["fast"]
    for scan in a.scans:
        full = read_volume(scan if Path(scan).exists() else datasets.path(scan))
        for at in a.at:
            n = min(a.slices, full.shape[0])
            start = min(max(0, int(at * full.shape[0]) - n // 2), full.shape[0] - n)
            rec = record_run(cfg, full.slab(start, start + n))
            name = Path(scan).name.split(".")[0]
            np.savez(a.out / f"{a.case}_{name}_{start}.npz", **{k: v for k, v in rec.items() if k != "psnr"})
            rms = np.sqrt((rec["errors"].astype(np.float32) ** 2).mean(axis=(1, 2, 3)))
            print(f"{a.case} {name} slices {start}-{start + n - 1}: PSNR {rec['psnr']:.2f} dB, {len(rms)} steps, "
                  f"error RMS {rms[0]:.3f} (sigma {rec['sigmas'][0]:.2f}) -> {rms[-1]:.3f} "
                  f"(sigma {rec['sigmas'][-1]:.3f})", flush=True)


if __name__ == "__main__":
    main()
