"""A record script (thirteenth session, not adopted): `medrecon train` with EDM's training noise levels drawn as
ln sigma ~ N(--p-mean, --p-std^2) instead of the trainer's N(-1.2, 1.2^2), e.g. to train where a warm-started
sampler asks the prior (sigma <= 1.2). It patches ``train.training_sigma`` for this process only and hands every
other argument to `medrecon train`:

    python benchmarks/train_sigma_range.py --p-mean -1.8 --p-std 1.0 -- --arch patch --modality ct \\
        --dataset ct_chest_contrast ... --init-from bundled:ct_patch --lr 1e-4 --lr-final 1e-5 --steps 3000
"""
from __future__ import annotations

import argparse
import sys

import torch

from medrecon.priors import train


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--p-mean", type=float, required=True)
    ap.add_argument("--p-std", type=float, required=True)
    ap.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then medrecon train's arguments")
    a = ap.parse_args(argv)
    rest = a.train_args[1:] if a.train_args[:1] == ["--"] else a.train_args
    train.training_sigma = lambda opts, b, generator=None, device=None: torch.exp(  # this run only
        a.p_mean + a.p_std * torch.randn(b, generator=generator)).to(device)
    from pipelines.cli import main as cli

    return cli(["train", *rest])


if __name__ == "__main__":
    sys.exit(main())
