"""Reconstruct every DICOM series under a folder tree; mirror the tree; keep a resumable manifest.

OUTPUT_ROOT/<relative folder of the series>/<description>_<UID tail>/ holds one ``reconstruct`` output.
Every path component is sanitised to ``[A-Za-z0-9._-]`` (no '..', at most 64 characters; a folder name that
loses more than its spaces gets a short hash of the original, so 'Müller, Jörg' and 'Müller, Jürg' stay apart),
and the final path is checked to lie inside OUTPUT_ROOT, so no DICOM tag or folder name can escape it. A top-level
folder named like a file the batch writes there (manifest.csv, index.html, index_files) is mirrored with a
trailing ``_``. Symbolic links to folders are followed (each real folder once). Reconstructions medrecon wrote
(``is_reconstruction``: e.g. under a linked output root) are passed over. One batch at a time writes into an output root
(a lock file there while it runs; a second is refused).

Identity: each output's marker (and report.json) records the SeriesInstanceUID, the SHA-256 of the
series' file list and the config's fingerprint. A series is finished when its folder's marker names it with
the same file list and config (another config is a conflict that --overwrite resolves); the
manifest keeps the series -> folder mapping, which a later run reuses and never changes, and a new series
never takes a folder that holds another series' output (colliding names get _2, _3, ...). Rows of earlier runs
whose series are not under this run's input root are kept as they were.

``manifest.csv`` (series_uid, input_path, output_path, status, seconds, error; paths relative to
INPUT_ROOT and OUTPUT_ROOT) is rewritten atomically after every series. A failing series is recorded with
its error and the batch goes on. :func:`run_series` is the work for one series, for any engine.
The local loop here and the distributed engine (``pipelines.engines``, ``--engine ray``) both call
:func:`run_series`, and only the driver writes the manifest.

With ``outputs.deidentify`` (``medrecon.io.deidentify``) nothing in OUTPUT_ROOT identifies a source: each output is
``series-<the de-identified UID's last 12 digits>/`` directly under the root (no mirrored tree, no
SeriesDescription), rows go by the de-identified UID and the input's ``input_label`` instead of its path, and errors
are ``scrub``-bed. Markers record the series so too (``recorded_source``), and ``output_state`` compares in the form
a marker records, so resuming works alike. An output root holds de-identified rows or others, never both (a batch
of the other kind is refused there).
"""
from __future__ import annotations

import csv
import errno
import fcntl
import hashlib
import io
import logging
import os
import re
import time
import unicodedata
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from medrecon.errors import InputError, one_line, recorded_error
from medrecon.io import atomic_path, list_series
from medrecon.io.atomic import O_NOFOLLOW, os_reason, read_marker, remove_empty_folders
from medrecon.io.deidentify import INPUT_LABEL, check_key, deidentified_uid, input_label, recorded_source, scrub

from .config import load_config
from .html_report import ASSETS, BATCH_PAGE_MARK, write_batch_index
from .tasks import reconstruct

log = logging.getLogger("medrecon")

MANIFEST = "manifest.csv"
LOCK = ".medrecon-batch.lock"
MANIFEST_FIELDS = ("series_uid", "input_path", "output_path", "status", "seconds", "error")
MAX_NAME = 64


def sanitize(name: str, fallback: str = "series") -> str:
    """A safe single path component: [A-Za-z0-9._-] only, no leading dots, at most MAX_NAME characters."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._-")
    s = re.sub(r"\.{2,}", ".", s)[:MAX_NAME].rstrip("._-")
    return s or fallback


def without_accents(text: str) -> str:
    """``text`` in ASCII, accents dropped (Ü -> U) and other scripts left out."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def mirrored(name: str) -> str:
    """A folder's name in the output tree: accents dropped, then ``sanitize``; when that changes more than its
    runs of whitespace (other characters, or the whole name), a 6-digit hash of the original keeps distinct names
    apart ('a,b' and 'a;b', 'Müller, Jörg' and 'Müller, Jürg', two names in another script)."""
    s = sanitize(without_accents(name), "")
    if s and s == re.sub(r"\s+", "_", name.strip()):
        return s
    return f"{s[:MAX_NAME - 7] or 'folder'}-{hashlib.sha256(name.encode('utf-8', 'surrogateescape')).hexdigest()[:6]}"


