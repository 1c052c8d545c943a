"""The MR head phantom: magnitude in [0, 1] for T1, T2 or PD contrast (mr_phantom)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from medrecon.errors import InputError

from .fields import check_geometry, Grid, apply_psf, as_volume
from .shapes import polyline_path

MR_LABELS = {"background": 0, "scalp": 1, "skull": 2, "csf": 3, "gm": 4, "wm": 5, "deep_gm": 6,
             "ventricle": 7, "cerebellum_gm": 8, "brainstem": 9, "muscle": 10, "eye": 11, "sinus_air": 12}

# Relative magnitude per tissue and contrast (T1: MPRAGE-like, T2: TSE-like, PD).
_MR_TISSUE = {  # name: (T1, T2, PD)
    "fat": (0.95, 0.70, 0.85), "muscle": (0.40, 0.30, 0.55), "bone": (0.04, 0.04, 0.05),
    "marrow": (0.55, 0.40, 0.55), "csf": (0.12, 1.00, 0.85), "gm": (0.52, 0.62, 0.80),
    "wm": (0.80, 0.42, 0.68), "caudate": (0.58, 0.56, 0.78), "putamen": (0.60, 0.52, 0.77),
    "pallidum": (0.68, 0.40, 0.70), "thalamus": (0.64, 0.50, 0.75), "brainstem": (0.70, 0.47, 0.72),
    "vitreous": (0.10, 0.95, 0.80), "lens": (0.55, 0.20, 0.50), "air": (0.0, 0.0, 0.0),
}


def _sphere_field(rng, sigma_mm, radius_mm, n_theta=128, n_waves=128):
    """A smooth random field on the sphere of radius `radius_mm` (Gaussian covariance, correlation length
    sigma_mm), tabulated over (polar angle, azimuth) with the azimuth padded by one column for wrap-around.
    Returns (values, d/dtheta, d/dphi) tables."""
    k = rng.standard_normal((n_waves, 3)) / sigma_mm
    phase = rng.uniform(0, 2 * np.pi, n_waves)
    theta = np.linspace(0, np.pi, n_theta)
    phi = np.linspace(-np.pi, np.pi, 2 * n_theta + 1)
    th, ph = np.meshgrid(theta, phi, indexing="ij")
    pts = radius_mm * np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1)
    f = np.sqrt(2.0 / n_waves) * np.cos(pts @ k.T + phase).sum(-1)
    return tuple(a.astype(np.float32) for a in (f, *np.gradient(f, theta, phi)))


def _on_sphere(tables, u, v, w):
    """A _sphere_field in the directions (u, v, w) (polar axis w): its value and the magnitude of its
    angular gradient (per radian)."""
    f = tables[0]
    n_theta = f.shape[0]
    r = np.sqrt(u * u + v * v + w * w) + 1e-6
    cos_t = np.clip(w / r, -1, 1)
    coords = [(np.arccos(cos_t) * ((n_theta - 1) / np.pi)).ravel(),
              ((np.arctan2(v, u) + np.pi) * ((f.shape[1] - 1) / (2 * np.pi))).ravel()]
    look = [ndimage.map_coordinates(a, coords, order=1, mode="nearest").reshape(u.shape) for a in tables]
    sin_t = np.sqrt(np.maximum(1 - cos_t ** 2, 0.01))
    return look[0], np.sqrt(look[1] ** 2 + (look[2] / sin_t) ** 2)


def _ellipsoid_sd(x, y, s, c, semi):
    """Approximate signed distance (mm, negative inside) to an axis-aligned ellipsoid: (rho - 1) / |grad rho|."""
    u, v, w = (x - c[0]) / semi[0], (y - c[1]) / semi[1], (s - c[2]) / semi[2]
    rho = np.sqrt(u * u + v * v + w * w) + 1e-6
    grad = np.sqrt((u / semi[0]) ** 2 + (v / semi[1]) ** 2 + (w / semi[2]) ** 2) / rho + 1e-6
    return (rho - 1) / grad


class _Head:
    """An MR head: anatomy drawn from `rng` (independent of the grid), painted by paint(). s = 0 near the
    thalamus, positive towards the vertex."""

    L = MR_LABELS

    def __init__(self, rng: np.random.Generator):
        u = rng.uniform
        self.rng = rng
        k = u(0.9, 1.08)
        self.cerebrum = ((0, 5, 12), np.array((68 * u(0.93, 1.05), 86 * u(0.95, 1.05), 72)) * k, 48 * k)
        self.cerebellum = ((0, 52 * k, -36 * k), np.array((52, 33, 24)) * k)
        self.k = k
        self.csf, self.skull, self.scalp = u(1.5, 4.5), u(5.5, 9), u(4, 8)
        self.atrophy = u(0, 1)  # wider sulci, larger ventricles
        self.vk = k * (0.8 + 0.8 * self.atrophy) ** 0.7
        self.gyri = _sphere_field(rng, u(3.5, 4.5), 75 * k)  # sulcal pattern over the brain surface
        self.mid = (u(-3, 3), u(-0.03, 0.03))  # midline offset and yaw
        self.syl = u(-4, 6)
        self.eyes = u(-38, -26)
        self.bias = (u(-0.12, 0.12), u(-0.12, 0.12), u(-0.1, 0.1))
        vk = self.vk
        # ventricles (per side: frontal horn, body, atrium, occipital horn, temporal horn), 3rd, 4th
        self.ventricles = []
        for sg in (-1, 1):
            self.ventricles += [((sg * 12 * vk, -22 * k, 10 * k), (6 * vk, 16 * k, 10 * vk), sg * 0.25),
                                ((sg * 11 * vk, 5 * k, 15 * k), (6 * vk, 26 * k, 10 * vk), 0.0),
                                ((sg * 20 * k, 32 * k, 8 * k), (8 * vk, 12 * k, 10 * vk), -sg * 0.3),
                                ((sg * 18 * k, 48 * k, 6 * k), (3.5 * vk, 14 * k, 5 * vk), -sg * 0.2),
                                ((sg * 32 * k, 8 * k, -14 * k), (3.5 * vk, 16 * k, 4 * vk), sg * 0.35)]
        self.ventricles += [((0, 8 * k, -1 * k), (2.0 * vk, 14 * k, 9 * k), 0.0),
                            ((0, 36 * k, -36 * k), (7 * vk, 4 * vk, 7 * k), 0.0)]
        self.nuclei = []
        for sg in (-1, 1):
            self.nuclei += [("caudate", (sg * 18 * vk, -16 * k, 10 * k), (6 * k, 12 * k, 11 * k), sg * 0.2),
                            ("putamen", (sg * 26 * k, -2 * k, 2 * k), (6 * k, 17 * k, 13 * k), sg * 0.15),
                            ("pallidum", (sg * 19 * k, 0, 0), (4 * k, 10 * k, 8 * k), sg * 0.15),
                            ("thalamus", (sg * 10 * k, 14 * k, 3 * k), (10 * k, 16 * k, 11 * k), -sg * 0.2)]

    def paint(self, g: Grid, contrast: str):
        ci = {"T1": 0, "T2": 1, "PD": 2}[contrast]
        T = {name: v[ci] for name, v in _MR_TISSUE.items()}
        L, k = self.L, self.k
        x, y, s = g.x, g.y, g.s
        fM, fF, fC, f5 = g.noise(2.0), g.noise(0.8), g.noise(10.0, key=3), g.noise(5.0, key=4)
        tex = lambda name, a=0.03: T[name] * (1 + a * fM + 0.5 * a * fF)  # noqa: E731
        sl = slice(None)
        # face and neck soft tissue below the skull, orbits, sinuses
        cap = np.maximum(s + 25 * k, 0) / (30 * k)  # face and neck: elliptic cylinder, rounded top
        neck = ((x / (62 * k)) ** 2 + ((y + 5 * k) / (84 * k)) ** 2 + cap ** 2) < 1
        g.paint(sl, neck, L["muscle"], np.where(np.exp(-(fC / 0.08) ** 2) > 0.3, T["fat"], tex("muscle")))
        # brain envelope (cerebrum and cerebellum, approximate signed distances) and the layers outside it
        c, semi, low = self.cerebrum
        semi_s = np.where(s > c[2], semi[2], low)
        cer = _ellipsoid_sd(x, y, s, c, (semi[0], semi[1], semi_s)) + 1.5 * fC
        cb = _ellipsoid_sd(x, y, s, *self.cerebellum) + 1.0 * fC
        env = np.minimum(cer, cb)
        t1 = self.csf + self.atrophy  # outer edge of the CSF, then skull, then scalp (mm from the brain)
        t2 = t1 + self.skull
        layers = ((t2 + self.scalp, L["scalp"], np.where(env > t2 + 0.45 * self.scalp, tex("fat"), tex("muscle"))),
                  (t2, L["skull"], np.where((env > t1 + 1.5) & (env < t2 - 1.5) & (fC > -0.5), tex("marrow", 0.15),
                                            T["bone"])),
                  (t1, L["csf"], T["csf"]))
        for depth, label, value in layers:  # (no scalp inside the face and neck)
            g.paint(sl, (env < depth) & (s > -95 * k) & ((label != L["scalp"]) | ~neck), label, value)
        self._face(g, T, tex, fC)
        # cerebral cortex. Sulci are the zero set of a random field over the brain surface (constant along
        # rays from the centre, bent a little); |F| / |grad F| is the distance to the nearest sulcus. Depth
        # is measured from the outer surface and, above the corpus callosum, from the midline (medial cortex).
        u_, v_, w_ = (x - c[0]) / semi[0], (y - c[1]) / semi[1], (s - c[2]) / semi_s
        fold, grad = _on_sphere(self.gyri, u_ + 0.07 * f5, w_ + 0.07 * fC, v_)
        to_sulcus = np.abs(fold) / np.maximum(grad / (75 * k * np.sqrt(u_ * u_ + v_ * v_ + w_ * w_) + 1e-3), 1e-3)
        mx = np.abs(x - (self.mid[0] + self.mid[1] * y))
        # the hemispheres face each other across the midline, except in the core (corpus callosum, diencephalon)
        # and below it; the medial depth grows smoothly into the core
        core = 1 - ((y - 5 * k) / (40 * k)) ** 2 - ((s - 3 * k) / (24 * k)) ** 2
        medial = (s > -8 * k) | (np.abs(y - 5 * k) > 40 * k)
        d = np.where(medial, np.minimum(-cer, mx + 80 * np.clip(core, 0, None)), -cer)
        deep = 16 + 5 * g.noise(20.0, key=5)
        w_s = 0.6 + 0.8 * self.atrophy  # sulcal CSF half-width (mm)
        syl = np.where((np.abs(x) > 34 * k) & (y < 25 * k),  # lateral (Sylvian) fissure: an oblique sheet
                       np.abs(s - (self.syl + 0.5 * y)) + 2 * fC - 0.5 * self.atrophy, np.inf)
        fissure = medial & (core < 0) & (mx < 0.6 + 0.8 * self.atrophy)  # interhemispheric
        sulcus = ((to_sulcus < w_s) & (d < deep)) | fissure | (syl < 0.4)
        grey = ((to_sulcus < w_s + 2.8) & (d < deep + 2.8)) | (d < 3.0) | (syl < 3.4)
        brain = cer < 0
        g.paint(sl, brain, L["wm"], tex("wm", 0.025))
        g.paint(sl, brain & grey, L["gm"], tex("gm"))
        g.paint(sl, brain & sulcus, L["csf"], T["csf"])
        # deep grey nuclei, ventricles
        for name, c, sm, ang in self.nuclei:
            box, rho = g.ellipsoid(c, sm, ang, bump=(fC, 0.04))
            g.paint(box, rho < 1, L["deep_gm"], tex(name)[box])
        for c, sm, ang in self.ventricles:
            box, rho = g.ellipsoid(c, sm, ang, bump=(fC, 0.05))
            g.paint(box, rho < 1, L["ventricle"], T["csf"])
        # cerebellum: folia (thin parallel sheets of cortex and CSF) around a white-matter core
        inner = -cb
        folia = np.sin(2 * np.pi * (0.6 * inner + 0.5 * (s + 0.35 * y) + 2.5 * fC + 1.2 * f5) / 4.5)
        cbm = (cb < 0) & (cer > 1.0)
        g.paint(sl, cbm, L["cerebellum_gm"], tex("gm"))
        g.paint(sl, cbm & (inner > 9 + 3 * fC) & (folia < 0.3), L["wm"], tex("wm"))
        g.paint(sl, cbm & (folia > 0.85) & (inner < 14), L["csf"], T["csf"])
        # brainstem (midbrain, pons, medulla) in front of the cerebellum
        sdf, _ = g.tubes(polyline_path([(0, 10 * k, 4 * k, 12 * k), (0, 18 * k, -30 * k, 14 * k), (0, 26 * k, -90 * k, 10 * k)],
                               0.0))
        g.paint(sl, (sdf < 2.5 + 2 * self.atrophy) & (s < 2 * k) & (cer > -25), L["csf"], T["csf"])  # cisterns
        g.paint(sl, (sdf < 0) & (s < 2 * k), L["brainstem"], tex("brainstem"))
        box, rho = g.ellipsoid(*self.ventricles[-1], bump=(fC, 0.05))
        g.paint(box, rho < 1, L["ventricle"], T["csf"])
        # smooth receive-coil bias field
        bias = 1 + 0.08 * g.noise(60.0, key=6) + (self.bias[0] * x + self.bias[1] * y + self.bias[2] * s) / 100
        head = g.label != L["background"]
        g.value *= (bias / (bias[head].mean() if head.any() else 1.0)).astype(np.float32)

    def _face(self, g, T, tex, fC):
        L, k = self.L, self.k
        for sg in (-1, 1):  # orbits: fat, globe (vitreous), lens
            c = (sg * 32 * k, -70 * k, self.eyes * k)
            box, rho = g.ellipsoid(c, (19 * k, 24 * k, 16 * k), bump=(fC, 0.05))
            g.paint(box, rho < 1, L["scalp"], T["fat"])
            box, rho = g.ellipsoid(c, (12 * k, 12 * k, 12 * k))
            g.paint(box, rho < 1, L["eye"], T["vitreous"])
            box, rho = g.ellipsoid((c[0], c[1] - 9 * k, c[2]), (4.5 * k, 2 * k, 4.5 * k))
            g.paint(box, rho < 1, L["eye"], T["lens"])
        for c, sm in (((0, -45 * k, (self.eyes - 8) * k), (11 * k, 20 * k, 12 * k)),  # ethmoid / sphenoid
                      ((-30 * k, -58 * k, (self.eyes - 32) * k), (14 * k, 17 * k, 17 * k)),  # maxillary
                      ((30 * k, -58 * k, (self.eyes - 32) * k), (14 * k, 17 * k, 17 * k))):
            box, rho = g.ellipsoid(c, sm)
            g.paint(box, rho < 1, L["sinus_air"], 0.0)
            g.paint(box, (rho >= 0.85) & (rho < 1), L["sinus_air"], tex("muscle")[box])


def mr_phantom(shape=(32, 128, 128), seed: int = 0, contrast: str = "T1", pixel_size_mm: float | None = None,
               slice_thickness_mm: float | None = None, *, z_center_mm: float | None = None,
               return_labels: bool = False):
    """A 3D MR brain phantom: magnitude in [0, 1] as a Volume (Z, Y, X); with return_labels its MR_LABELS map.

    contrast: "T1", "T2" or "PD". pixel_size_mm: default 240 mm / max(Y, X); slice_thickness_mm: default
    the pixel size (isotropic). z_center_mm: level of the middle slice, 0 near the thalamus, positive towards
    the vertex (about -70 orbits and cerebellum .. +80 vertex); default drawn from the seed.
    """
    shape = check_geometry(seed, shape, pixel_size_mm, slice_thickness_mm)
    if contrast not in ("T1", "T2", "PD"):
        raise InputError(f"contrast must be 'T1', 'T2' or 'PD', got {contrast!r}")
    px = float(pixel_size_mm or 240.0 / max(shape[1:]))
    dz = float(slice_thickness_mm or px)
    rng = np.random.default_rng([int(seed), 11])
    head = _Head(rng)
    extent = shape[0] * dz
    lo, hi = -45 + extent / 2, 60 - extent / 2
    zc = float(z_center_mm) if z_center_mm is not None else (rng.uniform(lo, hi) if lo < hi else 5.0)
    g = Grid(shape, (dz, px, px), zc, 2 * int(seed) + 1,
              rng.uniform(1.5, 3.0), rng.uniform(-0.08, 0.08), 0.0)
    head.paint(g, contrast)
    apply_psf(g, 0.5)
    vol = as_volume(np.clip(g.value, 0.0, 1.0), (dz, px, px),
                  {"modality": "MR", "source": "medrecon synthetic phantom", "seed": int(seed), "contrast": contrast,
                   "units": "normalised magnitude", "z_center_mm": zc})
    return (vol, g.label) if return_labels else vol
