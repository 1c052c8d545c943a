"""medrecon core: volumes, linear operators, priors, solvers and metrics.

The core knows no imaging modality and never imports ``operators`` or ``pipelines``.
"""
__version__ = "0.1.0"

from .errors import MedreconError, InputError  # noqa: E402,F401
from .volume import Volume  # noqa: E402,F401
