"""Small helpers shared by the readers and writers."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from ..errors import InputError

log = logging.getLogger("medrecon.io")


def voxels_sha256(vol) -> str:
    """SHA-256 of a volume's voxel values as read (float32, C order) and its shape: the same for the same scan in
    any format or folder, other for other scans (what a training resume checks; what report.json records)."""
    data = np.ascontiguousarray(vol.data, dtype=np.float32)
    h = hashlib.sha256(repr(tuple(data.shape)).encode())
    h.update(memoryview(data).cast("B"))
    return h.hexdigest()


def file_sha256(path, chunk: int = 1 << 22) -> str:
    """The SHA-256 hex digest of a file, read in chunks (weights and cached scans of any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def warn(warnings: list, message: str, recorded: str | None = None) -> None:
    """Log a warning and keep it (once) with the volume (``Volume.meta['warnings']``) for reports; ``recorded``:
    the form reports keep, where it differs from what the console is told."""
    log.warning(message)
    recorded = message if recorded is None else recorded
    if recorded not in warnings:
        warnings.append(recorded)


def available_memory() -> int | None:
    """Bytes of memory available to this process now, or None where unknown: the least of the machine's
    (Linux MemAvailable), the container's or job's (cgroup v2 memory.max - memory.current, v1 limit - usage:
    Docker, Kubernetes, Slurm; the machine's figure let a job be killed without a word) and the address-space
    limit (ulimit -v)."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    found += _cgroup_room()
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            found.append(max(0, soft - _address_space_used()))
    except (ImportError, OSError, ValueError):
        pass
    return min(found) if found else None


def _cgroup_room(proc: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> list[int]:
    """Room left under each memory limit of this process's cgroup and its ancestors (v2 memory.max, v1
    memory.limit_in_bytes; a Slurm job's step, a systemd slice, a container), its usage counted without the
    inactive file cache (the kernel gives that back under pressure; with it, a container that had read many files
    showed no room)."""
    out = []
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # v2: 0::/path
            base, names = root, ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            base, names = root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        folder = base / path.strip("/")
        for d in [folder, *folder.parents]:
            if not d.is_relative_to(base):
                break
            try:
                top = (d / names[0]).read_text().strip()
                if top == "max" or int(top) >= 2 ** 60:  # no limit here (v1 writes a huge number)
                    continue
                stat = dict(row.split()[:2] for row in (d / "memory.stat").read_text().splitlines() if " " in row)
                used = int((d / names[1]).read_text()) - int(stat.get(names[2], 0))
                out.append(max(0, int(top) - used))
            except (OSError, ValueError):
                continue
    return out


def _address_space_used() -> int:
    """This process's virtual memory size in bytes (Linux), 0 where unknown."""
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:")), 0)
    except (OSError, ValueError):
        return 0


def check_memory(need: float, what: str, fix: str) -> None:
    """An :class:`InputError` when ``need`` bytes cannot fit in the memory available (``available_memory``): ``what``
    needs them, ``fix`` says what to change (the kernel would kill the process without a word)."""
    avail = available_memory()
    if avail is not None and need > avail:
        raise InputError(f"{what} needs {need / 2 ** 30:.1f} GiB but only {avail / 2 ** 30:.1f} GiB of memory is "
                         f"available; {fix}, or use a machine with more memory")


def check_fits_in_memory(shape, path) -> None:
    """An :class:`InputError` naming ``path`` when a float32 volume of ``shape`` cannot fit in memory."""
    check_memory(float(np.prod([int(n) for n in shape], dtype=np.float64)) * 4,
                 f"{path}: a volume of shape {tuple(int(n) for n in shape)} as float32", "crop or downsample it first")


def check_voxels(data: np.ndarray, path) -> np.ndarray:
    """Real, finite scalar voxels as float32, or an :class:`InputError` naming ``path``."""
    data = np.asarray(data)
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)
            or data.dtype == bool):
        raise InputError(f"{path}: voxels of type {data.dtype} are not supported; "
                         "save real scalar values (e.g. float32)")
    data = data.astype(np.float32, copy=False)
    n_nan, n_inf = int(np.isnan(data).sum()), int(np.isinf(data).sum())
    if n_nan or n_inf:
        raise InputError(f"{path}: {n_nan} NaN and {n_inf} Inf voxels out of {data.size}; "
                         "replace them (e.g. numpy.nan_to_num) or crop them away before use")
    return data


def volume_array(data: np.ndarray, path, order: str) -> np.ndarray:
    """A 3D array from 2D (one slice) or 3D data, or 3D with trailing singleton axes; else an error.

    ``order`` names the axes for the message (e.g. "(Z, Y, X)").
    """
    data = np.asarray(data)
    return data.reshape(volume_shape(data.shape, path, order))


def volume_shape(shape, path, order: str) -> tuple:
    """The 3D shape ``volume_array`` makes of data of ``shape``, or its error: checked from a header, before the
    voxels are read (a 4D file was read whole, or told it does not fit in memory, before being refused as 4D)."""
    shape = tuple(int(n) for n in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 2:
        shape = (1, *shape) if order.startswith("(Z") else (*shape, 1)
    if 0 in shape:
        raise InputError(f"{path}: holds no voxels (shape {shape}); give a volume {order} with at least one voxel")
    if len(shape) != 3:
        raise InputError(f"{path}: expected a 3D volume {order}, got shape {shape}; "
                         "split 4D data into single volumes first")
    return shape
