"""Quick sample grids of a prior during training (Karras/EDM deterministic sampler, PNG grids)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .base import Denoiser
from .training_data import MODEL_RANGE


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    r = torch.linspace(0, 1, n, dtype=torch.float64)
    s = (sigma_max ** (1 / rho) + r * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)])


def quick_samples(prior: Denoiser, n: int = 16, steps: int = 18, seed: int = 0) -> torch.Tensor:
    """Unconditional samples with EDM's deterministic Heun sampler through the Denoiser contract (any prior).
    A prior of any size (patch prior) samples slices twice its tile size (64 without one)."""
    s = prior.image_size or 2 * int(getattr(prior, "patch_size", 32))
    sig = karras_sigmas(steps, max(prior.schedule.sigma_min, 2e-3), prior.schedule.sigma_max)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, s, s, generator=g, dtype=torch.float64) * sig[0]
    with torch.no_grad():
        for i in range(steps):
            s0, s1 = sig[i], sig[i + 1]
            d0 = (x - prior.denoise(x.float(), s0.float().expand(n)).double()) / s0
            x1 = x + (s1 - s0) * d0
            if s1 > 0:
                d1 = (x1 - prior.denoise(x1.float(), s1.float().expand(n)).double()) / s1
                x1 = x + (s1 - s0) * (d0 + d1) / 2
            x = x1
    return x.float()


def save_grid(images: torch.Tensor, path: Path, value_range=MODEL_RANGE) -> Path:
    """Save (N, 1, S, S) images as one PNG grid, value_range mapped to 0..255."""
    from PIL import Image

    n, _, s, _ = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    lo, hi = value_range
    im = ((images[:, 0].clamp(lo, hi) - lo) / (hi - lo) * 255).round().to(torch.uint8).numpy()
    grid = np.zeros((rows * (s + 2), cols * (s + 2)), np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * (s + 2) + 1:r * (s + 2) + 1 + s, c * (s + 2) + 1:c * (s + 2) + 1 + s] = im[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path
