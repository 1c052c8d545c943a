"""CT torso anatomy, independent of the sampling grid: body frame, organ placement, named vessels, vessel
and airway trees, skeleton (vertebral levels, ribs) and calcifications, all drawn from one random generator.
"""
from __future__ import annotations

import numpy as np

from .shapes import grow_branches, polyline_path, ellipsoid_radius, smoothstep, superellipse

CT_LABELS = {"air": 0, "fat": 1, "muscle": 2, "soft": 3, "lung": 4, "liver": 5, "spleen": 6, "kidney": 7,
             "heart": 8, "blood": 9, "bone": 10, "bowel": 11, "fluid": 12, "cartilage": 13, "table": 14,
             "stomach": 15, "pancreas": 16, "airway": 17}


class Frame:
    """Body frame at levels s (mm, any shape): outline, fat, spine position and body cavity."""

    def __init__(self, t: "TorsoAnatomy", s):
        s = np.asarray(s, np.float32)
        self.wt = smoothstep(s, t.dome_r - 20, 25)  # 0 abdomen .. 1 thorax
        self.A = t.A * (1 + (t.thA - 1) * self.wt)
        self.B = t.B * (1 + (t.thB - 1) * self.wt)
        fat = t.fat * (1 - 0.45 * self.wt)
        self.fat_l, self.fat_a, self.fat_p = fat, fat * 1.25, fat * 0.6
        rel = s - t.dome_r
        self.ysp = (self.B - self.fat_p - 72 - 10 * np.exp(-((rel + 170) / 70) ** 2)
                    + 6 * np.exp(-((rel - 100) / 90) ** 2))  # vertebral body centre: lordosis, kyphosis
        self.xsp = t.scol * np.sin(rel / 140 + t.scol_phase)
        front = -(self.B - self.fat_a - t.mw)
        back = self.ysp + 45 - 10 * self.wt
        apex = np.sqrt(np.clip(1 - (np.clip(rel - 150, 0, None) / 110) ** 2, 0.05, 1))
        self.ca = (self.A - self.fat_l - t.mw) * apex
        self.cy, self.cb = (front + back) / 2, (back - front) / 2 * np.sqrt(apex)


