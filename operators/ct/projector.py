"""Slice-wise parallel/fan projector: ASTRA's CPU system matrix as torch CSR, cached per geometry.

Projections are line integrals in mm: a uniform object of value mu (per mm) gives mu * chord length.
"""
from __future__ import annotations

import math
import warnings
from collections import OrderedDict

import astra
import numpy as np
import torch

from medrecon.errors import InputError
from medrecon.linop import LinearOperator

DEFAULT_PROJECTOR = {"parallel": "linear", "fan": "line_fanflat"}
#: where detector bins are wider than the pixels (at the rotation axis) a thin ray misses part of the pixels, and
#: a solver never corrects what it does not see: a uniform disc came back with a 26-211 HU checkerboard from CGLS
#: at 2-3 mm bins on 1 mm pixels, 3-5 HU with strips, which integrate over the bin
STRIP_PROJECTOR = {"parallel": "strip", "fan": "strip_fanflat"}
_PROJECTORS = {"parallel": ("line", "linear", "strip"), "fan": ("line_fanflat", "strip_fanflat")}


def bins_wider_than_pixels(geometry) -> bool:
    """Whether the detector's bins, scaled to the rotation axis (fan beam: by so / (so + od)), are wider than the
    pixels."""
    width = geometry.det_spacing_mm
    if geometry.type == "fan":
        width *= geometry.source_origin_mm / (geometry.source_origin_mm + geometry.origin_det_mm)
    return width > geometry.pixel_size_mm * (1 + 1e-6)


def default_projector(geometry) -> str:
    """ASTRA's projector for a 2D geometry: thin rays (pixel-centre sampling), strips where the bins are wider
    than the pixels."""
    return (STRIP_PROJECTOR if bins_wider_than_pixels(geometry) else DEFAULT_PROJECTOR)[geometry.type]


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


_MATRICES: OrderedDict = OrderedDict()
#: system matrices kept (with their device copies): a batch of series of several sizes must not fill the GPU
MAX_CACHED_MATRICES = 8


def system_matrix(geometry, projector: str | None = None) -> SystemMatrix:
    """The cached system matrix of a 2D geometry (built once per geometry and projector type; the
    ``MAX_CACHED_MATRICES`` used last are kept)."""
    projector = projector or default_projector(geometry)
    if projector not in _PROJECTORS.get(geometry.type, ()):
        raise InputError(f"projector {projector!r} does not fit a {geometry.type} geometry; "
                         f"use one of {_PROJECTORS.get(geometry.type)}")
    key = (geometry, projector)
    if key not in _MATRICES:
        _MATRICES[key] = SystemMatrix(geometry, projector)
        while len(_MATRICES) > MAX_CACHED_MATRICES:
            _MATRICES.popitem(last=False)
    _MATRICES.move_to_end(key)
    return _MATRICES[key]


def clear_matrix_cache():
    _MATRICES.clear()


class SliceProjector(LinearOperator):
    """Slice-wise parallel- or fan-beam projector: (..., n, n) images -> (..., n_angles, n_det) sinograms.

    Every leading dimension is a batch of slices, projected together by sparse-dense products on the
    device and in the dtype (float32/float64) of the data: one product on CUDA, blocks of
    ``SystemMatrix.CPU_CHUNK`` slices on CPU. The adjoint uses the explicitly transposed matrix, so it is
    exact. Half precision (float16, bfloat16) is computed in float32 and returned in its dtype, as ``fbp`` does;
    integers give the default float dtype.
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
        dtype = t.dtype if t.is_floating_point() else torch.get_default_dtype()
        work = dtype if dtype in (torch.float32, torch.float64) else torch.float32  # no sparse products in half
        n_in = len(self.out_shape if transpose else self.in_shape)
        batch = t.shape[: t.ndim - n_in]
        flat = t.to(work).reshape(-1, math.prod(t.shape[t.ndim - n_in:]))
        return self.matrix.apply(flat, transpose).reshape(*batch, *out_shape).to(dtype)

    def _forward(self, x):
        return self._apply(x, False, self.out_shape)

    def _adjoint(self, y):
        return self._apply(y, True, self.in_shape)
