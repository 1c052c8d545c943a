"""Write the measured T2 slice (`mr_kspace_t2`, 16 coils) as a fully sampled fastMRI-layout HDF5, as fastMRI's train
and val files are: `kspace` (1, 16, 384, 396), centred, readout oversampling cropped, and as `reconstruction_rss`
the image bench_mri_raw.py scores against. For trying `--set mri.retrospective=true` (README, "A fully sampled
file"):

    python benchmarks/fully_sampled_file.py --out out/t2_full.h5
    medrecon reconstruct -c cs_mri_x4 -i out/t2_full.h5 -o out/t2_x4 --set mri.retrospective=true \\
        --set mri.coil_maps=espirit
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mri_raw import load  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/t2_full.h5", help="the HDF5 file to write")
    args = ap.parse_args(argv)
    import h5py
    kspace, reference = load("t2", [0])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(out, "w") as f:
        f["kspace"] = kspace
        f["reconstruction_rss"] = reference
    print(f"wrote {out}: kspace {kspace.shape}, fully sampled")


if __name__ == "__main__":
    main()
