"""The CT patch prior's four training scans, and the validation slab it is scored on, as compact int16 NIfTI copies
for the GPU machine (no package index or data cache there): HU clamped to -1000..1000 (training clamps to it
anyway), ct_head slices 0-75 for training, ct_chest_contrast every other slice (3 mm), and ct_head_val.nii, ct_head
slices 82-107 (the validation slab the wide prior was chosen on, never trained on), which run.sh scores the held-out
loss on (--heldout-data); packed as .gpu/traindata.tar.xz (about 18 MB) for benchmarks/gpu_lease/run.sh. Fetches
the scans first where they are not cached (`medrecon data fetch`)."""
import functools
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from medrecon.io import read_volume  # noqa: E402
from pipelines import datasets  # noqa: E402

#: file in the tar (NAME.nii): (registered scan, its slices written)
FILES = {"ct_head": ("ct_head", slice(0, 76)), "ct_chest_contrast": ("ct_chest_contrast", slice(None, None, 2)),
         "ct_lung1": ("ct_lung1", slice(None)), "ct_abdomen": ("ct_abdomen", slice(None)),
         "ct_head_val": ("ct_head", slice(82, 108))}  # held out: run.sh's --heldout-data


def main() -> None:
    datasets.fetch(sorted({scan for scan, _ in FILES.values()}))
    read = functools.cache(lambda scan: read_volume(datasets.path(scan)))
    with tempfile.TemporaryDirectory() as tmp:
        for name, (scan, z) in FILES.items():
            vol = read(scan)
            data = np.clip(np.rint(vol.data[z]), -1000, 1000).astype(np.int16)
            affine = vol.affine_ras.copy()
            affine[:3, 3] += (z.start or 0) * affine[:3, 2]  # the slab's first slice where it lies in the scan
            affine[:3, 2] *= z.step or 1
            nib.save(nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), affine), f"{tmp}/{name}.nii")
            print(name, data.shape)
        Path(".gpu").mkdir(exist_ok=True)
        with open(".gpu/traindata.tar.xz", "wb") as out:
            tar = subprocess.Popen(["tar", "cf", "-", "-C", tmp] + [f"{n}.nii" for n in FILES], stdout=subprocess.PIPE)
            subprocess.run(["xz", "-T2", "-9e"], stdin=tar.stdout, stdout=out, check=True)
            if tar.wait():
                raise SystemExit("tar failed")


if __name__ == "__main__":
    main()
