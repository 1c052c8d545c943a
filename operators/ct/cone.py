"""Cone beam on ASTRA's CUDA 3D kernels: projector and FDK.

The ASTRA pip wheel is built with CUDA and dies with SIGFPE (not an exception) on any 3D or CUDA call
when no GPU is present: everything here is behind ``astra.use_cuda()``.
"""
from __future__ import annotations

import math

import astra
import astra.experimental  # not imported by `import astra`; holds the direct GPU-array calls
import torch

from medrecon.errors import InputError, MedreconError
from medrecon.linop import LinearOperator

from .geometry import ConeBeamGeometry


def _require_cuda(what: str):
    if not astra.use_cuda():
        raise MedreconError(f"{what}: cone beam needs a CUDA GPU (ASTRA's 3D projectors are GPU-only and the "
                            "CPU wheel crashes on them); run on a machine with a GPU or use a slice-wise "
                            "parallel/fan geometry")


_astra_gpu = [0]  # the GPU ASTRA's 3D calls run on (its default, 0, until _on_gpu_of changes it)


def _on_gpu_of(t: torch.Tensor) -> int:
    """Point ASTRA's 3D calls at ``t``'s GPU (they use a process-wide GPU index, not the tensor's device: data
    on cuda:1 handed to kernels running on GPU 0 fail). Returns the index."""
    idx = t.device.index if t.device.index is not None else torch.cuda.current_device()
    if idx != _astra_gpu[0]:  # only then: a one-GPU machine never changes ASTRA's default
        astra.set_gpu_index(idx)
        _astra_gpu[0] = idx
    return idx


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
        if src.is_cuda:
            _on_gpu_of(src)
        # zeros, not empty: should ASTRA fail without raising, the result is zero rather than stale memory
        dst = torch.zeros(src.shape[0], *out_shape, dtype=torch.float32, device=t.device)
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
        short_scan = float(geometry.view_weights_rad.sum()) < 2 * math.pi - 1e-6
    vol, proj = geometry.astra_geometries()
    src = _astra_array(p)
    out = torch.zeros(geometry.volume_shape, dtype=torch.float32, device=p.device)
    pid = astra.data3d.link("-proj3d", proj, src)
    vid = astra.data3d.link("-vol", vol, out)
    cfg = astra.astra_dict("FDK_CUDA")
    option = {"ShortScan": bool(short_scan), **({"GPUindex": _on_gpu_of(src)} if src.is_cuda else {})}
    cfg.update(ProjectionDataId=pid, ReconstructionDataId=vid, option=option)
    aid = astra.algorithm.create(cfg)
    try:
        astra.algorithm.run(aid)
    finally:
        astra.algorithm.delete(aid)
        astra.data3d.delete([pid, vid])
    return out.to(p.dtype if p.is_floating_point() else torch.float32)
