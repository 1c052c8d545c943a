"""Reading DICOM series into a Volume.

* Discovery (:func:`list_series`, in dicom_scan.py) reads headers only.
* Geometry comes from the headers: slices are sorted by their position along the slice normal
  n = row x column direction (ImageOrientationPatient), in LPS like DICOM and ITK; the Volume's z axis
  is n, its origin the ImagePositionPatient of the first slice along n.
* Pixels are decoded by SimpleITK's ImageSeriesReader (GDCM: compressed transfer syntaxes too), which
  applies each slice's RescaleSlope/RescaleIntercept (HU for CT) into float32. GDCM inverts MONOCHROME1
  slices before the rescale; that is undone here, since the modality LUT gives HU whatever the
  Photometric Interpretation (which only says how to display them).
* A Siemens mosaic (one file holding a 3D EPI or diffusion volume as tiles) is unpacked by nibabel, which
  reads its geometry from Siemens' CSA header; a folder of mosaics is a 4D series and is refused.

Bad input is refused with an :class:`InputError` naming the path and the fix (mixed orientations or
sizes, duplicate positions, gantry tilt, non-uniform spacing unless ``resample_nonuniform``);
damaged files are skipped with a warning naming them, and listed ("path (why)") in ``meta['skipped_files']``;
a series none of whose slices decode is an :class:`UnreadableError` (damaged), or an :class:`InputError` naming
what to install where no installed decoder reads its compression (the files may be whole).
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.uid import UID, MediaStorageDirectoryStorage
from pydicom.valuerep import PersonName

from ..errors import InputError, UnreadableError
from ..volume import Volume
from .common import check_fits_in_memory, warn
from .dicom_scan import (SeriesInfo, choose_series, header_kind, image_type, is_dicom_file, is_localizer, list_series,
                         PIXEL_FLAGS, header_int, read_header, refusal, series_uid, sop_class)
from .native_stderr import itk_quiet

__all__ = ["SOURCE_TAGS", "SeriesInfo", "choose_series", "is_dicom_file", "list_series", "read_dicom_series",
           "resample_along_normal"]

# Source tags kept in Volume.meta["dicom"]: what a derived series needs (patient, study, frame of
# reference, series context, acquisition attributes of the CT/MR modules) and nothing else.
SOURCE_TAGS = (
    "SpecificCharacterSet", "SOPClassUID",
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "PatientSize", "PatientWeight", "PatientIdentityRemoved", "DeidentificationMethod",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
    "ReferringPhysicianName", "StudyDescription",
    "Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "BodyPartExamined",
    "PatientPosition", "Laterality",
    "FrameOfReferenceUID", "PositionReferenceIndicator",
    "Manufacturer", "ManufacturerModelName", "SliceThickness", "KVP", "ConvolutionKernel",
    "WindowCenter", "WindowWidth", "WindowCenterWidthExplanation", "RescaleSlope", "RescaleIntercept",
    "ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType", "RepetitionTime",
    "EchoTime", "InversionTime", "EchoTrainLength", "MagneticFieldStrength", "ImagedNucleus",
    "FlipAngle",
)
# Slices may deviate this much (mm) from a uniform grid and still be read as one; dcm2niix warns when
# two gaps differ by more than 0.2 mm. Real scanners round positions (gaps of 6.958-7.071 mm are seen).
SPACING_TOLERANCE_MM = 0.2
HAIR_MM = 0.1  # slices closer than this are two acquisitions of one place (no scanner's slices are this thin)
GAP_RATIO = 1.5  # and no gap may be 1.5x the median or under 1/1.5 of it (a missing slice doubles one)
#: how uneven slices are resampled, for both readers of a refusal: the command line's option and the Python keyword
RESAMPLE_OPTION = "--resample (resample_nonuniform=True in Python)"


def read_dicom_series(series: SeriesInfo | Sequence, resample_nonuniform: bool = False) -> Volume:
    """Read one series (a :class:`SeriesInfo` or a list of its files) into a Volume (HU for CT).

    Non-uniform slice spacing is an error unless ``resample_nonuniform``, which interpolates linearly
    along the slice normal onto a uniform grid from the first slice to the last (``_Stack.resample_step``).
    """
    info = series if isinstance(series, SeriesInfo) else SeriesInfo("", [Path(f) for f in series])
    if not info.files:
        raise InputError("no DICOM files given; give a series folder or its files")
    where = info.folder if info.n_files > 1 else info.files[0]
    notes: list[str] = []
    skipped = list(info.unreadable)  # "path (why)" of each damaged file passed over
    for m in info.unreadable:
        warn(notes, f"skipped unreadable file {m}")
    headers, reason = [], ""
    for f in info.files:
        try:
            ds, failed = read_header(f), None
        except Exception as e:  # noqa: BLE001
            ds, failed = None, f"{type(e).__name__}: {e}"
        if ds is not None and header_kind(ds) == "image":
            headers.append((f, ds))
            continue
        reason = failed or ("not a DICOM file" if ds is None else _not_an_image(ds))  # said only for what is skipped
        if info.n_files > 1:  # one file given: the error below says what it is
            warn(notes, f"skipped unreadable file {f} ({reason})")
        skipped.append(f"{f} ({reason})")
    if not headers and info.n_files == 1 and reason:  # one file given: what it is, not a generic line
        raise UnreadableError(f"{where}: {reason}")
    if not headers:
        raise UnreadableError(f"{where}: no readable DICOM image; check the files are complete DICOM images")
    slices = [(f, ds) for f, ds in headers if not is_localizer(ds)]
    if slices and len(slices) < len(headers):  # a scout filed in the scan's own series: not one of its slices
        scout = next(f for f, ds in headers if is_localizer(ds))
        warn(notes, f"{where}: left out {len(headers) - len(slices)} localizer (scout) image(s) of the series, e.g. "
                    f"{scout.name}")
        headers = slices
    if len({series_uid(ds) for _, ds in headers}) > 1:
        raise InputError(f"{where}: the files belong to several series; read one series at a time "
                         "(medrecon info FOLDER lists them)")
    mosaics = [f for f, ds in headers if _is_mosaic(ds)]
    if mosaics and len(headers) == 1:
        return _read_mosaic(mosaics[0], info, notes, skipped)
    if mosaics:
        raise InputError(f"{where}: {len(mosaics)} Siemens mosaic images, each a whole 3D volume (time points or "
                         f"diffusion directions); read one file, e.g. {mosaics[0]}")

    stack = _Stack.build(headers, where, notes)
    stack.check_uniform(resample_nonuniform, skipped)
    first = stack.headers[0]
    check_fits_in_memory((len(stack.files), header_int(first, "Rows", 0), header_int(first, "Columns", 0)), where)
    data, bad = _read_pixels(stack.files, stack.headers, where, notes)
    if bad:  # damaged pixel data among good headers: skip those slices, re-check the stack
        unread = {b for b, _ in bad}
        headers = [(f, ds) for f, ds in headers if f not in unread]
        if not headers:  # one line, not one per file; a compression no installed decoder reads is no damage
            error = InputError if all(why.startswith(NO_DECODER) for _, why in bad) else UnreadableError
            raise error(f"{where}: no slice could be decoded (e.g. {bad[0][0].name}: {bad[0][1]})")
        for f, reason in bad:
            warn(notes, f"skipped unreadable file {f} ({reason})")
            skipped.append(f"{f} ({reason})")
        stack = _Stack.build(headers, where, [])
        stack.check_uniform(resample_nonuniform, skipped)
        data, bad = _read_pixels(stack.files, stack.headers, where, notes)
        if bad:
            raise InputError(f"{where}: cannot decode {bad[0][0]} ({bad[0][1]})")
    rescale_assumed = _check_rescale(list(zip(stack.files, stack.headers)), where, notes)
    data = _undo_monochrome1(data, stack.headers)
    data = _clear_padding(data, stack.headers, where, notes)

    meta = {"format": "dicom", "source": str(where), "series_uid": series_uid(headers[0][1]),
            "files_sha256": info.files_sha256,
            "dicom": {**_source_tags(stack.headers[0]), **_pixel_flags(stack.headers),
                      "SourceImages": _source_images(stack.headers, stack.positions),
                      **({"PerSliceRescale": True} if len({_rescale(ds) for ds in stack.headers}) > 1 else {})},
            "warnings": notes, "skipped_files": skipped, **({"rescale_assumed": True} if rescale_assumed else {}),
            **({"geometry_assumed": True} if stack.geometry_assumed else {})}
    step = stack.grid_step
    if not stack.uniform:
        data = resample_along_normal(data, stack.positions, step := stack.resample_step)
        meta["resampled_from_positions"] = [round(float(p), 6) for p in stack.positions]
        warn(notes, f"{where}: resampled {len(stack.positions)} unevenly spaced slices onto {data.shape[0]} "
                    f"slices {step:.4g} mm apart from the first slice to the last (median gap {stack.step:.4g} mm; "
                    "linear interpolation along the slice normal)")
    elif stack.deviation > 0.01:
        warn(notes, f"{where}: slice positions deviate up to {stack.deviation:.3g} mm from a uniform "
                    f"{step:.6g} mm grid (within the {SPACING_TOLERANCE_MM} mm tolerance); read as uniform")
    return Volume(data, (stack.pixel_spacing[0], stack.pixel_spacing[1], step),
                  tuple(stack.origin), stack.direction, meta)


def _not_an_image(ds) -> str:
    """What a DICOM file that holds no image is, for a message (a DICOMDIR, a report, a structure set, ...)."""
    sop = sop_class(ds)
    name = UID(sop).name if sop else "no SOP class"
    if sop == MediaStorageDirectoryStorage:
        return "a DICOMDIR, the index of a CD's files: give the folder that holds the images"
    return f"a DICOM file of {name}, not an image" if "Image Storage" not in name else \
        "an image header without its image attributes: a truncated file?"


def _is_mosaic(ds) -> bool:
    return "MOSAIC" in image_type(ds)


def _read_mosaic(path: Path, info: SeriesInfo, notes: list, skipped: list) -> Volume:
    """A Siemens mosaic: one file holding a 3D volume (EPI, diffusion) as a grid of tiles. nibabel unpacks the
    tiles (applying RescaleSlope/Intercept) and finds the volume's geometry from Siemens' private CSA header (tile
    count, slice normal). The rescale is checked as a stack's is (``_check_rescale``: a damaged slope or intercept,
    values that may be beyond ``RESCALED_LIMIT``, decided from the header), and PixelPaddingValue pixels set
    to ``PADDING_FILL`` (``_clear_padding``). A MONOCHROME1 mosaic needs no undo (``_undo_monochrome1`` reverses
    GDCM's inversion, which nibabel's pydicom reading does not make): its values are slope * stored + intercept,
    as a stack's MONOCHROME1 slices' are."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel calls its DICOM readers experimental (a warning on import)
        from nibabel.nicom import dicomwrappers

        try:
            w = dicomwrappers.wrapper_from_file(str(path))
            data = np.asarray(w.get_data(), dtype=np.float32) if w.is_mosaic else None
            affine = np.asarray(w.affine, dtype=float)
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{path}: cannot unpack this Siemens mosaic ({type(e).__name__}: {e}); convert it "
                             "with dcm2niix and use the .nii.gz") from None
    if data is None or data.ndim != 3:
        raise InputError(f"{path}: a Siemens mosaic without the CSA header that gives its tile count; convert it "
                         "with dcm2niix and use the .nii.gz")
    assumed = _check_rescale([(path, w.dcm_data)], path, notes)  # the one file's header bounds its values
    data = np.ascontiguousarray(data.transpose(2, 0, 1))  # (slices, rows, columns)
    # pixels outside the scanned area as a stack's are (after the rescale). No MONOCHROME1 undo: nibabel reads
    # the stored values as pydicom gives them, not inverted as GDCM's are, so slope * stored + intercept already
    data = _clear_padding(data, [w.dcm_data] * len(data), path, notes)
    along_rows, along_cols, along_normal = (affine[:3, k] for k in range(3))  # nibabel: (rows, columns, slices)
    spacing = tuple(float(np.linalg.norm(a)) for a in (along_cols, along_rows, along_normal))
    direction = np.stack([along_cols / spacing[0], along_rows / spacing[1], along_normal / spacing[2]], axis=1)
    ds = w.dcm_data
    meta = {"format": "dicom", "source": str(path), "series_uid": series_uid(ds),
            "files_sha256": info.files_sha256,
            "dicom": {**_source_tags(ds), "SourceImages": _source_images([ds], [0.0])}, "warnings": notes,
            "skipped_files": skipped, **({"rescale_assumed": True} if assumed else {})}
    return Volume(data, spacing, tuple(affine[:3, 3]), direction, meta)


