"""`train`: train a 2D diffusion prior on the user's volumes."""
from .app import app  # noqa: F401
