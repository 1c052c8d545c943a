"""CT geometry value objects (frozen dataclasses) and their (de)serialisation.

Conventions (all lengths in mm, all angles in degrees in the geometry objects):

* A slice is an (n, n) image of ``pixel_size_mm`` square pixels centred on the rotation axis. Pixel
  (row r, column c) sits at x = (c - (n-1)/2) * pixel, y = ((n-1)/2 - r) * pixel (ASTRA's convention:
  row 0 is the top, y points up).
* A sinogram is (n_angles, n_det); detector bin i is centred at (i - (n_det-1)/2) * det_spacing on the
  detector line. ASTRA's angle convention (``create_proj_geom``) is kept unchanged.
* A volume is (Z, Y, X); slice-wise geometries apply the same 2D geometry to every axial slice.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import astra
import numpy as np

from medrecon.errors import InputError


class _Geometry:
    """Shared behaviour of the geometry dataclasses: angle lists, (de)serialisation."""

    type: ClassVar[str]
    full_scan_deg: ClassVar[float]

    @classmethod
    def sparse_view(cls, size, n_views: int, **kw):
        """``n_views`` angles uniform over a full scan (180° parallel, 360° fan/cone), endpoint excluded."""
        if n_views < 1:
            raise InputError(f"n_views must be >= 1, got {n_views}")
        return cls(size, tuple(np.linspace(0.0, cls.full_scan_deg, n_views, endpoint=False)), **kw)

    @classmethod
    def limited_angle(cls, size, wedge_deg: float, n_views: int | None = None, **kw):
        """A wedge [0, wedge_deg): one view per degree by default (0, 1, ..., W-1, as the reference)."""
        if not 0 < wedge_deg <= cls.full_scan_deg:
            raise InputError(f"wedge_deg must be in (0, {cls.full_scan_deg}], got {wedge_deg}")
        if n_views is None:
            angles = np.arange(0.0, wedge_deg, 1.0)
        else:
            angles = np.linspace(0.0, wedge_deg, int(n_views), endpoint=False)
        return cls(size, tuple(angles), **kw)

    def _set(self, name, value):
        object.__setattr__(self, name, value)

    def _normalise_angles(self):
        angles = tuple(float(a) for a in np.atleast_1d(np.asarray(self.angles_deg, dtype=np.float64)))
        if not angles or not all(math.isfinite(a) for a in angles):
            raise InputError(f"{type(self).__name__}: angles_deg must be a non-empty list of finite numbers")
        self._set("angles_deg", angles)

    @property
    def n_angles(self) -> int:
        return len(self.angles_deg)

    @property
    def angles_rad(self) -> np.ndarray:
        return np.deg2rad(np.asarray(self.angles_deg, dtype=np.float64))

    @property
    def view_weights_rad(self) -> np.ndarray:
        """Each view's share of the angular quadrature (radians): half the gaps to its neighbours among the views'
        directions, the angles taken modulo a full scan (180° parallel, 360° fan/cone) and in any order. The gap of
        a missing wedge (over twice any other gap) counts as the mean of the others, so the views at its edges
        weigh a step like the rest. A uniform scan or wedge: its step per view; a parallel scan over 360°: half
        its step per view, as every direction is measured twice; one view: a full scan."""
        period = math.radians(self.full_scan_deg)
        if self.n_angles == 1:
            return np.array([period])
        order, gaps = self._gaps_in_angle_order()
        k = int(np.argmax(gaps))
        others = np.delete(gaps, k)
        others = others[others > 0]  # repeated views of one direction share its step
        if not others.size:  # every view along one direction
            return np.full(len(gaps), period / len(gaps))
        if gaps[k] > 2 * others.max():  # a missing wedge
            gaps[k] = others.mean()
        weights = np.empty_like(gaps)
        weights[order] = (gaps + np.roll(gaps, 1)) / 2
        return weights

    @property
    def arc_start_rad(self) -> float:
        """Where the scanned arc begins: the first view after the widest gap between views (the missing wedge)."""
        order, gaps = self._gaps_in_angle_order()
        first = order[(int(np.argmax(gaps)) + 1) % len(order)]
        return float(np.mod(self.angles_rad[first], math.radians(self.full_scan_deg)))

    def _gaps_in_angle_order(self) -> tuple[np.ndarray, np.ndarray]:
        """(order, gaps): the views sorted by direction (angles modulo a full scan; stable), and the gap after each
        of them in that order, round the circle."""
        period = math.radians(self.full_scan_deg)
        a = np.mod(self.angles_rad, period)
        order = np.argsort(a, kind="stable")
        return order, np.diff(np.append(a[order], a[order][0] + period))

    def __repr__(self):
        a = self.angles_deg
        angles = f"{len(a)} angles {a[0]:g}..{a[-1]:g}°" if len(a) > 3 else f"angles_deg={a}"
        rest = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                         if f.name != "angles_deg")
        return f"{type(self).__name__}({angles}, {rest})"

    def to_dict(self) -> dict:
        d = {"type": self.type}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d

    @classmethod
    def from_dict(cls, d: dict):
        d = dict(d)
        kind = d.pop("type", cls.type)
        if kind != cls.type:
            raise InputError(f"geometry type {kind!r} cannot be read as {cls.__name__} ({cls.type!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"unknown {cls.type} geometry keys {sorted(unknown)}; expected {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class _SliceGeometry(_Geometry):
    """A 2D geometry applied to every axial slice: (n, n) images, (n_angles, n_det) sinograms."""

    @property
    def image_shape(self):
        return (self.image_size, self.image_size)

    @property
    def sino_shape(self):
        return (self.n_angles, self.n_det)

    def _astra_vol(self):
        h = self.image_size * self.pixel_size_mm / 2.0
        return astra.create_vol_geom(self.image_size, self.image_size, -h, h, -h, h)


def _fan_det_count(width_mm: float, so: float, od: float, ds: float) -> int:
    """Detector bins needed to see the circle circumscribing a square of side ``width_mm`` (flat detector)."""
    r = width_mm / math.sqrt(2.0)
    if r >= so:
        raise InputError(f"source_origin_mm={so} must exceed the field-of-view radius {r:.1f} mm")
    half = (so + od) * math.tan(math.asin(r / so))
    return int(math.ceil(2.0 * half / ds))


def _bins_around(image_size: int, pixel_size_mm: float, det_spacing_mm: float) -> int:
    """Parallel-beam bins that see the circle around the square image (its diagonal)."""
    return int(math.ceil(math.sqrt(2.0) * image_size * pixel_size_mm / det_spacing_mm - 1e-9))


def parallel_det_count(image_size: int, pixel_size_mm: float, det_spacing_mm: float) -> int:
    """Default bins of a centred parallel-beam detector: enough to see the whole square (√2 times its width);
    when the bins are as wide as the pixels, one more where needed to give the count the image size's parity,
    so that at 0° and 90° every bin is centred on a pixel row (column). Half a pixel off, each bin would straddle
    two rows and those views could not see a pattern alternating from row to row: a null space of the geometry,
    not of sparse-view CT, that leaves ringing along straight edges (a body cut by the field of view)."""
    n = _bins_around(image_size, pixel_size_mm, det_spacing_mm)
    if math.isclose(det_spacing_mm, pixel_size_mm, rel_tol=1e-9) and (n - image_size) % 2:
        n += 1
    return n


@dataclass(frozen=True, repr=False)
class ParallelBeamGeometry(_SliceGeometry):
    """Parallel beam, every axial slice alike. ``n_det`` defaults to :func:`parallel_det_count`."""

    image_size: int
    angles_deg: tuple
    n_det: int | None = None
    pixel_size_mm: float = 1.0
    det_spacing_mm: float = 1.0
    type: ClassVar[str] = "parallel"
    full_scan_deg: ClassVar[float] = 180.0

    def __post_init__(self):
        _check_common(self, self.image_size, self.pixel_size_mm, self.det_spacing_mm)
        if self.n_det is None:
            self._set("n_det", parallel_det_count(self.image_size, self.pixel_size_mm, self.det_spacing_mm))
        _set_count(self, "n_det")

    @property
    def bins_to_cover(self) -> int:
        """Detector bins that see the whole square image in every view (the circle around it)."""
        return _bins_around(self.image_size, self.pixel_size_mm, self.det_spacing_mm)

    def astra_geometries(self):
        proj = astra.create_proj_geom("parallel", self.det_spacing_mm, self.n_det, self.angles_rad)
        return self._astra_vol(), proj


@dataclass(frozen=True, repr=False)
class FanBeamGeometry(_SliceGeometry):
    """Fan beam with a flat detector, every axial slice alike.

    Defaults: source at 2× the image width from the rotation axis, detector at 1× the width beyond it,
    and enough bins to see the circle around the square image.
    """

    image_size: int
    angles_deg: tuple
    n_det: int | None = None
    source_origin_mm: float | None = None
    origin_det_mm: float | None = None
    pixel_size_mm: float = 1.0
    det_spacing_mm: float = 1.0
    type: ClassVar[str] = "fan"
    full_scan_deg: ClassVar[float] = 360.0

    def __post_init__(self):
        _check_common(self, self.image_size, self.pixel_size_mm, self.det_spacing_mm)
        w = self.image_size * self.pixel_size_mm
        self._set("source_origin_mm", float(self.source_origin_mm if self.source_origin_mm is not None else 2 * w))
        self._set("origin_det_mm", float(self.origin_det_mm if self.origin_det_mm is not None else w))
        if self.origin_det_mm < 0:
            raise InputError(f"origin_det_mm must be >= 0, got {self.origin_det_mm}")
        bins = _fan_det_count(w, self.source_origin_mm, self.origin_det_mm, self.det_spacing_mm)  # validates too
        if self.n_det is None:
            self._set("n_det", bins)
        _set_count(self, "n_det")

    @property
    def bins_to_cover(self) -> int:
        """Detector bins that see the whole square image in every view (the circle around it)."""
        return _fan_det_count(self.image_size * self.pixel_size_mm, self.source_origin_mm, self.origin_det_mm,
                              self.det_spacing_mm)

    def astra_geometries(self):
        proj = astra.create_proj_geom("fanflat", self.det_spacing_mm, self.n_det, self.angles_rad,
                                      self.source_origin_mm, self.origin_det_mm)
        return self._astra_vol(), proj


@dataclass(frozen=True, repr=False)
class ConeBeamGeometry(_Geometry):
    """Circular cone beam with a flat detector for a (Z, Y, X) volume of cubic voxels.

    Projections are stored as ASTRA does: (det_rows, n_angles, det_cols). Defaults as for fan beam, with
    enough detector rows and columns to see the whole (magnified) volume.
    """

    volume_shape: tuple
    angles_deg: tuple
    det_rows: int | None = None
    det_cols: int | None = None
    source_origin_mm: float | None = None
    origin_det_mm: float | None = None
    voxel_size_mm: float = 1.0
    det_spacing_mm: float = 1.0
    type: ClassVar[str] = "cone"
    full_scan_deg: ClassVar[float] = 360.0

    def __post_init__(self):
        shape = tuple(int(s) for s in self.volume_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(f"ConeBeamGeometry: volume_shape must be (Z, Y, X), got {self.volume_shape}")
        self._set("volume_shape", shape)
        _check_common(self, shape[1], self.voxel_size_mm, self.det_spacing_mm)
        z, y, x = shape
        w = max(x, y) * self.voxel_size_mm
        self._set("source_origin_mm", float(self.source_origin_mm if self.source_origin_mm is not None else 2 * w))
        self._set("origin_det_mm", float(self.origin_det_mm if self.origin_det_mm is not None else w))
        cols = _fan_det_count(w, self.source_origin_mm, self.origin_det_mm, self.det_spacing_mm)  # validates too
        mag = (self.source_origin_mm + self.origin_det_mm) / (self.source_origin_mm - w / math.sqrt(2.0))
        if self.det_cols is None:
            self._set("det_cols", cols)
        if self.det_rows is None:
            self._set("det_rows", int(math.ceil(z * self.voxel_size_mm * mag / self.det_spacing_mm)))
        _set_count(self, "det_rows")
        _set_count(self, "det_cols")

    def astra_geometries(self):
        z, y, x = self.volume_shape
        v = self.voxel_size_mm
        vol = astra.create_vol_geom(y, x, z, -x * v / 2, x * v / 2, -y * v / 2, y * v / 2, -z * v / 2, z * v / 2)
        proj = astra.create_proj_geom("cone", self.det_spacing_mm, self.det_spacing_mm, self.det_rows,
                                      self.det_cols, self.angles_rad, self.source_origin_mm, self.origin_det_mm)
        return vol, proj

    @property
    def proj_shape(self):
        return (self.det_rows, self.n_angles, self.det_cols)


def _positive_int(geom, what: str, value) -> int:
    """``value`` as a positive int, or a one-line error naming ``what``."""
    if int(value) != value or value < 1:
        raise InputError(f"{type(geom).__name__}: {what} must be a positive integer, got {value}")
    return int(value)


def _set_count(geom, name: str) -> None:
    geom._set(name, _positive_int(geom, name, getattr(geom, name)))


def _check_common(geom, n, pixel, det):
    n = _positive_int(geom, "image size", n)
    if not (pixel > 0 and det > 0):
        raise InputError(f"{type(geom).__name__}: pixel and detector spacing must be > 0 mm, got {pixel}, {det}")
    if hasattr(geom, "image_size"):
        geom._set("image_size", int(n))
    geom._normalise_angles()


GEOMETRIES = {g.type: g for g in (ParallelBeamGeometry, FanBeamGeometry, ConeBeamGeometry)}


def geometry_from_dict(d: dict):
    """Rebuild any geometry saved with ``to_dict()`` (dispatch on its ``type`` key)."""
    try:
        cls = GEOMETRIES[d["type"]]
    except KeyError:
        raise InputError(f"geometry needs a 'type' key, one of {sorted(GEOMETRIES)}; got {d.get('type')!r}") from None
    return cls.from_dict(d)
