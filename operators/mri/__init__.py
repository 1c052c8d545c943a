"""Cartesian MRI: the centred orthonormal FFT, sampling masks, coil maps, the forward operator and its builder.

    A x = M F (S x)        A^H y = sum_c conj(S_c) F^H (M y_c)

Modules: ``physics`` (fftc/ifftc), ``cartesian`` (CartesianMRI), ``masks`` (make_mask, ...), ``coils``
(coil maps, PerSliceOperator). ``mri_operator`` below builds the operator of a measurement.
"""
from __future__ import annotations

import torch

from medrecon.errors import InputError
from medrecon.linop import LinearOperator

from .cartesian import CartesianMRI, zero_filled
from .coils import PerSliceOperator, estimate_coil_maps, synthetic_coil_maps
from .masks import KINDS, load_mask, make_mask, poisson_disc, save_mask
from .physics import fftc, ifftc

__all__ = ["CartesianMRI", "zero_filled", "PerSliceOperator", "estimate_coil_maps", "synthetic_coil_maps",
           "KINDS", "load_mask", "make_mask", "poisson_disc", "save_mask", "fftc", "ifftc", "mri_operator"]


def mri_operator(image_shape, mask, *, kspace=None, coil_maps=None, estimate_maps: bool = False,
                 three_d: bool = False, real_input: bool = True) -> LinearOperator:
    """The Cartesian MRI operator of a measurement (real-input by default, for real-valued priors).

    ``image_shape``: the volume (Z, H, W) / (Z, Y, X); in 2D only the last two axes are used.
    2D: one (H, W) operator for all slices, or a PerSliceOperator when the coil maps differ per slice
    ((Z, C, H, W), e.g. fastMRI ``sens_maps`` or maps estimated from each slice's centre).
    3D: one (Z, Y, X) operator; coil maps (C, Z, Y, X) or (C, Y, X) (the same on every slice).
    With ``kspace`` given, its layout decides: single-coil k-space (2D (Z, H, W), 3D (Z, Y, X)) drops any
    maps; multi-coil k-space (ndim 4) with no maps, or ``estimate_maps``, gets ``estimate_coil_maps``.
    Without ``kspace`` the maps are used as given.
    """
    shape = tuple(int(s) for s in image_shape)
    if len(shape) not in (2, 3) or (three_d and len(shape) != 3):
        raise InputError(f"mri_operator: image_shape must be (Z, Y, X) in 3D, (Z, H, W) or (H, W) in 2D; "
                         f"got {shape}")
    shape = shape if three_d else shape[-2:]
    maps = None if coil_maps is None else torch.as_tensor(coil_maps)
    if kspace is not None:
        k = torch.as_tensor(kspace)
        multi = k.ndim == 4
        if multi and (maps is None or estimate_maps):
            maps = estimate_coil_maps(k, ndim=3 if three_d else 2)
        if not multi:
            maps = None
    elif estimate_maps:
        raise InputError("mri_operator: estimate_maps=True needs the multi-coil kspace")
    if maps is not None and three_d and maps.ndim == 3:
        maps = maps[:, None].expand(maps.shape[0], shape[0], *maps.shape[1:])
    if maps is not None and not three_d and maps.ndim == 4:
        return PerSliceOperator([CartesianMRI(shape, mask, coil_maps=m, real_input=real_input) for m in maps])
    return CartesianMRI(shape, mask, coil_maps=maps, real_input=real_input)
