"""Synthetic 3D phantoms: a CT torso in HU and an MR brain in normalised magnitude.

They are the training data of the bundled priors and the ground truth of the demo, the benchmark and the
tests. Every structure is defined in 3D patient coordinates (mm; x to the patient's left, y posterior,
s superior: the LPS axes of the Volume) as ellipsoids, elliptic cylinders whose parameters vary smoothly
with s, and tubes along polylines or branching trees. A smooth random displacement field bends all of them,
and tissues carry 3D-correlated Gaussian random textures, so adjacent slices are continuous the way a real
scan's are. The anatomy (sizes, positions, rotations, contrast phase, the s-range imaged) is drawn from
`seed`, so a seed reproduces a volume exactly and different seeds differ visibly.

Seeds: train on `TRAIN_SEEDS`; the demo, benchmarks and tests use `HELD_OUT_SEEDS`, never used in training.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from medrecon.errors import InputError
from medrecon.volume import Volume

TRAIN_SEEDS = range(0, 1000)
HELD_OUT_SEEDS = range(1000, 1100)

CT_LABELS = {"air": 0, "fat": 1, "muscle": 2, "soft": 3, "lung": 4, "liver": 5, "spleen": 6, "kidney": 7,
             "heart": 8, "blood": 9, "bone": 10, "bowel": 11, "fluid": 12, "cartilage": 13, "table": 14,
             "stomach": 15, "pancreas": 16, "airway": 17}
MR_LABELS = {"background": 0, "scalp": 1, "skull": 2, "csf": 3, "gm": 4, "wm": 5, "deep_gm": 6,
             "ventricle": 7, "cerebellum_gm": 8, "brainstem": 9, "muscle": 10, "eye": 11, "sinus_air": 12}


def split_seeds(purpose: str) -> range:
    """Seeds for `purpose`: "train" -> TRAIN_SEEDS; "test"/"held_out"/"demo"/"benchmark" -> HELD_OUT_SEEDS."""
    if purpose == "train":
        return TRAIN_SEEDS
    if purpose in ("test", "held_out", "heldout", "demo", "benchmark", "val"):
        return HELD_OUT_SEEDS
    raise InputError(f"unknown seed purpose {purpose!r}: use 'train' or 'held_out'")


# ----------------------------------------------------------------------------------------------------------
# Geometry and random fields
# ----------------------------------------------------------------------------------------------------------

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


def _rho(x, y, s, c, semi, angle=0.0, tilt=(0.0, 0.0)):
    """Normalised radius of an ellipsoid (< 1 inside), rotated by `angle` in the axial plane, its centre
    drifting by `tilt` = (dx/ds, dy/ds)."""
    u, v = x - (c[0] + tilt[0] * (s - c[2])), y - (c[1] + tilt[1] * (s - c[2]))
    if angle:
        u, v = np.cos(angle) * u + np.sin(angle) * v, -np.sin(angle) * u + np.cos(angle) * v
    return np.sqrt((u / semi[0]) ** 2 + (v / semi[1]) ** 2 + ((s - c[2]) / semi[2]) ** 2)


def _superellipse(x, y, cx, cy, a, b, p=2.0):
    """(|x - cx| / a)^p + (|y - cy| / b)^p: elliptic cylinders whose parameters may vary with s."""
    if p == 2.0:
        return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2
    return np.abs((x - cx) / a) ** p + np.abs((y - cy) / b) ** p


class _Grid:
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
        rho = _rho(*self.coords(box), c, semi, angle, tilt)
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


def _smoothstep(s, lo, width):
    return 1.0 / (1.0 + np.exp(-(s - lo) / width))


def _path(points, value, n=6) -> np.ndarray:
    """Tube segments (N, 9) along a smooth (Catmull-Rom) curve through control points (x, y, s, radius)."""
    p = np.asarray(points, float)
    pts = []
    for i in range(len(p) - 1):
        p0, p1, p2, p3 = p[max(i - 1, 0)], p[i], p[i + 1], p[min(i + 2, len(p) - 1)]
        for t in np.linspace(0, 1, n, endpoint=False):
            pts.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t * t
                              + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3))
    pts.append(p[-1])
    pts = np.array(pts)
    return np.column_stack([pts[:-1, :3], pts[1:, :3], pts[:-1, 3], pts[1:, 3], np.full(len(pts) - 1, value)])


def _branches(rng, roots, directions, length, radius, r_min, accept, targets=None, near=0.0, max_depth=24):
    """Tube segments (N, 9) of random vessel/airway trees, and the index of each segment's root.

    All trees (one per row of roots / directions, (R, 3)) grow together, one generation at a time: each
    branch continues as a slightly thinner trunk (small turn) and gives off a thinner side branch at a wide
    angle; a segment is about 5 radii long. Growth stops below r_min or where accept(points (M, 3)) -> bool
    fails (points within `near` mm of their root always pass), after a try at half length and one towards
    a random point of `targets` (M, 3), so that the trees fill their organ."""
    roots = np.asarray(roots, float).reshape(-1, 3)
    p, d = roots.copy(), np.asarray(directions, float).reshape(-1, 3)
    root, ln, r = np.arange(len(p)), np.full(len(p), float(length)), np.full(len(p), float(radius))

    def ok_at(q):  # q: points of the current branches (aligned with `root`)
        return accept(q) | (np.linalg.norm(q - roots[root], axis=1) < near)

    out, ids = [], []
    for depth in range(max_depth + 1):
        d = d / np.linalg.norm(d, axis=1, keepdims=True)
        q = p + d * ln[:, None]
        if depth > 0:
            keep = ok_at(q)
            half = p + d * ln[:, None] / 2
            ok_half = ~keep & ok_at(half)
            q[ok_half] = half[ok_half]
            keep |= ok_half
            if targets is not None and len(targets) and not keep.all():
                aim = targets[rng.integers(0, len(targets), len(p))] - p
                aim = p + aim / (np.linalg.norm(aim, axis=1, keepdims=True) + 1e-9) * ln[:, None]
                ok_aim = ~keep & ok_at(aim)
                q[ok_aim] = aim[ok_aim]
                keep |= ok_aim
            p, q, d, ln, r, root = p[keep], q[keep], d[keep], ln[keep], r[keep], root[keep]
        out.append(np.column_stack([p, q, r, 0.9 * r, np.zeros(len(r))]))
        ids.append(root)
        grow = r * 0.9 >= r_min
        p, q, d, r, root = p[grow], q[grow], d[grow], r[grow], root[grow]
        if not len(r):
            break
        perp = np.cross(d, rng.standard_normal((len(r), 3)))
        perp /= np.linalg.norm(perp, axis=1, keepdims=True) + 1e-9
        kids = []
        for lo, hi, turn in ((0.86, 0.94, (0.0, 0.25)), (0.45, 0.68, (0.7, 1.2))):  # trunk, side branch
            rk = r * rng.uniform(lo, hi, len(r))
            ang = rng.uniform(*turn, len(r))[:, None]
            nd = np.cos(ang) * d + np.sin(ang) * perp + 0.1 * rng.standard_normal((len(r), 3))
            kids.append((q, nd, np.maximum(rk * rng.uniform(4, 7, len(r)), 2.0), rk, root))
            perp = -perp
        p, d, ln, r, root = (np.concatenate(k) for k in zip(*kids))
    return np.concatenate(out), np.concatenate(ids)


def _check_geometry(seed, shape, *sizes_mm) -> tuple:
    if int(seed) < 0:
        raise InputError(f"phantom seed must be a non-negative integer, got {seed}")
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"phantom shape must be three positive sizes (Z, Y, X), got {shape}")
    if any(v is not None and not v > 0 for v in sizes_mm):
        raise InputError(f"pixel size and slice thickness must be positive (mm), got {sizes_mm}")
    return shape


def _volume(data, spacing_zyx, meta) -> Volume:
    sz, sy, sx = spacing_zyx
    z, y, x = data.shape
    origin = (-(x - 1) / 2 * sx, -(y - 1) / 2 * sy, -(z - 1) / 2 * sz)
    return Volume(data, spacing=(sx, sy, sz), origin=origin, meta=meta)


def _psf(grid: _Grid, sigma_px=0.55) -> None:
    """Scanner point-spread: a small in-plane Gaussian blur (partial volume at edges)."""
    grid.value = ndimage.gaussian_filter(grid.value, (0.3, sigma_px, sigma_px), mode="nearest")


# ----------------------------------------------------------------------------------------------------------
# CT torso
# ----------------------------------------------------------------------------------------------------------

class _Frame:
    """Body frame at levels s (mm, any shape): outline, fat, spine position and body cavity."""

    def __init__(self, t: "_Torso", s):
        s = np.asarray(s, np.float32)
        self.wt = _smoothstep(s, t.dome_r - 20, 25)  # 0 abdomen .. 1 thorax
        self.A = t.A * (1 + (t.thA - 1) * self.wt)
        self.B = t.B * (1 + (t.thB - 1) * self.wt)
        fat = t.fat * (1 - 0.45 * self.wt)
        self.fat_l, self.fat_a, self.fat_p = fat, fat * 1.25, fat * 0.6
        rel = s - t.dome_r
        self.ysp = (self.B - self.fat_p - 72 - 10 * np.exp(-((rel + 170) / 70) ** 2)
                    + 6 * np.exp(-((rel - 100) / 90) ** 2))  # vertebral body centre: lordosis, kyphosis
        self.xsp = t.scol * np.sin(rel / 140 + t.scol_phase)
        front = -(self.B - self.fat_a - t.mw)
        back = self.ysp + 45 - 10 * self.wt
        apex = np.sqrt(np.clip(1 - (np.clip(rel - 150, 0, None) / 110) ** 2, 0.05, 1))
        self.ca = (self.A - self.fat_l - t.mw) * apex
        self.cy, self.cb = (front + back) / 2, (back - front) / 2 * np.sqrt(apex)


class _Torso:
    """A CT torso: anatomy drawn from `rng` (independent of the sampling grid), painted in HU by paint().

    Levels s are mm relative to the body (0 near the right diaphragm dome, positive towards the head)."""

    L = CT_LABELS

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        u = rng.uniform
        self.A, self.B = u(138, 172), u(92, 120)  # body semi-axes (lateral, antero-posterior), abdomen
        self.thA, self.thB = u(0.96, 1.08), u(0.97, 1.1)  # thorax / abdomen ratios
        self.fat, self.mw = u(5, 30), u(8, 14)  # subcutaneous fat, abdominal wall muscle (mm)
        self.dome_r = u(-12, 12)
        self.dome_l = self.dome_r - u(8, 25)
        self.scol, self.scol_phase = u(0, 5), u(0, 6.3)
        self.k = u(0.88, 1.12)  # organ scale
        self.blood = u(130, 240)  # contrast-enhanced blood (HU)
        self.liver_hu = u(52, 68)
        self.spleen_hu = self.liver_hu + u(-8, 8)
        a, b = self.A - self.fat - self.mw, self.B - self.fat - self.mw  # abdominal cavity scale
        self.ab = a, b
        dr, dl = self.dome_r, self.dome_l
        self.liver = [((-0.42 * a, -0.05 * b, dr - 60), (0.62 * a, 0.95 * b, 105), u(-0.2, 0.3)),
                      ((0.05 * a, -0.5 * b, dr - 30), (0.5 * a, 0.4 * b, 55), u(-0.2, 0.2))]
        hf = _Frame(self, dl + 50)
        self.heart = ((float(hf.xsp + 0.22 * hf.ca), float(hf.cy - 0.4 * hf.cb), dl + 48),
                      np.array((64, 50, 56)) * u(0.9, 1.12), u(-0.75, -0.35))
        self.kidneys = []
        for sgn, sk in ((-1, dr - 115), (1, dl - 95)):
            ys = float(_Frame(self, sk).ysp)
            self.kidneys.append(((sgn * (48 + 0.15 * a) * self.k, ys + u(0, 12), sk + u(-15, 15)), sgn * u(0.4, 0.8)))
        self.stomach = ((0.3 * a, -0.35 * b, dl - 45), u(0.2, 0.8), u(-1.2, 0.6))
        self.spleen = ((0.62 * a, 0.45 * b, dl - 50), u(-0.9, -0.4))
        self.gall = ((-0.3 * a, -0.5 * b, dr - 115), u(0, 1))
        self.colon_dip = u(-20, 20)
        self.r_min = 0.7  # thinnest tree branch (mm); finer vessels are a texture
        self._named_vessels()
        self._trees()
        self._skeleton()
        self._spots()

    def ysp(self, s) -> float:
        return float(_Frame(self, s).ysp)

    # -- analytic regions (x, y, s broadcast; fr = _Frame at s) ------------------------------------------
    def cavity(self, x, y, fr):
        return _superellipse(x, y, fr.xsp, fr.cy, fr.ca, fr.cb, 2.2) < 1

    def dome(self, x, y, fr):
        """Level of the diaphragm under (x, y): domes, deepest posteriorly and laterally."""
        h = self.dome_r + (self.dome_l - self.dome_r) * _smoothstep(x, 0, 25)
        dy = y - fr.cy
        q2 = (((np.abs(x - fr.xsp) - 0.4 * fr.ca) / (0.75 * fr.ca)) ** 2
              + (np.maximum(dy, 0) / fr.cb) ** 2 + (np.minimum(dy, 0) / (1.7 * fr.cb)) ** 2)
        q2 = np.minimum(q2, 1.6)
        return h - 25 * q2 - 45 * q2 ** 2

    def paraspinal(self, x, y, fr):
        return _superellipse(x, y, fr.xsp, fr.ysp + 58, 55 - 12 * fr.wt, 52) < 1

    def mediastinum(self, x, y, s, fr):
        w = 28 + 14 * np.exp(-((s - self.dome_r - 55) / 50) ** 2)
        return _superellipse(x, y, fr.xsp + 6, fr.cy - 0.1 * fr.cb, w, 1.05 * fr.cb) < 1

    def in_lung(self, p: np.ndarray) -> np.ndarray:
        """Which anatomical points p (N, 3) lie in a lung (ignoring the warp and organ bumps)."""
        x, y, s = p.T
        fr = _Frame(self, s)
        c, semi, ang = self.heart
        return (self.cavity(x, y, fr) & (s > self.dome(x, y, fr)) & ~self.paraspinal(x, y, fr)
                & ~self.mediastinum(x, y, s, fr) & (_rho(x, y, s, c, semi * 1.1, ang) > 1))

    def in_liver(self, p: np.ndarray) -> np.ndarray:
        x, y, s = p.T
        fr = _Frame(self, s)
        rho = np.min([_rho(x, y, s, c, np.multiply(sm, self.k), an) for c, sm, an in self.liver], axis=0)
        return self.cavity(x, y, fr) & (s < self.dome(x, y, fr) - 5) & (rho < 1)

    # -- grid-independent geometry: vessels, airways, trees, skeleton -------------------------------------
    def _named_vessels(self):
        u, dr, ysp = self.rng.uniform, self.dome_r, self.ysp
        (hx, hy, hs), _, _ = self.heart
        ra = u(10, 13)
        self.aorta = [(12, ysp(dr - 330) - 28, dr - 330, ra * 0.9), (12, ysp(dr - 100) - 30, dr - 100, ra),
                      (22, ysp(dr + 40) - 22, dr + 40, ra), (25, ysp(dr + 120) - 18, dr + 120, ra * 1.05),
                      (12, ysp(dr + 150) - 45, dr + 158, ra * 1.2), (-12, hy - 10, dr + 140, ra * 1.3),
                      (-8, hy, dr + 95, ra * 1.35), (hx - 20, hy + 5, hs, ra * 1.3)]
        ivc = [(-25, ysp(dr - 330) - 30, dr - 330, 11), (-28, ysp(dr - 60) - 32, dr - 60, 12),
               (-22, hy + 15, dr + 10, 14), (hx - 35, hy + 10, hs - 10, 14)]
        svc = [(-25, hy - 5, dr + 260, 9), (-28, hy + 5, dr + 110, 10), (hx - 35, hy + 10, hs + 20, 11)]
        pa = [(hx - 5, hy - 25, hs + 30, 13), (0, hy - 5, dr + 115, 13)]
        portal = [(0, -0.2 * self.B, dr - 100, 7), (-0.25 * self.A, -0.05 * self.B, dr - 70, 7)]
        self.hila = [(sgn * 48, ysp(dr + 105) - 38, dr + 105) for sgn in (-1, 1)]
        b = self.blood
        segs = [_path(path, v) for path, v in
                ((self.aorta, b), (ivc, 0.85 * b), (svc, 0.9 * b), (pa, b), (portal, 0.8 * b))]
        segs += [_path([(0, hy - 5, dr + 115, 11), hil + (9,)], b) for hil in self.hila]  # pulmonary arteries
        segs += [_path([(12, ysp(c[2]) - 28, c[2], 3.5), (c[0] - np.sign(c[0]) * 20, c[1] - 8, c[2], 3.0)], b)
                 for c, _ in self.kidneys]  # renal arteries
        segs += [_path([(12, ysp(dr - 240) - 28, dr - 240, ra * 0.8), (sgn * 55, ysp(dr - 330) - 20, dr - 330, 6)], b)
                 for sgn in (-1, 1)]  # iliac arteries
        self.vessel_segs = np.concatenate(segs)
        tr = [(0, ysp(dr + 300) - 45, dr + 300, 9), (0, ysp(dr + 140) - 42, dr + 140, 9)]
        self.airway_segs = np.concatenate(
            [_path(tr, 1.8)] + [_path([tr[-1], (np.sign(h[0]) * 22, tr[-1][1] + 3, dr + 128, 7), h + (5.5,)], 1.5)
                                for h in self.hila])

    def _trees(self):
        """Pulmonary arteries (with bronchi) and veins from each hilum; portal/hepatic veins in the liver."""
        rng = self.rng
        lung, bronchi = [], []
        box = rng.uniform((-200, -160, self.dome_r - 120), (200, 160, self.dome_r + 260), (20000, 3))
        inside = box[self.in_lung(box)]
        for hx, hy, hs in self.hila:
            sgn = np.sign(hx)
            dirs = np.array([(0.3 * sgn, -0.3, 1.0), (0.9 * sgn, -0.7, -0.2), (0.5 * sgn, 0.5, -1.0),
                             (0.7 * sgn, 0.6, 0.3), (0.8 * sgn, 0.2, -0.6), (0.4 * sgn, 0.1, -1.0)])
            dirs = np.repeat(dirs + 0.2 * rng.standard_normal(dirs.shape), 2, axis=0)
            roots = np.tile([(hx, hy, hs), (hx, hy + 8, hs - 12)], (len(dirs) // 2, 1))  # arteries, veins
            tree, root = _branches(rng, roots, dirs, 30.0, 6.0, self.r_min, self.in_lung,
                                   inside[np.sign(inside[:, 0]) == sgn], near=45)
            tree[:, 8] = tree[:, 6]  # value: radius
            lung.append(tree)
            br = tree[(root % 2 == 0) & (tree[:, 6] >= 1.2)].copy()  # bronchi beside the arteries
            off = np.cross(br[:, 3:6] - br[:, 0:3], (0, 0, 1.0))
            off *= (1.4 * br[:, 6] / (np.linalg.norm(off, axis=1) + 1e-9))[:, None]
            br[:, 0:3] += off
            br[:, 3:6] += off
            br[:, 6:8] *= 0.85
            br[:, 8] = np.maximum(0.6, 0.22 * br[:, 6])  # value: wall thickness
            bronchi.append(br)
        self.lung_trees, self.bronchi = np.concatenate(lung), np.concatenate(bronchi)
        c = np.array(self.liver[0][0]) + (25, 15, -10)
        dirs = np.array([(-1, 0.2, 0.6), (-0.6, 0.8, -0.3), (1, -0.7, 0.4), (-1, -0.4, -0.2), (-0.3, -0.3, 1)])
        self.liver_tree, _ = _branches(rng, np.tile(c, (len(dirs), 1)), dirs + 0.2 * rng.standard_normal(dirs.shape),
                                       24.0, 5.0, self.r_min, self.in_liver, near=15)

    def _skeleton(self):
        """Vertebral level coordinate along s, and the ribs (tubes around the chest wall)."""
        u, dr = self.rng.uniform, self.dome_r
        self.sf = np.arange(-700.0, 700.0, 0.5)
        self.tw_f = _smoothstep(self.sf, dr - 70, 30)
        self.height_f = 36 - 10 * self.tw_f  # lumbar ~36 mm per level, thoracic ~26 mm
        self.lev_f = np.cumsum(0.5 / self.height_f) + u(0, 1)
        levels = np.arange(np.floor(self.lev_f.min()), np.ceil(self.lev_f.max()))
        s_att = np.interp(levels + 0.45, self.lev_f, self.sf)
        self.ribs, self.cartilage = [], []
        for num, sa in zip(range(12, 0, -1), s_att[s_att > dr - 85]):
            fr = _Frame(self, sa)
            a_r, b_r, cy = float(fr.ca) + 7, float(fr.cb) + 7, float(fr.cy)
            end = 0.45 * np.pi if num > 10 else (0.7 * np.pi if num > 7 else 0.74 * np.pi)
            cend = end if num > 10 else (0.86 * np.pi if num > 7 else 0.94 * np.pi)
            drop = u(45, 65) * (1.1 if num > 6 else 0.8)
            phi0 = np.arcsin(min(45 / a_r, 0.9))
            phis = np.linspace(phi0, cend, 12)
            nb = int(np.searchsorted(phis, end)) * 2 + 2
            for sgn in (-1, 1):
                pts = [(sgn * 18 + float(fr.xsp), float(fr.ysp) + 6, sa + 6, 4.0)]
                pts += [(sgn * a_r * np.sin(phi) ** (2 / 2.2) + float(fr.xsp),
                         cy + b_r * np.sign(np.cos(phi)) * np.abs(np.cos(phi)) ** (2 / 2.2),
                         sa - drop * (0.35 * (phi - phi0) / np.pi + 0.65 * (1 - np.cos(phi - phi0)) / 2),
                         4.5 if phi <= end else 4.2) for phi in phis]
                segs = _path(pts, 0.0, n=2)
                self.ribs.append(segs[:nb])
                self.cartilage.append(segs[nb:])
        self.ribs, self.cartilage = np.concatenate(self.ribs), np.concatenate(self.cartilage)

    def _spots(self):
        """A few small, dense calcifications: aortic wall, coronary, renal and lung granulomas."""
        u, rng = self.rng.uniform, self.rng
        self.spots = []
        aorta = np.asarray(self.aorta)
        for _ in range(rng.integers(2, 9)):
            i = rng.integers(0, len(aorta) - 1)
            p = aorta[i, :3] + u(0, 1) * (aorta[i + 1, :3] - aorta[i, :3])
            ang = u(0, 2 * np.pi)
            p = p + aorta[i, 3] * np.array((np.cos(ang), np.sin(ang), 0))
            self.spots.append((*p, *(p + (0, 0, u(0, 4))), u(0.8, 2.0), u(0.8, 2.0), u(400, 1100)))
        hc = np.array(self.heart[0])
        for _ in range(rng.integers(0, 4)):
            p = hc + rng.standard_normal(3) * (30, 25, 25)
            self.spots.append((*p, *p, u(0.8, 1.6), u(0.8, 1.6), u(300, 900)))
        for c in [k[0] for k in self.kidneys] + list(self.hila):
            if u() < 0.3:
                p = np.array(c) + rng.standard_normal(3) * 15
                self.spots.append((*p, *p, u(1.0, 2.5), 1.0, u(300, 900)))

    # -- painting on a grid --------------------------------------------------------------------------------
    def paint(self, g: _Grid, table: bool) -> None:
        self.g = g
        self.f = {"F": g.noise(0.9), "M": g.noise(3.0)}  # textures: fine, medium
        self.f.update({name: g.noise(sig, key) for name, sig, key in  # shapes: the same on any grid
                       (("C", 10.0, 3), ("S", (14, 6, 6), 4), ("B", 7.0, 5), ("G", 4.0, 6))})
        self.fr = _Frame(self, g.s)
        if table:
            self._table()
        self._body()
        self._abdomen()
        self._thorax()
        self._vessels()
        self._lungs()
        self._bones()
        sdf, val = g.tubes(self.spots)
        g.blend(g.occupancy(sdf), val, where=g.label != self.L["air"])

    def tex(self, base, **amps):
        """base + sum of amplitude * shared random field (F 0.9 mm, M 3 mm, G 4 mm, C 10 mm, S, B 7 mm)."""
        out = np.full(self.g.shape, base, np.float32)
        for name, a in amps.items():
            out += a * self.f[name]
        return out

    def sheet(self, name="S", width=0.07):
        """Thin random sheets (the zero set of a field): fat septa, fasciae."""
        return np.exp(-(self.f[name] / width) ** 2)

    def organ(self, label, value, c, semi, angle=0.0, tilt=(0.0, 0.0), bump=0.06, within=None):
        g = self.g
        sl, rho = g.ellipsoid(c, np.multiply(semi, self.k), angle, tilt, (self.f["C"], bump))
        mask = rho < 1
        if within is not None:
            mask &= within[sl]
        g.paint(sl, mask, label, value)
        return sl, rho, mask

    def _table(self):
        g = self.g
        top = self.B * max(1.0, self.thB) + 2.0 + 12 * abs(g.roll)
        d = g.ys[:, None] - (top - 0.0006 * g.xs[None, :] ** 2)
        inside = np.abs(g.xs)[None, :] < 210
        shell = ((d > 0) & (d < 3.5) | (d > 14) & (d < 17)) & inside
        core = (d >= 3.5) & (d <= 14) & inside
        g.paint(slice(None), shell[None], self.L["table"], 80.0)
        g.paint(slice(None), core[None], self.L["table"], -850.0)

    def _body(self):
        g, L, s, fr, sl = self.g, self.L, self.g.s, self.fr, slice(None)
        post = g.y > 0
        body = _superellipse(g.x, g.y, 0, 0, fr.A, np.where(post, fr.B * 0.97, fr.B), 2.3) < 1
        g.paint(sl, body, L["fat"], self.tex(-102, M=6, F=5) + 55 * self.sheet())
        b = np.where(post, fr.B * 0.97 - fr.fat_p, fr.B - fr.fat_a)
        wall = _superellipse(g.x, g.y, 0, 0, fr.A - fr.fat_l, b, 2.3) < 1
        muscle = self.tex(52, M=5, F=6) - 90 * self.sheet("C", width=0.04)
        g.paint(sl, wall, L["muscle"], muscle)
        # cavity: thorax (lungs) above the diaphragm, abdomen (visceral fat) below, muscle in between
        self.cav = cav = self.cavity(g.x, g.y, fr)
        dome = self.dome(g.x, g.y, fr)
        self.thx, self.abd = cav & (s > dome), cav & (s < dome - 5)
        vessels = np.exp(-(self.f["S"] ** 2 + self.f["C"] ** 2) / 0.01)  # crossing sheets: small vessels
        g.paint(sl, self.abd, L["fat"], self.tex(-95, M=6, F=5) + (self.blood + 95) * vessels)
        g.paint(sl, cav & ~self.thx & ~self.abd, L["muscle"], self.tex(50, M=4))
        g.paint(sl, self.thx, L["lung"], -860.0)
        g.paint(sl, self.paraspinal(g.x, g.y, fr) & cav, L["muscle"], muscle)
        r = np.clip(8 + 0.13 * (self.dome_r - 70 - s), 0, 30) * self.k  # psoas
        for sgn in (-1, 1):
            ps = _superellipse(g.x, g.y, fr.xsp + sgn * (22 + r), fr.ysp - 3, r + 1e-3, r * 0.85 + 1e-3) < 1
            g.paint(sl, ps & (r > 2), L["muscle"], muscle)

    def _abdomen(self):
        g, L, dr, dl = self.g, self.L, self.dome_r, self.dome_l
        a, b = self.ab
        abd, sl = self.abd, slice(None)
        # small bowel loops in the lower abdomen, colon framing them
        sb = (self.f["B"] > -0.3) & abd & (g.s < dr - 90 + 20 * self.f["C"])
        gas = (self.f["B"] > 0.9) & (self.f["G"] > 0.8)
        g.paint(sl, sb, L["bowel"], np.where(gas, -950, self.tex(18, M=8, F=5)))
        g.paint(sl, sb & (self.f["B"] < -0.05), L["bowel"], self.tex(75, M=6))
        colon = [(-0.72 * a, -0.05 * b, dr - 320, 22), (-0.75 * a, -0.1 * b, dr - 150, 24),
                 (-0.55 * a, -0.55 * b, dr - 100, 22), (0, -0.7 * b, dr - 140 + self.colon_dip, 20),
                 (0.6 * a, -0.45 * b, dr - 70, 21), (0.75 * a, 0.05 * b, dr - 110, 20),
                 (0.72 * a, 0.05 * b, dr - 320, 18)]
        sdf, _ = g.tubes(_path(colon, 0.0))
        stool = np.where((self.f["G"] > 0.9) | (self.f["C"] > 0.4 + 0.6 * np.sign(g.x)), -900, self.tex(25, M=15))
        g.paint(sl, (sdf < 0) & abd, L["bowel"], stool)
        g.paint(sl, (sdf < 0) & (sdf > -2.5) & abd, L["bowel"], 60.0)
        # liver, gall bladder, spleen, stomach (gas above a fluid level: the patient is supine)
        liver = self.tex(self.liver_hu, M=6, F=5, C=4)
        for c, semi, ang in self.liver:
            self.organ(L["liver"], liver, c, semi, ang, within=abd)
        c, ang = self.gall
        self.organ(L["fluid"], self.tex(8, M=2), c, (14, 16, 32), ang, (0.15, 0.2), within=abd)
        c, ang = self.spleen
        self.organ(L["spleen"], self.tex(self.spleen_hu, M=6, F=5, C=3), c, (0.24 * a, 0.5 * b, 55), ang, within=abd)
        c, ang, fill = self.stomach
        sl2, rho, m = self.organ(L["stomach"], self.tex(45, M=5), c, (0.32 * a, 0.4 * b, 60), ang, within=abd)
        level_y = c[1] + 0.4 * b * self.k * fill
        g.paint(sl2, m & (rho < 0.88), L["stomach"], np.where(g.y[sl2] < level_y, -1000, self.tex(12, M=10)[sl2]))
        # kidneys: cortex, medulla, renal sinus fat
        for c, ang in self.kidneys:
            sgn = np.sign(c[0])
            sl2, rho, m = self.organ(L["kidney"], self.tex(0.8 * self.blood, M=6, F=6), c, (27, 22, 55), ang,
                                     (-sgn * 0.15, 0.05), bump=0.03, within=abd)
            medulla = m & (rho < 0.72 + 0.08 * self.f["G"][sl2])
            g.paint(sl2, medulla, L["kidney"], self.tex(0.5 * self.blood, M=8)[sl2])
            hil = (c[0] - sgn * 18 * np.cos(ang), c[1] - 14, c[2])
            sl3, rho3 = g.ellipsoid(hil, (9, 10, 22), ang)
            g.paint(sl3, (rho3 < 1) & (g.label[sl3] == L["kidney"]), L["fat"], self.tex(-70, M=10)[sl3])
        # pancreas: lobulated band from the splenic hilum across the midline
        pan = [(0.55 * a, 0.25 * b, dl - 75, 10), (0.2 * a, -0.15 * b, dr - 85, 11), (-0.05 * a, -0.2 * b, dr - 90, 12),
               (-0.25 * a, -0.05 * b, dr - 105, 14)]
        sdf, _ = g.tubes(_path(pan, 0.0))
        lobules = self.tex(45, M=12) - 120 * (self.f["F"] > 1.3)
        g.paint(sl, (sdf < 3 * self.f["C"]) & abd, L["pancreas"], lobules)

    def _thorax(self):
        g, L, s, fr = self.g, self.L, self.g.s, self.fr
        thx = self.thx
        g.paint(slice(None), self.mediastinum(g.x, g.y, s, fr) & thx, L["fat"], self.tex(-90, M=8, F=5))
        # heart: epicardial fat, myocardium, four blood-filled chambers
        c, semi, ang = self.heart
        self.organ(L["fat"], self.tex(-90, M=8), c, semi * 1.1 / self.k, ang, bump=0.03, within=thx)
        self.organ(L["heart"], self.tex(60, M=6, F=4), c, semi / self.k, ang, bump=0.02, within=thx)
        # chambers in heart coordinates: u towards the apex (left, anterior), v posterior-left, s up
        su, sv, sz = semi
        ax_u, ax_v = np.array((np.cos(ang), np.sin(ang), 0)), np.array((-np.sin(ang), np.cos(ang), 0))
        at = lambda fu, fv, fs: tuple(np.array(c) + fu * su * ax_u + fv * sv * ax_v + (0, 0, fs * sz))  # noqa: E731
        blood, myo = self.tex(self.blood, M=5, F=4), self.tex(60, M=6)
        for label, value, centre, size in (
                (L["blood"], 0.9 * blood, (-0.05, -0.35, 0), (0.6, 0.36, 0.55)),  # right ventricle
                (L["heart"], myo, (0.12, 0.2, -0.05), (0.62, 0.5, 0.62)),  # left ventricular wall
                (L["blood"], blood, (0.12, 0.2, -0.05), (0.45, 0.3, 0.45)),  # left ventricle
                (L["blood"], blood, (-0.4, 0.45, 0.35), (0.35, 0.35, 0.35)),  # left atrium
                (L["blood"], 0.9 * blood, (-0.55, -0.15, 0.2), (0.35, 0.35, 0.4))):  # right atrium
            sl2, rho2 = g.ellipsoid(at(*centre), np.multiply(size, semi), ang, bump=(self.f["C"], 0.03))
            in_heart = np.isin(g.label[sl2], (L["heart"], L["blood"]))
            g.paint(sl2, (rho2 < 1) & in_heart, label, value)
        # oesophagus, behind the heart, in front of the spine
        dr = self.dome_r
        path = [(px, self.ysp(ps) - 20, ps, r) for px, ps, r in ((20, dr - 30, 7), (15, dr + 100, 8), (5, dr + 260, 8))]
        sdf, _ = g.tubes(_path(path, 0.0))
        g.paint(slice(None), (sdf < 0) & self.cav & (s > dr - 40), L["soft"], self.tex(40, M=5))

    def _vessels(self):
        g, L = self.g, self.L
        sdf, val = g.tubes(self.vessel_segs)
        inside = self.cav | (g.label == L["muscle"])
        g.paint(slice(None), (sdf < 0) & inside, L["blood"], val + 6 * self.f["M"])

    def _lungs(self):
        """Parenchyma (denser where dependent), vessel trees, fissures, airways; veins in the liver."""
        g, L, fr = self.g, self.L, self.fr
        lung = g.label == L["lung"]
        grav = 35 * np.clip((g.y - fr.cy + fr.cb) / (2 * fr.cb), 0, 1)
        g.paint(slice(None), lung, L["lung"], self.tex(-875, M=10, F=8, C=8) + grav)
        micro = np.exp(-(self.f["G"] ** 2 + self.f["S"] ** 2) / 0.03)  # crossing sheets: small vessels
        g.blend(0.8 * micro, 20.0, where=lung)
        sdf, radius = g.tubes(self.lung_trees)
        hu = 30 + (self.blood - 30) * np.clip((radius - 1.5) / 4, 0, 1)  # large vessels enhance
        g.blend(g.occupancy(sdf, radius), hu, L["blood"], where=lung)
        for sgn, (hx, hy, hs) in zip((-1, 1), self.hila):  # oblique fissures
            n = np.array((0.25 * sgn, 0.75, -0.6))
            n /= np.linalg.norm(n)
            dist = (g.x - hx) * n[0] + (g.y - hy) * n[1] + (g.s - hs) * n[2] + 3 * self.f["C"]
            g.blend(0.5 * np.clip(1 - np.abs(dist) / 0.8, 0, 1) * (np.sign(g.x) == sgn), -600.0, where=lung)
        sdf, wall = g.tubes(np.concatenate([self.bronchi, self.airway_segs]))
        region = self.thx | lung
        g.blend(g.occupancy(sdf), self.tex(30, M=5), L["airway"], where=region)
        g.blend(g.occupancy(sdf + wall), -980.0, L["airway"], where=region)
        sdf, _ = g.tubes(self.liver_tree)
        liver = g.label == L["liver"]
        g.blend(g.occupancy(sdf), self.liver_hu + 0.45 * (self.blood - self.liver_hu), where=liver)

    def _bones(self):
        """Vertebrae (bodies, discs, posterior elements), ribs, costal cartilage, sternum, iliac wings;
        trabecular texture inside, a cortical shell at the surface."""
        g, L, dr, fr = self.g, self.L, self.dome_r, self.fr
        bone, endplate = np.zeros(g.shape, bool), np.zeros(g.shape, bool)
        # vertebrae, evaluated in a box around the spine; level phase ph runs 0..1 over disc + body
        bx = g.box((fr.xsp.min() - 80, fr.xsp.max() + 80), (fr.ysp.min() - 30, fr.ysp.max() + 95))
        x, y, _ = g.coords(bx)
        lev, tw, hz = (np.interp(g.zs, self.sf, f)[:, None, None] for f in (self.lev_f, self.tw_f, self.height_f))
        ph = lev % 1.0
        fd = (9 - 3 * tw) / hz  # disc fraction of a level
        ab, bb = (24 - 6 * tw) * self.k, (17 - 3 * tw) * self.k
        vb = _superellipse(x, y, fr.xsp, fr.ysp, ab, bb) < 1
        g.paint(bx, vb & (ph < fd), L["cartilage"], self.tex(85, M=8))
        body = vb & (ph >= fd)
        endplate[bx] = body & ((ph < fd + 1.5 / hz) | (ph > 1 - 1.5 / hz))
        rc = 9 - tw
        yc = fr.ysp + bb + rc + 1
        canal = _superellipse(x, y, fr.xsp, yc, rc * 1.2, rc) < 1
        ph_post = (ph - 0.6 * np.clip(y - yc, 0, None) / hz) % 1.0  # posterior elements slope down
        arch = (_superellipse(x, y, fr.xsp, yc, rc * 1.2 + 7, rc + 7) < 1) & ~canal & (y > fr.ysp + 0.4 * bb)
        arch &= (ph_post > 0.25) & (ph_post < 0.8)
        spl = 30 + 6 * tw
        spin = _superellipse(x, y, fr.xsp, yc + rc + spl / 2 + 3, 4.0, spl / 2) < 1
        spin &= (ph_post > 0.35) & (ph_post < 0.98)
        tl = 16 - 2 * tw
        trans = ((_superellipse(np.abs(x - fr.xsp), y, ab + 0.5 * tl, yc - 2 + 4 * tw, tl, 3.5) < 1)
                 & (ph > 0.3) & (ph < 0.62))
        g.paint(bx, canal, L["fluid"], self.tex(20, M=4))
        bone[bx] = body | arch | spin | trans
        # sternum (wider manubrium) and iliac wings below the crest
        front = fr.cy - fr.cb - 6
        bx = g.box((-45, 45), (front.min() - 10, front.max() + 10), (dr + 8, dr + 235))
        x, y, s = g.coords(bx)
        bone[bx] |= (_superellipse(x, y, 0, front[bx[0]], 13 + 10 * _smoothstep(s, dr + 190, 10), 6.0) < 1)
        crest = dr - 215
        bx = g.box(s_range=(-1e4, crest))
        x, y, s = g.coords(bx)
        ia, ysp = 105 + 0.3 * np.clip(crest - s, 0, None), fr.ysp[bx[0]] - 15
        wing = (_superellipse(x, y, 0, ysp, ia, 60.0) < 1) & ~(_superellipse(x, y, 0, ysp, ia - 9, 51.0) < 1)
        bone[bx] |= wing & (np.abs(x) > 45) & (y > ysp - 35)
        # ribs and costal cartilage
        bone |= g.tubes(self.ribs)[0] < 0
        g.paint(slice(None), (g.tubes(self.cartilage)[0] < 0) & ~bone, L["cartilage"], self.tex(110, M=25))
        g.paint(slice(None), bone, L["bone"], self.tex(190, M=35) + 80 * np.tanh(1.5 * self.f["F"]))
        cortex = (bone & ~ndimage.binary_erosion(bone, np.ones((1, 3, 3), bool))) | endplate
        g.paint(slice(None), cortex, L["bone"], self.tex(1250, M=90, F=60))


def ct_phantom(shape=(32, 128, 128), seed: int = 0, pixel_size_mm: float | None = None,
               slice_thickness_mm: float = 2.5, *, z_center_mm: float | None = None, table: bool = True,
               return_labels: bool = False):
    """A 3D CT torso phantom in HU as a Volume (Z, Y, X); with return_labels also its CT_LABELS map (uint8).

    pixel_size_mm: default 384 mm / max(Y, X) (1.5 mm at 256², the body filling the field of view as in a
    real abdominal CT). z_center_mm: anatomical level of the middle slice relative to the right diaphragm
    dome, positive towards the head (about -250 lower abdomen .. +220 lung apex); default drawn from the
    seed. The anatomy depends on the seed only; the textures also on the grid.
    """
    shape = _check_geometry(seed, shape, pixel_size_mm, slice_thickness_mm)
    px = float(pixel_size_mm or 384.0 / max(shape[1:]))
    dz = float(slice_thickness_mm)
    rng = np.random.default_rng([int(seed), 7])
    torso = _Torso(rng)
    extent = shape[0] * dz
    lo, hi = -240 + extent / 2, 200 - extent / 2
    zc = float(z_center_mm) if z_center_mm is not None else (rng.uniform(lo, hi) if lo < hi else -20.0)
    g = _Grid(shape, (dz, px, px), zc + torso.dome_r, 2 * int(seed),
              rng.uniform(2.5, 5.0), rng.uniform(-0.05, 0.05), -1000.0)
    torso.paint(g, table)
    _psf(g)
    hu = np.clip(g.value, -1024, 3071)
    vol = _volume(hu, (dz, px, px), {"modality": "CT", "source": "medrecon synthetic phantom", "seed": int(seed),
                                     "units": "HU", "z_center_mm": zc, "contrast_blood_hu": round(torso.blood, 1)})
    return (vol, g.label) if return_labels else vol


# ----------------------------------------------------------------------------------------------------------
# MR brain
# ----------------------------------------------------------------------------------------------------------

# Relative magnitude per tissue and contrast (T1: MPRAGE-like, T2: TSE-like, PD).
_MR_TISSUE = {  # name: (T1, T2, PD)
    "fat": (0.95, 0.70, 0.85), "muscle": (0.40, 0.30, 0.55), "bone": (0.04, 0.04, 0.05),
    "marrow": (0.55, 0.40, 0.55), "csf": (0.12, 1.00, 0.85), "gm": (0.52, 0.62, 0.80),
    "wm": (0.80, 0.42, 0.68), "caudate": (0.58, 0.56, 0.78), "putamen": (0.60, 0.52, 0.77),
    "pallidum": (0.68, 0.40, 0.70), "thalamus": (0.64, 0.50, 0.75), "brainstem": (0.70, 0.47, 0.72),
    "vitreous": (0.10, 0.95, 0.80), "lens": (0.55, 0.20, 0.50), "air": (0.0, 0.0, 0.0),
}


def _sphere_field(rng, sigma_mm, radius_mm, n_theta=128, n_waves=128):
    """A smooth random field on the sphere of radius `radius_mm` (Gaussian covariance, correlation length
    sigma_mm), tabulated over (polar angle, azimuth) with the azimuth padded by one column for wrap-around.
    Returns (values, d/dtheta, d/dphi) tables."""
    k = rng.standard_normal((n_waves, 3)) / sigma_mm
    phase = rng.uniform(0, 2 * np.pi, n_waves)
    theta = np.linspace(0, np.pi, n_theta)
    phi = np.linspace(-np.pi, np.pi, 2 * n_theta + 1)
    th, ph = np.meshgrid(theta, phi, indexing="ij")
    pts = radius_mm * np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1)
    f = np.sqrt(2.0 / n_waves) * np.cos(pts @ k.T + phase).sum(-1)
    return tuple(a.astype(np.float32) for a in (f, *np.gradient(f, theta, phi)))


def _on_sphere(tables, u, v, w):
    """A _sphere_field in the directions (u, v, w) (polar axis w): its value and the magnitude of its
    angular gradient (per radian)."""
    f = tables[0]
    n_theta = f.shape[0]
    r = np.sqrt(u * u + v * v + w * w) + 1e-6
    cos_t = np.clip(w / r, -1, 1)
    coords = [(np.arccos(cos_t) * ((n_theta - 1) / np.pi)).ravel(),
              ((np.arctan2(v, u) + np.pi) * ((f.shape[1] - 1) / (2 * np.pi))).ravel()]
    look = [ndimage.map_coordinates(a, coords, order=1, mode="nearest").reshape(u.shape) for a in tables]
    sin_t = np.sqrt(np.maximum(1 - cos_t ** 2, 0.01))
    return look[0], np.sqrt(look[1] ** 2 + (look[2] / sin_t) ** 2)


def _ellipsoid_sd(x, y, s, c, semi):
    """Approximate signed distance (mm, negative inside) to an axis-aligned ellipsoid: (rho - 1) / |grad rho|."""
    u, v, w = (x - c[0]) / semi[0], (y - c[1]) / semi[1], (s - c[2]) / semi[2]
    rho = np.sqrt(u * u + v * v + w * w) + 1e-6
    grad = np.sqrt((u / semi[0]) ** 2 + (v / semi[1]) ** 2 + (w / semi[2]) ** 2) / rho + 1e-6
    return (rho - 1) / grad


class _Head:
    """An MR head: anatomy drawn from `rng` (independent of the grid), painted by paint(). s = 0 near the
    thalamus, positive towards the vertex."""

    L = MR_LABELS

    def __init__(self, rng: np.random.Generator):
        u = rng.uniform
        self.rng = rng
        k = u(0.9, 1.08)
        self.cerebrum = ((0, 5, 12), np.array((68 * u(0.93, 1.05), 86 * u(0.95, 1.05), 72)) * k, 48 * k)
        self.cerebellum = ((0, 52 * k, -36 * k), np.array((52, 33, 24)) * k)
        self.k = k
        self.csf, self.skull, self.scalp = u(1.5, 4.5), u(5.5, 9), u(4, 8)
        self.atrophy = u(0, 1)  # wider sulci, larger ventricles
        self.vk = k * (0.8 + 0.8 * self.atrophy) ** 0.7
        self.gyri = _sphere_field(rng, u(3.5, 4.5), 75 * k)  # sulcal pattern over the brain surface
        self.mid = (u(-3, 3), u(-0.03, 0.03))  # midline offset and yaw
        self.syl = u(-4, 6)
        self.eyes = u(-38, -26)
        self.bias = (u(-0.12, 0.12), u(-0.12, 0.12), u(-0.1, 0.1))
        vk = self.vk
        # ventricles (per side: frontal horn, body, atrium, occipital horn, temporal horn), 3rd, 4th
        self.ventricles = []
        for sg in (-1, 1):
            self.ventricles += [((sg * 12 * vk, -22 * k, 10 * k), (6 * vk, 16 * k, 10 * vk), sg * 0.25),
                                ((sg * 11 * vk, 5 * k, 15 * k), (6 * vk, 26 * k, 10 * vk), 0.0),
                                ((sg * 20 * k, 32 * k, 8 * k), (8 * vk, 12 * k, 10 * vk), -sg * 0.3),
                                ((sg * 18 * k, 48 * k, 6 * k), (3.5 * vk, 14 * k, 5 * vk), -sg * 0.2),
                                ((sg * 32 * k, 8 * k, -14 * k), (3.5 * vk, 16 * k, 4 * vk), sg * 0.35)]
        self.ventricles += [((0, 8 * k, -1 * k), (2.0 * vk, 14 * k, 9 * k), 0.0),
                            ((0, 36 * k, -36 * k), (7 * vk, 4 * vk, 7 * k), 0.0)]
        self.nuclei = []
        for sg in (-1, 1):
            self.nuclei += [("caudate", (sg * 18 * vk, -16 * k, 10 * k), (6 * k, 12 * k, 11 * k), sg * 0.2),
                            ("putamen", (sg * 26 * k, -2 * k, 2 * k), (6 * k, 17 * k, 13 * k), sg * 0.15),
                            ("pallidum", (sg * 19 * k, 0, 0), (4 * k, 10 * k, 8 * k), sg * 0.15),
                            ("thalamus", (sg * 10 * k, 14 * k, 3 * k), (10 * k, 16 * k, 11 * k), -sg * 0.2)]

    def paint(self, g: _Grid, contrast: str):
        ci = {"T1": 0, "T2": 1, "PD": 2}[contrast]
        T = {name: v[ci] for name, v in _MR_TISSUE.items()}
        L, k = self.L, self.k
        x, y, s = g.x, g.y, g.s
        fM, fF, fC, f5 = g.noise(2.0), g.noise(0.8), g.noise(10.0, key=3), g.noise(5.0, key=4)
        tex = lambda name, a=0.03: T[name] * (1 + a * fM + 0.5 * a * fF)  # noqa: E731
        sl = slice(None)
        # face and neck soft tissue below the skull, orbits, sinuses
        cap = np.maximum(s + 25 * k, 0) / (30 * k)  # face and neck: elliptic cylinder, rounded top
        neck = ((x / (62 * k)) ** 2 + ((y + 5 * k) / (84 * k)) ** 2 + cap ** 2) < 1
        g.paint(sl, neck, L["muscle"], np.where(np.exp(-(fC / 0.08) ** 2) > 0.3, T["fat"], tex("muscle")))
        # brain envelope (cerebrum and cerebellum, approximate signed distances) and the layers outside it
        c, semi, low = self.cerebrum
        semi_s = np.where(s > c[2], semi[2], low)
        cer = _ellipsoid_sd(x, y, s, c, (semi[0], semi[1], semi_s)) + 1.5 * fC
        cb = _ellipsoid_sd(x, y, s, *self.cerebellum) + 1.0 * fC
        env = np.minimum(cer, cb)
        t1 = self.csf + self.atrophy  # outer edge of the CSF, then skull, then scalp (mm from the brain)
        t2 = t1 + self.skull
        layers = ((t2 + self.scalp, L["scalp"], np.where(env > t2 + 0.45 * self.scalp, tex("fat"), tex("muscle"))),
                  (t2, L["skull"], np.where((env > t1 + 1.5) & (env < t2 - 1.5) & (fC > -0.5), tex("marrow", 0.15),
                                            T["bone"])),
                  (t1, L["csf"], T["csf"]))
        for depth, label, value in layers:  # (no scalp inside the face and neck)
            g.paint(sl, (env < depth) & (s > -95 * k) & ((label != L["scalp"]) | ~neck), label, value)
        self._face(g, T, tex, fC)
        # cerebral cortex. Sulci are the zero set of a random field over the brain surface (constant along
        # rays from the centre, bent a little); |F| / |grad F| is the distance to the nearest sulcus. Depth
        # is measured from the outer surface and, above the corpus callosum, from the midline (medial cortex).
        u_, v_, w_ = (x - c[0]) / semi[0], (y - c[1]) / semi[1], (s - c[2]) / semi_s
        fold, grad = _on_sphere(self.gyri, u_ + 0.07 * f5, w_ + 0.07 * fC, v_)
        to_sulcus = np.abs(fold) / np.maximum(grad / (75 * k * np.sqrt(u_ * u_ + v_ * v_ + w_ * w_) + 1e-3), 1e-3)
        mx = np.abs(x - (self.mid[0] + self.mid[1] * y))
        # the hemispheres face each other across the midline, except in the core (corpus callosum, diencephalon)
        # and below it; the medial depth grows smoothly into the core
        core = 1 - ((y - 5 * k) / (40 * k)) ** 2 - ((s - 3 * k) / (24 * k)) ** 2
        medial = (s > -8 * k) | (np.abs(y - 5 * k) > 40 * k)
        d = np.where(medial, np.minimum(-cer, mx + 80 * np.clip(core, 0, None)), -cer)
        deep = 16 + 5 * g.noise(20.0, key=5)
        w_s = 0.6 + 0.8 * self.atrophy  # sulcal CSF half-width (mm)
        syl = np.where((np.abs(x) > 34 * k) & (y < 25 * k),  # lateral (Sylvian) fissure: an oblique sheet
                       np.abs(s - (self.syl + 0.5 * y)) + 2 * fC - 0.5 * self.atrophy, np.inf)
        fissure = medial & (core < 0) & (mx < 0.6 + 0.8 * self.atrophy)  # interhemispheric
        sulcus = ((to_sulcus < w_s) & (d < deep)) | fissure | (syl < 0.4)
        grey = ((to_sulcus < w_s + 2.8) & (d < deep + 2.8)) | (d < 3.0) | (syl < 3.4)
        brain = cer < 0
        g.paint(sl, brain, L["wm"], tex("wm", 0.025))
        g.paint(sl, brain & grey, L["gm"], tex("gm"))
        g.paint(sl, brain & sulcus, L["csf"], T["csf"])
        # deep grey nuclei, ventricles
        for name, c, sm, ang in self.nuclei:
            box, rho = g.ellipsoid(c, sm, ang, bump=(fC, 0.04))
            g.paint(box, rho < 1, L["deep_gm"], tex(name)[box])
        for c, sm, ang in self.ventricles:
            box, rho = g.ellipsoid(c, sm, ang, bump=(fC, 0.05))
            g.paint(box, rho < 1, L["ventricle"], T["csf"])
        # cerebellum: folia (thin parallel sheets of cortex and CSF) around a white-matter core
        inner = -cb
        folia = np.sin(2 * np.pi * (0.6 * inner + 0.5 * (s + 0.35 * y) + 2.5 * fC + 1.2 * f5) / 4.5)
        cbm = (cb < 0) & (cer > 1.0)
        g.paint(sl, cbm, L["cerebellum_gm"], tex("gm"))
        g.paint(sl, cbm & (inner > 9 + 3 * fC) & (folia < 0.3), L["wm"], tex("wm"))
        g.paint(sl, cbm & (folia > 0.85) & (inner < 14), L["csf"], T["csf"])
        # brainstem (midbrain, pons, medulla) in front of the cerebellum
        sdf, _ = g.tubes(_path([(0, 10 * k, 4 * k, 12 * k), (0, 18 * k, -30 * k, 14 * k), (0, 26 * k, -90 * k, 10 * k)],
                               0.0))
        g.paint(sl, (sdf < 2.5 + 2 * self.atrophy) & (s < 2 * k) & (cer > -25), L["csf"], T["csf"])  # cisterns
        g.paint(sl, (sdf < 0) & (s < 2 * k), L["brainstem"], tex("brainstem"))
        box, rho = g.ellipsoid(*self.ventricles[-1], bump=(fC, 0.05))
        g.paint(box, rho < 1, L["ventricle"], T["csf"])
        # smooth receive-coil bias field
        bias = 1 + 0.08 * g.noise(60.0, key=6) + (self.bias[0] * x + self.bias[1] * y + self.bias[2] * s) / 100
        head = g.label != L["background"]
        g.value *= (bias / (bias[head].mean() if head.any() else 1.0)).astype(np.float32)

    def _face(self, g, T, tex, fC):
        L, k = self.L, self.k
        for sg in (-1, 1):  # orbits: fat, globe (vitreous), lens
            c = (sg * 32 * k, -70 * k, self.eyes * k)
            box, rho = g.ellipsoid(c, (19 * k, 24 * k, 16 * k), bump=(fC, 0.05))
            g.paint(box, rho < 1, L["scalp"], T["fat"])
            box, rho = g.ellipsoid(c, (12 * k, 12 * k, 12 * k))
            g.paint(box, rho < 1, L["eye"], T["vitreous"])
            box, rho = g.ellipsoid((c[0], c[1] - 9 * k, c[2]), (4.5 * k, 2 * k, 4.5 * k))
            g.paint(box, rho < 1, L["eye"], T["lens"])
        for c, sm in (((0, -45 * k, (self.eyes - 8) * k), (11 * k, 20 * k, 12 * k)),  # ethmoid / sphenoid
                      ((-30 * k, -58 * k, (self.eyes - 32) * k), (14 * k, 17 * k, 17 * k)),  # maxillary
                      ((30 * k, -58 * k, (self.eyes - 32) * k), (14 * k, 17 * k, 17 * k))):
            box, rho = g.ellipsoid(c, sm)
            g.paint(box, rho < 1, L["sinus_air"], 0.0)
            g.paint(box, (rho >= 0.85) & (rho < 1), L["sinus_air"], tex("muscle")[box])


def mr_phantom(shape=(32, 128, 128), seed: int = 0, contrast: str = "T1", pixel_size_mm: float | None = None,
               slice_thickness_mm: float | None = None, *, z_center_mm: float | None = None,
               return_labels: bool = False):
    """A 3D MR brain phantom: magnitude in [0, 1] as a Volume (Z, Y, X); with return_labels its MR_LABELS map.

    contrast: "T1", "T2" or "PD". pixel_size_mm: default 240 mm / max(Y, X); slice_thickness_mm: default
    the pixel size (isotropic). z_center_mm: level of the middle slice, 0 near the thalamus, positive towards
    the vertex (about -70 orbits and cerebellum .. +80 vertex); default drawn from the seed.
    """
    shape = _check_geometry(seed, shape, pixel_size_mm, slice_thickness_mm)
    if contrast not in ("T1", "T2", "PD"):
        raise InputError(f"contrast must be 'T1', 'T2' or 'PD', got {contrast!r}")
    px = float(pixel_size_mm or 240.0 / max(shape[1:]))
    dz = float(slice_thickness_mm or px)
    rng = np.random.default_rng([int(seed), 11])
    head = _Head(rng)
    extent = shape[0] * dz
    lo, hi = -45 + extent / 2, 60 - extent / 2
    zc = float(z_center_mm) if z_center_mm is not None else (rng.uniform(lo, hi) if lo < hi else 5.0)
    g = _Grid(shape, (dz, px, px), zc, 2 * int(seed) + 1,
              rng.uniform(1.5, 3.0), rng.uniform(-0.08, 0.08), 0.0)
    head.paint(g, contrast)
    _psf(g, 0.5)
    vol = _volume(np.clip(g.value, 0.0, 1.0), (dz, px, px),
                  {"modality": "MR", "source": "medrecon synthetic phantom", "seed": int(seed), "contrast": contrast,
                   "units": "normalised magnitude", "z_center_mm": zc})
    return (vol, g.label) if return_labels else vol
