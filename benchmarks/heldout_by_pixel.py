"""Held-out denoising loss of patch priors by pixel size: does a prior denoise held-out scans as well at 0.65 mm
as at 2 mm? (``medrecon.priors.train.heldout_loss`` on evenly spaced slices resampled to each pixel size.)

    python benchmarks/heldout_by_pixel.py bundled:ct_patch out/train/ct_patch_fine
    python benchmarks/heldout_by_pixel.py bundled:ct_patch --scans ct_lung2 --pixels 0.65 2.0
    python benchmarks/heldout_by_pixel.py bundled:mri_patch out/train/mri_patch_fine --scans mr_brain2 --pixels 0.78 2

The scans default to the held-out scans of the priors' modality (CT: three of them).
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
    ap.add_argument("--scans", nargs="+", default=None, help="named scans (default: see above)")
    ap.add_argument("--pixels", nargs="+", type=float, default=[0.65, 1.0, 2.0], help="pixel sizes in mm")
    ap.add_argument("--per-volume", type=int, default=2, help="slices per scan")
    ap.add_argument("--mri-percentile", type=float, default=99.5,
                    help="MR: the percentile of |v| that maps to 1, as the priors were trained "
                         "(medrecon train's default)")
    a = ap.parse_args()
    priors = {p: load_prior_for(p) for p in a.priors}
    first = next(iter(priors.values())).card  # the scans in model units, as the priors read them
    intensity, modality = first["intensity"], first["modality"]
    if any((p.card["intensity"], p.card["modality"]) != (intensity, modality) for p in priors.values()):
        raise SystemExit("the priors differ in modality or intensity map: compare priors that share both")
    scans = a.scans or (["ct_lung2", "ct_chest_drr", "ct_abdomen_dicom"] if modality == "ct" else
                        datasets.names("test", modality))
    print("| scan | pixel (mm) | " + " | ".join(priors) + " |")
    print("|---|---|" + "---|" * len(priors))
    for name in scans:
        data = load_patch_data([datasets.path(name)], intensity, modality=modality,
                               magnitude_percentile=a.mri_percentile if modality == "mri" else None)
        for mm in a.pixels:
            x = heldout_slices(data, mm, per_volume=a.per_volume)
            print(f"| {name} | {mm:g} | " + " | ".join(f"{heldout_loss(pr, x):.5f}" for pr in priors.values()) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
