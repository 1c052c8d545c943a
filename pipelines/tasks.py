"""simulate / reconstruct / evaluate: config -> objects -> run -> files. Also the Python API.

Units and conventions
---------------------
* Solvers always work in the **model units** of an intensity map (the prior's, or the config's
  ``intensity`` section without a prior: CT -1000..1000 HU -> 0..1, MRI 0..1 -> 0..1); the volume is
  written back in physical units (HU for CT, normalised magnitude for MRI).
* CT measurements are line integrals of the linear attenuation mu (dimensionless, ``-log(I/I0)``), with
  mu = MU_WATER * (1 + HU / 1000), MU_WATER = 0.02 / mm. The solver's operator is the projector in
  **pixel units** (a unit-area pixel integrates to its chord length in pixels), as in DiffusionMBIR, so the
  paper's lam/rho keep their meaning. With HU = to_physical(x) affine in x, the data the solver sees are
      y_model = (y - b * A(1)) / a,   a = phi(to_physical(1)) - phi(to_physical(0)),   b = phi(to_physical(0)),
  where phi(HU) = pixel_size_mm * mu(HU) is mu per pixel; then A x = y_model exactly (``data_term``).
* MRI: k-space of the image under a centred orthonormal FFT; phi = identity, same formula.
  Measured k-space (fastMRI HDF5) is scaled so that the zero-filled magnitude's 99.9th percentile is 1.
* Simulation avoids the inverse crime: CT projects mu sampled on a grid ``simulation.upsample`` times finer
  (same field of view, same detector) with the operator of that finer geometry; MRI takes the centred FFT of
  the finer image and keeps the central k-space (divided by the upsampling factor, the ratio of the
  orthonormal FFT scalings), so the reconstruction grid's FFT never produced the data.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter, map_coordinates

from medrecon.errors import InputError, MedreconError
from medrecon.linop import FiniteDifference, LinearOperator
from medrecon.metrics import per_axis_metrics
from medrecon.priors.base import IntensityMap
from medrecon.volume import Volume

from .config import Config, load_config, resolve_prior_path
from .outputs import Timings, peak_memory, preview_png, report, write_json

MU_WATER = 0.02  # 1/mm, linear attenuation of water (about 70 keV)
DEFAULT_SIZE = {"ct": 256, "mri": 320}
MEASUREMENT_SUFFIXES = (".npz", ".h5", ".hdf5")


def _api(module: str, name: str):
    """A name from a sibling module, or a clear error when that piece is not installed yet."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise MedreconError(f"{module}.{name} is not available ({e}); this medrecon build is incomplete") from None


# ============================================================================ measurements
@dataclass
class Measurement:
    """Measured data plus everything needed to build its operator and place the result in space.

    CT: ``data`` (Z, n_angles, n_det) line integrals, ``geometry`` the geometry dict (mm).
    MRI: ``data`` complex k-space (Z, [C,] H, W) for 2D, ([C,] Z, H, W) for 3D, ``mask``, ``coil_maps``.
    ``grid`` is the reconstruction grid: a Volume of zeros with its spacing/origin/direction.
    """

    modality: str
    data: np.ndarray
    grid: Volume
    geometry: dict | None = None
    mask: np.ndarray | None = None
    coil_maps: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def save(self, path: Path) -> None:
        g = self.grid
        arrays = {"format": np.array("medrecon-measurements-1"), "modality": np.array(self.modality),
                  "data": self.data, "info": np.array(json.dumps(self.info)),
                  "grid": np.array(json.dumps({"shape": list(g.shape), "spacing": list(g.spacing),
                                               "origin": list(g.origin), "direction": g.direction.tolist()}))}
        if self.geometry is not None:
            arrays["geometry"] = np.array(json.dumps(self.geometry))
        for k in ("mask", "coil_maps"):
            if getattr(self, k) is not None:
                arrays[k] = getattr(self, k)
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: Path) -> "Measurement":
        path = Path(path)
        if path.suffix in (".h5", ".hdf5"):
            return _load_fastmri(path)
        try:
            z = np.load(path, allow_pickle=False)
            if "format" not in z or "data" not in z:
                raise InputError(f"{path}: not a medrecon measurements file (no 'format'/'data' arrays)")
            g = json.loads(str(z["grid"]))
            grid = Volume(np.zeros(g["shape"], np.float32), g["spacing"], g["origin"], np.array(g["direction"]))
            return cls(str(z["modality"]), z["data"], grid,
                       json.loads(str(z["geometry"])) if "geometry" in z else None,
                       z["mask"] if "mask" in z else None, z["coil_maps"] if "coil_maps" in z else None,
                       json.loads(str(z["info"])))
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"{path}: cannot read measurements ({e})") from None


