"""Write the tuned ADMM-TV reconstruction of one simulated case of bench_real.py as NIfTI (the thirty-first
session's test-time adaptation probe fine-tunes a prior on it: the scan's own estimate, no ground truth).

    python benchmarks/admm_estimate.py --case mri4 --lam 0.0003 --scan out/magnitude/t2_mag.nii.gz --pixel 0.625 \\
        --slices 1 --out out/adapt/admm_x4.nii.gz
    medrecon train --data out/adapt/admm_x4.nii.gz --init-from bundled:mri_patch --steps 500 --ema-decay 0.99 ...
    python benchmarks/bench_real.py --cases mri4 --mri-prior out/adapt/prior_x4 ...   # RESULTS.md, 31st session
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_real import CASES, load  # noqa: E402

from medrecon.io import write_nifti  # noqa: E402
from pipelines.compare import admm_tv_settings, compare_methods  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=sorted(CASES), required=True)
    ap.add_argument("--lam", type=float, required=True, help="ADMM-TV's weight (the bench's tuned lam)")
    ap.add_argument("--scan", required=True, help="a registered test scan or a volume file")
    ap.add_argument("--pixel", type=float, required=True)
    ap.add_argument("--slices", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    config, modality = CASES[a.case]
    _, res = compare_methods(config, load(a.scan, a.slices), {"ADMM-TV": admm_tv_settings(a.lam)},
                             [f"{modality}.pixel_size={a.pixel}"])
    print(f"{a.case} {a.scan}: ADMM-TV PSNR axial {res[0].metrics['psnr']['axial']:.2f} dB")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_nifti(res[0].volume, a.out)


if __name__ == "__main__":
    main()