@dataclass
class Job:
    uid: str
    input: Path  # the series folder
    output: Path
    files_sha256: str = ""
    input_root: Path = Path("/")
    output_root: Path = Path("/")
    config_sha256: str = ""  # the batch's Config.fingerprint ("": any config)
    refused: str = ""  # why reading the series will fail, from its headers (``SeriesInfo.refused``), or ""
    deidentify: bool = False  # outputs.deidentify: its row names the series and input as a de-identified record does

    def state_for(self, overwrite: bool) -> str:
        """The output folder's ``output_state`` for this series a run acts on, from its marker read now (at a run's
        turn, as the folder may have been removed or replaced since the batch began), or 'new' with ``overwrite``
        (its marker then unread): 'new' is reconstructed, 'done' skipped, any other a conflict."""
        return state_now(self.output, overwrite, self.uid, self.files_sha256, self.config_sha256)

    @cached_property
    def recorded_uid(self) -> str:
        """The series' UID as its row and output record it (de-identified: the derived series' reference). Cached,
        as ``recorded_input``: a batch writes every job's row after each series."""
        return recorded_uid(self.uid, self.deidentify)

    @cached_property
    def recorded_input(self) -> str:
        """The series folder as its row records it: relative to the input root, or de-identified its label."""
        return input_label(self.input) if self.deidentify else relative(self.input, self.input_root)

    def row(self, status: str, seconds: str = "", error: str = "") -> dict:
        return {"series_uid": self.recorded_uid, "input_path": self.recorded_input,
                "output_path": relative(self.output, self.output_root), "status": status, "seconds": seconds,
                "error": error}

    def said(self, text: str) -> str:
        """``text`` as its row's error: one line, paths relative to the roots; de-identified, what names the input
        replaced (``medrecon.io.deidentify.scrub``)."""
        if self.deidentify:
            text = scrub(text, self.input, within=[self.input_root])
        return manifest_line(text, self.input_root, self.output_root)


def recorded_uid(uid: str, deidentify: bool) -> str:
    """A series' UID as a (de-identified) record gives it; "" stays ""."""
    return deidentified_uid(uid) if deidentify and uid else uid or ""


#: why an output that is not this series' finished one is not redone without --overwrite, by ``output_state``
CONFLICT = {"changed": "the series' files changed since it was written",
            "reconfigured": "it was made with another config (or other --set values)",
            "other": "it holds the output of another series, or one that does not record its series"}


def state_now(output: Path, overwrite: bool, uid: str, files_sha256: str | None, config_sha256: str = "") -> str:
    """``output_state`` of a series' output folder from its marker read now, or 'new' with ``overwrite`` (a series
    redone whatever its folder holds; the marker then unread)."""
    return "new" if overwrite else output_state(read_marker(output), uid, files_sha256, config_sha256)


