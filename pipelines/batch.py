"""Reconstruct every DICOM series under a folder tree; mirror the tree; keep a resumable manifest.

OUTPUT_ROOT/<relative folder of the series>/<description>_<UID tail>/ holds one ``reconstruct`` output.
Every path component is sanitised to ``[A-Za-z0-9._-]`` (no '..', at most 64 characters), and the
final path is checked to lie inside OUTPUT_ROOT, so no DICOM tag or folder name can escape it.

``manifest.csv`` (series_uid, input_path, output_path, status, seconds, error) is rewritten atomically
after every series. A series whose output folder holds ``report.json`` is finished and skipped; the
temporary folder of an interrupted one is removed and the series redone. A failing series is recorded
with its error and the batch goes on.

The work of one series is ``run_series``; the local loop here and the distributed engine
(``pipelines.engines``, ``--engine ray``) both call it, and only the driver writes the manifest.
"""
from __future__ import annotations

import csv
import io
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from medrecon.errors import InputError
from medrecon.io import list_series

from .config import load_config
from .tasks import reconstruct

MANIFEST_FIELDS = ("series_uid", "input_path", "output_path", "status", "seconds", "error")
MAX_NAME = 64
TMP_PREFIX = ".medrecon-tmp-"  # medrecon.io.atomic's temporary siblings


def sanitize(name: str, fallback: str = "series") -> str:
    """A safe single path component: [A-Za-z0-9._-] only, no leading dots, at most MAX_NAME characters."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._-")
    s = re.sub(r"\.{2,}", ".", s)[:MAX_NAME].rstrip("._-")
    return s or fallback


@dataclass
class Job:
    uid: str
    input: Path  # the series folder
    output: Path
    done: bool  # a complete output exists

    def todo(self, overwrite: bool) -> bool:
        """Whether this series is (re)done: not finished yet, or ``overwrite``."""
        return overwrite or not self.done


def plan(input_root: Path, output_root: Path, list_series) -> list[Job]:
    """One job per DICOM series under input_root, output folders mirrored under output_root."""
    input_root, output_root = Path(input_root).resolve(), Path(output_root).resolve()
    jobs, used = [], set()
    for info in list_series(input_root, recursive=True):
        folder = Path(info.folder).resolve()
        rel = [sanitize(p, "folder") for p in folder.relative_to(input_root).parts]
        leaf = sanitize(f"{info.description or 'series'}_{str(info.uid)[-12:]}")
        out = output_root.joinpath(*rel, leaf)
        n = 2
        while out in used:  # two series that sanitise to one name
            out = output_root.joinpath(*rel, f"{leaf}_{n}")
            n += 1
        used.add(out)
        if not out.resolve().is_relative_to(output_root):
            raise InputError(f"internal error: output {out} escapes {output_root}")
        jobs.append(Job(str(info.uid), folder, out, (out / "report.json").is_file()))
    return jobs


def write_manifest(path: Path, rows: list[dict]) -> None:
    """Write the manifest to a temporary sibling and rename it over the old one (atomic)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS)
    w.writeheader()
    w.writerows(rows)
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)


def read_manifest(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _remove_stale_temps(out: Path) -> None:
    import shutil
    for p in out.parent.glob(f"{TMP_PREFIX}*-{out.name}"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


@dataclass
class BatchResult:
    manifest: Path
    rows: list[dict]

    @property
    def failed(self) -> int:
        return sum(r["status"] == "failed" for r in self.rows)


def batch(input_root, output_root, config, overrides=(), dry_run: bool = False, overwrite: bool = False,
          progress: bool = False, echo=print, engine=None) -> BatchResult:
    """Reconstruct every DICOM series under input_root (see the module docstring). ``engine``: None runs the
    series one after the other here; an object with ``run(cfg, jobs, manifest, overwrite, echo) -> rows``
    (``pipelines.engines.RayEngine``) runs them elsewhere."""
    cfg = load_config(config, list(overrides))  # validated before anything runs
    input_root, output_root = Path(input_root), Path(output_root)
    if not input_root.is_dir():
        raise InputError(f"input root not found or not a folder: {input_root}")
    if output_root.resolve().is_relative_to(input_root.resolve()):
        raise InputError(f"output root {output_root} lies inside the input tree {input_root}; choose another")
    jobs = plan(input_root, output_root, list_series)
    if not jobs:
        raise InputError(f"no DICOM series found under {input_root}")
    manifest = output_root / "manifest.csv"
    if dry_run:
        for j in jobs:
            echo(f"{'run ' if j.todo(overwrite) else 'skip'}  {j.uid}  {j.input}  ->  {j.output}")
        return BatchResult(manifest, [])
    output_root.mkdir(parents=True, exist_ok=True)
    if engine is not None:  # e.g. pipelines.engines.RayEngine: same run_series, same manifest
        return BatchResult(manifest, engine.run(cfg, jobs, manifest, overwrite=overwrite, echo=echo))
    rows = []
    for i, j in enumerate(jobs, 1):
        rows.append(run_series(cfg, j, overwrite=overwrite, progress=progress))
        write_manifest(manifest, rows + [pending_row(k) for k in jobs[i:]])
        echo(f"[{i}/{len(jobs)}] {rows[-1]['status']:7s} {j.output} {rows[-1]['error']}".rstrip())
    return BatchResult(manifest, rows)


def run_series(cfg, job: Job, overwrite: bool = False, progress: bool = False, prior=None) -> dict:
    """One series: skipped when finished (unless ``overwrite``), else reconstructed into its output folder
    (atomically; a stale temporary folder of an interrupted run is removed first). Returns its manifest row;
    an error is recorded in the row, never raised (one bad series must not stop the batch). ``prior``: the
    config's prior already loaded (None: loaded for this series)."""
    row = {**pending_row(job), "seconds": "0.0"}
    if not job.todo(overwrite):
        row["status"] = "skipped"
        return row
    _remove_stale_temps(job.output)
    t0 = time.perf_counter()
    try:
        reconstruct(cfg, job.input, job.output, overwrite=overwrite, series=job.uid, progress=progress,
                    prior=prior)
        row["status"] = "done"
    except Exception as e:  # noqa: BLE001 - one bad series must not stop the batch
        row["status"], row["error"] = "failed", error_text(e)
    row["seconds"] = f"{time.perf_counter() - t0:.2f}"
    return row


def error_text(e: BaseException) -> str:
    """An exception as one manifest-safe line: 'Type: message', at most 500 characters."""
    return " ".join(f"{type(e).__name__}: {e}".split())[:500]


def pending_row(j: Job) -> dict:
    return {"series_uid": j.uid, "input_path": str(j.input), "output_path": str(j.output), "status": "pending",
            "seconds": "", "error": ""}