def resample_along_normal(data: np.ndarray, positions: np.ndarray, step: float) -> np.ndarray:
    """Linear interpolation of slices at ascending ``positions`` (mm) onto positions[0] + k*step."""
    count = int(np.floor((positions[-1] - positions[0]) / step + 1e-6)) + 1
    target = positions[0] + step * np.arange(count)
    i = np.clip(np.searchsorted(positions, target, side="right") - 1, 0, len(positions) - 2)
    w = ((target - positions[i]) / (positions[i + 1] - positions[i])).astype(np.float32)[:, None, None]
    return ((1 - w) * data[i] + w * data[i + 1]).astype(np.float32)


@dataclass
class _Stack:
    """The slices of one series sorted along their normal, with the geometry they imply."""

    files: list[Path]
    headers: list
    where: Path
    origin: np.ndarray
    direction: np.ndarray  # columns: row direction, column direction, normal (LPS)
    pixel_spacing: tuple[float, float]  # (x, y) mm
    positions: np.ndarray  # mm along the normal, ascending
    step: float  # slice spacing (median gap) in mm
    geometry_assumed: bool = False  # one slice without patient geometry, placed at the origin (``NO_GEOMETRY``)

    @property
    def gaps(self) -> np.ndarray:
        return np.diff(self.positions)

    @property
    def grid_step(self) -> float:
        """The spacing of the uniform grid through the first and last slice."""
        n = len(self.positions)
        return float(self.positions[-1] - self.positions[0]) / (n - 1) if n > 1 else self.step

    @property
    def resample_step(self) -> float:
        """The spacing ``resample_nonuniform`` interpolates onto: the median gap, adjusted so that a whole number
        of steps runs from the first slice to the last (both kept as they are, the whole extent covered; slices
        at 0, 2, 4, 6, 9, 11 mm lost the last one on a 2 mm grid ending at 10 mm)."""
        extent = float(self.positions[-1] - self.positions[0])
        return extent / max(1, round(extent / self.step))

    @property
    def deviation(self) -> float:
        """How far (mm) the farthest slice lies from that grid."""
        grid = self.positions[0] + self.grid_step * np.arange(len(self.positions))
        return float(np.abs(self.positions - grid).max())

    @property
    def uneven(self) -> str | None:
        """Why the slices are not one uniform stack, or None: a slice farther than SPACING_TOLERANCE_MM from the
        grid, or a gap half as large again as the median or under half of it (a missing or extra slice, which
        in a thin-slice series moves no slice 0.2 mm off the grid through the first and last)."""
        g = self.gaps
        if self.deviation > SPACING_TOLERANCE_MM:
            return f"a slice lies {self.deviation:.3g} mm off a uniform grid, more than the {SPACING_TOLERANCE_MM} " \
                   "mm tolerance"
        if g.size and (g.max() > GAP_RATIO * self.step or g.min() < self.step / GAP_RATIO):
            return f"a gap differs from the median by more than a factor {GAP_RATIO:g}"
        return None

    @property
    def uniform(self) -> bool:
        return self.uneven is None

    def check_uniform(self, resample: bool, skipped: list[str] = ()) -> None:
        """Raise unless the slices are uniform or ``resample``; ``skipped`` ("path (why)" of the damaged files
        passed over), when any, are named as the likely missing slices."""
        why = self.uneven
        if why is None:
            return
        g = self.gaps
        k = int(np.argmin(g))
        wide = g[g >= HAIR_MM]  # a quarter of the other gaps at most: a 0.08 mm series is thin, not two acquisitions
        if g[k] < min(HAIR_MM, (float(np.median(wide)) if wide.size else self.step) / 4):  # a hair apart: two
            # acquisitions, neither missing slices nor a grid to resample on
            raise InputError(
                f"{self.where}: slices lie nearly at one position ({g[k]:.3g} mm between {self.files[k].name} and "
                f"{self.files[k + 1].name}; gaps up to {g.max():.4g} mm): the series holds several acquisitions "
                "(echoes, phases, time points); split them into separate folders or choose another series with "
                "--series")
        if resample:
            return
        k = int(np.argmax(g)) if skipped else int(np.argmax(np.abs(g - self.step)))  # missing files: the widest gap
        if skipped:
            names = ", ".join(Path(m.split(" (", 1)[0]).name for m in skipped[:5])
            raise InputError(
                f"{self.where}: slices are missing where {len(skipped)} damaged file(s) could not be read ({names}"
                f"{', ...' if len(skipped) > 5 else ''}; e.g. {g[k]:.4g} mm between {self.files[k].name} and "
                f"{self.files[k + 1].name}, median gap {self.step:.4g} mm): copy those files again from the "
                f"source, or pass {RESAMPLE_OPTION} to interpolate over the gap")
        raise InputError(
            f"{self.where}: slice spacing is not uniform (gaps {g.min():.4g} to {g.max():.4g} mm, median "
            f"{self.step:.4g} mm; e.g. {g[k]:.4g} mm between {self.files[k].name} and {self.files[k + 1].name}; "
            f"{why}: missing slices?). Pass {RESAMPLE_OPTION} to interpolate linearly onto "
            f"a {self.resample_step:.4g} mm grid along the slice normal, or choose another series with --series")

    @classmethod
    def build(cls, headers: list, where: Path, notes: list) -> "_Stack":
        headers = _without_duplicate_copies(headers, where, notes)
        for f, ds in headers:
            for tag in ("SamplesPerPixel", "NumberOfFrames"):  # a damaged value named here, not taken for 1
                header_int(ds, tag, 1, f)
            if why := refusal(f, ds):  # a dose grid, a colour image, an enhanced image (so says the batch's dry run)
                raise InputError(why)
            _check_geometry_tags(f, ds)
        _same(headers, where, lambda ds: (int(ds.Rows), int(ds.Columns)), "image sizes (Rows, Columns)")
        for tag, fix in (("Modality", "the series mixes images of several kinds; remove the odd files or choose "
                                      "another series with --series"),
                         ("FrameOfReferenceUID", "their positions are in different coordinate frames, so they "
                                                 "cannot be stacked; split the files into one folder per frame of "
                                                 "reference or choose another series with --series")):
            text = lambda ds, tag=tag: str(ds.get(tag) or "").strip()  # noqa: E731
            _same([(f, ds) for f, ds in headers if text(ds)], where, text, tag, fix=fix)  # absent on a slice: not told
        _same(headers, where, lambda ds: _floats(ds.get("PixelSpacing")), "PixelSpacing",  # as written: 0.7, 0.7000001
              close=lambda a, b: np.allclose(a, b, rtol=1e-4, atol=0))                   # (the first slice's is used)
        first = headers[0][1]
        spacing = _floats(first.get("PixelSpacing") or first.get("ImagerPixelSpacing"))
        if spacing is None:
            warn(notes, f"{headers[0][0]}: no PixelSpacing; assuming 1 mm pixels")
            spacing = (1.0, 1.0)
        pixel_spacing = (spacing[1], spacing[0])  # DICOM lists (row spacing = y, column spacing = x)
        geometry = [(_floats(ds.get("ImageOrientationPatient")), _floats(ds.get("ImagePositionPatient")))
                    for _, ds in headers]
        missing = [f for (f, _), (iop, ipp) in zip(headers, geometry) if iop is None or ipp is None]
        if missing and len(headers) == 1:
            warn(notes, f"{missing[0]}: {NO_GEOMETRY}")
            return cls([headers[0][0]], [first], where, np.zeros(3), np.eye(3), pixel_spacing,
                       np.zeros(1), _single_slice_step(first), geometry_assumed=True)
        if missing:
            raise InputError(f"{missing[0]} has no ImagePositionPatient/ImageOrientationPatient, so the "
                             f"slices of {where} cannot be placed in 3D; use a series with patient geometry")
        iop = np.array(geometry[0][0])
        differ = [k for k, (other, _) in enumerate(geometry) if np.abs(np.array(other) - iop).max() > 1e-4]
        if differ:  # the angle tells rounding or a nudged stack (hundredths of a degree) from radial slices
            angles = [_orientation_angle(iop, geometry[k][0]) for k in differ]
            k = differ[int(np.argmax(angles))]
            raise InputError(f"{where}: the slices differ in orientation by up to {max(angles):.3g} degrees "
                             f"(ImageOrientationPatient of {headers[0][0].name}: {iop.tolist()}, of "
                             f"{headers[k][0].name}: {list(geometry[k][0])}): a small angle is rounding or a stack "
                             "re-positioned a little between slices, a large one localizer or radial slices; either "
                             "way not one 3D stack. Choose another series with --series, or resample the slices "
                             "onto one grid with another tool (e.g. dcm2niix, 3D Slicer) and read its output")
        r = iop[:3] / np.linalg.norm(iop[:3])
        c = iop[3:] - (iop[3:] @ r) * r
        if abs(iop[3:] @ r) > 1e-3 * np.linalg.norm(iop[3:]):
            raise InputError(f"{headers[0][0]}: ImageOrientationPatient {iop.tolist()} has non-orthogonal "
                             "row and column directions; the file's geometry is damaged")
        c /= np.linalg.norm(c)
        n = np.cross(r, c)
        pos = np.array([ipp for _, ipp in geometry])
        order = np.argsort(pos @ n, kind="stable")
        pos, files, hdrs = pos[order], [headers[i][0] for i in order], [headers[i][1] for i in order]
        s = pos @ n
        _check_one_acquisition(files, hdrs, s, where)
        gaps = np.diff(s)
        if gaps.size and gaps.min() < 1e-3:
            k = int(np.argmin(gaps))
            raise InputError(f"{where}: {files[k].name} and {files[k + 1].name} lie at the same position "
                             f"({s[k]:.3f} mm along the normal): " + (
                                 "they look like one image exported twice (the same InstanceNumber, echo and "
                                 "acquisition, new SOPInstanceUIDs); keep one export of the series"
                                 if _same_image_tags(hdrs[k], hdrs[k + 1]) else
                                 "the series holds several acquisitions (echoes, phases, time points); split them "
                                 "into separate folders or choose another series with --series"))
        rel = pos - pos[0]
        lateral = float(np.linalg.norm(rel - np.outer(rel @ n, n), axis=1).max())
        extent = float(s[-1] - s[0])
        if lateral > max(SPACING_TOLERANCE_MM, 0.01 + 1e-3 * extent):  # positions rounded to 0.1 mm (an oblique
            tag = first.get("GantryDetectorTilt")                            # MR series) drift that far sideways
            raise InputError(
                f"{where}: gantry tilt of about {np.degrees(np.arctan2(lateral, extent)):.1f} degrees (slice "
                f"positions shift {lateral:.2f} mm sideways over {extent:.1f} mm"
                + (f"; GantryDetectorTilt = {tag}" if tag is not None else "") + "): the slices do not form a "
                "rectangular grid and medrecon does not correct tilt; convert the series with a tool that "
                "does (e.g. dcm2niix) and use the resulting NIfTI")
        step = float(np.median(gaps)) if gaps.size else _single_slice_step(first)
        return cls(files, hdrs, where, pos[0], np.stack([r, c, n], axis=1), pixel_spacing, s, step)


