"""The one centred orthonormal FFT of the MRI model (ifftshift -> fftn(norm="ortho") -> fftshift)."""
from __future__ import annotations

from typing import Sequence

import torch

_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def as_complex(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a complex tensor of matching precision (integers go through the default float dtype)."""
    if t.is_complex():
        return t
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t.to(_COMPLEX.get(t.dtype, torch.complex64))


def _axes(dims: int | Sequence[int]) -> tuple[int, ...]:
    return tuple(range(-dims, 0)) if isinstance(dims, int) else tuple(dims)


def fftc(x: torch.Tensor, dims: int | Sequence[int]) -> torch.Tensor:
    """Centred orthonormal FFT over ``dims``: an int n means the last n axes, else a sequence of axes."""
    d = _axes(dims)
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(x, dim=d), dim=d, norm="ortho"), dim=d)


def ifftc(k: torch.Tensor, dims: int | Sequence[int]) -> torch.Tensor:
    """Inverse of ``fftc`` (same ``dims``)."""
    d = _axes(dims)
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(k, dim=d), dim=d, norm="ortho"), dim=d)
