"""`demo`: the bundled phantom and prior, end to end."""
from .app import app  # noqa: F401
