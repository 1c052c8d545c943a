"""`info` and `convert`: volume I/O from the command line."""
from .app import app  # noqa: F401
