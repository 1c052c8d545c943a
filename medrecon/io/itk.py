"""NRRD and MetaImage (.nrrd, .nhdr, .mha, .mhd) through SimpleITK, whose geometry is LPS like Volume."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, UnreadableError
from ..volume import Volume
from .atomic import atomic_path, header_text, with_data_files
from .common import check_fits_in_memory, check_voxels, warn
from .native_stderr import itk_quiet

ITK_READ_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
ITK_WRITE_SUFFIXES = (".nrrd", ".mha")  # single-file formats, so that the write stays atomic
ITK_IO = {".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO", ".mha": "MetaImageIO", ".mhd": "MetaImageIO"}


def read_itk(path) -> Volume:
    path = Path(path)
    header = header_text(path)  # read once: the data file it names, and whether it gives the spacing
    for data_file in with_data_files(path, header)[1:]:  # a detached header (.mhd, .nhdr) names the file of its voxels
        if not data_file.exists():
            raise UnreadableError(f"{path}: its data file {data_file.name} does not exist (the header names it); "
                                  "copy it beside the header, or give the file that holds the voxels")
    printed: list = []
    try:
        # MetaImage says why on fd 2 (the exception then holds a stale errno), so its reads capture fd 2; NRRD's
        # reasons (teem's [nrrd] lines) come in the exception, so fd 2 is left alone (other threads' lines kept)
        with itk_quiet(capture=path.suffix.lower() in (".mha", ".mhd")) as printed:
            head = sitk.ImageFileReader()
            head.SetFileName(str(path))
            head.SetImageIO(ITK_IO[path.suffix.lower()])  # named: its lookup is case-exact
            head.ReadImageInformation()  # the size, before the voxels: a volume too large is told as such
            check_fits_in_memory(tuple(head.GetSize()) + (head.GetNumberOfComponents(),), path)
            img = head.Execute()
    except RuntimeError as e:
        raise UnreadableError(f"cannot read {path}: {_itk_reason(str(e), printed)}; check the file (and, for "
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
    notes: list = []
    lengths = np.linalg.norm(direction, axis=0)
    unit = direction / np.where(lengths > 0, lengths, 1)
    if lengths.min() == 0 or np.abs(unit.T @ unit - np.eye(3)).max() > 1e-4:  # ITK keeps a sheared grid as it is
        raise InputError(f"{path}: its voxel axes are not orthogonal (a sheared grid: the header's space directions "
                         "or TransformMatrix); resample the image onto an orthogonal grid first")
    if np.abs(lengths - 1).max() > 1e-4:  # a scaled TransformMatrix (2 0 0 0 2 0 0 0 2): ITK places the voxels
        spacing = tuple(float(s) for s in np.multiply(spacing, lengths))  # lengths x spacing apart along unit axes
        warn(notes, f"{path}: its direction columns are not of unit length (lengths "
                    f"{', '.join(f'{v:g}' for v in lengths)}: the header's TransformMatrix or space directions); "
                    f"their lengths are taken into the voxel spacing, {', '.join(f'{v:g}' for v in spacing)} mm "
                    "(x, y, z)")
    direction = unit  # (a rotation written to 4 digits: its columns' lengths 0.9999 to rounding)
    if not _header_gives_spacing(path, header):
        warn(notes, f"{path}: its header gives no voxel spacing; assuming 1 mm (add it to the header, "
                    + ("`spacings: X Y Z` for NRRD" if path.suffix.lower() in (".nrrd", ".nhdr") else
                       "`ElementSpacing = X Y Z` for MetaImage") + ", or convert it from a file that holds it)")
    return Volume(data, spacing, origin, direction, {"format": path.suffix.lstrip("."), "source": str(path),
                                                     "warnings": notes})


def _itk_reason(error: str, printed: list) -> str:
    """Why SimpleITK could not read a file, in one line: MetaImage's own line on fd 2 (``printed``; its exception
    ends in a stale "No such file or directory"), NRRD's innermost ``[nrrd]`` line, or ITK's first error line."""
    said = " ".join(" ".join(printed).split())
    short = re.search(r"ideal = (\d+) : actual = (\d+)", said)
    if short:
        return f"its voxel data is truncated ({short[2]} of the {short[1]} bytes its header declares)"
    if said:
        return said
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    nrrd = [line for line in lines if line.startswith("[nrrd]")]
    if nrrd:
        return nrrd[-1]
    first = next((line for line in lines if "ITK ERROR:" in line), lines[-1] if lines else error)
    first = re.sub(r"^.*?ITK ERROR: [^:]*\): ", "", first)
    return first.split(" Refusing to change")[0]


_SPACING_FIELD = re.compile(r"^(?:spacings|space directions)\s*:|^\s*Element(?:Spacing|Size)\s*=",
                            re.IGNORECASE | re.MULTILINE)


def _header_gives_spacing(path: Path, head: str | None) -> bool:
    """Whether a NRRD/MetaImage header (``head``: its ``header_text``) states the voxel spacing (without it
    SimpleITK reads 1 mm)."""
    if head is None:
        return True
    if path.suffix.lower() in (".nrrd", ".nhdr"):
        head = re.split(r"\r?\n\r?\n", head, maxsplit=1)[0]  # the header ends at the first blank line
    else:
        head = re.split(r"^\s*ElementDataFile\s*=.*$", head, maxsplit=1, flags=re.MULTILINE)[0]
    return bool(_SPACING_FIELD.search(head))


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