def output_state(mark: dict | None, uid: str, files_sha256: str | None, config_sha256: str = "") -> str:
    """'new' (no output yet), 'done', 'reconfigured' (made with another config; ``config_sha256`` "": any),
    'changed' (made with this config, from files that changed since; not checked with ``files_sha256`` None) or
    'other' (the folder holds an output of another series, or one that does not say which), from the output
    folder's marker ``mark`` (``read_marker``; the series compared in the form the marker records it:
    de-identified or not)."""
    if mark is None:
        return "new"
    recorded = recorded_source(uid, files_sha256, bool(mark.get("deidentified")))
    if (mark.get("series_uid") or "") != recorded.get("series_uid", ""):  # "": an anonymised series without a UID
        return "other"
    made_with = mark.get("config_sha256", config_sha256)  # outputs of earlier versions do not say
    if config_sha256 and made_with != config_sha256:  # first: files that changed since do not override it
        return "reconfigured"
    if files_sha256 is not None and mark.get("files_sha256") != recorded.get("files_sha256"):
        return "changed"
    return "done"


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, with forward slashes (the manifest's form)."""
    return Path(os.path.relpath(path, root)).as_posix()


def progress_line(n: int, total: int, row: dict) -> str:
    """A series' progress line, whichever engine ran it: number, status, output folder, error."""
    return f"[{n}/{total}] {row['status']:8s} {row['output_path']} {row['error']}".rstrip()


def _absolute(path) -> Path:
    return Path(os.path.abspath(path))  # symbolic links kept: a linked folder keeps its place in the tree


#: what a batch writes at the top of its output root, which a mirrored top-level folder must not be named
ROOT_FILES = (MANIFEST, "index.html", ASSETS)


def plan(input_root: Path, output_root: Path, found: list, known: dict[str, Path] | None = None,
         passed_over: list | None = None, deidentify: bool = False) -> list[Job]:
    """One job per DICOM series ``found`` under input_root (``list_series``), output folders mirrored under
    output_root (``deidentify``: ``series-`` and the de-identified UID's tail, under the root; a series without a
    UID: ``input-`` and its ``input_label``'s tail). ``known``: series UID
    (as the manifest records it) -> output folder of earlier runs, kept as they are. ``passed_over``, when given,
    gets (folder, why) of the series that are not jobs (``why_passed_over``)."""
    input_root, output_root = _absolute(input_root), _absolute(output_root)
    known = dict(known or {})
    claimed = set(known.values())
    jobs = []
    for info in found:
        folder, uid = _absolute(info.folder), str(info.uid)
        why = why_passed_over(info)
        if why:
            if passed_over is not None:
                passed_over.append((folder, why))
            continue
        recorded = recorded_uid(uid, deidentify)
        out = known.get(recorded)
        if out is None and deidentify:  # nothing of the input's names, its tree or its description; a series
            # without a UID by its folder's label (by position, moving one input away gave its folder to another)
            rel, n = [], 1
            leaf = f"series-{recorded[-12:]}" if uid else f"input-{input_label(folder)[-12:]}"
        elif out is None:
            rel = [mirrored(p) for p in folder.relative_to(input_root).parts]
            if rel and rel[0].lower() in ROOT_FILES:
                rel[0] += "_"  # the batch writes a file of that name there
            # the description shortened first, so that a long one (DICOM allows 64) never cuts the UID's digits
            leaf, n = sanitize(f"{without_accents(info.description or 'series')[:MAX_NAME - 13]}_{uid[-12:]}"), 1
        if out is None:
            out = output_root.joinpath(*rel, leaf)
            while out in claimed or _taken(out, uid):  # two series that sanitise to one name
                n += 1
                out = output_root.joinpath(*rel, f"{leaf}_{n}")
            claimed.add(out)
        if not out.resolve().is_relative_to(output_root.resolve()):
            raise InputError(f"output {out} lies outside {output_root}: a symbolic link in the output tree points "
                             "elsewhere; remove it, or choose another output root")
        jobs.append(Job(uid, folder, out, info.files_sha256, input_root, output_root, refused=info.refused,
                        deidentify=deidentify))
    return jobs


def why_passed_over(info) -> str:
    """Why a series found is no job ("" for a scan to reconstruct): a reconstruction medrecon wrote (e.g. an earlier
    batch's output under a link), or an image that is no volume (a scout, a dose screenshot, RT dose)."""
    return "a reconstruction medrecon wrote, not a scan" if is_reconstruction(info) else \
        no_volume_reason(info.not_a_volume)


def no_volume_reason(what: str) -> str:
    """A series that is no volume, as a batch and ``pacs run``/``listen`` say why they pass it over: ``what`` it is
    (``SeriesInfo.not_a_volume``, ``medrecon.io.dicom_scan.modality_not_a_volume``), "" where it is a volume."""
    return f"{what}, {NOT_A_VOLUME}" if what else ""


#: the tail of ``no_volume_reason``
NOT_A_VOLUME = "not a volume to reconstruct"

#: the manifest status of a series passed over as no volume (``pacs run``/``listen``'s structure sets, reports,
#: scouts; ``error`` says what it is, ``no_volume_reason``), apart from one ``skipped`` as finished
PASSED_OVER = "passed over"


def is_reconstruction(info) -> bool:
    """Whether a series found is one medrecon wrote as a reconstruction's result: derived by medrecon, in a
    folder of an output medrecon wrote (``reconstruct``'s dicom/, the demo's). A series written by ``medrecon
    convert`` or ``simulate`` from a user's volume is a scan like any other."""
    return info.made_by_medrecon and read_marker(Path(info.folder).parent) is not None


def _taken(out: Path, uid: str) -> bool:
    """The folder exists and is not free for series ``uid`` (not empty, and not that series' output)."""
    if not out.exists():
        return False
    if out.is_dir() and not any(out.iterdir()):
        return False
    mark = read_marker(out)
    return mark is None or (mark.get("series_uid") or "") != recorded_uid(uid, bool(mark.get("deidentified")))


def check_batch_root(output_root: Path) -> None:
    """The manifest.csv and index.html a batch writes into ``output_root`` may replace only its own: a user's file
    of either name there stops the batch before any work (they were silently replaced)."""
    manifest, index = output_root / MANIFEST, output_root / "index.html"
    for path in (manifest, index, output_root / LOCK):
        if path.is_symlink():  # writing through it would replace a file elsewhere
            raise InputError(f"{path} is a symbolic link; remove it (the batch writes its own {path.name} there)")
    if manifest.is_file():
        try:
            with open(manifest, newline="", encoding="utf-8", errors="surrogateescape") as f:
                header = next(csv.reader(f), [])
        except (OSError, csv.Error) as e:
            raise InputError(f"cannot read {manifest} ({e}); move it away or choose another output root") from e
        if tuple(header) != MANIFEST_FIELDS:
            raise InputError(f"{manifest} is not a medrecon batch manifest; move it away or choose another output "
                             "root (the batch writes its own manifest.csv there)")
    if index.is_file() and BATCH_PAGE_MARK not in index.read_bytes()[:4096].decode("utf-8", "replace"):
        raise InputError(f"{index} is not a medrecon batch page; move it away or choose another output root (the "
                         "batch writes its own index.html there)")


def write_manifest(path: Path, rows: list[dict]) -> None:
    """Write the manifest to a temporary sibling and rename it over the old one (atomic)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS)
    w.writeheader()
    w.writerows({k: _inert(v) for k, v in r.items()} for r in rows)
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8", errors="surrogateescape")  # folder names: their bytes


def save_progress(manifest: Path, rows: list[dict], title: str = "medrecon batch") -> None:
    """The batch as it stands (``batch``, ``pacs run``/``listen``): its manifest and, beside it, its page
    (index.html) headed ``title``."""
    write_manifest(manifest, rows)
    write_batch_index(manifest.parent, rows, title)


def read_manifest(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return [_current({k: _as_written(v) for k, v in r.items()}) for r in csv.DictReader(f)]


def _current(row: dict) -> dict:
    """A row as this version writes it: before ``PASSED_OVER``, a series passed over as no volume was ``skipped``
    with ``no_volume_reason`` as its error (that error's tail tells it from a finished series)."""
    if row.get("status") == "skipped" and (row.get("error") or "").endswith(f", {NOT_A_VOLUME}"):
        row["status"] = PASSED_OVER
    return row


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _inert(value):
    """A manifest cell a spreadsheet will not run as a formula: a value from a DICOM tag or a folder name starting
    with = + - @ gets a leading apostrophe (OWASP's CSV-injection rule), which ``read_manifest`` takes off; so does
    a value starting with an apostrophe (a folder named 'x reads back as itself)."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START + ("'",)) else value


def _as_written(value):
    return value[1:] if isinstance(value, str) and value.startswith("'") and \
        value[1:].startswith(FORMULA_START + ("'",)) else value


def earlier_rows(output_root: Path) -> list[dict]:
    """The manifest rows of earlier runs into ``output_root`` (empty when there is none)."""
    path = output_root / MANIFEST
    if not path.is_file():
        return []
    try:
        return read_manifest(path)
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path} ({e}); move it away to start the batch afresh") from e


def known_outputs(output_root: Path, rows: list[dict]) -> dict[str, Path]:
    """Series UID -> output folder recorded by the manifest rows of earlier runs (``earlier_rows``)."""
    return {r["series_uid"]: _absolute(output_root / r["output_path"]) for r in rows
            if r.get("series_uid") and r.get("output_path")}


def earlier_markers(output_root: Path, rows: list[dict]) -> dict[Path, dict]:
    """Output folder -> marker of the outputs that the rows of earlier runs name (those with a marker), each read
    once at the batch's start: ``check_key`` checks them, and the dry run, which writes nothing, acts on them
    (``output_state``). A run reads each series' marker again at its turn (``run_series``): an output removed
    or replaced while earlier series ran is then acted on as it is."""
    folders = {_absolute(output_root / r["output_path"]) for r in rows if r.get("output_path")}
    return {f: m for f in folders if (m := read_marker(f)) is not None}


def check_deidentified_alike(output_root: Path, rows: list[dict], deidentify: bool) -> None:
    """An output root's rows are de-identified (their input is an ``input_label``) or not, all of them: a batch of the
    other kind is refused there before any work (it would have left a de-identified root with series' paths and
    UIDs, or mixed pseudonyms into another)."""
    other = [r for r in rows if bool(INPUT_LABEL.fullmatch(r.get("input_path") or "")) != deidentify]
    if other:
        raise InputError(f"{output_root} holds the outputs of a batch {'without' if deidentify else 'with'} "
                         f"outputs.deidentify ({len(other)} of its {len(rows)} manifest rows); a batch "
                         f"{'with' if deidentify else 'without'} it writes into another output root")


@contextmanager
def batch_lock(output_root: Path):
    """Hold the output root for one batch (``LOCK``, an advisory lock released when the process ends): a second
    batch into the same root, e.g. an overlapping scheduled run, is refused instead of racing the first. The
    holder removes the file when it is done, still holding it; so a batch that locked a file no longer at the
    path (removed, or replaced by another batch's) tries again."""
    path = output_root / LOCK
    for _ in range(5):
        f, held = _lock_file(path)
        if not held or _same_file(f, path):
            break
        f.close()
    else:
        raise InputError(f"{path} was replaced each time this batch locked it (batches starting and ending in "
                         f"{output_root}); try again")
    with f:
        try:
            yield
        finally:
            if held and _same_file(f, path):  # ours: removed before the lock is let go
                with suppress(OSError):  # left behind, it is only an empty file
                    path.unlink()


def _lock_file(path: Path):
    """(the open ``LOCK`` file, whether it is locked); InputError when another batch holds it."""
    try:  # not through a link another user placed there
        f = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | O_NOFOLLOW, 0o644), "a")
    except OSError as e:
        raise InputError(f"cannot write {path}: {os_reason(e)}; choose a writable output root") from e
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return f, True
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):  # a file system without locks
            log.warning(f"{path.parent}: cannot lock {LOCK} ({os_reason(e)}); running without the lock, so "
                        "do not start a second batch into this output root while this one runs")
            return f, False
        f.close()
        raise InputError(f"another batch is writing into {path.parent} (it holds {LOCK}); wait for it to "
                         "finish, or choose another output root") from None


