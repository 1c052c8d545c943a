"""read_volume / write_volume: one entry point for every format, chosen from the path."""
from __future__ import annotations

import os

import re

from pathlib import Path

import numpy as np

from ..errors import InputError, UnreadableError
from ..volume import Volume
from .common import check_fits_in_memory, check_voxels, volume_array, volume_shape, warn
from .dicom_read import read_dicom_series
from .dicom_scan import (PROJECTION_MODALITIES, choose_series, is_dicom_file, list_series, read_header, series_uid,
                         visible_files)
from .deidentify import refuse_identifying_pixels
from .dicom_write import write_dicom_series
from .itk import ITK_READ_SUFFIXES, ITK_WRITE_SUFFIXES, read_itk, write_itk
from .nifti import is_nifti, is_nifti_pair, read_nifti, write_nifti

#: suffixes of measurement files (sinograms, k-space), which ``medrecon reconstruct --input`` reads, not images
MEASUREMENT_SUFFIXES = (".npz", ".h5", ".hdf5", ".cfl", ".hdr")
READABLE = "a DICOM series folder, a DICOM file, .nii/.nii.gz (or a .hdr/.img pair), .nrrd/.nhdr/.mha/.mhd or .npy"


def read_volume(path, series: str | None = None, spacing: tuple | None = None,
                resample_nonuniform: bool = False, plane: str | None = None) -> Volume:
    """Read a volume from a DICOM series folder, a single DICOM file, NIfTI, NRRD/MetaImage or .npy.

    * ``series``: SeriesInstanceUID to read from a folder holding several (default: the largest, with
      a warning listing the others).
    * ``spacing``: (z, y, x) mm for a .npy array (which carries no geometry; default 1 mm, warned).
    * ``resample_nonuniform``: interpolate a DICOM series with uneven slice gaps onto about its median spacing,
      from its first slice to its last, instead of refusing it.
    * ``plane``: re-stack the slices as this plane's (``Volume.in_plane``) before they are checked for being
      axial, so that ``convert --plane axial`` is not told to re-stack them as axial.
    Warnings are logged (logger ``medrecon.io``) and kept in ``Volume.meta['warnings']``.
    """
    vol = _read(Path(path), series, spacing, resample_nonuniform)
    if plane is not None:
        vol = vol.in_plane(plane)
    _say_if_slices_are_not_axial(vol)
    _say_if_spacing_is_implausible(vol)
    return vol


#: voxel sides (mm) outside which a header's spacing is most likely in other units (meters, microns) read as mm
PLAUSIBLE_SPACING_MM = (0.01, 100.0)


def _say_if_spacing_is_implausible(vol: Volume) -> None:
    """Warn of a voxel side outside ``PLAUSIBLE_SPACING_MM`` (a NIfTI written in meters with its units unset read
    at 0.001 mm: the CT simulation and the TV weights then run on a grid a thousand times too fine)."""
    lo, hi = PLAUSIBLE_SPACING_MM
    if all(lo <= s <= hi for s in vol.spacing):
        return
    zyx = ", ".join(f"{s:.3g}" for s in vol.spacing_zyx)
    kind = str(vol.meta.get("format", "")).lower()
    if kind == "npy":  # no header: the spacing is the caller's
        why, fix = "a spacing given in meters or microns?", \
            "give the spacing in mm (--spacing z,y,x; spacing= from Python)"
    else:
        why = "a header in meters or microns read as mm?"
        fix = "fix the spacing in the header (" + {
            "nifti": "pixdim and its units", "dicom": "PixelSpacing and the slices' ImagePositionPatient",
            "nrrd": "spacings or space directions", "nhdr": "spacings or space directions",
            "mha": "ElementSpacing", "mhd": "ElementSpacing"}.get(kind, "its voxel spacing") + ")"
    warn(vol.meta.setdefault("warnings", []),
         f"{vol.meta.get('source', 'the input')}: voxel spacing (z, y, x) {zyx} mm is outside {lo:g}-{hi:g} mm, "
         f"unlikely for a scan ({why}); {fix} before reconstructing it")


def _say_if_slices_are_not_axial(vol: Volume) -> None:
    """Log ``Volume.plane_warning`` when the slices are not axial and keep it once with the volume
    (``Volume.in_plane`` keeps it already)."""
    message = vol.plane_warning()
    if message:
        warn(vol.meta.setdefault("warnings", []), message)


