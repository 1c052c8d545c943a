"""Every linear operator of the project, small enough for dense-matrix checks (tests/test_operators.py).

An entry builds (operator, batch, complex_input): ``batch`` is the leading shape the operator is applied
with (a per-slice MRI mask fixes it), ``complex_input`` says whether its domain is complex.
It also holds the phantoms and metrics the CT and MRI tests share.
"""
from __future__ import annotations

import numpy as np
import torch

from medrecon.linop import Diagonal, FiniteDifference
from operators.ct import FanBeamGeometry, ParallelBeamGeometry, SliceProjector
from operators.mri import CartesianMRI, CentreCrop, PerSliceOperator, make_mask




def smooth_coil_maps(n_coils: int, shape, seed: int = 0) -> torch.Tensor:
    """Smooth complex sensitivities normalised so that sum_c |S_c|^2 = 1 everywhere (float64)."""
    g = torch.Generator().manual_seed(seed)
    grids = torch.meshgrid(*[torch.linspace(-1, 1, s, dtype=torch.float64) for s in shape], indexing="ij")
    maps = []
    for c in range(n_coils):
        angle = 2 * np.pi * c / n_coils
        centre = [0.9 * np.cos(angle), 0.9 * np.sin(angle)] + [0.0] * (len(shape) - 2)
        d2 = sum((gr - ce) ** 2 for gr, ce in zip(grids[-2:][::-1] + grids[:-2], centre))
        phase = float(torch.rand(1, generator=g)) * 2 * np.pi
        maps.append(torch.exp(-d2 / 1.5) * torch.exp(1j * (phase + 0.5 * grids[-1])))
    maps = torch.stack(maps)
    return maps / torch.sqrt((maps.abs() ** 2).sum(0, keepdim=True))


def disc(n, pixel, radius, cx=0.0, cy=0.0, ss=4):
    """Uniform disc of value 1 (mm units), pixel area fractions by ss x ss supersampling."""
    c = (np.arange(n) - (n - 1) / 2) * pixel
    X, Y = np.meshgrid(c, -c)
    off = ((np.arange(ss) + 0.5) / ss - 0.5) * pixel
    img = sum(((X + a - cx) ** 2 + (Y + b - cy) ** 2 <= radius ** 2).astype(float) for a in off for b in off)
    return img / ss ** 2


def psnr(x, ref) -> float:
    """PSNR in dB with the reference's maximum as peak."""
    return float(10 * np.log10(ref.max() ** 2 / np.mean((np.asarray(x) - ref) ** 2)))


def textured_phantom(n, nz):
    """Shepp-Logan with a smooth texture that changes from slice to slice."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize
    base = resize(shepp_logan_phantom(), (n, n), order=1, anti_aliasing=True)
    c = (np.arange(n) + 0.5) / n
    X, Y = np.meshgrid(c, c)
    texture = [0.08 * np.sin(2 * np.pi * (3 * X + 2 * Y + 0.15 * z)) * np.cos(2 * np.pi * (2 * X - 3 * Y))
               for z in range(nz)]
    slices = [base + (base > 0) * t for t in texture]
    return np.stack(slices).astype(np.float32)


def _per_slice(real_input: bool):
    """Three slices, each with its own mask and its own coil maps (as fastMRI sens_maps (Z, C, H, W))."""
    return PerSliceOperator([CartesianMRI((8, 10), make_mask("uniform1d", (8, 10), 2, 0.2, seed=z),
                                          coil_maps=smooth_coil_maps(2, (8, 10), seed=z), real_input=real_input)
                             for z in range(3)])


def _par(**kw):
    return SliceProjector(ParallelBeamGeometry.sparse_view(12, 8, pixel_size_mm=0.8, **kw))


def _weighted_par():
    """W^1/2 A with per-ray weights of each of the two slices of the batch (CT PWLS)."""
    A = _par()
    w = torch.rand((2, *A.out_shape), generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.1
    return Diagonal(w, A.out_shape) @ A


REGISTRY = {
    "ct_parallel_sparse": lambda: (_par(), (2,), False),
    "ct_parallel_strip": lambda: (SliceProjector(ParallelBeamGeometry.sparse_view(10, 5), "strip"), (2,), False),
    "ct_parallel_limited": lambda: (SliceProjector(ParallelBeamGeometry.limited_angle(12, 90, n_views=9)),
                                    (2,), False),
    "ct_fan_sparse": lambda: (SliceProjector(FanBeamGeometry.sparse_view(12, 10, det_spacing_mm=1.3)), (2,), False),
    "ct_fan_strip_limited": lambda: (SliceProjector(FanBeamGeometry.limited_angle(10, 120, n_views=7), "strip_fanflat"),
                                     (2,), False),
    "mri2d_complex": lambda: (CartesianMRI((8, 10), make_mask("gaussian1d", (8, 10), 2, 0.2, seed=1)), (2,), True),
    "mri2d_real": lambda: (CartesianMRI((8, 10), make_mask("uniform1d", (8, 10), 3, 0.2), real_input=True),
                           (2,), False),
    "mri2d_multicoil": lambda: (CartesianMRI((8, 10), make_mask("equispaced1d", (8, 10), 2, 0.2),
                                             coil_maps=smooth_coil_maps(3, (8, 10))), (2,), True),
    "mri2d_perslice_multicoil_real": lambda: (CartesianMRI(
        (8, 10), np.stack([make_mask("uniform1d", (8, 10), 2, 0.2, seed=s) for s in range(3)]),
        coil_maps=smooth_coil_maps(2, (8, 10)), real_input=True), (3,), False),
    "mri2d_per_slice_operator_complex": lambda: (_per_slice(False), (), True),
    "mri2d_per_slice_operator_real": lambda: (_per_slice(True), (2,), False),
    "mri3d_poisson": lambda: (CartesianMRI((6, 5, 8), make_mask("poisson2d", (6, 5, 8), 3, 0.25)), (), True),
    "mri3d_multicoil_real": lambda: (CartesianMRI((4, 5, 6), make_mask("poisson2d", (4, 5, 6), 2, 0.25),
                                                  coil_maps=smooth_coil_maps(2, (4, 5, 6)), real_input=True),
                                     (), False),
    "crop_centre_even_odd": lambda: (CentreCrop((12, 9), (6, 5)), (2,), True),
    "mri2d_oversampled_multicoil": lambda: (CartesianMRI((6, 6), make_mask("uniform1d", (12, 7), 2, 0.3),
                                                         coil_maps=smooth_coil_maps(3, (6, 6)),
                                                         kspace_shape=(12, 7)), (2,), True),
    "mri2d_oversampled_real": lambda: (CartesianMRI((5, 6), make_mask("uniform1d", (10, 6), 2, 0.3),
                                                    real_input=True, kspace_shape=(10, 6)), (), False),
    "fd_z": lambda: (FiniteDifference((4, 5, 6), (0,)), (), False),
    "fd_3d": lambda: (FiniteDifference((4, 5, 6), (0, 1, 2)), (2,), False),
    "fd_3d_periodic": lambda: (FiniteDifference((4, 5, 6), (0, 1, 2), "periodic"), (), False),
    "ct_ray_weighted": lambda: (_weighted_par(), (2,), False),
    "compose_ct_normal": lambda: (_par().H @ _par(), (2,), False),
    "compose_scaled_sum": lambda: (2.5 * _par() + _par(), (2,), False),
    "compose_mri_adjoint_view": lambda: (CartesianMRI((8, 10), make_mask("uniform1d", (8, 10), 2, 0.2)).H, (), True),
}