def _same_file(f, path: Path) -> bool:
    """Whether ``path`` still names the open file ``f``."""
    try:
        return os.path.samestat(os.fstat(f.fileno()), os.stat(path, follow_symlinks=False))
    except FileNotFoundError:
        return False


def run_series(job: Job, cfg, *, overwrite: bool = False, progress: bool = False, resample: bool = False,
               prior=None, state: str | None = None) -> dict:
    """Reconstruct one series of a batch unless it is finished; returns its manifest row. Never raises for a
    bad series: the error goes into the row, and a failed or interrupted series leaves no empty folders. ``prior``:
    the config's prior already loaded (None: loaded for this series); ``state``: its ``Job.state_for`` just read
    by the caller (None: read now)."""
    state = state or job.state_for(overwrite)
    if state == "done":
        return job.row("skipped", "0.0")
    if state != "new":
        return job.row("conflict", "0.0", f"{relative(job.output, job.output_root)} exists but {CONFLICT[state]}; "
                                          "pass --overwrite to redo it")  # its output stays, valid as it was
    t0 = time.perf_counter()
    try:
        skipped = reconstruct(cfg, job.input, job.output, overwrite=overwrite, series=job.uid, progress=progress,
                              resample=resample, prior=prior).skipped_files
        status, error = "done", ""
        if skipped:  # read without them: a finished row says so (the damaged file may be a slice)
            error = job.said(f"read without {len(skipped)} damaged file(s): {'; '.join(skipped)}")
    except Exception as e:  # noqa: BLE001 - one bad series must not stop the batch
        status, error = "failed", job.said(recorded_error(e))
    finally:  # failed, or interrupted (Ctrl-C, SIGTERM): the folders made for its output go (a finished one stays)
        _prune_empty(job.output, job.output_root)
    return job.row(status, f"{time.perf_counter() - t0:.2f}", error)


