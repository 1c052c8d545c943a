"""Measurements: the data plus what is needed to build its operator and to place the result in space.

Files: medrecon's own ``measurements.npz`` (written by ``simulate``); measured raw data (fastMRI and
ISMRMRD HDF5, BART .cfl) through ``pipelines.raw_mri``.
"""
from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from medrecon.errors import InputError
from medrecon.io.common import check_voxels
from medrecon.io.dispatch import MEASUREMENT_SUFFIXES
from medrecon.io.nifti import is_nifti_pair
from medrecon.volume import Volume

from .modality import Modality, modality_name


@dataclass
class Measurement:
    """Measured data plus everything needed to build its operator and place the result in space.

    CT: ``data`` (Z, n_angles, n_det) line integrals, ``geometry`` the geometry dict (mm).
    MRI: ``data`` complex k-space (Z, [C,] H, W) for 2D, ([C,] Z, H, W) for 3D, ``mask``, ``coil_maps``.
    ``grid`` is the reconstruction grid: a Volume of zeros with its spacing/origin/direction.
    ``reference``: a reference magnitude on the grid when the file has one (fastMRI ``reconstruction_rss``).
    """

    modality: str
    data: np.ndarray
    grid: Volume
    geometry: dict | None = None
    mask: np.ndarray | None = None
    coil_maps: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    reference: np.ndarray | None = None
    #: set by ``check`` once these measurements passed it (it returns at once after)
    _checked: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self):
        """The modality in medrecon's spelling, 'ct' or 'mri' (a file may say 'CT'); another is a ValueError."""
        name = modality_name(self.modality)
        if name not in {m.value for m in Modality}:
            raise ValueError(f"modality {self.modality!r}: give 'ct' or 'mri'")
        self.modality = name

    def output_volume(self, data: np.ndarray, **meta) -> Volume:
        """``data`` on the grid, as an output: cut to the input's own rows and columns where the grid is the square
        a non-square input was padded to (``info['crop']``, set by the simulation)."""
        vol = self.grid.with_data(data, **meta)
        crop = self.info.get("crop")
        return vol.crop(*crop) if crop else vol

    @cached_property
    def ct_geometry(self):
        """CT: ``geometry`` as operators.ct's geometry object, read from the dict once (its errors as they come)."""
        from operators.ct import geometry_from_dict
        return geometry_from_dict(self.geometry)

    @cached_property
    def holds_data(self) -> bool:
        """Whether ``data`` holds a non-zero sample, found once: the raw readers set it from their summed pass."""
        return bool(np.any(self.data))

    @property
    def mask_layout(self) -> str | None:
        """MRI: '3d' when the data were sampled over (kz, kx) as one 3D acquisition, else '2d' (what the data hold,
        recorded at simulation, whatever the config reconstructing them says); None for CT."""
        if self.modality != "mri":
            return None
        return self.info.get("layout") or "2d"

    @property
    def output_plane(self) -> tuple[int, int]:
        """The in-plane shape of ``output_volume``."""
        crop = self.info.get("crop")
        return tuple(b - a for a, b in crop) if crop else tuple(self.grid.shape[-2:])

    def save(self, path: Path) -> None:
        g = self.grid
        arrays = {"format": np.array(FORMAT), "modality": np.array(self.modality),
                  "data": self.data, "info": np.array(json.dumps(self.info)),
                  "grid": np.array(json.dumps({"shape": list(g.shape), "spacing": list(g.spacing),
                                               "origin": list(g.origin), "direction": g.direction.tolist(),
                                               "nifti": g.meta.get("nifti")}))}
        if self.geometry is not None:
            arrays["geometry"] = np.array(json.dumps(self.geometry))
        for k in ("mask", "coil_maps", "reference"):
            if getattr(self, k) is not None:
                arrays[k] = getattr(self, k)
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: Path) -> "Measurement":
        """A measurements file (medrecon's .npz, fastMRI/ISMRMRD HDF5, BART .cfl), checked to be usable."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix in (".h5", ".hdf5", ".cfl", ".hdr"):
            from . import raw_mri
            if suffix in (".cfl", ".hdr"):
                meas = raw_mri.load_cfl(path)
            else:
                meas = raw_mri.load_ismrmrd(path) if raw_mri.is_ismrmrd(path) else raw_mri.load_fastmri(path)
            return meas.check(path, finite_checked=True)  # as read, in the file's own axis order
        return cls._load_npz(path).check(path)

    def check(self, where, finite_checked: bool = False) -> "Measurement":
        """These measurements, refused (InputError naming ``where``) unless usable: some values, finite (unless
        ``finite_checked``: raw files are checked as read, in their own axis order), of the modality's kind (real
        line integrals, complex k-space), a finite mask and coil maps; MRI: k-space and a mask that sample
        something; CT: a geometry the sinogram fits, and values that can be line integrals. ``load`` checks a
        file; ``Problem.build`` checks measurements made in Python (once: a loaded file given to it is not checked
        again)."""
        if self._checked:
            return self
        refuse_no_values(self.data, where)
        _refuse_wrong_arrays(self, where)  # (the kinds first: a pass over every value only for usable ones)
        if not finite_checked:  # (raw files: their data and reference checked as read, naming the dataset)
            refuse_non_finite(self.data, where, self.modality)
            self.reference = checked_reference(self.reference, self.grid.shape, where, "its 'reference'")
        if self.modality == "mri":
            _refuse_empty_mask(self, where)
        if self.modality == "ct":
            _check_sinogram_fits(self, where)
            from operators.ct import line_integral_checks
            why, said = line_integral_checks(self.data)
            if why:
                raise InputError(f"{where}: {why}")
            if said:
                self.info["warnings"] = [*self.info.get("warnings", []), f"{where}: {said}"]
        self._checked = True
        return self

    @classmethod
    def _load_npz(cls, path: Path) -> "Measurement":
        try:
            z = np.load(path, allow_pickle=False)
            if "format" not in z or "data" not in z:
                raise InputError(f"{path}: not a medrecon measurements file (no 'format'/'data' arrays)")
            if str(z["format"]) != FORMAT:  # (read as if it were, whatever it said)
                raise InputError(f"{path}: its format is {str(z['format'])!r}, not {FORMAT!r}, the one this medrecon "
                                 f"reads; {REWRITE}")
            missing = [k for k in ("modality", "grid", "info") if k not in z]
            if missing:
                raise InputError(f"{path}: no {', '.join(repr(k) for k in missing)} array: a measurements file "
                                 f"holds {NPZ_KEYS} (README: A measured CT sinogram)")
            g, info = (_json_object(z[k], k) for k in ("grid", "info"))
            grid = Volume(np.zeros(g["shape"], np.float32), g["spacing"], g["origin"], np.array(g["direction"]),
                          {"nifti": g["nifti"]} if g.get("nifti") else {})  # the input's NIfTI codes
            meas = cls(str(z["modality"]), z["data"], grid,
                       json.loads(str(z["geometry"])) if "geometry" in z else None,
                       z["mask"] if "mask" in z else None, z["coil_maps"] if "coil_maps" in z else None,
                       info, z["reference"] if "reference" in z else None)
        except (EOFError, zipfile.BadZipFile, zlib.error) as e:  # (an empty file's EOFError was click's "Aborted!")
            raise InputError(f"{path}: cannot read measurements: the file is empty, truncated or corrupt ({e}); "
                             f"{REWRITE}") from None
        except (OSError, ValueError, KeyError, TypeError) as e:  # (TypeError: a grid value of the wrong kind)
            raise InputError(f"{path}: cannot read measurements ({e})") from None
        made_from = meas.info.get("source")  # messages name the file given, and what it was simulated from
        meas.info["source"] = f"{path} (simulated from {made_from})" if made_from else str(path)
        return meas


#: the ``format`` a measurements file holds (``Measurement.save``)
FORMAT = "medrecon-measurements-1"
#: the arrays of a measurements file (``Measurement.save``)
NPZ_KEYS = ("'format', 'modality', 'data', 'grid' (JSON), 'info' (JSON) and, for CT, 'geometry' (JSON); for MRI "
            "'mask'")
#: the fix for a measurements file that cannot be read
REWRITE = ("write it again with medrecon simulate or pipelines.measurement.Measurement.save (README: A measured CT "
           "sinogram)")


def _json_object(value: np.ndarray, key: str) -> dict:
    """A JSON object stored as an array of a measurements file (``grid``, ``info``): anything else is a ValueError
    naming the key."""
    obj = json.loads(str(value))
    if not isinstance(obj, dict):
        raise ValueError(f"its {key!r} must hold a JSON object, not {type(obj).__name__}")
    return obj


#: what a CT measurements file must hold beside its sinogram (README: "A measured CT sinogram")
CT_GEOMETRY = ("a 'geometry' array holding the JSON of the geometry that measured it (operators.ct's "
               "ParallelBeamGeometry or FanBeamGeometry(...).to_dict(): type, image_size, angles_deg in degrees, "
               "n_det, pixel_size_mm, det_spacing_mm; README: A measured CT sinogram)")


def refuse_non_finite(values, path, modality: str, axes: str = "") -> None:
    """The refusal of NaN or infinite measured values, naming ``path`` and the first one's index (in the order of
    ``values``, the file's own where the reader checks them as read; ``axes`` names it). Raw k-space is checked
    before anything is inferred from it (a NaN column fell out of an inferred mask, unseen)."""
    bad = ~np.isfinite(np.asarray(values))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        fix = "floor the counts before the log (as medrecon simulate does; -log of zero counts?)" \
            if modality == "ct" else "set them to 0 and leave them out of the mask"
        raise InputError(f"{path}: {int(bad.sum())} measured values are NaN or infinite (the first at index "
                         f"{where}{' ' + axes if axes else ''}); {fix}, e.g. with numpy.nan_to_num")


def refuse_no_values(values, path) -> None:
    """The refusal of measurements holding no values at all (0 slices, views, coils or samples): the solvers failed
    on them with a torch traceback, the raw readers with a reshape's."""
    if np.size(values) == 0:
        raise InputError(f"{path}: the measurements hold no values (shape {tuple(np.shape(values))}): every axis "
                         "needs at least one slice, view, coil or sample")


