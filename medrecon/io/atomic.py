"""Atomic output: write into a hidden temporary sibling, then rename it onto the destination.

A reader never sees a half-written file or series folder, an interrupted run leaves the destination
untouched (an old output stays in place until the new one is complete, then the two are swapped), and an
existing output is replaced only when the caller asks (``overwrite=True``). Every folder medrecon writes
carries a marker file (``.medrecon-output``, JSON); ``overwrite`` replaces files, empty folders and marked
folders only, never a folder medrecon did not write. Temporaries left by killed runs are removed by the
next write to the same destination.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import sys
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import InputError

TMP_PREFIX = ".medrecon-tmp-"
#: files a desktop leaves in a folder a user looked at: not a user's own work, replaced with the output
OS_METADATA = {".DS_Store", "Thumbs.db", "desktop.ini", "._.DS_Store"}
MARKER = ".medrecon-output"
#: open() refuses to follow a link at the last name (absent on Windows, where the flag is left out)
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_TMP_NAME = re.compile(r"\.medrecon-tmp-(?P<old>old-)?(?:(?P<pid>\d+)-)?[0-9a-f]{8}-(?P<name>.+)")
#: the temporaries this process has made and not yet finished: a temporary with this process's PID that is not
#: among them was left by an earlier process of that PID (a container's PID 1 killed by the OOM killer)
_OURS: set[str] = set()


@contextmanager
def atomic_path(dest, overwrite: bool = False, protect: Iterable = (), marker: dict | bool = True) -> Iterator[Path]:
    """Yield a temporary sibling path of ``dest`` (not yet created) for the caller to write a file or
    a folder at; on a clean exit it is renamed onto ``dest``, on an error it is removed.

    * ``dest`` existing (other than as an empty folder) is an :class:`InputError` unless ``overwrite``;
      a folder without medrecon's marker is never replaced.
    * ``protect``: paths (the inputs) that ``dest`` must not be, contain or lie inside.
    * ``marker``: extra fields for the marker file of a folder output (e.g. the series it was made from);
      False writes none (a derived DICOM series, recognised by its headers instead, stays pure DICOM).
    * Missing parent folders are created, and removed again (if still empty) when the write fails; any OS error
      becomes an :class:`InputError` naming ``dest``. While the write lasts, an empty temporary file in the parent
      (``_pin_parent``) keeps another process's failed write from removing that folder as empty.
    """
    dest = Path(os.path.abspath(dest))  # '.': its parent is '.' too, and the temporary landed inside it
    if dest.is_symlink():  # write where it points: replacing the link left the old output at its target
        dest = dest.resolve()
    check_destination(dest, protect)
    made: list[Path] = []  # the parent folders this write creates: removed again unless it succeeds
    try:
        _make_folders(dest.parent, made)
        remove_stale_temporaries(dest)
    except OSError as e:
        remove_empty_folders(reversed(made))
        raise InputError(f"cannot create the output folder {dest.parent}: {os_reason(e)}; "
                         "choose a writable location") from e
    check_free(dest, overwrite)  # refuses only an existing dest, whose parents were not made here
    pin, tmp = _temporary(dest), _temporary(dest)
    committed = False
    try:
        _pin_parent(pin, made)
        yield tmp
        if marker is not False and tmp.is_dir() and not tmp.is_symlink():
            from .. import __version__
            fields = marker if isinstance(marker, dict) else {}
            written = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*"))  # what --overwrite may replace
            (tmp / MARKER).write_text(json.dumps({"medrecon": __version__, **fields, "entries": written,
                                                  "entries_nested": True}, indent=2) + "\n")
        check_free(dest, overwrite)  # again: something may have appeared meanwhile
        outermost = not any(p.name.startswith(TMP_PREFIX) for p in dest.parents)  # inside another output's
        if outermost:                                                           # temporary: its commit syncs all
            _flush_to_disk(tmp)
        _commit(tmp, dest)
        committed = True
        if outermost:
            _flush_to_disk(dest.parent, tree=False)  # the rename itself
    except OSError as e:
        raise InputError(f"cannot write {shown_path(dest)}: {os_reason(e)}; "
                         "choose a writable location with enough free space") from e
    finally:
        _remove(tmp)
        _OURS.discard(tmp.name)
        _unpin(pin)
        if not committed:
            remove_empty_folders(reversed(made))


def _temporary(dest: Path) -> Path:
    """A new temporary sibling of ``dest`` (``_TMP_NAME``: ``remove_stale_temporaries`` finds those of killed runs),
    this process's own until ``_OURS`` lets it go."""
    tmp = dest.parent / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{_tmp_tail(dest)}"
    _OURS.add(tmp.name)
    return tmp


