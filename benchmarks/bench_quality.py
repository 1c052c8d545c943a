"""Quality benchmark: classical baselines against 2D-only diffusion, DiffusionMBIR and the fast sampler.

Held-out phantoms (seeds never used for training), measurements simulated on a 2x finer grid with noise
(no inverse crime), one prior per modality. For each case the ADMM-TV weight is tuned on a *different*
held-out phantom (a grid search against that phantom's reference), then every method runs on the test
phantom. Rows: 8/4/2-view sparse CT, 90-degree limited angle, CS-MRI x4/x8 (1D masks), 3D Poisson-disc MRI.

    python benchmarks/bench_quality.py                       # reduced form (minutes on a CPU)
    python benchmarks/bench_quality.py --full                # paper settings: 2000 DiffusionMBIR steps
    python benchmarks/bench_quality.py --cases ct8 ct4 --slices 16 --out out/bench

Writes OUT/quality.md (the table for the README) and OUT/quality.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.compare import admm_tv_settings, compare_methods, markdown_table, write_tables  # noqa: E402
from pipelines.phantoms import HELD_OUT_SEEDS, ct_phantom, mr_phantom  # noqa: E402
from pipelines.prior_cards import load_prior_for  # noqa: E402

CASES = {  # name: (config, modality, extra overrides)
    "ct8": ("sparse_view_ct_8", "ct", []),
    "ct4": ("sparse_view_ct_4", "ct", []),
    "ct2": ("sparse_view_ct_2", "ct", []),
    "la90": ("limited_angle_ct_90", "ct", []),
    "mri4": ("cs_mri_x4", "mri", []),
    "mri8": ("cs_mri_x8", "mri", []),
    "mri3d": ("cs_mri_3d_poisson", "mri", []),
}
LAMBDA_GRID = {"ct": [0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0], "mri": [0.0003, 0.001, 0.003, 0.01, 0.03, 0.1]}
TUNE_SEED, TEST_SEED = HELD_OUT_SEEDS[1], HELD_OUT_SEEDS[0]


def phantom(modality: str, slices: int, size: int, seed: int):
    """A held-out phantom on a 2x finer grid than the reconstruction (the simulation resamples it)."""
    if modality == "ct":
        return ct_phantom((slices, 2 * size, 2 * size), seed=seed, slice_thickness_mm=6.0)
    return mr_phantom((slices, 2 * size, 2 * size), seed=seed, contrast="T1", slice_thickness_mm=4.0)


def tune_lambda(config, modality, common, slices, size, iters, prior=None) -> float:
    """Best 3D ADMM-TV weight (axial PSNR) on the tuning phantom, in the units of ``prior``'s intensity map (the
    comparison's, where lam is then used)."""
    grid = {f"lam={lam}": admm_tv_settings(lam, iters) for lam in LAMBDA_GRID[modality]}
    _, res = compare_methods(config, phantom(modality, slices, size, TUNE_SEED), grid, common, prior=prior)
    best = max(res, key=lambda r: r.metrics["psnr"]["axial"])
    return float(best.label.split("=")[1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--size", type=int, default=64, help="slice size (the bundled priors' 64)")
    ap.add_argument("--fast-steps", type=int, default=50)
    ap.add_argument("--mbir-steps", type=int, default=100)
    ap.add_argument("--admm-iters", type=int, default=100)
    ap.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                    help="also run projection-type, MCG and DPS")
    ap.add_argument("--baseline-steps", type=int, default=100)
    ap.add_argument("--full", action="store_true", help="DiffusionMBIR with the paper's 2000 steps")
    ap.add_argument("--ct-prior", default="bundled:ct")
    ap.add_argument("--mri-prior", default="bundled:mri")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench_quality")
    a = ap.parse_args(argv)
    mbir_steps = 2000 if a.full else a.mbir_steps
    a.out.mkdir(parents=True, exist_ok=True)
    tables, rows = [], {}
    for name in a.cases:
        config, modality, extra = CASES[name]
        prior = a.ct_prior if modality == "ct" else a.mri_prior
        common = [f"prior.path={prior}", f"{modality}.image_size={a.size}", *extra]
        t0 = time.perf_counter()
        loaded = load_prior_for(prior)  # one prior for the tuning and every row: lam in one unit
        lam = tune_lambda(config, modality, common, a.slices, a.size, a.admm_iters, prior=loaded)
        classical = "fbp" if modality == "ct" else "zero_filled"
        methods = {
            "FBP" if modality == "ct" else "zero-filled": {"name": classical},
            f"ADMM-TV 3D (lam {lam:g})": admm_tv_settings(lam, a.admm_iters),
            "2D prior only (fast, no z-TV)": {"name": "slicewise_fast", "steps": a.fast_steps},
            f"DiffusionMBIR ({mbir_steps} steps)": {"name": "diffusion_mbir", "steps": mbir_steps},
            f"fast sampler ({a.fast_steps} steps)": {"name": "fast", "steps": a.fast_steps},
        }
        if a.baselines:  # the papers' slice-wise diffusion baselines (issue 8): no z-TV, and no in-plane TV
            methods.update({f"{n} ({a.baseline_steps} steps)":  # even where the config sets one for its sampler
                            {"name": n, "steps": a.baseline_steps, "admm": {"lam_xy": 0.0}}
                            for n in ("projection", "mcg", "dps")})
        _, res = compare_methods(config, phantom(modality, a.slices, a.size, TEST_SEED), methods, common,
                                 prior=loaded, echo=lambda m: print(f"[{name}] {m}", flush=True))
        title = (f"**{name}** ({config}; held-out seed {TEST_SEED}, {a.slices}x{a.size}x{a.size}; ADMM-TV lam tuned "
                 f"on seed {TUNE_SEED}; {time.perf_counter() - t0:.0f} s)")
        tables.append(markdown_table(res, title))
        rows[name] = {"config": config, "lam": lam, "methods": [r.row() for r in res]}
        write_tables(a.out, "quality", tables, rows)
        print(tables[-1], flush=True)
    print(f"wrote {a.out / 'quality.md'}")


if __name__ == "__main__":
    main()
