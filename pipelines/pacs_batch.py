"""Query/retrieve/reconstruct/store against a PACS (``medrecon pacs run``) and the listening mode
(``medrecon pacs listen``), resumable through the batch manifest.

OUTPUT_ROOT holds ``manifest.csv`` (the batch's columns; ``error`` starts with the stage that failed:
``retrieve:``, ``reconstruct:`` or ``store:``), ``index.html``, ``received/<SeriesInstanceUID>/`` (each
source series as retrieved, present only when complete) and one ``reconstruct`` output per series,
``<description>_<UID tail>/``, which gets ``pacs.json`` once its derived series was stored on the PACS.
The manifest's paths are relative to OUTPUT_ROOT (the same command works from any folder); a user's
manifest.csv or index.html there stops the run before any work, as in the batch.
A rerun skips what is finished: no retrieval when ``received/<UID>`` exists, no reconstruction when the
output holds ``report.json``, no send when it holds ``pacs.json``. A series that is no volume is ``passed over`` (the
status ``batching.PASSED_OVER``) with the batch's reason (``batching.no_volume_reason``): by its C-FIND Modality
(``modality_not_a_volume``) before any retrieval, or once received, when it holds no image object or only images of
no volume (a scout).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from medrecon.errors import InputError, recorded_error
from medrecon.io import list_series
from medrecon.io.atomic import mark_as_written
from medrecon.io.dicom_scan import modality_not_a_volume

from .batching import (CONFLICT, PASSED_OVER, BatchResult, batch_lock, check_batch_root, manifest_line,
                       no_volume_reason, read_manifest, relative, sanitize, save_progress, state_now)
from .config import load_config, override_keys, override_list
from .outputs import write_json
from .pacs import PacsError, PacsSettings, Query, SeriesHit, find_series, store_folder
from .pacs_retrieve import Inbox, retrieve_series, serve
from .tasks import reconstruct


def pacs_config(config, overrides, output_root, check_files: bool = True):
    """The config of ``pacs run`` and ``pacs listen``, loaded and validated before any network use.
    ``outputs.deidentify`` is refused: their OUTPUT_ROOT keeps each source series as retrieved (``received/``),
    names its output by SeriesDescription and UID, its manifest records the source UIDs, and a de-identified
    derived series sent back would be filed on the PACS under a pseudonym, away from its patient's study. A batch
    over ``received/`` gives de-identified results (until the sixty-fourth session the setting was applied to each
    output's own files only and that series was sent)."""
    overrides = override_list(overrides)  # once: a generator is read here only
    cfg = load_config(config, overrides, check_files=check_files)
    if cfg.outputs.deidentify:
        received = Path(output_root) / "received"
        without = "without it" + ("" if "outputs.deidentify" in override_keys(overrides) else
                                  " (the config sets it: --set outputs.deidentify=false)")
        raise InputError(f"outputs.deidentify: pacs run and pacs listen keep the series they retrieve ({received}), "
                         "name each output by its SeriesDescription, record the source UIDs and send the results "
                         f"to the PACS, so their outputs identify the patient; run them {without} (--no-send "
                         f"stores nothing on the PACS), then `medrecon batch {received} OUT --config ... --set "
                         "outputs.deidentify=true` writes de-identified outputs into OUT")
    return cfg


class Runner:
    """What every series goes through: retrieve (unless received), reconstruct (unless done), store back
    (when ``send``); one manifest row each, the manifest and index.html rewritten after every series."""

    def __init__(self, settings: PacsSettings, output_root: Path, cfg, send: bool = True, overwrite: bool = False,
                 progress: bool = False, echo=print):
        """``cfg``: the config as ``pacs_config`` loaded and checked it (by ``pacs_batch`` and ``listen``, before
        the PACS is asked or anything is written)."""
        self.cfg = cfg
        self.fingerprint = self.cfg.fingerprint()
        self.settings, self.send, self.overwrite, self.progress, self.echo = settings, send, overwrite, progress, echo
        if send:
            settings.need_host()
        check_batch_root(Path(output_root))  # a user's manifest.csv or index.html there: a one-line error
        self.root = Path(os.path.abspath(output_root))  # the same folder wherever the command runs
        self.root.mkdir(parents=True, exist_ok=True)
        self.received = self.root / "received"
        self.inbox = Inbox(self.received)
        self.manifest = self.root / "manifest.csv"
        self.rows: dict[str, dict] = {}
        if self.manifest.is_file():  # keep the history of earlier runs (listen mode appends)
            self.rows = {r["series_uid"]: _rooted(r) for r in read_manifest(self.manifest)}

    def output_for(self, uid: str, description: str) -> Path:
        known = self.rows.get(uid, {}).get("output_path")
        if known:
            return self.root / known
        out = self.root / sanitize(f"{description or 'series'}_{uid[-12:]}")
        used = {self.root / r["output_path"] for r in self.rows.values()}
        n = 2
        while out in used:
            out = self.root / sanitize(f"{description or 'series'}_{uid[-12:]}_{n}")
            n += 1
        return out

    def process(self, uid: str, description: str = "", hit: SeriesHit | None = None) -> dict:
        """One series through the stages it still needs (the batch's ``output_state``: a received series that
        grew since its output was made, late images, is reconstructed and sent again; another config is a
        conflict that --overwrite resolves)."""
        src = self.received / sanitize(uid, "series")
        if hit is not None and hit.not_a_volume:  # by its C-FIND Modality, the batch's rule: not even retrieved
            return self.passed_over({"series_uid": uid, "input_path": relative(src, self.root) if src.is_dir() else "",
                                     "output_path": "", "seconds": "0.0"}, hit.not_a_volume)
        out = self.output_for(uid, description)
        row = {"series_uid": uid, "input_path": relative(src, self.root), "output_path": relative(out, self.root),
               "status": "", "seconds": "0.0", "error": ""}
        listed, damaged, others = _listing(src) if src.is_dir() else (None, [], [])  # None: not received yet
        mine = [s for s in listed or [] if s.uid == uid]
        if hit is not None and hit.n_instances and listed is not None and (listed or damaged) and \
                sum(s.n_files for s in mine) < hit.n_instances:  # the PACS holds images received since
            try:
                n = retrieve_series(self.settings, hit, src, self.inbox)  # merged: the output is then redone
                self.echo(f"        received {n} instances of {uid} (the PACS holds more than were received)")
            except Exception as e:  # noqa: BLE001 - one bad series must not stop the batch
                row["status"], row["error"] = "failed", manifest_line(f"retrieve: {recorded_error(e)}", self.root)
                return self.record(row)
            listed, damaged, others = _listing(src)
            mine = [s for s in listed if s.uid == uid]
        files = mine[0].files_sha256 if mine else None
        state = state_now(out, self.overwrite, uid, files, self.fingerprint)
        if state in ("reconfigured", "other"):
            row["status"], row["error"] = "conflict", (f"{out.name} exists but {CONFLICT[state]}; redo it with "
                                                       "`medrecon pacs run --overwrite`, or remove the folder")
            return self.record(row)
        if state == "changed":
            self.echo(f"        {uid} received more images since its output was made: reconstructed again (the "
                      "PACS keeps the earlier derived series)")
        overwrite = self.overwrite or state == "changed"
        done = state == "done"
        sent = (out / "pacs.json").is_file() and not overwrite
        if done and (sent or not self.send):
            row["status"] = "skipped"
            return self.record(row)
        t0, stage = time.perf_counter(), "retrieve"
        try:
            if not done and not src.is_dir():
                if hit is None:
                    raise PacsError(f"series {uid} was not received")
                n = retrieve_series(self.settings, hit, src, self.inbox)
                self.echo(f"        received {n} instances of {uid}")
            if listed is None and not done:  # received just now
                listed, damaged, others = _listing(src)
                mine = [s for s in listed if s.uid == uid]
            if not done and any(s.made_by_medrecon for s in listed):  # e.g. a routing rule sending our own output back
                row["status"], row["error"] = "skipped", "a series made by medrecon: not reconstructed again"
                return self.record(row)
            if not done and mine and all(s.not_a_volume for s in mine):  # a scout, a dose screenshot: as the batch
                return self.passed_over(row, mine[0].not_a_volume)
            if not done and not listed and not damaged:  # no image at all: a structure set, a report (listen, or
                # a PACS that gave no C-FIND Modality): no output ever
                return self.passed_over(row, _without_images(others), output_path="")
            stage = "reconstruct"
            if not done:  # reconstruct's atomic writer clears what killed runs left (medrecon.io.atomic)
                reconstruct(self.cfg, src, out, overwrite=overwrite, series=uid, progress=self.progress)
            stage = "store"
            if self.send:
                n = store_folder(self.settings, out / "dicom")
                derived = _series_uid(out / "dicom")
                mark_as_written(out, "pacs.json")  # first: killed in between, the marker names a file not there yet
                write_json(out / "pacs.json", {"stored_to": self.settings.peer(), "instances": n,
                                               "derived_series_uid": derived, "source_series_uid": uid,
                                               "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
                self.echo(f"        stored {n} instances of {derived} on {self.settings.peer()}")
            row["status"] = "done"
        except Exception as e:  # noqa: BLE001 - one bad series must not stop the batch
            row["status"] = "failed"
            row["error"] = manifest_line(f"{stage}: {recorded_error(e)}", self.root)
        row["seconds"] = f"{time.perf_counter() - t0:.2f}"
        return self.record(row)

    def passed_over(self, row: dict, why, **changes) -> dict:
        """``row`` (with ``changes``) recorded as passed over: not a volume, ``why`` (``no_volume_reason``'s)."""
        return self.record({**row, **changes, "status": PASSED_OVER, "error": no_volume_reason(why)})

    def record(self, row: dict, pending=()) -> dict:
        self.rows[row["series_uid"]] = row
        rows = list(self.rows.values()) + [p for p in pending if p["series_uid"] not in self.rows]
        save_progress(self.manifest, rows, title=f"medrecon PACS batch ({self.settings.peer()})")
        return row


def hit_line(h) -> str:
    """A series found on the PACS as `pacs find` and `pacs run --dry-run` list it: UID, modality, images, study date,
    description, and for one that is no volume (an RT structure set, a report) that `run` passes it over."""
    return (f"{h.series_uid}  {h.modality:3s} {h.n_instances or '?':>4} images  {h.study_date}  {h.description}"
            + (f"  (passed over: {no_volume_reason(h.not_a_volume)})" if h.not_a_volume else ""))


def pacs_batch(settings: PacsSettings, query: Query, output_root, config, overrides=(), send: bool = True,
               overwrite: bool = False, dry_run: bool = False, progress: bool = False, echo=print) -> BatchResult:
    """Find the series matching ``query`` on the PACS, retrieve, reconstruct and store each (see the module)."""
    cfg = pacs_config(config, overrides, output_root, check_files=not dry_run)  # refusals before the PACS is asked
    settings.need_host()
    hits = find_series(settings, query)
    ours = [h for h in hits if h.made_by_medrecon]
    if ours:
        echo(f"leaving out {len(ours)} series made by medrecon (derived series are not reconstructed again)")
    hits = [h for h in hits if not h.made_by_medrecon]
    if not hits:
        raise InputError(f"the PACS {settings.peer()} holds no series matching the query")
    if all(h.not_a_volume for h in hits):  # as the batch says it of a folder tree (``batching._listed``)
        raise InputError(f"the PACS {settings.peer()} holds no series to reconstruct matching the query (only "
                         f"{len(hits)} series that are no volume, e.g. {no_volume_reason(hits[0].not_a_volume)}; "
                         "they are not retrieved)")
    if dry_run:
        for h in hits:
            echo(hit_line(h))
        return BatchResult(Path(output_root) / "manifest.csv", [])
    if settings.retrieve == "move" and settings.store_port is None:
        raise InputError("C-MOVE needs medrecon's storage SCP: give --store-port (the port the PACS knows for "
                         f"AE {settings.calling_aet!r}) or use --retrieve get")
    run = Runner(settings, output_root, cfg, send, overwrite, progress, echo)
    with batch_lock(run.root):  # one run or listener per output root
        server = serve(settings, run.inbox) if settings.retrieve == "move" else None
        rows = []
        try:
            for i, h in enumerate(hits, 1):
                row = run.process(h.series_uid, h.description, h)
                rows.append(row)
                echo(f"[{i}/{len(hits)}] {_said(row)}")
        finally:
            if server is not None:
                server.shutdown()
            run.inbox.discard()
    return BatchResult(run.manifest, rows)


def listen(settings: PacsSettings, output_root, config, overrides=(), send: bool = True, stable_s: float = 10.0,
           max_series: int | None = None, idle_exit_s: float | None = None, progress: bool = False,
           echo=print) -> BatchResult:
    """Storage SCP: every series received (complete once nothing arrived for ``stable_s`` seconds) is
    reconstructed and, with ``send``, stored back on the PACS. Stops on Ctrl-C, after ``max_series``
    series, or after ``idle_exit_s`` seconds without work. Series received earlier but not finished are
    done first (resume)."""
    cfg = pacs_config(config, overrides, output_root)  # refusals before anything is written or served
    run = Runner(settings, output_root, cfg, send, False, progress, echo)
    with batch_lock(run.root):  # one run or listener per output root
        return _listen(run, settings, stable_s, max_series, idle_exit_s, echo)


def _listen(run: Runner, settings, stable_s, max_series, idle_exit_s, echo) -> BatchResult:
    server = serve(settings, run.inbox)
    echo(f"listening as {settings.calling_aet} on {settings.store_address}:{settings.store_port}; "
         f"a series is complete after {stable_s:g} s without new images (Ctrl-C stops)")
    rows, idle_since = [], time.monotonic()
    finished = {uid for uid, r in run.rows.items() if r.get("status") in ("done", "skipped", PASSED_OVER, "conflict")}
    todo = [p.name for p in sorted(run.received.iterdir())  # received before a restart, not finished then
            if p.is_dir() and not p.name.startswith(".") and p.name not in finished]
    try:
        while max_series is None or sum(r["status"] in ("done", "failed") for r in rows) < max_series:
            for uid in run.inbox.stable(stable_s):
                n = run.inbox.take(uid, run.received / sanitize(uid, "series"))
                echo(f"        received {n} instances of {uid}")
                if uid not in todo:  # late images of a finished series: process() sees its files changed
                    todo.append(uid)
            if not todo:
                if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                    break
                time.sleep(0.2)
                continue
            uid = todo.pop(0)
            row = run.process(uid, _description(run.received / sanitize(uid, "series")))
            rows.append(row)
            echo(f"[{len(rows)}] {_said(row)}")
            idle_since = time.monotonic()
    except KeyboardInterrupt:
        echo("stopped")
    finally:
        server.shutdown()
    return BatchResult(run.manifest, rows)


def _said(row: dict) -> str:
    """A series' progress line: status, UID, output folder (none for a series passed over unretrieved), error."""
    out = f" -> {row['output_path']}" if row["output_path"] else ""
    return f"{row['status']:7s} {row['series_uid']}{out} {row['error']}".rstrip()


def _rooted(row: dict) -> dict:
    """A manifest row with its paths relative to OUTPUT_ROOT. Every output lies directly in the root and every
    source series in ``received/``, so the folder's name is enough: it also finds the rows of earlier versions,
    which held paths relative to the folder they ran in (or absolute ones)."""
    name = {k: Path(row.get(k) or "").name for k in ("input_path", "output_path")}
    return {**row, "input_path": f"received/{name['input_path']}" if name["input_path"] else "",
            "output_path": name["output_path"]}


def _listing(folder: Path) -> tuple[list, list, list]:
    """A received series folder's ``list_series`` (its image series), its damaged files' problems and the Modality
    of its objects without an image: a folder with no image series nor damaged file holds no image (a series that is
    no volume, ``_without_images``), one with damaged files only is read, and fails, naming them."""
    damaged: list = []
    others: list = []
    return list_series(folder, recursive=True, problems=damaged, others=others), damaged, others


def _without_images(others: list) -> str:
    """What a received series without an image object holds, by the Modality of its objects (``_listing``'s): "a
    RTSTRUCT object" (``modality_not_a_volume``), else e.g. "no image (OT objects without pixel data)"."""
    modalities = {m.strip().upper() or "?" for m in others}
    known = [modality_not_a_volume(m) for m in sorted(modalities)]
    if len(known) == 1 and known[0]:
        return known[0]
    return f"no image ({'/'.join(sorted(modalities)) or 'no DICOM'} objects without pixel data)"


def _description(folder: Path) -> str:
    try:
        found = list_series(folder)
        return found[0].description if found else ""
    except Exception:  # noqa: BLE001 - only a folder name
        return ""


def _series_uid(folder: Path) -> str:
    import pydicom
    first = sorted(folder.glob("*.dcm"))[0]
    return str(pydicom.dcmread(first, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]).SeriesInstanceUID)
