"""Atomic output: write into a hidden temporary sibling, then rename it onto the destination.

A reader never sees a half-written file or series folder, an interrupted run leaves the destination
untouched, and an existing output is replaced only when the caller asks (``overwrite=True``).
"""
from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import InputError

TMP_PREFIX = ".medrecon-tmp-"


@contextmanager
def atomic_path(dest, overwrite: bool = False, protect: Iterable = ()) -> Iterator[Path]:
    """Yield a temporary sibling path of ``dest`` (not yet created) for the caller to write a file or
    a folder at; on a clean exit it is renamed onto ``dest``, on an error it is removed.

    * ``dest`` existing (other than as an empty folder) is an :class:`InputError` unless ``overwrite``;
      a replaced file goes in one ``os.replace``, a replaced folder in two renames (old aside, new in).
    * A folder holding sub-folders is never replaced (it does not look like one output).
    * ``protect``: paths (the inputs) that ``dest`` must not be, contain or lie inside.
    * Missing parent folders are created; any OS error becomes an :class:`InputError` naming ``dest``.
    """
    dest = Path(dest)
    _check_not_input(dest, protect)
    _check_free(dest, overwrite)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the output folder {dest.parent}: {e.strerror or e}; "
                         "choose a writable location") from e
    tmp = dest.parent / f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{dest.name}"
    try:
        yield tmp
        _check_free(dest, overwrite)  # again: something may have appeared meanwhile
        _commit(tmp, dest)
    except OSError as e:
        raise InputError(f"cannot write {dest}: {e.strerror or e}; "
                         "choose a writable location with enough free space") from e
    finally:
        _remove(tmp)


def _check_not_input(dest: Path, protect: Iterable) -> None:
    d = dest.resolve()
    for p in protect:
        if p is None:
            continue
        p = Path(p).resolve()
        if d == p or p.is_relative_to(d) or (p.is_dir() and d.is_relative_to(p)):
            raise InputError(f"refusing to write {dest}: it is, contains or lies inside the input {p}; "
                             "inputs are never modified, choose an output path elsewhere")


def _check_free(dest: Path, overwrite: bool) -> None:
    if not (dest.exists() or dest.is_symlink()):
        return
    if dest.is_dir() and not any(dest.iterdir()):
        return  # an empty folder made ready for the output
    if not overwrite:
        raise InputError(f"{dest} already exists; pass --overwrite (overwrite=True) to replace it, "
                         "or choose another output path")
    if dest.is_dir() and any(p.is_dir() for p in dest.iterdir()):
        raise InputError(f"refusing to replace {dest}: it holds sub-folders, so it is not a single output "
                         "of medrecon; remove it yourself or choose another output path")


def _commit(tmp: Path, dest: Path) -> None:
    if not tmp.exists():
        raise InputError(f"nothing was written for {dest}")
    if not (dest.exists() or dest.is_symlink()) or not (tmp.is_dir() or dest.is_dir()):
        os.replace(tmp, dest)
        return
    old = dest.parent / f"{TMP_PREFIX}old-{uuid.uuid4().hex[:8]}-{dest.name}"
    os.rename(dest, old)
    try:
        os.rename(tmp, dest)
    except OSError:
        os.rename(old, dest)
        raise
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
