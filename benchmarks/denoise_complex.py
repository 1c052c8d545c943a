"""Denoising MSE of MR priors on the real and imaginary parts, and on the magnitude, of a measured complex brain image.

Data: ``mr_kspace_vfa`` flip angle 2 (bench_mri_raw's tuning frame), combined with the file's coil maps, rotated by
its mean phase (``phase_rotation``, as for reconstruction), scaled so the 99.9th percentile of the magnitude is 1;
model units 2 x - 1 per part, as the samplers see them. Every prior gets the same noise (seed 0) at each sigma.

    python benchmarks/denoise_complex.py medrecon/assets/priors/mri_patch [OTHER_PRIOR ...]
"""
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_mri_raw import read_vfa  # noqa: E402
from pipelines.prior_cards import load_prior_for  # noqa: E402
from pipelines.problem import phase_rotation  # noqa: E402

SIGMAS = (0.05, 0.1, 0.2, 0.5)


def test_images(frame: int = 2) -> dict:
    """{"parts": (2, 1, H, W) real and imaginary part, "mag": (1, 1, H, W)} in model units."""
    x = torch.from_numpy(read_vfa([frame])[1][0])
    x = x * phase_rotation(x)
    x = x / torch.quantile(x.abs().flatten(), 0.999)
    return {"parts": torch.stack([x.real, x.imag])[:, None] * 2 - 1, "mag": x.abs()[None, None] * 2 - 1}


def main():
    torch.set_num_threads(1)
    images = test_images()
    for path in sys.argv[1:]:
        prior = load_prior_for(path)
        row = []
        for s in SIGMAS:
            g = torch.Generator().manual_seed(0)
            for name, x0 in images.items():
                noise = torch.randn(x0.shape, generator=g)
                if hasattr(prior, "reseed"):
                    prior.reseed(0)
                with torch.no_grad():
                    d = prior.denoise(x0 + s * noise, torch.full((len(x0),), s))
                row.append(f"{name}@{s}: {float(((d - x0) ** 2).mean()):.5f}")
        print(path, " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
