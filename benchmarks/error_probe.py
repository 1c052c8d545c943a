"""Where a config's diffusion result differs from 3D ADMM-TV on a scan: PSNR of averages w x diffusion + (1 - w) x
ADMM-TV, the two errors' correlation, and the squared error (HU^2) in bands along the slice's borders and inside.

    python benchmarks/error_probe.py --case ct8 --scans ct_chest_contrast ct_lung1 ct_abdomen ct_chest_drr --lam 1 \\
        --baseline-lam 0.3       # the averages (fifteenth session, when ct_chest_drr was a training scan;
                                 # Δ over ADMM-TV 0.3, averaged with its λ 1)
    python benchmarks/error_probe.py --case ct8 --scans ct_tumour4 --lam 1   # where ct_tumour4 loses (border bands)
    python benchmarks/error_probe.py --case ct8 --scans ct_chest_contrast ct_lung1 ct_abdomen --fov 120   # bodies cut
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_real import CASES, case_prior, load  # noqa: E402
from medrecon.metrics import psnr  # noqa: E402
from pipelines.compare import admm_tv_settings, compare_methods  # noqa: E402

WEIGHTS = (0.0, 0.5, 0.7, 0.8, 0.9, 1.0)
BAND = 5  # pixels


def bands(err: np.ndarray) -> dict[str, float]:
    """Mean squared error in the top / bottom rows, the left / right columns (BAND pixels) and the rest."""
    inner = np.ones(err.shape[1:], bool)
    inner[:BAND], inner[-BAND:], inner[:, :BAND], inner[:, -BAND:] = False, False, False, False
    return {"top": float(err[:, :BAND].mean()), "bottom": float(err[:, -BAND:].mean()),
            "left": float(err[:, :, :BAND].mean()), "right": float(err[:, :, -BAND:].mean()),
            "inside": float(err[:, inner].mean())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="ct8", choices=[c for c, (_, m) in CASES.items() if m == "ct"])
    ap.add_argument("--scans", nargs="+", required=True)
    ap.add_argument("--slices", type=int, default=6)
    ap.add_argument("--pixel", type=float, default=2.0)
    ap.add_argument("--fov", type=float, default=None, help="cut each scan to its central FOV x FOV mm window")
    ap.add_argument("--lam", type=float, default=1.0, help="the ADMM-TV averaged with (the warm start's)")
    ap.add_argument("--baseline-lam", type=float, default=None, help="the ADMM-TV the averages are scored against "
                                                                      "(default: --lam)")
    a = ap.parse_args(argv)
    config, _ = CASES[a.case]
    base_lam = a.lam if a.baseline_lam is None else a.baseline_lam
    methods = {"admm": admm_tv_settings(a.lam), "base": admm_tv_settings(base_lam), "fast": {"name": "fast"}}
    common = [f"prior.path={case_prior(a.case)}", f"ct.pixel_size={a.pixel}"]
    print(f"| scan | {' | '.join(f'w {w:g}' for w in WEIGHTS)} | error correlation | squared error (HU²) "
          f"diffusion / ADMM-TV: {', '.join(bands(np.zeros((1, 2 * BAND + 1, 2 * BAND + 1))))} |")
    for scan in a.scans:
        ref, res = compare_methods(config, load(scan, 1 if "slice" in scan else a.slices, a.fov), methods, common)
        r = ref.data
        admm, base, diff = (m.volume.data for m in res)
        score = lambda v: psnr(r, v, 2000.0)  # noqa: E731  (the benchmarks' 2000 HU range)
        deltas = [score(w * diff + (1 - w) * admm) - score(base) for w in WEIGHTS]
        corr = float(np.corrcoef((diff - r).ravel(), (admm - r).ravel())[0, 1])
        bd, ba = bands((diff - r) ** 2), bands((admm - r) ** 2)
        print(f"| {scan} | {' | '.join(f'{d:+.2f}' for d in deltas)} | {corr:.2f} | "
              f"{', '.join(f'{bd[k]:.0f} / {ba[k]:.0f}' for k in bd)} |", flush=True)


if __name__ == "__main__":
    main()
