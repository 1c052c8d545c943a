"""How the fast sampler's z-TV weight should follow the slice spacing: sweep lam on *training* scans of
different slice spacings (never a test scan) and print the best lam per scan (or, with --lam-xy, the in-plane
TV weight; with --setting KEY V1 V2 ..., any other key of the fast sampler's solver section, e.g. end_sigma).

The warm start and the noise level it restarts at are the registry's defaults; each point of the sweep is a
(lam, rho) pair of the z-TV ADMM step. ``lam 0`` is the 2D prior alone (``slicewise_fast``).

    python benchmarks/tune_ztv.py --case mri4 --scans mr_head_t1w mr_brain1
    python benchmarks/tune_ztv.py --case ct8 --scans ct_chest_contrast ct_lung1
    python benchmarks/tune_ztv.py --case ct4 --scans ct_chest_contrast ct_lung1 --steps 50 --warm 1.2:0.3 \
        --lam-xy 0 0.1 0.3 1       # the in-plane TV weight (solver.admm.lam_xy) at the registry's z-TV
    python benchmarks/tune_ztv.py --case ct8 --scans ct_chest_contrast ct_lung1 --warm 0.8:1 \
        --setting end_sigma 0.002 0.01 0.02 0.04   # solver.end_sigma at the registry's z-TV

Writes OUT/ztv_<case>.md and .json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_real import CASES, case_prior, load  # noqa: E402
from medrecon.metrics import psnr  # noqa: E402
from pipelines.compare import compare_methods, markdown_table, write_tables  # noqa: E402

GRID = {"ct": ["0.05:10", "0.15:10", "0.5:10", "1.5:10"], "mri": ["0.005:10", "0.015:10", "0.05:10", "0.15:10"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="mri4", choices=list(CASES))
    ap.add_argument("--scans", nargs="+", required=True, help="training scans (pipelines.datasets)")
    ap.add_argument("--slices", type=int, default=6)
    ap.add_argument("--pixel", type=float, default=2.0)
    ap.add_argument("--fov", type=float, default=None, help="cut each scan to its central FOV x FOV mm window")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--pairs", nargs="+", default=None, help="lam:rho pairs (default: a lam grid at rho 10)")
    ap.add_argument("--lam-xy", nargs="+", type=float, default=None,
                    help="sweep the in-plane TV weight instead, at the registry's z-TV")
    ap.add_argument("--setting", nargs="+", default=None, metavar="KEY V",
                    help="sweep another solver key instead (e.g. end_sigma 0.01 0.02), at the registry's z-TV")
    ap.add_argument("--warm", default=None, help="start_sigma:lam of the warm start (default: the registry's)")
    ap.add_argument("--prior", default=None, help="prior.path (default: the case's config's)")
    ap.add_argument("--per-slice", action="store_true", help="also each method's axial PSNR per slice")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "tune_ztv")
    a = ap.parse_args(argv)
    config, modality = CASES[a.case]
    a.out.mkdir(parents=True, exist_ok=True)
    warm = {}
    if a.warm:
        sigma, lam = (float(v) for v in a.warm.split(":"))
        warm = {"warm_start": {"method": "admm_tv", "start_sigma": sigma, "lam": lam}}
    if a.lam_xy is not None and a.setting is not None:
        ap.error("sweep one of --lam-xy and --setting")
    if a.lam_xy is not None:
        methods = {f"lam_xy {v:g}": {"name": "fast", "steps": a.steps, "admm": {"lam_xy": v}, **warm} for v in a.lam_xy}
    elif a.setting is not None:
        key, values = a.setting[0], [float(v) for v in a.setting[1:]]
        methods = {f"{key} {v:g}": {"name": "fast", "steps": a.steps, key: v, **warm} for v in values}
    else:
        methods = {"lam 0 (2D prior only)": {"name": "slicewise_fast", "steps": a.steps, **warm}}
        for pair in a.pairs or GRID[modality]:
            lam, rho = (float(v) for v in pair.split(":"))
            methods[f"lam {lam:g} rho {rho:g}"] = {"name": "fast", "steps": a.steps,
                                                   "admm": {"lam": lam, "rho": rho}, **warm}
    common = [f"prior.path={case_prior(a.case, a.prior)}", f"{modality}.pixel_size={a.pixel}",
              "solver.self_adapt.steps=0"]  # the settings tuned here are the plain sampler's (one pass)
    tables, rows = [], {}
    for scan in a.scans:
        vol = load(scan, a.slices, a.fov)
        t0 = time.perf_counter()
        ref, res = compare_methods(config, vol, methods, common, echo=lambda m: print(f"[{scan}] {m}", flush=True))
        dz = float(vol.spacing[2])
        rows[scan] = {"slice_mm": dz, "rows": [r.row() for r in res]}
        best = max(res, key=lambda r: sum(r.metrics["psnr"][p] for p in ("axial", "coronal", "sagittal")))
        table = markdown_table(res, f"**{scan}** ({a.case}, slices {dz:.3g} mm apart; {time.perf_counter() - t0:.0f} "
                                    f"s): best {best.label} (sum of the three planes' PSNR)")
        if a.per_slice:
            for r, row in zip(res, rows[scan]["rows"]):
                row["psnr_per_slice"] = [round(psnr(ref.data[z], r.volume.data[z], r.metrics["data_range"]), 2)
                                         for z in range(ref.shape[0])]
                table += f"\n{r.label}: axial PSNR per slice " + " / ".join(f"{v:.2f}" for v in row["psnr_per_slice"])
            table += "\n"
        tables.append(table)
        write_tables(a.out, f"ztv_{a.case}", tables, rows)
        print(tables[-1], flush=True)


if __name__ == "__main__":
    main()
