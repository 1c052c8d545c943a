"""Denoising MSE of MR priors on the real and imaginary parts, and on the magnitude, of a measured complex brain image.

Data: ``mr_kspace_vfa`` flip angle 2 (bench_mri_raw's tuning frame), combined with the file's coil maps, rotated by
its mean phase, scaled so the 99.9th percentile of the magnitude is 1; model units 2 x - 1 per part, as the
samplers see them. Every prior gets the same noise (seed 0) at each sigma.

    python benchmarks/denoise_complex.py medrecon/assets/priors/mri_patch [OTHER_PRIOR ...]
"""
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines import datasets
from pipelines.prior_cards import load_prior_for
torch.set_num_threads(1)
with h5py.File(datasets.path("mr_kspace_vfa"), "r") as f:
    k = (f["real_dat"][()] + 1j * f["imag_dat"][()])[2, :, 0].astype(np.complex64)
    maps = f["Coils"][()][:, 0].astype(np.complex64)
x = (np.fft.ifft2(k, norm="ortho") * maps.conj()).sum(0)
m = np.abs(x); x = x * np.exp(-1j * np.angle((x * m).sum())); x = x / np.percentile(m, 99.9)
parts = torch.from_numpy(np.stack([x.real, x.imag]).astype(np.float32))[:, None] * 2 - 1
mag = torch.from_numpy(np.abs(x).astype(np.float32))[None, None] * 2 - 1
for path in sys.argv[1:]:
    prior = load_prior_for(path)
    row = []
    for s in (0.05, 0.1, 0.2, 0.5):
        g = torch.Generator().manual_seed(0)
        for name, x0 in (("parts", parts), ("mag", mag)):
            n = torch.randn(x0.shape, generator=g)
            if hasattr(prior, "reseed"): prior.reseed(0)
            with torch.no_grad():
                d = prior.denoise(x0 + s * n, torch.full((len(x0),), s))
            row.append(f"{name}@{s}: {float(((d - x0) ** 2).mean()):.5f}")
    print(path, " | ".join(row), flush=True)
