"""The Volume: float32 voxels (Z, Y, X) plus the geometry that places them in the patient.

Conventions
-----------
* ``data[z, y, x]``: Z is the slice axis that the 2D prior sees and TV runs along.
* Geometry is stored the ITK/DICOM way, in **LPS** patient coordinates (mm):
  ``spacing`` and ``origin`` in (x, y, z) order as ITK does, ``direction`` a 3x3 matrix whose
  *columns* are the world directions of the x, y and z voxel axes.
  The world position of voxel (i=x, j=y, k=z) is ``origin + direction @ (spacing * [i, j, k])``.
* NIfTI (nibabel) is **RAS**: ``affine_ras = diag(-1, -1, 1, 1) @ affine_lps`` and the voxel axes of the
  NIfTI array are (i, j, k) = (x, y, z), i.e. the transpose of ``data``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import math

import numpy as np

from .errors import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: the slice planes ``Volume.in_plane`` re-stacks a volume into
PLANES = ("axial", "coronal", "sagittal")


@dataclass
class Volume:
    data: np.ndarray  # float32 (Z, Y, X)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # (x, y, z) mm
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)  # LPS mm, centre of voxel (0,0,0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))  # columns: x, y, z axes in LPS
    meta: dict = field(default_factory=dict)  # source description, DICOM tags for derived series, ...

    def __post_init__(self):
        kind = np.asarray(self.data).dtype
        if not (np.issubdtype(kind, np.integer) or np.issubdtype(kind, np.floating) or kind == bool):
            raise InputError(f"Volume data of type {kind} is not supported: give real values (for a complex image "
                             "its magnitude, numpy.abs; complex MR data as a measurements file)")
        self.data = np.asarray(self.data, dtype=np.float32)
        if self.data.ndim != 3:
            raise ValueError(f"Volume data must be 3D (Z, Y, X), got shape {self.data.shape}"
                             + ("; add a slice axis: data[None]" if self.data.ndim == 2 else ""))
        self.spacing, self.origin = _three("spacing", self.spacing), _three("origin", self.origin)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if not all(s > 0 for s in self.spacing):
            raise ValueError(f"spacing must be positive and finite, got {self.spacing}")
        if not np.isfinite(self.direction).all() or abs(np.linalg.det(self.direction)) < 1e-6:
            raise ValueError(f"direction must be an invertible 3x3 matrix of finite values (its columns the x, y, "
                             f"z axes in LPS), got {self.direction.tolist()}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def affine_lps(self) -> np.ndarray:
        """4x4 map from voxel index (x, y, z, 1) to LPS mm."""
        a = np.eye(4)
        a[:3, :3] = self.direction @ np.diag(self.spacing)
        a[:3, 3] = self.origin
        return a

    @property
    def affine_ras(self) -> np.ndarray:
        """4x4 map from voxel index (x, y, z, 1) to RAS mm (the NIfTI affine)."""
        return LPS_TO_RAS @ self.affine_lps

    @classmethod
    def from_affine_ras(cls, data: np.ndarray, affine_ras: np.ndarray, meta: dict | None = None) -> "Volume":
        """Build from (Z, Y, X) data and a NIfTI (RAS) affine over (x, y, z) voxel indices."""
        lps = LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)
        m = lps[:3, :3]
        spacing = np.linalg.norm(m, axis=0)
        return cls(data, tuple(spacing), tuple(lps[:3, 3]), m / spacing, dict(meta or {}))

    @property
    def orientation(self) -> str:
        """Patient directions the x, y, z voxel axes point to (dominant LPS component), e.g. 'LPS' for
        axial DICOM slices, 'RAS' for a NIfTI stored in RAS order (the same letters as nibabel's
        aff2axcodes)."""
        world, sign = self._nearest_axes()
        return "".join(("LPS" if s > 0 else "RAI")[a] for a, s in zip(world, sign))

    def _nearest_axes(self) -> tuple[list[int], list[int]]:
        """For each voxel axis x, y, z: the LPS patient axis (0, 1, 2) it is assigned to and the sign (+1 towards
        L, P, S), each patient axis used once (nibabel's io_orientation: a double oblique's x and z may both lie
        nearest to L, one of them then takes the next nearest)."""
        from nibabel.orientations import io_orientation
        ornt = io_orientation(self.affine_lps)  # its world axes are LPS: +1 points to L, P or S
        return [int(a) for a in ornt[:, 0]], [int(f) for f in ornt[:, 1]]

    @property
    def is_oblique(self) -> bool:
        """True when a voxel axis is not aligned with a patient axis (to 1e-6)."""
        return bool(np.abs(np.abs(self.direction).max(axis=0) - 1).max() > 1e-6)

    def world_lps(self, index_xyz) -> np.ndarray:
        """LPS position (mm) of voxel centres given as (..., 3) (x, y, z) indices."""
        idx = np.asarray(index_xyz, dtype=np.float64)
        return idx @ (self.direction @ np.diag(self.spacing)).T + np.asarray(self.origin)

    def nearest_lps(self) -> "Volume":
        """The same voxels with the array axes permuted and flipped so that x, y, z run along (the patient axes
        nearest to) left, posterior, superior: how the previews show a volume, whatever order it is stored in (a
        RAS NIfTI, an LAS one; a double oblique by ``orientation``'s assignment). Itself when already so."""
        world, sign = self._nearest_axes()
        axis_of = [world.index(w) for w in range(3)]  # the voxel axis along L, P, S
        flip = [sign[axis_of[w]] < 0 for w in range(3)]
        if axis_of == [0, 1, 2] and not any(flip):
            return self
        data = np.transpose(self.data, [2 - axis_of[w] for w in (2, 1, 0)])  # array axes (z, y, x) = (S, P, L)
        data = data[tuple(slice(None, None, -1) if flip[w] else slice(None) for w in (2, 1, 0))]
        corner = [0.0] * 3
        for w in range(3):
            corner[axis_of[w]] = self.shape[2 - axis_of[w]] - 1.0 if flip[w] else 0.0
        direction = np.stack([self.direction[:, axis_of[w]] * (-1 if flip[w] else 1) for w in range(3)], axis=1)
        return replace(self, data=np.ascontiguousarray(data), spacing=tuple(self.spacing[a] for a in axis_of),
                       origin=tuple(self.world_lps(corner)), direction=direction, meta=dict(self.meta))

    def in_plane(self, plane: str) -> "Volume":
        """The same voxels re-stacked so that the slices (along z) are ``plane``'s: 'axial' is ``nearest_lps``;
        'coronal' slices run towards posterior, 'sagittal' towards left, both with rows from superior down
        (images head up, as radiology shows them; x towards left, resp. posterior). No interpolation. A plane
        warning kept in ``meta['warnings']`` becomes the new plane's (none for axial)."""
        if plane not in PLANES:
            raise ValueError(f"plane must be one of {', '.join(PLANES)}, got {plane!r}")
        v = self.nearest_lps()
        if plane != "axial":
            order = {"coronal": (1, 0, 2), "sagittal": (2, 0, 1)}[plane]  # array axes (z, y, x) of the new volume
            xyz = [2 - a for a in reversed(order)]  # the old voxel axis (x 0, y 1, z 2) that becomes new x, y, z
            data = np.ascontiguousarray(np.transpose(v.data, order)[:, ::-1, :])  # rows from superior down
            corner = [0.0, 0.0, v.shape[0] - 1.0]  # new voxel (0, 0, 0): the old top slice
            direction = np.stack([v.direction[:, xyz[0]], -v.direction[:, 2], v.direction[:, xyz[2]]], axis=1)
            v = replace(v, data=data, spacing=tuple(v.spacing[a] for a in xyz),
                        origin=tuple(v.world_lps(corner)), direction=direction)
        meta = dict(self.meta)
        meta["stored_plane"] = self.meta.get("stored_plane", self.slice_plane)  # its warning names a re-stack
        stale, v = self.plane_warning(), replace(v, meta=meta)  # the old warning resolved once
        warnings = [w for w in meta.get("warnings", []) if w != stale] + [v.plane_warning()]
        if any(warnings) or "warnings" in meta:
            meta["warnings"] = [w for w in warnings if w]
        return v

    @property
    def slice_plane(self) -> str:
        """The plane of the slices (along z) by the nearest patient axis: 'axial', 'coronal' or 'sagittal'."""
        axis = self.orientation[2]
        return "axial" if axis in "SI" else "sagittal" if axis in "LR" else "coronal"

    def plane_warning(self) -> str | None:
        """What to tell a user whose slices (along z) are not axial, or None: the 2D priors work slice by slice and
        z-TV runs along z, so a sagittal or coronal volume is reconstructed in those planes."""
        plane = self.slice_plane
        if plane == "axial":
            return None
        source = self.meta.get("source", "the input")
        if self.meta.get("stored_plane", plane) != plane:  # e.g. a sagittal file given --plane coronal
            source = f"{source} re-stacked as {plane} slices"
        return (f"{source}: its slices are {plane} (voxel axes {self.orientation}); "
                f"medrecon reconstructs slice by slice along the third axis, so the prior sees {plane} slices and "
                "z-TV runs across them, while the bundled priors were trained on axial slices: re-stack a 3D "
                "acquisition as axial slices first (`medrecon convert IN OUT --plane axial`; a 2D series has too "
                "few slices for that) unless the prior was trained on this plane (`medrecon train --planes all`); "
                "scores named axial are then this plane's")

    def with_data(self, data: np.ndarray, **meta_updates) -> "Volume":
        """Same geometry, new voxels (e.g. a reconstruction of this volume)."""
        data = np.asarray(data, dtype=np.float32)
        if data.shape != self.data.shape:
            raise ValueError(f"new data shape {data.shape} differs from the volume's {self.data.shape}")
        return replace(self, data=data, meta={**self.meta, **meta_updates})

    def slab(self, start: int, stop: int) -> "Volume":
        """Slices start..stop-1 (along z), placed where they were in space."""
        if not 0 <= start < stop <= self.shape[0]:
            raise ValueError(f"slab {start}:{stop} is outside the volume's {self.shape[0]} slices")
        origin = tuple(self.world_lps([0.0, 0.0, float(start)]))
        return replace(self, data=self.data[start:stop].copy(), origin=origin, meta=dict(self.meta))

    def crop(self, rows: tuple[int, int], cols: tuple[int, int]) -> "Volume":
        """In-plane rows[0]..rows[1]-1 and cols[0]..cols[1]-1 of every slice, placed where they were in space."""
        (r0, r1), (c0, c1) = rows, cols
        if not (0 <= r0 < r1 <= self.shape[1] and 0 <= c0 < c1 <= self.shape[2]):
            raise ValueError(f"crop rows {rows}, cols {cols} is outside the volume's {self.shape[1:]} slices")
        origin = tuple(self.world_lps([float(c0), float(r0), 0.0]))
        return replace(self, data=self.data[:, r0:r1, c0:c1].copy(), origin=origin, meta=dict(self.meta))

    def central_slab(self, n: int) -> "Volume":
        """The n central slices (all of them when the volume has fewer)."""
        n = min(n, self.shape[0])
        start = (self.shape[0] - n) // 2
        return self.slab(start, start + n)

    def central_window(self, fov_mm: float) -> "Volume":
        """The central in-plane window of ``fov_mm`` x ``fov_mm`` (a side shorter than that stays whole), placed
        where it was: a field of view that cuts through the body, as a targeted reconstruction's does."""
        (h, w), (sx, sy) = self.shape[1:], self.spacing[:2]
        nh, nw = min(h, max(1, round(fov_mm / sy))), min(w, max(1, round(fov_mm / sx)))
        i0, j0 = (h - nh) // 2, (w - nw) // 2
        origin = tuple(self.world_lps([float(j0), float(i0), 0.0]))
        return replace(self, data=self.data[:, i0:i0 + nh, j0:j0 + nw].copy(), origin=origin, meta=dict(self.meta))

    def describe(self) -> dict:
        finite = self.data[np.isfinite(self.data)]
        return {
            "shape": list(self.shape),
            # six decimals from 1 mm, six significant digits under it (a 1e-9 spacing was rounded to 0)
            "spacing": [round(s, 6) if abs(s) >= 1 else float(f"{s:.6g}") for s in self.spacing_zyx],
            "origin_lps": [round(o, 4) for o in self.origin],
            "direction": np.round(self.direction, 6).tolist(),
            "range": [float(finite.min()), float(finite.max())] if finite.size else [None, None],
        }


def _three(name: str, values) -> tuple[float, float, float]:
    """Three finite numbers in (x, y, z) order, or a ValueError naming ``name``."""
    out = tuple(float(v) for v in np.ravel(values))
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be three finite numbers in (x, y, z) order, got {np.ravel(values).tolist()}")
    return out
