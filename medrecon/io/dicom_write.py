"""Writing a Volume as a derived DICOM series: one file per slice, atomic.

* New SeriesInstanceUID and SOPInstanceUIDs; ImageType DERIVED\\SECONDARY; SeriesDescription and
  DerivationDescription name the method.
* Patient and study modules copied from the source series (``Volume.meta['dicom']``); the frame of
  reference too, since the voxels keep the source's patient coordinates. A source without them (NIfTI,
  npy) gets a minimal valid module: PatientName "Anonymous^medrecon", a PatientID of its own (MEDRECON- and 12
  hex digits of its new StudyInstanceUID's hash), new StudyInstanceUID and frame.
* SOP class from the modality: CT Image Storage (so viewers treat values as HU), MR Image Storage, or
  Secondary Capture ("OT") for anything else.
* Stored values int16 with one RescaleSlope/RescaleIntercept for the series: slope 1 intercept 0 when
  the voxels are integers within int16 (exact, e.g. HU), else chosen to span the value range; integers spanning
  at most 65536 values outside int16 (an unsigned MR series) are stored as uint16, slope 1 (exact).
* Per slice: ImagePositionPatient, InstanceNumber, SliceLocation; for all: ImageOrientationPatient,
  PixelSpacing, SliceThickness (the source's, else the slice spacing; MR also SpacingBetweenSlices),
  FrameOfReferenceUID, WindowCenter/WindowWidth (the source's; else soft tissue for CT, the 1st-99th percentile otherwise).
* ``deidentify=True``: the DICOM PS3.15 basic profile for the attributes copied, and a source with identifying
  pixels refused (``medrecon.io.deidentify``, the one home of what de-identification removes and how).
* References to the source series when it was DICOM (``source_meta['SourceImages']``, from ``dicom_read``):
  ReferencedSeriesSequence (Common Instance Reference module: the source series and all its instances) in
  every slice, and per slice a SourceImageSequence naming the source slice nearest along the normal.
"""
from __future__ import annotations

import hashlib
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom.config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, SecondaryCaptureImageStorage, \
    generate_uid
from pydicom.valuerep import format_number_as_ds

from .. import __version__
from ..errors import InputError
from ..volume import Volume
from .atomic import atomic_path, shown_path
from .common import check_voxels
from .deidentify import deidentified, mark_deidentified
from .dicom_scan import MANUFACTURER, PIXEL_FLAGS

SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage}
PATIENT_STUDY_TAGS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
                      "PatientAge", "PatientSize", "PatientWeight", "PatientIdentityRemoved",
                      "DeidentificationMethod", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
                      "AccessionNumber", "ReferringPhysicianName", "StudyDescription")
SERIES_CONTEXT_TAGS = ("BodyPartExamined", "PatientPosition", "Laterality", "PositionReferenceIndicator",
                       *PIXEL_FLAGS)  # the pixels are the source's
# Type 2 attributes (present, may be empty) of the patient, study, series and frame modules.
TYPE2_EMPTY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
               "ReferringPhysicianName", "StudyID", "AccessionNumber", "PositionReferenceIndicator")
# Modality modules: attribute -> value when the source has none.
CT_TAGS = {"KVP": "", "AcquisitionNumber": ""}
#: BodyPartExamined values of unpaired structures (no Laterality: Type 2C, absent for these, empty where the part is
#: paired or unknown), as dicom3tools' dciodvfy decides it
UNPAIRED_BODY_PARTS = frozenset(
    "ABDOMEN ABDOMENPELVIS AORTA BLADDER BRAIN CEREBELLUM CHEST CHESTABDOMEN COCCYX COLON CSPINE CTSPINE DUODENUM "
    "ESOPHAGUS GALLBLADDER HEAD HEADNECK HEART JAW LARYNX LIVER LSPINE LSSPINE MEDIASTINUM MOUTH NECK NECKCHEST NOSE "
    "PANCREAS PELVIS PHARYNX PROSTATE RECTUM SKULL SPINE SPLEEN SSPINE STERNUM STOMACH THYROID TLSPINE TONGUE "
    "TRACHEA TSPINE UTERUS WHOLEBODY".split())
