"""NIfTI (.nii, .nii.gz) through nibabel.

NIfTI world coordinates are RAS and its array axes are (i, j, k) = (x, y, z); the Volume keeps LPS and
(Z, Y, X). So reading transposes the array and flips the sign of the first two world rows of the affine
(``Volume.from_affine_ras``), and writing does the reverse (``Volume.affine_ras``). Voxel order is kept
as stored (no reorientation), so each voxel keeps its world position exactly.
"""
from __future__ import annotations

import gzip
import logging
import re
import threading
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InputError, UnreadableError
from ..volume import Volume
from .atomic import atomic_path, shown_path
from .common import check_fits_in_memory, check_voxels, log, volume_array, volume_shape, warn
from .dicom_scan import is_dicom_file

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def is_nifti_pair(path) -> bool:
    """A NIfTI-1/-2 pair or Analyze 7.5 image (NAME.hdr + NAME.img, as SPM writes them): a .hdr or .img whose .hdr
    is a binary header (sizeof_hdr 348 or 540, either byte order), not BART's text header of the same suffix."""
    p = Path(path)
    if p.suffix.lower() not in (".hdr", ".img"):
        return False
    return _sizeof_hdr(p.with_suffix(".HDR" if p.suffix.isupper() else ".hdr")) is not None  # as read_cfl pairs


def _sheared(affine) -> bool:
    """True where the affine's voxel axes are not orthogonal (beyond float32 header rounding)."""
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    unit = m / np.linalg.norm(m, axis=0)
    return bool(np.abs(unit.T @ unit - np.eye(3)).max() > 1e-4)


def _degenerate(affine) -> bool:
    a = np.asarray(affine, dtype=np.float64)
    return not np.all(np.isfinite(a)) or bool(np.any(np.linalg.norm(a[:3, :3], axis=0) == 0))


def _sizeof_hdr(path: Path) -> int | None:
    """The header's first int32 (348: NIfTI-1, 540: NIfTI-2), in either byte order; None if unreadable."""
    try:
        with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    values = {int.from_bytes(head, "little"), int.from_bytes(head, "big")} & {348, 540}
    return values.pop() if len(head) == 4 and values else None


#: (what its first bytes say a file is, its suffix, the bytes at offset 0): files nibabel cannot read under a NIfTI
#: name, told apart from damaged NIfTI ("check that the file is complete" sent users looking for damage); DICOM is
#: told by ``dicom_scan.is_dicom_file``
OTHER_FORMATS = (("a NumPy array", ".npy", b"\x93NUMPY"), ("an NRRD file", ".nrrd", b"NRRD"),
                 ("a MetaImage header", ".mhd", b"ObjectType"))


def _other_format(path: Path) -> tuple[str, str] | None:
    """(what it is, the suffix to give it) when the file is DICOM or its first bytes are another format's, else
    None."""
    try:
        with open(path, "rb") as f:
            head = f.read(10)
    except OSError:
        return None
    if is_dicom_file(path):
        return "a DICOM file", ".dcm"
    return next(((what, suffix) for what, suffix, magic in OTHER_FORMATS if head.startswith(magic)), None)


def _one_line(error) -> str:
    """A library's message in one line (nibabel's can end in "\\n - could the file be damaged?")."""
    return " ".join(str(error).replace("\n - could the file be damaged?", "").split())


#: one swap of nibabel's logger handlers at a time (threads reading NIfTI at once restored each other's)
_NIBABEL_LOG_LOCK = threading.Lock()


@contextmanager
def _nibabel_fixes():
    """Yield a list that takes the problems nibabel's header check logs while it mends them (``pixdim[1,2,3] should
    be non-zero; setting 0 dims to 1``), kept from the terminal, where they appeared twice naming no file."""
    logger = logging.getLogger("nibabel.global")
    said: list = []

    class Keep(logging.Handler):
        def emit(self, record):
            said.append(" ".join(record.getMessage().split()))
    with _NIBABEL_LOG_LOCK:
        handlers, propagate = logger.handlers[:], logger.propagate
        logger.handlers, logger.propagate = [Keep(logging.WARNING)], False  # not its INFO notes (qfac)
        try:
            yield said
        finally:
            logger.handlers, logger.propagate = handlers, propagate


