"""Sampler-aware fine-tuning of a patch prior (an experiment on *training* scans; tenth session; not adopted:
README, "Tenth session").

Inside the fast sampler the denoiser does not see x0 + sigma n: it sees the previous step's data-consistent
estimate plus fresh noise, x = x0_dc + sigma n, and x0_dc carries the few views' streaks and the prior's own
errors (the same in neighbouring steps). A denoiser trained only on clean-plus-noise treats those as anatomy.
This script (1) harvests, on training scans, what the denoiser is actually given during runs of the default
sampler (every call: the input x, its sigma, and the reference slice) and (2) fine-tunes the prior on a mix of
its usual EDM patches and tiles of the harvested inputs with the reference as target (the posterior mean under
the sampler's own input distribution), then writes a prior folder that ``--prior`` / ``--ct-prior`` accept.

    python benchmarks/sampler_aware.py harvest --scans ct_chest_contrast ct_lung1 ct_abdomen --cases ct8:0.8:0.3 \
        ct4:1.2:0.3 --out out/s10_saft/harvest.pt
    python benchmarks/sampler_aware.py finetune --harvest out/s10_saft/harvest.pt --steps 2500 --out out/s10_saft/prior

Harvested slabs are taken away from the scan's centre (``--where``), so the central slabs that tune_ztv scores
are not among them.
"""
from __future__ import annotations

import argparse
import copy
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from medrecon.io import read_volume  # noqa: E402
from medrecon.solvers import diffusion  # noqa: E402
from pipelines import datasets  # noqa: E402

from bench_real import CASES, fast  # noqa: E402