class TorsoAnatomy:
    """A CT torso's anatomy, drawn from `rng` and independent of the sampling grid (ct_torso._Torso paints it).

    Levels s are mm relative to the body (0 near the right diaphragm dome, positive towards the head)."""

    L = CT_LABELS

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        u = rng.uniform
        self.A, self.B = u(138, 172), u(92, 120)  # body semi-axes (lateral, antero-posterior), abdomen
        self.thA, self.thB = u(0.96, 1.08), u(0.97, 1.1)  # thorax / abdomen ratios
        self.fat, self.mw = u(5, 30), u(8, 14)  # subcutaneous fat, abdominal wall muscle (mm)
        self.dome_r = u(-12, 12)
        self.dome_l = self.dome_r - u(8, 25)
        self.scol, self.scol_phase = u(0, 5), u(0, 6.3)
        self.k = u(0.88, 1.12)  # organ scale
        self.blood = u(130, 240)  # contrast-enhanced blood (HU)
        self.liver_hu = u(52, 68)
        self.spleen_hu = self.liver_hu + u(-8, 8)
        a, b = self.A - self.fat - self.mw, self.B - self.fat - self.mw  # abdominal cavity scale
        self.ab = a, b
        dr, dl = self.dome_r, self.dome_l
        self.liver = [((-0.42 * a, -0.05 * b, dr - 60), (0.62 * a, 0.95 * b, 105), u(-0.2, 0.3)),
                      ((0.05 * a, -0.5 * b, dr - 30), (0.5 * a, 0.4 * b, 55), u(-0.2, 0.2))]
        hf = Frame(self, dl + 50)
        self.heart = ((float(hf.xsp + 0.22 * hf.ca), float(hf.cy - 0.4 * hf.cb), dl + 48),
                      np.array((64, 50, 56)) * u(0.9, 1.12), u(-0.75, -0.35))
        self.kidneys = []
        for sgn, sk in ((-1, dr - 115), (1, dl - 95)):
            ys = float(Frame(self, sk).ysp)
            self.kidneys.append(((sgn * (48 + 0.15 * a) * self.k, ys + u(0, 12), sk + u(-15, 15)), sgn * u(0.4, 0.8)))
        self.stomach = ((0.3 * a, -0.35 * b, dl - 45), u(0.2, 0.8), u(-1.2, 0.6))
        self.spleen = ((0.62 * a, 0.45 * b, dl - 50), u(-0.9, -0.4))
        self.gall = ((-0.3 * a, -0.5 * b, dr - 115), u(0, 1))
        self.colon_dip = u(-20, 20)
        self.r_min = 0.7  # thinnest tree branch (mm); finer vessels are a texture
        self._named_vessels()
        self._trees()
        self._skeleton()
        self._spots()

    def ysp(self, s) -> float:
        return float(Frame(self, s).ysp)

    # -- analytic regions (x, y, s broadcast; fr = Frame at s) ------------------------------------------
    def cavity(self, x, y, fr):
        return superellipse(x, y, fr.xsp, fr.cy, fr.ca, fr.cb, 2.2) < 1

    def dome(self, x, y, fr):
        """Level of the diaphragm under (x, y): domes, deepest posteriorly and laterally."""
        h = self.dome_r + (self.dome_l - self.dome_r) * smoothstep(x, 0, 25)
        dy = y - fr.cy
        q2 = (((np.abs(x - fr.xsp) - 0.4 * fr.ca) / (0.75 * fr.ca)) ** 2
              + (np.maximum(dy, 0) / fr.cb) ** 2 + (np.minimum(dy, 0) / (1.7 * fr.cb)) ** 2)
        q2 = np.minimum(q2, 1.6)
        return h - 25 * q2 - 45 * q2 ** 2

    def paraspinal(self, x, y, fr):
        return superellipse(x, y, fr.xsp, fr.ysp + 58, 55 - 12 * fr.wt, 52) < 1

    def mediastinum(self, x, y, s, fr):
        w = 28 + 14 * np.exp(-((s - self.dome_r - 55) / 50) ** 2)
        return superellipse(x, y, fr.xsp + 6, fr.cy - 0.1 * fr.cb, w, 1.05 * fr.cb) < 1

    def in_lung(self, p: np.ndarray) -> np.ndarray:
        """Which anatomical points p (N, 3) lie in a lung (ignoring the warp and organ bumps)."""
        x, y, s = p.T
        fr = Frame(self, s)
        c, semi, ang = self.heart
        return (self.cavity(x, y, fr) & (s > self.dome(x, y, fr)) & ~self.paraspinal(x, y, fr)
                & ~self.mediastinum(x, y, s, fr) & (ellipsoid_radius(x, y, s, c, semi * 1.1, ang) > 1))

    def in_liver(self, p: np.ndarray) -> np.ndarray:
        x, y, s = p.T
        fr = Frame(self, s)
        rho = np.min([ellipsoid_radius(x, y, s, c, np.multiply(sm, self.k), an) for c, sm, an in self.liver], axis=0)
        return self.cavity(x, y, fr) & (s < self.dome(x, y, fr) - 5) & (rho < 1)

    # -- grid-independent geometry: vessels, airways, trees, skeleton -------------------------------------
    def _named_vessels(self):
        u, dr, ysp = self.rng.uniform, self.dome_r, self.ysp
        (hx, hy, hs), _, _ = self.heart
        ra = u(10, 13)
        self.aorta = [(12, ysp(dr - 330) - 28, dr - 330, ra * 0.9), (12, ysp(dr - 100) - 30, dr - 100, ra),
                      (22, ysp(dr + 40) - 22, dr + 40, ra), (25, ysp(dr + 120) - 18, dr + 120, ra * 1.05),
                      (12, ysp(dr + 150) - 45, dr + 158, ra * 1.2), (-12, hy - 10, dr + 140, ra * 1.3),
                      (-8, hy, dr + 95, ra * 1.35), (hx - 20, hy + 5, hs, ra * 1.3)]
        ivc = [(-25, ysp(dr - 330) - 30, dr - 330, 11), (-28, ysp(dr - 60) - 32, dr - 60, 12),
               (-22, hy + 15, dr + 10, 14), (hx - 35, hy + 10, hs - 10, 14)]
        svc = [(-25, hy - 5, dr + 260, 9), (-28, hy + 5, dr + 110, 10), (hx - 35, hy + 10, hs + 20, 11)]
        pa = [(hx - 5, hy - 25, hs + 30, 13), (0, hy - 5, dr + 115, 13)]
        portal = [(0, -0.2 * self.B, dr - 100, 7), (-0.25 * self.A, -0.05 * self.B, dr - 70, 7)]
        self.hila = [(sgn * 48, ysp(dr + 105) - 38, dr + 105) for sgn in (-1, 1)]
        b = self.blood
        segs = [polyline_path(path, v) for path, v in
                ((self.aorta, b), (ivc, 0.85 * b), (svc, 0.9 * b), (pa, b), (portal, 0.8 * b))]
        segs += [polyline_path([(0, hy - 5, dr + 115, 11), hil + (9,)], b) for hil in self.hila]  # pulmonary arteries
        segs += [polyline_path([(12, ysp(c[2]) - 28, c[2], 3.5), (c[0] - np.sign(c[0]) * 20, c[1] - 8, c[2], 3.0)], b)
                 for c, _ in self.kidneys]  # renal arteries
        segs += [polyline_path([(12, ysp(dr - 240) - 28, dr - 240, ra * 0.8), (sgn * 55, ysp(dr - 330) - 20, dr - 330, 6)], b)
                 for sgn in (-1, 1)]  # iliac arteries
        self.vessel_segs = np.concatenate(segs)
        tr = [(0, ysp(dr + 300) - 45, dr + 300, 9), (0, ysp(dr + 140) - 42, dr + 140, 9)]
        self.airway_segs = np.concatenate(
            [polyline_path(tr, 1.8)] + [polyline_path([tr[-1], (np.sign(h[0]) * 22, tr[-1][1] + 3, dr + 128, 7), h + (5.5,)], 1.5)
                                for h in self.hila])

    def _trees(self):
        """Pulmonary arteries (with bronchi) and veins from each hilum; portal/hepatic veins in the liver."""
        rng = self.rng
        lung, bronchi = [], []
        box = rng.uniform((-200, -160, self.dome_r - 120), (200, 160, self.dome_r + 260), (20000, 3))
        inside = box[self.in_lung(box)]
        for hx, hy, hs in self.hila:
            sgn = np.sign(hx)
            dirs = np.array([(0.3 * sgn, -0.3, 1.0), (0.9 * sgn, -0.7, -0.2), (0.5 * sgn, 0.5, -1.0),
                             (0.7 * sgn, 0.6, 0.3), (0.8 * sgn, 0.2, -0.6), (0.4 * sgn, 0.1, -1.0)])
            dirs = np.repeat(dirs + 0.2 * rng.standard_normal(dirs.shape), 2, axis=0)
            roots = np.tile([(hx, hy, hs), (hx, hy + 8, hs - 12)], (len(dirs) // 2, 1))  # arteries, veins
            tree, root = grow_branches(rng, roots, dirs, 30.0, 6.0, self.r_min, self.in_lung,
                                   inside[np.sign(inside[:, 0]) == sgn], near=45)
            tree[:, 8] = tree[:, 6]  # value: radius
            lung.append(tree)
            br = tree[(root % 2 == 0) & (tree[:, 6] >= 1.2)].copy()  # bronchi beside the arteries
            off = np.cross(br[:, 3:6] - br[:, 0:3], (0, 0, 1.0))
            off *= (1.4 * br[:, 6] / (np.linalg.norm(off, axis=1) + 1e-9))[:, None]
            br[:, 0:3] += off
            br[:, 3:6] += off
            br[:, 6:8] *= 0.85
            br[:, 8] = np.maximum(0.6, 0.22 * br[:, 6])  # value: wall thickness
            bronchi.append(br)
        self.lung_trees, self.bronchi = np.concatenate(lung), np.concatenate(bronchi)
        c = np.array(self.liver[0][0]) + (25, 15, -10)
        dirs = np.array([(-1, 0.2, 0.6), (-0.6, 0.8, -0.3), (1, -0.7, 0.4), (-1, -0.4, -0.2), (-0.3, -0.3, 1)])
        self.liver_tree, _ = grow_branches(rng, np.tile(c, (len(dirs), 1)), dirs + 0.2 * rng.standard_normal(dirs.shape),
                                       24.0, 5.0, self.r_min, self.in_liver, near=15)

    def _skeleton(self):
        """Vertebral level coordinate along s, and the ribs (tubes around the chest wall)."""
        u, dr = self.rng.uniform, self.dome_r
        self.sf = np.arange(-700.0, 700.0, 0.5)
        self.tw_f = smoothstep(self.sf, dr - 70, 30)
        self.height_f = 36 - 10 * self.tw_f  # lumbar ~36 mm per level, thoracic ~26 mm
        self.lev_f = np.cumsum(0.5 / self.height_f) + u(0, 1)
        levels = np.arange(np.floor(self.lev_f.min()), np.ceil(self.lev_f.max()))
        s_att = np.interp(levels + 0.45, self.lev_f, self.sf)
        self.ribs, self.cartilage = [], []
        for num, sa in zip(range(12, 0, -1), s_att[s_att > dr - 85]):
            fr = Frame(self, sa)
            a_r, b_r, cy = float(fr.ca) + 7, float(fr.cb) + 7, float(fr.cy)
            end = 0.45 * np.pi if num > 10 else (0.7 * np.pi if num > 7 else 0.74 * np.pi)
            cend = end if num > 10 else (0.86 * np.pi if num > 7 else 0.94 * np.pi)
            drop = u(45, 65) * (1.1 if num > 6 else 0.8)
            phi0 = np.arcsin(min(45 / a_r, 0.9))
            phis = np.linspace(phi0, cend, 12)
            nb = int(np.searchsorted(phis, end)) * 2 + 2
            for sgn in (-1, 1):
                pts = [(sgn * 18 + float(fr.xsp), float(fr.ysp) + 6, sa + 6, 4.0)]
                pts += [(sgn * a_r * np.sin(phi) ** (2 / 2.2) + float(fr.xsp),
                         cy + b_r * np.sign(np.cos(phi)) * np.abs(np.cos(phi)) ** (2 / 2.2),
                         sa - drop * (0.35 * (phi - phi0) / np.pi + 0.65 * (1 - np.cos(phi - phi0)) / 2),
                         4.5 if phi <= end else 4.2) for phi in phis]
                segs = polyline_path(pts, 0.0, n=2)
                self.ribs.append(segs[:nb])
                self.cartilage.append(segs[nb:])
        self.ribs, self.cartilage = np.concatenate(self.ribs), np.concatenate(self.cartilage)

    def _spots(self):
        """A few small, dense calcifications: aortic wall, coronary, renal and lung granulomas."""
        u, rng = self.rng.uniform, self.rng
        self.spots = []
        aorta = np.asarray(self.aorta)
        for _ in range(rng.integers(2, 9)):
            i = rng.integers(0, len(aorta) - 1)
            p = aorta[i, :3] + u(0, 1) * (aorta[i + 1, :3] - aorta[i, :3])
            ang = u(0, 2 * np.pi)
            p = p + aorta[i, 3] * np.array((np.cos(ang), np.sin(ang), 0))
            self.spots.append((*p, *(p + (0, 0, u(0, 4))), u(0.8, 2.0), u(0.8, 2.0), u(400, 1100)))
        hc = np.array(self.heart[0])
        for _ in range(rng.integers(0, 4)):
            p = hc + rng.standard_normal(3) * (30, 25, 25)
            self.spots.append((*p, *p, u(0.8, 1.6), u(0.8, 1.6), u(300, 900)))
        for c in [k[0] for k in self.kidneys] + list(self.hila):
            if u() < 0.3:
                p = np.array(c) + rng.standard_normal(3) * 15
                self.spots.append((*p, *p, u(1.0, 2.5), 1.0, u(300, 900)))
