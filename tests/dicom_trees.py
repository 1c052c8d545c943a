"""A small CT series for the batch tests: a disk of seed-dependent HU in air, 3 (``slices``) slices of 2 x 2 x 3 mm."""
import numpy as np

from medrecon.io import write_dicom_series
from medrecon.volume import Volume


def write_test_series(folder, seed: int, description: str, size: int = 24, slices: int = 3) -> None:
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (slices, size, size)), indexing="ij")
    hu = np.where(x ** 2 + (y - 0.1 * seed) ** 2 < 0.6, 40.0 + 10 * seed, -1000.0).astype(np.float32)
    vol = Volume(hu, spacing=(2.0, 2.0, 3.0), meta={"dicom": {"Modality": "CT", "PatientID": f"P{seed}"}})
    write_dicom_series(vol, folder, series_description=description)
