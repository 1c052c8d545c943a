"""Imaging physics on top of ``medrecon.linop``, one package per modality.

``operators.ct``: geometries, slice-wise projectors (ASTRA system matrix as torch CSR), FBP, cone beam/FDK and
the CT physics rules. ``operators.mri``: centred FFT, Cartesian operator, masks, coil maps and the operator
builder.
"""
from .ct import (ConeBeamGeometry, ConeProjector, FanBeamGeometry, ParallelBeamGeometry, SliceProjector,
                 clear_matrix_cache, fbp, fdk, geometry_from_dict, system_matrix)
from .mri import CartesianMRI, estimate_coil_maps, fftc, ifftc, load_mask, make_mask, save_mask, zero_filled

__all__ = ["ConeBeamGeometry", "ConeProjector", "FanBeamGeometry", "ParallelBeamGeometry", "SliceProjector",
           "clear_matrix_cache", "fbp", "fdk", "geometry_from_dict", "system_matrix", "load_mask", "make_mask",
           "save_mask", "CartesianMRI", "estimate_coil_maps", "fftc", "ifftc", "zero_filled"]
