"""PSNR and SSIM of a 3D reconstruction against a reference, per viewing plane.

A volume is (Z, Y, X). "axial" averages the metric over the Z slices (each a Y-X image), "coronal"
over the Y slices (Z-X images), "sagittal" over the X slices (Z-Y images); "volume" is computed on the
whole 3D array at once (3D SSIM window). This is how DiffusionMBIR reports its numbers: a 2D prior
shows its slice-to-slice incoherence in the coronal and sagittal averages.

SSIM is scikit-image's ``structural_similarity`` (uniform 7x7 window, K1=0.01, K2=0.03), with the
window shrunk to the largest odd size <= 7 that fits the smallest image side (never below 3), on both images
less the reference's minimum: SSIM's luminance term is not shift-invariant, and on CT in HU (water at 0) a
20 HU bias of a flat region scored 0.5 where the same images from 0 score 0.9998 (DiffusionMBIR scores images
in [0, 1]). CT SSIM before the forty-second session was computed on HU as stored.
``data_range`` is stated by the caller (finite and > 0); the default used by the pipelines is
``ref.max() - ref.min()``. Both images must have one shape (no broadcasting of a slice against a volume).
Complex images are scored on their magnitudes, as MR tools compare them (a phase rotation alone costs nothing).
A slice whose error is exactly zero has infinite PSNR; it is capped at ``PSNR_CAP`` dB so that means and
JSON stay finite.
"""
from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

PSNR_CAP = 100.0
#: above this many voxels the volume's 3D SSIM is left out (noted): its filters held 112 bytes a voxel in float64
#: and hold 64 in float32 (tracemalloc, 32 x 256 x 256), so about 5 GB for a 512 x 512 x 300 series after the
#: solve (extrapolated), whose result a MemoryError would lose
VOLUME_SSIM_MAX_VOXELS = 32_000_000
AXES = {"axial": 0, "coronal": 1, "sagittal": 2}


def scored(ref, x) -> tuple[np.ndarray, np.ndarray]:
    """The two images as float64 arrays (complex ones as their magnitudes); ValueError unless of one shape and
    finite."""
    ref, x = (np.asarray(np.abs(a) if np.iscomplexobj(a) else a, np.float64) for a in (ref, x))
    if ref.shape != x.shape:
        raise ValueError(f"reference and reconstruction must be arrays of one shape, got {ref.shape} and {x.shape}")
    if not (np.isfinite(ref).all() and np.isfinite(x).all()):
        raise ValueError("reference or reconstruction holds NaN or infinite values")
    return ref, x


def checked_range(data_range: float, fix: str = "give a positive number") -> float:
    """``data_range`` as a float; ValueError, saying ``fix``, unless it is finite and > 0."""
    r = float(data_range)
    if not (np.isfinite(r) and r > 0):
        raise ValueError(f"data range must be positive and finite, got {r}; {fix}")
    return r


def psnr(ref: np.ndarray, x: np.ndarray, data_range: float) -> float:
    """10 log10(R^2 / MSE) in dB, capped at PSNR_CAP (``scored`` images, ``checked_range`` R)."""
    return _psnr(*scored(ref, x), checked_range(data_range))


def _psnr(ref: np.ndarray, x: np.ndarray, data_range: float) -> float:
    """``psnr`` of images and a range already checked. Where the squared errors overflow (a reconstruction near
    1e300 printed numpy's RuntimeWarning and scored -inf) they are taken on the values divided by their largest
    magnitude m, and the PSNR is 20 log10(R / m) - 10 log10(that MSE): the same number, finite, without a warning
    (``per_axis_metrics``' note on SSIM names such values)."""
    with np.errstate(over="ignore", invalid="ignore"):
        mse = float(np.mean((ref - x) ** 2))
    if mse == 0.0:
        return PSNR_CAP
    if np.isfinite(mse):
        return float(min(PSNR_CAP, 10.0 * np.log10(data_range ** 2 / mse)))
    m = max(float(np.abs(ref).max()), float(np.abs(x).max()))
    return float(20.0 * np.log10(data_range / m) - 10.0 * np.log10(np.mean((ref / m - x / m) ** 2)))


def ssim_window(shape) -> int:
    """Largest odd window <= 7 that fits every side of an image of this shape."""
    w = min(7, min(shape))
    w = w if w % 2 == 1 else w - 1
    if w < 3:
        raise ValueError(f"SSIM needs every image side >= 3, got an image of shape {tuple(shape)}")
    return w


def ssim(ref: np.ndarray, x: np.ndarray, data_range: float, dtype=np.float64) -> float:
    """scikit-image's SSIM of two ``scored`` images over ``checked_range`` R, computed in ``dtype``."""
    return _ssim(*scored(ref, x), checked_range(data_range), dtype)