def _read(path: Path, series, spacing, resample_nonuniform) -> Volume:
    if not path.exists():
        raise InputError(f"{path} does not exist; give {READABLE}")
    if spacing is not None and not str(path).lower().endswith(".npy"):
        raise InputError(f"{path}: a spacing can only be given for .npy input; this format carries its own")
    if path.is_dir():
        return _read_dicom_folder(path, series, resample_nonuniform)
    if series is not None:
        raise InputError(f"{path} is a single file; --series applies to a folder of DICOM files")
    name = path.name.lower()
    if is_nifti(name) or is_nifti_pair(path):
        return read_nifti(path)
    if name.endswith(ITK_READ_SUFFIXES):
        return read_itk(path)
    if name.endswith(".npy"):
        return read_npy(path, spacing)
    if is_dicom_file(path):
        vol = read_dicom_series([path], resample_nonuniform)
        _say_if_one_file_of_a_series(vol, path)
        return vol
    if name.endswith(MEASUREMENT_SUFFIXES):  # (a NIfTI/Analyze .hdr pair was read above)
        raise InputError(f"{path}: measurements (a sinogram or k-space), not an image volume; "
                         "`medrecon reconstruct --input` reads them")
    raise InputError(f"{path}: unknown format; give {READABLE}")


def _say_if_one_file_of_a_series(vol: Volume, path: Path) -> None:
    """Warn when a DICOM file given alone holds one slice of a series whose other files lie beside it (a file
    dragged from a series folder was reconstructed as a one-slice volume without a word). Not for a projection
    image (``PROJECTION_MODALITIES``, or a slice without patient geometry): its folder holds no volume to read.
    The console is told the folder; the volume's warnings (report.json's input_warnings) say "its folder", as
    report.json records names, not the folders above them (which may name the patient)."""
    uid = vol.meta.get("series_uid")
    if not uid or vol.data.shape[0] > 1:  # a mosaic or multi-frame file holds its own volume
        return
    # the read's own header: its Modality, and whether it had no patient geometry (placed at the origin)
    if str(vol.meta.get("dicom", {}).get("Modality", "") or "").strip().upper() in PROJECTION_MODALITIES or \
            vol.meta.get("geometry_assumed"):
        return
    try:
        siblings = visible_files(path.parent, False)
    except OSError:  # an execute-only folder cannot be listed: the file alone is read
        return
    if any(_same_series(p, uid) for p in siblings if p.name != path.name):  # stops at the first other slice
        tail = f"; give that folder to read the whole series (with --series {uid} if it holds several)"
        warn(vol.meta.setdefault("warnings", []),
             f"{path}: one slice of a series whose other files lie in {path.parent}{tail}",
             recorded=f"{path}: one slice of a series whose other files lie in its folder{tail}")


def _same_series(p: Path, uid: str) -> bool:
    """Whether a file is a readable DICOM file of the series ``uid`` (only its UID read)."""
    try:
        ds = read_header(p, specific_tags=["SeriesInstanceUID", "Rows"])
    except Exception:  # noqa: BLE001  (a damaged file is none of the series' readable slices)
        return False
    return ds is not None and series_uid(ds) == uid


def is_volume_file(path) -> bool:
    """Whether a file is one of the image formats ``read_volume`` reads, by its name (NIfTI, NRRD, MetaImage, a
    NIfTI/Analyze pair, .dcm) or a DICOM file's preamble; .npy is left out (any saved array is one)."""
    path = Path(path)
    if is_non_dicom_volume_file(path) or path.name.lower().endswith(".dcm"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def is_non_dicom_volume_file(path) -> bool:
    """Whether a file is, by its name, a NIfTI (or NIfTI/Analyze pair), NRRD or MetaImage volume: what a folder
    given as a DICOM series (``read_volume``) or a batch's tree (``pipelines.batching``) holds instead of DICOM."""
    path = Path(path)
    name = path.name.lower()
    return is_nifti(name) or name.endswith(ITK_READ_SUFFIXES) or is_nifti_pair(path)


def _read_dicom_folder(folder: Path, series: str | None, resample: bool) -> Volume:
    if not any(folder.iterdir()):
        raise InputError(f"{folder} is empty; give the folder that holds the DICOM files of one series")
    # a named series: all its files, as the batch found them; "" (files without a UID): this folder's own, as the
    # batch groups them
    found = list_series(folder, recursive=bool(series))
    if not found:
        below = list_series(folder, recursive=True) if any(p.is_dir() for p in folder.iterdir()) else []

        def where(s):  # a series split over several sub-folders (a CD's DICOM/0001, 0002) lies in this one
            rel = os.path.relpath(s.folder, folder)
            return f"series {s.uid} across its sub-folders" if rel == "." else rel
        def hint(descriptions: bool) -> str:  # recorded without the SeriesDescriptions, as choose_series's lists
            return ("; its sub-folders hold " + "; ".join(
                s.label(descriptions, why=False, name=where(s)) for s in below[:5])
                + (f" and {len(below) - 5} more series" if len(below) > 5 else "")
                + f": give this folder with --series UID (UID: {below[0].uid}"
                + (", ..." if len(below) > 1 else "") + "), or the sub-folder of one") if below else ""
        said = f"{folder} holds no readable DICOM image files"
        if not below:  # a NIfTI or NRRD/MetaImage given by its folder
            files = sorted(p.name for p in folder.iterdir() if p.is_file() and is_non_dicom_volume_file(p))
            if files:
                said += (f"; it holds {', '.join(files[:3])}{' and more' if len(files) > 3 else ''}: give that file "
                         f"as the input ({folder / files[0]})")
        raise UnreadableError(said + hint(True), recorded=said + hint(False))
    info, note = choose_series(found, series, folder)
    vol = read_dicom_series(info, resample)
    if note:  # said with the series' descriptions, recorded without them (report.json's input_warnings)
        warn(vol.meta["warnings"], *note)
    vol.meta["series_in_folder"] = [s.to_dict() for s in found]
    return vol


def read_npy(path, spacing: tuple | None = None) -> Volume:
    """A (Z, Y, X) array; ``spacing`` (z, y, x) mm, default 1 mm with a warning. LPS origin 0, axes
    aligned with L, P, S."""
    path = Path(path)
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)  # the header is checked before any voxel is read
    except (OSError, ValueError) as e:
        why, damaged = _npy_problem(path) or (f"{e}; save the array with numpy.save", True)
        raise (UnreadableError if damaged else InputError)(f"cannot read {path}: {why}") from e
    check_fits_in_memory(volume_shape(data.shape, path, "(Z, Y, X)"), path)  # a 4D array refused as 4D, first
    data = check_voxels(volume_array(np.asarray(data), path, "(Z, Y, X)"), path)
    notes: list[str] = []
    if spacing is None:
        warn(notes, f"{path}: a .npy array has no spacing; assuming 1 mm (convert it with its spacing first: "
                    f"medrecon convert {path.name} {path.stem}.nii.gz --spacing z,y,x)")
        spacing = (1.0, 1.0, 1.0)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise InputError(f"{path}: spacing must be three positive values (z, y, x) in mm, got {spacing}")
    return Volume(data, tuple(float(s) for s in spacing[::-1]),
                  meta={"format": "npy", "source": str(path), "warnings": notes})


