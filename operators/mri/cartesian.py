"""Cartesian MRI: orthonormal centred FFT, sampling mask, optional SENSE coil maps; 2D per slice or 3D.

    A x = M F (S x)        A^H y = sum_c conj(S_c) F^H (M y_c)

F is the centred orthonormal DFT (ifftshift -> fft(norm="ortho") -> fftshift) over the last 2 axes of a
(H, W) slice operator or the last 3 axes of a (Z, Y, X) volume operator; M multiplies by the 0/1 mask, so
unsampled k-space positions are stored as zeros and ||A|| = 1 for one coil (and for coil maps with
sum_c |S_c|^2 = 1). Mask axis conventions are those of ``operators.mri.masks`` (readout along H/Y fully
sampled, phase encoding along W/X, and Z in 3D).

Images are complex by default. ``real_input=True`` makes the operator map *real* images to complex
k-space; its adjoint is Re(A^H y), the adjoint for the real inner product of ``medrecon.linop.inner``.
That is the form a real-valued image prior expects for magnitude-like images (the DiffusionMBIR MRI
reference: simulated single-coil data). Measured k-space needs complex images (``real_input=False``).

``kspace_shape``: the encoded matrix when it is larger than the image (readout oversampling, fastMRI's
640 x 368 k-space of a 320 x 320 image): the (coil) image is zero-padded to it before the FFT and the
adjoint crops after the inverse FFT (``operators.mri.crop``); the mask then broadcasts to ``kspace_shape``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from medrecon.errors import InputError
from medrecon.linop import LinearOperator

from .crop import centre_crop, crop_slices, zero_pad
from .physics import as_complex, fftc, ifftc


class CartesianMRI(LinearOperator):
    """Cartesian MRI forward model for 2D slices ``image_shape=(H, W)`` or 3D volumes ``(Z, Y, X)``.

    ``mask``: boolean array broadcastable to ``image_shape`` (e.g. (1, W) or (Z, 1, X) from ``make_mask``).
    A 2D operator also takes a per-slice mask with one extra leading axis, e.g. (Z, 1, W): the operator
    then applies to batches of exactly those Z slices. ``coil_maps``: (C, *image_shape) complex
    sensitivities; the output gains a coil axis, ``out_shape = (C, *kspace_shape)``.
    """

    def __init__(self, image_shape: Sequence[int], mask, coil_maps=None, real_input: bool = False,
                 kspace_shape: Sequence[int] | None = None):
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) not in (2, 3):
            raise InputError(f"CartesianMRI: image_shape must be (H, W) or (Z, Y, X), got {image_shape}")
        nd = len(image_shape)
        kshape = image_shape if kspace_shape is None else tuple(int(s) for s in kspace_shape)
        crop_slices(kshape, image_shape)
        m = torch.as_tensor(np.asarray(mask, dtype=bool))
        if m.ndim < nd:
            m = m.reshape((1,) * (nd - m.ndim) + tuple(m.shape))
        try:
            torch.broadcast_shapes(tuple(m.shape[m.ndim - nd:]), kshape)
        except RuntimeError:
            raise InputError(f"mask of shape {tuple(m.shape)} does not broadcast to k-space {kshape}: give it the "
                             "k-space's shape, or 1 along the readout (one entry per phase-encode line)") from None
        if m.ndim > nd + (1 if nd == 2 else 0):
            raise InputError(f"mask of shape {tuple(m.shape)}: at most one leading (per-slice) axis, 2D only")
        if not bool(m.any()):
            raise InputError("the sampling mask samples nothing")
        maps = None
        if coil_maps is not None:
            maps = as_complex(torch.as_tensor(coil_maps))
            if tuple(maps.shape[1:]) != image_shape or maps.ndim != nd + 1:
                raise InputError(f"coil_maps must have shape (C, {', '.join(map(str, image_shape))}), "
                                 f"got {tuple(maps.shape)}")
            if m.ndim > nd:  # per-slice mask: make room for the coil axis
                m = m.unsqueeze(-nd - 1)
        out_shape = kshape if maps is None else (maps.shape[0], *kshape)
        super().__init__(image_shape, out_shape)
        self.kspace_shape = kshape
        self.ndim, self.real_input = nd, bool(real_input)
        self.mask, self.coil_maps = m, maps
        self._cache: dict = {}

    @property
    def per_slice(self) -> bool:
        """A 2D operator whose mask differs by slice: it applies to the whole stack of its slices only."""
        return self.ndim == 2 and self.mask.ndim > 2 and self.mask.shape[0] > 1

    @property
    def acceleration(self) -> float:
        """Number of k-space positions over the number sampled (averaged over slices for per-slice masks)."""
        return 1.0 / float(self.mask.expand(*self.mask.shape[:-self.ndim], *self.kspace_shape).float().mean())

    def _on(self, like: torch.Tensor):
        key = (like.device, like.dtype)
        if key not in self._cache:
            mask = self.mask.to(like.device)
            maps = None if self.coil_maps is None else self.coil_maps.to(device=like.device, dtype=like.dtype)
            self._cache[key] = (mask, maps)
        return self._cache[key]

    def _slices_match(self, t: torch.Tensor, what: str, extra: int = 0) -> None:
        """A per-slice mask fixes the number of slices: a stack of another length is refused, naming both."""
        axis = t.ndim - self.ndim - extra - 1
        if self.per_slice and (axis < 0 or t.shape[axis] != self.mask.shape[0]):
            got = t.shape[axis] if axis >= 0 else 1
            raise InputError(f"CartesianMRI: its mask differs by slice ({self.mask.shape[0]} slices), but the {what} "
                             f"has {got}: apply it to the whole stack, or build one operator per slice")

    def _forward(self, x):
        if self.real_input and x.is_complex():
            raise TypeError("CartesianMRI(real_input=True) takes real images")
        self._slices_match(x, "image")
        x = as_complex(x)
        mask, maps = self._on(x)
        if maps is not None:
            x = x.unsqueeze(-self.ndim - 1) * maps
        if self.kspace_shape != self.in_shape:
            x = zero_pad(x, self.kspace_shape)
        return fftc(x, self.ndim) * mask

    def _adjoint(self, y):
        self._slices_match(y, "k-space", extra=0 if self.coil_maps is None else 1)
        y = as_complex(y)
        mask, maps = self._on(y)
        x = ifftc(y * mask, self.ndim)
        if self.kspace_shape != self.in_shape:
            x = centre_crop(x, self.in_shape)
        if maps is not None:
            x = (x * maps.conj()).sum(dim=-self.ndim - 1)
        return x.real if self.real_input else x


def zero_filled(y: torch.Tensor, op: CartesianMRI) -> torch.Tensor:
    """Zero-filled reconstruction A^H y (coil-combined with the maps when there are coils).

    No density compensation: with a variable-density mask the low frequencies are over-represented
    relative to a uniform mask, which (with the orthonormal FFT) keeps the image scale of the sampled
    energy — intensities are biased low by the unsampled energy, not rescaled by 1/acceleration.
    """
    return op.adjoint(y)