#: tags that tell images of one position apart within a series (echoes, time points). Not AcquisitionNumber or
#: TriggerTime: a Siemens 2D series acquired in concatenations numbers interleaved slice sets as acquisitions, and
#: TriggerTime can hold each slice's time, both within one volume
ACQUISITION_TAGS = ("EchoNumbers", "EchoTime", "TemporalPositionIdentifier")


def _tag_key(ds, tag: str) -> str:
    """A tag's value as compared across slices: as a number where it is one ('22' and '22.0000' are one echo
    time), else as text."""
    value = _floats(ds.get(tag))
    return f"{value[0]:g}" if value and len(value) == 1 else str(ds.get(tag, "")).strip()


def _check_one_acquisition(files: list, headers: list, positions: np.ndarray, where) -> None:
    """Refuse slices of several acquisitions interleaved along the normal (two phases half a slice apart read as
    one stack alternated between them). Acquisitions that follow each other along the normal (a step-and-shoot
    scan's table positions) are one volume and pass."""
    for tag in ACQUISITION_TAGS:
        groups: dict = {}
        for f, ds, z in zip(files, headers, positions):
            key = _tag_key(ds, tag)
            groups.setdefault(key, []).append((z, f))
        if len(groups) < 2:
            continue
        spans = sorted((min(v)[0], max(v)[0], key, v) for key, v in groups.items())
        for (lo_a, hi_a, key_a, a), (lo_b, hi_b, key_b, b) in zip(spans, spans[1:]):
            if lo_b < hi_a - 1e-3:  # the next one starts before this one ends: interleaved
                raise InputError(
                    f"{where}: the slices belong to several acquisitions interleaved along the slice normal "
                    f"({tag} {key_a or 'empty'}: {len(a)} slices, e.g. {a[0][1].name}; {tag} {key_b or 'empty'}: "
                    f"{len(b)} slices, e.g. {b[0][1].name}); split them into separate folders, one per {tag}, and "
                    "read one")