def _load_fastmri(path: Path) -> Measurement:
    """fastMRI-style HDF5: ``kspace`` (slices, [coils,] H, W) complex, optional ``sens_maps``/``coil_maps``
    of the same layout and an optional ``mask`` (W,) or (H, W); without a mask, the non-zero columns."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            if "kspace" not in f:
                raise InputError(f"{path}: no 'kspace' dataset (fastMRI-style files hold kspace "
                                 f"(slices, [coils,] H, W))")
            k = np.asarray(f["kspace"][()]).astype(np.complex64)
            maps = next((np.asarray(f[n][()]).astype(np.complex64) for n in ("sens_maps", "coil_maps") if n in f),
                        None)
            mask = np.asarray(f["mask"][()]) if "mask" in f else None
    except OSError as e:
        raise InputError(f"{path}: cannot read HDF5 ({e})") from None
    if k.ndim not in (3, 4):
        raise InputError(f"{path}: kspace must be (slices, [coils,] H, W), got shape {k.shape}")
    if mask is None:
        mask = (np.abs(k).reshape(-1, k.shape[-1]).sum(0) > 0)
    mask = np.asarray(mask, np.float32)
    if mask.ndim == 1:
        mask = np.broadcast_to(mask, k.shape[-2:]).copy()
    z = k.shape[0]
    grid = Volume(np.zeros((z, *k.shape[-2:]), np.float32))
    return Measurement("mri", k, grid, None, mask, maps, {"source": str(path), "layout": "2d",
                                                         "units": "measured k-space, rescaled at load"})


def is_measurement_file(path: str | Path) -> bool:
    p = Path(path)
    return p.is_file() and p.suffix.lower() in MEASUREMENT_SUFFIXES


# ========================================================================= resampling
def resample_inplane(vol: Volume, size: int, pixel_size: float | None = None, order: int = 1) -> Volume:
    """Every axial slice resampled onto size x size pixels of ``pixel_size`` mm, centred on the slice centre.

    ``pixel_size=None`` fits the larger in-plane field of view; the rest is padded with the volume minimum
    (air for CT). Downsampling is Gaussian-prefiltered against aliasing. Slices (z) are kept as they are.
    """
    sx, sy, sz = vol.spacing
    nz, ny, nx = vol.shape
    if pixel_size is None:
        pixel_size = max(nx * sx, ny * sy) / size
    off = (np.arange(size) - (size - 1) / 2) * pixel_size
    cy, cx = off / sy + (ny - 1) / 2, off / sx + (nx - 1) / 2
    data = vol.data
    sig = (0.0, max(0.0, (pixel_size / sy - 1) / 2), max(0.0, (pixel_size / sx - 1) / 2))
    if sig[1] > 0 or sig[2] > 0:
        data = gaussian_filter(data, sig, mode="nearest")
    yy, xx = np.meshgrid(cy, cx, indexing="ij")
    pad = float(vol.data.min())
    out = np.stack([map_coordinates(s, [yy, xx], order=order, mode="constant", cval=pad) for s in data])
    origin = vol.world_lps([cx[0], cy[0], 0.0])
    return Volume(out, (pixel_size, pixel_size, sz), tuple(origin), vol.direction, dict(vol.meta))


def hu_to_mu(hu: np.ndarray) -> np.ndarray:
    """Linear attenuation (1/mm) from HU, clamped at 0 (nothing attenuates less than vacuum)."""
    return np.maximum(MU_WATER * (1.0 + hu / 1000.0), 0.0)


# ============================================================================== CT physics
def ct_geometry(cfg: Config, size: int, pixel_size: float, like=None):
    """The configured CT geometry for ``size``^2 pixels of ``pixel_size`` mm; ``like``: copy its detector
    and distances (the finer simulation grid sees the same detector)."""
    c = cfg.ct
    if like is not None:
        kw = {k: v for k, v in like.to_dict().items() if k not in ("type", "image_size", "angles_deg")}
        kw["pixel_size_mm"] = pixel_size
    else:
        kw = {"pixel_size_mm": pixel_size, "det_spacing_mm": c.detector.spacing or pixel_size,
              "n_det": c.detector.n_det or (math.ceil(math.sqrt(2) * size) if c.beam == "parallel" else None)}
        if c.beam == "fan":
            kw.update(source_origin_mm=c.fan.source_distance, origin_det_mm=c.fan.detector_distance)
    cls = _api("operators.ct", "FanBeamGeometry" if c.beam == "fan" else "ParallelBeamGeometry")
    if c.n_views is not None:
        return cls.sparse_view(size, c.n_views, **kw)
    return cls.limited_angle(size, c.wedge_deg, **kw)


def ct_projector(geometry) -> LinearOperator:
    """Projector in pixel units: (1 / pixel_size) times the projector of the geometry (line integrals in mm)."""
    P = _api("operators.ct", "SliceProjector")(geometry)
    return P * (1.0 / geometry.pixel_size_mm) if geometry.pixel_size_mm != 1.0 else P


def ct_noise(p: np.ndarray, cfg: Config, rng: np.random.Generator) -> np.ndarray:
    """Noisy line integrals: Poisson counts with incident I0 (zero counts -> 0.5 before the log) or Gaussian."""
    n = cfg.noise
    if n.kind == "poisson":
        counts = rng.poisson(n.I0 * np.exp(-p)).astype(np.float64)
        return -np.log(np.maximum(counts, 0.5) / n.I0)
    if n.kind == "gaussian":
        return p + n.sigma * rng.standard_normal(p.shape)
    return p


def simulate_ct(cfg: Config, src: Volume, size: int) -> tuple[Volume, Measurement]:
    ref = resample_inplane(src, size, cfg.ct.pixel_size)
    s = ref.spacing[0]
    geom = ct_geometry(cfg, size, s)
    f = cfg.simulation.upsample
    fine = resample_inplane(src, size * f, s / f) if f > 1 else ref
    fine_geom = ct_geometry(cfg, size * f, s / f, like=geom)
    mu_pix = torch.from_numpy(hu_to_mu(fine.data.astype(np.float64)) * (s / f))  # mu per fine pixel
    p = ct_projector(fine_geom).forward(mu_pix).numpy()
    y = ct_noise(p, cfg, np.random.default_rng(cfg.noise.seed)).astype(np.float32)
    info = {"units": "line integrals of mu (-log(I/I0)); mu = MU_WATER * (1 + HU/1000)", "mu_water_per_mm": MU_WATER,
            "noise": cfg.noise.model_dump(), "upsample": f, "reference_unit": "HU"}
    return ref, Measurement("ct", y, ref.with_data(np.zeros(ref.shape)), geom.to_dict(), info=info)


# ============================================================================= MRI physics
def fft_c(x: torch.Tensor, dims) -> torch.Tensor:
    """Centred orthonormal FFT over ``dims``."""
    x = torch.fft.ifftshift(x, dim=dims)
    return torch.fft.fftshift(torch.fft.fftn(x, dim=dims, norm="ortho"), dim=dims)


def synthetic_coil_maps(n_coils: int, shape: tuple[int, int]) -> np.ndarray:
    """Smooth complex coil sensitivities (C, H, W) around the field of view, sum of |S|^2 = 1 everywhere.

    Coils sit on a circle of radius 1.5 (the field of view is [-1, 1]^2), Gaussian fall-off of width 1, with
    a phase that turns with the coil angle. Evaluated on pixel centres, so grids of any size agree.
    """
    h, w = shape
    y = (np.arange(h) - (h - 1) / 2) / (h / 2)
    x = (np.arange(w) - (w - 1) / 2) / (w / 2)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    maps = []
    for c in range(n_coils):
        t = 2 * np.pi * c / n_coils
        d2 = (yy - 1.5 * np.sin(t)) ** 2 + (xx - 1.5 * np.cos(t)) ** 2
        maps.append(np.exp(-d2 / 2.0) * np.exp(1j * (t + 0.5 * (xx * np.cos(t) + yy * np.sin(t)))))
    maps = np.stack(maps)
    return (maps / np.sqrt((np.abs(maps) ** 2).sum(0, keepdims=True))).astype(np.complex64)


def mri_mask(cfg: Config, shape: tuple[int, ...]) -> np.ndarray:
    """The configured mask, broadcastable to k-space of images of ``shape`` (operators.masks conventions)."""
    m = cfg.mri.mask
    return _api("operators.masks", "make_mask")(m.kind, shape, m.acceleration, m.center_fraction, m.seed)


class _PerSlice(LinearOperator):
    """Slice z of a (Z, H, W) volume through its own operator ops[z] (per-slice coil maps)."""

    def __init__(self, ops: list[LinearOperator]):
        super().__init__((len(ops), *ops[0].in_shape), (len(ops), *ops[0].out_shape))
        self.ops = ops

    def _stack(self, t, n_in, fn):
        axis = t.ndim - n_in - 1
        return torch.stack([fn(op, t.select(axis, z)) for z, op in enumerate(self.ops)], dim=axis)

    def _forward(self, x):
        return self._stack(x, len(self.ops[0].in_shape), lambda op, s: op.forward(s))

    def _adjoint(self, y):
        return self._stack(y, len(self.ops[0].out_shape), lambda op, s: op.adjoint(s))


def mri_operator(meas: Measurement, coil_maps: str = "given") -> LinearOperator:
    """The Cartesian MRI operator of a measurement, real-input (real-valued priors).

    2D: one (H, W) operator for all slices, or one per slice when the coil maps differ per slice
    ((Z, C, H, W), e.g. fastMRI ``sens_maps`` or maps estimated from each slice's centre).
    3D: one (Z, Y, X) operator; coil maps (C, Z, Y, X) or (C, Y, X) (the same on every slice).
    """
    cart = _api("operators.mri", "CartesianMRI")
    three_d = meas.info.get("layout") == "3d"
    k = torch.from_numpy(np.asarray(meas.data))
    multi = k.ndim == 4
    maps = None if meas.coil_maps is None else torch.from_numpy(np.asarray(meas.coil_maps))
    if multi and (maps is None or coil_maps == "estimate"):
        maps = _api("operators.mri", "estimate_coil_maps")(k, ndim=3 if three_d else 2)
    if not multi:
        maps = None
    shape = meas.grid.shape if three_d else meas.grid.shape[1:]
    if maps is not None and three_d and maps.ndim == 3:
        maps = maps[:, None].expand(maps.shape[0], shape[0], *maps.shape[1:])
    if maps is not None and not three_d and maps.ndim == 4:
        return _PerSlice([cart(shape, meas.mask, coil_maps=m, real_input=True) for m in maps])
    return cart(shape, meas.mask, coil_maps=maps, real_input=True)


def simulate_mri(cfg: Config, src: Volume, size: int) -> tuple[Volume, Measurement]:
    ref = resample_inplane(src, size, cfg.mri.pixel_size)
    scale = float(np.abs(ref.data).max()) or 1.0
    ref = ref.with_data(ref.data / scale)
    f = cfg.simulation.upsample
    s = ref.spacing[0]
    fine = (resample_inplane(src, size * f, s / f).data / scale) if f > 1 else ref.data
    three_d = cfg.mri.mode == "3d"
    img = torch.from_numpy(fine.astype(np.float32)).to(torch.complex64)  # (Z, H, W)
    maps = None
    if cfg.mri.coils == "multi":
        maps = synthetic_coil_maps(cfg.mri.n_coils, (size, size))
        maps_fine = torch.from_numpy(synthetic_coil_maps(cfg.mri.n_coils, (size * f, size * f)))
        img = maps_fine[None] * img[:, None] if not three_d else maps_fine[:, None] * img[None]
    k = fft_c(img, (-3, -2, -1) if three_d else (-2, -1))
    lo = (size * f - size) // 2
    k = k[..., lo:lo + size, lo:lo + size] / f
    mask = np.asarray(mri_mask(cfg, ref.shape if three_d else (size, size)), bool)
    g = torch.Generator().manual_seed(cfg.noise.seed)
    if cfg.noise.kind == "complex_gaussian" and cfg.noise.sigma > 0:
        k = k + cfg.noise.sigma * torch.complex(torch.randn(k.shape, generator=g), torch.randn(k.shape, generator=g))
    y = (k * torch.from_numpy(mask)).numpy().astype(np.complex64)
    info = {"units": "k-space of the normalised magnitude (centred orthonormal FFT)", "scale": scale,
            "noise": cfg.noise.model_dump(), "upsample": f, "layout": cfg.mri.mode, "reference_unit": "normalised"}
    return ref, Measurement("mri", y, ref.with_data(np.zeros(ref.shape)), None, mask, maps, info)


# ====================================================================== data term & solve
def data_term(meas: Measurement, imap: IntensityMap, device, coil_maps: str = "given"
              ) -> tuple[LinearOperator, torch.Tensor, object]:
    """Operator and data in model units (see the module docstring); also the CT geometry (or None)."""
    if meas.modality == "ct":
        geom = _api("operators.ct", "geometry_from_dict")(meas.geometry)
        A = ct_projector(geom)
        px = geom.pixel_size_mm

        def phi(u):
            return px * MU_WATER * (1.0 + u / 1000.0)
        y = torch.from_numpy(np.asarray(meas.data, np.float32))
    else:
        geom, A = None, mri_operator(meas, coil_maps)

        def phi(u):
            return u
        y = torch.from_numpy(np.asarray(meas.data, np.complex64))
    b = phi(imap.to_physical(0.0))
    a = phi(imap.to_physical(1.0)) - b
    y = y.to(device)
    ones = torch.ones(meas.grid.shape, device=device)
    y_model = (y - b * A.forward(ones).to(y.dtype)) / a
    return A, y_model, geom


def _measured_mri_scale(A: LinearOperator, y: torch.Tensor) -> float:
    """Normalisation of measured k-space: the zero-filled image's 99.9th percentile becomes 1."""
    zf = A.adjoint(y).abs().flatten()
    v = float(torch.quantile(zf[:: max(1, zf.numel() // 1_000_000)].float(), 0.999))
    return v if v > 0 else 1.0


def choose_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("solver.device: cuda requested but no CUDA device is available (use auto or cpu)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_configured_prior(cfg: Config, device):
    if not cfg.solver.needs_prior:
        return None
    path = resolve_prior_path(cfg.prior.path, Path(cfg.source).parent)
    return _api("medrecon.priors", "load_prior")(path, device=device)


def run_solver(cfg: Config, A: LinearOperator, y: torch.Tensor, shape, geom, prior, imap: IntensityMap,
               progress: bool = False, snapshot=None, counters: dict | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """(reconstruction, std or None, network evaluations per slice), all in model units. ``counters``, when
    given, receives ``backward_passes_per_slice`` (backpropagations through the network; mcg and dps)."""
    s = cfg.solver
    # Bounds in model units. `nonneg` means "not below the intensity map's physical minimum" (CT: mu >= 0 at
    # -1000 HU), which is model_min, not model 0 (a [-1, 1] prior has model 0 at the window's centre).
    lo, hi = (-math.inf, math.inf) if s.clip is None else (float(imap.to_model(s.clip[0])), float(imap.to_model(s.clip[1])))
    if s.nonneg:
        lo = max(lo, imap.model_min)
    clip = None if (lo, hi) == (-math.inf, math.inf) else (lo, hi)
    lam, rho = s.admm.lam, s.admm.rho
    if s.name == "fbp":
        x = _api("operators.ct", "fbp")(y, geom, cfg.ct.fbp_filter)
        return torch.as_tensor(x) * geom.pixel_size_mm, None, 0  # FBP inverts the mm projector
    if s.name == "zero_filled":
        return A.adjoint(y), None, 0
    if s.name in ("cgls", "sirt"):
        fn = _api("medrecon.solvers.classical", s.name)
        return fn(A, y, n_iter=s.steps, x0=torch.zeros(shape, device=y.device)), None, 0
    if s.name == "admm_tv":
        from medrecon.solvers.admm import ADMMTV
        D = FiniteDifference(shape, axes=(0,) if s.tv == "z" else (0, 1, 2))
        dc = ADMMTV(A, y, D, lam, rho, s.n_cg, clip=clip)
        return dc.solve(torch.zeros(shape, device=y.device), s.steps), None, 0
    diff = importlib.import_module("medrecon.solvers.diffusion")
    if s.name in ("projection", "mcg", "dps"):
        cls, extra = _guided_solver(s, A, y, shape, geom, imap)
    else:
        cls = diff.DiffusionMBIR if s.name in ("diffusion_mbir", "slicewise_mbir") else diff.FastSampler
        extra = {"snr": s.snr} if cls is diff.DiffusionMBIR else {"eta": s.eta}
    solver = cls(prior, A, y, n_steps=s.steps, lam=0.0 if s.name.startswith("slicewise") else lam, rho=rho,
                 n_cg=s.n_cg, clip=clip, chunk_size=s.chunk_size, seed=s.seed,
                 progress=progress, snapshot=snapshot, snapshot_every=cfg.outputs.snapshots_every, **extra)
    if s.samples > 1:
        mean, std = diff.sample_posterior(solver, s.samples)
        out = mean, std, solver.nfe * s.samples
    else:
        out = solver.run(), None, solver.nfe
    if counters is not None:
        counters["backward_passes_per_slice"] = solver.backward_passes * s.samples
    return out


def _guided_solver(s, A: LinearOperator, y: torch.Tensor, shape, geom, imap: IntensityMap):
    """Class and keyword arguments of the projection / mcg / dps baselines (medrecon.solvers.guidance).
    DPS's Poisson likelihood on CT: weights proportional to the detected counts I ~ exp(-line integral), the
    inverse variances of the log data, from y in model units (y_line = a y + b A(1), see data_term), mean 1."""
    guid = importlib.import_module("medrecon.solvers.guidance")
    if s.name == "projection":
        return guid.ProjectionSampler, {"snr": s.snr, "lambda_proj": s.lambda_proj}
    if s.name == "mcg":
        return guid.MCGSampler, {"snr": s.snr, "lambda_proj": s.lambda_proj, "alpha": s.zeta}
    extra = {"zeta": s.zeta}
    if s.likelihood == "poisson":
        def phi(u):
            return geom.pixel_size_mm * MU_WATER * (1.0 + u / 1000.0)
        b = phi(imap.to_physical(0.0))
        a = phi(imap.to_physical(1.0)) - b
        line = a * y + b * A.forward(torch.ones(tuple(shape), device=y.device))
        w = torch.exp(-(line - line.min()))
        extra.update(likelihood="poisson", weights=w / w.mean())
    return guid.DPSSampler, extra


# ================================================================================ the API
@dataclass
class RunResult:
    output: Path
    recon: Volume
    report: dict


def _prepare(config, overrides) -> Config:
    return load_config(config, list(overrides)).resolved()


def _image_size(cfg: Config, prior) -> int:
    want = cfg.image_size
    have = getattr(prior, "image_size", None) if prior is not None else None
    if want is not None and have is not None and want != have:
        raise InputError(f"{cfg.modality}.image_size: {want}, but prior {prior.name} was trained at {have}x{have} "
                         f"(set {cfg.modality}.image_size={have} or leave it null)")
    return want or have or DEFAULT_SIZE[cfg.modality]


def _check_grid(cfg: Config, prior, meas: Measurement) -> None:
    n = meas.grid.shape[-1]
    if prior is not None and prior.image_size is not None and meas.grid.shape[-2:] != (prior.image_size,) * 2:
        raise InputError(f"the measurements are on a {meas.grid.shape[-2]}x{n} grid but prior {prior.name} was "
                         f"trained at {prior.image_size}x{prior.image_size}: use a matching prior or a classical "
                         f"solver (--set solver.name=admm_tv)")


@contextmanager
def _atomic(output, overwrite, protect=()):
    """medrecon.io.atomic_path for an output folder. A previous medrecon output (it holds report.json and
    sub-folders, which atomic_path will not replace) is moved aside first and restored if the run fails."""
    atomic_path = _api("medrecon.io.atomic", "atomic_path")
    out, aside = Path(output), None
    if overwrite and (out / "report.json").is_file():
        aside = out.with_name(f".medrecon-tmp-old-{uuid.uuid4().hex[:8]}-{out.name}")
        os.rename(out, aside)
    try:
        with atomic_path(out, overwrite, protect=protect) as tmp:
            yield tmp
    except BaseException:
        if aside is not None and not out.exists():
            os.rename(aside, out)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def simulate_volume(cfg: Config, src: Volume, size: int) -> tuple[Volume, Measurement]:
    """Reference volume (reconstruction grid, physical units) and simulated measurement."""
    if cfg.modality == "ct":
        ref, meas = simulate_ct(cfg, src, size)
    else:
        ref, meas = simulate_mri(cfg, src, size)
    meas.info["source"] = str(src.meta.get("source", ""))
    return ref, meas


def _write_simulation(folder: Path, ref: Volume, meas: Measurement) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    meas.save(folder / "measurements.npz")
    _api("medrecon.io", "write_nifti")(ref, folder / "reference.nii.gz")


def simulate(config, input, output, overrides=(), overwrite: bool = False, series: str | None = None) -> Path:
    """Simulate measurements of a ground-truth volume; writes OUTPUT/measurements.npz and reference.nii.gz."""
    cfg = load_config(config, list(overrides), check_files=False)
    cfg = _prepare(config, overrides) if cfg.image_size is None else cfg.resolved()  # the prior sets the size
    prior = load_configured_prior(cfg, "cpu") if cfg.image_size is None else None
    src = _api("medrecon.io", "read_volume")(input, series=series)
    ref, meas = simulate_volume(cfg, src, _image_size(cfg, prior))
    with _atomic(output, overwrite, protect=[input]) as tmp:
        _write_simulation(Path(tmp), ref, meas)
    return Path(output)


def _source_is_dicom(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() == ".dcm"


def reconstruct(config, input, output, overrides=(), overwrite: bool = False, series: str | None = None,
                progress: bool = False) -> RunResult:
    """Reconstruct a volume (simulated first, into OUTPUT/simulation/) or a measurements file.

    Writes recon.nii.gz, dicom/ (DICOM source only), preview.png, report.json and, with samples > 1,
    std.nii.gz, all into a temporary folder renamed to OUTPUT at the end.
    """
    cfg = _prepare(config, overrides)
    inp, out = Path(input), Path(output)
    if not inp.exists():
        raise InputError(f"input not found: {inp} (give a DICOM folder, a NIfTI file or a measurements file)")
    if out.exists() and not overwrite:
        raise InputError(f"output exists: {out} (use --overwrite to replace it)")
    t = Timings()
    device = choose_device(cfg.solver.device)
    with t("load_prior"):
        prior = load_configured_prior(cfg, device)
    imap = prior.intensity if prior is not None and prior.intensity is not None else \
        IntensityMap(**cfg.intensity.model_dump())
    src = None
    with _atomic(out, overwrite, protect=[inp]) as tmp:
        tmp = Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        if is_measurement_file(inp):
            with t("read"):
                meas = Measurement.load(inp)
            if meas.modality != cfg.modality:
                raise InputError(f"{inp}: holds {meas.modality} measurements but the config is for {cfg.modality}")
            _check_grid(cfg, prior, meas)
        else:
            with t("read"):
                src = _api("medrecon.io", "read_volume")(inp, series=series)
            with t("simulate"):
                ref, meas = simulate_volume(cfg, src, _image_size(cfg, prior))
                _write_simulation(tmp / "simulation", ref, meas)
        with t("setup"):
            coil_maps = cfg.mri.coil_maps if cfg.mri else "given"
            scale = 1.0
            if meas.info.get("units", "").startswith("measured"):
                scale = _measured_mri_scale(mri_operator(meas, coil_maps), torch.from_numpy(meas.data))
                meas.data = meas.data / scale
            A, y, geom = data_term(meas, imap, device, coil_maps)
        with t("solve"):
            counters: dict = {}
            x, std, nfe = run_solver(cfg, A, y, meas.grid.shape, geom, prior, imap, progress,
                                     _snapshot_writer(tmp / "snapshots", meas.grid, imap)
                                     if cfg.outputs.snapshots_every else None, counters=counters)
        with t("write"):
            recon = meas.grid.with_data(imap.to_physical(x.real.float().cpu().numpy()), description="medrecon")
            files = _write_results(cfg, tmp, recon, std, imap, src if src is not None and _source_is_dicom(inp)
                                   else None)
            rep = report(_as_run(cfg, meas), input=str(inp), output=str(out), device=str(device),
                         prior=None if prior is None else {"name": prior.name, "sha256": getattr(prior, "sha256", None),
                                                            "image_size": prior.image_size},
                         intensity={"physical_min": imap.physical_min, "physical_max": imap.physical_max,
                                    "model_min": imap.model_min, "model_max": imap.model_max, "unit": imap.unit},
                         seed=cfg.solver.seed, network_evaluations_per_slice=int(nfe),
                         backward_passes_per_slice=int(counters.get("backward_passes_per_slice", 0)),
                         measured_data_scale=scale, files=files)
        rep["timings_s"] = t.as_dict()
        rep["peak_memory"] = peak_memory()
        write_json(tmp / "report.json", rep)
    return RunResult(out, recon, rep)


def _snapshot_writer(folder: Path, grid: Volume, imap: IntensityMap):
    """Callback for the diffusion solvers: the current estimate as snapshots/step_NNNNN.nii.gz (physical units);
    posterior samples after the first as sampleK_step_NNNNN.nii.gz."""
    write_nifti = _api("medrecon.io", "write_nifti")
    state = {"sample": 0, "last": 0}

    def snap(step: int, est: torch.Tensor) -> None:
        if step <= state["last"]:
            state["sample"] += 1
        state["last"] = step
        prefix = f"sample{state['sample']}_" if state["sample"] else ""
        folder.mkdir(exist_ok=True)
        write_nifti(grid.with_data(imap.to_physical(est.float().cpu().numpy())),
                    folder / f"{prefix}step_{step:05d}.nii.gz")
    return snap


def _as_run(cfg: Config, meas: Measurement) -> dict:
    d = cfg.to_dict()
    d[cfg.modality]["image_size"] = int(meas.grid.shape[-1])
    return d


def _write_results(cfg: Config, folder: Path, recon: Volume, std, imap: IntensityMap, dicom_src: Volume | None):
    io = importlib.import_module("medrecon.io")
    files = ["recon.nii.gz"]
    io.write_nifti(recon, folder / "recon.nii.gz")
    if std is not None:
        io.write_nifti(recon.with_data(std.float().cpu().numpy() / imap.scale), folder / "std.nii.gz")
        files.append("std.nii.gz")
    if cfg.outputs.dicom and dicom_src is not None:
        io.write_dicom_series(recon, folder / "dicom", series_description=f"medrecon {cfg.task} {cfg.solver.name}",
                              source_meta=dicom_src.meta.get("dicom"))
        files.append("dicom/")
    if cfg.outputs.preview:
        preview_png(recon, folder / "preview.png", cfg.outputs.window)
        files.append("preview.png")
    return files


def evaluate(reference, input, output=None, data_range: float | None = None) -> dict:
    """PSNR/SSIM per plane of ``input`` against ``reference`` (volumes or paths); optionally written as JSON."""
    read = None
    vols = []
    for what, v in (("reference", reference), ("input", input)):
        if not isinstance(v, Volume):
            read = read or _api("medrecon.io", "read_volume")
            v = read(v)
        vols.append(v)
    ref, rec = vols
    if ref.shape != rec.shape:
        raise InputError(f"reference shape {ref.shape} and input shape {rec.shape} differ (evaluate needs the "
                         f"same grid: compare against OUTPUT/simulation/reference.nii.gz)")
    try:
        m = per_axis_metrics(ref.data, rec.data, data_range)
    except ValueError as e:
        raise InputError(str(e)) from None
    if output is not None:
        write_json(Path(output), m)
    return m


__all__ = ["Measurement", "RunResult", "evaluate", "reconstruct", "resample_inplane", "simulate",
           "simulate_volume"]
