"""Can held-out k-space lines tell when the diffusion default loses to 3D ADMM-TV on measured k-space? For each
dataset and acceleration, 12.5 % of the sampled outer lines are held out (two draws); ADMM-TV (the bench's row) and
the fast sampler with the config's defaults are fitted without them and scored on them (relative error). A usable
criterion ranks the two as their PSNR on all the data does (``bench_mri_raw.py``).

    python benchmarks/cv_probe_mri_raw.py [--prior bundled:mri_patch] [--maps-dir DIR]   # DIR/{vfa,t2}_maps.npy
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_mri_raw as raw  # noqa: E402
from operators.mri import espirit_maps  # noqa: E402
from pipelines.crossval import fit_problem, heldout_error, holdout_mask  # noqa: E402
from pipelines.prior_cards import load_prior_for  # noqa: E402
from pipelines.problem import Problem  # noqa: E402
from pipelines.tasks import prepare_config  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="bundled:mri_patch")
    ap.add_argument("--maps-dir", type=Path, default=None, help="cached ESPIRiT maps ({vfa,t2}_maps.npy)")
    a = ap.parse_args()
    prior = load_prior_for(a.prior)
    print("| data | hold-out seed | held out | ADMM-TV | fast |\n|---|---|---|---|---|")
    for data, frames in (("vfa", list(range(2, 5))), ("t2", [0])):
        kc, ref = raw.load(data, frames)
        maps = None  # the calibration region is the same at every acceleration: one ESPIRiT per dataset
        for acc in (4, 8):
            meas = raw.measurement(kc, ref, acc, "uniform1d", None)
            if maps is None:
                cache = a.maps_dir / f"{data}_maps.npy" if a.maps_dir else None
                maps = np.load(cache) if cache and cache.exists() else espirit_maps(meas.data, region=24).numpy()
            meas.coil_maps = maps
            # the bench's tuned ADMM-TV row (lam 0.003) and the fast sampler with the config's defaults
            problems = [Problem.build(prepare_config("cs_mri_x8", ["mri.coil_maps=given", *over]), meas, prior=pr,
                                      load_prior=pr is not None)
                        for over, pr in ((raw.admm_tv_overrides(0.003), None), ([f"prior.path={a.prior}"], prior))]
            for seed in (0, 1):
                errors = []
                for p in problems:
                    keep, held = holdout_mask(p, 0.125, seed)
                    errors.append(heldout_error(p, keep, fit_problem(p, keep).solve().x))
                print(f"| {data} x{acc:g} | {seed} | {held} | {errors[0]:.5f} | {errors[1]:.5f} |", flush=True)


if __name__ == "__main__":
    main()