def _same_image_tags(a, b) -> bool:
    """Whether two headers at one position name the same image (InstanceNumber present; it, AcquisitionNumber,
    TriggerTime and the ``ACQUISITION_TAGS`` alike as ``_tag_key`` compares them): a re-export with new UIDs."""
    tags = ("InstanceNumber", "AcquisitionNumber", "TriggerTime", *ACQUISITION_TAGS)
    return a.get("InstanceNumber") is not None and all(_tag_key(a, t) == _tag_key(b, t) for t in tags)


def _without_duplicate_copies(headers: list, where: Path, notes: list) -> list:
    """The headers of copies of one image (the same image twice, as PACS exports hold) dropped: files with the
    same non-empty SOPInstanceUID at the same ImagePositionPatient. (Anonymised series may blank the UID in every
    file, and a broken one may repeat it at different positions: those are distinct slices.)"""
    seen, kept, copies = set(), [], []
    for f, ds in headers:
        uid = str(ds.get("SOPInstanceUID") or "").strip()
        position = _floats(ds.get("ImagePositionPatient"))  # to 0.01 mm: an export may round it differently
        key = (uid, None if position is None else tuple(round(v, 2) for v in position))
        if uid and key in seen:
            copies.append(f)
            continue
        seen.add(key)
        kept.append((f, ds))
    if copies:
        warn(notes, f"{where}: {len(copies)} files repeat another file's SOPInstanceUID (e.g. {copies[0].name}): "
                    "copies of the same image, skipped")
    return kept


