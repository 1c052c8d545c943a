"""`medrecon pacs echo | find | run | listen`: series from and to a PACS over DICOM networking."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .app import Typer, app, say
from .commands_recon import exit_if_series_failed

pacs_app = Typer(no_args_is_help=True, help="Query/retrieve series from a PACS, reconstruct them and store "
                                            "the derived series back; or listen for series sent to medrecon.")
app.add_typer(pacs_app, name="pacs")

PACS_FILE = typer.Option(None, "--pacs", help="YAML file with a 'pacs:' section (host, port, aet, calling_aet, "
                                              "retrieve, store_port, store_address, timeout, tls).")
HOST = typer.Option(None, "--host", help="The PACS's host name or address.")
PORT = typer.Option(None, "--port", help="The PACS's DICOM port.")
AET = typer.Option(None, "--aet", help="The PACS's AE title (called AE).")
CALLING = typer.Option(None, "--calling-aet", help="medrecon's AE title (default MEDRECON).")
STORE_PORT = typer.Option(None, "--store-port", help="Port of medrecon's storage SCP (C-MOVE destination, listen).")
STORE_ADDRESS = typer.Option(None, "--store-address", help="Address the storage SCP listens on (default 0.0.0.0).")
RETRIEVE = typer.Option(None, "--retrieve", help="move (C-MOVE to medrecon's SCP, default) or get (C-GET).")
TIMEOUT = typer.Option(None, "--timeout", help="Seconds to wait for the PACS (default 30).")
ACCEPT = typer.Option(None, "--accept-from", help="A calling AE title the storage SCP takes images from "
                                                  "(repeatable; '*': any). Default: the PACS's (--aet).")
CONFIG = typer.Option(..., "--config", "-c", help="Reconstruction config (YAML file or a name in configs/).")
SET = typer.Option(None, "--set", help="Override a config value: --set solver.steps=50 (repeatable).")
PATIENT = typer.Option("", "--patient-id", help="PatientID to match.")
DATE = typer.Option("", "--date", help="StudyDate: YYYYMMDD or YYYYMMDD-YYYYMMDD (open ends allowed).")
MODALITY = typer.Option("", "--modality", help="Modality to match, e.g. CT or MR.")
DESCRIPTION = typer.Option("", "--description", help="SeriesDescription to match (* and ? wildcards).")
STUDY = typer.Option("", "--study-uid", help="StudyInstanceUID to match.")
SERIES = typer.Option("", "--series-uid", help="SeriesInstanceUID to match.")


def _settings(pacs, host, port, aet, calling_aet, store_port, store_address, retrieve, timeout, accept_from=None):
    """The PACS settings (first of every pacs command: it also checks that DICOM networking is installed)."""
    import importlib.util
    from medrecon.errors import InputError
    if importlib.util.find_spec("pynetdicom") is None:
        raise InputError("medrecon pacs needs pynetdicom, which is not installed: pip install 'medrecon[pacs]'")
    from .pacs import load_settings
    return load_settings(pacs, host=host, port=port, aet=aet, calling_aet=calling_aet, store_port=store_port,
                         store_address=store_address, retrieve=retrieve, timeout=timeout,
                         accept_from=accept_from or None)


def _query(patient_id, date, modality, description, study_uid, series_uid):
    from .pacs import Query
    return Query(patient_id, date, modality, description, study_uid, series_uid)


def _finish(res) -> None:
    say(f"manifest: {res.manifest} ({res.summary()}); "
        f"report: {res.manifest.parent / 'index.html'}")
    exit_if_series_failed(res)


@pacs_app.command()
def echo(pacs: Optional[Path] = PACS_FILE, host: Optional[str] = HOST, port: Optional[int] = PORT,
         aet: Optional[str] = AET, calling_aet: Optional[str] = CALLING, timeout: Optional[float] = TIMEOUT):
    """C-ECHO: check that the PACS answers and accepts medrecon's AE title."""
    from .pacs import echo as run
    s = _settings(pacs, host, port, aet, calling_aet, None, None, None, timeout)
    run(s)
    say(f"{s.peer()} answers {s.calling_aet}")


