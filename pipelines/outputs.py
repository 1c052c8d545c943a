"""What a run leaves behind besides the volumes: preview PNG, report.json, stage timings, peak memory."""
from __future__ import annotations


import ctypes
import functools
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from medrecon import __version__
from medrecon.errors import InputError
from medrecon.io import named_like_a_file
from medrecon.io.atomic import atomic_path, check_destination, check_free
from medrecon.volume import Volume


class Timings:
    """Wall time per named stage: ``with timings("solve"): ...``; ``as_dict()`` in seconds."""

    def __init__(self):
        self._t: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._t[stage] = self._t.get(stage, 0.0) + time.perf_counter() - t0

    def as_dict(self) -> dict:
        d = {k: round(v, 4) for k, v in self._t.items()}
        d["total"] = round(sum(self._t.values()), 4)
        return d


def atomic_output(output, overwrite: bool, protect=(), marker: dict | None = None):
    """``medrecon.io.atomic_path`` for an output folder: a previous medrecon output stays in place until the
    new one is complete, then the two are swapped; ``marker`` is recorded in the folder's marker file. The path is
    checked first (``check_output_folder``)."""
    check_output_folder(output, overwrite, protect)
    return atomic_path(output, overwrite, protect=protect, marker=marker)


def check_output_folder(output, overwrite: bool, protect=()) -> None:
    """Before any work, refused: an output folder path that no --overwrite makes an output (the folder the command
    runs in, an input in ``protect``: medrecon.io.atomic.check_destination); an existing file, or a path named like
    a file (`-o res.nii.gz` made a folder of that name; with --overwrite a user's file was replaced by a folder);
    one that exists, without ``overwrite`` (medrecon.io.atomic.check_free)."""
    output = Path(output)
    check_destination(output, protect)
    inside = "the output is a folder (recon.nii.gz, dicom/, report.json, ... go inside it)"
    if output.is_file() and not output.is_symlink():
        raise InputError(f"{output} is an existing file, not a folder; {inside}: give a folder path")
    if named_like_a_file(output):
        raise InputError(f"{output}: {inside}; give a folder path without a file suffix")
    check_free(output, overwrite)


