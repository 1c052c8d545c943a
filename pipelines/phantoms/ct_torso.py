"""The CT torso phantom: a TorsoAnatomy painted in HU on a sampling grid (ct_phantom)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .ct_anatomy import Frame, TorsoAnatomy
from .fields import check_geometry, Grid, apply_psf, as_volume
from .shapes import polyline_path, smoothstep, superellipse


class _Torso(TorsoAnatomy):
    """A CT torso: anatomy drawn from `rng` (independent of the sampling grid), painted in HU by paint().

    Levels s are mm relative to the body (0 near the right diaphragm dome, positive towards the head)."""

    # -- painting on a grid --------------------------------------------------------------------------------
    def paint(self, g: Grid, table: bool) -> None:
        self.g = g
        self.f = {"F": g.noise(0.9), "M": g.noise(3.0)}  # textures: fine, medium
        self.f.update({name: g.noise(sig, key) for name, sig, key in  # shapes: the same on any grid
                       (("C", 10.0, 3), ("S", (14, 6, 6), 4), ("B", 7.0, 5), ("G", 4.0, 6))})
        self.fr = Frame(self, g.s)
        if table:
            self._table()
        self._body()
        self._abdomen()
        self._thorax()
        self._vessels()
        self._lungs()
        self._bones()
        sdf, val = g.tubes(self.spots)
        g.blend(g.occupancy(sdf), val, where=g.label != self.L["air"])

    def tex(self, base, **amps):
        """base + sum of amplitude * shared random field (F 0.9 mm, M 3 mm, G 4 mm, C 10 mm, S, B 7 mm)."""
        out = np.full(self.g.shape, base, np.float32)
        for name, a in amps.items():
            out += a * self.f[name]
        return out

    def sheet(self, name="S", width=0.07):
        """Thin random sheets (the zero set of a field): fat septa, fasciae."""
        return np.exp(-(self.f[name] / width) ** 2)

    def organ(self, label, value, c, semi, angle=0.0, tilt=(0.0, 0.0), bump=0.06, within=None):
        g = self.g
        sl, rho = g.ellipsoid(c, np.multiply(semi, self.k), angle, tilt, (self.f["C"], bump))
        mask = rho < 1
        if within is not None:
            mask &= within[sl]
        g.paint(sl, mask, label, value)
        return sl, rho, mask

    def _table(self):
        g = self.g
        top = self.B * max(1.0, self.thB) + 2.0 + 12 * abs(g.roll)
        d = g.ys[:, None] - (top - 0.0006 * g.xs[None, :] ** 2)
        inside = np.abs(g.xs)[None, :] < 210
        shell = ((d > 0) & (d < 3.5) | (d > 14) & (d < 17)) & inside
        core = (d >= 3.5) & (d <= 14) & inside
        g.paint(slice(None), shell[None], self.L["table"], 80.0)
        g.paint(slice(None), core[None], self.L["table"], -850.0)

    def _body(self):
        g, L, s, fr, sl = self.g, self.L, self.g.s, self.fr, slice(None)
        post = g.y > 0
        body = superellipse(g.x, g.y, 0, 0, fr.A, np.where(post, fr.B * 0.97, fr.B), 2.3) < 1
        g.paint(sl, body, L["fat"], self.tex(-102, M=6, F=5) + 55 * self.sheet())
        b = np.where(post, fr.B * 0.97 - fr.fat_p, fr.B - fr.fat_a)
        wall = superellipse(g.x, g.y, 0, 0, fr.A - fr.fat_l, b, 2.3) < 1
        muscle = self.tex(52, M=5, F=6) - 90 * self.sheet("C", width=0.04)
        g.paint(sl, wall, L["muscle"], muscle)
        # cavity: thorax (lungs) above the diaphragm, abdomen (visceral fat) below, muscle in between
        self.cav = cav = self.cavity(g.x, g.y, fr)
        dome = self.dome(g.x, g.y, fr)
        self.thx, self.abd = cav & (s > dome), cav & (s < dome - 5)
        vessels = np.exp(-(self.f["S"] ** 2 + self.f["C"] ** 2) / 0.01)  # crossing sheets: small vessels
        g.paint(sl, self.abd, L["fat"], self.tex(-95, M=6, F=5) + (self.blood + 95) * vessels)
        g.paint(sl, cav & ~self.thx & ~self.abd, L["muscle"], self.tex(50, M=4))
        g.paint(sl, self.thx, L["lung"], -860.0)
        g.paint(sl, self.paraspinal(g.x, g.y, fr) & cav, L["muscle"], muscle)
        r = np.clip(8 + 0.13 * (self.dome_r - 70 - s), 0, 30) * self.k  # psoas
        for sgn in (-1, 1):
            ps = superellipse(g.x, g.y, fr.xsp + sgn * (22 + r), fr.ysp - 3, r + 1e-3, r * 0.85 + 1e-3) < 1
            g.paint(sl, ps & (r > 2), L["muscle"], muscle)

    def _abdomen(self):
        g, L, dr, dl = self.g, self.L, self.dome_r, self.dome_l
        a, b = self.ab
        abd, sl = self.abd, slice(None)
        # small bowel loops in the lower abdomen, colon framing them
        sb = (self.f["B"] > -0.3) & abd & (g.s < dr - 90 + 20 * self.f["C"])
        gas = (self.f["B"] > 0.9) & (self.f["G"] > 0.8)
        g.paint(sl, sb, L["bowel"], np.where(gas, -950, self.tex(18, M=8, F=5)))
        g.paint(sl, sb & (self.f["B"] < -0.05), L["bowel"], self.tex(75, M=6))
        colon = [(-0.72 * a, -0.05 * b, dr - 320, 22), (-0.75 * a, -0.1 * b, dr - 150, 24),
                 (-0.55 * a, -0.55 * b, dr - 100, 22), (0, -0.7 * b, dr - 140 + self.colon_dip, 20),
                 (0.6 * a, -0.45 * b, dr - 70, 21), (0.75 * a, 0.05 * b, dr - 110, 20),
                 (0.72 * a, 0.05 * b, dr - 320, 18)]
        sdf, _ = g.tubes(polyline_path(colon, 0.0))
        stool = np.where((self.f["G"] > 0.9) | (self.f["C"] > 0.4 + 0.6 * np.sign(g.x)), -900, self.tex(25, M=15))
        g.paint(sl, (sdf < 0) & abd, L["bowel"], stool)
        g.paint(sl, (sdf < 0) & (sdf > -2.5) & abd, L["bowel"], 60.0)
        # liver, gall bladder, spleen, stomach (gas above a fluid level: the patient is supine)
        liver = self.tex(self.liver_hu, M=6, F=5, C=4)
        for c, semi, ang in self.liver:
            self.organ(L["liver"], liver, c, semi, ang, within=abd)
        c, ang = self.gall
        self.organ(L["fluid"], self.tex(8, M=2), c, (14, 16, 32), ang, (0.15, 0.2), within=abd)
        c, ang = self.spleen
        self.organ(L["spleen"], self.tex(self.spleen_hu, M=6, F=5, C=3), c, (0.24 * a, 0.5 * b, 55), ang, within=abd)
        c, ang, fill = self.stomach
        sl2, rho, m = self.organ(L["stomach"], self.tex(45, M=5), c, (0.32 * a, 0.4 * b, 60), ang, within=abd)
        level_y = c[1] + 0.4 * b * self.k * fill
        g.paint(sl2, m & (rho < 0.88), L["stomach"], np.where(g.y[sl2] < level_y, -1000, self.tex(12, M=10)[sl2]))
        # kidneys: cortex, medulla, renal sinus fat
        for c, ang in self.kidneys:
            sgn = np.sign(c[0])
            sl2, rho, m = self.organ(L["kidney"], self.tex(0.8 * self.blood, M=6, F=6), c, (27, 22, 55), ang,
                                     (-sgn * 0.15, 0.05), bump=0.03, within=abd)
            medulla = m & (rho < 0.72 + 0.08 * self.f["G"][sl2])
            g.paint(sl2, medulla, L["kidney"], self.tex(0.5 * self.blood, M=8)[sl2])
            hil = (c[0] - sgn * 18 * np.cos(ang), c[1] - 14, c[2])
            sl3, rho3 = g.ellipsoid(hil, (9, 10, 22), ang)
            g.paint(sl3, (rho3 < 1) & (g.label[sl3] == L["kidney"]), L["fat"], self.tex(-70, M=10)[sl3])
        # pancreas: lobulated band from the splenic hilum across the midline
        pan = [(0.55 * a, 0.25 * b, dl - 75, 10), (0.2 * a, -0.15 * b, dr - 85, 11), (-0.05 * a, -0.2 * b, dr - 90, 12),
               (-0.25 * a, -0.05 * b, dr - 105, 14)]
        sdf, _ = g.tubes(polyline_path(pan, 0.0))
        lobules = self.tex(45, M=12) - 120 * (self.f["F"] > 1.3)
        g.paint(sl, (sdf < 3 * self.f["C"]) & abd, L["pancreas"], lobules)

    def _thorax(self):
        g, L, s, fr = self.g, self.L, self.g.s, self.fr
        thx = self.thx
        g.paint(slice(None), self.mediastinum(g.x, g.y, s, fr) & thx, L["fat"], self.tex(-90, M=8, F=5))
        # heart: epicardial fat, myocardium, four blood-filled chambers
        c, semi, ang = self.heart
        self.organ(L["fat"], self.tex(-90, M=8), c, semi * 1.1 / self.k, ang, bump=0.03, within=thx)
        self.organ(L["heart"], self.tex(60, M=6, F=4), c, semi / self.k, ang, bump=0.02, within=thx)
        # chambers in heart coordinates: u towards the apex (left, anterior), v posterior-left, s up
        su, sv, sz = semi
        ax_u, ax_v = np.array((np.cos(ang), np.sin(ang), 0)), np.array((-np.sin(ang), np.cos(ang), 0))
        at = lambda fu, fv, fs: tuple(np.array(c) + fu * su * ax_u + fv * sv * ax_v + (0, 0, fs * sz))  # noqa: E731
        blood, myo = self.tex(self.blood, M=5, F=4), self.tex(60, M=6)
        for label, value, centre, size in (
                (L["blood"], 0.9 * blood, (-0.05, -0.35, 0), (0.6, 0.36, 0.55)),  # right ventricle
                (L["heart"], myo, (0.12, 0.2, -0.05), (0.62, 0.5, 0.62)),  # left ventricular wall
                (L["blood"], blood, (0.12, 0.2, -0.05), (0.45, 0.3, 0.45)),  # left ventricle
                (L["blood"], blood, (-0.4, 0.45, 0.35), (0.35, 0.35, 0.35)),  # left atrium
                (L["blood"], 0.9 * blood, (-0.55, -0.15, 0.2), (0.35, 0.35, 0.4))):  # right atrium
            sl2, rho2 = g.ellipsoid(at(*centre), np.multiply(size, semi), ang, bump=(self.f["C"], 0.03))
            in_heart = np.isin(g.label[sl2], (L["heart"], L["blood"]))
            g.paint(sl2, (rho2 < 1) & in_heart, label, value)
        # oesophagus, behind the heart, in front of the spine
        dr = self.dome_r
        path = [(px, self.ysp(ps) - 20, ps, r) for px, ps, r in ((20, dr - 30, 7), (15, dr + 100, 8), (5, dr + 260, 8))]
        sdf, _ = g.tubes(polyline_path(path, 0.0))
        g.paint(slice(None), (sdf < 0) & self.cav & (s > dr - 40), L["soft"], self.tex(40, M=5))

    def _vessels(self):
        g, L = self.g, self.L
        sdf, val = g.tubes(self.vessel_segs)
        inside = self.cav | (g.label == L["muscle"])
        g.paint(slice(None), (sdf < 0) & inside, L["blood"], val + 6 * self.f["M"])

    def _lungs(self):
        """Parenchyma (denser where dependent), vessel trees, fissures, airways; veins in the liver."""
        g, L, fr = self.g, self.L, self.fr
        lung = g.label == L["lung"]
        grav = 35 * np.clip((g.y - fr.cy + fr.cb) / (2 * fr.cb), 0, 1)
        g.paint(slice(None), lung, L["lung"], self.tex(-875, M=10, F=8, C=8) + grav)
        micro = np.exp(-(self.f["G"] ** 2 + self.f["S"] ** 2) / 0.03)  # crossing sheets: small vessels
        g.blend(0.8 * micro, 20.0, where=lung)
        sdf, radius = g.tubes(self.lung_trees)
        hu = 30 + (self.blood - 30) * np.clip((radius - 1.5) / 4, 0, 1)  # large vessels enhance
        g.blend(g.occupancy(sdf, radius), hu, L["blood"], where=lung)
        for sgn, (hx, hy, hs) in zip((-1, 1), self.hila):  # oblique fissures
            n = np.array((0.25 * sgn, 0.75, -0.6))
            n /= np.linalg.norm(n)
            dist = (g.x - hx) * n[0] + (g.y - hy) * n[1] + (g.s - hs) * n[2] + 3 * self.f["C"]
            g.blend(0.5 * np.clip(1 - np.abs(dist) / 0.8, 0, 1) * (np.sign(g.x) == sgn), -600.0, where=lung)
        sdf, wall = g.tubes(np.concatenate([self.bronchi, self.airway_segs]))
        region = self.thx | lung
        g.blend(g.occupancy(sdf), self.tex(30, M=5), L["airway"], where=region)
        g.blend(g.occupancy(sdf + wall), -980.0, L["airway"], where=region)
        sdf, _ = g.tubes(self.liver_tree)
        liver = g.label == L["liver"]
        g.blend(g.occupancy(sdf), self.liver_hu + 0.45 * (self.blood - self.liver_hu), where=liver)

    def _bones(self):
        """Vertebrae (bodies, discs, posterior elements), ribs, costal cartilage, sternum, iliac wings;
        trabecular texture inside, a cortical shell at the surface."""
        g, L, dr, fr = self.g, self.L, self.dome_r, self.fr
        bone, endplate = np.zeros(g.shape, bool), np.zeros(g.shape, bool)
        # vertebrae, evaluated in a box around the spine; level phase ph runs 0..1 over disc + body
        bx = g.box((fr.xsp.min() - 80, fr.xsp.max() + 80), (fr.ysp.min() - 30, fr.ysp.max() + 95))
        x, y, _ = g.coords(bx)
        lev, tw, hz = (np.interp(g.zs, self.sf, f)[:, None, None] for f in (self.lev_f, self.tw_f, self.height_f))
        ph = lev % 1.0
        fd = (9 - 3 * tw) / hz  # disc fraction of a level
        ab, bb = (24 - 6 * tw) * self.k, (17 - 3 * tw) * self.k
        vb = superellipse(x, y, fr.xsp, fr.ysp, ab, bb) < 1
        g.paint(bx, vb & (ph < fd), L["cartilage"], self.tex(85, M=8))
        body = vb & (ph >= fd)
        endplate[bx] = body & ((ph < fd + 1.5 / hz) | (ph > 1 - 1.5 / hz))
        rc = 9 - tw
        yc = fr.ysp + bb + rc + 1
        canal = superellipse(x, y, fr.xsp, yc, rc * 1.2, rc) < 1
        ph_post = (ph - 0.6 * np.clip(y - yc, 0, None) / hz) % 1.0  # posterior elements slope down
        arch = (superellipse(x, y, fr.xsp, yc, rc * 1.2 + 7, rc + 7) < 1) & ~canal & (y > fr.ysp + 0.4 * bb)
        arch &= (ph_post > 0.25) & (ph_post < 0.8)
        spl = 30 + 6 * tw
        spin = superellipse(x, y, fr.xsp, yc + rc + spl / 2 + 3, 4.0, spl / 2) < 1
        spin &= (ph_post > 0.35) & (ph_post < 0.98)
        tl = 16 - 2 * tw
        trans = ((superellipse(np.abs(x - fr.xsp), y, ab + 0.5 * tl, yc - 2 + 4 * tw, tl, 3.5) < 1)
                 & (ph > 0.3) & (ph < 0.62))
        g.paint(bx, canal, L["fluid"], self.tex(20, M=4))
        bone[bx] = body | arch | spin | trans
        # sternum (wider manubrium) and iliac wings below the crest
        front = fr.cy - fr.cb - 6
        bx = g.box((-45, 45), (front.min() - 10, front.max() + 10), (dr + 8, dr + 235))
        x, y, s = g.coords(bx)
        bone[bx] |= (superellipse(x, y, 0, front[bx[0]], 13 + 10 * smoothstep(s, dr + 190, 10), 6.0) < 1)
        crest = dr - 215
        bx = g.box(s_range=(-1e4, crest))
        x, y, s = g.coords(bx)
        ia, ysp = 105 + 0.3 * np.clip(crest - s, 0, None), fr.ysp[bx[0]] - 15
        wing = (superellipse(x, y, 0, ysp, ia, 60.0) < 1) & ~(superellipse(x, y, 0, ysp, ia - 9, 51.0) < 1)
        bone[bx] |= wing & (np.abs(x) > 45) & (y > ysp - 35)
        # ribs and costal cartilage
        bone |= g.tubes(self.ribs)[0] < 0
        g.paint(slice(None), (g.tubes(self.cartilage)[0] < 0) & ~bone, L["cartilage"], self.tex(110, M=25))
        g.paint(slice(None), bone, L["bone"], self.tex(190, M=35) + 80 * np.tanh(1.5 * self.f["F"]))
        cortex = (bone & ~ndimage.binary_erosion(bone, np.ones((1, 3, 3), bool))) | endplate
        g.paint(slice(None), cortex, L["bone"], self.tex(1250, M=90, F=60))


def ct_phantom(shape=(32, 128, 128), seed: int = 0, pixel_size_mm: float | None = None,
               slice_thickness_mm: float = 2.5, *, z_center_mm: float | None = None, table: bool = True,
               return_labels: bool = False):
    """A 3D CT torso phantom in HU as a Volume (Z, Y, X); with return_labels also its CT_LABELS map (uint8).

    pixel_size_mm: default 384 mm / max(Y, X) (1.5 mm at 256², the body filling the field of view as in a
    real abdominal CT). z_center_mm: anatomical level of the middle slice relative to the right diaphragm
    dome, positive towards the head (about -250 lower abdomen .. +220 lung apex); default drawn from the
    seed. The anatomy depends on the seed only; the textures also on the grid.
    """
    shape = check_geometry(seed, shape, pixel_size_mm, slice_thickness_mm)
    px = float(pixel_size_mm or 384.0 / max(shape[1:]))
    dz = float(slice_thickness_mm)
    rng = np.random.default_rng([int(seed), 7])
    torso = _Torso(rng)
    extent = shape[0] * dz
    lo, hi = -240 + extent / 2, 200 - extent / 2
    zc = float(z_center_mm) if z_center_mm is not None else (rng.uniform(lo, hi) if lo < hi else -20.0)
    g = Grid(shape, (dz, px, px), zc + torso.dome_r, 2 * int(seed),
              rng.uniform(2.5, 5.0), rng.uniform(-0.05, 0.05), -1000.0)
    torso.paint(g, table)
    apply_psf(g)
    hu = np.clip(g.value, -1024, 3071)
    vol = as_volume(hu, (dz, px, px), {"modality": "CT", "source": "medrecon synthetic phantom", "seed": int(seed),
                                     "units": "HU", "z_center_mm": zc, "contrast_blood_hu": round(torso.blood, 1)})
    return (vol, g.label) if return_labels else vol
