"""Filtered backprojection for parallel beam (ASTRA CPU) and fan beam (flat detector, torch).

FBP returns values in the same units as the image (value 1 in, value 1 out).
"""
from __future__ import annotations

import math

import astra
import numpy as np
import torch

from medrecon.errors import InputError

from .geometry import FanBeamGeometry, ParallelBeamGeometry
from .projector import default_projector

FILTERS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")


def _check_filter(name: str) -> str:
    if name not in FILTERS:
        raise InputError(f"unknown FBP filter {name!r}; choose one of {FILTERS}")
    return name


def fbp(sinogram, geometry, filter: str = "ram-lak") -> torch.Tensor:
    """Filtered backprojection of (..., n_angles, n_det) sinograms into (..., n, n) images.

    Parallel beam: ASTRA's CPU 'FBP' slice by slice. Fan beam: ASTRA's CPU build has no fan FBP, so a
    weighted filtered backprojection for flat detectors (Kak & Slaney, ch. 3) runs in torch on the data's
    device. The angular quadrature weighs each view by its share of the scanned directions
    (``view_weights_rad``: a uniform scan its step, a parallel scan over 360° half of it, any order), so full
    scans reconstruct a uniform object to its value; a fan-beam short scan (180° plus the fan angle, up to
    360°) gets Parker's redundancy weights, a shorter (limited-angle) arc 1 / the number of times each line is
    measured (``parker_weights``). ``filter`` is one of FILTERS. Returns a tensor on the sinogram's device, in its
    float dtype.
    """
    _check_filter(filter)
    s = torch.as_tensor(sinogram)
    if not s.is_floating_point():
        s = s.to(torch.float32)
    if geometry.type not in ("parallel", "fan"):
        raise InputError("fbp handles parallel and fan geometries; use fdk for cone beam")
    if tuple(s.shape[-2:]) != geometry.sino_shape:
        raise InputError(f"fbp: sinogram must end in shape {geometry.sino_shape}, got {tuple(s.shape)}")
    if geometry.type == "parallel":
        return _parallel_fbp(s, geometry, filter)
    return _fan_fbp(s, geometry, filter)


def _parallel_fbp(s: torch.Tensor, g: ParallelBeamGeometry, filt: str) -> torch.Tensor:
    vol, proj = g.astra_geometries()
    # ASTRA weights every view by pi/N (a uniform 180° scan): each view's row gets its own quadrature weight instead
    share = (g.view_weights_rad * g.n_angles / math.pi).astype(np.float32)[:, None]
    flat = s.detach().reshape(-1, *g.sino_shape).to("cpu", torch.float32).numpy() * share
    out = np.empty((flat.shape[0], *g.image_shape), np.float32)
    # ASTRA's 'linear' backprojector samples each view at the pixel centres: with detector bins wider than the
    # pixels it leaves a +-10 % checkerboard on a uniform disc; 'strip' integrates over the bin (std 0.001)
    pid = astra.create_projector(default_projector(g), proj, vol)
    sid = astra.data2d.create("-sino", proj)
    rid = astra.data2d.create("-vol", vol)
    cfg = astra.astra_dict("FBP")
    cfg.update(ProjectorId=pid, ProjectionDataId=sid, ReconstructionDataId=rid, option={"FilterType": filt})
    aid = astra.algorithm.create(cfg)
    try:
        for k, sino in enumerate(flat):
            astra.data2d.store(sid, sino)
            astra.algorithm.run(aid)
            out[k] = astra.data2d.get(rid)
    finally:
        astra.algorithm.delete(aid)
        astra.data2d.delete([sid, rid])
        astra.projector.delete(pid)
    return torch.from_numpy(out).reshape(*s.shape[:-2], *g.image_shape).to(s.device, s.dtype)