def manifest_line(text: str, *roots: Path | None) -> str:
    """``text`` as one manifest-safe line: paths under ``roots`` relative to them and a root itself as '.' (its
    name may be a patient's), control characters escaped as the console does (``medrecon.errors.one_line``: a
    newline in a path as \\n), runs of spaces as one, at most 500 characters."""
    for root in roots:
        if root is not None:
            text = text.replace(f"{root}{os.sep}", "")
            text = re.sub(re.escape(str(root)) + r"(?=[\s:;,)'\"]|$)", ".", text)
    return re.sub(r" {2,}", " ", one_line(text.strip()))[:500]


def _prune_empty(folder: Path, root: Path) -> None:
    """Remove ``folder`` (if there) and its parents below ``root`` while they are empty. ``atomic_path`` removes
    the folders its failed write made; this also removes one that a series running at the same time (another
    worker) made and kept while its own temporary was inside, and so left empty to this series."""
    remove_empty_folders(p for p in (folder, *folder.parents) if root in p.parents)


@dataclass
class BatchResult:
    manifest: Path
    rows: list[dict]

    @property
    def failed(self) -> int:
        return sum(r["status"] == "failed" for r in self.rows)

    @property
    def conflicts(self) -> int:
        """Series left as they were: their output was made from other files or with another config."""
        return sum(r["status"] == "conflict" for r in self.rows)

    @property
    def passed_over(self) -> int:
        """Series passed over as no volume (``PASSED_OVER``: a structure set or report that ``pacs run`` found)."""
        return sum(r["status"] == PASSED_OVER for r in self.rows)

    def summary(self) -> str:
        """'N ok[, N passed over (not a volume)], N failed[, N conflicts]' of this run's rows (``batch``, ``pacs
        run`` and ``listen`` alike)."""
        ok = len(self.rows) - self.failed - self.conflicts - self.passed_over
        return (f"{ok} ok" + (f", {self.passed_over} passed over (not a volume)" if self.passed_over else "")
                + f", {self.failed} failed" + (f", {self.conflicts} conflicts (--overwrite redoes them)"
                                               if self.conflicts else ""))