def _npy_problem(path: Path) -> tuple[str, bool] | None:
    """Why a .npy file cannot be mapped, with the fix, when its header says (Python objects, truncated data), and
    whether the file is damaged (UnreadableError: a training folder passes it over), else None."""
    try:
        with open(path, "rb") as f:
            read = {(1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0}.get(np.lib.format.read_magic(f))
            shape, _, dtype = read(f)
            offset = f.tell()
    except Exception:  # noqa: BLE001 - not even a header: numpy's own message says more
        return None
    if dtype.hasobject:
        return (f"it holds Python objects (dtype {dtype}), not numbers; save a numeric array, e.g. "
                "numpy.save(path, array.astype(numpy.float32))", False)
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = path.stat().st_size - offset
    if have < need:
        return (f"the file is truncated: its header declares shape {tuple(shape)} of {dtype} ({need} bytes of "
                f"data) but it holds {have} bytes; save the array with numpy.save", True)
    return None


def named_like_a_file(path) -> bool:
    """Whether ``path`` ends in a file suffix (letters only: .txt, .npy, .gz; a folder may be named series.v2), the
    one rule for outputs that are folders."""
    return bool(re.fullmatch(r"\.[A-Za-z]{1,5}", Path(path).suffix))


def output_format(path) -> str:
    """What ``write_volume`` writes at ``path``: 'NIfTI', 'NRRD/MHA' or 'DICOM' (a series in a folder); a path
    named like any other file is refused."""
    name = Path(path).name.lower()
    if is_nifti(name):
        return "NIfTI"
    if name.endswith(ITK_WRITE_SUFFIXES):
        return "NRRD/MHA"
    if named_like_a_file(path):  # out.nii.gzz, out.txt, .dcm, .npy: not a folder for a DICOM series
        raise InputError(f"{path}: medrecon writes .nii/.nii.gz, .nrrd/.mha, or a DICOM series into a "
                         "folder (give a folder path without a suffix, such as out/series)")
    return "DICOM"


def write_volume(vol: Volume, path, overwrite: bool = False, *,
                 series_description: str | None = None, modality: str | None = None,
                 source_meta: dict | None = None, series_number: int | None = None,
                 deidentify: bool = False) -> Path:
    """Write atomically by the path (``output_format``): .nii/.nii.gz -> NIfTI, .nrrd/.mha -> ITK image, any
    other path -> a folder holding a derived DICOM series. ``series_description``: DICOM's SeriesDescription
    (default 'medrecon reconstruction') or NIfTI's descrip (default none); NRRD/MHA store none. NIfTI and NRRD/MHA
    hold the voxels and the geometry only, no tag of the source: ``deidentify`` refuses there a source with
    identifying pixels, as it does for DICOM; the other keyword arguments apply to DICOM only."""
    path = Path(path)
    kind = output_format(path)
    if kind != "DICOM" and deidentify:
        refuse_identifying_pixels(vol.meta.get("dicom", {}) if source_meta is None else source_meta)
    if kind == "NIfTI":
        return write_nifti(vol, path, overwrite, description=series_description)
    if kind != "DICOM":
        return write_itk(vol, path, overwrite)
    return write_dicom_series(vol, path, "medrecon reconstruction" if series_description is None else
                              series_description, source_meta, overwrite,
                              modality=modality, series_number=series_number, deidentify=deidentify)