MR_TAGS = {"ScanningSequence": "RM", "SequenceVariant": "NONE", "ScanOptions": "", "MRAcquisitionType": "",
           "EchoTime": "", "EchoTrainLength": "", "RepetitionTime": "", "InversionTime": None,
           "MagneticFieldStrength": None, "ImagedNucleus": None, "FlipAngle": None}


def _source_rescale(src: dict, default_slope=None) -> tuple[float, float] | None:
    """(RescaleSlope, RescaleIntercept) of source tags: finite, slope > 0 (``default_slope`` where it is absent),
    else None."""
    try:
        m, b = float(src.get("RescaleSlope") or default_slope), float(src.get("RescaleIntercept") or 0)
    except (TypeError, ValueError):
        return None
    return (m, b) if np.isfinite(m) and np.isfinite(b) and m > 0 else None


def source_lattice(src: dict) -> tuple[float, float] | None:
    """(slope, intercept) of a source series whose stored values map through a rescale other than whole numbers
    (a Philips MR slope of 2.5: values are multiples of 2.5), else None."""
    mb = _source_rescale(src)
    return mb if mb is not None and (mb[0] != round(mb[0]) or mb[1] != round(mb[1])) else None


def on_lattice(values: np.ndarray, lattice: tuple[float, float]) -> bool:
    """Whether every value is slope * a whole number + intercept (to 1e-3 of a step, or float32's rounding of the
    values where that is more: allclose's relative tolerance let 0.2 of a step pass at 20000 steps)."""
    m, b = lattice
    v = np.asarray(values, np.float64)
    k = (v - b) / m
    tol = max(1e-3, 4 * float(np.finfo(np.float32).eps) * float(np.abs(v).max(initial=0.0)) / abs(m))
    return bool(np.allclose(k, np.round(k), rtol=0, atol=tol))


def mr_stored_scale(src: dict) -> tuple[float, float] | None:
    """An MR DICOM source's stored scale (slope, intercept): its values are whole numbers through it ((1, 0) without
    rescale tags); None for other sources (tags given by hand, a source that was not read from DICOM files, or one
    whose slices have rescales of their own: no one scale holds them all)."""
    if str(src.get("Modality") or "").upper() != "MR" or "SourceImages" not in src or src.get("PerSliceRescale"):
        return None
    return _source_rescale(src, default_slope=1)


def snap_to_lattice(data: np.ndarray, lattice: tuple[float, float]) -> np.ndarray:
    """The nearest values slope * k + intercept, k whole (within half a step of ``data``)."""
    m, b = lattice
    return (np.round((np.asarray(data, np.float64) - b) / m) * m + b).astype(data.dtype)


def decimal_string(x: float) -> str:
    """``x`` as a DICOM DS value of at most 16 characters: pydicom's ``format_number_as_ds``, which rounds
    -99.99999999999989 up to the 17 characters '-100.000000000000' (pydicom 3.0), else fewer significant digits."""
    text = format_number_as_ds(x)
    return text if len(text) <= 16 else next(t for d in range(15, 0, -1) if len(t := f"{x:.{d}g}") <= 16)


def stored_scaling(data: np.ndarray, lattice: tuple[float, float] | None = None) -> tuple[str, str, bool]:
    """(RescaleSlope, RescaleIntercept) as DICOM DS text and whether the stored 16-bit values are signed: "1", "0",
    signed for integer voxels within int16; "1", "0", unsigned for integers within 0..65535 (an unsigned scan: exact,
    and its values as stored); "1", the minimum, unsigned for other integers spanning at most 65536 values; the source's own slope and intercept (``lattice``) where every value lies on
    them (its stored values then come back as they were); else signed, an intercept at mid-range and a slope that
    maps the range into about +-32000."""
    lo, hi = float(data.min()), float(data.max())
    if lattice is not None and on_lattice(data, lattice):
        m, b = lattice
        lo_k, hi_k = (lo - b) / m, (hi - b) / m  # int16, or uint16 when nothing is negative
        if -32768 <= lo_k and hi_k <= 32767 or 0 <= lo_k and hi_k <= 65535:
            return decimal_string(m), decimal_string(b), hi_k <= 32767
    if np.array_equal(data, np.round(data)):
        if -32768 <= lo and hi <= 32767:
            return "1", "0", True
        if 0 <= lo and hi <= 65535:  # stored as the values themselves: a viewer that ignores the rescale still sees them
            return "1", "0", False
        if hi - lo <= 65535:
            return "1", decimal_string(lo), False
    intercept = decimal_string((lo + hi) / 2)
    half = max(hi - float(intercept), float(intercept) - lo)
    return (decimal_string(half / 32000) if half > 0 else "1"), intercept, True