def _check_geometry_tags(f: Path, ds) -> None:
    """PixelSpacing and ImagerPixelSpacing (2 positive values each), ImageOrientationPatient (6, two non-zero directions) and
    ImagePositionPatient (3) where present, all finite: else the file's geometry is damaged."""
    for tag, n in (("PixelSpacing", 2), ("ImagerPixelSpacing", 2), ("ImageOrientationPatient", 6),
                   ("ImagePositionPatient", 3)):
        if tag not in ds:
            continue
        v = np.array(_floats(ds.get(tag)) or [], dtype=float)
        bad = v.size != n or not np.isfinite(v).all() or (tag.endswith("PixelSpacing") and (v <= 0).any()) or \
            (tag == "ImageOrientationPatient" and min(np.linalg.norm(v[:3]), np.linalg.norm(v[3:])) < 1e-6)
        if bad:
            raise InputError(f"{f}: {tag} is {ds.get(tag)!r}, not {n} usable numbers; the file's geometry is damaged: "
                             "fix the tag or remove the file")


def _single_slice_step(ds) -> float:
    """A single slice's thickness: |SpacingBetweenSlices| (negative where the slices run against the normal),
    else SliceThickness, else 1 mm."""
    for tag in ("SpacingBetweenSlices", "SliceThickness"):
        value = _floats(ds.get(tag))
        if value and np.isfinite(value[0]) and abs(value[0]) > 0:
            return abs(value[0])
    return 1.0


def _same(headers, where, key, what: str, close=None, fix: str = "choose another series with --series or remove "
          "the odd files") -> None:
    """Refuse slices whose ``key`` differs from the first slice's (``close(a, b)``: what counts as the same)."""
    if not headers:
        return
    first = key(headers[0][1])
    for f, ds in headers[1:]:
        if not (close(key(ds), first) if close and None not in (key(ds), first) else key(ds) == first):
            raise InputError(f"{where}: the slices differ in {what} ({headers[0][0].name}: {first}, "
                             f"{f.name}: {key(ds)}); {fix}")


#: rescaled values beyond this magnitude are no image's (HU, MR signal, PET Bq/ml are far below it) but a damaged
#: the warning of a one-slice read without patient geometry (such a read also sets ``meta['geometry_assumed']``,
#: by which ``dispatch`` tells such a slice from a series' slice)
NO_GEOMETRY = ("no ImagePositionPatient/ImageOrientationPatient; placing the slice at the origin with identity "
               "orientation")

#: RescaleSlope/RescaleIntercept: sums of them overflow float32 (a reconstruction then met "Inf voxels")
RESCALED_LIMIT = 1e30