def read_nifti(path) -> Volume:
    """Read a 3D NIfTI (2D: one slice; 4D only with one volume; a NIfTI-1 or Analyze .hdr/.img pair too) into a
    Volume in LPS."""
    path = Path(path)
    fixed: list = []
    try:
        with _nibabel_fixes() as fixed:  # what nibabel mends in the header, said below naming the file
            if path.name.lower().endswith((".nii", ".nii.gz")) and not path.name.endswith((".nii", ".nii.gz")):
                held = nib.FileHolder(str(path))  # nib.load knows only lower-case suffixes (and .NII / .NII.GZ)
                kind = nib.Nifti2Image if _sizeof_hdr(path) == 540 else nib.Nifti1Image
                img = kind.from_file_map({"header": held, "image": held})
            else:
                img = nib.load(str(path))
        check_fits_in_memory(volume_shape(img.shape, path, "(X, Y, Z)"), path)  # 4D refused as such, first
        if img.get_data_dtype().kind in "iufb":
            data = img.get_fdata(dtype=np.float32)  # applies scl_slope / scl_inter
        else:  # complex or RGB: refused by check_voxels below
            data = np.asanyarray(img.dataobj)
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"{path}: the volume of shape {img.shape} does not fit in memory; crop or downsample it "
                         "first, or use a machine with more memory") from None
    except nib.spatialimages.HeaderDataError as e:  # whole, but of a kind medrecon does not read
        if re.search(r"slope|intercept", str(e), re.IGNORECASE):  # a NaN scl_inter beside a valid scl_slope
            raise UnreadableError(f"{path}: its scaling is invalid ({_one_line(e)}); fix scl_slope and scl_inter "
                                  "in the header (1 and 0: no scaling)") from e
        raise InputError(f"cannot read NIfTI {path}: {_one_line(e)}; convert it to a numeric data type (e.g. "
                         "float32) first") from e
    except Exception as e:  # noqa: BLE001  (nibabel raises many kinds on damaged files)
        if other := _other_format(path):  # a whole file of another format under a NIfTI name: not damage
            raise UnreadableError(f"{path}: {other[0]}, not NIfTI as its name says; rename it to {other[1]} and "
                                  "give it again") from None
        short = re.search(r"Expected (\d+) bytes, got (\d+) bytes", str(e))
        why = (f"the file is truncated: its header declares {short[1]} bytes of voxel data but it holds {short[2]}"
               if short else _one_line(e))
        raise UnreadableError(f"cannot read NIfTI {path}: {why}; check that the file is complete") from e
    notes: list = []
    for said in fixed:
        warn(notes, f"{path}: {said} (nibabel mended the header as it read it; fix the header so that it says "
                    "what the voxels are)")
    data = check_voxels(volume_array(data, path, "(X, Y, Z)"), path)
    header = img.header
    codes = {k: int(header[k]) if k in header else 0 for k in ("sform_code", "qform_code")}  # Analyze: neither
    affine = np.asarray(img.affine, dtype=np.float64)
    sform, qform = (np.asarray(getattr(img, f"get_{k}")(), np.float64) if codes[f"{k}_code"] else None
                    for k in ("sform", "qform"))  # Analyze has neither
    bad = "degenerate (a voxel axis of length 0)" if _degenerate(affine) else \
        "sheared (voxel axes not orthogonal)" if _sheared(affine) else None
    if bad and codes["qform_code"] and not _degenerate(qform):  # a qform is a rotation: never sheared; as ITK does
        affine = qform
        warn(notes, f"{path}: its sform is {bad}; its qform is used instead, and the outputs carry the qform as both")
    elif _degenerate(affine):
        raise InputError(f"{path}: the NIfTI affine {affine[:3].tolist()} is degenerate; fix the header "
                         "(sform/qform) before use")
    elif bad:  # only an sform can be sheared
        raise InputError(f"{path}: the NIfTI affine is sheared (voxel axes not orthogonal); resample the image "
                         "onto an orthogonal grid first")
    if not any(codes.values()) and not np.allclose(affine, header.get_base_affine()):
        codes = {}  # an Analyze image with SPM's .mat: a real geometry (the outputs carry it as scanner, code 1)
    elif not any(codes.values()):
        warn(notes, f"{path}: neither sform nor qform is set, so where the volume lies and which way is left are "
                    "unknown; nibabel's default grid is used (outputs keep the codes at 0)")
    elif all(codes.values()) and not bad and (apart := np.abs(sform - qform).max()) > 1e-3:
        warn(notes, f"{path}: its sform and qform disagree (largest difference {apart:.3g} mm); the sform is used, "
                    "as nibabel does")
    unit = header.get_xyzt_units()[0] if hasattr(header, "get_xyzt_units") else "mm"  # Analyze: mm
    scale = {"meter": 1000.0, "micron": 1e-3}.get(unit, 1.0)  # 'mm' or 'unknown': mm, as the standard says
    if scale != 1.0:
        affine[:3] *= scale
        warn(notes, f"{path}: spatial units are {unit}s; converted to mm")
    meta = {"format": "nifti", "source": str(path), "warnings": notes, "nifti": codes}
    return Volume.from_affine_ras(np.ascontiguousarray(data.transpose(2, 1, 0)), affine, meta)


def nifti_descrip(text: str, path) -> bytes:
    """``text`` as a NIfTI descrip: UTF-8, 80 bytes at most (a longer text is cut, with a warning)."""
    raw = text.encode("utf-8")
    if len(raw) > 80:
        raw = raw[:80].decode("utf-8", "ignore").encode("utf-8")  # not within a character
        log.warning(f"{shown_path(path)}: the description is {len(text.encode())} bytes, NIfTI's descrip holds 80: "
                    f"cut to {raw.decode()!r}")
    return raw


def write_nifti(vol: Volume, path, overwrite: bool = False, description: str | None = None) -> Path:
    """Write float32 voxels with the Volume's affine (RAS) as sform and qform; atomic. A new header: nothing of
    the source's but the geometry; ``description``: its descrip (``nifti_descrip``)."""
    path = Path(path)
    if not is_nifti(path):
        raise InputError(f"{path}: a NIfTI file name ends in .nii or .nii.gz")
    data = check_voxels(vol.data, shown_path(path))  # NaN / Inf: a file no reader here would take back
    img = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), vol.affine_ras)
    codes = vol.meta.get("nifti", {})
    sform, qform = codes.get("sform_code"), codes.get("qform_code")
    # each form's code as read; one that was 0 takes the other's (a file with only an MNI sform, code 4, kept
    # its qform labelled 1, scanner coordinates); neither read (another format): 1, scanner; both 0: 0
    img.set_sform(vol.affine_ras, code=sform or qform or (0 if sform == qform == 0 else 1))
    img.set_qform(vol.affine_ras, code=qform or sform or (0 if sform == qform == 0 else 1))
    img.header.set_xyzt_units("mm")
    if description:
        img.header["descrip"] = nifti_descrip(description, path)
    with atomic_path(path, overwrite, protect=[vol.meta.get("source")]) as tmp:
        nib.save(img, str(tmp))
    return path
