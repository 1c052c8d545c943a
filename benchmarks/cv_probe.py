"""Can cross-validation on held-out measurements tell which sampler suits a scan? For each training scan, the
fast sampler with and without its two-scale denoiser (``solver.coarse_above``) is fitted without
the held-out views (``solver.cross_validate`` with one candidate) and scored on them, then run on all the data
and scored against the reference. A usable criterion ranks the two the same way on every scan.

    python benchmarks/cv_probe.py --case ct8 --scans ct_chest_contrast ct_lung1 ct_abdomen --warm 0.8:0.3 --tau 0.1
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_real import CASES, case_prior, load  # noqa: E402
from pipelines.compare import compare_methods  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="ct8", choices=list(CASES))
    ap.add_argument("--scans", nargs="+", required=True)
    ap.add_argument("--warm", required=True, help="start_sigma:lam of the warm start")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tau", type=float, default=0.1, help="the two-scale denoiser above this noise level")
    a = ap.parse_args(argv)
    config, modality = CASES[a.case]
    sigma, lam = (float(v) for v in a.warm.split(":"))
    method = {"name": "fast", "steps": a.steps,
              "warm_start": {"method": "admm_tv", "start_sigma": sigma, "lam": lam},
              "cross_validate": {"enabled": True, "start_sigma": [1.0], "lam": [1.0]}}
    common = [f"prior.path={case_prior(a.case)}", f"{modality}.pixel_size=2.0"]
    print("| scan | run | held-out error | PSNR axial |\n|---|---|---|---|")
    for scan in a.scans:
        vol = load(scan, 6, None)
        for label, tau in (("one scale", 0.0), (f"two-scale above {a.tau:g}", a.tau)):
            _, (r,) = compare_methods(config, vol, {label: {**method, "coarse_above": tau}}, common,
                                      echo=lambda m: None)
            err = r.cross_validation["candidates"][0]["heldout_error"]
            print(f"| {scan} | {label} | {err:.5f} | {r.metrics['psnr']['axial']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
