"""Simulated measurements of a ground-truth volume, without the inverse crime.

CT projects mu sampled on a grid ``simulation.upsample`` times finer (same field of view, same detector) with
the operator of that finer geometry; MRI takes the centred FFT of the finer image and keeps the central
k-space (divided by the upsampling factor, the ratio of the orthonormal FFT scalings), so the reconstruction
grid's operator never produced the data. The physics (HU -> mu, noise, coil maps, FFT) is in ``operators``.
"""
from __future__ import annotations

import math

from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter, map_coordinates

from medrecon.io.common import check_memory
from medrecon.volume import Volume
from operators.ct import DEFAULT_PROJECTOR, MU_WATER, hu_to_mu, make_geometry, noisy_line_integrals, pixel_unit_projector
from operators.mri import centre_crop, fftc, ifftc, make_mask, synthetic_coil_maps

from .config import Config
from .measurement import Measurement


def _covered(centres: np.ndarray, width: float, n: int) -> np.ndarray:
    """Fraction of each new pixel (centre in source pixel units, ``width`` source pixels wide) inside the
    source's n pixels, which span [-0.5, n - 0.5]."""
    first, last = centres - width / 2, centres + width / 2
    part = np.clip(np.minimum(last, n - 0.5) - np.maximum(first, -0.5), 0.0, width) / width
    return np.where((first >= -0.5) & (last <= n - 0.5), 1.0, part)  # exactly 1 inside: values kept as they are


def grid_offsets(size: int, pixel_size: float, n: int, mm: float, align_to: float | None = None) -> np.ndarray:
    """The positions (mm, from the source's centre along one axis of n pixels of ``mm``) of a size-pixel grid of
    ``pixel_size``, centred on the source, or half a pixel off where the grid of ``align_to`` mm pixels (the
    reconstruction's) has the source's own pixels and pads them by an odd number: then its pixels are the
    source's, not halfway between them (and a finer grid of the same simulation moves with it)."""
    off = (np.arange(size) - (size - 1) / 2) * pixel_size
    if align_to is not None and abs(align_to - mm) <= 1e-6 * mm and round(size * pixel_size / align_to - n) % 2:
        off = off + align_to / 2
    return off


def grid_pixel(vol: Volume, size: int, pixel_size: float | None) -> float:
    """The pixel size of a size x size grid: ``pixel_size``, or the one that fits the larger in-plane side."""
    return float(pixel_size or max(vol.shape[2] * vol.spacing[0], vol.shape[1] * vol.spacing[1]) / size)


def resample_inplane(vol: Volume, size: int, pixel_size: float | None = None, order: int = 1,
                     align_to: float | None = None) -> Volume:
    """Every axial slice resampled onto size x size pixels of ``pixel_size`` mm, centred on the slice centre
    (``align_to``: see ``grid_offsets``).

    ``pixel_size=None`` fits the larger in-plane field of view; the rest is padded with the volume minimum
    (air for CT). Downsampling is Gaussian-prefiltered against aliasing. Slices (z) are kept as they are.
    """
    sx, sy, sz = vol.spacing
    nz, ny, nx = vol.shape
    pixel_size = grid_pixel(vol, size, pixel_size)
    cy = grid_offsets(size, pixel_size, ny, sy, align_to) / sy + (ny - 1) / 2
    cx = grid_offsets(size, pixel_size, nx, sx, align_to) / sx + (nx - 1) / 2
    data = vol.data
    sig = (0.0, max(0.0, (pixel_size / sy - 1) / 2), max(0.0, (pixel_size / sx - 1) / 2))
    if sig[1] > 0 or sig[2] > 0:
        data = gaussian_filter(data, sig, mode="nearest")
    yy, xx = np.meshgrid(cy, cx, indexing="ij")
    pad = float(vol.data.min())
    # the source covers its pixels up to their outer edges (half a pixel beyond the last centre); a new pixel takes
    # the nearest values there, mixed with the padding by the fraction of its area the source covers. So a body
    # cut by the field of view keeps its rim on a finer grid (the simulation's), and a coarser grid (the
    # reference) holds the same partial row at the cut as the data do, wherever the cut falls.
    cover = np.outer(_covered(cy, pixel_size / sy, ny), _covered(cx, pixel_size / sx, nx))

    def one(s):
        v = map_coordinates(s, [yy, xx], order=order, mode="nearest")
        return np.where(cover == 1.0, v, pad + cover * (v - pad)).astype(v.dtype)

    out = np.stack([one(s) for s in data])
    origin = vol.world_lps([cx[0], cy[0], 0.0])
    return Volume(out, (pixel_size, pixel_size, sz), tuple(origin), vol.direction, dict(vol.meta))


