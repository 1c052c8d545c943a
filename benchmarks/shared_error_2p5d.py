"""Train a 2.5D patch prior whose inputs sometimes carry a streak error shared by the slice and its neighbours.

Inside the sampler every slice is measured from the same few angles, so the data step leaves streaks along the
same directions, alike in neighbouring slices; a 2.5D prior trained on clean neighbours takes what its
neighbours confirm for anatomy (README, "Tried in the eighth session"). Here, with probability ``--p``, a
training batch gets, per patch, a random field of ridges along K equally spaced directions (K of 2, 4, 8; smooth
random profiles; RMS uniform in [0, --amp] times the patch's noise level sigma, as the sampler's step errors
shrink with it), added to the slice and its neighbours alike but not to the target
(``edm_loss(input_error=...)``). Every other argument goes to ``medrecon train`` unchanged:

    python benchmarks/shared_error_2p5d.py --amp 0.5 --p 0.5 -- --arch patch --modality ct --context-slices 1 \\
        --init-from bundled:ct_patch --dataset ct_chest_contrast ... --output out/train/ct_patch25_se
"""
from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F

from medrecon.priors import train


def streak_field(b: int, p: int, generator: torch.Generator, amp: float) -> torch.Tensor:
    """(b, 1, p, p) sums of ridge functions g_k(x cos t_k + y sin t_k) over K equally spaced directions."""
    out = torch.zeros(b, 1, p, p)
    yy, xx = torch.meshgrid(torch.arange(p) - (p - 1) / 2, torch.arange(p) - (p - 1) / 2, indexing="ij")
    n = int(math.ceil(p * math.sqrt(2))) + 4
    for i in range(b):
        k = [2, 4, 8][int(torch.randint(3, (1,), generator=generator))]
        t0 = float(torch.rand(1, generator=generator)) * math.pi / k
        profiles = torch.randn(k, 1, n, generator=generator)
        width = 1 + int(torch.randint(3, (1,), generator=generator))
        profiles = F.avg_pool1d(profiles, 2 * width + 1, stride=1, padding=width, count_include_pad=False)[:, 0]
        field = torch.zeros(p, p)
        for j in range(k):
            t = xx * math.cos(t0 + j * math.pi / k) + yy * math.sin(t0 + j * math.pi / k) + (n - 1) / 2
            lo = t.floor().long().clamp(0, n - 2)
            f = t - lo
            field += profiles[j, lo] * (1 - f) + profiles[j, lo + 1] * f
        rms = field.pow(2).mean().sqrt().clamp(min=1e-8)
        out[i, 0] = field / rms * float(torch.rand(1, generator=generator)) * amp
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--amp", type=float, default=0.5, help="largest RMS of the shared error, relative to sigma")
    ap.add_argument("--p", type=float, default=0.5, help="probability that a batch carries it")
    ap.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then medrecon train's arguments")
    a = ap.parse_args(argv)
    rest = a.train_args[1:] if a.train_args[:1] == ["--"] else a.train_args
    plain = train.edm_loss

    def edm_loss(unet, x0, opts, generator=None, sigma=None, cond=None, context=None, input_error=None):
        if context is not None and input_error is None and float(torch.rand(1, generator=generator)) < a.p:
            if sigma is None:  # drawn here, as edm_loss would, so that the error can follow it
                sigma = train.training_sigma(opts, x0.shape[0], generator, x0.device)
            field = streak_field(x0.shape[0], x0.shape[-1], generator, a.amp).to(x0.device)
            input_error = field * sigma.view(-1, 1, 1, 1)
        return plain(unet, x0, opts, generator, sigma, cond, context, input_error)

    train.edm_loss = edm_loss  # the trainer's step looks it up in the module: this run only
    from pipelines.cli import main as cli

    return cli(["train", *rest])


if __name__ == "__main__":
    sys.exit(main())
