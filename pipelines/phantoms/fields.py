"""The sampling grid of a phantom: voxel centres in patient mm bent by a smooth displacement field,
3D-correlated Gaussian random fields (textures, and shapes that are the same on any grid), tubes traced or
splatted as signed distances, the label/value canvas; and turning the canvas into a Volume.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from medrecon.errors import InputError
from medrecon.volume import Volume

from .shapes import ellipsoid_radius


def _unit_gauss(sigma_steps: float) -> np.ndarray:
    """Gaussian kernel of unit L2 norm: smoothing white noise with it keeps unit variance."""
    r = max(sigma_steps, 1e-3)
    k = np.exp(-0.5 * (np.arange(-int(4 * r) - 1, int(4 * r) + 2) / r) ** 2)
    return (k / np.sqrt((k ** 2).sum())).astype(np.float32)


def _hash_normal(key: int, iz, iy, ix) -> np.ndarray:
    """Standard normal values that depend only on key and the integer lattice node (broadcast index
    arrays): a node gets the same value whichever grid asks for it (splitmix64 hash, Box-Muller)."""
    u64 = np.uint64
    with np.errstate(over="ignore"):
        z = (np.asarray(iz).astype(u64) * u64(0x9E3779B97F4A7C15) ^ np.asarray(iy).astype(u64) * u64(0xC2B2AE3D27D4EB4F)
             ^ np.asarray(ix).astype(u64) * u64(0x165667B19E3779F9) ^ u64(key % 2 ** 64))
        z = (z ^ (z >> u64(30))) * u64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> u64(27))) * u64(0x94D049BB133111EB)
        z ^= z >> u64(31)
    u1 = ((z >> u64(40)).astype(np.float32) + 0.5) * np.float32(2.0 ** -24)  # two 24-bit uniforms
    u2 = ((z & u64(0xFFFFFF)).astype(np.float32) + 0.5) * np.float32(2.0 ** -24)
    return np.sqrt(-2 * np.log(u1)) * np.cos(np.float32(2 * np.pi) * u2)


class Grid:
    """Voxel centres in patient mm, bent by a smooth displacement field, plus the label/value canvas.

    `x`, `y` are (Z, Y, X) arrays of the *anatomical* coordinates seen at each voxel (warped and rolled),
    `s` is (Z, 1, 1). Shapes are evaluated on these, so every structure follows the same deformation.
    """

    THIN = 0.5  # tubes thinner than this many pixels (radius) are splatted rather than traced

    def __init__(self, shape, spacing_zyx, s_center, seed, warp_mm, roll_rad, background):
        self.shape = tuple(int(n) for n in shape)
        self.spacing = tuple(float(d) for d in spacing_zyx)
        self.rng, self.seed = np.random.default_rng([int(seed), 99]), int(seed)
        z, y, x = ((np.arange(n) - (n - 1) / 2) * d for n, d in zip(self.shape, self.spacing))
        self.zs, self.ys, self.xs = z + s_center, y, x
        self.s = self.zs[:, None, None].astype(np.float32)
        c, sn = np.cos(roll_rad), np.sin(roll_rad)
        x0, y0 = x[None, None, :], y[None, :, None]
        self.x = (c * x0 - sn * y0 + warp_mm * self.noise(35.0, key=1)).astype(np.float32)
        self.y = (sn * x0 + c * y0 + warp_mm * self.noise(35.0, key=2)).astype(np.float32)
        self.roll = roll_rad
        self.margin = 3.5 * warp_mm + 200 * abs(roll_rad) + 2 * max(self.spacing)
        self.value = np.full(self.shape, background, np.float32)
        self.label = np.zeros(self.shape, np.uint8)

    # -- random fields ---------------------------------------------------------------------------------
    def noise(self, sigma_mm, key: int | None = None) -> np.ndarray:
        """Unit-variance 3D Gaussian random field with correlation length sigma_mm (scalar or (s, y, x)).

        With a `key` the field is a fixed function of position (per seed and key): white noise on a lattice
        anchored in patient coordinates (spacing sigma / 1.5), smoothed and interpolated linearly, so the same
        anatomy comes out on any grid. Without, smoothed white noise on the voxels (fine textures)."""
        sigmas = np.broadcast_to(np.asarray(sigma_mm, float), (3,))
        axes = (self.zs, self.ys, self.xs)
        if key is None:
            g = self.rng.standard_normal(self.shape, dtype=np.float32)
            for axis, (sigma, step) in enumerate(zip(sigmas, self.spacing)):
                g = ndimage.correlate1d(g, _unit_gauss(sigma / step), axis=axis, mode="wrap")
            return g
        r = 1.5  # kernel width in lattice steps
        k = _unit_gauss(r)
        m = len(k) // 2 + 1
        nodes, interp = [], []
        for coords, sigma in zip(axes, sigmas):
            h = sigma / r
            lo, hi = int(np.floor(coords.min() / h)) - m, int(np.ceil(coords.max() / h)) + m
            nodes.append(np.arange(lo, hi + 1))
            pos = coords / h - lo
            i0 = np.minimum(pos.astype(int), hi - lo - 1)
            interp.append((i0, (pos - i0).astype(np.float32)))
        g = _hash_normal(self.seed * 1_000_003 + key, nodes[0][:, None, None], nodes[1][None, :, None],
                         nodes[2][None, None, :])
        for axis, (i0, w) in enumerate(interp):
            g = ndimage.correlate1d(g, k, axis=axis, mode="constant")
            w = w.reshape([-1 if a == axis else 1 for a in range(3)])
            g = np.take(g, i0, axis=axis) * (1 - w) + np.take(g, i0 + 1, axis=axis) * w
        return np.ascontiguousarray(g, dtype=np.float32)

    # -- shapes ------------------------------------------------------------------------------------------
    def box(self, x_range=None, y_range=None, s_range=None) -> tuple:
        """Index box (z, y, x slices) of the voxels that may see anatomical points in the given ranges."""
        def cut(axis, r):
            if r is None:
                return slice(None)
            return slice(int(np.searchsorted(axis, r[0] - self.margin)),
                         int(np.searchsorted(axis, r[1] + self.margin, "right")))
        return cut(self.zs, s_range), cut(self.ys, y_range), cut(self.xs, x_range)

    def coords(self, box: tuple):
        """Anatomical x, y, s over an index box."""
        return self.x[box], self.y[box], self.s[box[0]]

    def ellipsoid(self, c, semi, angle=0.0, tilt=(0.0, 0.0), bump=None):
        """(box, rho): normalised radius of an ellipsoid (rho < 1 inside) rotated by `angle` in the
        axial plane, its centre drifting by `tilt` (dx/ds, dy/ds); `bump` (field, amplitude) roughens it."""
        reach = max(semi[0], semi[1]) * (1 + 4 * (bump[1] if bump else 0))
        ex, ey = reach + abs(tilt[0]) * semi[2], reach + abs(tilt[1]) * semi[2]
        box = self.box((c[0] - ex, c[0] + ex), (c[1] - ey, c[1] + ey), (c[2] - semi[2], c[2] + semi[2]))
        rho = ellipsoid_radius(*self.coords(box), c, semi, angle, tilt)
        if bump is not None:
            rho = rho + bump[1] * bump[0][box]
        return box, rho

    def to_display(self, p: np.ndarray) -> np.ndarray:
        """Approximate display position (x, y, s) of anatomical points p (N, 3): undo roll and warp."""
        c, sn = np.cos(self.roll), np.sin(self.roll)
        d = np.array(p, np.float64)
        d[:, 0], d[:, 1] = c * p[:, 0] + sn * p[:, 1], -sn * p[:, 0] + c * p[:, 1]
        for _ in range(2):  # fixed point on the (smooth) warp, looked up at the nearest voxel
            idx = self.nearest(d, clip=True)
            wx = self.x[tuple(idx)] - (c * self.xs[idx[2]] - sn * self.ys[idx[1]])
            wy = self.y[tuple(idx)] - (sn * self.xs[idx[2]] + c * self.ys[idx[1]])
            d[:, 0] = c * (p[:, 0] - wx) + sn * (p[:, 1] - wy)
            d[:, 1] = -sn * (p[:, 0] - wx) + c * (p[:, 1] - wy)
        return d

    def nearest(self, d: np.ndarray, clip=False) -> list:
        """Index arrays (z, y, x) of the voxels nearest to display positions d (N, 3) = (x, y, s)."""
        idx = [np.rint((d[:, k] - a[0]) / h).astype(int)
               for k, a, h in zip((2, 1, 0), (self.zs, self.ys, self.xs), self.spacing)]
        return [np.clip(i, 0, n - 1) for i, n in zip(idx, self.shape)] if clip else idx

    def tubes(self, segments: np.ndarray, sdf=None, val=None):
        """Signed distance (mm) to a union of tapered tubes, and the value of the nearest tube.

        segments: (N, 9) rows x0, y0, s0, x1, y1, s1, r0, r1, value (anatomical mm). Tubes thinner than
        half a pixel are splatted from points along their axis; thicker ones are traced over their bounding box."""
        sdf = np.full(self.shape, np.inf, np.float32) if sdf is None else sdf
        val = np.zeros(self.shape, np.float32) if val is None else val
        seg = np.asarray(segments, np.float64).reshape(-1, 9)
        thin = np.maximum(seg[:, 6], seg[:, 7]) < self.THIN * self.spacing[1]
        self._splat(seg[thin], sdf, val)
        self._trace(seg[~thin], sdf, val)
        return sdf, val

    def _trace(self, seg, sdf, val):
        """tubes() for thick tubes: exact distances over each segment's bounding box."""
        if not len(seg):
            return
        d0, d1 = self.to_display(seg[:, 0:3]), self.to_display(seg[:, 3:6])
        length = np.linalg.norm(seg[:, 3:6] - seg[:, 0:3], axis=1)
        pad = np.maximum(seg[:, 6], seg[:, 7]) + 2.0 + self.spacing[1] + 0.1 * length
        lo, hi = np.minimum(d0, d1) - pad[:, None], np.maximum(d0, d1) + pad[:, None]
        axes = ((self.zs, 2), (self.ys, 1), (self.xs, 0))
        start = np.stack([np.searchsorted(a, lo[:, k]) for a, k in axes], 1)
        stop = np.stack([np.searchsorted(a, hi[:, k], "right") for a, k in axes], 1)
        for n in np.nonzero((stop > start).all(1))[0]:
            box = tuple(slice(a, b) for a, b in zip(start[n], stop[n]))
            x0, y0, s0, x1, y1, s1, r0, r1, v = seg[n]
            dx, dy, ds = x1 - x0, y1 - y0, s1 - s0
            px, py, ps = (self.x[box] - np.float32(x0), self.y[box] - np.float32(y0),
                          self.s[box[0]] - np.float32(s0))
            length2 = dx * dx + dy * dy + ds * ds
            t = np.clip((px * dx + py * dy + ps * ds) * np.float32(1 / max(length2, 1e-12)), 0, 1)
            dist = np.sqrt((px - t * dx) ** 2 + (py - t * dy) ** 2 + (ps - t * ds) ** 2)
            new = dist - (r0 + t * (r1 - r0))
            old = sdf[box]
            upd = new < old
            old[upd] = new[upd]
            val[box][upd] = v

    def _splat(self, seg, sdf, val):
        """tubes() for thin tubes: distances from points every half voxel along the axis to the voxels
        around each (exact to a quarter voxel), merged with np.minimum.at."""
        if not len(seg):
            return
        h = 0.5 * min(self.spacing)
        n = np.maximum(1, np.ceil(np.linalg.norm(seg[:, 3:6] - seg[:, 0:3], axis=1) / h)).astype(int) + 1
        k = np.repeat(np.arange(len(seg)), n)
        t = (np.arange(len(k)) - np.repeat(np.cumsum(n) - n, n)) / np.repeat(n - 1, n).clip(1)
        pts = seg[k, 0:3] + t[:, None] * (seg[k, 3:6] - seg[k, 0:3])
        rad = seg[k, 6] + t * (seg[k, 7] - seg[k, 6])
        base = self.nearest(self.to_display(pts))
        far = (self.THIN + 0.5) * self.spacing[1] + h / 2  # farthest voxel centre a thin tube can touch
        reach = [min(n - 1, max(1, int(np.ceil(far / sp - 0.5)))) for n, sp in zip(self.shape, self.spacing)]
        flat_sdf, flat_val = sdf.reshape(-1), val.reshape(-1)
        for off in np.ndindex(*(2 * m + 1 for m in reach)):
            idx = [b + o - m for b, o, m in zip(base, off, reach)]
            ok = np.ones(len(pts), bool)
            for i, size in zip(idx, self.shape):
                ok &= (i >= 0) & (i < size)
            if not ok.any():
                continue
            iz, iy, ix = (i[ok] for i in idx)
            flat = np.ravel_multi_index((iz, iy, ix), self.shape)
            p = pts[ok]
            new = (np.sqrt((self.x.reshape(-1)[flat] - p[:, 0]) ** 2 + (self.y.reshape(-1)[flat] - p[:, 1]) ** 2
                           + (self.zs[iz] - p[:, 2]) ** 2) - rad[ok]).astype(np.float32)
            np.minimum.at(flat_sdf, flat, new)
            hit = new <= flat_sdf[flat]
            flat_val[flat[hit]] = seg[k[ok][hit], 8]

    # -- painting ----------------------------------------------------------------------------------------
    def paint(self, sl, mask: np.ndarray, label: int, value) -> None:
        """Set label and value (scalar or full-volume array) where mask (over index box sl) is true."""
        if isinstance(value, np.ndarray) and value.shape == self.shape:
            value = value[sl]
        np.copyto(self.value[sl], np.asarray(value, np.float32), where=mask)
        self.label[sl][np.broadcast_to(mask, self.label[sl].shape)] = label

    def blend(self, occupancy: np.ndarray, value, label: int | None = None, where=None) -> None:
        """Partial-volume mix: value * occupancy + current * (1 - occupancy) (full-volume arrays)."""
        if where is not None:
            occupancy = occupancy * where
        self.value += occupancy * (value - self.value)
        if label is not None:
            self.label[occupancy > 0.5] = label

    def occupancy(self, sdf: np.ndarray, radius=None) -> np.ndarray:
        """Fraction of a voxel inside a surface given its signed distance (mm), linear over one pixel;
        for tubes of `radius` thinner than a voxel, at most their cross-section over the voxel's."""
        occ = np.clip(0.5 - sdf / self.spacing[1], 0.0, 1.0)
        if radius is not None:
            px, dz = self.spacing[1], self.spacing[0]
            occ *= np.minimum(1.0, np.pi * radius ** 2 / (px * np.sqrt(px * dz)))
        return occ


def check_geometry(seed, shape, *sizes_mm) -> tuple:
    if int(seed) < 0:
        raise InputError(f"phantom seed must be a non-negative integer, got {seed}")
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"phantom shape must be three positive sizes (Z, Y, X), got {shape}")
    if any(v is not None and not v > 0 for v in sizes_mm):
        raise InputError(f"pixel size and slice thickness must be positive (mm), got {sizes_mm}")
    return shape


def as_volume(data, spacing_zyx, meta) -> Volume:
    sz, sy, sx = spacing_zyx
    z, y, x = data.shape
    origin = (-(x - 1) / 2 * sx, -(y - 1) / 2 * sy, -(z - 1) / 2 * sz)
    return Volume(data, spacing=(sx, sy, sz), origin=origin, meta=meta)


def apply_psf(grid: Grid, sigma_px=0.55) -> None:
    """Scanner point-spread: a small in-plane Gaussian blur (partial volume at edges)."""
    grid.value = ndimage.gaussian_filter(grid.value, (0.3, sigma_px, sigma_px), mode="nearest")

