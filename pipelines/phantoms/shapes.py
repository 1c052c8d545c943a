"""Geometric primitives shared by the phantoms, in anatomical mm (x left, y posterior, s superior).

Ellipsoids and superellipses (elliptic cylinders whose parameters may vary with s), a smooth step, and tube
segments (N, 9) along smooth curves or branching trees, which Grid.tubes() turns into signed distances.
"""
from __future__ import annotations

import numpy as np


def ellipsoid_radius(x, y, s, c, semi, angle=0.0, tilt=(0.0, 0.0)):
    """Normalised radius of an ellipsoid (< 1 inside), rotated by `angle` in the axial plane, its centre
    drifting by `tilt` = (dx/ds, dy/ds)."""
    u, v = x - (c[0] + tilt[0] * (s - c[2])), y - (c[1] + tilt[1] * (s - c[2]))
    if angle:
        u, v = np.cos(angle) * u + np.sin(angle) * v, -np.sin(angle) * u + np.cos(angle) * v
    return np.sqrt((u / semi[0]) ** 2 + (v / semi[1]) ** 2 + ((s - c[2]) / semi[2]) ** 2)


def superellipse(x, y, cx, cy, a, b, p=2.0):
    """(|x - cx| / a)^p + (|y - cy| / b)^p: elliptic cylinders whose parameters may vary with s."""
    if p == 2.0:
        return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2
    return np.abs((x - cx) / a) ** p + np.abs((y - cy) / b) ** p


def smoothstep(s, lo, width):
    return 1.0 / (1.0 + np.exp(-(s - lo) / width))


def polyline_path(points, value, n=6) -> np.ndarray:
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


def grow_branches(rng, roots, directions, length, radius, r_min, accept, targets=None, near=0.0, max_depth=24):
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

