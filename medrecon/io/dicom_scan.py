"""Finding DICOM series on disk: headers only (pydicom), so that every series can be described and every
damaged file named. Symbolic links to folders are followed (each real folder once, so a link loop ends)."""
from __future__ import annotations

import hashlib
import logging
import os
import warnings as _warnings
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import convert_raw_data_element
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID, MediaStorageDirectoryStorage

from ..errors import InputError
from .atomic import os_reason

_SCAN_TAGS = ["SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID", "Modality", "SeriesDescription", "Rows",
              "Manufacturer", "ImageType", "SamplesPerPixel", "PhotometricInterpretation", "ImagePositionPatient",
              "ImageOrientationPatient", "NumberOfFrames", "PerFrameFunctionalGroupsSequence",
              "SharedFunctionalGroupsSequence"]
#: modalities of series that hold no volume to reconstruct: images of no anatomy (dose grids, segmentations, portal
#: images) and objects without an image (structure sets, plans, reports, key objects, presentation states, PDFs,
#: registrations, treatment records, ...). The one rule for every command (``modality_not_a_volume``): the reader
#: refuses such an image, ``batch`` passes it over, ``pacs run`` does not retrieve such a series (its C-FIND Modality)
NOT_VOLUME_MODALITIES = {"SR", "RTDOSE", "RTSTRUCT", "RTPLAN", "RTIMAGE", "SEG", "PR", "KO", "DOC", "REG",
                         "RTRECORD", "RTINTENT", "RTRAD", "RTSEGANN", "PLAN", "RWV", "FID", "CTPROTOCOL"}
#: modalities of projection images (radiographs, mammograms, angiograms, fluoroscopy): each file is an image of its
#: own, not a slice of a volume
PROJECTION_MODALITIES = {"DX", "CR", "MG", "XA", "RF", "IO", "PX", "DG"}
#: flags saying an image's pixels identify the patient (printed names, a face): copied, and refused by de-identification
PIXEL_FLAGS = ("BurnedInAnnotation", "RecognizableVisualFeatures")
MANUFACTURER = "medrecon"  # the Manufacturer of every series medrecon writes (medrecon.io.dicom_write)


@dataclass
class SeriesInfo:
    """One DICOM image series found on disk."""

    uid: str  # SeriesInstanceUID
    files: list[Path]
    description: str = ""
    modality: str = ""
    study_uid: str = ""
    unreadable: list[str] = field(default_factory=list)  # damaged files seen in the same folder(s)
    made_by_medrecon: bool = False  # a derived series medrecon wrote (its first file's Manufacturer and ImageType)
    not_a_volume: str = ""  # why none of its images is a slice of a volume (localizers, screenshots, ...), or ""
    refused: str = ""  # why reading it will be refused from its headers alone (``refusal``: an enhanced image), or ""

    @property
    def n_files(self) -> int:
        return len(self.files)

    def label(self, descriptions: bool = True, why: bool = True, name: str | None = None) -> str:
        """'UID (n files, MODALITY 'SeriesDescription', why it is not a volume)', as notes and errors list a series:
        ``name`` in place of the UID, the SeriesDescription only where ``descriptions`` (a recorded warning leaves it
        out: it may name the patient), ``not_a_volume`` only where ``why``."""
        return (f"{self.uid if name is None else name} ({self.n_files} files, {self.modality}"
                + (f" '{self.description}'" if descriptions else "")
                + (f", {self.not_a_volume}" if why and self.not_a_volume else "") + ")")

    @property
    def folder(self) -> Path:
        return Path(os.path.commonpath([f.parent for f in self.files])) if self.files else Path()

    @property
    def files_sha256(self) -> str:
        """SHA-256 of the sorted file names (relative to the series folder) and sizes: changes when a file of
        the series is added, removed or replaced by one of another size."""
        h = hashlib.sha256()
        for f in sorted(self.files):
            h.update(os.fsencode(os.path.relpath(f, self.folder)) + f"\0{f.stat().st_size}\n".encode())  # any name
        return h.hexdigest()

    def to_dict(self) -> dict:
        return {"uid": self.uid, "n_files": self.n_files, "description": self.description,
                "modality": self.modality, "study_uid": self.study_uid, "folder": str(self.folder),
                "unreadable": list(self.unreadable), "made_by_medrecon": self.made_by_medrecon}


