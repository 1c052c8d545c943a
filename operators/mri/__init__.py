"""Cartesian MRI: the centred orthonormal FFT, sampling masks, coil maps, the forward operator and its builder.

    A x = M F (S x)        A^H y = sum_c conj(S_c) F^H (M y_c)

Modules: ``physics`` (fftc/ifftc), ``cartesian`` (CartesianMRI), ``masks`` (make_mask, ...), ``coils``
(coil maps, PerSliceOperator), ``crop`` (readout oversampling), ``espirit`` (ESPIRiT maps from the sampled centre). ``mri_operator`` below builds the operator of a measurement.
"""
from __future__ import annotations

import numpy as np
import torch

from medrecon.errors import InputError
from medrecon.linop import LinearOperator

from .cartesian import CartesianMRI, zero_filled
from .coils import PerSliceOperator, estimate_coil_maps, synthetic_coil_maps
from .crop import CentreCrop, centre_crop, zero_pad
from .espirit import (ESPIRIT_KERNEL_WIDTH, ESPIRIT_MIN_CALIBRATION, ESPIRIT_READOUT_CALIBRATION, CalibrationRegion,
                      calibration_region, espirit_maps)
from .masks import KINDS, central_run, load_mask, make_mask, mask_acceleration, poisson_disc, save_mask
from .physics import fftc, ifftc

__all__ = ["coil_support", "with_real_input", "CartesianMRI", "zero_filled", "PerSliceOperator", "estimate_coil_maps", "synthetic_coil_maps",
           "CentreCrop", "centre_crop", "zero_pad", "calibration_region", "espirit_maps", "ESPIRIT_MIN_CALIBRATION",
           "ESPIRIT_READOUT_CALIBRATION", "ESPIRIT_KERNEL_WIDTH", "CalibrationRegion", "MAPS_FROM",
           "KINDS", "central_run", "load_mask", "make_mask", "mask_acceleration", "poisson_disc", "save_mask",
           "fftc", "ifftc", "mri_operator"]

MAPS_FROM = ("given", "estimate", "espirit")  # config mri.coil_maps


def mri_operator(image_shape, mask, *, kspace=None, coil_maps=None, maps_from: str = "given",
                 three_d: bool = False, real_input: bool = True, kspace_shape=None) -> LinearOperator:
    """The Cartesian MRI operator of a measurement (real-input by default, for real-valued priors).

    ``image_shape``: the volume (Z, H, W) / (Z, Y, X); in 2D only the last two axes are used.
    2D: one (H, W) operator for all slices, or a PerSliceOperator when the coil maps differ per slice
    ((Z, C, H, W), e.g. fastMRI ``sens_maps`` or maps estimated from each slice's centre).
    3D: one (Z, Y, X) operator; coil maps (C, Z, Y, X) or (C, Y, X) (the same on every slice).
    ``kspace_shape``: the encoded matrix when larger than the image (readout oversampling: see ``crop``).
    With ``kspace`` given, its layout decides: single-coil k-space (2D (Z, H, W), 3D (Z, Y, X)) drops any
    maps; multi-coil k-space (ndim 4) with no maps gets ``estimate_coil_maps``, and ``maps_from`` "estimate"
    or "espirit" replaces given maps by ``estimate_coil_maps`` / ``espirit_maps`` of the k-space (computed
    on the encoded matrix, then cropped to the image). Without ``kspace`` the maps are used as given.
    """
    if maps_from not in MAPS_FROM:
        raise InputError(f"coil maps from {maps_from!r}: choose one of {', '.join(MAPS_FROM)}")
    shape = tuple(int(s) for s in image_shape)
    if len(shape) not in (2, 3) or (three_d and len(shape) != 3):
        raise InputError(f"mri_operator: image_shape must be (Z, Y, X) in 3D, (Z, H, W) or (H, W) in 2D; "
                         f"got {shape}")
    shape = shape if three_d else shape[-2:]
    nd = len(shape)
    kshape = shape if kspace_shape is None else tuple(int(s) for s in kspace_shape)[-nd:]
    maps = None if coil_maps is None else torch.as_tensor(coil_maps)
    if kspace is not None:
        k = torch.as_tensor(kspace)
        multi = k.ndim == 4
        if multi and maps_from == "espirit":
            maps = espirit_maps(k, calibration_region(mask, ndim=nd), ndim=nd)
        elif multi and (maps is None or maps_from == "estimate"):
            maps = estimate_coil_maps(k, ndim=nd)
        if not multi:
            maps = None
    elif maps_from != "given":
        raise InputError(f"mri_operator: coil maps from {maps_from} need the multi-coil kspace")
    if maps is not None and kspace is not None and multi and not three_d:  # maps given with 2D data must fit it
        bad_coils = maps.ndim < 3 or maps.shape[-3] != k.shape[1]  # k (Z, C, H, W); maps (C, H, W) | (Z, C, H, W)
        bad_slices = maps.ndim == 4 and maps.shape[0] != k.shape[0]
        if bad_coils or bad_slices or tuple(maps.shape[-nd:]) not in (kshape, shape):
            raise InputError(f"coil maps of shape {tuple(maps.shape)} do not fit k-space of shape {tuple(k.shape)} "
                             "(coils, slices and matrix must agree): use the maps stored with these data, or "
                             "mri.coil_maps=estimate / espirit")
    if maps is not None and tuple(maps.shape[-nd:]) == kshape != shape:
        maps = centre_crop(maps, shape)
    if maps is not None and three_d and maps.ndim == 3:
        maps = maps[:, None].expand(maps.shape[0], shape[0], *maps.shape[1:])
    kw = dict(real_input=real_input, kspace_shape=kshape)
    if maps is not None and not three_d and maps.ndim == 4:
        m = np.asarray(mask)
        per_slice_mask = m.ndim == 3 and m.shape[0] == maps.shape[0]  # (Z, 1|H, W): slice z gets mask z (Z = 1 too)
        return PerSliceOperator([CartesianMRI(shape, m[z] if per_slice_mask else mask, coil_maps=maps[z], **kw)
                                 for z in range(maps.shape[0])])
    return CartesianMRI(shape, mask, coil_maps=maps, **kw)


def with_real_input(A: LinearOperator) -> LinearOperator:
    """The same ``mri_operator`` taking real images (its adjoint keeps the real part); mask and maps shared."""
    if isinstance(A, PerSliceOperator):
        return PerSliceOperator([with_real_input(op) for op in A.ops])
    real = CartesianMRI.__new__(CartesianMRI)
    real.__dict__.update(A.__dict__, real_input=True, _cache={})
    return real


def coil_support(A: LinearOperator) -> torch.Tensor | None:
    """The image pixels some coil sees (sum over coils of |S_c|^2 > 0) of an ``mri_operator``: (Z, H, W) for one
    operator per slice, the maps' image shape otherwise; None when every pixel is seen or there are no maps. Outside
    it (ESPIRiT's crop) no data constrain the image."""
    ops = A.ops if isinstance(A, PerSliceOperator) else [A]
    maps = [getattr(op, "coil_maps", None) for op in ops]
    if any(m is None for m in maps):
        return None
    seen = torch.stack([(m.abs() ** 2).sum(0) > 1e-12 for m in maps])
    seen = seen if isinstance(A, PerSliceOperator) else seen[0]
    return None if bool(seen.all()) else seen
