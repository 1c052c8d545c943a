"""Variants of the fast sampler tried on *training* scans and not adopted (README: "Tried in the eighth session").

Each variant patches one function of the installed code for this process only, then runs ``tune_ztv.py``
with the remaining arguments (so the scans, case, warm start and step count are tune_ztv's options):

    python benchmarks/sampler_variants.py --variant flip -- --case ct8 --scans ct_chest_contrast ct_lung1 \
        ct_abdomen --warm 0.8:1 --setting final_sigma 0.02
    python benchmarks/sampler_variants.py --variant restart --restart 0.3:10 -- --case ct4 ...
    python benchmarks/sampler_variants.py --variant final-dc -- --case mri4 --scans mr_brain1 mr_head_t1w \
        --steps 50 --warm 0.8:0.003 --setting final_sigma 0.02 0.04
    python benchmarks/sampler_variants.py --variant mr-scale --scale auto -- --case mri8 ...
    python benchmarks/sampler_variants.py --variant prior-above --other-prior out/train/ct_patch25 --tau 0.3 -- ...
    python benchmarks/sampler_variants.py --variant inflate --inflate 1.2:0.02 -- --case ct8 ...
    python benchmarks/sampler_variants.py --variant context --context oracle -- --case ct8 --scans ct_abdomen \
        --warm 0.8:0.3 --setting final_sigma 0.02 --prior out/train/ct_patch25_se --per-slice
    python benchmarks/sampler_variants.py --variant ddip --ddip 1e-3:3:4 --runner bench_real -- --cases mri8 \
        --scans out/magnitude/t2_mag.nii.gz --pixel 0.625 --slices 1 --no-slicewise --fast-steps 50 --tuned MAG.json

flip: the second of the patch prior's two tile grids sees the slice mirrored left-right (the prior was trained
with left-right flips), a self-ensemble at the same cost. restart: after the run, re-noise its result to
sigma and run the given number of steps again from there (restart sampling). final-dc: the final denoising
is followed by one more data-consistency / z-TV step instead of the projection alone. mr-scale: the prior sees
the image multiplied by c (auto: 1 / the warm start's 99.5th percentile, the MR prior's training
normalisation; the pipeline normalises simulated MRI by its maximum). prior-above: another prior (e.g. a 2.5D
one) denoises at noise levels above tau, the run's own prior below. inflate c:e: the network is told the noise
level sqrt((c sigma)^2 + e^2) instead of sigma, for the structured error the data-consistency step leaves on top
of the sampler's own noise (the final denoising keeps its sigma). The two-scale variant of the eleventh and
nineteenth sessions ("coarse --keep-fine") is now built in: the fast sampler's ``solver.coarse_above``
(``tune_ztv.py --setting coarse_above 0 0.1``); its coarse-only form, not adopted, is in this file's history.
context (a 2.5D prior): the neighbouring slices it sees are replaced, a diagnostic: oracle = the reference's
neighbouring slices with fresh noise of the step's sigma (what training shows it; a cheat), self = the slice itself
as every neighbour (no z information), reflect = slice 1 for the missing slice -1 at the volume's ends (and
alike at the other end) instead of the edge slice itself. ddip (thirty-second session): the prior's weights
adapted to the measurements during sampling (see ``ddip``). ``--runner bench_real`` hands the remaining arguments
to bench_real.py (held-out scans) instead of tune_ztv.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from medrecon.priors import patch  # noqa: E402
from medrecon.solvers import diffusion  # noqa: E402


def flip_ensemble():
    def denoise(self, x, sigma):
        dy, dx = self.next_offset()
        step = self.patch_size // self.shifts
        out = []
        for k in range(self.shifts):
            flip = k % 2 == 1
            xi = x.flip(-1) if flip else x
            o = patch.patchwise(self._patch_fn, xi, sigma, self.patch_size, (dy + k * step, dx + k * step),
                                self.max_batch)
            out.append(o.flip(-1) if flip else o)
        return torch.stack(out).mean(0)
    patch.PatchPrior._denoise_native = denoise


def restart(spec: str):
    run = diffusion.DiffusionSolver.run

    def restarted(self, shape=None, x_init=None, seed=None):
        est = run(self, shape, x_init, seed)
        levels, nfe = self.sigmas, self.nfe
        end = float(levels[-1]) if float(levels[-1]) > self.prior.schedule.sigma_min * 1.001 else None
        for k, part in enumerate(p for p in spec.split(",") if p):
            sigma, steps = part.split(":")
            self.sigmas = diffusion.noise_levels(self.prior.schedule, int(steps), float(sigma), end)
            est = run(self, None, est.clone(), (self.seed if seed is None else seed) + 1 + k)
            nfe += self.nfe
        self.sigmas, self.nfe = levels, nfe
        return est
    diffusion.DiffusionSolver.run = restarted


def final_dc():
    def step(self, state):
        est = self._step(state, state.step)
        state.step += 1
        state.nfe += self.nfe_per_step
        if state.step == self.n_steps and self.final_sigma > 0:
            est = state.x = self.dc.step(self.denoise_volume(est, self.final_sigma, state.chunk_size), state.admm)
            state.nfe += 1
        return est
    diffusion.DiffusionSolver.step = step


def mr_scale(scale: str):
    run, denoise = diffusion.DiffusionSolver.run, diffusion.DiffusionSolver.denoise

    def scaled_run(self, shape=None, x_init=None, seed=None):
        if scale == "auto":  # model units [-1, 1] <-> normalised magnitude [0, 1]
            v = ((x_init + 1) / 2).abs().flatten()
            v = v[torch.randperm(len(v))[:1_000_000]]
            self.intensity_scale = 1.0 / max(float(torch.quantile(v, 0.995)), 1e-6)
        else:
            self.intensity_scale = float(scale)
        print(f"[mr-scale] c = {self.intensity_scale:.3f}", flush=True)
        return run(self, shape, x_init, seed)

    def scaled_denoise(self, x, sigma):
        c = self.intensity_scale
        return (denoise(self, c * (x + 1) - 1, c * sigma) + 1) / c - 1
    diffusion.DiffusionSolver.run, diffusion.DiffusionSolver.denoise = scaled_run, scaled_denoise


def prior_above(path: str, tau: float):
    from medrecon.priors import load_prior

    other, denoise_volume = load_prior(path), diffusion.DiffusionSolver.denoise_volume

    def switched(self, x, sigma, chunk_size):
        if sigma <= tau:
            return denoise_volume(self, x, sigma, chunk_size)
        own, self.prior = self.prior, other
        try:
            return denoise_volume(self, x, sigma, chunk_size)
        finally:
            self.prior = own
    diffusion.DiffusionSolver.denoise_volume = switched


def inflate(spec: str):
    c, e = map(float, spec.split(":"))
    step, denoise = diffusion.DiffusionSolver._step, diffusion.DiffusionSolver.denoise

    def inflated(self, x, sigma, context=None):
        told = sigma if getattr(self, "_final", False) else (c * c * sigma * sigma + e * e) ** 0.5
        return denoise(self, x, told, context)

    def marked_step(self, state, i):  # the final denoising runs outside _step: it keeps its own sigma
        self._final = False
        try:
            return step(self, state, i)
        finally:
            self._final = True
    diffusion.DiffusionSolver.denoise, diffusion.DiffusionSolver._step = inflated, marked_step


class LowRankDelta(torch.nn.Module):
    """A weight W (out, ...) reparametrised as W + B A with A (r, fan_in) small random and B (out, r) zero (LoRA)."""

    def __init__(self, weight: torch.Tensor, rank: int):
        super().__init__()
        fan_in = weight[0].numel()
        self.a = torch.nn.Parameter(torch.randn(rank, fan_in) / fan_in ** 0.5)
        self.b = torch.nn.Parameter(torch.zeros(weight.shape[0], rank))

    def forward(self, w):
        return w + (self.b @ self.a).view_as(w)


def ddip(spec: str):
    """lr:iters[:rank]: before each step's Tweedie estimate, ``iters`` steps of a fresh AdamW (learning rate lr)
    for the normalised data misfit ||A D_theta(x, sigma) - y||^2 / ||y||^2 of the step's own sample (DDIP, Chung
    and Ye, ECCV 2024). rank 0: all the network's weights, the optimiser kept from step to step; rank r > 0: low-rank
    adapters (rank r) on every convolution and linear layer, the paper's form. The weights carry over from step
    to step and are restored when the run ends (the next case starts from the bundled prior)."""
    from torch.nn.utils import parametrize
    parts = spec.split(":")
    lr, iters, rank = float(parts[0]), int(parts[1]), int(parts[2]) if len(parts) > 2 else 0
    run, step = diffusion.DiffusionSolver.run, diffusion.FastSampler._step

    def adapted_run(self, shape=None, x_init=None, seed=None):
        net = self.prior.network
        saved = {k: v.detach().clone() for k, v in net.state_dict().items()}
        self._y_norm2 = float(torch.linalg.vector_norm(self.dc.y)) ** 2
        if rank:
            layers = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
            for m in layers:
                parametrize.register_parametrization(m, "weight", LowRankDelta(m.weight, rank))
            self._params = [p for m in layers for p in m.parametrizations.weight[0].parameters()]
        else:
            net.requires_grad_(True)
            self._params = list(net.parameters())
            self._opt = torch.optim.Adam(self._params, lr=lr)
        try:
            return run(self, shape, x_init, seed)
        finally:
            if rank:
                for m in layers:
                    parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
            net.load_state_dict(saved)
            net.requires_grad_(False)

    def adapted_step(self, state, i):
        sigma = self.sigma_pair(i)[0]
        x = state.x.detach()
        opt = torch.optim.AdamW(self._params, lr=lr) if rank else self._opt
        with torch.enable_grad():
            for _ in range(iters):
                opt.zero_grad(set_to_none=True)
                d = torch.cat([self.denoise(x[sl].requires_grad_(True), sigma, self.neighbours(x, sl))
                               for sl in self.chunks(state.chunk_size)])
                loss = (self.dc.A(d) - self.dc.y).abs().square().sum() / self._y_norm2
                loss.backward()
                opt.step()
        state.nfe += 2 * iters  # forward and backward, counted as two evaluations each
        if i % 10 == 0:
            print(f"[ddip] step {i} sigma {sigma:.3g} misfit {float(loss):.4g}", flush=True)
        with torch.no_grad():
            return step(self, state, i)
    diffusion.DiffusionSolver.run, diffusion.FastSampler._step = adapted_run, adapted_step


def context(mode: str):
    import numpy as np

    from medrecon.priors.base import stack_indices
    from pipelines.problem import Problem

    solve, denoise_volume = Problem.solve, diffusion.DiffusionSolver.denoise_volume
    gen = torch.Generator().manual_seed(7)

    def solve_keeping_truth(self, *args, **kw):
        if self.measurement.info.get("crop"):  # the reference is the input's extent, the states the square grid's
            raise SystemExit("the oracle variants compare the sampler's states with the reference pixel by pixel: "
                             "give them square slices (crop the input)")
        diffusion.DiffusionSolver._truth = torch.as_tensor(  # model units, on the reconstruction grid
            np.asarray(self.intensity.to_model(self.reference.data)), dtype=torch.float32)
        return solve(self, *args, **kw)

    def reflected(z, n, k):
        def r(i):
            return max(0, min(n - 1, -i if i < 0 else 2 * (n - 1) - i if i > n - 1 else i))
        return [r(z - d) for d in range(k, 0, -1)] + [r(z + d) for d in range(1, k + 1)]

    def neighbours(self, x, sl):
        k = self.prior.context_slices
        if not k:
            return None
        if mode == "self":
            return x[sl].unsqueeze(1).expand(-1, 2 * k, -1, -1).clone()
        rows = [(reflected(z, x.shape[0], k) if mode == "reflect" else stack_indices(z, x.shape[0], k)[1:])
                for z in range(sl.start, sl.stop)]
        idx = torch.tensor(rows, device=x.device)
        if mode == "reflect":
            return x[idx]
        t = self._truth.to(x.device)[idx]
        return t + self._sigma * torch.randn(t.shape, generator=gen).to(x.device)

    def denoise_volume_at(self, x, sigma, chunk_size):
        self._sigma = sigma
        return denoise_volume(self, x, sigma, chunk_size)
    Problem.solve = solve_keeping_truth
    diffusion.DiffusionSolver.neighbours = neighbours
    diffusion.DiffusionSolver.denoise_volume = denoise_volume_at


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    own, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", required=True, choices=["flip", "restart", "final-dc", "mr-scale", "prior-above",
                                                             "inflate", "context", "ddip"])
    ap.add_argument("--ddip", default="1e-4:1", help="ddip: lr:iters[:rank] of the weights' adaptation per step")
    ap.add_argument("--runner", default="tune_ztv", choices=["tune_ztv", "bench_real"],
                    help="the script the remaining arguments go to (bench_real: held-out scans)")
    ap.add_argument("--context", default="oracle", choices=["oracle", "self", "reflect"],
                    help="context: what a 2.5D prior sees as its neighbours")
    ap.add_argument("--restart", default="0.3:10", help="sigma:steps[,sigma:steps] of the restarts")
    ap.add_argument("--scale", default="auto", help="mr-scale: c, or auto")
    ap.add_argument("--other-prior", default=None, help="prior-above: the prior used above tau")
    ap.add_argument("--inflate", default="1.2:0", help="inflate: c:e of the noise level told to the network")
    ap.add_argument("--tau", type=float, default=0.3, help="prior-above: the noise level where the priors switch")
    a = ap.parse_args(own)
    {"flip": flip_ensemble, "restart": lambda: restart(a.restart), "final-dc": final_dc,
     "mr-scale": lambda: mr_scale(a.scale), "prior-above": lambda: prior_above(a.other_prior, a.tau),
     "inflate": lambda: inflate(a.inflate), "context": lambda: context(a.context),
     "ddip": lambda: ddip(a.ddip)}[a.variant]()
    __import__(a.runner).main(rest)


if __name__ == "__main__":
    main()
