"""Finding volumes under files and folders (training data): volume files, and DICOM series folders."""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .dicom_scan import is_dicom_file
from .itk import ITK_READ_SUFFIXES
from .nifti import is_nifti

TRAINING_VOLUME_SUFFIXES = (".npy",) + tuple(ITK_READ_SUFFIXES)


def is_training_volume_file(path) -> bool:
    """A file a folder of training data offers as one volume, by its name: NIfTI, NRRD/MetaImage or .npy (DICOM
    files are found by content, as series folders). Unlike ``dispatch.is_volume_file`` (the formats ``read_volume``
    reads as images) it takes .npy, which training reads as a volume, and leaves out NIfTI/Analyze pairs, whose
    .hdr and .img would be listed as two volumes."""
    name = Path(path).name.lower()
    return is_nifti(name) or name.endswith(TRAINING_VOLUME_SUFFIXES)


def find_volume_paths(paths) -> list[Path]:
    """Expand files and folders into volume paths: volume files (NIfTI, NRRD/MetaImage, .npy) and folders
    that directly hold DICOM files (one series folder each); folders are searched recursively, hidden
    entries skipped. A file given explicitly is kept whatever its name."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise InputError(f"{p}: no such file or folder (training data must be DICOM series folders or "
                             "volume files: NIfTI, NRRD, MetaImage)")
        if p.is_file():
            out.append(p)
            continue
        files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        vols = [f for f in files if is_training_volume_file(f)]
        out += vols
        if any(f.suffix.lower() == ".dcm" or is_dicom_file(f) for f in files if f not in vols):
            out.append(p)
        out += find_volume_paths(sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")))
    return out


__all__ = ["find_volume_paths", "is_training_volume_file"]
