"""Small helpers shared by the readers and writers."""
from __future__ import annotations

import logging

import numpy as np

from ..errors import InputError

log = logging.getLogger("medrecon.io")


def warn(warnings: list, message: str) -> None:
    """Log a warning and keep it with the volume (``Volume.meta['warnings']``) for reports."""
    log.warning(message)
    warnings.append(message)


def check_voxels(data: np.ndarray, path) -> np.ndarray:
    """Real, finite scalar voxels as float32, or an :class:`InputError` naming ``path``."""
    data = np.asarray(data)
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)
            or data.dtype == bool):
        raise InputError(f"{path}: voxels of type {data.dtype} are not supported; "
                         "save real scalar values (e.g. float32)")
    data = data.astype(np.float32, copy=False)
    n_nan, n_inf = int(np.isnan(data).sum()), int(np.isinf(data).sum())
    if n_nan or n_inf:
        raise InputError(f"{path}: {n_nan} NaN and {n_inf} Inf voxels out of {data.size}; "
                         "replace them (e.g. numpy.nan_to_num) or crop them away before use")
    return data


def volume_array(data: np.ndarray, path, order: str) -> np.ndarray:
    """A 3D array from 2D (one slice) or 3D data, or 3D with trailing singleton axes; else an error.

    ``order`` names the axes for the message (e.g. "(Z, Y, X)").
    """
    data = np.asarray(data)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[None] if order.startswith("(Z") else data[..., None]
    if data.ndim != 3 or 0 in data.shape:
        raise InputError(f"{path}: expected a 3D volume {order}, got shape {data.shape}; "
                         "split 4D data into single volumes first")
    return data