def _pin_parent(pin: Path, made: list[Path], tries: int = 3) -> None:
    """Create the empty file ``pin`` in the write's parent folder, where it stays until the write ends: another
    process whose write failed removes the folders it made while they are empty (``remove_empty_folders``), and
    without the pin it removed one that this write had entered, before the temporary was in it (the write then
    failed, 'No such file or directory'). A parent removed so before the pin is in it is made again
    (``_make_folders``, each folder made appended to ``made``), up to ``tries`` times."""
    for attempt in range(tries):
        try:
            if attempt:
                _make_folders(pin.parent, made)
            os.close(os.open(pin, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW, 0o600))
            return
        except FileNotFoundError:  # the parent (or a folder above it) went meanwhile
            if attempt == tries - 1:
                raise


def _unpin(pin: Path) -> None:
    with suppress(OSError):  # left behind, it is a stale temporary: the next write to dest removes it
        pin.unlink(missing_ok=True)
    _OURS.discard(pin.name)


def _make_folders(folder: Path, made: list[Path]) -> None:
    """Create ``folder`` and its missing parents, appending each one this call created to ``made`` (outermost
    first); a folder that appears meanwhile (made by another process) is not ours."""
    missing = []
    for p in (folder, *folder.parents):  # up to the first folder that exists (at once where ``folder`` does)
        if p.is_dir():
            break
        missing.append(p)
    for p in reversed(missing):
        try:
            p.mkdir()
        except FileExistsError:
            continue
        made.append(p)


def remove_empty_folders(folders: Iterable[Path]) -> None:
    """Remove ``folders`` in order (innermost first) while they are empty: stops at the first that holds
    anything; a missing one is skipped."""
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            return


def mark_as_written(folder, name: str) -> None:
    """Record ``name``, added to a finished output ``folder`` by medrecon (a PACS transfer's record), in its
    marker, so that --overwrite replaces it like the rest (files the marker does not list are a user's)."""
    path = Path(folder) / MARKER
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(data.get("entries"), list) and name not in data["entries"]:
        data["entries"] = sorted([*data["entries"], name])  # a file at the top (a folder would need its files)
        with atomic_path(path, overwrite=True, marker=False) as tmp:
            tmp.write_text(json.dumps(data, indent=2) + "\n")


def os_reason(e: OSError) -> str:
    """An OS error's reason on one line: its strerror, else the errno's text, else the first line of its message
    (pydicom re-raises a full disk as OSError(text) whose text holds a traceback)."""
    if e.strerror:
        return e.strerror
    found = re.search(r"\[Errno (\d+)\]", str(e))
    code = e.errno or (int(found.group(1)) if found else None)
    return os.strerror(code) if code else (str(e).strip().splitlines() or [type(e).__name__])[0]


def shown_path(dest: Path) -> Path:
    """``dest`` as a user knows it: a path inside another output's temporary (removed right after) named by that
    output's own path."""
    parts = list(dest.parts)
    for i, part in enumerate(parts):
        m = _TMP_NAME.fullmatch(part)
        if m and not m["old"]:
            parts[i] = m["name"]
    return Path(*parts)


def _tmp_tail(dest: Path) -> str:
    """``dest``'s name with its format suffix in lower case: SimpleITK and nibabel choose the format by a
    lower-case suffix (for a.MHA SimpleITK wrote .mhd + .zraw beside the temporary, which was then missing)."""
    name = dest.name
    n = 7 if name.lower().endswith(".nii.gz") else len(dest.suffix)
    return name[:len(name) - n] + name[len(name) - n:].lower()


