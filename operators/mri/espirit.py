"""ESPIRiT coil sensitivities (Uecker et al., MRM 2014), from a rectangular calibration region.

The calibration region is the fully sampled k-space centre, measured from the mask by ``calibration_region``: along
the phase-encode axis the central run of sampled lines (at most 24; it need not be symmetric about n // 2), along a
readout axis (one no line of the mask has a gap along: full columns or rows, a partial echo, zero-filled readout
edges, a mask axis of size 1) the positions sampled on every calibration line, at most ``ESPIRIT_READOUT_CALIBRATION``
around the centre; a 3D mask's (kz, kx) plane takes the widest centred box (``_centred_width``). A region wider
than the sampled centre would put unsampled zeros into the calibration matrix. A square box as wide as the sampled
centre (sigpy's ``EspiritCalib``, used until the sixty-third session) holds too few kernel positions under 13 lines
and left part of the object without coil sensitivity; the rectangular region holds up from 11 lines
(``ESPIRIT_MIN_CALIBRATION``).

The maps, per slice: the calibration matrix (one row per kernel position, ``kernel_width`` samples along each axis
and coil) → its right singular vectors above ``thresh`` × the largest singular value (the kernels) → their
image-domain Gram matrix, one C × C matrix per pixel, computed as the FFT of the kernels' autocorrelation → the
eigenvector of its largest eigenvalue, kept where that eigenvalue exceeds ``crop`` (pixels without signal get zero
maps), phase relative to the first coil. It follows sigpy's ``EspiritCalib`` (same scaling and crop; exact
eigenvectors instead of its power iterations) and needs no optional package.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from medrecon.errors import InputError

from .masks import _centre_slice, central_run

#: the fewest central lines whose ESPIRiT maps (6-wide kernel, the rectangular region) held up on measured k-space:
#: at 10 lines and fewer they left part of the object without coil sensitivity, 0.8 and 14.3 dB under the estimated
#: maps on two brains at x4 (the lines of ``calibration_region``, the sampled run); from 11 they matched or beat
#: them (README, "ESPIRiT on a narrow calibration region"). The square box needed 13.
ESPIRIT_MIN_CALIBRATION = 11

#: the calibration region's extent along a readout axis (samples, at most the matrix): the full readout of the T2
#: slice (384) scored the same as 64 (+-0.01 dB at 12 and 13 lines) and keeps a 3D calibration matrix small
ESPIRIT_READOUT_CALIBRATION = 64

#: the kernel's width along every axis (``espirit_maps``' default)
ESPIRIT_KERNEL_WIDTH = 6


def _plane(mask, ndim: int) -> np.ndarray:
    """The positions of the image plane sampled on every slice of ``mask`` (its last ``ndim`` axes)."""
    m = np.asarray(mask, bool)
    m = m.reshape((1,) * max(0, ndim - m.ndim) + m.shape)
    return m.reshape(-1, *m.shape[-ndim:]).all(axis=0)


def _centred_width(plane: np.ndarray, default: int) -> int:
    """Width (lines) of the widest centred square box of ``plane`` (``_plane``: the positions sampled on every
    slice) all sampled, at most ``default``: the box ``_centre_slice`` along every image axis (an axis of size 1 is
    sampled throughout); 0 where the k-space centre is not sampled."""
    def box_sampled(w: int) -> bool:
        return bool(plane[tuple(slice(None) if n == 1 else _centre_slice(n, min(w, n)) for n in plane.shape)].all())

    width = 0
    while width < default and box_sampled(width + 1):
        width += 1
    return width


class CalibrationRegion(NamedTuple):
    """ESPIRiT's calibration region, per image axis: its width and its first sample relative to the k-space centre
    n // 2 (a centred box of w: -(w // 2)); ``lines`` marks the phase-encode axes (the others are read out)."""
    widths: tuple[int, ...]
    starts: tuple[int, ...]
    lines: tuple[bool, ...]

    def within(self, shape: Sequence[int]) -> tuple[slice, ...]:
        """The region's slices in a matrix of ``shape`` (its image axes): widths clipped to it, kept inside it."""
        out = []
        for w, s, n in zip(self.widths, self.starts, shape):
            w = min(int(w), int(n))
            lo = min(max(n // 2 + s, 0), n - w)
            out.append(slice(lo, lo + w))
        return tuple(out)


def _capped(run: slice, centre: int, cap: int) -> slice:
    """At most ``cap`` positions of ``run``, centred on ``centre`` as far as the run allows."""
    w = min(run.stop - run.start, cap)
    lo = min(max(centre - w // 2, run.start), run.stop - w)
    return slice(lo, lo + w)


def calibration_region(mask, default: int = 24, ndim: int = 2,
                       readout: int = ESPIRIT_READOUT_CALIBRATION) -> CalibrationRegion:
    """The calibration region ESPIRiT uses: the fully sampled block of the mask around the k-space centre.

    The phase-encode axes are those along which a line of the mask has a gap (the lines the undersampling skipped;
    a mask of one central block and nothing else: the axes it does not fill through the centre); the others are
    read out (a readout sampled throughout, with a partial echo
    or zero-filled edges, a mask axis of size 1). With one phase-encode axis the calibration lines are the central
    run of sampled lines (``central_run``: it need not be symmetric about n // 2), at most ``default`` of them; with
    several (a 3D Poisson mask's (kz, kx) plane) the widest centred box sampled (``_centred_width``). Along each
    readout axis the positions sampled on every calibration line, their central run, at most ``readout`` (an axis
    of size 1: ``readout``, clipped to the matrix by ``espirit_maps``). A capped run keeps the centre, centred on
    it as far as the run allows. The block is checked to be fully sampled; where it is not (a mask of no such
    structure) the widest centred box sampled is used along every axis."""
    plane = _plane(mask, ndim)
    centre = tuple(n // 2 for n in plane.shape)
    if not plane[centre]:
        raise InputError("the mask does not sample the k-space centre: ESPIRiT needs a fully sampled "
                         "calibration region (use coil_maps: given)")

    pe = tuple(bool(_runs(plane, a).max() > 1) for a in range(ndim))  # a line along it with a gap: the lines
    if not any(pe):  # no line skipped beyond one central block: the lines run along the axes it does not fill
        pe = tuple(bool(plane.shape[a] > 1 and not plane[centre[:a] + (slice(None),) + centre[a + 1:]].all())
                   for a in range(ndim))
    box = [slice(0, 1)] * ndim
    if sum(pe) == 1:
        a = pe.index(True)
        box[a] = _capped(central_run(plane[centre[:a] + (slice(None),) + centre[a + 1:]]), centre[a], default)
    elif sum(pe) > 1:
        w = _centred_width(plane, default)
        for a in range(ndim):
            if pe[a]:
                box[a] = _centre_slice(plane.shape[a], w)
    on_lines = plane[tuple(box[a] if pe[a] else slice(None) for a in range(ndim))]
    on_lines = on_lines.all(axis=tuple(a for a in range(ndim) if pe[a]), keepdims=True)  # sampled on every line
    sub_centre = tuple(0 if pe[a] else centre[a] for a in range(ndim))
    for a in range(ndim):
        if not pe[a] and plane.shape[a] > 1:
            box[a] = _capped(central_run(on_lines[sub_centre[:a] + (slice(None),) + sub_centre[a + 1:]]),
                             centre[a], readout)
    if not plane[tuple(box)].all():  # not a block of lines by a readout
        w = _centred_width(plane, default)
        return CalibrationRegion((w,) * ndim, (-(w // 2),) * ndim, pe)
    widths = tuple(readout if plane.shape[a] == 1 else box[a].stop - box[a].start for a in range(ndim))
    starts = tuple(-(readout // 2) if plane.shape[a] == 1 else box[a].start - centre[a] for a in range(ndim))
    return CalibrationRegion(widths, starts, pe)


def _runs(plane: np.ndarray, axis: int) -> np.ndarray:
    """The number of runs of sampled positions on each line of ``plane`` along ``axis``."""
    p = np.moveaxis(plane, axis, -1).astype(np.int8)
    return (np.diff(p, axis=-1, prepend=0) == 1).sum(-1)


def _kernels(calib: np.ndarray, kernel_width: int, thresh: float) -> np.ndarray:
    """ESPIRiT's kernels (K, C, k, ..., k) of one slice's calibration data (C, *region): the right singular vectors of
    the calibration matrix (a row per kernel position) above ``thresh`` times the largest singular value, taken
    from the eigenvectors of its Gram matrix (squared singular values; summed over positions, so its memory is
    the Gram matrix's, whatever the region)."""
    c, nd = calib.shape[0], calib.ndim - 1
    patches = np.lib.stride_tricks.sliding_window_view(calib, (kernel_width,) * nd, axis=tuple(range(1, nd + 1)))
    cols = c * kernel_width ** nd
    gram = np.zeros((cols, cols), np.complex128)
    for row in np.moveaxis(patches, 0, nd):  # the positions along the first axis, one at a time
        mat = row.reshape(-1, cols)  # (positions, C * k^nd), coil-major as the kernels
        gram += mat.T @ mat.conj()  # = (mat^H mat)^T: its eigenvectors, conjugated, are mat's right singular vectors
    val, vec = np.linalg.eigh(gram)
    keep = np.sqrt(np.clip(val, 0, None)) > thresh * np.sqrt(max(val.max(), 0))
    return vec[:, keep][:, ::-1].T.reshape(-1, c, *(kernel_width,) * nd)


def _autocorrelation(kernels: np.ndarray) -> np.ndarray:
    """The kernels' autocorrelation R[delta, c, d] = sum_j sum_{p - q = delta} k_j[c, p] conj(k_j[d, q]), one
    (C, C) matrix per offset delta in (-(k-1) .. k-1)^nd, at index delta + k - 1: (2k-1, ..., C, C), from the
    kernels' FFTs zero-padded to 2k - 1 (no wrap-around)."""
    kw, nd = kernels.shape[2:], kernels.ndim - 2
    axes = tuple(range(2, 2 + nd))
    f = np.fft.fftn(kernels, s=tuple(2 * k - 1 for k in kw), axes=axes)  # (K, C, *L)
    s = np.einsum("jc...,jd...->...cd", f, f.conj())  # (*L, C, C)
    return np.fft.fftshift(np.fft.ifftn(s, axes=tuple(range(nd))), axes=tuple(range(nd)))


def _maps(kernels: np.ndarray, shape: Sequence[int], crop: float) -> torch.Tensor:
    """The maps (C, *shape) of one slice's kernels: per pixel x the top eigenvector of sum_j a_j(x) a_j(x)^H, a_j
    kernel j zero-padded to ``shape`` and inverse Fourier transformed (centred), scaled as sigpy's (by the pixel
    count over k^nd); phase relative to coil 0, zero where the eigenvalue is at most ``crop``.

    That Gram matrix is the (centred) inverse DFT of the kernels' autocorrelation, whose offsets span only 2k - 1
    samples per axis: it is summed directly, one axis at a time, a block of rows of the first image axis at a time
    (about 4 MB of Gram matrices), each block made Hermitian to rounding and decomposed before the next, so the
    memory is the maps' and one block's, not one C x C matrix per pixel."""
    c, kw, nd = kernels.shape[1], kernels.shape[2:], len(shape)
    r = _autocorrelation(kernels) / int(np.prod(kw))  # (*L, C, C)
    waves = [np.exp(2j * np.pi * np.outer(np.arange(n) - n // 2, np.arange(-(k - 1), k)) / n)  # (n, L): x by delta
             for n, k in zip(shape, kw)]
    rows = max(1, (1 << 19) // (int(np.prod(shape[1:])) * c * c))
    out = torch.zeros((*shape, c), dtype=torch.complex64)
    for lo in range(0, shape[0], rows):
        g = np.tensordot(waves[0][lo:lo + rows], r, axes=(1, 0))  # (rows, L, ..., C, C)
        for a in range(1, nd):  # axis a: its offsets (at position a) by its pixels, moved back to position a
            g = np.moveaxis(np.tensordot(g, waves[a], axes=(a, 1)), -1, a)
        gram = torch.from_numpy(g.astype(np.complex64))
        gram = 0.5 * (gram + gram.conj().transpose(-1, -2))  # Hermitian to rounding
        val, vec = torch.linalg.eigh(gram)
        top, v = val[..., -1], vec[..., -1]  # (rows, ...), (rows, ..., C)
        ref = v[..., :1]
        phase = torch.where(ref.abs() > 0, ref.conj() / ref.abs().clamp_min(1e-30), torch.ones_like(ref))
        out[lo:lo + rows] = v * phase * (top > crop)[..., None]
    return torch.movedim(out, -1, 0)


def espirit_maps(kspace, region: int | Sequence[int] | CalibrationRegion = 24,
                 kernel_width: int = ESPIRIT_KERNEL_WIDTH, thresh: float = 0.02, crop: float = 0.95,
                 ndim: int = 2) -> torch.Tensor:
    """ESPIRiT maps of centred k-space (..., C, *img) with ``ndim`` image axes; leading axes (slices) one by one.

    ``region``: the calibration region (``calibration_region``), or a centred box: one width per image axis, or
    one width for every axis (a square box); clipped to the matrix. Returns complex64 maps of the k-space's shape
    (CPU).
    """
    k = torch.as_tensor(kspace).detach()
    if k.ndim < ndim + 1:
        raise InputError(f"ESPIRiT needs multi-coil k-space (..., C, {'x'.join(['n'] * ndim)}), got {tuple(k.shape)}")
    if not isinstance(region, CalibrationRegion):  # one width per axis, or one for every axis: a centred box
        widths = (region,) * ndim if np.ndim(region) == 0 else tuple(int(w) for w in region)
        region = CalibrationRegion(widths, tuple(-(w // 2) for w in widths), (True,) * len(widths))
    if len(region.widths) != ndim:
        raise InputError(f"ESPIRiT: a calibration region of {len(region.widths)} widths for {ndim} image axes")
    shape, img = tuple(k.shape), tuple(k.shape[-ndim:])
    box = region.within(img)
    sizes = tuple(b.stop - b.start for b in box)
    if kernel_width >= min(sizes):
        raise InputError(f"ESPIRiT: the calibration region ({min(sizes)} lines) must be wider than the kernel "
                         f"({kernel_width}); sample a larger centre")
    calib = k[(Ellipsis,) + box].cpu().numpy().astype(np.complex64)  # only the block: not the whole k-space
    maps = [_maps(_kernels(c.astype(np.complex128), kernel_width, thresh), img, crop)
            for c in calib.reshape(-1, *calib.shape[-ndim - 1:])]
    empty = [i for i, m in enumerate(maps) if not bool(m.abs().sum())]
    if empty:  # every pixel cropped: the reconstruction would be zero everywhere
        lines = "x".join(str(w) for w in sizes)
        raise InputError(f"ESPIRiT found no coil sensitivity in slice {empty[0]} (a {lines} calibration region: "
                         "too few calibration rows for its kernel, or no signal); use mri.coil_maps=estimate")
    return torch.stack(maps).reshape(shape).to(torch.complex64)