def ct_geometry(cfg: Config, size: int, pixel_size: float, like=None, n_views: int | None = None):
    """The configured CT geometry for ``size``^2 pixels of ``pixel_size`` mm (``like``: copy its detector;
    ``n_views``: that many views instead of the config's, e.g. 1 for its detector alone)."""
    c = cfg.ct
    return make_geometry(c.beam, size, pixel_size, n_views=n_views or c.n_views,
                         wedge_deg=None if n_views else c.wedge_deg,
                         n_det=c.detector.n_det, det_spacing_mm=c.detector.spacing,
                         source_distance_mm=c.fan.source_distance, detector_distance_mm=c.fan.detector_distance,
                         like=like)


def mri_mask(cfg: Config, shape: tuple[int, ...]) -> np.ndarray:
    """The configured mask, broadcastable to k-space of images of ``shape``."""
    m = cfg.mri.mask
    return make_mask(m.kind, shape, m.acceleration, m.center_fraction, m.seed)


#: the HU of mu = 0 (hu_to_mu clamps below it): air as the data see it. Scans store air near -1000 to -1024 and
#: pad outside their reconstruction circle with -2048 or -3024; the data cannot tell any of these from -1000, so
#: neither may the reference (it was floored at -1024 until the fortieth session: a perfect reconstruction then
#: lost up to 24 HU in every air pixel)
CT_FLOOR_HU = -1000.0


def simulate_ct(cfg: Config, src: Volume, size: int, pixel_mm: float | None = None) -> tuple[Volume, Measurement]:
    """The reference (HU, floored at ``CT_FLOOR_HU``: the data see padding as air, mu >= 0, and so must the
    scores) and the simulated line integrals, projected from a ``simulation.upsample`` times finer grid."""
    src = src.with_data(np.maximum(src.data, CT_FLOOR_HU))
    s = grid_pixel(src, size, pixel_mm or cfg.ct.pixel_size)
    ref = resample_inplane(src, size, s, align_to=s)
    geom = ct_geometry(cfg, size, s)
    f = cfg.simulation.upsample
    fine = resample_inplane(src, size * f, s / f, align_to=s) if f > 1 else ref
    fine_geom = ct_geometry(cfg, size * f, s / f, like=geom)
    mu_pix = torch.from_numpy(hu_to_mu(fine.data.astype(np.float64)) * (s / f))  # mu per fine pixel
    # thin rays through the finer grid, as every published figure was simulated (its bins are `upsample` fine
    # pixels wide, where the reconstruction's operator would now take strips)
    p = pixel_unit_projector(fine_geom, DEFAULT_PROJECTOR[fine_geom.type]).forward(mu_pix).numpy()
    n = cfg.noise
    y = noisy_line_integrals(p, n.kind, np.random.default_rng(n.seed), I0=n.I0, sigma=n.sigma).astype(np.float32)
    info = {"units": "line integrals of mu (-log(I/I0)); mu = MU_WATER * (1 + HU/1000)",
            "mu_water_per_mm": MU_WATER, "noise": n.model_dump(), "upsample": f, "reference_unit": "HU",
            "reference_floor_hu": CT_FLOOR_HU}
    return ref, Measurement("ct", y, ref.with_data(np.zeros(ref.shape)), geom.to_dict(), info=info)


#: the percentile of |image| that normalised magnitude puts at 1 (simulation and measured k-space alike)
MAGNITUDE_PERCENTILE = 99.9


def magnitude_scale(image) -> float:
    """What MR magnitude is divided by: its MAGNITUDE_PERCENTILE (the maximum where that is 0). Not the maximum:
    one bright voxel (a vessel, fat, an artefact) at 50x the tissue put the tissue near 0.02, where the prior
    (trained on |v| / its 99.5th percentile) took much of it for background (11.9 dB against 3D ADMM-TV's 21.3)."""
    a = np.abs(np.asarray(image))
    return float(np.percentile(a, MAGNITUDE_PERCENTILE)) or float(a.max()) or 1.0