def _check_rescale(headers, where, notes: list) -> bool:
    """CT requires RescaleSlope/Intercept (HU = slope * stored + intercept); GDCM assumes 1 and 0.
    Refused, naming the file: a slope of 0 (every voxel the intercept), a slope or intercept that is not a finite
    number, a negative slope in CT (HU rise with the stored value) or a slope whose sign differs from the other
    slices', and a rescale whose values (|slope| * 2^BitsStored + |intercept| bounds them, decided from the header
    without scanning the voxels) may be beyond ``RESCALED_LIMIT``. Slices lacking RescaleSlope and/or
    RescaleIntercept (any modality) are refused, naming the tag, when the defaults (slope 1, intercept 0) give them
    a rescale that none of the slices with both tags has (they would lie off their neighbours' values), or when
    those disagree among themselves (which is theirs?);
    read when the defaults give the one rescale of every slice with tags, and in CT with a warning (returning True)
    when no slice has both tags."""
    for f, ds in headers:
        for tag in ("RescaleSlope", "RescaleIntercept"):
            value = _floats(ds.get(tag))
            zero = tag == "RescaleSlope" and value is not None and value[0] == 0
            if tag in ds and (value is None or not np.isfinite(value[0]) or zero):
                raise InputError(f"{f}: {tag} is {ds.get(tag)!r}, which maps every stored value to one (or no) "
                                 f"number; the header is damaged: fix {tag} (usually "
                                 f"{1 if tag == 'RescaleSlope' else 0}) or remove the file")
    ct = str(headers[0][1].get("Modality", "")) == "CT"
    rescale = {f: _rescale(ds) for f, ds in headers}  # (slope, intercept) of each slice, computed once
    slopes = [(f, rescale[f][0]) for f, ds in headers]
    negative = [(f, m) for f, m in slopes if m < 0]
    positive = [(f, m) for f, m in slopes if m > 0]
    if negative and (ct or positive):
        (f, m), other = negative[0], positive[0] if positive else None
        raise InputError(f"{f}: RescaleSlope is {m:g}, " + (
            f"negative while {other[0].name}'s is {other[1]:g}, so this slice's values are inverted against its "
            "neighbours'" if other else "negative, so HU would fall as the stored value rises") +
            "; the header is damaged: fix RescaleSlope or remove the file")
    for f, ds in headers:  # stored values lie within 2^BitsStored: decided from the header
        m, b = rescale[f]
        peak = abs(m) * 2.0 ** header_int(ds, "BitsStored", 16) + abs(b)
        if not peak <= RESCALED_LIMIT:  # NaN fails too
            what = (f"values up to {peak:.3g} (its BitsStored allow), beyond any image's" if np.isfinite(peak)
                    else "values that are not finite")
            raise InputError(f"{f}: RescaleSlope {m:g} and RescaleIntercept {b:g} give {what}; the header is damaged: "
                             "fix RescaleSlope/RescaleIntercept or remove the file")
    lacking = {f: "/".join(t for t in ("RescaleSlope", "RescaleIntercept") if t not in ds) for f, ds in headers}
    missing = [f for f, ds in headers if lacking[f]]
    given = {rescale[f] for f, ds in headers if not lacking[f]}
    if missing and given:  # any modality: slices without the tags beside slices with them
        off = [(f, rescale[f]) for f, ds in headers if lacking[f] and rescale[f] not in given]
        if len(given) == 1 and not off:  # the defaults give what every slice with tags has (a slope of 1 left out)
            return False
        # the defaults (slope 1, intercept 0) put those slices off their neighbours' values, or the slices with
        odd = off or [(f, rescale[f]) for f, ds in headers if lacking[f]]  # tags disagree among themselves
        f, (m0, b0) = odd[0]
        have = " or ".join(f"slope {m:g}, intercept {b:g}" for m, b in sorted(given))
        kind = str(headers[0][1].get("Modality", "") or "DICOM")
        raise InputError(f"{where}: {len(odd)} of {len(headers)} {kind} slices lack {lacking[f]} (e.g. {f.name}: "
                         f"read with slope {m0:g}, intercept {b0:g}) while the others have {have}, so those slices' "
                         "values cannot match their neighbours'; copy the tags from their neighbours or remove the "
                         "files")
    if missing and ct:  # no slice has both tags
        tags = sorted({lacking[f] for f in missing}, key=len, reverse=True)[0]
        warn(notes, f"{where}: {len(missing)} of {len(headers)} CT slices have no {tags} "
                    f"(e.g. {missing[0]}); assuming slope 1 and intercept 0 where absent, so values may not be HU: "
                    "check the value range with `medrecon info`")
        return True
    return False


def _orientation_angle(iop, other) -> float:
    """The largest angle (degrees) between the row directions or the column directions of two
    ImageOrientationPatient values."""
    a, b = np.asarray(iop, float).reshape(2, 3), np.asarray(other, float).reshape(2, 3)
    cos = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).max())


def _undo_monochrome1(data: np.ndarray, headers: list) -> np.ndarray:
    """GDCM turns MONOCHROME1 into MONOCHROME2 by inverting the stored values (unsigned: 2^bits - 1 - v,
    signed: -v - 1) before the rescale; undo it so the values are slope * stored + intercept."""
    for k, ds in enumerate(headers):
        if str(ds.get("PhotometricInterpretation", "")).strip() != "MONOCHROME1":
            continue
        m, b = _rescale(ds)
        inverted_max = _monochrome1_max(ds)
        data[k] = (m * inverted_max + 2 * b) - data[k]
    return data


#: what a pixel outside the scanned area (PixelPaddingValue) becomes: air in HU, nothing in MR
PADDING_FILL = {"CT": -1000.0, "MR": 0.0}
#: CT padding inside this range (HU) is a value the scan itself holds (a padding of stored 0 at intercept -1024
#: is the scanner's -1024 HU floor, also inside the lungs): left as it is
CT_VALUES_HU = (-1024.0, 3071.0)


def _clear_padding(data: np.ndarray, headers: list, where, notes: list) -> np.ndarray:
    """Pixels at the stored PixelPaddingValue (to PixelPaddingRangeLimit where given) set to PADDING_FILL (else
    the lowest other value) where that changes them: outside the scanned area, not a measurement (unsigned padding
    of -2000 HU read as +62512 HU). CT padding at a value scans hold (``CT_VALUES_HU``) stays; CT padding below
    them takes every value below them along (a lossy codec smears the padding's edge into values near it)."""
    count, fills = 0, set()
    for k, ds in enumerate(headers):
        pad, limit = (_stored_value(ds, tag) for tag in ("PixelPaddingValue", "PixelPaddingRangeLimit"))
        if pad is None:
            continue
        m, b = _rescale(ds)
        lo, hi = sorted((m * pad + b, m * (pad if limit is None else limit) + b))
        modality = str(ds.get("Modality", ""))
        if modality == "CT" and CT_VALUES_HU[0] <= lo and hi <= CT_VALUES_HU[1]:
            continue
        hit = (data[k] >= lo - 0.5 * abs(m)) & (data[k] <= hi + 0.5 * abs(m))
        if modality == "CT" and hi < CT_VALUES_HU[0]:
            hit |= data[k] < CT_VALUES_HU[0] - 0.5 * abs(m)
        fill = PADDING_FILL.get(modality)
        if fill is None:  # another modality: the lowest value the slice holds besides the padding
            others = data[k][~hit]
            fill = float(others.min()) if others.size else lo
        hit &= data[k] != fill
        if hit.any():
            data[k][hit] = fill
            count += int(hit.sum())
            fills.add(fill)
    if count:
        warn(notes, f"{where}: {count} pixels at the PixelPaddingValue (outside the scanned area) set to "
                    f"{', '.join(f'{f:g}' for f in sorted(fills))}")
    return data