@pacs_app.command()
def find(pacs: Optional[Path] = PACS_FILE, host: Optional[str] = HOST, port: Optional[int] = PORT,
         aet: Optional[str] = AET, calling_aet: Optional[str] = CALLING, timeout: Optional[float] = TIMEOUT,
         patient_id: str = PATIENT, date: str = DATE, modality: str = MODALITY, description: str = DESCRIPTION,
         study_uid: str = STUDY, series_uid: str = SERIES):
    """C-FIND: list the matching series (UID, modality, images, study date, description; no patient data); one that
    is no volume (an RT structure set, a report) is marked as `pacs run` passes it over."""
    from .pacs import find_series
    from .pacs_batch import hit_line
    s = _settings(pacs, host, port, aet, calling_aet, None, None, None, timeout)
    hits = find_series(s, _query(patient_id, date, modality, description, study_uid, series_uid))
    for h in hits:
        say(hit_line(h))
    say(f"{len(hits)} series on {s.peer()}")


@pacs_app.command()
def run(output_root: Path = typer.Argument(..., help="Folder for received series, outputs, manifest.csv and "
                                                     "index.html (resumable)."),
        config: str = CONFIG, set: Optional[List[str]] = SET,
        pacs: Optional[Path] = PACS_FILE, host: Optional[str] = HOST, port: Optional[int] = PORT,
        aet: Optional[str] = AET, calling_aet: Optional[str] = CALLING, store_port: Optional[int] = STORE_PORT,
        store_address: Optional[str] = STORE_ADDRESS, retrieve: Optional[str] = RETRIEVE,
        timeout: Optional[float] = TIMEOUT, accept_from: Optional[List[str]] = ACCEPT,
        patient_id: str = PATIENT, date: str = DATE, modality: str = MODALITY, description: str = DESCRIPTION,
        study_uid: str = STUDY, series_uid: str = SERIES,
        send: bool = typer.Option(True, "--send/--no-send", help="Store the derived series back on the PACS."),
        dry_run: bool = typer.Option(False, "--dry-run", help="List the matching series and stop."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Redo finished series too."),
        progress: bool = typer.Option(False, "--progress/--quiet", help="Progress bar per series.")):
    """Find the matching series, retrieve, reconstruct and store each back; exit code 1 if any failed."""
    from .pacs_batch import pacs_batch
    s = _settings(pacs, host, port, aet, calling_aet, store_port, store_address, retrieve, timeout, accept_from)
    res = pacs_batch(s, _query(patient_id, date, modality, description, study_uid, series_uid), output_root,
                     config, overrides=set or [], send=send, overwrite=overwrite, dry_run=dry_run,
                     progress=progress, echo=say)
    if not dry_run:
        _finish(res)


@pacs_app.command()
def listen(output_root: Path = typer.Argument(..., help="Folder for received series, outputs, manifest.csv and "
                                                        "index.html."),
           config: str = CONFIG, set: Optional[List[str]] = SET,
           pacs: Optional[Path] = PACS_FILE, host: Optional[str] = HOST, port: Optional[int] = PORT,
           aet: Optional[str] = AET, calling_aet: Optional[str] = CALLING, store_port: Optional[int] = STORE_PORT,
           store_address: Optional[str] = STORE_ADDRESS, timeout: Optional[float] = TIMEOUT,
           accept_from: Optional[List[str]] = ACCEPT,
           send: bool = typer.Option(True, "--send/--no-send", help="Store each derived series on the PACS "
                                                                  "(--host etc.)."),
           stable: float = typer.Option(10.0, "--stable-seconds", help="A series is complete after this many "
                                                                       "seconds without new images."),
           max_series: Optional[int] = typer.Option(None, "--max-series", help="Stop after this many series."),
           idle_exit: Optional[float] = typer.Option(None, "--idle-exit", help="Stop after this many idle seconds."),
           progress: bool = typer.Option(False, "--progress/--quiet", help="Progress bar per series.")):
    """Storage SCP: reconstruct every series sent to medrecon (e.g. by a PACS routing rule) and store the
    result back."""
    from .pacs_batch import listen as run_listen
    s = _settings(pacs, host, port, aet, calling_aet, store_port, store_address, None, timeout, accept_from)
    _finish(run_listen(s, output_root, config, overrides=set or [], send=send, stable_s=stable,
                       max_series=max_series, idle_exit_s=idle_exit, progress=progress, echo=say))