def _ssim(ref: np.ndarray, x: np.ndarray, data_range: float, dtype=np.float64) -> float:
    """``ssim`` of images and a range already checked, on both divided by the range (SSIM with C1 = (K1 R)^2,
    C2 = (K2 R)^2 is the same number on values in units of R): values of 1e-30 or 1e25 (a range that small, a
    float32 volume that large) underflowed or overflowed skimage's squares, printed its RuntimeWarnings and gave
    NaN. What overflows even so (a reconstruction that blew up) is NaN without a warning (``per_axis_metrics``
    says it in one note)."""
    with np.errstate(all="ignore"):  # the cast to float32 overflows too (values beyond 3.4e38)
        ref, x = (np.asarray(a, dtype) / data_range for a in (ref, x))  # in dtype first, as before
        return float(structural_similarity(ref, x, data_range=1.0, win_size=ssim_window(ref.shape)))


def per_axis_metrics(ref: np.ndarray, x: np.ndarray, data_range: float | None = None) -> dict:
    """{"psnr": {axial, coronal, sagittal, volume}, "ssim": {...}, "data_range": R} for (Z, Y, X) arrays.

    SSIM needs images at least 3 pixels on every side: a plane whose images are thinner (e.g. the coronal
    and sagittal planes of a single-slice volume) gets SSIM None and a note; the volume's SSIM is computed
    over its axes longer than one voxel. Complex images are scored on their magnitudes (module doc)."""
    ref, x = scored(ref, x)
    if ref.ndim != 3:
        raise ValueError(f"reference and reconstruction must be 3D (Z, Y, X) arrays, got shape {ref.shape} (for "
                         "one slice: array[None])")
    low, high = float(ref.min()), float(ref.max())  # SSIM on values from low (the module doc); PSNR does not care
    data_range = checked_range(data_range) if data_range is not None else checked_range(
        high - low, "the reference is one value throughout: give the range to score over (--data-range)")
    ref, x = ref - low, x - low
    out = {"psnr": {}, "ssim": {}, "data_range": float(data_range)}
    notes = []
    for name, axis in AXES.items():
        r, y = np.moveaxis(ref, axis, 0), np.moveaxis(x, axis, 0)
        out["psnr"][name] = float(np.mean([_psnr(a, b, data_range) for a, b in zip(r, y)]))
        if min(r.shape[1:]) >= 3:
            out["ssim"][name] = float(np.mean([_ssim(a, b, data_range) for a, b in zip(r, y)]))
        else:
            out["ssim"][name] = None
            notes.append(f"no {name} SSIM: its images are {r.shape[1]}x{r.shape[2]} pixels (SSIM needs >= 3 a side)")
    out["psnr"]["volume"] = _psnr(ref, x, data_range)
    keep = tuple(n for n in ref.shape if n > 1)
    if ref.size > VOLUME_SSIM_MAX_VOXELS:
        out["ssim"]["volume"] = None
        notes.append(f"no volume SSIM: {ref.size} voxels, over {VOLUME_SSIM_MAX_VOXELS} (memory); the planes' are given")
    elif len(keep) >= 2 and min(keep) >= 3:  # float32: the 3D filters' memory, not the score's precision, binds
        out["ssim"]["volume"] = _ssim(ref.reshape(keep), x.reshape(keep), data_range, np.float32)
    else:
        out["ssim"]["volume"] = None
        notes.append(f"no volume SSIM: shape {ref.shape} is too thin")
    lost = [name for name, v in out["ssim"].items() if v is not None and not np.isfinite(v)]
    if lost:  # one note, not skimage's RuntimeWarnings
        out["ssim"].update(dict.fromkeys(lost))
        notes.append(f"no {' and '.join(lost)} SSIM: the reconstruction's values (up to {np.abs(x).max():.3g}) "
                     f"are too large to score against a range of {data_range:.3g}")
    thin = [name for name, axis in AXES.items() if ref.shape[axis] > 1 and min(np.delete(ref.shape, axis)) == 1]
    if thin:  # e.g. one slice: its coronal and sagittal "images" are single rows and columns
        notes.append(f"{' and '.join(thin)} PSNR: means over lines of one voxel's width, not over plane images")
    if notes:
        out["notes"] = notes
    return out


def flat_metrics(m: dict) -> dict:
    """``per_axis_metrics`` output as flat rounded fields (psnr_axial, ..., ssim_volume); a plane that could not
    be scored (None, e.g. SSIM of a single slice) stays None."""
    out = {}
    for name, digits in (("psnr", 2), ("ssim", 4)):
        out.update({f"{name}_{k}": None if v is None else round(v, digits) for k, v in m[name].items()})
    return out
