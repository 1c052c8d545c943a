"""Score the voxel-wise mean of reconstructions saved by ``bench_real.py --save-volumes`` in several runs of the
same cases (other seeds, other settings): what a posterior mean or an ensemble of two settings would score,
without running it again.

    python benchmarks/bench_real.py ... --save-volumes --out out/seed0
    python benchmarks/bench_real.py ... --save-volumes --set solver.seed=1 --out out/seed1
    python benchmarks/score_mean.py out/seed0 out/seed1            # per case: ADMM-TV, each run, their mean

Every run must hold the same reference (the same simulation: only solver settings may differ). PSNR as
``bench_real`` scores it (``per_axis_metrics``: the axial figure is the mean over slices) over ``--range``
(2000 HU for CT, 1 for MR images).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench_real import volume_file  # noqa: E402  (the names --save-volumes writes)
from medrecon.io import read_volume  # noqa: E402
from medrecon.metrics import per_axis_metrics  # noqa: E402

FAST = "fast + z-TV (warm)"  # bench_real's label of the default fast-sampler row


def axial(ref: np.ndarray, x: np.ndarray, data_range: float) -> float:
    return per_axis_metrics(ref, x, data_range)["psnr"]["axial"]


def score(runs: list[Path], label: str, data_range: float) -> list[dict]:
    """One row per case (CASE_SCAN) of the first run: ADMM-TV's, each run's and the mean's axial PSNR."""
    suffix = volume_file(Path(), "", "reference").name  # "_reference.nii.gz": a case's reference file ends so
    rows = []
    for ref_file in sorted(runs[0].glob(f"*{suffix}")):
        case = ref_file.name[:-len(suffix)]
        ref = read_volume(ref_file).data
        for run in runs[1:]:
            if not np.array_equal(read_volume(run / ref_file.name).data, ref):
                raise SystemExit(f"{run / ref_file.name}: another reference than {ref_file}; score runs of one "
                                 "simulation (the same scans, grid, noise seed and --fov)")
        baseline = next(runs[0].glob(f"{case}_ADMM_TV*"), None)  # its label names its lam: "ADMM-TV 3D (lam 2)"
        results = [read_volume(volume_file(run, case, label)).data for run in runs]
        rows.append({"case": case,
                     "admm_tv": None if baseline is None else axial(ref, read_volume(baseline).data, data_range),
                     "runs": [axial(ref, x, data_range) for x in results],
                     "mean": axial(ref, np.mean(results, axis=0), data_range)})
    if not rows:
        raise SystemExit(f"{runs[0]}: no *{suffix}; run bench_real.py with --save-volumes")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+", help="bench_real --out folders of runs with --save-volumes")
    ap.add_argument("--label", default=FAST, help=f"the method's row label in bench_real (default: {FAST!r})")
    ap.add_argument("--range", type=float, default=2000.0, help="PSNR data range (CT 2000 HU, MR images 1)")
    a = ap.parse_args(argv)
    rows = score(a.runs, a.label, a.range)
    gains = []
    print("| case | ADMM-TV | " + " | ".join(p.name for p in a.runs) + " | mean |")
    print("|---|---|" + "---|" * (len(a.runs) + 1))
    for r in rows:
        tv = r["admm_tv"]
        cells = [f"{p:.2f}" + ("" if tv is None else f" ({p - tv:+.2f})") for p in r["runs"] + [r["mean"]]]
        print(f"| {r['case']} | {'–' if tv is None else f'{tv:.2f}'} | " + " | ".join(cells) + " |")
        if tv is not None:
            gains.append([p - tv for p in r["runs"] + [r["mean"]]])
    if gains:
        g = np.array(gains)
        cells = [f"{m:+.3f} ({b})" for m, b in zip(g.mean(0), (g < 0).sum(0))]
        print("| mean Δ (below ADMM-TV) | | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
