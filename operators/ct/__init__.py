"""CT: geometry value objects, slice-wise projectors (ASTRA system matrix as torch CSR), cone beam, FBP/FDK,
and the CT physics rules (attenuation, noise, pixel-unit projector, configured geometry).

All lengths in mm, angles in degrees in the geometry objects; conventions in ``geometry``. Projections are
line integrals in mm; FBP returns values in the image's units. Everything 3D is behind ``astra.use_cuda()``
(the ASTRA pip wheel dies with SIGFPE on 3D/CUDA calls without a GPU).
"""
from .cone import ConeProjector, fdk
from .fbp import FILTERS, fbp, ramp_filter
from .geometry import (GEOMETRIES, ConeBeamGeometry, FanBeamGeometry, ParallelBeamGeometry, geometry_from_dict,
                       parallel_det_count)
from .physics import (MAX_LINE_INTEGRAL, MU_WATER, NOISE_KINDS, attenuation_per_pixel, hu_to_mu, line_integral_checks,
                      make_geometry, noisy_line_integrals, pixel_unit_projector, poisson_weights_from_line_integrals)
from .projector import DEFAULT_PROJECTOR, SliceProjector, SystemMatrix, clear_matrix_cache, system_matrix

__all__ = ["ConeProjector", "fdk", "FILTERS", "fbp", "ramp_filter", "GEOMETRIES", "ConeBeamGeometry",
           "FanBeamGeometry", "ParallelBeamGeometry", "geometry_from_dict", "parallel_det_count", "MAX_LINE_INTEGRAL",
           "MU_WATER", "NOISE_KINDS", "attenuation_per_pixel", "hu_to_mu", "line_integral_checks",
           "make_geometry", "noisy_line_integrals", "pixel_unit_projector", "poisson_weights_from_line_integrals",
           "DEFAULT_PROJECTOR", "SliceProjector", "SystemMatrix", "clear_matrix_cache", "system_matrix"]
