"""The CT patch prior's four training scans as compact int16 NIfTI copies for the GPU machine (no package index
there): HU clamped to -1000..1000 (training clamps to it anyway), ct_head slices 0-75 (82-107 are the validation
slab), ct_chest_contrast every other slice (3 mm), packed as .gpu/traindata.tar.xz (about 17 MB) for
benchmarks/gpu_lease/run.sh. Fetches the scans first where they are not cached (`medrecon data fetch`)."""
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from medrecon.io import read_volume  # noqa: E402
from pipelines import datasets  # noqa: E402

SCANS = {"ct_head": slice(0, 76), "ct_chest_contrast": slice(None, None, 2), "ct_lung1": slice(None),
         "ct_abdomen": slice(None)}


def main() -> None:
    datasets.fetch(list(SCANS))
    with tempfile.TemporaryDirectory() as tmp:
        for name, z in SCANS.items():
            vol = read_volume(datasets.path(name))
            data = np.clip(np.rint(vol.data[z]), -1000, 1000).astype(np.int16)
            affine = vol.affine_ras.copy()
            affine[:3, 2] *= z.step or 1
            nib.save(nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), affine), f"{tmp}/{name}.nii")
            print(name, data.shape)
        Path(".gpu").mkdir(exist_ok=True)
        with open(".gpu/traindata.tar.xz", "wb") as out:
            tar = subprocess.Popen(["tar", "cf", "-", "-C", tmp] + [f"{n}.nii" for n in SCANS], stdout=subprocess.PIPE)
            subprocess.run(["xz", "-T2", "-9e"], stdin=tar.stdout, stdout=out, check=True)
            if tar.wait():
                raise SystemExit("tar failed")


if __name__ == "__main__":
    main()
