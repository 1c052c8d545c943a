"""Fine-tune a 2D patch prior on the fast sampler's own inputs (sixteenth session; a record script).

A denoiser trained on x + sigma n meets x + e + sigma n inside the warm-started sampler, e the error the
data step and the warm start leave (``benchmarks/sampler_errors.py`` records it on training scans). Exposure
bias, in the diffusion literature's words (Ning et al., "Input Perturbation Reduces Exposure Bias in Diffusion
Models", ICML 2023); here the perturbation is the sampler's real error, not Gaussian. With probability ``--p``
a training batch is replaced by patches of recorded steps: input reference + e_i + sigma_i n (fresh n), target
the reference, the patch's positions in its slice, a random left-right flip, weighted as EDM weights noise of
RMS sqrt(sigma_i^2 + mean e^2). The other batches stay the usual clean + Gaussian ones, so the network remains a
denoiser. Every other argument goes to ``medrecon train`` unchanged:

    python benchmarks/train_on_sampler_errors.py --errors out/s16/errors --p 0.5 -- --arch patch --modality ct \\
        --init-from bundled:ct_patch --dataset ct_chest_contrast ... --output out/train/ct_patch_se2d
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from medrecon.priors import train
from medrecon.priors.network import edm_denoise
from medrecon.priors.patch import slice_positions


class RecordedSteps:
    """Patches of (reference, error, sigma) from the .npz files that sampler_errors.py writes."""

    def __init__(self, folder: Path, sigma_min: float = 0.0):
        self.runs = []
        for f in sorted(Path(folder).glob("*.npz")):
            d = np.load(f)
            keep = d["sigmas"] >= sigma_min
            self.runs.append((torch.from_numpy(d["reference"]), torch.from_numpy(d["errors"][keep]),
                              torch.from_numpy(d["sigmas"][keep])))
        if not self.runs:
            raise SystemExit(f"{folder}: no recorded steps (*.npz); run benchmarks/sampler_errors.py first")
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
            if float(torch.rand(1, generator=gen)) < 0.5:
                x, e = x.flip(-1), e.flip(-1)
            xs.append(x)
            es.append(e)
            ss.append(sig[s])
            r_, c_ = torch.arange(i, i + p), torch.arange(j, j + p)
            ps.append(slice_positions(r_, c_, h, w))
        return torch.stack(xs)[:, None], torch.stack(es)[:, None], torch.stack(ss), torch.stack(ps)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--errors", type=Path, required=True, help="folder of sampler_errors.py's .npz files")
    ap.add_argument("--p", type=float, default=0.5, help="probability that a batch is one of recorded steps")
    ap.add_argument("--sigma-min", type=float, default=0.0, help="only recorded steps at this noise level or above")
    ap.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then medrecon train's arguments")
    a = ap.parse_args(argv)
    rest = a.train_args[1:] if a.train_args[:1] == ["--"] else a.train_args
    steps = RecordedSteps(a.errors, a.sigma_min)
    plain = train.edm_loss

    def edm_loss(unet, x0, opts, generator=None, sigma=None, cond=None, context=None, input_error=None):
        if cond is None or context is not None or float(torch.rand(1, generator=generator)) >= a.p:
            return plain(unet, x0, opts, generator, sigma, cond, context, input_error)
        x, e, sig, pos = (t.to(x0.device) for t in steps.batch(x0.shape[0], x0.shape[-1], generator))
        noisy = x + e + sig.view(-1, 1, 1, 1) * torch.randn(x.shape, generator=generator).to(x0.device)
        d = edm_denoise(unet, noisy, sig, opts.sigma_data, cond=pos)
        s_eff2 = sig ** 2 + e.pow(2).flatten(1).mean(1)
        w = (s_eff2 + opts.sigma_data ** 2) / (s_eff2 * opts.sigma_data ** 2)
        return w * ((d.float() - x) ** 2).flatten(1).mean(1)

    train.edm_loss = edm_loss  # the trainer's step looks it up in the module: this run only
    from pipelines.cli import main as cli

    return cli(["train", *rest])


if __name__ == "__main__":
    sys.exit(main())
