"""Imaging physics on top of ``medrecon.linop``: CT (ASTRA) and Cartesian MRI operators, masks, FBP/FDK."""
from .ct import (ConeBeamGeometry, ConeProjector, FanBeamGeometry, ParallelBeamGeometry, SliceProjector,
                 clear_matrix_cache, fbp, fdk, geometry_from_dict, system_matrix)
from .masks import load_mask, make_mask, save_mask
from .mri import CartesianMRI, estimate_coil_maps, fftc, ifftc, zero_filled

__all__ = ["ConeBeamGeometry", "ConeProjector", "FanBeamGeometry", "ParallelBeamGeometry", "SliceProjector",
           "clear_matrix_cache", "fbp", "fdk", "geometry_from_dict", "system_matrix", "load_mask", "make_mask",
           "save_mask", "CartesianMRI", "estimate_coil_maps", "fftc", "ifftc", "zero_filled"]
