"""Cartesian k-space sampling masks with an exact acceleration, a fully sampled centre and a seed.

Axis convention (the same for 2D slices and 3D volumes): an image is (..., H, W) or (Z, Y, X); the
readout (frequency-encode) direction is the row axis H/Y and is always fully sampled; phase encoding is
along the last axis W/X (k-space *columns*, as in fastMRI) and, for 3D acquisitions, also along Z.

* 1D kinds (``uniform1d``, ``gaussian1d``, ``equispaced1d``) select columns. ``make_mask(kind, (H, W), ...)``
  returns shape (1, W) — for (Z, H, W) it returns (1, 1, W) — so it broadcasts against k-space directly.
* ``poisson2d`` selects points of the (kz, kx) phase-encode plane of a (Z, Y, X) volume and returns
  shape (Z, 1, X).

Counts are exact: round(N / acceleration) phase-encode positions are sampled (N = W, or Z·X for poisson2d),
the fully sampled centre included; the centre holds round(N·center_fraction) columns (1D) or a box of
round(Z·center_fraction) × round(X·center_fraction) points (2D). The DC line/point (index n//2, the
fftshift convention) is in the centre. Nothing is drawn with replacement, and the same seed gives the
same mask.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from medrecon.errors import InputError

KINDS = ("uniform1d", "gaussian1d", "equispaced1d", "poisson2d")


def central_run(columns) -> slice:
    """The run of sampled positions around the middle of a 1D mask (its fully sampled centre); empty when the
    middle is not sampled."""
    cols = np.asarray(columns, bool)
    c = cols.size // 2
    if not cols[c]:
        return slice(c, c)
    lo = hi = c
    while lo > 0 and cols[lo - 1]:
        lo -= 1
    while hi + 1 < cols.size and cols[hi + 1]:
        hi += 1
    return slice(lo, hi + 1)


def _centre_slice(n: int, n_centre: int) -> slice:
    start = n // 2 - n_centre // 2
    return slice(start, start + n_centre)


def _counts(n: int, acceleration: float, n_centre: int) -> int:
    if not acceleration >= 1:
        raise InputError(f"acceleration must be >= 1, got {acceleration}")
    total = int(round(n / acceleration))
    if total < n_centre:
        raise InputError(f"acceleration {acceleration} allows {total} of {n} samples but the fully sampled centre "
                         f"needs {n_centre}: lower center_fraction or the acceleration")
    return total


def _mask_1d(kind: str, n: int, acceleration: float, center_fraction: float, rng) -> np.ndarray:
    n_centre = int(round(n * center_fraction))
    total = _counts(n, acceleration, n_centre)
    mask = np.zeros(n, bool)
    mask[_centre_slice(n, n_centre)] = True
    others = np.flatnonzero(~mask)
    need = total - n_centre
    if need == 0:
        return mask
    if kind == "uniform1d":
        chosen = rng.choice(others, need, replace=False)
    elif kind == "gaussian1d":
        sigma = 0.11 * n  # variable density: std of ~11% of the width around the DC column
        p = np.exp(-0.5 * ((others - n // 2) / sigma) ** 2) + 1e-12
        chosen = rng.choice(others, need, replace=False, p=p / p.sum())
    else:  # equispaced1d: evenly spaced over the non-centre columns, random offset
        step = len(others) / need
        chosen = others[np.floor(rng.uniform(0, step) + step * np.arange(need)).astype(int)]
    mask[chosen] = True
    return mask


def poisson_disc(shape: tuple[int, int], n_points: int, rng, exclude: np.ndarray | None = None,
                 density_ratio: float = 3.0):
    """Variable-density Poisson-disc sampling of exactly ``n_points`` grid points (outside ``exclude``).

    Points are visited in a random order and accepted when no earlier point blocks them; an accepted
    point blocks the disc of radius r(k) = s·(1 + (density_ratio - 1)·|k|) around it, |k| the normalised
    distance from the centre (0 at DC, 1 at the corners), so samples thin out towards high frequencies.
    The scale s is bisected to the largest value that still yields ``n_points``; surplus points are then
    dropped at random (dropping keeps the spacing). Every pair p, q satisfies |p - q| >= min(r(p), r(q)).
    Returns (mask, radius map).
    """
    nz, nx = shape
    exclude = np.zeros(shape, bool) if exclude is None else exclude
    kz = (np.arange(nz) - nz // 2) / max(nz / 2, 1)
    kx = (np.arange(nx) - nx // 2) / max(nx / 2, 1)
    rel = np.sqrt(kz[:, None] ** 2 + kx[None, :] ** 2) / math.sqrt(2)
    shape_r = 1 + (density_ratio - 1) * rel
    order = rng.permutation(np.flatnonzero(~exclude.ravel()))
    if n_points > order.size:
        raise InputError(f"cannot place {n_points} samples on {order.size} free k-space points")

    def attempt(scale):
        radius = scale * shape_r
        blocked = np.zeros(shape, bool)
        flat = blocked.ravel()
        accepted = []
        for idx in order:
            if flat[idx]:
                continue
            accepted.append(idx)
            z, x = divmod(int(idx), nx)
            r = radius[z, x]
            ri = int(math.ceil(r))
            z0, z1, x0, x1 = max(z - ri, 0), min(z + ri + 1, nz), max(x - ri, 0), min(x + ri + 1, nx)
            dz = (np.arange(z0, z1) - z)[:, None]
            dx = (np.arange(x0, x1) - x)[None, :]
            blocked[z0:z1, x0:x1] |= dz * dz + dx * dx < r * r
        return np.asarray(accepted, dtype=np.int64), radius

    lo, hi = 0.0, float(max(nz, nx))
    best, radius = attempt(lo)
    for _ in range(14):
        mid = 0.5 * (lo + hi)
        pts, rad = attempt(mid)
        if pts.size >= n_points:
            lo, best, radius = mid, pts, rad
        else:
            hi = mid
    keep = rng.choice(best, n_points, replace=False) if n_points else best[:0]
    mask = np.zeros(nz * nx, bool)
    mask[keep] = True
    return mask.reshape(shape), radius


def make_mask(kind: str, shape, acceleration: float, center_fraction: float = 0.08, seed: int = 0) -> np.ndarray:
    """A boolean sampling mask that broadcasts against the k-space of images of ``shape`` (see module doc)."""
    if kind not in KINDS:
        raise InputError(f"unknown mask kind {kind!r}; choose one of {KINDS}")
    shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
    if not 0 <= center_fraction <= 1:
        raise InputError(f"center_fraction must be in [0, 1], got {center_fraction}")
    rng = np.random.default_rng(seed)
    if kind != "poisson2d":
        m = _mask_1d(kind, shape[-1], acceleration, center_fraction, rng)
        return m.reshape((1,) * (len(shape) - 1) + (shape[-1],))
    if len(shape) != 3:
        raise InputError(f"poisson2d masks a (Z, Y, X) volume's (kz, kx) plane; got shape {shape}")
    nz, _, nx = shape
    centre = np.zeros((nz, nx), bool)
    sides = [max(1, int(round(n * center_fraction))) if center_fraction > 0 else 0 for n in (nz, nx)]
    centre[_centre_slice(nz, sides[0]), _centre_slice(nx, sides[1])] = True  # the DC point at least, few slices too
    total = _counts(nz * nx, acceleration, int(centre.sum()))
    m, _ = poisson_disc((nz, nx), total - int(centre.sum()), rng, exclude=centre)
    return (m | centre)[:, None, :]


def mask_acceleration(mask) -> float:
    """Phase-encode positions over those sampled (the acceleration ``make_mask`` is given): the readout axis (rows,
    -2) is collapsed, a column counting as sampled where any of its samples is (a partial echo's unmeasured samples
    do not count); per-slice masks (Z, H, W) are averaged over their slices. A mask that samples nothing: inf."""
    m = np.asarray(mask) != 0
    lines = m.any(axis=-2) if m.ndim >= 2 else m
    return float(lines.size / lines.sum()) if lines.any() else math.inf


def save_mask(path, mask: np.ndarray, **meta) -> Path:
    """Write a mask and its recipe (kind, acceleration, seed, ...) to an .npz file."""
    path = Path(path)
    np.savez_compressed(path, mask=np.asarray(mask, bool), meta=json.dumps(meta))
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def load_mask(path) -> tuple[np.ndarray, dict]:
    """Read a mask written by ``save_mask``: returns (mask, meta)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"mask file {path} does not exist; write it with save_mask or give the right path")
    with np.load(path) as f:
        if "mask" not in f:
            raise InputError(f"{path} holds no 'mask' array; expected a file written by save_mask")
        return f["mask"].astype(bool), json.loads(str(f["meta"])) if "meta" in f else {}
