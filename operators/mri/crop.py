"""Readout oversampling: the centred crop from the encoded matrix to the reconstruction matrix, and back.

A scanner samples k-space on the *encoded* matrix (fastMRI: 640 x 368, the readout oversampled x2) and the
image is reported on the *recon* matrix (320 x 320): the inverse FFT of the full k-space, cropped about its
centre. In the forward model the image is therefore zero-padded to the encoded matrix before the FFT: the
pad is the adjoint of the crop. Centre convention of ``physics.fftc``: index n // 2 is the centre, so the
crop keeps rows n // 2 - m // 2 ... of an axis of n, for an output of m.
"""
from __future__ import annotations

from typing import Sequence

import torch

from medrecon.errors import InputError
from medrecon.linop import LinearOperator


def crop_slices(big: Sequence[int], small: Sequence[int]) -> tuple[slice, ...]:
    """The index ranges of the centred ``small`` box inside ``big`` (trailing axes)."""
    if len(big) != len(small) or any(s > b or s < 1 for b, s in zip(big, small)):
        raise InputError(f"cannot crop {tuple(small)} out of {tuple(big)}: the recon matrix must fit in the "
                         f"encoded matrix")
    return tuple(slice(b // 2 - s // 2, b // 2 - s // 2 + s) for b, s in zip(big, small))


def centre_crop(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The centred box of ``shape`` of the trailing axes of x."""
    box = crop_slices(x.shape[x.ndim - len(shape):], shape)
    return x[(Ellipsis, *box)]


def zero_pad(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """x centred in zeros of ``shape`` (trailing axes): the adjoint of ``centre_crop``."""
    small = x.shape[x.ndim - len(shape):]
    out = x.new_zeros((*x.shape[: x.ndim - len(shape)], *shape))
    out[(Ellipsis, *crop_slices(shape, small))] = x
    return out


class CentreCrop(LinearOperator):
    """(..., *big) -> (..., *small): the centred crop; its adjoint zero-pads."""

    def __init__(self, big: Sequence[int], small: Sequence[int]):
        crop_slices(big, small)
        super().__init__(big, small)

    def _forward(self, x):
        return centre_crop(x, self.out_shape)

    def _adjoint(self, y):
        return zero_pad(y, self.in_shape)
