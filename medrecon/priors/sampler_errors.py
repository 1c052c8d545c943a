"""Training on the sampler's own inputs (``medrecon train --sampler-errors``; sixteenth and seventeenth sessions).

A denoiser trained on x + sigma n meets x + e + sigma n inside the warm-started sampler, e the error the warm
start and each data step leave (streaks along the views, blocks of ADMM-TV, missing fine detail): exposure
bias, in the diffusion literature's words (Ning et al., ICML 2023), here with the sampler's real error in
place of a Gaussian one. ``benchmarks/sampler_errors.py`` runs a config's fast sampler on slabs of training
scans and saves, per step, the reference x, e_i = x0'_i - x (model units, float16) and the noise level sigma_i
the next denoiser call adds (one ``.npz`` per run). Re-recording with the prior trained here and training again
is DAgger (Ross et al., AISTATS 2011): the errors follow the sampler that will use the prior.

With probability p a training step's batch is replaced by patches of recorded steps: input x + e_i + sigma_i n
(fresh n), target x, the patch's positions in its slice, a random left-right flip, weighted as EDM weights
noise of RMS sqrt(sigma_i^2 + mean e_i^2). The other steps stay clean + Gaussian, so the network remains a
denoiser.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .network import edm_denoise
from .patch import slice_positions


class RecordedSteps:
    """The (reference, error, sigma) of every recorded run in a folder of ``*.npz`` files."""

    def __init__(self, folder: str | Path, sigma_min: float = 0.0):
        self.folder = Path(folder)
        files = sorted(self.folder.glob("*.npz"))
        if not files:
            raise InputError(f"{self.folder}: no recorded sampler steps (*.npz); record them first with "
                             "benchmarks/sampler_errors.py")
        self.files, self.runs = [f.name for f in files], []
        for f in files:
            d = np.load(f)
            keep = d["sigmas"] >= sigma_min
            if not keep.any():
                raise InputError(f"{f}: no recorded step at sigma >= {sigma_min:g}; lower --sampler-error-sigma-min")
            self.runs.append((torch.from_numpy(d["reference"]), torch.from_numpy(d["errors"][keep]),
                              torch.from_numpy(d["sigmas"][keep])))
        self.min_side = min(min(ref.shape[-2:]) for ref, _, _ in self.runs)
        sizes = torch.tensor([float(e.shape[0] * e.shape[1]) for _, e, _ in self.runs])
        self.run_probs = sizes / sizes.sum()

    def batch(self, b: int, p: int, gen: torch.Generator):
        """(reference (b, 1, p, p), error (b, 1, p, p), sigma (b,), positions (b, 2, p, p))."""
        xs, es, ss, ps = [], [], [], []
        for r in torch.multinomial(self.run_probs, b, replacement=True, generator=gen).tolist():
            ref, err, sig = self.runs[r]
            s_n, z_n, h, w = err.shape
            s = int(torch.randint(s_n, (1,), generator=gen))
            z = int(torch.randint(z_n, (1,), generator=gen))
            i = int(torch.randint(max(1, h - p + 1), (1,), generator=gen))
            j = int(torch.randint(max(1, w - p + 1), (1,), generator=gen))
            x, e = ref[z, i:i + p, j:j + p], err[s, z, i:i + p, j:j + p].float()
            if float(torch.rand(1, generator=gen)) < 0.5:  # the mirrored slice: its patch at the mirrored place
                x, e, j = x.flip(-1), e.flip(-1), w - p - j
            xs.append(x)
            es.append(e)
            ss.append(sig[s])
            ps.append(slice_positions(torch.arange(i, i + p), torch.arange(j, j + p), h, w))
        return torch.stack(xs)[:, None], torch.stack(es)[:, None], torch.stack(ss), torch.stack(ps)

    def loss(self, unet, b: int, p: int, sigma_data: float, gen: torch.Generator, device) -> torch.Tensor:
        """EDM loss per sample on b recorded patches of size p (noise drawn from ``gen``)."""
        x, e, sig, pos = (t.to(device) for t in self.batch(b, p, gen))
        noisy = x + e + sig.view(-1, 1, 1, 1) * torch.randn(x.shape, generator=gen).to(device)
        d = edm_denoise(unet, noisy, sig, sigma_data, cond=pos)
        s_eff2 = sig ** 2 + e.pow(2).flatten(1).mean(1)
        w = (s_eff2 + sigma_data ** 2) / (s_eff2 * sigma_data ** 2)
        return w * ((d.float() - x) ** 2).flatten(1).mean(1)

    def describe(self, prob: float, sigma_min: float) -> dict:
        """What the model card records: the folder, its runs, the probability and the noise floor."""
        return {"folder": str(self.folder), "runs": self.files, "probability": prob, "sigma_min": sigma_min,
                "recorded_by": "benchmarks/sampler_errors.py"}