def write_dicom_series(vol: Volume, folder, series_description: str = "medrecon reconstruction",
                       source_meta: dict | None = None, overwrite: bool = False, *,
                       modality: str | None = None, series_number: int | None = None,
                       deidentify: bool = False) -> Path:
    """Write ``vol`` as a derived series into ``folder`` (one file per slice, in z order).

    ``source_meta``: DICOM tags of the source, keyword -> value (default ``vol.meta['dicom']``).
    ``modality``: "CT", "MR" or other (default: the source's, else "OT" as Secondary Capture).
    ``deidentify``: apply the PS3.15 basic profile to what is copied from the source (module docstring).
    """
    folder = Path(folder)
    data = check_voxels(vol.data, shown_path(folder))
    if max(data.shape[1:]) > 65535:  # Rows and Columns are 16-bit (it failed as if the disk were full)
        raise InputError(f"{shown_path(folder)}: slices of {data.shape[1]} x {data.shape[2]} pixels exceed DICOM's "
                         "65535 Rows / Columns; write NIfTI instead, or crop")
    src = dict(vol.meta.get("dicom", {}) if source_meta is None else source_meta)
    modality = str(modality or src.get("Modality") or "OT").upper()
    if not re.fullmatch(r"[A-Z0-9_ ]{1,16}", modality):
        raise InputError(f"modality {modality!r} for {folder}: give a DICOM modality code such as CT, MR or OT")
    scale = mr_stored_scale(src) if modality == "MR" else None
    if scale is not None and not on_lattice(data, scale):  # e.g. an MR series resampled: MR viewers may ignore a
        data = snap_to_lattice(data, scale)                 # rescale, so its values stay on the source's scale
    slope, intercept, signed = stored_scaling(data, source_lattice(src))
    if deidentify:
        src = deidentified(src)
    with pydicom.config.disable_value_validation():  # a source's non-conformant value is copied as it is, and
        ds = _series_dataset(vol, src, modality, series_description, series_number,  # not logged
                             slope, intercept, signed)
    if deidentify:
        mark_deidentified(ds)
    normal = np.cross(vol.direction[:, 0], vol.direction[:, 1])
    width = max(4, len(str(vol.shape[0])))
    sources = src.get("SourceImages") or []
    reverse = _numbered_against_the_source(vol, normal, sources)
    with atomic_path(folder, overwrite, protect=[vol.meta.get("source")], marker=False) as tmp:
        tmp.mkdir()
        for k in range(vol.shape[0]):
            position = vol.world_lps([0, 0, k])
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = vol.shape[0] - k if reverse else k + 1
            ds.ImagePositionPatient = [decimal_string(float(x)) for x in position]
            ds.SliceLocation = decimal_string(float(position @ normal))
            if sources:  # the source slice this one was made from, and (Common Instance Reference) its series
                nearest = _nearest(sources, float(position @ normal))
                ds.SourceImageSequence = [_instance_reference(nearest)]
                if src.get("SeriesInstanceUID"):
                    ds.ReferencedSeriesSequence = [_series_reference(src["SeriesInstanceUID"], [nearest])]
            stored = np.round((data[k].astype(np.float64) - float(intercept)) / float(slope))
            ds.PixelData = (np.clip(stored, -32768, 32767).astype("<i2") if signed else
                            np.clip(stored, 0, 65535).astype("<u2")).tobytes()
            ds.save_as(tmp / f"IM{k + 1:0{width}d}.dcm", enforce_file_format=True)
    return folder