def harvest(a):
    from pipelines.compare import compare_methods

    captured = []
    original = diffusion.DiffusionSolver.denoise_volume

    def recording(self, x, sigma, chunk_size):
        captured.append((float(sigma), x.detach().clone().half()))
        return original(self, x, sigma, chunk_size)

    diffusion.DiffusionSolver.denoise_volume = recording
    runs = []
    for scan in a.scans:
        full = read_volume(datasets.path(scan))
        for where in a.where:
            start = min(max(0, int(where * full.shape[0]) - a.slices // 2), full.shape[0] - a.slices)
            vol = full.slab(start, start + a.slices)
            for spec in a.cases:
                case, sigma, lam = spec.split(":")
                config, _ = CASES[case]
                captured.clear()
                t0 = time.perf_counter()
                ref, res = compare_methods(config, vol, {"fast": fast(a.steps, float(lam), float(sigma))},
                                           [f"prior.path={a.prior}", f"ct.pixel_size={a.pixel}"])
                truth = torch.from_numpy(ref.data).float().div(1000.0).clamp(-1, 1)  # HU -> model units
                assert tuple(truth.shape) == tuple(captured[0][1].shape), (truth.shape, captured[0][1].shape)
                runs.append({"scan": scan, "start": start, "case": case, "truth": truth.half(),
                             "inputs": list(captured)})
                print(f"{scan} slices {start}-{start + a.slices} {case}: {len(captured)} calls, "
                      f"axial PSNR {res[0].metrics['psnr']['axial']:.2f} dB, {time.perf_counter() - t0:.0f} s",
                      flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(runs, a.out)


def tiles(x: torch.Tensor, t: torch.Tensor, p: int, offset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The prior's own tiling (``patch.patchwise``, the target riding along as a second channel) of a slice x and
    its target t (H, W): tiles of both and their position channels."""
    from medrecon.priors.patch import patchwise

    seen = []

    def record(tiles, pos, sigma):
        seen.append((tiles, pos))
        return tiles[:, :1]

    patchwise(record, torch.stack([x, t])[None], torch.zeros(1), p, offset)
    cut, pos = seen[0]
    return cut[:, :1], cut[:, 1:], pos


def finetune(a):
    from medrecon.priors.loader import load_prior
    from medrecon.priors.network import edm_denoise
    from medrecon.priors.patch import PatchSampler
    from medrecon.priors.train import TrainOptions, edm_loss
    from medrecon.priors.training_data import load_patch_data
    from pipelines.commands_train import _dataset_volumes, training_intensity
    from pipelines.config import resolve_prior_path
    from pipelines.modality import Modality
    from safetensors.torch import save_file

    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    src = resolve_prior_path(a.prior)
    prior = load_prior(src)
    model = copy.deepcopy(prior.network).train().requires_grad_(True)
    ema = copy.deepcopy(prior.network)
    imap, pct = training_intensity(Modality.ct, (-1000.0, 1000.0), None)
    paths, prov = _dataset_volumes(datasets.names("train", "ct"), Modality.ct)
    data = load_patch_data(paths, imap, magnitude_percentile=pct, modality="ct", sources=prov)
    patches = PatchSampler(data, (16, 32, 64), spacing_range=(0.8, 4.0))
    runs = torch.load(a.harvest)
    pool = [(r, k) for r in runs for k in range(len(r["inputs"]))]
    print(f"{len(runs)} harvested runs, {len(pool)} denoiser calls; {data.n_slices} training slices", flush=True)
    opts = TrainOptions(arch="patch")
    optim = torch.optim.Adam(model.parameters(), lr=a.lr)
    t0, recent = time.perf_counter(), []
    for step in range(a.steps):
        x0, pos = patches.sample(gen)
        loss_std = edm_loss(model, x0, opts, gen, cond=pos).mean()
        xs, ts, ps, sg = [], [], [], []
        while sum(len(v) for v in xs) < a.tiles:
            r, k = pool[int(torch.randint(len(pool), (1,), generator=gen))]
            sigma, x = r["inputs"][k]
            z = int(torch.randint(x.shape[0], (1,), generator=gen))
            off = torch.randint(64, (2,), generator=gen).tolist()
            xt, tt, pt = tiles(x[z].float(), r["truth"][z].float(), 64, off)
            keep = torch.randperm(len(xt), generator=gen)[:2]
            xs.append(xt[keep]), ts.append(tt[keep]), ps.append(pt[keep]), sg.append(torch.full((len(keep),), sigma))
        xh, th, ph, sh = (torch.cat(v)[: a.tiles] for v in (xs, ts, ps, sg))
        d = edm_denoise(model, xh, sh, 0.5, cond=ph)
        sc = sh.clamp_min(a.weight_floor)  # EDM's weight, capped: the harvested error does not vanish with sigma
        w = (sc ** 2 + 0.25) / (sc * 0.5) ** 2
        loss_h = (w * ((d - th) ** 2).flatten(1).mean(1)).mean()
        loss = (1 - a.mix) * loss_std + a.mix * loss_h
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), model.parameters()):
                pe.lerp_(p, 1 - decay)
        recent.append((loss_std.item(), loss_h.item()))
        if (step + 1) % 50 == 0:
            s, h = (sum(v) / len(recent) for v in zip(*recent))
            print(f"step {step + 1}: loss standard {s:.4f}, harvested {h:.4f}, {time.perf_counter() - t0:.0f} s",
                  flush=True)
            recent = []
        if (step + 1) % 500 == 0 or step + 1 == a.steps:
            if not a.out.exists():
                shutil.copytree(src, a.out)
            save_file({k: v.contiguous() for k, v in ema.state_dict().items()},
                      str(a.out / "diffusion_pytorch_model.safetensors"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("harvest")
    h.add_argument("--scans", nargs="+", required=True)
    h.add_argument("--cases", nargs="+", required=True, help="case:start_sigma:lam, e.g. ct8:0.8:0.3")
    h.add_argument("--where", nargs="+", type=float, default=[0.3], help="slab centres as fractions of the scan")
    h.add_argument("--slices", type=int, default=6)
    h.add_argument("--steps", type=int, default=20)
    h.add_argument("--pixel", type=float, default=2.0)
    h.add_argument("--prior", default="bundled:ct_patch")
    h.add_argument("--out", type=Path, required=True)
    f = sub.add_parser("finetune")
    f.add_argument("--harvest", type=Path, required=True)
    f.add_argument("--prior", default="bundled:ct_patch")
    f.add_argument("--steps", type=int, default=2500)
    f.add_argument("--tiles", type=int, default=8, help="harvested 64-pixel tiles per step")
    f.add_argument("--mix", type=float, default=0.5, help="weight of the harvested loss")
    f.add_argument("--weight-floor", type=float, default=0.1, help="sigma below which the harvested tiles' EDM "
                   "loss weight stops growing")
    f.add_argument("--lr", type=float, default=1e-4)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    (harvest if a.cmd == "harvest" else finetune)(a)


if __name__ == "__main__":
    main()
