"""`simulate`, `reconstruct`, `evaluate` and `batch`."""
from .app import app  # noqa: F401