def _series_dataset(vol: Volume, src: dict, modality: str, description: str, series_number,
                    slope: str, intercept: str, signed: bool = True) -> Dataset:
    """Every attribute shared by the slices of the derived series."""
    sop_class = SOP_CLASSES.get(modality, SecondaryCaptureImageStorage)
    now = datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class

    if src.get("StudyInstanceUID"):
        _copy(ds, src, PATIENT_STUDY_TAGS)
    else:  # no source study (NIfTI, npy): a minimal, valid patient/study module, a patient of its own (one
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = generate_uid(), date, time  # PatientID for all put
        ds.PatientName = "Anonymous^medrecon"                        # every such series under one patient in a PACS)
        ds.PatientID = "MEDRECON-" + hashlib.sha256(ds.StudyInstanceUID.encode()).hexdigest()[:12].upper()
        ds.StudyID, ds.StudyDescription = "1", "medrecon"
    ds.Modality = modality
    ds.SeriesInstanceUID = generate_uid()
    number = series_number if series_number is not None else 1000 + _int(src.get("SeriesNumber"))
    ds.SeriesNumber = number if number < 2 ** 31 else 1000  # IS holds 31 bits (2147483600 + 1000 did not)
    ds.SeriesDescription = _one_value(description)[:64]
    ds.SeriesDate, ds.SeriesTime = date, time
    _copy(ds, src, SERIES_CONTEXT_TAGS)
    if modality in SOP_CLASSES and "PatientPosition" not in ds:
        ds.PatientPosition = ""  # type 2C for CT and MR
    if "Laterality" not in ds and str(ds.get("BodyPartExamined") or "").upper() not in UNPAIRED_BODY_PARTS:
        ds.Laterality = ""  # type 2C: a paired or unknown body part, side not known
    ds.FrameOfReferenceUID = src.get("FrameOfReferenceUID") or generate_uid()
    for keyword in TYPE2_EMPTY:
        if keyword not in ds:
            setattr(ds, keyword, "")
    ds.Manufacturer = MANUFACTURER
    ds.SoftwareVersions = __version__

    axial = vol.slice_plane == "axial"  # CT's value 3: AXIAL for transverse slices, else a reformat
    ds.ImageType = ["DERIVED", "SECONDARY"] + {"CT": ["AXIAL" if axial else "REFORMATTED"], "MR": ["OTHER"]}.get(
        modality, [])
    ds.DerivationDescription = _one_value(description)[:1024]
    ds.ContentDate, ds.ContentTime = date, time
    ds.PixelSpacing = [decimal_string(vol.spacing[1]), decimal_string(vol.spacing[0])]
    ds.ImageOrientationPatient = [decimal_string(float(v))
                                  for v in (*vol.direction[:, 0], *vol.direction[:, 1])]
    ds.SliceThickness = decimal_string(vol.spacing[2])  # the spacing, unless the source says how thick
    if modality in ("CT", "MR") and _positive(src.get("SliceThickness")):  # 5 mm slices 7 mm apart stay 5 mm thick
        ds.SliceThickness = src["SliceThickness"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = vol.shape[1], vol.shape[2]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(signed)
    ds.RescaleIntercept, ds.RescaleSlope = intercept, slope
    _window(ds, vol, src, modality)

    if modality == "CT":
        _copy(ds, src, CT_TAGS)
    elif modality == "MR":
        _copy(ds, src, MR_TAGS)
        ds.SpacingBetweenSlices = decimal_string(vol.spacing[2])
    else:  # Secondary Capture
        ds.ConversionType = "WSD"  # workstation
        ds.RescaleType = "US"  # unspecified units
        ds.PatientOrientation = [_direction_letters(vol.direction[:, k]) for k in (0, 1)]
    if any(isinstance(v, str) and not v.isascii() for v in _strings(ds)):
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8
    return ds


def _one_value(text: str) -> str:
    """``text`` as one DICOM string value: a backslash would split it into several, control characters are not
    allowed in LO/ST."""
    return re.sub(r"[\\\x00-\x1f\x7f]", " ", str(text))


def _direction_letters(v) -> str:
    """DICOM's letters for an LPS direction (PatientOrientation): its components' letters, largest first, those
    of 1 % and more of it (a double oblique row: 'LHP'; the largest alone was not always the axis' first letter)."""
    v = np.asarray(v, np.float64)
    order = np.argsort(-np.abs(v), kind="stable")
    return "".join(("LPH"[i] if v[i] > 0 else "RAF"[i]) for i in order if abs(v[i]) >= 0.01 * np.abs(v).max())


def _instance_reference(item: dict) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = item["SOPClassUID"], item["SOPInstanceUID"]
    return ref


def _series_reference(series_uid: str, sources: list[dict]) -> Dataset:
    ref = Dataset()
    ref.SeriesInstanceUID = series_uid
    ref.ReferencedInstanceSequence = [_instance_reference(s) for s in sources]
    return ref


def _numbered_against_the_source(vol: Volume, normal: np.ndarray, sources: list[dict]) -> bool:
    """Whether numbering the slices 1..n in voxel order would run the other way along the normal from the source
    series' InstanceNumbers (a viewer that sorts by them would then scroll the derived series backwards)."""
    numbered = sorted((float(s["Position"]), s["InstanceNumber"]) for s in sources if "InstanceNumber" in s)
    if len(numbered) < 2 or vol.shape[0] < 2 or numbered[0][1] == numbered[-1][1]:
        return False
    along = float((vol.world_lps([0, 0, vol.shape[0] - 1]) - vol.world_lps([0, 0, 0])) @ normal)
    return (numbered[-1][1] > numbered[0][1]) != (along > 0)


#: a CT series' window where the source gives none: soft tissue (centre 40 HU, width 400)
CT_WINDOW = ("40", "400")


def _window(ds: Dataset, vol: Volume, src: dict, modality: str) -> None:
    """WindowCenter/Width a viewer opens the series with: the source's (the derived values are in its units; a
    scanner's presets come along), else soft tissue for CT (the values' percentiles were mostly air: L -406 W 1189),
    else the 1st-99th percentile of the values."""
    centres, widths, explained = (_values(src.get(k)) for k in
                                  ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation"))
    try:
        usable = 0 < len(centres) == len(widths) and all(float(w) >= 1 for w in widths) and \
            all(np.isfinite(float(c)) for c in centres)
    except (TypeError, ValueError):
        usable = False
    if usable:  # a width under 1 (a GE series stores 0 / 0) breaks the standard and viewers, and so do centres
        _copy(ds, src, ("WindowCenter", "WindowWidth"))  # and widths that do not pair up: not copied
        if len(explained) == len(centres):
            _copy(ds, src, ("WindowCenterWidthExplanation",))
        return
    if modality == "CT":
        ds.WindowCenter, ds.WindowWidth = CT_WINDOW
        ds.WindowCenterWidthExplanation = "SOFT TISSUE"
        return
    lo, hi = (float(v) for v in np.percentile(vol.data, [1.0, 99.0]))
    ds.WindowCenter = decimal_string((lo + hi) / 2)
    ds.WindowWidth = decimal_string(max(hi - lo, 1.0))  # the standard wants >= 1


def _values(value) -> list:
    """A source attribute's values as a list (none: [])."""
    if value is None or value == "":
        return []
    return [v for v in value] if isinstance(value, list) else [value]


def _positive(value) -> bool:
    try:
        return value is not None and float(value) > 0
    except (TypeError, ValueError):
        return False


def _nearest(sources: list[dict], position: float) -> dict:
    """The source slice whose position along the normal (mm) is nearest to ``position``."""
    return min(sources, key=lambda s: abs(float(s["Position"]) - position))


def _copy(ds: Dataset, src: dict, tags) -> None:
    """Copy ``tags`` present in ``src``; for a dict of defaults, fill the missing ones (None: omit)."""
    for keyword in tags:
        value = src.get(keyword)
        if value is None and isinstance(tags, dict):
            value = tags[keyword]
        if value is not None:
            setattr(ds, keyword, value)


def _strings(ds: Dataset):
    for elem in ds:
        values = elem.value if isinstance(elem.value, (list, tuple, MultiValue)) else [elem.value]
        yield from (str(v) for v in values if isinstance(v, str) or elem.VR == "PN")


def _int(value) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return 0