def _stored_value(ds, tag: str) -> float | None:
    """A padding tag as the stored value it names: written as US on signed data (63536 for -2000), it is the same
    bits read as two's complement."""
    value = _floats(ds.get(tag))
    if value is None:
        return None
    if header_int(ds, "PixelRepresentation", 0):  # the bits of a signed value, as wide as stored or allocated
        for bits in (header_int(ds, "BitsAllocated", 16), header_int(ds, "BitsStored", 16)):
            if value[0] >= 2 ** (bits - 1):
                return value[0] - 2 ** bits
    return value[0]


def _syntax_uid(header) -> UID | None:
    """The transfer syntax of a header as read (its file meta), or None."""
    uid = getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", None)
    return UID(uid) if uid else None


def _transfer_syntax(uid: UID | None) -> str:
    """A transfer syntax named (e.g. 'JPEG 2000 Image Compression (Lossless Only)'), or 'unknown'."""
    return f"{uid.name} ({uid})" if uid else "unknown"


def _read_pixels(files: list[Path], headers: list, where, notes: list) -> tuple[np.ndarray | None,
                                                                           list[tuple[Path, str]]]:
    """(Z, Y, X) float32 after rescale, in the given order (``headers``: the files' headers as read); or the files
    whose pixels cannot be read. SimpleITK reads the series; where it refuses (GDCM refuses a SpacingBetweenSlices
    of 0 and some bit layouts pydicom decodes), each slice on its own, by SimpleITK or else pydicom. What GDCM's
    decoders print on the way is said once, naming the files (``_decoder_printed``)."""
    short = [(f, why) for f, ds in zip(files, headers) if (why := _short_pixel_data(f, ds))]
    if short:  # SimpleITK fills the missing bytes with whatever memory held
        return None, short
    with _itk_names(files) as names:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(names)
        reader.SetOutputPixelType(sitk.sitkFloat32)
        try:
            with itk_quiet(any(_encapsulated(_syntax_uid(ds)) for ds in headers)) as printed:
                data = sitk.GetArrayFromImage(reader.Execute())
            _decoder_printed(where, files, printed, headers[0], notes)
            return data, []
        except RuntimeError:
            pass  # what it printed is printed again while reading the slice it concerns
        read = [(f, *_read_slice(f, name, _syntax_uid(ds))) for f, name, ds in zip(files, names, headers)]
    printed = [(f, line) for f, _, _, lines in read for line in lines]
    _decoder_printed(where, [f for f, _ in printed], [line for _, line in printed], headers[0], notes)
    bad = [(f, why) for f, _, why, _ in read if why]
    return (None, bad) if bad else (np.stack([a for _, a, _, _ in read]).astype(np.float32), [])


def _decoder_printed(where, files: list[Path], printed: list[str], header, notes: list) -> None:
    """Warn once of the lines GDCM's decoders printed on stderr while decoding ``files`` of ``where`` (decoded all
    the same: its JPEG decoder prints a precision it does not take, then retries with the one that does), each
    line once with its count; they reached the terminal bare, naming no file."""
    if not printed:
        return
    said = ", ".join(f'"{line[:200]}"' + (f" ({n} times)" if n > 1 else "")
                     for line, n in list(Counter(printed).items())[:3])
    names = sorted({f.name for f in files})
    which = "it" if names == [Path(where).name] else \
        names[0] if len(names) == 1 else f"{len(names)} of its files (e.g. {names[0]})"
    uid = _syntax_uid(header)
    warn(notes, f"{where}: GDCM's decoder printed {said} while decoding {which}{f' ({uid.name})' if uid else ''} "
                f"and decoded {'it' if len(names) == 1 else 'them'}; if the image looks wrong, {_DECOMPRESS}")


def _short_pixel_data(f: Path, header) -> str:
    """Why an uncompressed file's pixel data hold fewer bytes than its Rows x Columns (x frames) need, or ""
    (``header``: the file's header as read, without its pixels; a compressed file is not read again)."""
    try:
        if header.file_meta.TransferSyntaxUID.is_compressed:
            return ""
        need = (header_int(header, "Rows", 0) * header_int(header, "Columns", 0)
                * header_int(header, "SamplesPerPixel", 1) * header_int(header, "NumberOfFrames", 1)
                * header_int(header, "BitsAllocated", 16) + 7) // 8
        item = pydicom.dcmread(f, defer_size=1024).get_item("PixelData")  # where they start, their bytes unread
        if item is None:
            return ""
        declared = getattr(item, "length", None)  # a small value is read: its header's length
        tell = getattr(item, "file_tell", None)   # a deferred one: where it starts
        have = declared if declared is not None and declared != 0xFFFFFFFF else \
            (f.stat().st_size - tell if tell is not None else need)  # at most: the pixel data and what follows
    except Exception:  # noqa: BLE001 - any other damage is found, and named, where the pixels are decoded
        return ""
    return f"pixel data of at most {have} bytes, fewer than the {need} its Rows x Columns need: a damaged file" \
        if have < need else ""


#: how a slice's reason begins where no installed decoder reads its compression (the files may be whole)
NO_DECODER = "no installed decoder reads"
_DECOMPRESS = "decompress it, e.g. gdcmconv --raw or dcmdjpeg"


#: compressions SimpleITK's own GDCM decodes: a file of one that it failed on is damaged, whatever pydicom lacks
GDCM_DECODES = {pydicom.uid.JPEGBaseline8Bit, pydicom.uid.JPEGExtended12Bit, pydicom.uid.JPEGLossless,
                pydicom.uid.JPEGLosslessSV1, pydicom.uid.JPEGLSLossless, pydicom.uid.JPEGLSNearLossless,
                pydicom.uid.JPEG2000Lossless, pydicom.uid.JPEG2000, pydicom.uid.RLELossless}


@functools.lru_cache(maxsize=None)
def _decoder_to_install(uid: UID | None) -> str:
    """The `pip install ...` of a pydicom plugin that decodes ``f``'s transfer syntax, where neither SimpleITK's
    GDCM (``GDCM_DECODES``) nor an installed pydicom plugin reads it; "" where one of them does (its failure:
    damage) or pydicom knows no decoder for it. Once per transfer syntax."""
    try:
        decoder = get_decoder(uid)
    except Exception:  # noqa: BLE001 - no header, or a transfer syntax pydicom decodes with no plugin at all
        return ""
    if uid in GDCM_DECODES or decoder.is_available:
        return ""
    needs = {plugin: wants for plugin, _, wants in (m.partition(" - requires ") for m in decoder.missing_dependencies)}
    wants = next((needs[p] for p in ("pylibjpeg", "pyjpegls", "gdcm") if p in needs), "")  # pydicom 3: 'a>=2 and b'
    names = [re.split(r"[<>=!~ ]", w.strip())[0] for w in wants.split(" and ")]
    names = [{"gdcm": "python-gdcm"}.get(n, n) for n in names if n and n != "numpy"]
    return f"pip install {' '.join(names)}" if names else "install a pydicom pixel-data plugin for it"


