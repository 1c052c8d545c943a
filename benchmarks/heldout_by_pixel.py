"""Held-out denoising loss of CT patch priors by pixel size: does a prior denoise held-out scans as well at 0.65 mm
as at 2 mm? (``medrecon.priors.train.heldout_loss`` on evenly spaced slices resampled to each pixel size.)

    python benchmarks/heldout_by_pixel.py bundled:ct_patch out/train/ct_patch_fine
    python benchmarks/heldout_by_pixel.py bundled:ct_patch --scans ct_lung2 --pixels 0.65 2.0
"""
from __future__ import annotations

import argparse

from medrecon.priors.patch import heldout_slices
from medrecon.priors.train import heldout_loss
from medrecon.priors.training_data import load_patch_data
from pipelines import datasets
from pipelines.prior_cards import load_prior_for


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("priors", nargs="+", help="prior folders or bundled:NAME")
    ap.add_argument("--scans", nargs="+", default=["ct_lung2", "ct_chest_drr", "ct_abdomen_dicom"])
    ap.add_argument("--pixels", nargs="+", type=float, default=[0.65, 1.0, 2.0], help="pixel sizes in mm")
    ap.add_argument("--per-volume", type=int, default=2, help="slices per scan")
    a = ap.parse_args()
    priors = {p: load_prior_for(p) for p in a.priors}
    intensity = next(iter(priors.values())).card["intensity"]  # the scans in model units, as the priors read them
    if any(p.card["intensity"] != intensity for p in priors.values()):
        raise SystemExit("the priors map HU to model units differently: compare priors that share an intensity map")
    print("| scan | pixel (mm) | " + " | ".join(priors) + " |")
    print("|---|---|" + "---|" * len(priors))
    for name in a.scans:
        data = load_patch_data([datasets.path(name)], intensity, modality="ct")
        for mm in a.pixels:
            x = heldout_slices(data, mm, per_volume=a.per_volume)
            print(f"| {name} | {mm:g} | " + " | ".join(f"{heldout_loss(pr, x):.5f}" for pr in priors.values()) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
