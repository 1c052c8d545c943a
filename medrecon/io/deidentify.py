"""De-identification (``outputs.deidentify``, ``convert --deidentify``): the one home of what it removes, from every
file medrecon writes.

* Pixels: a source flagged ``BurnedInAnnotation`` or ``RecognizableVisualFeatures`` YES (on any slice) is refused,
  whatever the output formats (``refuse_identifying_pixels``): no tag change removes text in the pixels, and every
  output (NIfTI, simulation/reference.nii.gz, the preview) keeps the voxels.
* The derived DICOM series (``deidentified``, ``mark_deidentified``): the DICOM PS3.15 Basic Application Level
  Confidentiality Profile for the attributes copied from the source: patient and study identifiers and dates emptied
  or removed (PatientID replaced by a keyed pseudonym), study and frame-of-reference UIDs and the referenced source
  series and instance UIDs replaced by keyed UIDs (``deidentified_uid``), the series' own dates dropped,
  PatientIdentityRemoved YES.
* A run's records: report.json, the output's marker (``.medrecon-output``), simulation/measurements.npz, the series
  page, a batch's manifest.csv and index.html and the output folder names a batch chooses
  (``pipelines.tasks.reconstruct``, ``pipelines.batching``):

  - the source series by its de-identified UID (the one the derived series references) and its file-list and
    voxel hashes keyed (``recorded_source``, ``pseudonym``): unkeyed, anyone holding the source could recompute
    them and link the output back to it;
  - the input by ``input_label`` (``input-`` and 16 hex digits of a keyed hash of its absolute path) instead of its
    name or its path under a batch's input root (lab folders are named after patients, MRNs, dates); the site that
    holds the key finds the input again by hashing its candidate paths;
  - in warnings and errors, the input's path (with any file in it), its name and its files' names replaced
    (``scrub``);
  - no date of the run and no output name (``RUN_RECORD_LEFT_OUT``); a batch's output folders are named
    ``series-`` and the de-identified UID's last 12 digits, not after the SeriesDescription and the input tree.

  medrecon reads them back the same way: a marker that says ``deidentified`` is compared with a series in that
  form (``recorded_source``), so resuming a batch and overwrite protection work as they do without.
* The key (``deidentify_key``): one secret per site, made once; runs with one key give one mapping.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from ..errors import InputError
from .atomic import os_reason
from .dicom_scan import PIXEL_FLAGS

log = logging.getLogger("medrecon")

# PS3.15 basic profile for the copied attributes: Z (emptied), X (removed), U (UID replaced).
DEID_EMPTY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
              "AccessionNumber", "ReferringPhysicianName")
DEID_REMOVE = ("IssuerOfPatientID", "PatientAge", "PatientSize", "PatientWeight", "StudyDescription")
DEID_UIDS = ("StudyInstanceUID", "FrameOfReferenceUID", "SeriesInstanceUID")  # the source series' (referenced)
DEID_METHOD = "DICOM PS3.15 Basic Application Level Confidentiality Profile"  # LO: <= 64
#: report.json fields a de-identified run leaves out: the day it ran (it dates the study, as the derived series'
#: ContentDate, which the profile drops) and the output folder's name (a user's choice: often the patient's)
RUN_RECORD_LEFT_OUT = ("created", "output")
#: what ``input_label`` gives: how a batch manifest's rows say that they are de-identified
INPUT_LABEL = re.compile(r"input-[0-9a-f]{16}")
#: a DICOM UID in a message (PS3.5 9.1: numeric components joined by dots; four or more here, so that a number or
#: a version is not one), which ``scrub`` replaces by its ``deidentified_uid``
UID_TOKEN = re.compile(r"(?<![\w.])[0-9]+(?:\.[0-9]+){3,}(?![\w]|\.[0-9])")


def check_deidentifiable(tags: dict | None) -> None:
    """The refusals of a de-identified run, before its work: identifying pixels (``refuse_identifying_pixels``),
    and a key that is missing and cannot be made or is no secret (``deidentify_key``)."""
    refuse_identifying_pixels(tags or {})
    deidentify_key()


def pseudonym(value: str, key: bytes | None = None) -> str:
    """A keyed SHA-256 (64 hex digits) of ``value``: the same for the same value wherever the key is, and not to be
    recomputed (or reversed by trying the values a lab's paths and MRNs can take) without it."""
    return _keyed_digest(key or deidentify_key(), str(value))


def deidentified_uid(uid: str, key: bytes | None = None) -> str:
    """The UID a de-identified output gives the source UID ``uid`` (the derived series references the source
    series by it)."""
    return _deidentified_uid(key or deidentify_key(), uid)


def recorded_source(series_uid: str | None, files_sha256: str | None, deidentify: bool) -> dict:
    """What a run's marker and report.json record of its source series (empty values left out): its
    SeriesInstanceUID and file-list hash; de-identified, the UID as the derived series references it, the hash
    keyed, ``deidentified: True``, which tells a reader (``pipelines.batching.output_state``) to put the series
    it compares in this form, and the ``key_fingerprint`` (which identifies nobody): a batch refuses an output root
    made with another key (``check_key``)."""
    if not deidentify:
        return {k: v for k, v in (("series_uid", series_uid), ("files_sha256", files_sha256)) if v}
    key = deidentify_key()
    return {**({"series_uid": _deidentified_uid(key, series_uid)} if series_uid else {}),
            **({"files_sha256": _keyed_digest(key, files_sha256)} if files_sha256 else {}), "deidentified": True,
            "key_fingerprint": _fingerprint(key)}


def input_label(path) -> str:
    """How a de-identified record names an input (a file or a series folder): ``input-`` and 16 hex digits of a keyed
    hash of its absolute path. Neither its name nor its path under a batch's input root: lab folders are named after
    patients, MRNs and dates. Keyed, since an unkeyed hash of a path whose only unknown is an MRN is found by trying
    them all."""
    return "input-" + pseudonym(os.path.abspath(path))[:16]


def scrub(text: str, path, within=()) -> str:
    """``text`` scrubbed by ``scrubber(path, within)``: for one message; for several of one input, build it once."""
    return scrubber(path, within)(text)


def scrubber(path, within=()):
    """A function that gives ``text`` (a warning, an error message) with what names the input ``path`` replaced: the
    path as given, absolute or resolved, with whatever follows it in a longer path (a file in it), by its
    ``input_label``; the folders ``within`` (a batch's input root) so too, by 'INPUT_ROOT'; on its own, the name of
    the input and of each folder between it and a root by the label, and the name of each file in it by ``file-``
    and 8 hex digits (keyed); every UID (``UID_TOKEN``: another series' in a note on the folder, say) by its
    ``deidentified_uid``.

    The rule for a name on its own (not in a path: there it is always replaced), ``_identifying``: replaced unless
    it is a generic folder word (``GENERIC_NAMES``: DICOM, CT, series, images, ..., in any case, and the two-letter
    words of English), a number of under 4 digits, or one character. So a patient's name, an MRN of 4 digits or
    more, and any name with a digit, '^', '_', ',' or a space are replaced wherever they stand, while "a ct scan"
    and "1 DICOM file" stay as they are for a folder named ct or DICOM. The input folder is listed, and its names
    derived, once, when it is built."""
    path = Path(path)
    label, key = input_label(path), deidentify_key()
    try:
        files = [p.name for p in path.iterdir()] if path.is_dir() else []
    except OSError:
        files = []
    file_names = {f: "file-" + _keyed_digest(key, f)[:8] for f in files}
    between = {}  # root -> the folders from it down to the input (their names may hold spaces)
    for root in within:
        try:
            between[root] = path.absolute().relative_to(Path(root).absolute()).parts
        except ValueError:
            between[root] = ()
    forms = {f: ("INPUT_ROOT", [os.sep.join(parts[:k]) for k in range(len(parts), 0, -1)])
             for r, parts in between.items() for f in path_forms(Path(r))}
    forms.update({f: (label, sorted(files, key=len, reverse=True)) for f in path_forms(path)})
    subs = []
    for form in sorted(forms, key=len, reverse=True):
        # a longer path goes with it: a name known to follow taken whole (spaces and all), the rest up to a space;
        # a file of the input is said by its pseudonym
        said, known = forms[form]
        tail = rf"""(?:[/\\](?P<tail>(?:{"|".join(map(re.escape, known))})?[^\s:;,()'"]*))?(?![\w.-])"""
        subs.append((re.compile(r"(?<![\w.\-/\\])" + re.escape(form) + tail), lambda m, s=said: s + (
            "/" + file_names[m["tail"]] if s == label and m["tail"] in file_names else "")))
    names = {path.name: label, **{part: label for parts in between.values() for part in parts}}
    names.update({f: said for f, said in file_names.items() if f not in names})
    names = {n: s for n, s in names.items() if _identifying(n)}
    if names:
        alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
        subs.append((re.compile(rf"(?<![\w.-])(?:{alternatives})(?![\w.-])"), lambda m: names[m[0]]))
    subs.append((UID_TOKEN, lambda m: _deidentified_uid(key, m[0])))

    def scrubbed(text: str) -> str:
        for pattern, said in subs:
            text = pattern.sub(said, text)
        return text
    return scrubbed


#: folder names that name no one, which ``scrub`` leaves alone where they stand on their own in a message
GENERIC_NAMES = frozenset("""dicom dicomdir dcm ct mr mri pet spect us cr dx xa nm ot series study studies image images
    data scan scans file files input inputs output outputs raw export exports import sorted unsorted new old tmp temp
    patient patients subject subjects case cases exam exams head chest abdomen pelvis brain neck spine body knee
    axial coronal sagittal localizer scout topogram recon original derived primary secondary
    a an as at be by do if in is it no of on or so to up""".split())  # and the two-letter words of messages


def _identifying(name: str) -> bool:
    """Whether ``scrub`` replaces ``name`` (of the input, a folder above it or a file in it) where it stands on its
    own in a message (the rule in ``scrub``'s docstring)."""
    if name in ("", ".", ".."):
        return False
    if name.isdigit():
        return len(name) >= 4  # an MRN, a date; not a count (e.g. a file named 1)
    if name.casefold() in GENERIC_NAMES:
        return False
    return len(name) >= 2  # a surname as short as Li or Wu too


def path_forms(path: Path) -> set[str]:
    """The ways a message may write ``path``: as given (unless it is '.' or a bare name: ``scrub`` takes those as
    names), absolute, resolved. Also what ``pipelines.tasks.named_only`` writes as the input's name."""
    forms = {os.path.abspath(path)}
    try:
        forms.add(str(path.resolve()))
    except OSError:
        pass
    if len(path.parts) > 1:
        forms.add(str(path))
    return forms - {os.sep}


def refuse_identifying_pixels(src: dict) -> None:
    """Refuse a source whose pixels carry identifying text or features (BurnedInAnnotation /
    RecognizableVisualFeatures YES): no tag change removes them, and every output format keeps the voxels."""
    burned = [k for k in PIXEL_FLAGS if str(src.get(k, "")).upper() == "YES"]
    if burned:
        raise InputError(f"the source series says {' and '.join(f'{k} YES' for k in burned)}: identifying text or "
                         "features are in its pixels, which de-identifying the tags cannot remove; remove them from "
                         "the images first (or leave out de-identification: convert without --deidentify, "
                         "outputs.deidentify false)")


def deidentified(src: dict) -> dict:
    """The source tags after the PS3.15 basic profile (see the module docstring); a source with identifying pixels
    is refused (``refuse_identifying_pixels``)."""
    refuse_identifying_pixels(src)
    key = deidentify_key()  # read once: every slice's reference is keyed with it
    out = {k: v for k, v in src.items() if k not in DEID_REMOVE}
    out.update({k: "" for k in DEID_EMPTY if k in out})
    if src.get("PatientID"):  # one pseudonym per patient: an empty ID filed every de-identified series as one
        out["PatientID"] = "DEID-" + _keyed_digest(key, src["PatientID"])[:16].upper()
    for k in DEID_UIDS:
        if out.get(k):
            out[k] = _deidentified_uid(key, out[k])
    if out.get("SourceImages"):  # the references to the source series and its slices: its UIDs replaced too
        out["SourceImages"] = [{**im, "SOPInstanceUID": _deidentified_uid(key, im["SOPInstanceUID"])}
                               for im in out["SourceImages"]]
    return out


def _deidentified_uid(key: bytes, uid) -> str:
    """A UID derived from ``uid`` with this site's secret key (``deidentify_key``): the same source UID gives the
    same new one here, and without the key it cannot be traced back (a fixed public salt let anyone holding the
    source UIDs recompute it)."""
    return generate_uid(entropy_srcs=[_keyed_digest(key, str(uid))])


def _keyed_digest(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def key_fingerprint(create: bool = True) -> str | None:
    """A short digest telling de-identification keys apart without showing them (None: no key here and ``create``
    False): every machine of a distributed batch must hold the driver's."""
    try:
        return _fingerprint(deidentify_key(create))
    except FileNotFoundError:
        return None


def _fingerprint(key: bytes) -> str:
    return _keyed_digest(key, "medrecon-key-check")[:16]


def key_source() -> str:
    """Where the key comes from, as errors name it: $MEDRECON_DEID_KEY or the key file (``key_path``)."""
    return "MEDRECON_DEID_KEY" if os.environ.get("MEDRECON_DEID_KEY") else str(key_path())


def check_key(where, marks, source_uids=()) -> None:
    """Refuse to add to de-identified outputs (``where``: an output root whose rows are de-identified; ``marks``: the
    markers of its outputs) with another key than theirs (their ``key_fingerprint``): a new or other key names every
    series anew, so a rerun redid them all beside the old ones. With no key here, none is made: the error says where
    the outputs' key must be. Outputs of earlier versions record no fingerprint: unless one of them is of a series in
    ``source_uids`` (the source UIDs a batch found) as this key names it, which shows the key is theirs, a warning
    says so once (with another key, every series is made again under new names); not where an output there records
    this key's fingerprint (a batch of another input folder into the root again)."""
    here = key_fingerprint(create=False)
    if here is None:
        raise InputError(f"{where} holds de-identified outputs, and the key they were made with is not at "
                         f"{key_path()}: put that key there or set MEDRECON_DEID_KEY to its text (a new key would "
                         "give every series new names), or write into another output root")
    other = sorted({m.get("key_fingerprint") for m in marks} - {here, None, ""})
    if other:
        raise InputError(f"{where} holds outputs de-identified with another key (fingerprint {', '.join(other)}) "
                         f"than {key_source()} (fingerprint {here}): use that key, or write into another output root")
    unchecked = [m.get("series_uid") for m in marks if not m.get("key_fingerprint")]
    if unchecked and not any(m.get("key_fingerprint") == here for m in marks):  # outputs of this key: the key is theirs
        key = deidentify_key(create=False)
        if not set(unchecked) & {_deidentified_uid(key, u) for u in source_uids}:
            log.warning(f"{where}: {len(unchecked)} de-identified output(s) there were made by an earlier medrecon, "
                        "which did not record its key's fingerprint, and none is of a series found here as the key "
                        f"of {key_source()} names it: if they were made with another key, this batch makes every "
                        "series again beside them under new names; stop it and rerun with the key that made them, "
                        "or write into a fresh output root")


def deidentify_key(create: bool = True) -> bytes:
    """The secret that de-identified UIDs and patient pseudonyms are derived with: $MEDRECON_DEID_KEY (the key
    file's hex text, or any passphrase of 16 characters or more), else the key file ~/.config/medrecon/deidentify.key
    (made once, readable by its owner only). Share it only with whoever may link de-identified series back to their
    sources, and give every machine of a batch the same one; runs with one key give one mapping."""
    given = os.environ.get("MEDRECON_DEID_KEY")
    if given:
        return _given_key(given)
    path = key_path()
    if not path.exists() and not create:
        raise FileNotFoundError(path)
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # 0600, a name of its own
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_bytes(32).hex() + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.link(tmp, path)  # whole or not at all, never over a key made meanwhile: the first one wins
            except FileExistsError:
                pass  # another thread or process made it first: its key is read below
            finally:
                os.unlink(tmp)
        except OSError as e:
            raise InputError(f"cannot create the de-identification key {path} ({os_reason(e)}); set "
                             "MEDRECON_DEID_KEY to a secret of your own") from None
    try:
        st = path.stat()
    except OSError:
        st = None  # read below, which says why
    stamp = (str(path), st.st_ino, st.st_mtime_ns, st.st_size) if st else None
    cached = _key_cache.get("file")
    if stamp and cached and cached[0] == stamp:
        return cached[1]
    key = _read_key_file(path)
    if stamp:
        _key_cache["file"] = (stamp, key)
    return key


_key_cache: dict = {}  # the key file's last read, by its path and stat: a new or changed file is read again


@functools.lru_cache(maxsize=4)
def _given_key(given: str) -> bytes:
    """$MEDRECON_DEID_KEY's key (memoised by its text)."""
    key = _key_bytes(given.strip())
    if len(key) < 16:
        raise InputError("MEDRECON_DEID_KEY: give the key file's text or a passphrase of at least 16 characters")
    return key


def _read_key_file(path: Path) -> bytes:
    try:
        key = _key_bytes(path.read_text().strip())
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the de-identification key ({e}); fix or remove the file (a new key "
                         "gives new UIDs), or set MEDRECON_DEID_KEY") from None
    if len(key) < 16:
        raise InputError(f"{path}: the de-identification key is {len(key)} bytes, too short to be secret; remove the "
                         "file (a new key gives new UIDs) or set MEDRECON_DEID_KEY")
    return key


def key_path() -> Path:
    """Where this site's de-identification key file is (``deidentify_key``): $XDG_CONFIG_HOME/medrecon/deidentify.key,
    by default ~/.config/medrecon/deidentify.key."""
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "medrecon" / "deidentify.key"


def _key_bytes(text: str) -> bytes:
    """A key as given: the key file's own form (64 hex digits) read as its 32 bytes, any other text (a passphrase,
    hex-looking or not) as its UTF-8."""
    return bytes.fromhex(text) if re.fullmatch(r"[0-9a-fA-F]{64}", text) else text.encode()


def mark_deidentified(ds: Dataset) -> None:
    """A derived dataset's de-identification attributes, and its own dates dropped (they date the study)."""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEID_METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "113100", "DCM", "Basic Application " \
        "Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = [code]
    ds.PatientName = ds.PatientName or "Anonymous"
    for keyword in ("SeriesDate", "SeriesTime"):
        delattr(ds, keyword)
    ds.ContentDate = ds.ContentTime = ""  # when the derived series was made dates the study
    ds.StudyDate = ds.StudyTime = ""  # a new study's (no source study) would be that date too


