"""CT: geometry value objects, slice-wise projectors (ASTRA system matrix as torch CSR), cone beam, FBP/FDK.

Conventions (all lengths in mm, all angles in degrees in the geometry objects):

* A slice is an (n, n) image of ``pixel_size_mm`` square pixels centred on the rotation axis. Pixel
  (row r, column c) sits at x = (c - (n-1)/2) * pixel, y = ((n-1)/2 - r) * pixel (ASTRA's convention:
  row 0 is the top, y points up).
* A sinogram is (n_angles, n_det); detector bin i is centred at (i - (n_det-1)/2) * det_spacing on the
  detector line. ASTRA's angle convention (``create_proj_geom``) is kept unchanged.
* Projections are line integrals in mm: a uniform object of value mu (per mm) gives mu * chord length.
  FBP returns values in the same units as the image (value 1 in, value 1 out).
* A volume is (Z, Y, X); slice-wise geometries apply the same 2D geometry to every axial slice.

The ASTRA pip wheel is built with CUDA and dies with SIGFPE (not an exception) on any 3D or CUDA call
when no GPU is present: everything 3D here is behind ``astra.use_cuda()``.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import ClassVar

import astra
import numpy as np
import torch

from medrecon.errors import InputError, MedreconError
from medrecon.linop import LinearOperator

FILTERS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")


# ---------------------------------------------------------------------------------------------------------
# geometries
# ---------------------------------------------------------------------------------------------------------
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
    def angular_step_rad(self) -> float:
        """Δθ of the quadrature over the acquired angles: (max - min) / (N - 1); a full scan for N = 1."""
        a = self.angles_rad
        return float(np.ptp(a) / (len(a) - 1)) if len(a) > 1 else math.radians(self.full_scan_deg)

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


@dataclass(frozen=True, repr=False)
class ParallelBeamGeometry(_SliceGeometry):
    """Parallel beam, every axial slice alike. ``n_det`` defaults to ceil(√2·n·pixel/det_spacing)."""

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
            w = self.image_size * self.pixel_size_mm
            self._set("n_det", int(math.ceil(math.sqrt(2.0) * w / self.det_spacing_mm - 1e-9)))
        self._set("n_det", int(self.n_det))

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
        if self.n_det is None:
            self._set("n_det", _fan_det_count(w, self.source_origin_mm, self.origin_det_mm, self.det_spacing_mm))
        else:
            _fan_det_count(w, self.source_origin_mm, self.origin_det_mm, self.det_spacing_mm)  # validates
        self._set("n_det", int(self.n_det))

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
        mag = (self.source_origin_mm + self.origin_det_mm) / (self.source_origin_mm - w / math.sqrt(2.0))
        if self.det_cols is None:
            self._set("det_cols", _fan_det_count(w, self.source_origin_mm, self.origin_det_mm, self.det_spacing_mm))
        if self.det_rows is None:
            self._set("det_rows", int(math.ceil(z * self.voxel_size_mm * mag / self.det_spacing_mm)))
        self._set("det_rows", int(self.det_rows))
        self._set("det_cols", int(self.det_cols))

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


def _check_common(geom, n, pixel, det):
    if int(n) != n or n < 1:
        raise InputError(f"{type(geom).__name__}: image size must be a positive integer, got {n}")
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


# ---------------------------------------------------------------------------------------------------------
# slice-wise projector: ASTRA's CPU system matrix as torch CSR
# ---------------------------------------------------------------------------------------------------------
DEFAULT_PROJECTOR = {"parallel": "linear", "fan": "line_fanflat"}
_PROJECTORS = {"parallel": ("line", "linear", "strip"), "fan": ("line_fanflat", "strip_fanflat")}


def _csr(m) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int32)),
                                       torch.from_numpy(m.indices.astype(np.int32)),
                                       torch.from_numpy(m.data.astype(np.float32)), size=m.shape,
                                       check_invariants=False)


def _z_order(n: int) -> np.ndarray:
    """Pixel indices of an n x n image in Morton (Z-curve) order: neighbours in the image stay near in memory."""
    r, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    code = np.zeros((n, n), np.int64)
    for bit in range(max(n - 1, 1).bit_length()):
        code |= ((c >> bit) & 1) << (2 * bit) | ((r >> bit) & 1) << (2 * bit + 1)
    return np.argsort(code.ravel(), kind="stable")


class SystemMatrix:
    """ASTRA's system matrix of one 2D geometry: a torch CSR matrix and an explicit transposed copy.

    Rows are (angle, detector) pairs; weights are ASTRA's float32 values in mm. The columns (pixels) are
    stored in Z-curve order, so the rows of the dense operand that a ray or a pixel touches lie close
    together in memory (about 1.3x faster on CPU); ``apply`` gathers and scatters accordingly. Copies for
    other devices and dtypes are made on first use and kept.
    """

    #: slices per sparse-dense product on CPU: 16 float32 values are one cache line per pixel or ray, and
    #: a 16-slice block of the dense operand stays in cache (about 3x faster than 64 at once for 256²).
    CPU_CHUNK = 16

    def __init__(self, geometry, projector: str):
        vol, proj = geometry.astra_geometries()
        pid = astra.create_projector(projector, proj, vol)
        try:
            mid = astra.projector.matrix(pid)
            try:
                w = astra.matrix.get(mid).tocsr().astype(np.float32)
            finally:
                astra.matrix.delete(mid)
        finally:
            astra.projector.delete(pid)
        order = _z_order(geometry.image_size)
        w = w[:, order].tocsr()
        w.sort_indices()
        wt = w.T.tocsr()
        wt.sort_indices()
        self.shape = w.shape
        self.nnz = int(w.nnz)
        perm = torch.from_numpy(order)
        self._copies = {(torch.device("cpu"), torch.float32): (_csr(w), _csr(wt), perm, torch.argsort(perm))}

    @property
    def nbytes(self) -> int:
        """Memory of the float32 CPU pair (values, int32 indices and row pointers, both copies)."""
        return 2 * (8 * self.nnz) + 4 * (self.shape[0] + self.shape[1] + 2)

    def _get(self, device: torch.device, dtype: torch.dtype):
        key = (torch.device(device), dtype)
        if key not in self._copies:
            a, at, perm, inv = self._copies[(torch.device("cpu"), torch.float32)]
            self._copies[key] = (a.to(device=key[0], dtype=dtype), at.to(device=key[0], dtype=dtype),
                                 perm.to(key[0]), inv.to(key[0]))
        return self._copies[key]

    def apply(self, flat: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """W @ each row of ``flat`` (B, n_pixels) -> (B, n_rays); W^T for ``transpose`` (B, n_rays) -> (B, n_pixels)."""
        a, at, perm, inv = self._get(flat.device, flat.dtype)
        mat = at if transpose else a
        chunk = self.CPU_CHUNK if flat.device.type == "cpu" else flat.shape[0]
        out = torch.empty(flat.shape[0], mat.shape[0], dtype=flat.dtype, device=flat.device)
        for c0 in range(0, flat.shape[0], chunk):
            cols = flat[c0:c0 + chunk].T  # (n_in, chunk) view
            if transpose:  # back from Z-curve to row-major pixels, straight into the output rows
                torch.index_select((mat @ cols.contiguous()).T, 1, inv, out=out[c0:c0 + chunk])
            else:
                out[c0:c0 + chunk] = (mat @ cols[perm]).T
        return out


_MATRICES: dict = {}


def system_matrix(geometry, projector: str | None = None) -> SystemMatrix:
    """The cached system matrix of a 2D geometry (built once per geometry and projector type)."""
    projector = projector or DEFAULT_PROJECTOR[geometry.type]
    if projector not in _PROJECTORS.get(geometry.type, ()):
        raise InputError(f"projector {projector!r} does not fit a {geometry.type} geometry; "
                         f"use one of {_PROJECTORS.get(geometry.type)}")
    key = (geometry, projector)
    if key not in _MATRICES:
        _MATRICES[key] = SystemMatrix(geometry, projector)
    return _MATRICES[key]


def clear_matrix_cache():
    _MATRICES.clear()


class SliceProjector(LinearOperator):
    """Slice-wise parallel- or fan-beam projector: (..., n, n) images -> (..., n_angles, n_det) sinograms.

    Every leading dimension is a batch of slices, projected together by sparse-dense products on the
    device and in the dtype (float32/float64) of the data: one product on CUDA, blocks of
    ``SystemMatrix.CPU_CHUNK`` slices on CPU. The adjoint uses the explicitly transposed matrix, so it is
    exact.
    """

    def __init__(self, geometry, projector: str | None = None):
        if geometry.type not in ("parallel", "fan"):
            raise InputError(f"SliceProjector needs a parallel or fan geometry, got {type(geometry).__name__}")
        super().__init__(geometry.image_shape, geometry.sino_shape)
        self.geometry = geometry
        self.matrix = system_matrix(geometry, projector)

    def _apply(self, t: torch.Tensor, transpose: bool, out_shape: tuple) -> torch.Tensor:
        if t.is_complex():
            raise TypeError("SliceProjector works on real tensors")
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        n_in = len(self.out_shape if transpose else self.in_shape)
        batch = t.shape[: t.ndim - n_in]
        flat = t.reshape(-1, math.prod(t.shape[t.ndim - n_in:]))
        return self.matrix.apply(flat, transpose).reshape(*batch, *out_shape)

    def _forward(self, x):
        return self._apply(x, False, self.out_shape)

    def _adjoint(self, y):
        return self._apply(y, True, self.in_shape)


# ---------------------------------------------------------------------------------------------------------
# FBP
# ---------------------------------------------------------------------------------------------------------
def _check_filter(name: str) -> str:
    if name not in FILTERS:
        raise InputError(f"unknown FBP filter {name!r}; choose one of {FILTERS}")
    return name


def fbp(sinogram, geometry, filter: str = "ram-lak") -> torch.Tensor:
    """Filtered backprojection of (..., n_angles, n_det) sinograms into (..., n, n) images.

    Parallel beam: ASTRA's CPU 'FBP' slice by slice. Fan beam: ASTRA's CPU build has no fan FBP, so a
    weighted filtered backprojection for flat detectors (Kak & Slaney, ch. 3) runs in torch on the data's
    device. The angular quadrature uses the acquired angles' own step Δθ = (max - min)/(N - 1), so full
    scans reconstruct a uniform object to its value; short or limited-angle fan scans get no redundancy
    (Parker) weights. ``filter`` is one of FILTERS. Returns a tensor on the sinogram's device, in its
    float dtype.
    """
    _check_filter(filter)
    s = torch.as_tensor(sinogram)
    if not s.is_floating_point():
        s = s.to(torch.float32)
    if geometry.type not in ("parallel", "fan"):
        raise InputError("fbp handles parallel and fan geometries; use fdk for cone beam")
    if tuple(s.shape[-2:]) != geometry.sino_shape:
        raise InputError(f"fbp: sinogram must end in shape {geometry.sino_shape}, got {tuple(s.shape)}")
    if geometry.type == "parallel":
        return _parallel_fbp(s, geometry, filter)
    return _fan_fbp(s, geometry, filter)


def _parallel_fbp(s: torch.Tensor, g: ParallelBeamGeometry, filt: str) -> torch.Tensor:
    vol, proj = g.astra_geometries()
    flat = s.detach().reshape(-1, *g.sino_shape).to("cpu", torch.float32).numpy()
    out = np.empty((flat.shape[0], *g.image_shape), np.float32)
    pid = astra.create_projector(DEFAULT_PROJECTOR["parallel"], proj, vol)
    sid = astra.data2d.create("-sino", proj)
    rid = astra.data2d.create("-vol", vol)
    cfg = astra.astra_dict("FBP")
    cfg.update(ProjectorId=pid, ProjectionDataId=sid, ReconstructionDataId=rid, option={"FilterType": filt})
    aid = astra.algorithm.create(cfg)
    try:
        for k, sino in enumerate(flat):
            astra.data2d.store(sid, sino)
            astra.algorithm.run(aid)
            out[k] = astra.data2d.get(rid)
    finally:
        astra.algorithm.delete(aid)
        astra.data2d.delete([sid, rid])
        astra.projector.delete(pid)
    # ASTRA weights every view by pi/N (it assumes a 180° scan); use the acquired angular step instead.
    out *= g.angular_step_rad * g.n_angles / math.pi
    return torch.from_numpy(out).reshape(*s.shape[:-2], *g.image_shape).to(s.device, s.dtype)


def ramp_filter(sino: torch.Tensor, spacing: float, filter: str = "ram-lak") -> torch.Tensor:
    """Filter along the last axis with the band-limited ramp of sample spacing ``spacing`` (mm) and a window.

    The spatial ramp kernel (h[0] = 1/4, h[odd k] = -1/(πk)², h[even] = 0, over spacing²) is applied in
    the Fourier domain with zero padding to at least twice the length, so the convolution is linear.
    Result = spacing * (h * p), the discrete version of the convolution integral.
    """
    _check_filter(filter)
    n = sino.shape[-1]
    size = 1 << (2 * n - 1).bit_length()
    rdtype = sino.dtype
    k = torch.arange(size, device=sino.device)
    k = torch.minimum(k, size - k)
    h = torch.zeros(size, dtype=torch.float64, device=sino.device)
    h[0] = 0.25
    odd = k % 2 == 1
    h[odd] = -1.0 / (math.pi * k[odd].double()) ** 2
    resp = torch.fft.fft(h).real
    f = torch.fft.fftfreq(size, device=sino.device, dtype=torch.float64)  # cycles per sample, [-0.5, 0.5)
    window = {
        "ram-lak": torch.ones_like(f),
        "shepp-logan": torch.sinc(f),
        "cosine": torch.cos(math.pi * f),
        "hamming": 0.54 + 0.46 * torch.cos(2 * math.pi * f),
        "hann": 0.5 + 0.5 * torch.cos(2 * math.pi * f),
    }[filter]
    resp = (resp * window / spacing).to(rdtype)
    spec = torch.fft.rfft(sino, n=size, dim=-1) * resp[: size // 2 + 1]
    return torch.fft.irfft(spec, n=size, dim=-1)[..., :n]


def _fan_fbp(s: torch.Tensor, g: FanBeamGeometry, filt: str) -> torch.Tensor:
    so, od, ds, n, nd = g.source_origin_mm, g.origin_det_mm, g.det_spacing_mm, g.image_size, g.n_det
    dev, dt = s.device, s.dtype
    tau = ds * so / (so + od)  # detector spacing scaled to the rotation axis
    u = (torch.arange(nd, device=dev, dtype=torch.float64) - (nd - 1) / 2) * tau
    pre = (so / torch.sqrt(so * so + u * u)).to(dt)
    q = 0.5 * ramp_filter(s * pre, tau, filt)  # 1/2: every ray is measured twice in a 360° scan
    batch = s.shape[:-2]
    q = torch.nn.functional.pad(q.reshape(-1, g.n_angles, nd), (1, 1))  # zero bins outside the detector
    c = (torch.arange(n, device=dev, dtype=torch.float64) - (n - 1) / 2) * g.pixel_size_mm
    px, py = c[None, :].expand(n, n).reshape(-1), (-c)[:, None].expand(n, n).reshape(-1)
    _, proj = g.astra_geometries()
    vec = torch.as_tensor(astra.functions.geom_2vec(proj)["Vectors"], dtype=torch.float64, device=dev)
    out = torch.zeros(q.shape[0], n * n, dtype=dt, device=dev)
    chunk = max(1, (1 << 18) // (q.shape[0] * n * n))  # views per step, bounding the gathered block
    for v0 in range(0, g.n_angles, chunk):
        views = torch.arange(v0, min(v0 + chunk, g.n_angles), device=dev)
        sx, sy = vec[views, 0:1], vec[views, 1:2]
        dx, dy = px - sx, py - sy  # (views, pixels)
        along = -(dx * sx + dy * sy) / so  # distance from the source along the central ray
        lateral = (dx * vec[views, 4:5] + dy * vec[views, 5:6]) / ds
        idx = (lateral * (so + od) / along / ds + (nd - 1) / 2 + 1).clamp(0, nd + 1)
        i0 = idx.floor().clamp(max=nd)
        w = (idx - i0).to(dt)
        flat = (i0.long() + views[:, None] * (nd + 2)).reshape(-1)
        q0, q1 = (q.reshape(q.shape[0], -1).index_select(1, flat + k).reshape(-1, *w.shape) for k in (0, 1))
        weight = ((so / along) ** 2 * g.angular_step_rad).to(dt)
        out += ((q0 + (q1 - q0) * w) * weight).sum(dim=1)  # linear interpolation on the detector
    return out.reshape(*batch, n, n)


# ---------------------------------------------------------------------------------------------------------
# cone beam (ASTRA CUDA, guarded)
# ---------------------------------------------------------------------------------------------------------
def _require_cuda(what: str):
    if not astra.use_cuda():
        raise MedreconError(f"{what}: cone beam needs a CUDA GPU (ASTRA's 3D projectors are GPU-only and the "
                            "CPU wheel crashes on them); run on a machine with a GPU or use a slice-wise "
                            "parallel/fan geometry")


def _astra_array(t: torch.Tensor) -> torch.Tensor:
    """A contiguous float32 tensor ASTRA can read through DLPack (GPU tensors stay on the GPU)."""
    return t.detach().to(torch.float32).contiguous()


class ConeProjector(LinearOperator):
    """Cone-beam projector on ASTRA's CUDA 3D kernels: (Z, Y, X) -> (det_rows, n_angles, det_cols).

    CUDA tensors are passed to ASTRA without a copy (DLPack); CPU tensors go through host memory.
    Leading batch dimensions are projected one volume at a time. Results come back in the input dtype.
    Raises MedreconError at construction when ASTRA sees no CUDA GPU.
    """

    def __init__(self, geometry: ConeBeamGeometry):
        _require_cuda("ConeProjector")
        super().__init__(geometry.volume_shape, geometry.proj_shape)
        self.geometry = geometry
        vol, proj = geometry.astra_geometries()
        self._pid = astra.create_projector("cuda3d", proj, vol)

    def __del__(self):
        pid = getattr(self, "_pid", None)
        if pid is not None:
            try:
                astra.projector3d.delete(pid)
            except Exception:  # interpreter shutdown
                pass

    def _run(self, t, out_shape, forward: bool):
        batch = t.shape[: t.ndim - (len(self.in_shape) if forward else len(self.out_shape))]
        src = _astra_array(t).reshape(-1, *t.shape[len(batch):])
        dst = torch.empty(src.shape[0], *out_shape, dtype=torch.float32, device=t.device)
        for k in range(src.shape[0]):
            if forward:
                astra.experimental.direct_FP3D(self._pid, src[k], dst[k])
            else:
                astra.experimental.direct_BP3D(self._pid, dst[k], src[k])
        return dst.reshape(*batch, *out_shape).to(t.dtype)

    def _forward(self, x):
        return self._run(x, self.out_shape, True)

    def _adjoint(self, y):
        return self._run(y, self.in_shape, False)


def fdk(projections, geometry: ConeBeamGeometry, short_scan: bool | None = None) -> torch.Tensor:
    """FDK reconstruction of (det_rows, n_angles, det_cols) cone-beam data on the GPU (ASTRA FDK_CUDA).

    ``short_scan`` (Parker weights) defaults to True when the angles span less than 360°.
    """
    _require_cuda("fdk")
    p = torch.as_tensor(projections)
    if tuple(p.shape) != geometry.proj_shape:
        raise InputError(f"fdk: projections must have shape {geometry.proj_shape}, got {tuple(p.shape)}")
    if short_scan is None:
        short_scan = geometry.angular_step_rad * geometry.n_angles < 2 * math.pi - 1e-6
    vol, proj = geometry.astra_geometries()
    src = _astra_array(p)
    out = torch.zeros(geometry.volume_shape, dtype=torch.float32, device=p.device)
    pid = astra.data3d.link("-proj", proj, src)
    vid = astra.data3d.link("-vol", vol, out)
    cfg = astra.astra_dict("FDK_CUDA")
    cfg.update(ProjectionDataId=pid, ReconstructionDataId=vid, option={"ShortScan": bool(short_scan)})
    aid = astra.algorithm.create(cfg)
    try:
        astra.algorithm.run(aid)
    finally:
        astra.algorithm.delete(aid)
        astra.data3d.delete([pid, vid])
    return out.to(p.dtype if p.is_floating_point() else torch.float32)