def _read_slice(f: Path, name: str, uid: UID | None) -> tuple[np.ndarray | None, str, list[str]]:
    """One slice's rescaled pixels (Y, X) as GDCM gives them (MONOCHROME1 inverted, see ``_undo_monochrome1``),
    "" and the lines GDCM printed decoding them; or None, why it cannot be decoded (with GDCM's first line) and
    []. Pixels that pydicom decodes where GDCM failed come with [] (GDCM's lines are of a decode not used).
    ``uid``: its transfer syntax, from the header read before."""
    try:
        with itk_quiet(_encapsulated(uid)) as printed:
            return sitk.GetArrayFromImage(sitk.ReadImage(name, sitk.sitkFloat32))[0], "", printed
    except RuntimeError:
        pass
    try:
        ds = pydicom.dcmread(f)
        v = np.asarray(ds.pixel_array, dtype=np.float64)
    except Exception as e:  # noqa: BLE001 - the reason goes into the message
        if install := _decoder_to_install(uid):
            return None, f"{NO_DECODER} its transfer syntax {_transfer_syntax(uid)}: {install}, or {_DECOMPRESS}", []
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        gdcm = f'; GDCM: "{printed[0][:200]}"' if printed else ""
        return None, (f"pixel data cannot be decoded (transfer syntax {_transfer_syntax(uid)}; {why}{gdcm}): a "
                      f"truncated or damaged file, or a compression no installed decoder reads ({_DECOMPRESS})"), []
    if v.ndim != 2:
        return None, f"pixel data of shape {v.shape}, not one grayscale image", []
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":  # as GDCM gives it
        v = _monochrome1_max(ds) - v
    m, b = _rescale(ds)
    return (m * v + b).astype(np.float32), "", []


@contextmanager
def _itk_names(files: list[Path]):
    """File names SimpleITK can open: the files' own, or (for a name that is not UTF-8, e.g. a folder copied
    from a Latin-1 share) links to them in a temporary folder."""
    if all(_utf8(str(f)) for f in files):
        yield [str(f) for f in files]
        return
    with tempfile.TemporaryDirectory(prefix="medrecon-") as tmp:
        names = []
        for k, f in enumerate(files):
            link = Path(tmp) / f"{k:06d}.dcm"
            try:
                link.symlink_to(Path(f).absolute())
            except OSError:  # no symbolic links here (Windows without the privilege): a copy
                shutil.copyfile(f, link)
            names.append(str(link))
        yield names


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _encapsulated(uid: UID | None) -> bool:
    """Whether a transfer syntax's pixels are encapsulated (compressed: JPEG, JPEG-LS, JPEG 2000, RLE, or one
    unknown to pydicom), the only ones GDCM hands to a decoder that prints; the native byte orders (and deflate)
    print nothing. No transfer syntax (no file meta): False."""
    return uid is not None and uid not in pydicom.uid.UncompressedTransferSyntaxes


def _rescale(ds) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept) of a header, 1 and 0 where absent (as GDCM assumes)."""
    return (_floats(ds.get("RescaleSlope")) or (1.0,))[0], (_floats(ds.get("RescaleIntercept")) or (0.0,))[0]


def _monochrome1_max(ds) -> float:
    """The stored value GDCM inverts MONOCHROME1 around: -1 for signed data (-v - 1), else 2^BitsStored - 1."""
    return -1.0 if int(ds.get("PixelRepresentation", 0) or 0) else 2.0 ** int(ds.get("BitsStored", 16) or 16) - 1


def _floats(value):
    if value is None or value == "":
        return None
    try:
        return tuple(float(v) for v in (value if isinstance(value, (list, MultiValue)) else [value]))
    except (TypeError, ValueError):
        return None


def _source_tags(ds) -> dict:
    """The SOURCE_TAGS of ``ds`` as JSON-friendly values (DS/IS kept as their exact text)."""
    out = {}
    for kw in SOURCE_TAGS:
        if kw in ds and ds.data_element(kw).value is not None:
            out[kw] = _plain(ds.data_element(kw).value)
    return out


def _pixel_flags(headers) -> dict:
    """The series' PIXEL_FLAGS: YES where any slice says YES (the first slice's NO hid slices with printed names),
    else the first slice's value where it has one."""
    out = {}
    for kw in PIXEL_FLAGS:
        said = [str(ds.get(kw, "") or "").strip().upper() for ds in headers]
        if "YES" in said:
            out[kw] = "YES"
        elif said[0]:
            out[kw] = said[0]
    return out


def _source_images(headers, positions) -> list[dict]:
    """SOP class, SOP instance UID and position along the normal (mm) of every source image, in stack order:
    what a derived series references (``dicom_write``: SourceImageSequence, ReferencedSeriesSequence)."""
    out = []
    for ds, p in zip(headers, positions):  # an anonymised file may keep its UIDs in the file meta only
        meta = getattr(ds, "file_meta", None) or {}
        uid = str(ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID") or "")
        if uid:
            out.append({"SOPClassUID": sop_class(ds),
                        "SOPInstanceUID": uid, "Position": round(float(p), 4), **_instance_number(ds)})
    return out


def _instance_number(ds) -> dict:
    """{"InstanceNumber": n} where the header holds a readable one (the derived series numbers its slices the
    same way round), else {}."""
    try:
        return {"InstanceNumber": int(ds.InstanceNumber)} if ds.get("InstanceNumber") not in (None, "") else {}
    except (TypeError, ValueError):
        return {}


def _plain(v):
    if isinstance(v, (list, MultiValue)):
        return [_plain(x) for x in v]
    if isinstance(v, (int, float)) and type(v) not in (int, float):  # pydicom DS/IS: keep the text
        return str(v)
    if isinstance(v, PersonName):
        return str(v)
    return v if isinstance(v, (int, float)) else str(v)
