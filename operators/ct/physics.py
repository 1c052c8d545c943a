"""CT physics, one home per rule: attenuation from HU, transmission noise, the pixel-unit projector, the
configured geometry, DPS Poisson weights.

Measurements are line integrals of the linear attenuation mu (dimensionless, ``-log(I/I0)``), with
mu = MU_WATER * (1 + HU / 1000), MU_WATER = 0.02 / mm (water at about 70 keV).
"""
from __future__ import annotations

import numpy as np
import torch

from medrecon.errors import InputError
from medrecon.linop import LinearOperator

from .geometry import FanBeamGeometry, ParallelBeamGeometry
from .projector import SliceProjector

MU_WATER = 0.02  # 1/mm, linear attenuation of water (about 70 keV)
NOISE_KINDS = ("poisson", "gaussian", "none")


def attenuation_per_pixel(hu, pixel_size_mm: float):
    """mu per pixel, pixel_size_mm * MU_WATER * (1 + HU/1000): affine in HU and unclamped (floats, arrays,
    tensors), so it maps model units to the data of the pixel-unit projector exactly."""
    return pixel_size_mm * MU_WATER * (1.0 + hu / 1000.0)


def hu_to_mu(hu: np.ndarray) -> np.ndarray:
    """Linear attenuation (1/mm) from HU, clamped at 0 (nothing attenuates less than vacuum)."""
    return np.maximum(attenuation_per_pixel(hu, 1.0), 0.0)


#: a line integral -log(I/I0) no body reaches: 100 is 5 m of water, or 1.25 m of 3000 HU bone (mu 0.08/mm); a measured
#: one stays under ln(I0), below 30 for any detector (I0 < 1e13), and a simulation of a 780 mm disc of such bone
#: without noise reaches 64
MAX_LINE_INTEGRAL = 100.0
#: how far below 0 a sinogram's median may lie (an air calibration slightly off); noise alone keeps it >= 0
NEGATIVE_BEYOND_NOISE = 0.1
#: transmitted fractions I/I0 are about 1 in air and lower through the body, line integrals -log(I/I0) about 0 in air
#: and higher through it. I/I0 <= 1 but for noise: its 99th percentile stays under TRANSMISSION_MAX down to 50 counts
#: a bin (1.32 there), and line integrals through more than 75 mm of water exceed it
TRANSMISSION_MAX = 1.5
#: how far from 1 the air of I/I0 may lie (0.98-1.05 in simulations from 50 counts a bin up; an I0 a few % off)
AIR_TOLERANCE = 0.1
#: the detector bins taken for air at each end of a view, and for the centre, as fractions of the bins
EDGE_FRACTION, CENTRE_FRACTION = 0.02, 0.1


def line_integral_checks(p) -> tuple[str | None, str | None]:
    """Why the sinogram ``p`` cannot be line integrals -log(I/I0) (None if it can), and a warning where it looks like
    transmitted fractions I/I0 (None if not), from one sample of its values. Refused: its 99th percentile above
    MAX_LINE_INTEGRAL (detector counts or intensities); mostly negative: its median below -NEGATIVE_BEYOND_NOISE,
    or its lowest 1 % over 3 times further below 0 than its highest 1 % reach above (log(I/I0) without its minus,
    an offset subtracted). Noise cannot do either: zero-median noise on line integrals >= 0 puts at most half the
    values below 0, and reaches no further below 0 than above it (Poisson noise even less far); a few negative
    values (a bad bin) pass. I/I0 is warned of, not refused (``_transmission``)."""
    x = _finite_sample(p)
    if not x.size:
        return None, None
    lo, mid, hi = (float(v) for v in np.percentile(x, [1, 50, 99]))
    if hi > MAX_LINE_INTEGRAL:
        return (f"the sinogram reaches {hi:.4g} (99th percentile), beyond any line integral (none reaches "
                f"{MAX_LINE_INTEGRAL:g}, 5 m of water): it looks like detector counts or intensities: give the line "
                "integrals -log(I/I0), I0 the counts without the object"), None
    if mid < -NEGATIVE_BEYOND_NOISE or lo < -3 * max(hi, NEGATIVE_BEYOND_NOISE):
        return (f"half the sinogram is below {mid:.3g} and its lowest 1 % reaches {lo:.3g} (its highest 1 % "
                f"{hi:.3g}), but line integrals -log(I/I0) are >= 0 up to noise: log(I/I0) without its minus sign, "
                "or an offset subtracted? give -log(I/I0)"), None
    return None, _transmission(p, hi)


def _finite_sample(p) -> np.ndarray:
    """The finite values of ``p``, flat; a random million of them where there are more (a stride could fall on one
    detector bin). NaN and Inf are refused on their own."""
    x = np.asarray(p, dtype=np.float32).ravel()
    if x.size > 1_000_000:
        x = x[np.random.default_rng(0).integers(0, x.size, 1_000_000)]
    return x[np.isfinite(x)]


