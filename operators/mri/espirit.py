"""ESPIRiT coil sensitivities (Uecker et al., MRM 2014) through sigpy's kept implementation.

The calibration region is the fully sampled k-space centre: ``calibration_width`` measures it from the
mask (the widest centred box of sampled phase-encode positions, in the plane of a 3D mask too), because a calibration box wider than
the fully sampled centre would put unsampled zeros into the calibration matrix. The maps come from the
null space of that matrix: one eigenvector per pixel, eigenvalue threshold ``crop`` (pixels without
signal get zero maps), phase relative to the first coil. sigpy is an optional dependency
(``pip install 'medrecon[mri]'``).
"""
from __future__ import annotations

import numpy as np
import torch

from medrecon.errors import InputError

#: the narrowest calibration box (lines) whose ESPIRiT maps (6-wide kernel) held up on measured k-space: from 12
#: lines they left part of the object without coil sensitivity, 3.8 and 16.9 dB under the estimated maps on two
#: brains; from 13 they matched or beat them (README, "ESPIRiT on a narrow calibration box")
ESPIRIT_MIN_CALIBRATION = 13


def calibration_width(mask, default: int = 24, ndim: int = 2) -> int:
    """Width of the widest calibration box ESPIRiT may use (at most ``default``): the box sigpy crops (from
    n // 2 - w // 2 along every image axis) must be sampled on every slice. The mask's last ``ndim`` axes are the
    image's ((H | 1, W) in 2D, (Z | 1, Y | 1, X) in 3D); an axis of size 1 is sampled throughout."""
    m = np.asarray(mask, bool)
    m = m.reshape((1,) * max(0, ndim - m.ndim) + m.shape)
    plane = m.reshape(-1, *m.shape[-ndim:]).all(axis=0)

    def box_sampled(w: int) -> bool:
        box = tuple(slice(None) if n == 1 else slice(n // 2 - min(w, n) // 2, n // 2 - min(w, n) // 2 + min(w, n))
                    for n in plane.shape)
        return bool(plane[box].all())

    width = 0
    while width < default and box_sampled(width + 1):
        width += 1
    if width == 0:
        raise InputError("the mask does not sample the k-space centre: ESPIRiT needs a fully sampled "
                         "calibration region (use coil_maps: given)")
    return width


def espirit_maps(kspace, calib_width: int = 24, kernel_width: int = 6, thresh: float = 0.02,
                 crop: float = 0.95, ndim: int = 2) -> torch.Tensor:
    """ESPIRiT maps of centred k-space (..., C, *img) with ``ndim`` image axes; leading axes (slices) one by one.

    Returns complex64 maps of the same shape (sigpy's ``mri.app.EspiritCalib``, CPU).
    """
    try:
        from sigpy.mri.app import EspiritCalib
    except ImportError:
        raise InputError("coil_maps: espirit needs sigpy (pip install 'medrecon[mri]'), or use "
                         "coil_maps: estimate") from None
    k = torch.as_tensor(kspace).detach().cpu().numpy().astype(np.complex64)
    if k.ndim < ndim + 1:
        raise InputError(f"ESPIRiT needs multi-coil k-space (..., C, {'x'.join(['n'] * ndim)}), got {k.shape}")
    cw = int(min(calib_width, *k.shape[-ndim:]))
    if kernel_width >= cw:
        raise InputError(f"ESPIRiT: the calibration region ({cw} lines) must be wider than the kernel "
                         f"({kernel_width}); sample a larger centre")
    flat = k.reshape(-1, *k.shape[-ndim - 1:])
    maps = [EspiritCalib(s, calib_width=cw, thresh=thresh, kernel_width=kernel_width, crop=crop,
                         show_pbar=False).run() for s in flat]
    empty = [i for i, m in enumerate(maps) if not np.any(m)]
    if empty:  # every pixel cropped: the reconstruction would be zero everywhere
        raise InputError(f"ESPIRiT found no coil sensitivity in slice {empty[0]} (a {cw}-line calibration region: "
                         "too few calibration rows for its kernel, or no signal); use mri.coil_maps=estimate")
    return torch.from_numpy(np.stack(maps).reshape(k.shape).astype(np.complex64))
