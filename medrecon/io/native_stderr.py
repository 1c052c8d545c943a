"""Quiet SimpleITK reads: ITK's own warnings silenced, and what C code (GDCM's decoders, MetaImage) prints on the
process's stderr (file descriptor 2) captured for the caller to say naming the file."""
from __future__ import annotations

import os
import sys
import tempfile
import threading
from contextlib import contextmanager

import SimpleITK as sitk


@contextmanager
def itk_quiet(capture: bool = True):
    """Silence ITK's own warnings, and where ``capture`` (a read of an encapsulated transfer syntax,
    ``dicom_read._encapsulated``, or of a MetaImage .mha/.mhd, ``itk.read_itk``) capture what C code (GDCM's decoders:
    "Unsupported JPEG data precision 12"; MetaImage's "data not read completely") prints on the process's stderr:
    yields a list that holds those lines once the block ends (also when it raises), for the caller to say naming
    the file (``_native_stderr``); without ``capture`` (NRRD, whose reasons come in the exception; native DICOM) it
    stays empty and fd 2 is left alone."""
    old = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        if capture:
            with _native_stderr() as printed:
                yield printed
        else:
            yield []
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(old)


#: one redirect of fd 2 at a time, process-wide: fd 2 is the process's, not a thread's
_NATIVE_STDERR_LOCK = threading.Lock()


@contextmanager
def _native_stderr():
    """Redirect file descriptor 2 into a temporary file for the block; yields a list that then holds the non-empty
    lines written there. ``sys.stderr`` is flushed first, whatever it is (pytest's capture, a replaced object): C code
    writes to fd 2, not to it.

    Threads: one redirect at a time (``_NATIVE_STDERR_LOCK``): a second thread's block waits for the first to end,
    so fd 2 is saved and restored exactly once, and each block gets only its own read's lines. What another thread
    writes to fd 2 meanwhile (a log line) is captured with them: fd 2 is the process's, so callers keep the block to
    the native call alone, and only around reads that may print (``itk_quiet``'s ``capture``). Where the capture
    cannot be set up (no usable temporary folder, e.g. a read-only container; no fd 2, a daemon started without
    one) the block runs without it and the list stays empty. Not reentrant within one thread."""
    printed: list[str] = []
    with _NATIVE_STDERR_LOCK:
        try:
            sys.stderr and sys.stderr.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing of ours to keep apart
            pass
        redirect = _redirect_fd2()
        if redirect is None:
            yield printed
            return
        saved, tmp = redirect
        try:
            yield printed
        finally:
            try:
                os.dup2(saved, 2)
            finally:
                os.close(saved)
                try:
                    tmp.seek(0)
                    printed += [line.strip() for line in tmp.read().decode("utf-8", "replace").splitlines()
                                if line.strip()]
                finally:
                    tmp.close()


def _redirect_fd2():
    """fd 2 pointed at a new temporary file: (a duplicate of the fd 2 it replaced, the file); or None, fd 2 left as it
    was, where any step fails (no usable temporary folder, no fd 2)."""
    try:
        tmp = tempfile.TemporaryFile()
    except OSError:
        return None
    try:
        saved = os.dup(2)
    except OSError:
        tmp.close()
        return None
    try:
        os.dup2(tmp.fileno(), 2)
    except OSError:
        os.close(saved)
        tmp.close()
        return None
    return saved, tmp