def reset_rss_peak() -> bool:
    """Start this process's peak resident memory again from its current size (Linux: /proc/self/clear_refs),
    so that a batch worker's report gives each series' own peak, not the largest series' before it. Memory freed
    earlier is first handed back (glibc's malloc_trim): left resident, the work that follows would reuse it
    without its peak rising. False where it cannot (not Linux, or not allowed): the process's peak stands."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: freed memory may be reused unseen (a lower bound)
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_kib(field: str = "VmRSS") -> float | None:
    """This process's resident memory from /proc/self/status in KiB: ``VmRSS`` now, ``VmHWM`` its peak since the
    last ``reset_rss_peak``; None where /proc has no such line (not Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _rss_peak_kib() -> float:
    """Peak resident memory in KiB: VmHWM where /proc has it, else getrusage's maxrss (the process's whole life)."""
    peak = rss_kib("VmHWM")
    if peak is not None:
        return peak
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return rss / 1024 if sys.platform == "darwin" else rss  # bytes there


def peak_memory(device=None) -> dict:
    """Peak resident memory of this process since its last ``reset_rss_peak`` and peak CUDA allocation on
    ``device`` (default: the current CUDA device) since its last ``medrecon.device.reset_cuda_peak``, in MiB."""
    rss_kib = _rss_peak_kib()
    out = {"rss_mib": round(rss_kib / 1024, 1), "cuda_mib": None}
    try:
        import torch
        from medrecon.device import cuda_peak_bytes
        if torch.cuda.is_available() and torch.cuda.is_initialized() and (device is None or device.type == "cuda"):
            out["cuda_mib"] = round(cuda_peak_bytes(device or "cuda") / 2 ** 20, 1)
    except Exception:  # noqa: BLE001 - memory figures are informative only
        pass
    return out


def software() -> dict:
    """Versions a result depends on: medrecon (with the git commit of a checkout: the version number alone does not
    change between commits), Python and the libraries that compute or read the data."""
    import torch
    from importlib.metadata import PackageNotFoundError, version
    out = {"medrecon": __version__, "medrecon_commit": _checkout_commit(), "python": platform.python_version(),
           "torch": torch.__version__, "numpy": np.__version__}
    for name in ("astra-toolbox", "scipy", "diffusers", "pydicom", "nibabel", "SimpleITK"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


@functools.lru_cache(maxsize=1)
def _checkout_commit() -> str | None:
    """The commit of the checkout medrecon runs from (an editable install), '-dirty' when tracked files changed;
    None elsewhere. Asked once per process (the code it ran was loaded then; a batch wrote two git calls into every
    series' report). Read without taking git's index lock (``git describe --dirty`` rewrites the index, which a
    user's own git command at that moment would find locked)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    git = ["git", "--no-optional-locks", "-C", str(root)]
    try:
        head = subprocess.run(git + ["rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10)
        status = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0 or not head.stdout.strip():
        return None
    return head.stdout.strip() + ("-dirty" if status.returncode == 0 and status.stdout.strip() else "")


def write_json(path: Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def runtime() -> dict:
    """Where a run ran: host, process, and the GPUs it was given (CUDA_VISIBLE_DEVICES, as Ray or Slurm set it)."""
    import torch
    return {"host": platform.node(), "pid": os.getpid(), "torch_threads": torch.get_num_threads(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def report(config: dict, **fields) -> dict:
    """The report.json content: config as run, software versions, UTC time, host, then the given fields."""
    return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "software": software(),
            "runtime": runtime(), "config": config, **fields}


# ------------------------------------------------------------------------------------ preview
def default_window(data: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(data[np.isfinite(data)], [1.0, 99.0])
    return (float(lo), float(hi)) if hi > lo else (float(lo), float(lo) + 1.0)


PLANES = ("axial", "coronal", "sagittal")


def shown_planes(vol: Volume) -> tuple[str, ...]:
    """The planes a preview shows (preview.png and index.html alike): all three, or the axial one alone for a
    single slice, whose coronal and sagittal planes are one row of pixels."""
    return PLANES[:1] if vol.shape[0] == 1 else PLANES


def orthogonal_views(vol: Volume) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices through the centre, oriented for display.

    Axial: rows y (anterior at the top), columns x (patient right on the left, radiological convention).
    Coronal and sagittal: superior at the top (z flipped, as z runs from inferior to superior in LPS).
    Pixel sizes are equalised by ``preview_png``. ``vol`` as ``Volume.nearest_lps`` orders it (an oblique volume
    is shown along its nearest patient axes).
    """
    d = vol.data
    z, y, x = (s // 2 for s in d.shape)
    return [d[z], d[::-1, y, :], d[::-1, :, x]]


def _resize(img: np.ndarray, height_mm: float, width_mm: float, px_per_mm: float) -> Image.Image:
    size = (max(1, int(round(width_mm * px_per_mm))), max(1, int(round(height_mm * px_per_mm))))
    return Image.fromarray(img).resize(size, Image.BILINEAR)


def preview_png(vol: Volume, path: Path, window: tuple[float, float] | None = None, height: int = 256) -> tuple:
    """Write the three central planes (axial, coronal, sagittal) side by side as an 8-bit grey PNG."""
    return preview_grid([("", vol)], path, window, height)


def z_stretch(vol: Volume) -> int:
    """The whole factor a thin slab's coronal and sagittal views are stretched by along z (its z extent under a
    quarter of the in-plane one; 1 otherwise), in preview.png and on the series page alike."""
    (sx, sy, sz), (nz, ny, nx) = vol.spacing, vol.shape
    return max(1, math.ceil(0.25 * max(ny * sy, nx * sx) / (nz * sz)))


def preview_grid(rows: list[tuple[str, Volume]], path: Path, window: tuple[float, float] | None = None,
                 height: int = 256) -> tuple:
    """One labelled row per volume, each with its axial, coronal and sagittal centre planes; returns the window.

    All panels share one scale (square pixels in mm), chosen so the tallest panel is ``height`` pixels;
    all rows share one grey window (default: from the first volume). A thin slab (z extent under a quarter of
    the in-plane one) has its coronal and sagittal panels stretched along z by a whole factor, said in the label;
    a single slice shows its axial panel only (its coronal and sagittal planes are one line).
    """
    from PIL import ImageDraw

    lo, hi = window or default_window(rows[0][1].data)
    gap = 4
    row_images = []
    for label, vol in rows:
        vol = vol.nearest_lps()
        sx, sy, sz = vol.spacing
        nz, ny, nx = vol.shape
        zmm, ymm, xmm = nz * sz, ny * sy, nx * sx
        planes = shown_planes(vol)
        stretch = z_stretch(vol) if len(planes) > 1 else 1
        zmm *= stretch
        note = "   (one slice: axial only)" if len(planes) == 1 else \
            f"   (coronal, sagittal: z x{stretch})" if stretch > 1 else ""
        label_h = 14 if label or note else 0
        scale = height / (max(ymm, zmm) if len(planes) > 1 else ymm)
        extent = {"axial": (ymm, xmm), "coronal": (zmm, xmm), "sagittal": (zmm, ymm)}  # (height, width) in mm
        panels = [_resize(np.clip((v - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8), *extent[p], scale)
                  for p, v in zip(PLANES, orthogonal_views(vol)) if p in planes]
        img = Image.new("L", (sum(p.width for p in panels) + gap * (len(panels) - 1),
                              max(p.height for p in panels) + label_h), 0)
        x0 = 0
        for p in panels:
            img.paste(p, (x0, label_h + (img.height - label_h - p.height) // 2))
            x0 += p.width + gap
        if label or note:
            ImageDraw.Draw(img).text((2, 1), f"{label}{note}", fill=255)
        row_images.append(img)
    canvas = Image.new("L", (max(r.width for r in row_images), sum(r.height for r in row_images)
                             + gap * (len(row_images) - 1)), 0)
    y0 = 0
    for r in row_images:
        canvas.paste(r, (0, y0))
        y0 += r.height + gap
    canvas.save(path)
    return (float(lo), float(hi))
