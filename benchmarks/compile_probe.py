"""Eager against torch.compile for a bundled prior's denoiser on this CPU (sixtieth session; RESULTS.md): a batch of
256x256 slices per call, one thread, seconds per call and the compile time. The patch priors shift their tile grid at
random per call, so the two outputs differ by that, not by the compiler.

    python benchmarks/compile_probe.py --prior ct_patch_wide --precision bf16
"""
import argparse
import time

import torch

from medrecon.priors.loader import load_prior


def seconds_per_call(prior, x, sigma, calls: int) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(calls):
            prior.denoise(x, sigma)
    return (time.perf_counter() - start) / calls


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior", default="ct_patch_wide", help="a bundled prior's name")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--calls", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    prior = load_prior(f"bundled:{args.prior}")
    prior.precision = args.precision
    x, sigma = torch.randn(args.slices, 1, 256, 256) * 0.5, torch.full((args.slices,), 0.5)
    seconds_per_call(prior, x, sigma, 1)  # warm-up
    eager = seconds_per_call(prior, x, sigma, args.calls)
    start = time.perf_counter()
    prior.network = torch.compile(prior.network, dynamic=False)
    seconds_per_call(prior, x, sigma, 1)
    compile_s = time.perf_counter() - start
    compiled = seconds_per_call(prior, x, sigma, args.calls)
    print(f"{args.prior} {args.precision}: eager {eager:.3f} s/call, compiled {compiled:.3f} s/call "
          f"(x{eager / compiled:.2f}), compile and first call {compile_s:.1f} s")


if __name__ == "__main__":
    main()
