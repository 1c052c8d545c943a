"""Measurements: the data plus what is needed to build its operator and to place the result in space.

Files: medrecon's own ``measurements.npz`` (written by ``simulate``) and fastMRI-style HDF5 k-space.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medrecon.errors import InputError
from medrecon.volume import Volume

MEASUREMENT_SUFFIXES = (".npz", ".h5", ".hdf5")


@dataclass
class Measurement:
    """Measured data plus everything needed to build its operator and place the result in space.

    CT: ``data`` (Z, n_angles, n_det) line integrals, ``geometry`` the geometry dict (mm).
    MRI: ``data`` complex k-space (Z, [C,] H, W) for 2D, ([C,] Z, H, W) for 3D, ``mask``, ``coil_maps``.
    ``grid`` is the reconstruction grid: a Volume of zeros with its spacing/origin/direction.
    """

    modality: str
    data: np.ndarray
    grid: Volume
    geometry: dict | None = None
    mask: np.ndarray | None = None
    coil_maps: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def save(self, path: Path) -> None:
        g = self.grid
        arrays = {"format": np.array("medrecon-measurements-1"), "modality": np.array(self.modality),
                  "data": self.data, "info": np.array(json.dumps(self.info)),
                  "grid": np.array(json.dumps({"shape": list(g.shape), "spacing": list(g.spacing),
                                               "origin": list(g.origin), "direction": g.direction.tolist()}))}
        if self.geometry is not None:
            arrays["geometry"] = np.array(json.dumps(self.geometry))
        for k in ("mask", "coil_maps"):
            if getattr(self, k) is not None:
                arrays[k] = getattr(self, k)
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: Path) -> "Measurement":
        path = Path(path)
        if path.suffix in (".h5", ".hdf5"):
            return _load_fastmri(path)
        try:
            z = np.load(path, allow_pickle=False)
            if "format" not in z or "data" not in z:
                raise InputError(f"{path}: not a medrecon measurements file (no 'format'/'data' arrays)")
            g = json.loads(str(z["grid"]))
            grid = Volume(np.zeros(g["shape"], np.float32), g["spacing"], g["origin"], np.array(g["direction"]))
            return cls(str(z["modality"]), z["data"], grid,
                       json.loads(str(z["geometry"])) if "geometry" in z else None,
                       z["mask"] if "mask" in z else None, z["coil_maps"] if "coil_maps" in z else None,
                       json.loads(str(z["info"])))
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"{path}: cannot read measurements ({e})") from None


def _load_fastmri(path: Path) -> Measurement:
    """fastMRI-style HDF5: ``kspace`` (slices, [coils,] H, W) complex, optional ``sens_maps``/``coil_maps``
    of the same layout and an optional ``mask`` (W,) or (H, W); without a mask, the non-zero columns."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            if "kspace" not in f:
                raise InputError(f"{path}: no 'kspace' dataset (fastMRI-style files hold kspace "
                                 f"(slices, [coils,] H, W))")
            k = np.asarray(f["kspace"][()]).astype(np.complex64)
            maps = next((np.asarray(f[n][()]).astype(np.complex64) for n in ("sens_maps", "coil_maps") if n in f),
                        None)
            mask = np.asarray(f["mask"][()]) if "mask" in f else None
    except OSError as e:
        raise InputError(f"{path}: cannot read HDF5 ({e})") from None
    if k.ndim not in (3, 4):
        raise InputError(f"{path}: kspace must be (slices, [coils,] H, W), got shape {k.shape}")
    if mask is None:
        mask = (np.abs(k).reshape(-1, k.shape[-1]).sum(0) > 0)
    mask = np.asarray(mask, np.float32)
    if mask.ndim == 1:
        mask = np.broadcast_to(mask, k.shape[-2:]).copy()
    z = k.shape[0]
    grid = Volume(np.zeros((z, *k.shape[-2:]), np.float32))
    return Measurement("mri", k, grid, None, mask, maps, {"source": Path(path).name, "layout": "2d",
                                                         "units": "measured k-space, rescaled at load"})


def is_measurement_file(path: str | Path) -> bool:
    p = Path(path)
    return p.is_file() and p.suffix.lower() in MEASUREMENT_SUFFIXES


__all__ = ["MEASUREMENT_SUFFIXES", "Measurement", "is_measurement_file"]