def _transmission(p, hi: float) -> str | None:
    """Whether the sinogram ``p`` (..., bins), 99th percentile ``hi``, looks like transmitted fractions I/I0: its
    99th percentile at most TRANSMISSION_MAX, its air within AIR_TOLERANCE of 1 (the median of the outermost
    EDGE_FRACTION of the bins at each end of the views, the higher end), and its centre (the median of the middle
    CENTRE_FRACTION) no higher than that. Line integrals are about 0 in air, and higher at the centre of a body;
    where no bin sees air (a detector narrower than the body) this cannot tell, and says nothing. A warning, not a
    refusal: true line integrals can look so (a hollow pipe on a detector that crops it: its edges near 1, its
    hollow centre lower)."""
    p = np.asarray(p)
    if hi > TRANSMISSION_MAX or p.ndim < 2 or p.shape[-1] < 5:
        return None
    rows = p.reshape(-1, p.shape[-1])
    if len(rows) > 20_000:  # a random 20000 views of slices, each whole: its ends stay its ends
        rows = rows[np.random.default_rng(0).integers(0, len(rows), 20_000)]
    n = rows.shape[1]
    k, c = max(1, round(EDGE_FRACTION * n)), max(1, round(CENTRE_FRACTION * n))
    air = max(float(np.median(rows[:, :k])), float(np.median(rows[:, -k:])))
    centre = float(np.median(rows[:, (n - c) // 2:(n - c) // 2 + c]))
    if not (abs(air - 1) <= AIR_TOLERANCE and centre <= air):  # (NaN: no)
        return None
    return (f"the sinogram lies at {air:.3g} at the detector's ends (air?) and at {centre:.3g} at its centre: it looks "
            "like transmitted fractions I/I0 (about 1 in air, lower through the body), where line integrals are about "
            "0 in air; if it is I/I0, give -log(I/I0)")


def noisy_line_integrals(p: np.ndarray, kind: str, rng: np.random.Generator, I0: float = 1e5,
                         sigma: float = 0.0) -> np.ndarray:
    """Noisy line integrals ``p``: 'poisson' counts with incident ``I0`` per bin (zero counts -> 0.5 before
    the log), 'gaussian' of std ``sigma`` (line-integral units), or 'none' (``p`` itself)."""
    if kind == "poisson":
        counts = rng.poisson(I0 * np.exp(-p)).astype(np.float64)
        return -np.log(np.maximum(counts, 0.5) / I0)
    if kind == "gaussian":
        return p + sigma * rng.standard_normal(p.shape)
    if kind == "none":
        return p
    raise InputError(f"unknown CT noise kind {kind!r}; choose one of {NOISE_KINDS}")


def pixel_unit_projector(geometry, projector: str | None = None) -> LinearOperator:
    """Projector in pixel units, as in DiffusionMBIR (a unit pixel integrates to its chord length in pixels):
    (1 / pixel_size_mm) times the geometry's SliceProjector (line integrals in mm; ``projector``: ASTRA's type,
    default ``projector.default_projector``)."""
    P = SliceProjector(geometry, projector)
    return P * (1.0 / geometry.pixel_size_mm) if geometry.pixel_size_mm != 1.0 else P


def make_geometry(beam: str, size: int, pixel_size_mm: float, *, n_views: int | None = None,
                  wedge_deg: float | None = None, n_det: int | None = None, det_spacing_mm: float | None = None,
                  source_distance_mm: float | None = None, detector_distance_mm: float | None = None, like=None):
    """The slice geometry for ``size``^2 pixels of ``pixel_size_mm``: sparse view (``n_views``) or limited
    angle (``wedge_deg``, one view per degree); give exactly one.

    Defaults: detector spacing = pixel size; n_det the geometry's own (parallel: ``parallel_det_count``, about
    sqrt(2) * size bins centred on the pixel rows at 0 and 90 degrees; fan: see FanBeamGeometry, also for the
    distances). ``like``: copy the detector and distances of that geometry instead (a finer simulation grid sees
    the same detector).
    """
    classes = {"parallel": ParallelBeamGeometry, "fan": FanBeamGeometry}
    if beam not in classes:
        raise InputError(f"unknown CT beam {beam!r}; choose one of {sorted(classes)}")
    if (n_views is None) == (wedge_deg is None):
        raise InputError("give exactly one of n_views (sparse view) or wedge_deg (limited angle)")
    if like is not None:
        if like.type != beam:
            raise InputError(f"make_geometry: like= is a {like.type} geometry, not {beam}")
        kw = {k: v for k, v in like.to_dict().items() if k not in ("type", "image_size", "angles_deg")}
        kw["pixel_size_mm"] = pixel_size_mm
    else:
        kw = {"pixel_size_mm": pixel_size_mm, "det_spacing_mm": det_spacing_mm or pixel_size_mm,
              "n_det": n_det}
        if beam == "fan":
            kw.update(source_origin_mm=source_distance_mm, origin_det_mm=detector_distance_mm)
    cls = classes[beam]
    if n_views is not None:
        return cls.sparse_view(size, n_views, **kw)
    return cls.limited_angle(size, wedge_deg, **kw)


def poisson_weights_from_line_integrals(line: torch.Tensor, capped: bool = False) -> torch.Tensor:
    """Poisson-likelihood (PWLS) weights, normalised to mean 1: proportional to the detected counts
    I ~ exp(-line integral), the inverse variances of the log data; w = exp(-(line - min)) (DPS).

    ``capped``: w = min(1, exp(-(line - ref))), ref the median line integral of the rays through the object
    (line > 5 % of the maximum): rays darker than a typical object ray are down-weighted by their counts
    (photon-starved rays no longer streak), brighter ones keep weight 1, which keeps the weighted normal
    equations as well conditioned as the unweighted ones for CG."""
    if not capped:
        w = torch.exp(-(line - line.min()))
    else:
        through = line[line > 0.05 * line.max()]
        ref = through.median() if through.numel() else line.max()
        w = torch.exp(-(line - ref)).clamp(max=1.0)
    return w / w.mean()