def list_series(folder, recursive: bool = False, problems: list | None = None,
                others: list | None = None) -> list[SeriesInfo]:
    """Every DICOM image series in ``folder`` (and its sub-folders when ``recursive``), largest first.

    Files that are not DICOM (and hidden files) are ignored; DICOM files too damaged to read are listed
    in ``SeriesInfo.unreadable`` of every series sharing their folder. ``problems``, when given, gets
    (folder, why) for each folder that could not be listed or whose DICOM files are all damaged: series that
    may be there but cannot be found. ``others``, when given, gets the Modality of each DICOM object that is no
    image (a structure set, a report; "" where it has none).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; give the folder that holds the DICOM files")
    found: dict[str, SeriesInfo] = {}
    damaged: dict[Path, list[str]] = {}
    for path in visible_files(folder, recursive, problems):
        if path.suffix.lower() == ".dcm" and path.stat().st_size == 0:  # named as DICOM, but nothing in it
            damaged.setdefault(path.parent, []).append(f"{path} (an empty file)")
            continue
        try:
            ds = read_header(path, specific_tags=_SCAN_TAGS)
        except Exception as e:  # noqa: BLE001  (any parse failure means a damaged file)
            damaged.setdefault(path.parent, []).append(f"{path} ({type(e).__name__}: {e})")
            continue
        kind = header_kind(ds)
        if kind == "other" and ds is not None and others is not None:
            others.append(str(ds.get("Modality", "") or ""))
        if kind == "damaged":
            damaged.setdefault(path.parent, []).append(f"{path} (incomplete header: truncated file?)")
        elif kind == "image":
            uid = series_uid(ds)
            key = (uid, None if uid else path.parent)  # anonymised files without a UID: one series per folder
            why = not_a_volume(ds)
            if key not in found:
                found[key] = SeriesInfo(uid, [], dicom_text(ds.get("SeriesDescription")),
                                        str(ds.get("Modality", "") or ""), str(ds.get("StudyInstanceUID", "") or ""),
                                        made_by_medrecon=made_by_medrecon(ds), not_a_volume=why)
            found[key].files.append(path)
            if not is_localizer(ds):  # the reader leaves a series' scouts out before it refuses anything
                found[key].refused = found[key].refused or refusal(path, ds)
            found[key].not_a_volume = found[key].not_a_volume and why  # a scout filed in a scan's series: a scan
    with_series = {f.parent for info in found.values() for f in info.files}
    for info in found.values():
        info.unreadable = sorted(m for d in {f.parent for f in info.files} for m in damaged.get(d, []))
    if problems is not None:
        problems.extend((d, f"none of its {len(m)} DICOM file(s) can be read, e.g. {m[0]}")
                        for d, m in sorted(damaged.items()) if d not in with_series)
    return sorted(found.values(), key=lambda s: (-s.n_files, s.uid, str(s.folder)))


def candidates(all_series: list[SeriesInfo]) -> list[SeriesInfo]:
    """The series that may be volumes (not scouts, screenshots, ...: ``not_a_volume``), largest first; all of them
    where none may."""
    return [s for s in all_series if not s.not_a_volume] or all_series


def tied(all_series: list[SeriesInfo]) -> bool:
    """Whether the largest two candidates have as many files (reading the folder then needs a series named)."""
    volumes = candidates(all_series)
    return len(volumes) > 1 and volumes[0].n_files == volumes[1].n_files


def series_listing(all_series: list[SeriesInfo], descriptions: bool = True) -> str:
    """The series of a folder as notes and errors list them: UID, files, modality and (``descriptions``) the
    SeriesDescription, which a recorded warning leaves out (it may name the patient: 'Topogram Doe Jane')."""
    return "; ".join(s.label(descriptions) for s in all_series)


def choose_series(all_series: list[SeriesInfo], uid: str | None,
                  where) -> tuple[SeriesInfo, tuple[str, str] | None]:
    """The series with SeriesInstanceUID ``uid``, or by default the largest of those that may be volumes (not
    scouts, screenshots, ...: ``not_a_volume``, as the batch passes them over); also, when others were passed
    over, a note for the user as (what the console is told, what reports record: without the SeriesDescriptions,
    which may name the patient). Ties and unknown UIDs are errors listing the choices, recorded likewise."""
    def told(said: str) -> tuple[str, str]:
        return said + series_listing(all_series), said + series_listing(all_series, descriptions=False)

    if uid is not None:
        chosen = [s for s in all_series if s.uid == uid]
        if not chosen:
            message, recorded = told(f"{where} holds no series {uid}; the series there are: ")
            raise InputError(message, recorded=recorded)
        return chosen[0], None
    if len(all_series) == 1:
        return all_series[0], None
    volumes = candidates(all_series)
    if tied(all_series):
        message, recorded = told(f"{where} holds {len(all_series)} series and the largest are the same size; "
                                 "choose one with --series UID: ")
        raise InputError(message, recorded=recorded)
    return volumes[0], told(f"{where} holds {len(all_series)} series; reading the largest"
                            + (" that may be a volume" if len(volumes) < len(all_series) else "")
                            + f", {volumes[0].uid} (choose another with --series UID): ")


def made_by_medrecon(ds) -> bool:
    """Whether a header is of a derived series medrecon wrote (a reconstruction, not a scan to reconstruct)."""
    return str(ds.get("Manufacturer", "") or "") == MANUFACTURER and "DERIVED" in image_type(ds)


def image_type(ds) -> set[str]:
    """The values of a header's ImageType, upper case (ORIGINAL, DERIVED, LOCALIZER, MOSAIC, ...)."""
    return {str(t).strip().upper() for t in (ds.get("ImageType") or [])}