def checked_reference(ref, grid_shape, path, name: str):
    """A reference image stored with measurements (fastMRI's ``reconstruction_rss``, a .npz's ``reference``) as
    float32, refused naming ``path`` and ``name`` unless real, finite and of the grid's shape (a .npz's of another
    shape was a traceback after the reconstruction, a NaN blamed on the output's reference.nii.gz, a complex one cut
    to its real part); None stays None."""
    if ref is None:
        return None
    if tuple(np.shape(ref)) != tuple(grid_shape):
        raise InputError(f"{path}: {name} has shape {tuple(np.shape(ref))}, the recon grid is {tuple(grid_shape)}")
    return check_voxels(ref, f"{path}: {name}")


def real_kspace_refusal(path, dtype) -> InputError:
    """The refusal of real-valued k-space (a raw file's or a measurements file's)."""
    return InputError(f"{path}: kspace is real-valued ({dtype}), but measured k-space is complex: its imaginary part "
                      "was lost or magnitudes were stored; write the complex k-space (e.g. complex64)")


def _refuse_wrong_arrays(meas: Measurement, path) -> None:
    """Arrays of the wrong kind: a CT sinogram that is not real numbers (complex: its imaginary part was dropped
    with only numpy's ComplexWarning; bool), MRI k-space that is not complex (reconstructed as if its imaginary part
    were 0), and a mask or coil maps holding NaN or infinite values or coil maps of only zeros (both gave an image
    of zeros without a word)."""
    dtype = np.asarray(meas.data).dtype
    if meas.modality == "ct" and dtype.kind not in "iuf":
        raise InputError(f"{path}: the sinogram is {dtype}, but a CT sinogram holds real line integrals -log(I/I0): "
                         "store them as float32")
    if meas.modality == "mri" and dtype.kind != "c":
        raise real_kspace_refusal(path, dtype)
    for key in ("mask", "coil_maps"):
        values = getattr(meas, key)
        if values is not None and not np.isfinite(values).all():
            fix = ("the coils' maps, 0 outside the object" if key == "coil_maps" else
                   "1 where k-space was measured, else 0")
            raise InputError(f"{path}: its '{key}' holds NaN or infinite values: store finite ones ({fix})")
    maps = meas.coil_maps
    if maps is None:
        return
    if np.ndim(meas.data) == 3 and np.ndim(maps) >= 3:  # single-coil k-space (Z, H, W)
        coils = np.shape(maps)[0 if meas.mask_layout == "3d" else -3]  # maps (C, [Z,] Y, X) | ([Z,] C, H, W)
        if coils > 1:  # maps of other data: the operator drops them for single-coil k-space, unseen
            raise InputError(f"{path}: coil maps of {coils} coils {tuple(np.shape(maps))} are stored with single-coil "
                             f"k-space {tuple(np.shape(meas.data))}: store the coils' k-space as (slices, coils, H, "
                             "W), or leave the maps out")
    if not np.any(maps):
        raise InputError(f"{path}: its 'coil_maps' hold only zeros: store the coils' maps, or leave them out to "
                         "estimate them (mri.coil_maps=estimate / espirit)")