def batch(input_root, output_root, config, overrides=(), dry_run: bool = False, overwrite: bool = False,
          progress: bool = False, echo=print, resample: bool = False, engine=None) -> BatchResult:
    """Reconstruct every DICOM series under input_root (see the module docstring). ``engine``: None runs the
    series one after the other here; an object with ``run(cfg, jobs, manifest, overwrite, echo, resample)
    -> rows`` (``pipelines.engines.RayEngine``) runs them elsewhere. The result's rows are this run's; the
    manifest also keeps earlier runs' rows of series not under ``input_root``."""
    cfg = load_config(config, overrides)  # validated before anything runs
    input_root, output_root = Path(input_root), Path(output_root)
    if not input_root.is_dir():
        raise InputError(f"input root not found or not a folder: {input_root}")
    if output_root.resolve().is_relative_to(input_root.resolve()):
        raise InputError(f"output root {output_root} lies inside the input tree {input_root}; choose another")
    check_batch_root(output_root)
    if dry_run:
        return _batch(cfg, input_root, output_root, *_listed(input_root), True, overwrite, progress, echo, resample,
                      engine)
    listed = None
    if not output_root.is_dir():  # no batch works there: listed first, so that nothing to do creates nothing
        listed = _listed(input_root)
        try:
            output_root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create the output root {output_root}: {os_reason(e)}; "
                             "choose a writable location") from e
    with batch_lock(output_root):  # else locked before the (long) listing: a second batch is refused at once
        return _batch(cfg, input_root, output_root, *(listed or _listed(input_root)), False, overwrite, progress,
                      echo, resample, engine)


def _listed(input_root: Path) -> tuple[list, list]:
    """``list_series`` of the input tree: (series found, folders where series may be but none can be read);
    InputError when it holds no series to reconstruct."""
    problems: list = []  # by its absolute path: the files its errors name lie under the root manifest_line takes off
    found = list_series(_absolute(input_root), recursive=True, problems=problems)
    if not problems and all(map(why_passed_over, found)):
        raise InputError(f"no DICOM series to reconstruct under {input_root}" + (
            f" (only {len(found)} series that are no scans, e.g. {why_passed_over(found[0])})" if found else
            _volume_files_hint(input_root)))
    return found, problems


def _volume_files_hint(input_root: Path, most: int = 10000) -> str:
    """What a tree without DICOM holds that ``medrecon reconstruct`` reads (NIfTI, NRRD/MetaImage), said with the
    fix; "" where it holds none (the first ``most`` files looked at)."""
    from medrecon.io.dispatch import is_non_dicom_volume_file
    seen, volumes = 0, []
    for folder, dirs, files in os.walk(input_root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files)[:max(0, most - seen)]:
            path = Path(folder) / name
            if not name.startswith(".") and is_non_dicom_volume_file(path):
                volumes.append(path.relative_to(input_root))
        seen += len(files)
        if seen >= most:
            break
    if not volumes:
        return ""
    return (f" (it holds {len(volumes)} NIfTI or NRRD/MetaImage file(s), e.g. {volumes[0]}: batch reconstructs DICOM "
            f"series; give each file to `medrecon reconstruct -i {input_root / volumes[0]}`)")


