"""Magnitude images of the three measured MR subjects, written as NIfTI volumes for ``bench_real.py --scans FILE``:
simulated CS-MRI on contrasts and anatomy the MR prior never saw (its training scans are T1 brains, a brain EPI and
an abdomen). All three are test scans (``pipelines.datasets``); fetch them first with ``medrecon data fetch``.

    python benchmarks/magnitude_volumes.py --out out/magnitude
    python benchmarks/bench_real.py --cases mri4 mri8 --scans out/magnitude/t2_mag.nii.gz --pixel 0.625 --slices 1 \
        --no-slicewise --fast-steps 50 --tuned TUNED.json --out out/mri_t2_mag

- ``t2_mag``: the fastMRI T2 brain slice (``mr_kspace_t2``), combined with the file's coil maps. The file states
  no pixel size; 0.573 mm is assumed (fastMRI brain scans' 220 mm field of view over 384), below the MR prior's
  0.625 mm, so it is run at ``--pixel 0.625``.
- ``vfa_mag``: one flip angle (frame 4) of the VFA brain slice (``mr_kspace_vfa``), 224² at a nominal 1 mm.
- ``hip_mag``: the first echo of ``mr_complex_hip``, 4 x 101², 1.5 x 1.5 x 5 mm.

Each is divided by its 99.9th percentile; the slices' spacing along z is nominal where the source has one slice.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_mri_raw as raw  # noqa: E402  (the measured subjects' readers)

SUBJECTS = {  # name: (the complex image (Z, H, W), spacing x, y, z in mm); no k-space is computed
    "t2_mag": (lambda: raw.read_t2()[1], (0.573, 0.573, 5.0)),
    "vfa_mag": (lambda: raw.read_vfa([4])[1], (1.0, 1.0, 5.0)),
    "hip_mag": (lambda: raw.read_hip(0)[1], raw.HIP_SPACING),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/magnitude")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, (read, spacing) in SUBJECTS.items():
        mag = np.abs(read())
        mag = mag / np.percentile(mag, 99.9)
        data = np.ascontiguousarray(np.moveaxis(mag, 0, -1)).astype(np.float32)  # NIfTI (x, y, z)
        nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), out / f"{name}.nii.gz")
        print(f"{out / name}.nii.gz: {mag.shape[0]} x {mag.shape[1]} x {mag.shape[2]}, {spacing} mm")


if __name__ == "__main__":
    main()
