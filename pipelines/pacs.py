"""DICOM networking with a PACS (pynetdicom): settings, associations, C-ECHO, C-FIND and C-STORE of a folder
(receiving series, C-MOVE / C-GET and medrecon's storage SCP: ``pipelines.pacs_retrieve``).

* Settings come from a ``pacs:`` section of a YAML file and/or the command line (:func:`load_settings`).
* Every network failure is a :class:`PacsError` (one line, no traceback) naming the peer and the fix.
* Messages name series by SeriesInstanceUID, never by patient; pynetdicom's own (verbose, multi-line)
  logging is silenced.
"""
from __future__ import annotations

import logging
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydicom.dataset import Dataset

from medrecon.errors import InputError, MedreconError
from medrecon.io.dicom_scan import MANUFACTURER, modality_not_a_volume

from .yaml_settings import model_at, read_yaml_file, unknown_key_hint

logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # PacsError says what failed, in one line


class PacsError(MedreconError):
    """A PACS could not be reached, refused us, or a transfer failed; the message says which and why."""


class TLS(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ca_file: Optional[Path] = None  # CA certificate(s) the PACS's certificate must chain to
    cert_file: Optional[Path] = None  # medrecon's certificate, when the PACS checks its clients
    key_file: Optional[Path] = None
    server_name: Optional[str] = None  # check the PACS certificate against this host name

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _a_file(cls, v: Optional[Path]) -> Optional[Path]:
        if v is not None and not Path(v).is_file():  # ssl named no file: "[Errno 2] No such file or directory"
            raise ValueError(f"{v}: no such file (a path relative to the folder medrecon runs in, or absolute)")
        return v


DEFAULT_AET = "ANY-SCP"  # a called AE title many PACS accept when they do not check it


class PacsSettings(BaseModel):
    """Where the PACS is and who medrecon is on the network (the ``pacs:`` YAML section)."""

    model_config = ConfigDict(extra="forbid")
    host: Optional[str] = None  # the PACS; not needed to listen only
    port: int = Field(104, gt=0, lt=65536)
    aet: str = DEFAULT_AET  # the PACS's AE title (called AE)
    calling_aet: str = "MEDRECON"  # medrecon's AE title; the PACS must know it (host, port) for C-MOVE
    retrieve: Literal["move", "get"] = "move"
    store_port: Optional[int] = Field(None, gt=0, lt=65536)  # medrecon's storage SCP (C-MOVE, listen)
    store_address: str = "0.0.0.0"  # where the storage SCP listens
    # calling AE titles the storage SCP takes images from: null = the PACS's (aet) when one is given, else any
    # (warned); ["*"]: any sender
    accept_from: Optional[list[str]] = None
    timeout: float = Field(30.0, gt=0)  # seconds: connection, association, each DIMSE message
    tls: Optional[TLS] = None

    @field_validator("aet", "calling_aet")
    @classmethod
    def _ae_title(cls, v: str) -> str:
        if not re.fullmatch(r"[\x21-\x5b\x5d-\x7e][\x20-\x5b\x5d-\x7e]{0,15}", v) or not v.strip():
            raise ValueError(f"{v!r} is not an AE title (1-16 printable characters, no backslash)")
        return v.strip()

    @field_validator("accept_from")
    @classmethod
    def _senders(cls, v: Optional[list[str]]) -> Optional[list[str]]:
        if v is not None and not v:
            raise ValueError('give the AE titles to take images from, or ["*"] for any sender')
        return None if v is None else [a if a == "*" else cls._ae_title(a) for a in v]

    def senders(self) -> list[str]:
        """The calling AE titles the storage SCP accepts ([]: any): accept_from, else the PACS's AE title when one
        was given (the default 'ANY-SCP' names no PACS: then any, warned where the SCP starts)."""
        given = self.accept_from if self.accept_from is not None else \
            (["*"] if self.aet == DEFAULT_AET else [self.aet])
        return [] if "*" in given else list(given)

    def peer(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"

    def need_host(self) -> None:
        if not self.host:
            raise InputError("no PACS host: give --host (and --port, --aet) or host: in the pacs: section")


def load_settings(path: Path | None = None, **overrides) -> PacsSettings:
    """The ``pacs:`` section of the YAML file ``path`` (optional), with the non-None ``overrides`` on top."""
    data, where = {}, "command line"
    if path is not None:
        where = str(path)
        doc = read_yaml_file(path) or {}
        if not isinstance(doc, dict) or not isinstance(doc.get("pacs", {}), dict):
            raise InputError(f"{path}: expected a mapping with a 'pacs:' section")
        data = dict(doc.get("pacs") or {})
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return PacsSettings(**data)
    except ValidationError as e:
        raise InputError("; ".join(f"{where}: pacs.{'.'.join(map(str, err['loc']))}: {_setting_problem(err)}"
                                   for err in e.errors())) from None


def _setting_problem(err: dict) -> str:
    """What is wrong with one PACS setting: an unknown key with the one meant (as configs say it), else pydantic's."""
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        return f"unknown key ({unknown_key_hint(model_at(PacsSettings, loc[:-1]), loc[-1])})"
    return err["msg"].removeprefix("Value error, ")


# ------------------------------------------------------------------------------------------ associations
def ssl_context(tls: TLS, server: bool) -> ssl.SSLContext:
    purpose = ssl.Purpose.CLIENT_AUTH if server else ssl.Purpose.SERVER_AUTH
    try:
        ctx = ssl.create_default_context(purpose, cafile=str(tls.ca_file) if tls.ca_file else None)
        ctx.check_hostname = bool(tls.server_name) and not server
        if server and tls.ca_file:  # the SCP's peers (the PACS) must show a certificate chaining to ca_file
            ctx.verify_mode = ssl.CERT_REQUIRED
        if tls.cert_file:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    except (OSError, ssl.SSLError) as e:
        raise InputError(f"pacs.tls: cannot load the certificates: {e}") from None
    return ctx


def application_entity(settings: PacsSettings):
    from pynetdicom import AE
    ae = AE(ae_title=settings.calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = settings.timeout
    return ae


def associate(settings: PacsSettings, contexts, what: str, ae=None, **kw):
    """An established association with the PACS, or a PacsError saying why not."""
    from pynetdicom import evt
    from pynetdicom.pdu import A_ASSOCIATE_RJ
    settings.need_host()
    ae = ae or application_entity(settings)
    for cx in contexts:
        ae.add_requested_context(cx) if isinstance(cx, str) else ae.add_requested_context(*cx)
    seen: dict = {}

    def on_pdu(event):  # the rejection as it arrives: a PACS that closes right after rejecting races pynetdicom's
        if isinstance(event.pdu, A_ASSOCIATE_RJ):  # state machine, which may then report an abort instead
            seen.setdefault("rejection", event.pdu)
    handlers = [(evt.EVT_CONN_OPEN, lambda e: seen.setdefault("open", True)),
                (evt.EVT_PDU_RECV, on_pdu)] + kw.pop("evt_handlers", [])
    tls = None
    if settings.tls is not None:
        tls = (ssl_context(settings.tls, server=False), settings.tls.server_name)
    try:
        assoc = ae.associate(settings.host, settings.port, ae_title=settings.aet, tls_args=tls,
                             evt_handlers=handlers, **kw)
    except (OSError, ssl.SSLError) as e:
        raise PacsError(f"{what}: cannot connect to the PACS {settings.peer()}: {e}") from None
    if assoc.is_established:
        return assoc
    rj = seen.get("rejection")
    if assoc.is_rejected or rj is not None:
        reason = _rejection_reason(rj)
        hint = ("check --aet (the PACS's AE title) and that the PACS knows medrecon's AE title "
                f"{settings.calling_aet!r}")
        raise PacsError(f"{what}: the PACS {settings.peer()} refused the association ({reason}); {hint}")
    if not seen.get("open"):
        raise PacsError(f"{what}: cannot connect to the PACS {settings.peer()} (nothing answers there within "
                        f"{settings.timeout:g} s): is it running, and are --host and --port right?")
    raise PacsError(f"{what}: the PACS {settings.peer()} aborted the association (no accepted presentation "
                    "context, a TLS mismatch, or a timeout); check its log and the tls: settings")


def _rejection_reason(rj) -> str:
    """'Rejected (Permanent), Called AE title not recognised' from an A-ASSOCIATE-RJ PDU (None: not received)."""
    if rj is None:
        return "no reason given"
    try:
        return f"{rj.result_str}, {rj.reason_str}"
    except ValueError:  # values outside the standard's tables
        return "no reason given"


def echo(settings: PacsSettings) -> None:
    """C-ECHO: a PacsError unless the PACS answers."""
    from pynetdicom.sop_class import Verification
    assoc = associate(settings, [Verification], "C-ECHO")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if not status or status.Status != 0:
        raise PacsError(f"C-ECHO: the PACS {settings.peer()} did not answer with success")


# ------------------------------------------------------------------------------------------------ C-FIND
@dataclass
class Query:
    """What to look for; empty fields match everything. ``study_date``: YYYYMMDD, or a range
    YYYYMMDD-YYYYMMDD (either end may be left open); ``description``: SeriesDescription, * and ? wildcards."""

    patient_id: str = ""
    study_date: str = ""
    modality: str = ""
    description: str = ""
    study_uid: str = ""
    series_uid: str = ""

    def __post_init__(self):
        if self.study_date and not re.fullmatch(r"\d{8}|\d{8}-|-\d{8}|\d{8}-\d{8}", self.study_date):
            raise InputError(f"--date {self.study_date!r}: give YYYYMMDD or a range YYYYMMDD-YYYYMMDD")


@dataclass
class SeriesHit:
    study_uid: str
    series_uid: str
    modality: str = ""
    description: str = ""
    study_date: str = ""
    series_number: str = ""
    n_instances: Optional[int] = None
    manufacturer: str = ""

    @property
    def made_by_medrecon(self) -> bool:
        """A derived series medrecon wrote (never reconstructed again: no loops through the PACS)."""
        return self.manufacturer == MANUFACTURER or self.description.startswith(f"{MANUFACTURER} ")

    @property
    def not_a_volume(self) -> str:
        """What the series is by its Modality when it holds no volume to reconstruct (an RT structure set, a report:
        the batch's rule, ``modality_not_a_volume``), e.g. "a RTSTRUCT object", or "": not worth retrieving."""
        return modality_not_a_volume(self.modality)


def find_series(settings: PacsSettings, query: Query) -> list[SeriesHit]:
    """C-FIND (study root): the studies matching the patient, date and study UID, then their series
    matching modality, description and series UID."""
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND
    assoc = associate(settings, [FIND], "C-FIND")
    try:
        studies = _find(assoc, settings, QueryRetrieveLevel="STUDY", StudyInstanceUID=query.study_uid,
                        PatientID=query.patient_id, StudyDate=query.study_date)
        hits = []
        for st in studies:
            for se in _find(assoc, settings, QueryRetrieveLevel="SERIES", StudyInstanceUID=st.StudyInstanceUID,
                            SeriesInstanceUID=query.series_uid, Modality=query.modality,
                            SeriesDescription=query.description, SeriesNumber="", Manufacturer="",
                            NumberOfSeriesRelatedInstances=""):
                n = se.get("NumberOfSeriesRelatedInstances")
                hits.append(SeriesHit(str(st.StudyInstanceUID), str(se.SeriesInstanceUID), str(se.get("Modality", "")),
                                      str(se.get("SeriesDescription", "") or ""), str(st.get("StudyDate", "") or ""),
                                      str(se.get("SeriesNumber", "") or ""), int(n) if n not in (None, "") else None,
                                      str(se.get("Manufacturer", "") or "")))
    finally:
        assoc.release()
    return sorted(hits, key=lambda h: (h.study_date, h.study_uid, h.series_number, h.series_uid))


def _find(assoc, settings: PacsSettings, **keys) -> list[Dataset]:
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND
    ds = Dataset()
    if any(isinstance(v, str) and not v.isascii() for v in keys.values()):
        ds.SpecificCharacterSet = "ISO_IR 192"  # say how a name with accents is encoded (UTF-8), or none matches
    for k, v in keys.items():
        setattr(ds, k, v)
    out = []
    for status, identifier in assoc.send_c_find(ds, FIND):
        if not status:
            raise PacsError(f"C-FIND: the PACS {settings.peer()} broke off the query (aborted or timed out after "
                            f"{settings.timeout:g} s); does it accept queries from AE {settings.calling_aet!r}? "
                            "(Orthanc: DicomModalities)")
        if status.Status in (0xFF00, 0xFF01):
            if identifier is not None and "StudyInstanceUID" in identifier:
                out.append(identifier)
        elif status.Status != 0:
            raise PacsError(f"C-FIND {keys['QueryRetrieveLevel']}: the PACS answered status 0x{status.Status:04X}")
    return out


# ---------------------------------------------------------------------------------------------- C-STORE
def store_folder(settings: PacsSettings, folder: Path) -> int:
    """C-STORE every DICOM file of ``folder`` in one association; a PacsError names the first refused one.
    Sending the same files again is harmless (same SOP instance UIDs), so a failed send is simply redone."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom.status import code_to_category
    files = sorted(Path(folder).glob("*.dcm"))
    if not files:
        raise InputError(f"{folder}: no DICOM files to send")
    contexts: dict[str, list[str]] = {}
    for f in files:  # each SOP class with the files' own syntax, and the uncompressed ones every PACS takes
        meta = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta
        offered = contexts.setdefault(str(meta.MediaStorageSOPClassUID), [])
        for ts in (str(meta.TransferSyntaxUID), ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if ts not in offered:
                offered.append(ts)
    what = f"C-STORE of {folder}"
    assoc = associate(settings, sorted(contexts.items()), what)
    try:
        for f in files:
            status = assoc.send_c_store(pydicom.dcmread(f))  # a dataset: re-encoded if another syntax was accepted
            if not status:
                raise PacsError(f"{what}: the PACS stopped answering at {f.name} (connection lost or timed out); "
                                "the series is sent again on the next run")
            if code_to_category(int(status.Status)) not in ("Success", "Warning"):  # warnings: stored
                raise PacsError(f"{what}: the PACS refused {f.name} (status 0x{int(status.Status):04X}); "
                                "the series is sent again on the next run")
    finally:
        if assoc.is_established:
            assoc.release()
    return len(files)