def read_marker(folder) -> dict | None:
    """The marker of a folder medrecon wrote (a dict), or None for any other path. A derived DICOM series
    is recognised by its files (all IM*.dcm, Manufacturer "medrecon"), a reconstruction written before
    markers existed by its report.json (which names the medrecon version)."""
    series = _medrecon_dicom_series(Path(folder))
    if series is not None:
        return series
    for name in (MARKER, "report.json"):
        try:
            data = json.loads((Path(folder) / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and (name == MARKER or "medrecon" in (data.get("software") or {})):
            return data if name == MARKER else {"medrecon": data["software"]["medrecon"]}
    return None


def _medrecon_dicom_series(folder: Path) -> dict | None:
    from .dicom_scan import read_header

    try:
        files = sorted(folder.iterdir()) if folder.is_dir() else []
        if not files or not all(re.fullmatch(r"IM\d+\.dcm", f.name) and f.is_file() for f in files):
            return None
        ds = read_header(files[0])
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return None
    if ds is None or str(ds.get("Manufacturer", "")) != "medrecon":
        return None
    return {"medrecon": str(ds.get("SoftwareVersions", "")), "kind": "dicom series"}


def remove_stale_temporaries(dest) -> None:
    """Remove the temporaries that killed runs left beside ``dest`` (those of live processes stay); if
    ``dest`` is missing but a killed swap left the old output aside, put it back."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return
    for p in sorted(dest.parent.iterdir(), key=lambda q: q.name):
        m = _TMP_NAME.fullmatch(p.name)
        if not m or m["name"] != (dest.name if m["old"] else _tmp_tail(dest)) or \
                (m["pid"] and _alive(int(m["pid"]), p.name)):
            continue
        if m["old"] and not (dest.exists() or dest.is_symlink()):
            os.rename(p, dest)
        else:
            _remove(p)


def _alive(pid: int, name: str) -> bool:
    """Whether the process that made temporary ``name`` may still be writing it."""
    if pid == os.getpid():
        return name in _OURS
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_destination(dest, protect: Iterable = ()) -> None:
    """Raise if ``dest`` can be no output, --overwrite or not: it is (or holds) the folder this command runs in, or
    it is, contains or lies inside an input in ``protect``."""
    dest = Path(dest)
    try:  # the swap replaces the folder: a shell in it would be left in a deleted one
        here = Path.cwd().resolve()
    except OSError:  # the shell is in a deleted folder already: it is no destination
        here = None
    if here is not None and (dest.resolve() == here or here.is_relative_to(dest.resolve())):
        raise InputError(f"{dest}: the output would replace the folder this command runs in (the shell would be "
                         "left in a deleted one); give a new folder inside it, e.g. -o out")
    check_not_input(dest, protect)


def check_not_input(dest, protect: Iterable) -> None:
    """Raise if ``dest`` is, contains or lies inside an input in ``protect`` (a detached header's data file too):
    inputs are never modified, an output written in place (a trained prior's folder) included."""
    dest = Path(dest)
    d = dest.resolve()
    for p in (q for given in protect if given is not None for q in with_data_files(Path(given))):
        p = p.resolve()
        if d == p or p.is_relative_to(d) or (p.is_dir() and d.is_relative_to(p)):
            raise InputError(f"refusing to write {dest}: it is, contains or lies inside the input {p}; "
                             "inputs are never modified, choose an output path elsewhere")


_DATA_FILE = re.compile(r"^\s*(?:ElementDataFile\s*=|data ?file\s*:)\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)


def header_text(path: Path) -> str | None:
    """The first 64 KiB of an NRRD/MetaImage file as text (its header, whatever follows it), or None where it cannot
    be read: read once per read of the image (``itk.read_itk``), for ``with_data_files`` and its spacing check."""
    try:
        with open(path, "rb") as f:
            return f.read(65536).decode("latin-1")
    except OSError:
        return None


def with_data_files(path: Path, head: str | None = None) -> list[Path]:
    """``path`` and, for a detached-header image (.mhd, .nhdr), the data file its header names: an input's
    voxels live there too. ``head``: its ``header_text``, where the caller has read it."""
    if path.suffix.lower() not in (".mhd", ".nhdr") or not path.is_file():
        return [path]
    head = header_text(path) if head is None else head
    if head is None:
        return [path]
    # a name as written, spaces and all ("my data.raw"); not a list's or a pattern's ("LIST 2", "s%03d.raw 1 9 1")
    named = [m for m in _DATA_FILE.findall(head) if m.split()[0].upper() not in ("LOCAL", "LIST") and "%" not in m]
    return [path] + [path.parent / n for n in named]


def check_free(dest: Path, overwrite: bool) -> None:
    """Raise unless ``dest`` may take a new output: absent, an empty folder, or replaceable with ``overwrite``."""
    dest = Path(dest)
    if not (dest.exists() or dest.is_symlink()):
        return
    if dest.is_dir() and not dest.is_symlink() and not any(dest.iterdir()):
        return  # an empty folder made ready for the output
    if not overwrite:
        raise InputError(f"{dest} already exists; pass --overwrite (overwrite=True from Python) to replace it, "
                         "or choose another output path")
    mark = read_marker(dest) if dest.is_dir() else {}
    if mark is None:
        raise InputError(f"refusing to replace {dest}: it is a folder that medrecon did not write (it has no "
                         f"{MARKER} marker); remove it yourself or choose another output path")
    entries = mark.get("entries") if dest.is_dir() else None
    added = []
    if isinstance(entries, list):
        known = set(entries) | {MARKER}
        nested = bool(mark.get("entries_nested"))  # a marker of before the forty-fifth session lists the top only
        found = (p for p in dest.rglob("*") if not p.is_dir()) if nested else dest.iterdir()
        added = sorted(rel for p in found if p.name not in OS_METADATA
                       and (rel := p.relative_to(dest).as_posix()) not in known)
    if added:  # a user's notes or segmentations beside the output: --overwrite replaced them with the folder
        raise InputError(f"refusing to replace {dest}: it holds {', '.join(added[:5])}"
                         f"{', ...' if len(added) > 5 else ''}, which medrecon did not write there; move "
                         f"{'it' if len(added) == 1 else 'them'} out first, or choose another output path")


def _flush_to_disk(path: Path, tree: bool = True) -> None:
    """fsync a written file or folder (with everything in it when ``tree``), so that after a power loss the
    final name never holds files that were renamed into place before their data reached the disk."""
    for p in ([*path.rglob("*"), path] if tree and path.is_dir() else [path]):
        if p.is_symlink() or (p.is_dir() and os.name == "nt"):  # Windows cannot open a folder to sync it
            continue
        try:  # Windows flushes a file only through a handle open for writing
            fd = os.open(p, os.O_RDONLY if p.is_dir() else os.O_RDWR)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:  # some file systems refuse to sync a folder: their renames are durable anyway
            if not p.is_dir():
                raise
        finally:
            os.close(fd)


def _commit(tmp: Path, dest: Path) -> None:
    if not tmp.exists():
        raise InputError(f"nothing was written for {dest}")
    if not (dest.exists() or dest.is_symlink()) or not (tmp.is_dir() or dest.is_dir()) or \
            (dest.is_dir() and not any(dest.iterdir())):
        os.replace(tmp, dest)
        return
    if _exchange(tmp, dest):  # one atomic step: dest is never missing
        return
    old = dest.parent / f"{TMP_PREFIX}old-{os.getpid()}-{uuid.uuid4().hex[:8]}-{dest.name}"
    _OURS.add(old.name)  # between the renames: ours (a thread of this process writing beside it leaves it)
    os.rename(dest, old)  # killed between these two renames: the next write puts `old` back
    try:
        os.rename(tmp, dest)
    except OSError:
        os.rename(old, dest)
        raise
    finally:
        _OURS.discard(old.name)
    _remove(old)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
