"""Diffusion samplers: overhead beyond the network, and peak memory against slices and chunk size (CPU).

Overhead (as defined in issue 5): wall time of a run minus (network evaluations x measured time of one
network call on a chunk), as a fraction of the wall time, for DiffusionMBIR and FastSampler on 32 slices of
128^2. The network is a diffusers UNet2DModel (1 -> 1 channel, blocks 32-64-64-128, no attention; random
weights, wrapped as a Denoiser); the operator is the slice-wise parallel-beam CT projector (ASTRA system
matrix as torch CSR, ``operators.ct.SliceProjector``). The time of one network call on a chunk is the
median of the calls made during the run itself (a separate measurement beforehand is printed too: on a
loaded machine it differs by tens of percent from call to call); "instrumented" is wall time minus the
summed time of all network calls. Overhead is a per-step ratio, so a few steps suffice (default 10).

Peak memory: each configuration runs in a fresh subprocess with glibc's mmap threshold lowered (freed
blocks go back to the system, so the resident set follows the live tensors); the figure is the peak
resident set during the run (VmHWM, reset just before it through /proc/self/clear_refs) minus the resident
set just before it (model, operator and measurement built).

    python benchmarks/bench_samplers.py                  # 10 steps, 8 views, 1 thread
    python benchmarks/bench_samplers.py --views 90 --steps 10 --json out.json
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch

from medrecon.priors.base import Denoiser, VESchedule
from medrecon.solvers.diffusion import DiffusionMBIR, FastSampler

from pipelines.outputs import reset_rss_peak, rss_kib
from pipelines.registry import ADMM_DEFAULTS

LAM, RHO = ADMM_DEFAULTS["ct"]["lam"], ADMM_DEFAULTS["ct"]["rho"]  # the DiffusionMBIR paper's CT z-TV and ADMM penalty


class UNetDenoiser(Denoiser):
    """A diffusers UNet2DModel as an EDM-style denoiser (random weights: the cost, not the quality, matters)."""

    name = "bench-unet"

    def __init__(self, size: int):
        from diffusers import UNet2DModel

        torch.manual_seed(0)
        self.network = UNet2DModel(sample_size=size, in_channels=1, out_channels=1, layers_per_block=1,
                                   block_out_channels=(32, 64, 64, 128), norm_num_groups=8,
                                   down_block_types=("DownBlock2D",) * 4, up_block_types=("UpBlock2D",) * 4).eval()
        self.schedule = VESchedule(0.01, 378.0, 2000)
        self.card = {"name": self.name}
        self.calls: list[float] = []                         # seconds per network call (instrumentation)

    def _denoise(self, x, sigma):
        t0 = time.perf_counter()
        s = sigma.view(-1, 1, 1, 1)
        c_in = 1.0 / torch.sqrt(1.0 + s ** 2)
        f = self.network(x * c_in, torch.log(sigma) / 4.0).sample
        out = x * c_in ** 2 + 0.1 * s * c_in * f
        self.calls.append(time.perf_counter() - t0)
        return out


def _operator(size: int, views: int):
    from operators.ct import ParallelBeamGeometry, SliceProjector

    return SliceProjector(ParallelBeamGeometry.sparse_view(size, views))


def _problem(size: int, slices: int, views: int):
    A = _operator(size, views)
    g = torch.Generator().manual_seed(0)
    zz, yy, xx = torch.meshgrid(torch.linspace(-1, 1, slices), torch.linspace(-1, 1, size),
                                torch.linspace(-1, 1, size), indexing="ij")
    vol = ((xx ** 2 + yy ** 2 + 0.3 * zz ** 2) < 0.6).float() * 0.8 + 0.1
    y = A.forward(vol)
    return A, y + 0.01 * y.std() * torch.randn(y.shape, generator=g)


def _time_chunk_call(prior: UNetDenoiser, chunk: int, size: int, repeats: int = 5) -> float:
    x = torch.randn(chunk, 1, size, size)
    with torch.no_grad():
        prior.denoise(x, 1.0)                                # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            prior.denoise(x, 1.0)
            times.append(time.perf_counter() - t0)
    return min(times)


def overhead(args) -> list[dict]:
    prior = UNetDenoiser(args.size)
    A, y = _problem(args.size, args.slices, args.views)
    t_chunk = _time_chunk_call(prior, args.chunk, args.size)
    calls_per_eval = math.ceil(args.slices / args.chunk)
    rows = []
    for cls in (DiffusionMBIR, FastSampler):
        solver = cls(prior, A, y, n_steps=args.steps, chunk_size=args.chunk, seed=0, lam=LAM, rho=RHO)
        prior.calls = []
        t0 = time.perf_counter()
        solver.run()
        wall = time.perf_counter() - t0
        n_calls = solver.nfe * calls_per_eval
        assert n_calls == len(prior.calls)
        t_call = statistics.median(prior.calls)
        rows.append(dict(sampler=cls.__name__, steps=args.steps, nfe_per_slice=solver.nfe, n_cg=solver.dc.n_cg,
                         wall_s=round(wall, 3), chunk_call_s=round(t_call, 4), network_s=round(n_calls * t_call, 3),
                         overhead=round((wall - n_calls * t_call) / wall, 4),
                         overhead_instrumented=round((wall - sum(prior.calls)) / wall, 4),
                         overhead_vs_separate_timing=round((wall - n_calls * t_chunk) / wall, 4),
                         separate_chunk_call_s=round(t_chunk, 4)))
    return rows


def _peak_child(args):
    """One memory configuration (run in a fresh process): prints the peak RSS growth in MiB as JSON."""
    prior = UNetDenoiser(args.size)
    A, y = _problem(args.size, args.slices, args.views)
    cls = {"mbir": DiffusionMBIR, "fast": FastSampler}[args.child]
    solver = cls(prior, A, y, n_steps=args.steps, chunk_size=args.chunk, lam=LAM, rho=RHO)
    gc.collect()
    assert reset_rss_peak(), "needs Linux's /proc/self/clear_refs"  # the peak resident set (VmHWM) starts here
    before = rss_kib("VmRSS")
    solver.run()
    growth = (rss_kib("VmHWM") - before) / 1024
    print(json.dumps(dict(sampler=cls.__name__, slices=args.slices, chunk=args.chunk,
                          peak_growth_mib=round(growth, 1),
                          one_volume_mib=round(args.slices * args.size ** 2 * 4 / 2 ** 20, 2))))


def memory(args) -> list[dict]:
    rows = []
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    for sampler in ("mbir", "fast"):
        for slices in args.mem_slices:
            for chunk in args.mem_chunks:
                cmd = [sys.executable, __file__, "--child", sampler, "--slices", str(slices), "--chunk", str(chunk),
                       "--size", str(args.size), "--views", str(args.views), "--steps", "2",
                       "--threads", str(args.threads)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--slices", type=int, default=32)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--mem-slices", type=lambda v: [int(t) for t in v.split(",")], default=[32, 64])
    p.add_argument("--mem-chunks", type=lambda v: [int(t) for t in v.split(",")], default=[4, 8])
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: stable ratios on a shared machine)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--child", choices=("mbir", "fast"), default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        return _peak_child(args)
    res = dict(size=args.size, slices=args.slices, views=args.views, threads=args.threads, torch=torch.__version__,
               overhead=overhead(args), memory=memory(args))
    for r in res["overhead"]:
        print(f"{r['sampler']:>14}: {r['steps']} steps, {r['nfe_per_slice']} NFE/slice, wall {r['wall_s']:.2f} s, "
              f"network {r['network_s']:.2f} s -> overhead {100 * r['overhead']:.1f} % "
              f"(instrumented {100 * r['overhead_instrumented']:.1f} %; with the separate per-call timing "
              f"{100 * r['overhead_vs_separate_timing']:.1f} %)")
    for r in res["memory"]:
        print(f"memory {r['sampler']:>14}: {r['slices']} slices, chunk {r['chunk']}: peak RSS growth "
              f"{r['peak_growth_mib']} MiB "
              f"(one volume = {r['one_volume_mib']} MiB)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
