"""NRRD and MetaImage (.nrrd, .nhdr, .mha, .mhd) through SimpleITK, whose geometry is LPS like Volume."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, UnreadableError
from ..volume import Volume
from .atomic import atomic_path
from .common import check_fits_in_memory, check_voxels

ITK_READ_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
ITK_WRITE_SUFFIXES = (".nrrd", ".mha")  # single-file formats, so that the write stays atomic
ITK_IO = {".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO", ".mha": "MetaImageIO", ".mhd": "MetaImageIO"}


def read_itk(path) -> Volume:
    path = Path(path)
    try:
        head = sitk.ImageFileReader()
        head.SetFileName(str(path))
        head.SetImageIO(ITK_IO[path.suffix.lower()])  # named: its lookup is case-exact
        head.ReadImageInformation()  # the size, before the voxels: a volume too large is told as such
        check_fits_in_memory(tuple(head.GetSize()) + (head.GetNumberOfComponents(),), path)
        img = head.Execute()
    except RuntimeError as e:
        raise UnreadableError(f"cannot read {path}: {str(e).strip().splitlines()[-1]}; check the file (and, for "
                         ".mhd/.nhdr, its data file) is complete") from e
    if img.GetNumberOfComponentsPerPixel() != 1 or img.GetDimension() not in (2, 3):
        raise InputError(f"{path}: expected a 2D or 3D scalar image, got {img.GetDimension()}D with "
                         f"{img.GetNumberOfComponentsPerPixel()} components per voxel")
    data = check_voxels(sitk.GetArrayFromImage(img), path)
    spacing, origin = img.GetSpacing(), img.GetOrigin()
    direction = np.array(img.GetDirection(), dtype=np.float64).reshape(img.GetDimension(), -1)
    if img.GetDimension() == 2:  # one slice: embed in 3D
        data, spacing, origin = data[None], (*spacing, 1.0), (*origin, 0.0)
        direction = np.block([[direction, np.zeros((2, 1))], [np.zeros((1, 2)), np.ones((1, 1))]])
    return Volume(data, spacing, origin, direction, {"format": path.suffix.lstrip("."), "source": str(path),
                                                     "warnings": []})


def write_itk(vol: Volume, path, overwrite: bool = False) -> Path:
    path = Path(path)
    if path.suffix.lower() not in ITK_WRITE_SUFFIXES:
        raise InputError(f"{path}: medrecon writes ITK images as {' or '.join(ITK_WRITE_SUFFIXES)}")
    img = sitk.GetImageFromArray(vol.data)
    img.SetSpacing(vol.spacing)
    img.SetOrigin(vol.origin)
    img.SetDirection(tuple(vol.direction.ravel()))
    with atomic_path(path, overwrite, protect=[vol.meta.get("source")]) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)
    return path
