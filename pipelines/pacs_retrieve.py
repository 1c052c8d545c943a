"""Receiving series from a PACS: medrecon's storage SCP (``serve``), the ``Inbox`` where instances land, and
``retrieve_series`` (C-MOVE to the SCP, or C-GET). A retrieved series appears in its folder only when the PACS
reported every sub-operation done and the file count matches; anything else is removed."""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path

from pydicom.dataset import Dataset

from medrecon.errors import InputError
from medrecon.io.atomic import TMP_PREFIX, os_reason

from .pacs import PacsError, PacsSettings, SeriesHit, application_entity, associate, ssl_context

log = logging.getLogger("medrecon.pacs")

MOVE_STATUS = {0xA701: "out of resources (number of matches)", 0xA702: "out of resources (sub-operations)",
               0xA801: "move destination unknown", 0xA900: "identifier does not match SOP class",
               0xFE00: "cancelled", 0x0122: "SOP class not supported", 0xC000: "unable to process"}


# ------------------------------------------------------------------------------------ receiving series
class Inbox:
    """Where received instances land: ``<root>/.medrecon-tmp-incoming-<series>/<SOP UID>.dcm``; a series is
    moved to its final folder with :meth:`take` once complete. Thread-safe (handlers run per association)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._count: dict[str, int] = {}
        self._last: dict[str, float] = {}
        prefix = f"{TMP_PREFIX}incoming-"
        for folder in self.root.glob(f"{prefix}*"):  # received before a stop: the PACS will not send them again
            if folder.is_dir():
                self._count[folder.name[len(prefix):]] = len(list(folder.glob("*.dcm")))
                self._last[folder.name[len(prefix):]] = time.monotonic() - (time.time() - folder.stat().st_mtime)

    def folder(self, series_uid: str) -> Path:
        return self.root / f"{TMP_PREFIX}incoming-{safe_uid(series_uid)}"

    def on_store(self, event) -> int:
        """pynetdicom EVT_C_STORE handler: write the instance as received (with its file meta)."""
        try:
            ds = event.dataset
            series, sop = str(ds.SeriesInstanceUID), str(event.request.AffectedSOPInstanceUID)
            folder = self.folder(series)
            folder.mkdir(exist_ok=True)
            tmp = folder / f".part-{safe_uid(sop)}"
            tmp.write_bytes(event.encoded_dataset())
            os.replace(tmp, folder / f"{safe_uid(sop)}.dcm")
        except Exception:  # noqa: BLE001 - any failure is a failed sub-operation for the sender
            return 0xC211  # processing failure
        with self._lock:
            self._count[series] = self._count.get(series, 0) + 1
            self._last[series] = time.monotonic()
        return 0x0000

    def count(self, series_uid: str) -> int:
        with self._lock:
            return self._count.get(series_uid, 0)

    def stable(self, age_s: float) -> list[str]:
        """Series that have received nothing for ``age_s`` seconds."""
        now = time.monotonic()
        with self._lock:
            return [s for s, t in self._last.items() if now - t >= age_s]

    def take(self, series_uid: str, dest: Path) -> int:
        """Move the received instances of the series into ``dest`` (renamed in one step when ``dest`` is new);
        returns how many there were."""
        with self._lock:
            n = self._count.pop(series_uid, 0)
            self._last.pop(series_uid, None)
        src = self.folder(series_uid)
        if not src.is_dir():
            return 0
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(src, dest)
        else:  # aside first: an image stored between the listing and the removal stays (it was acknowledged)
            with self._lock:
                aside = src.with_name(src.name + ".taking")
                os.rename(src, aside)
            for f in aside.glob("*.dcm"):
                os.replace(f, dest / f.name)
            shutil.rmtree(aside, ignore_errors=True)
        return n

    def discard(self, series_uid: str | None = None) -> None:
        """Drop what was received of one series (all, by default)."""
        with self._lock:
            for s in ([series_uid] if series_uid else list(self._count)):
                self._count.pop(s, None)
                self._last.pop(s, None)
        pattern = f"{TMP_PREFIX}incoming-{safe_uid(series_uid) if series_uid else '*'}"
        for p in self.root.glob(pattern):
            shutil.rmtree(p, ignore_errors=True)


def safe_uid(uid: str) -> str:
    return re.sub(r"[^0-9A-Za-z.]", "_", str(uid))[:64] or "unknown"


def serve(settings: PacsSettings, inbox: Inbox):
    """Start medrecon's storage SCP on ``store_address:store_port`` (any storage SOP class, any transfer
    syntax) writing into ``inbox``; returns the server (call ``.shutdown()``)."""
    from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification
    if settings.store_port is None:
        raise InputError("no port for medrecon's storage SCP: give --store-port (or store_port: in pacs:); "
                         "the PACS must list medrecon's AE title with this host and port")
    ae = application_entity(settings)
    ae.require_called_aet = True
    ae.require_calling_aet = settings.senders()  # images from the PACS only, unless accept_from says otherwise
    if not ae.require_calling_aet:
        log.warning(f"the storage SCP takes images from any sender: give --aet (the PACS's AE title) or "
                    "--accept-from to take them only from the PACS")

    def refused(event):  # said where the user looks: the sender, and how to let it in
        who = event.assoc.requestor
        log.warning(f"refused images from AE title {who.ae_title!r} at {who.address}: not in pacs.accept_from "
                    f"{settings.senders()} (add it with --accept-from {who.ae_title})")
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ctx = ssl_context(settings.tls, server=True) if settings.tls is not None else None
    try:
        return ae.start_server((settings.store_address, settings.store_port), block=False, ssl_context=ctx,
                               evt_handlers=[(evt.EVT_C_STORE, inbox.on_store), (evt.EVT_REJECTED, refused)])
    except OSError as e:
        in_use = getattr(e, "errno", None) == errno.EADDRINUSE
        fix = "choose another --store-port" if in_use else "check --store-address (an address of this machine)"
        raise PacsError(f"cannot listen on {settings.store_address}:{settings.store_port} for incoming series: "
                        f"{os_reason(e)}; {fix}") from None


def retrieve_series(settings: PacsSettings, hit: SeriesHit, dest: Path, inbox: Inbox) -> int:
    """C-MOVE (to medrecon's SCP, which must be serving ``inbox``) or C-GET one series into ``dest``, a new
    folder that appears only when the series arrived complete; returns the number of instances."""
    from pynetdicom import build_role, evt
    from pynetdicom.sop_class import (StudyRootQueryRetrieveInformationModelGet as GET,
                                      StudyRootQueryRetrieveInformationModelMove as MOVE)
    what = f"C-{settings.retrieve.upper()} of series {hit.series_uid}"
    inbox.discard(hit.series_uid)
    ident = Dataset()
    ident.QueryRetrieveLevel, ident.StudyInstanceUID, ident.SeriesInstanceUID = "SERIES", hit.study_uid, hit.series_uid
    try:
        if settings.retrieve == "move":
            assoc = associate(settings, [MOVE], what)
            responses = assoc.send_c_move(ident, settings.calling_aet, MOVE)
        else:
            ae = application_entity(settings)
            storage = _storage_classes()
            roles = [build_role(uid, scp_role=True) for uid in storage]
            assoc = associate(settings, [GET] + storage, what, ae=ae, ext_neg=roles,
                              evt_handlers=[(evt.EVT_C_STORE, inbox.on_store)])
            responses = assoc.send_c_get(ident, GET)
        try:
            status, completed, failed, counted = _final_status(responses, what, settings)
        finally:
            assoc.release()
        received = inbox.count(hit.series_uid)
        if status not in (0x0000, 0xB000):
            meaning = f"status 0x{status:04X}, {MOVE_STATUS.get(status, 'failure')}"
            if received or completed or failed:
                raise PacsError(f"{what}: failed mid-transfer after {received} instances ({meaning}); nothing kept")
            hint = ""
            if settings.retrieve == "move" and (status == 0xA801 or status >> 12 == 0xC):
                hint = (f"; does the PACS know the move destination {settings.calling_aet!r} (medrecon's AE title, "
                        "host and --store-port in its modalities; Orthanc: DicomModalities)? Does it send as "
                        f"{settings.aet!r}? (medrecon takes images only from the AE titles in pacs.accept_from, by "
                        "default the PACS's own.) Or use --retrieve get")
            raise PacsError(f"{what}: the PACS answered {meaning}; nothing kept{hint}")
        if not counted:  # the PACS reported no counts (the standard lets it): what arrived must be the whole series
            completed = received
        if failed or received == 0 or received != completed or (hit.n_instances and received != hit.n_instances):
            raise PacsError(f"{what}: incomplete ({received} received, {completed} reported sent, {failed} failed"
                            + (f", {hit.n_instances} expected" if hit.n_instances else "") + "); nothing kept")
        return inbox.take(hit.series_uid, dest)
    finally:
        inbox.discard(hit.series_uid)


def _final_status(responses, what: str, settings: PacsSettings) -> tuple[int, int, int, bool]:
    """(final status, completed, failed sub-operations, whether the final response reported the counts) of a
    C-MOVE/C-GET; a PacsError if the PACS went silent."""
    s = completed = failed = 0
    counted = False
    for status, _ in responses:
        if not status:
            raise PacsError(f"{what}: the PACS stopped answering (connection lost or timed out after "
                            f"{settings.timeout:g} s)")
        s = int(status.Status)
        counted = "NumberOfCompletedSuboperations" in status  # the final response's (optional) counts
        completed = int(status.get("NumberOfCompletedSuboperations", completed) or 0)
        failed = int(status.get("NumberOfFailedSuboperations", failed) or 0)
    return s, completed, failed, counted


def _storage_classes() -> list[str]:
    """Storage SOP classes offered for C-GET (a presentation context each; at most 128 in all)."""
    from pynetdicom import sop_class as sc
    return [sc.CTImageStorage, sc.MRImageStorage, sc.EnhancedCTImageStorage, sc.EnhancedMRImageStorage,
            sc.SecondaryCaptureImageStorage, sc.PositronEmissionTomographyImageStorage]