def ramp_filter(sino: torch.Tensor, spacing: float, filter: str = "ram-lak") -> torch.Tensor:
    """Filter along the last axis with the band-limited ramp of sample spacing ``spacing`` (mm) and a window.

    The spatial ramp kernel (h[0] = 1/4, h[odd k] = -1/(πk)², h[even] = 0, over spacing²) is applied in
    the Fourier domain with zero padding to at least twice the length, so the convolution is linear.
    Result = spacing * (h * p), the discrete version of the convolution integral.
    """
    _check_filter(filter)
    n = sino.shape[-1]
    size = 1 << (2 * n - 1).bit_length()
    rdtype = sino.dtype
    k = torch.arange(size, device=sino.device)
    k = torch.minimum(k, size - k)
    h = torch.zeros(size, dtype=torch.float64, device=sino.device)
    h[0] = 0.25
    odd = k % 2 == 1
    h[odd] = -1.0 / (math.pi * k[odd].double()) ** 2
    resp = torch.fft.fft(h).real
    f = torch.fft.fftfreq(size, device=sino.device, dtype=torch.float64)  # cycles per sample, [-0.5, 0.5)
    window = {
        "ram-lak": torch.ones_like(f),
        "shepp-logan": torch.sinc(f),
        "cosine": torch.cos(math.pi * f),
        "hamming": 0.54 + 0.46 * torch.cos(2 * math.pi * f),
        "hann": 0.5 + 0.5 * torch.cos(2 * math.pi * f),
    }[filter]
    resp = (resp * window / spacing).to(rdtype)
    spec = torch.fft.rfft(sino, n=size, dim=-1) * resp[: size // 2 + 1]
    return torch.fft.irfft(spec, n=size, dim=-1)[..., :n]


def parker_weights(g: FanBeamGeometry, gamma: torch.Tensor) -> torch.Tensor | None:
    """Redundancy weights (n_angles, n_det) of a fan-beam scan shorter than 360° (None for a full scan, whose
    every line is measured twice and weighs 1/2).

    From 180° + the fan angle up to 360°, Parker's (Med. Phys. 1982), generalised to any such arc (Wesarg et al.,
    Med. Phys. 2002): with the arc π + 2Δ (Δ ≥ the half fan angle), a view at β from the arc's start and a ray at
    fan angle γ gets sin²(π/4 · β / (Δ - γ)) near the start, sin²(π/4 · (π + 2Δ - β) / (Δ + γ)) near the end and
    1 between, so the two measurements of every line (β, γ) and (β + π + 2γ, -γ) weigh 1 together. A shorter arc
    (limited angle) measures some lines once and some twice: each gets 1 / the number of its measurements within
    the arc (a line measured once weighed 1/2 as in a full scan, halving the image). ``gamma``: the fan angle of
    each detector bin (radians). Each view stands for its share of the arc (``view_weights_rad``), so the arc is
    the sum of the shares and β the middle of each view's share, from ``arc_start_rad``."""
    weights = g.view_weights_rad
    arc = float(weights.sum())
    if arc >= 2 * math.pi - 1e-6:
        return None
    gamma_max = float(gamma.abs().max()) + abs(float(gamma[1] - gamma[0])) / 2 if len(gamma) > 1 else 0.0
    beta = np.mod(g.angles_rad - g.arc_start_rad, 2 * math.pi) + weights / 2  # the middle of each view's share
    beta = torch.as_tensor(beta, dtype=torch.float64, device=gamma.device)[:, None]
    gamma = gamma.to(torch.float64)[None, :]
    if arc < math.pi + 2 * gamma_max - 1e-6:
        twice = torch.remainder(beta + math.pi + 2 * gamma, 2 * math.pi) < arc  # the line's other measurement
        return 1.0 / (1.0 + twice.to(torch.float64))
    delta = (arc - math.pi) / 2
    rise = torch.sin(math.pi / 4 * beta / (delta - gamma)) ** 2
    fall = torch.sin(math.pi / 4 * (math.pi + 2 * delta - beta) / (delta + gamma)) ** 2
    return torch.where(beta < 2 * (delta - gamma), rise, torch.where(beta > math.pi - 2 * gamma, fall, 1.0))


def _fan_fbp(s: torch.Tensor, g: FanBeamGeometry, filt: str) -> torch.Tensor:
    so, od, ds, n, nd = g.source_origin_mm, g.origin_det_mm, g.det_spacing_mm, g.image_size, g.n_det
    dev, dt = s.device, s.dtype
    tau = ds * so / (so + od)  # detector spacing scaled to the rotation axis
    u = (torch.arange(nd, device=dev, dtype=torch.float64) - (nd - 1) / 2) * tau
    pre = (so / torch.sqrt(so * so + u * u)).to(dt)
    # a short scan: each line's two measurements weigh 1 together. A bin at u sees fan angle -atan(u / so) in
    # Parker's sense (ASTRA's detector axis runs against the rotation; the other sign leaves 16 % ripples on a disc)
    redundancy = parker_weights(g, -torch.atan(u / so))
    if redundancy is None:
        q = 0.5 * ramp_filter(s * pre, tau, filt)  # 1/2: every ray is measured twice in a 360° scan
    else:
        q = ramp_filter(s * pre * redundancy.to(dev, dt), tau, filt)
    batch = s.shape[:-2]
    q = torch.nn.functional.pad(q.reshape(-1, g.n_angles, nd), (1, 1))  # zero bins outside the detector
    c = (torch.arange(n, device=dev, dtype=torch.float64) - (n - 1) / 2) * g.pixel_size_mm
    px, py = c[None, :].expand(n, n).reshape(-1), (-c)[:, None].expand(n, n).reshape(-1)
    _, proj = g.astra_geometries()
    vec = torch.as_tensor(astra.functions.geom_2vec(proj)["Vectors"], dtype=torch.float64, device=dev)
    out = torch.zeros(q.shape[0], n * n, dtype=dt, device=dev)
    share = torch.as_tensor(g.view_weights_rad, dtype=torch.float64, device=dev)  # each view's quadrature weight
    chunk = max(1, (1 << 18) // (q.shape[0] * n * n))  # views per step, bounding the gathered block
    for v0 in range(0, g.n_angles, chunk):
        views = torch.arange(v0, min(v0 + chunk, g.n_angles), device=dev)
        sx, sy = vec[views, 0:1], vec[views, 1:2]
        dx, dy = px - sx, py - sy  # (views, pixels)
        along = -(dx * sx + dy * sy) / so  # distance from the source along the central ray
        lateral = (dx * vec[views, 4:5] + dy * vec[views, 5:6]) / ds
        idx = (lateral * (so + od) / along / ds + (nd - 1) / 2 + 1).clamp(0, nd + 1)
        i0 = idx.floor().clamp(max=nd)
        w = (idx - i0).to(dt)
        flat = (i0.long() + views[:, None] * (nd + 2)).reshape(-1)
        q0, q1 = (q.reshape(q.shape[0], -1).index_select(1, flat + k).reshape(-1, *w.shape) for k in (0, 1))
        weight = ((so / along) ** 2 * share[views, None]).to(dt)
        out += ((q0 + (q1 - q0) * w) * weight).sum(dim=1)  # linear interpolation on the detector
    return out.reshape(*batch, n, n)
