"""2D diffusion priors behind one denoiser contract (see base.py)."""
from .base import (Denoiser, GaussianDenoiser, IntensityMap, NoiseSchedule, VESchedule, VPSchedule,  # noqa: F401
                   schedule_from_dict)