def is_localizer(ds) -> bool:
    """A scout (topogram) image: no slice of a volume."""
    return "LOCALIZER" in image_type(ds)


def no_anatomy(ds) -> str:
    """What an object is whose pixels show no anatomy (an RT dose grid, a segmentation: ``NOT_VOLUME_MODALITIES``),
    e.g. "a RTDOSE object", or ""."""
    return modality_not_a_volume(ds.get("Modality", ""))


def modality_not_a_volume(modality) -> str:
    """What a series of this Modality is when it holds no volume to reconstruct (``NOT_VOLUME_MODALITIES``), e.g.
    "a RTSTRUCT object", or "": from a header (``no_anatomy``) or from a PACS's C-FIND answer, before retrieving."""
    modality = str(modality or "").strip().upper()
    return f"a {modality} object" if modality in NOT_VOLUME_MODALITIES else ""


def not_a_volume(ds) -> str:
    """Why an image header belongs to no volume to reconstruct (what a study export holds beside its scans: the
    scout, dose screenshots, RT dose, segmentations), or ""."""
    if what := no_anatomy(ds):
        return what
    if is_localizer(ds):
        return "a localizer (scout)"
    if is_colour(ds):
        return "a colour image"
    if "Secondary Capture" in UID(str(ds.get("SOPClassUID", "") or "")).name and not made_by_medrecon(ds) and \
            not ("ImagePositionPatient" in ds and "ImageOrientationPatient" in ds):  # SimpleITK writes volumes as SC
        return "a secondary capture without patient geometry (a screenshot or a scanned page)"
    return ""


def refusal(path, ds) -> str:
    """Why the reader refuses an image header whatever else its series holds, naming the file, or "": an object
    whose pixels show no anatomy (``no_anatomy``), a colour image (an ultrasound cine too), or an enhanced
    multi-frame image. ``list_series`` keeps it per series, so that a batch's dry run says what its run will."""
    if what := no_anatomy(ds):  # a dose grid's stored integers were read as an image, its scaling ignored
        return f"{path} is {what}, not an image volume to read or reconstruct"
    if is_colour(ds):  # before the frames: an ultrasound cine is no enhanced image
        return f"{path} is a colour image; medrecon reads grayscale CT/MR series only"
    if is_multi_frame(ds):
        return (f"{path} is a multi-frame (enhanced) DICOM image, whose geometry lives in functional groups medrecon "
                "does not read; convert it to NIfTI first (e.g. dcm2niix) and use the .nii.gz")
    return ""


def is_multi_frame(ds) -> bool:
    """Several frames in one file, or functional groups (an enhanced image, even with one frame per file)."""
    try:
        frames = header_int(ds, "NumberOfFrames", 1)
    except InputError:  # damaged: reading the series says so, naming the file
        frames = 1
    return frames > 1 or "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds


def dicom_text(value) -> str:
    """A DICOM string value as text: a multi-valued one (e.g. SeriesDescription 'A\\B') joined with ' / '."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return " / ".join(str(v) for v in value)
    return str(value)


def visible_files(folder: Path, recursive: bool, problems: list | None = None) -> list[Path]:
    """Visible files under ``folder``, following symbolic links to folders; each real folder is visited once
    (a link loop, or a link back into the tree, adds nothing) and each real file is listed once. Folders that
    cannot be listed go into ``problems`` (folder, why) when it is given."""
    if not recursive:
        return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))

    def unlisted(e: OSError):
        if problems is not None:
            problems.append((Path(e.filename), f"{e.filename}: cannot be listed ({os_reason(e)}); check its "
                                                   "permissions"))

    seen_dirs, seen_files, out = set(), set(), []
    for root, dirs, names in os.walk(folder, followlinks=True, onerror=unlisted):
        real = os.path.realpath(root)
        if real in seen_dirs:
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            p = Path(root) / name
            if name.startswith(".") or not p.is_file() or os.path.realpath(p) in seen_files:
                continue
            seen_files.add(os.path.realpath(p))
            out.append(p)
    return sorted(out)


def read_header(path: Path, **kw):
    """The pydicom header (no pixel data), None for a file that is not DICOM; raises if damaged. Text is read as
    UTF-8 where the file declares no character set and its text is UTF-8 beyond ASCII (``_declare_utf8``)."""
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")
        try:
            return _declare_utf8(pydicom.dcmread(path, stop_before_pixels=True, **kw))
        except InvalidDicomError:
            pass
        pydicom_log = logging.getLogger("pydicom")
        level = pydicom_log.level
        pydicom_log.setLevel(logging.ERROR)  # a forced read of any file (a CD's index.htm) logs VR complaints
        try:  # DICOM without the 128-byte preamble (old ACR-NEMA style): accept only real image headers
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, **kw)
            return _declare_utf8(ds) if "SeriesInstanceUID" in ds and "Rows" in ds else None
        except Exception:  # noqa: BLE001
            return None
        finally:
            pydicom_log.setLevel(level)


TEXT_VRS = ("PN", "LO", "SH", "ST", "LT", "UT")


def _declare_utf8(ds):
    """``ds``, declared UTF-8 (ISO_IR 192) where it declares no character set but its text holds UTF-8 beyond ASCII,
    as many systems write it: the default repertoire read 'Müller' as 'MÃ¼ller' in every list, message and derived
    series. Only the undecoded elements are looked at; a file whose bytes are not UTF-8 keeps the default."""
    if "SpecificCharacterSet" in ds:
        return ds
    texts = []
    for tag in ds.keys():
        raw = ds.get_item(tag)
        try:
            vr = getattr(raw, "VR", None) or dictionary_VR(tag)
        except KeyError:  # a private tag of unknown VR
            continue
        if vr in TEXT_VRS and isinstance(raw.value, bytes) and not raw.value.isascii():
            texts.append((tag, raw))
    try:
        for _, raw in texts:
            raw.value.decode("utf-8")
    except UnicodeDecodeError:
        return ds
    if texts:  # pydicom decodes with the charset the file was read with: these are converted here
        ds.SpecificCharacterSet = "ISO_IR 192"
        for tag, raw in texts:
            ds[tag] = convert_raw_data_element(raw, encoding=convert_encodings("ISO_IR 192"), ds=ds)
    return ds


def is_dicom_file(path) -> bool:
    try:
        return read_header(Path(path), specific_tags=_SCAN_TAGS) is not None
    except Exception:  # noqa: BLE001  (damaged DICOM: still DICOM)
        return True


def header_int(ds, tag: str, default: int, path=None) -> int:
    """A whole-number tag of a header (``default`` where absent or empty); a damaged value is a one-line error
    naming the file and the tag."""
    value = ds.get(tag, default)
    try:
        return int(default if value in (None, "") else value)
    except (TypeError, ValueError):
        raise InputError(f"{path or 'a DICOM header'}: {tag} is {str(value)!r}, not a whole number; the header is "
                         "damaged: fix the tag or remove the file") from None


def is_colour(ds) -> bool:
    """An RGB/YBR image or one whose pixels index a colour palette (an ultrasound or a screenshot): no CT/MR slice."""
    try:
        samples = header_int(ds, "SamplesPerPixel", 1)
    except InputError:  # damaged: reading the series says so, naming the file
        samples = 1
    return samples > 1 or str(ds.get("PhotometricInterpretation", "") or "").strip().upper() == "PALETTE COLOR"


def series_uid(ds) -> str:
    """A header's SeriesInstanceUID, or '' where it is blank or missing (an anonymised file)."""
    return str(ds.get("SeriesInstanceUID", "") or "").strip()


def sop_class(ds) -> str:
    """The SOP class UID, from the file meta where the dataset lacks it (an anonymised file), or ''."""
    meta = getattr(ds, "file_meta", None) or {}
    return str(ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID") or "")


def header_kind(ds) -> str:
    """'image', 'other' (not DICOM, directory, report, ...) or 'damaged' (an image header cut short)."""
    if ds is None:
        return "other"
    sop = sop_class(ds)
    if sop == MediaStorageDirectoryStorage:
        return "other"
    if "Rows" in ds:  # Rows (0028) follows the UID (0020): a header that reached it is whole, and a file whose
        return "image"  # anonymiser deleted the UID (not blanked it) is an image all the same
    return "damaged" if "Image Storage" in UID(sop).name or "SeriesInstanceUID" not in ds else "other"

