"""How much a fast-sampler result depends on its chunk size (slices per network call), in fp32 and bf16.

    python benchmarks/chunk_precision.py

A synthetic 4 x 48² CT phantom (model units), 8 parallel-beam views, the bundled CT patch prior, 12 steps, two-scale
and the final denoising as the CT configs run them; chunk 1 against the automatic chunk (8 on a CPU), the same
seed. Prints the largest and the mean difference in HU (model units x 1000, the prior's 2000 HU window over [-1, 1]).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medrecon.priors import load_prior  # noqa: E402
from medrecon.solvers.diffusion import FastSampler  # noqa: E402
from operators.ct.physics import make_geometry, pixel_unit_projector  # noqa: E402


def phantom(z: int = 4, n: int = 48) -> torch.Tensor:
    """Ellipses in model units ([-1, 1] for -1000..1000 HU), a little different on every slice."""
    yy, xx = np.mgrid[-1:1:n * 1j, -1:1:n * 1j]
    vol = np.full((z, n, n), -1.0, np.float32)
    for k in range(z):
        vol[k][(xx / 0.8) ** 2 + (yy / (0.7 + 0.02 * k)) ** 2 < 1] = 0.04
        vol[k][(xx - 0.2) ** 2 + (yy + 0.1) ** 2 < 0.05] = 0.5
        vol[k][(xx + 0.3) ** 2 + (yy - 0.2) ** 2 < 0.02 + 0.01 * k] = -0.5
    return torch.from_numpy(vol)


def main() -> None:
    torch.set_num_threads(1)
    prior = load_prior("bundled:ct_patch")
    A = pixel_unit_projector(make_geometry("parallel", 48, 1.0, n_views=8))
    y = A.forward(phantom())
    for precision in ("fp32", "bf16"):
        prior.precision = precision
        out = [FastSampler(prior, A, y, n_steps=12, lam=0.5, rho=10.0, chunk_size=c, coarse_above=0.1,
                           final_sigma=0.02, seed=2).run() for c in (1, None)]
        d = (out[0] - out[1]).abs() * 1000
        print(f"{precision}: chunk 1 against the automatic chunk, 12 steps: max {float(d.max()):.2f} HU, "
              f"mean {float(d.mean()):.3f} HU")


if __name__ == "__main__":
    main()