def simulate_mri(cfg: Config, src: Volume, size: int, pixel_mm: float | None = None) -> tuple[Volume, Measurement]:
    s = grid_pixel(src, size, pixel_mm or cfg.mri.pixel_size)
    ref = resample_inplane(src, size, s, align_to=s)
    scale = magnitude_scale(src.data)  # the input's own (the square grid's padding would lower it)
    ref = ref.with_data(ref.data / scale)
    f = cfg.simulation.upsample
    fine = (resample_inplane(src, size * f, s / f, align_to=s).data / scale) if f > 1 else ref.data
    three_d = cfg.mri.mode == "3d"
    dims = (-3, -2, -1) if three_d else (-2, -1)
    img = torch.from_numpy(fine.astype(np.float32)).to(torch.complex64)  # (Z, H, W)

    # fftc's origin is pixel n // 2; the fine grid's lies d coarse pixels off the coarse grid's (a quarter pixel for
    # an even size at f = 2): the phase ramp puts the band's image on the reconstruction grid, as the maps are
    d = (size // 2 - (size - 1) / 2) - ((size * f) // 2 - (size * f - 1) / 2) / f
    ramp = torch.exp(2j * math.pi * (torch.arange(size) - size // 2) * d / size).to(torch.complex64)

    def k_space(x):  # the fine grid's k-space, its central size x size (the reconstruction grid's band), DC kept
        return centre_crop(fftc(x, dims), (size, size)) / f * ramp[:, None] * ramp[None, :]

    k = k_space(img)
    # The reference is the image these data hold: the fine image limited to the grid's band (what a fully
    # sampled, noise-free acquisition reconstructs), not an interpolation of it, which no data can reach.
    band = ifftc(k, dims)
    ref = ref.with_data(band.abs().numpy() if cfg.mri.image == "complex" else band.real.numpy())
    maps = None
    if cfg.mri.coils == "multi":
        maps = synthetic_coil_maps(cfg.mri.n_coils, (size, size))
        maps_fine = torch.from_numpy(synthetic_coil_maps(cfg.mri.n_coils, (size * f, size * f)))
        k = k_space(maps_fine[None] * img[:, None] if not three_d else maps_fine[:, None] * img[None])
    mask = np.asarray(mri_mask(cfg, ref.shape if three_d else (size, size)), bool)
    g = torch.Generator().manual_seed(cfg.noise.seed)
    if cfg.noise.kind == "complex_gaussian" and cfg.noise.sigma > 0:
        k = k + cfg.noise.sigma * torch.complex(torch.randn(k.shape, generator=g), torch.randn(k.shape, generator=g))
    y = (k * torch.from_numpy(mask)).numpy().astype(np.complex64)
    info = {"units": "k-space of the normalised magnitude (centred orthonormal FFT)", "scale": scale,
            "reference": "the fine image limited to the grid's k-space band (a fully sampled, noise-free scan)",
            "noise": cfg.noise.model_dump(), "upsample": f, "layout": cfg.mri.mode, "reference_unit": "normalised"}
    return ref, Measurement("mri", y, ref.with_data(np.zeros(ref.shape)), None, mask, maps, info)


def check_simulation_fits(cfg: Config, src: Volume, size: int, pixel_mm: float | None = None) -> None:
    """One line naming the keys where the simulated data of ``src``'s slices on a ``size`` grid cannot fit in memory
    (``ct.n_views=1e9`` was killed by the kernel without a word): an estimate of the largest arrays, the projections
    in float64 with their noisy copy (CT; the geometry's own detector count), every coil's k-space of the finer
    grid in complex64 with its product's (MRI)."""
    f, n_slices = cfg.simulation.upsample, src.shape[0]
    if cfg.modality == "ct":
        views = cfg.ct.n_views or math.ceil(cfg.ct.wedge_deg)  # a wedge: one view per degree
        n_det = ct_geometry(cfg, size, grid_pixel(src, size, pixel_mm or cfg.ct.pixel_size), n_views=1).n_det
        need = 16.0 * n_slices * views * n_det
        what, keys = f"{views} views", "ct.n_views (or ct.detector.n_det)"
    else:
        coils = cfg.mri.n_coils if cfg.mri.coils == "multi" else 1
        need = 16.0 * n_slices * coils * (size * f) ** 2
        what, keys = f"{coils} coils", "mri.n_coils"
    check_memory(need, f"simulating {n_slices} slices of {size}x{size} with {what}", f"lower {keys} or the grid size")


def simulate_volume(cfg: Config, src: Volume, size: int, pixel_mm: float | None = None) -> tuple[Volume, Measurement]:
    """Reference volume on the reconstruction grid (size x size pixels of ``pixel_mm``; None: the config's
    pixel size, else the field of view / size), in physical units, and the simulated measurement."""
    check_simulation_fits(cfg, src, size, pixel_mm)
    ref, meas = (simulate_ct if cfg.modality == "ct" else simulate_mri)(cfg, src, size, pixel_mm)
    meas.info["source"] = Path(str(src.meta.get("source", ""))).name  # a name only: folders may name patients
    return ref, meas


__all__ = ["CT_FLOOR_HU", "check_simulation_fits", "ct_geometry", "mri_mask", "resample_inplane", "simulate_ct",
           "simulate_mri", "simulate_volume"]
