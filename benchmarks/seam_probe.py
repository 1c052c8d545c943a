"""The returned estimate on one tile grid or two (``Denoiser.seamless``): PSNR on a validation slab, and the
axial slice of each result for a look in a narrow window (RESULTS.md, "Forty-first session").

    python benchmarks/seam_probe.py ct_head 82 6 sparse_view_ct_8 --out out/seam
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medrecon.io import read_volume, write_nifti  # noqa: E402
from medrecon.priors.patch import PatchPrior  # noqa: E402
from pipelines import datasets, tasks  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scan", help="a registered training scan (never a test scan), e.g. ct_head")
    ap.add_argument("first", type=int, help="first slice of the slab")
    ap.add_argument("slices", type=int)
    ap.add_argument("config")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "seam")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    src = a.out / f"{a.scan}_{a.first}.nii.gz"
    write_nifti(read_volume(datasets.path(a.scan)).slab(a.first, a.first + a.slices), src, overwrite=True)
    two_grids = PatchPrior.seamless
    for label in ("one_grid", "two_grids"):
        PatchPrior.seamless = two_grids if label == "two_grids" else (lambda self, shifts=2: contextlib.nullcontext())
        run = tasks.reconstruct(a.config, src, a.out / label, overwrite=True,
                                overrides=["solver.steps=20", "solver.warm_start.start_sigma=0.8"])
        print(label, json.dumps(run.report["vs_reference"]["psnr"]), flush=True)
    PatchPrior.seamless = two_grids


if __name__ == "__main__":
    main()