def _refuse_empty_mask(meas: Measurement, path: Path) -> None:
    """MRI measurements need k-space that holds something and a sampling mask that samples something: refused
    when the mask is missing (a medrecon .npz without 'mask'), the k-space all zero (whatever the mask), or the
    mask all zero."""
    if meas.mask is None:
        raise InputError(f"{path}: no sampling mask: MRI measurements need a 'mask' array (1 where k-space was "
                         "measured, (H, W) or (1, W)); write it with the data")
    if not np.any(meas.mask):  # a mask inferred from the data (info mask_source) is empty where the data are
        raise InputError(f"{path}: kspace holds only zeros" if meas.info.get("mask_source", "file") != "file" else
                         f"{path}: its mask samples nothing (all zero): store 1 where k-space was measured (a "
                         "fastMRI file may leave 'mask' out: its non-zero columns are then taken)")
    if not meas.holds_data:  # whatever its mask: the solvers fail on it with advice about step sizes
        raise InputError(f"{path}: kspace holds only zeros")


def _check_sinogram_fits(meas: Measurement, path: Path) -> None:
    """A CT file must hold a readable geometry, and its sinogram (Z, views, bins) and grid (Z, n, n) must be that
    geometry's, slice for slice."""
    if meas.geometry is None:
        raise InputError(f"{path}: a CT measurements file needs {CT_GEOMETRY}; it has none")
    try:
        geom = meas.ct_geometry
    except (InputError, TypeError, ValueError, AttributeError) as e:  # a key missing, a value of the wrong kind
        raise InputError(f"{path}: its geometry cannot be read ({e}); a CT measurements file needs {CT_GEOMETRY}") \
            from None
    data, grid = tuple(np.shape(meas.data)), tuple(meas.grid.shape)
    if not hasattr(geom, "sino_shape"):  # cone beam: one 3D projection set
        return
    if len(data) != 3 or data[1:] != tuple(geom.sino_shape) or grid[1:] != tuple(geom.image_shape) or \
            data[0] != grid[0]:
        (views, bins), (n, _) = geom.sino_shape, geom.image_shape
        raise InputError(f"{path}: the sinogram {data} and grid {grid} do not fit the geometry stored with them, "
                         f"which needs (slices, {views}, {bins}) and (slices, {n}, {n}): a CT measurements file holds "
                         "the sinogram as (slices, views, bins) and a grid of as many slices, both the geometry's "
                         "(README: A measured CT sinogram)")


def is_measurement_file(path: str | Path) -> bool:
    p = Path(path)
    return p.is_file() and p.suffix.lower() in MEASUREMENT_SUFFIXES and not is_nifti_pair(p)


__all__ = ["MEASUREMENT_SUFFIXES", "Measurement", "checked_reference", "is_measurement_file", "real_kspace_refusal",
           "refuse_no_values", "refuse_non_finite"]
