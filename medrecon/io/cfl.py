"""BART's array format: ``NAME.hdr`` (a text header with the dimensions) and ``NAME.cfl`` (complex64 data).

The header is ``# Dimensions`` followed by one line of integer sizes; the data are interleaved
(real, imaginary) float32 pairs in column-major (Fortran) order, the first dimension fastest. BART pads
to 16 dimensions of size 1; ``read_cfl`` drops trailing singleton dimensions. ``NAME`` may be given with
or without the suffix.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError


def _base(path) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix.lower() in (".cfl", ".hdr") else p


def read_cfl(path) -> np.ndarray:
    """A complex64 array with BART's dimension order (trailing singleton dimensions dropped)."""
    base = _base(path)
    upper = Path(path).suffix.isupper()  # NAME.CFL pairs with NAME.HDR
    hdr, cfl = (base.with_suffix(x.upper() if upper else x) for x in (".hdr", ".cfl"))
    if not hdr.is_file() or not cfl.is_file():
        raise InputError(f"{base}: BART data need both {hdr.name} and {cfl.name}")
    lines = [ln.strip() for ln in hdr.read_text().splitlines()]
    try:
        dims = [int(v) for v in lines[lines.index("# Dimensions") + 1].split()]
    except (ValueError, IndexError):
        dims = []
    if not dims:
        raise InputError(f"{hdr}: no '# Dimensions' line followed by integer sizes")
    if min(dims) < 0:  # (numpy's reshape failed on them with a traceback; sizes of 0 hold no values)
        raise InputError(f"{hdr}: the '# Dimensions' line must hold sizes >= 0, got {dims}")
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    n = int(np.prod(dims))
    data = np.fromfile(cfl, dtype=np.complex64)
    if data.size != n:
        raise InputError(f"{cfl}: holds {data.size} complex values but the header says {dims} ({n})")
    return data.reshape(dims, order="F")


def write_cfl(path, array) -> Path:
    """Write ``array`` (any shape, BART dimension order) as NAME.hdr + NAME.cfl; returns NAME."""
    base = _base(path)
    a = np.asarray(array).astype(np.complex64)
    dims = list(a.shape) + [1] * max(0, 5 - a.ndim)
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".hdr").write_text("# Dimensions\n" + " ".join(str(d) for d in dims) + "\n")
    a.ravel(order="F").tofile(base.with_suffix(".cfl"))
    return base


__all__ = ["read_cfl", "write_cfl"]