def _batch(cfg, input_root: Path, output_root: Path, found, problems, dry_run, overwrite, progress, echo,
           resample, engine) -> BatchResult:
    """The batch after ``list_series`` ``found`` its series (``problems``: folders that could not be read)."""
    from tqdm.auto import tqdm

    passed_over: list = []  # (folder, why) of the series that are not scans to reconstruct
    deidentify = bool(cfg.outputs.deidentify)
    before = earlier_rows(output_root)
    check_deidentified_alike(output_root, before, deidentify)
    marks = earlier_markers(output_root, before) if deidentify else {}
    if deidentify and before:  # before any key is made: a new one named every series anew
        check_key(output_root, list(marks.values()), [str(s.uid) for s in found if s.uid])
    jobs = plan(input_root, output_root, found, known_outputs(output_root, before), passed_over, deidentify)
    fingerprint = cfg.fingerprint()
    for j in jobs:
        j.config_sha256 = fingerprint
    for f, why in passed_over:
        echo(f"pass    {relative(f, _absolute(input_root))}: {why}")
    unread = []  # folders where series may be but none can be read: a failed row each, without a series or output
    for f, why in problems:
        j = Job("", _absolute(f), _absolute(output_root), input_root=_absolute(input_root),
                output_root=_absolute(output_root), deidentify=deidentify)
        unread.append({**j.row("failed", "0.0", j.said(f"InputError: {why}")), "output_path": ""})
    for r in unread:
        echo(f"failed  {r['input_path']}: {r['error']}")
    manifest = output_root / MANIFEST
    if dry_run:
        for j in jobs:
            known = j.output in marks and not overwrite  # nothing is written: those read for check_key stand
            state = (output_state(marks[j.output], j.uid, j.files_sha256, j.config_sha256) if known
                     else j.state_for(overwrite))
            if state == "new" and j.refused:  # the run reads these headers and fails the series
                echo(f"fail  {j.uid}  {j.input}: {j.refused}")
                continue
            echo(f"{'run ' if state == 'new' else 'skip' if state == 'done' else f'conflict ({state})'}  {j.uid}  "
                 f"{j.input}  ->  {j.output}")
        return BatchResult(manifest, [])
    # rows of earlier runs whose series are not under this input root (another day's folder): kept as they were
    planned = {j.recorded_uid for j in jobs}
    kept = [r for r in before if r.get("series_uid") and r["series_uid"] not in planned]
    if engine is not None:  # e.g. pipelines.engines.RayEngine: same run_series, same manifest
        rows = kept + unread + engine.run(cfg, jobs, manifest, overwrite=overwrite, echo=echo, resample=resample,
                                          listed=kept + unread)  # (it saves as it goes, interrupted too)
        save_progress(manifest, rows)
        return BatchResult(manifest, rows[len(kept):])
    rows = kept + unread
    bar = tqdm(jobs, desc="series", unit="series", disable=not progress, position=0)
    tell = (lambda line: bar.write(one_line(line))) if progress else echo  # (echo: the CLI's escapes too)
    if unread:
        write_manifest(manifest, rows + [k.row("pending") for k in jobs])
    try:
        for i, j in enumerate(bar, 1):
            bar.set_postfix_str(one_line(j.output.name), refresh=True)
            rows.append(run_series(j, cfg, overwrite=overwrite, progress=progress, resample=resample))
            save_progress(manifest, rows + [k.row("pending") for k in jobs[i:]])
            r = rows[-1]
            tell(progress_line(i, len(jobs), r))
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, SIGTERM: the series not finished stay 'pending'
        left = jobs[len(rows) - len(kept) - len(unread):]
        rows += [k.row("pending") for k in left]
        save_progress(manifest, rows)
        echo(f"interrupted: {len(left)} series stay 'pending' in {manifest} and {output_root / 'index.html'}, and a "
             "rerun does them")
        raise
    finally:
        bar.close()
    return BatchResult(manifest, rows[len(kept):])
