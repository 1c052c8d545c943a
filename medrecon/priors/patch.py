"""Patch-based, position-aware diffusion prior (PaDIS; Hu, Song, Xu, Shen, Fessler, NeurIPS 2024).

The network is an EDM-preconditioned diffusers UNet2DModel (unet.py, network.py) with three input channels:
the noisy patch and two position channels holding, for every pixel of the patch, its normalised x and y
coordinate in the WHOLE slice. It is trained on random patches of several sizes, so it never needs a whole
slice, and the slice size at inference is free.

Positions (``POSITION_CONVENTION``): by pixel index, relative to the slice. The pixel in column j of a
slice W pixels wide has x = -1 + 2 j / (W - 1); the row i of H rows has y = -1 + 2 i / (H - 1); so the
corner pixel centres are exactly (+-1, +-1) whatever the slice size (a 1-pixel axis has 0). Channel 1 of
the network input is x, channel 2 is y. A position is therefore a fraction of the field of view, not a
physical distance: the denoiser needs no pixel size at inference (the Denoiser contract passes none).
Pixel size still matters for texture: training samples slices over a range of pixel sizes (random
in-plane rescaling); the card's ``pixel_spacing_mm_range`` records that range, and slices should be
reconstructed at a pixel size inside it.

Whole-slice denoising (:func:`patchwise`): shift a patch grid by a random offset (drawn from the prior's
own seeded generator at every call, so patch borders move between diffusion steps and runs are
reproducible), pad the slice (reflect) to whole patches, denoise all patches in batches with their
position channels, stitch, crop. Tiles do not overlap, so if the network returned its input D would be the
identity exactly: stitching adds no seams of its own.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .base import IntensityMap, stack_indices
from .network import EDMPrior, edm_denoise

ARCHITECTURE = "diffusers-unet2d-patch"
POSITION_CONVENTION = "pixel-index: x = -1 + 2 j / (W - 1), y = -1 + 2 i / (H - 1) over the whole slice"


# ---- positions and whole-slice denoising from patches ------------------------------------------------------

def slice_positions(rows: torch.Tensor, cols: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Position channels (2, len(rows), len(cols)): x of each column index and y of each row index in a
    slice of ``height`` x ``width`` (indices may lie outside it, e.g. in padding: they extrapolate)."""
    dt = rows.dtype if rows.is_floating_point() else torch.float32
    x = -1.0 + 2.0 * cols.to(dt) / (width - 1) if width > 1 else torch.zeros(len(cols), dtype=dt, device=cols.device)
    y = -1.0 + 2.0 * rows.to(dt) / (height - 1) if height > 1 else torch.zeros(len(rows), dtype=dt,
                                                                                  device=rows.device)
    return torch.stack([x[None, :].expand(len(rows), -1), y[:, None].expand(-1, len(cols))])


def position_channels(height: int, width: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Position channels (2, H, W) of a whole slice: x in channel 0, y in channel 1, corners +-1."""
    r = torch.arange(height, dtype=dtype, device=device)
    c = torch.arange(width, dtype=dtype, device=device)
    return slice_positions(r, c, height, width)


def _pad(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    if not any(pad):
        return x
    l, r, t, b = pad
    if max(l, r) < x.shape[-1] and max(t, b) < x.shape[-2]:
        return F.pad(x, pad, mode="reflect")
    return F.pad(x, pad, mode="replicate")


def patchwise(fn, x: torch.Tensor, sigma: torch.Tensor, patch_size: int, offset=(0, 0),
              max_batch: int | None = None) -> torch.Tensor:
    """Apply a patch denoiser ``fn(patches (N,C,P,P), positions (N,2,P,P), sigma (N,)) -> (N,1,P,P)`` to
    whole slices x (B, C, H, W) of any size (channel 0 the slice, any others its context): a grid of P x P
    tiles shifted by ``offset`` = (dy, dx) in [0, P) covers the slice (padded by reflection to whole tiles);
    outputs are stitched and cropped back to (B, 1, H, W)."""
    b, c, h, w = x.shape
    p = int(patch_size)
    oy, ox = (int(o) % p for o in offset)
    hp, wp = math.ceil((h + oy) / p) * p, math.ceil((w + ox) / p) * p
    xp = _pad(x, (ox, wp - w - ox, oy, hp - h - oy))
    nh, nw = hp // p, wp // p
    tiles = xp.reshape(b, c, nh, p, nw, p).permute(0, 2, 4, 1, 3, 5).reshape(b * nh * nw, c, p, p)
    rows = torch.arange(hp, device=x.device, dtype=x.dtype) - oy
    cols = torch.arange(wp, device=x.device, dtype=x.dtype) - ox
    pos = slice_positions(rows, cols, h, w).reshape(2, nh, p, nw, p).permute(1, 3, 0, 2, 4)
    pos = pos.reshape(1, nh * nw, 2, p, p).expand(b, -1, -1, -1, -1).reshape(b * nh * nw, 2, p, p)
    sig = sigma.reshape(-1).to(x.dtype).repeat_interleave(nh * nw)
    n = tiles.shape[0]
    step = n if not max_batch else int(max_batch)
    out = torch.cat([fn(tiles[i:i + step], pos[i:i + step], sig[i:i + step]) for i in range(0, n, step)])
    out = out.reshape(b, nh, nw, 1, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, 1, hp, wp)
    return out[..., oy:oy + h, ox:ox + w]


class PatchPrior(EDMPrior):
    """A patch-trained, position-aware EDM prior used on whole slices of any size (``image_size`` None).

    ``patch_size``: the tile size at inference (the card's ``patch.inference_size``, by default the largest
    training size); ``seed``: of the generator that shifts the tile grid at each call (``reseed`` restarts
    it); ``shift=False`` keeps the grid fixed at offset 0 (diagnosis only); ``max_batch``: patches per
    network call (bounds memory); ``shifts``: tile grids averaged per call, the first at a random offset and
    the others spread evenly over the diagonal (1: PaDIS; 2 removes the tile seams a single call leaves at
    small noise levels, at twice the cost); ``context_slices`` (k > 0: a 2.5D prior, whose network also sees
    the k noisy slices on each side, see ``Denoiser.denoise``)."""

    def __init__(self, network, card, schedule, intensity, *, patch_size: int, sigma_data: float = 0.5,
                 seed: int = 0, max_batch: int = 64, shift: bool = True, shifts: int = 1, context_slices: int = 0,
                 name=None, weights_path=None):
        super().__init__(network, card, schedule, intensity, None, name=name, weights_path=weights_path,
                         sigma_data=sigma_data)
        self.context_slices = int(context_slices)
        self.patch_size = int(patch_size)
        self.max_batch = int(max_batch)
        self.shift, self.shifts = shift, max(1, int(shifts))
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self._pass: list | None = None  # the offsets drawn in the current pass (``one_tiling``)
        self._call = 0

    def reseed(self, seed: int | None = None) -> "PatchPrior":
        """Restart the grid-shift generator (at ``seed``, default the prior's own)."""
        self.generator.manual_seed(self.seed if seed is None else int(seed))
        return self

    @contextmanager
    def one_tiling(self):
        """One pass over a volume in chunks of slices: the k-th call of every chunk (``next_chunk`` starts one)
        takes the k-th tile offset drawn in the pass, so a result does not depend on the chunk size. With one
        chunk the offsets are those drawn without it."""
        self._pass, self._call = [], 0
        try:
            yield
        finally:
            self._pass = None

    @contextmanager
    def seamless(self, shifts: int = 2):
        """At least ``shifts`` tile grids per call (see ``Denoiser.seamless``): one grid leaves seams of about the
        noise level, 10-20 HU at the final sigma 0.02 of a CT prior (visible in a narrow window)."""
        before = self.shifts
        self.shifts = max(before, int(shifts))
        try:
            yield
        finally:
            self.shifts = before

    def next_chunk(self) -> None:
        self._call = 0

    def next_offset(self) -> tuple[int, int]:
        if not self.shift:
            return (0, 0)
        if self._pass is not None and self._call < len(self._pass):
            offset = self._pass[self._call]
        else:
            offset = tuple(torch.randint(self.patch_size, (2,), generator=self.generator).tolist())
            if self._pass is not None:
                self._pass.append(offset)
        self._call += 1
        return offset

    def _patch_fn(self, tiles, pos, sigma):
        context = tiles[:, 1:] if self.context_slices else None
        return edm_denoise(self.network, tiles[:, :1], sigma, self.sigma_data, cond=pos, context=context)

    def _denoise_native(self, x, sigma):
        dy, dx = self.next_offset()
        step = self.patch_size // self.shifts
        out = [patchwise(self._patch_fn, x, sigma, self.patch_size, (dy + k * step, dx + k * step), self.max_batch)
               for k in range(self.shifts)]
        return out[0] if self.shifts == 1 else torch.stack(out).mean(0)


def patch_prior_from_card(network, card: dict, schedule, intensity, weights_path=None, **kw) -> PatchPrior:
    p = card.get("patch") or {}
    sizes = p.get("sizes") or [network.config.sample_size]
    tile = int(p.get("inference_size") or max(sizes))
    step = 2 ** (len(network.config.block_out_channels) - 1)  # the UNet halves a tile this many times over
    if tile % step:
        raise InputError(f"{card.get('name', 'the prior')}'s card: patch.inference_size {tile} is not a multiple of "
                         f"{step} (the network's {len(network.config.block_out_channels)} levels): give one that is")
    return PatchPrior(network, card, schedule, intensity, patch_size=tile,
                      sigma_data=float((card.get("config") or {}).get("sigma_data", 0.5)),
                      seed=int(p.get("seed", 0)), shifts=int(p.get("inference_shifts", 1)),
                      context_slices=int(p.get("context_slices", 0)), weights_path=weights_path, **kw)


# ---- training data: whole volumes at their own pixel size, patches drawn with augmentation -------------------

@dataclass
class PatchData:
    """Training volumes for a patch prior: per volume (Z, 1, H, W) float32 in the model range, at the
    volume's own in-plane pixel size ``spacings[k]`` = (x, y) mm (None when unknown)."""

    volumes: list
    spacings: list
    modality: str | None
    intensity: dict
    description: dict = field(default_factory=dict)

    @property
    def n_slices(self) -> int:
        return int(sum(v.shape[0] for v in self.volumes))

    def volume_name(self, k: int) -> str:
        """Volume ``k`` (from 0) as messages name it: its recorded path, else 'volume k+1'."""
        from .training_data import volume_name, volume_names

        return volume_name(volume_names(self.description), k)


def prepare_volumes(volumes, intensity: dict, *, magnitude_percentile: float | None = None,
                    model_range=(-1.0, 1.0), min_std: float = 1e-3, default_spacing_mm: float = 1.0,
                    modality: str | None = None, sources=None) -> PatchData:
    """Axial slices of ``volumes`` (Volume objects or (Z, Y, X) arrays) mapped to the model range.

    ``intensity``: the caller's physical window {physical_min, physical_max, unit, ...}; its model range is
    set to ``model_range``. ``magnitude_percentile`` (e.g. 99.5 for MRI magnitude): each volume becomes
    |v| / its percentile before the window. Nearly constant slices (std < ``min_std``) are dropped."""
    from ..volume import Volume
    from .training_data import model_slices

    imap = {**intensity, "model_min": float(model_range[0]), "model_max": float(model_range[1])}
    vols, spacings, kept, src = [], [], [], []
    to_model = IntensityMap.from_dict(imap)  # a usable window, or raises
    for i, v in enumerate(volumes):
        x = model_slices(v, to_model, magnitude_percentile)
        x = x[x.flatten(1).std(dim=1) >= min_std].contiguous()
        kept.append(int(x.shape[0]))
        if x.shape[0] == 0:
            continue
        vols.append(x)
        sp = (float(v.spacing[0]), float(v.spacing[1])) if isinstance(v, Volume) else (default_spacing_mm,) * 2
        spacings.append(sp)
        if sources is not None:
            src.append(sources[i])
    if not vols:
        raise InputError("no usable training slices: the volumes are empty or constant in the intensity window")
    desc = {"volumes": [str(s) if not isinstance(s, dict) else s for s in src] if sources is not None
            else f"{len(kept)} in-memory volumes",
            "n_volumes": len(vols), "n_slices": int(sum(kept)), "slices_per_volume": kept,
            "pixel_spacing_mm": [[round(a, 4), round(b, 4)] for a, b in spacings]}
    return PatchData(vols, spacings, modality, imap, desc)


# ---- the pixel sizes a patch may be drawn at: the one rule (README: "no patch is drawn finer than its scan's pixel
# size / 1.25 nor coarser than its slice holds") that the sampler, the check of a training or self-adapted slice
# (too_small_for_patches) and the range a card records (train.trained_pixel_range) all apply ----------------------

def finest_pixel_size(spacing_xy, max_upsample: float) -> float:
    """The finest pixel size (mm) a patch of a slice at ``spacing_xy`` (x, y) mm is drawn at: its coarser pixel side
    / ``max_upsample``."""
    return max(spacing_xy[0], spacing_xy[1]) / max_upsample


def slice_extent(shape_hw, spacing_xy) -> float:
    """The shorter side (mm) of a slice of ``shape_hw`` (H, W) pixels at ``spacing_xy`` (x, y) mm."""
    return min(shape_hw[0] * spacing_xy[1], shape_hw[1] * spacing_xy[0])


def holds_patch(shape_hw, spacing_xy, p: int, s: float) -> bool:
    """Whether a slice of ``shape_hw`` pixels at ``spacing_xy`` mm holds a ``p``-pixel patch of ``s`` mm pixels (a
    slice exactly that size does): the rule's one comparison, so that the check and the draws agree at the limit."""
    return p * s <= slice_extent(shape_hw, spacing_xy)


def too_small_for_patches(shape_hw, spacing_xy, sizes, spacing_range, max_upsample: float) -> str | None:
    """Why slices of ``shape_hw`` pixels at ``spacing_xy`` mm cannot give the largest patch of ``sizes`` at any
    pixel size the training may draw (from ``spacing_range``, never finer than ``finest_pixel_size``), or None when
    they can (``holds_patch``)."""
    finest = max(spacing_range[0], finest_pixel_size(spacing_xy, max_upsample))
    if not holds_patch(shape_hw, spacing_xy, max(sizes), finest):
        return f"its slices span {slice_extent(shape_hw, spacing_xy):.0f} mm, too little for a {max(sizes)}-pixel " \
               f"patch at {finest:.3g} mm (the smallest pixel size allowed)"
    return None


def drawn_pixel_size(s: float, spacing_xy, shape_hw, p: int, max_upsample: float) -> float:
    """The pixel size (mm) a ``p``-pixel patch of a slice of ``shape_hw`` pixels at ``spacing_xy`` mm is drawn at
    when ``s`` mm is asked: never finer than ``finest_pixel_size``; where the slice does not hold the patch at that
    (``holds_patch``), the coarsest it holds, its extent / ``p`` (finer than allowed only for a slice
    ``too_small_for_patches`` refuses)."""
    finest = finest_pixel_size(spacing_xy, max_upsample)
    s = max(s, finest)
    if holds_patch(shape_hw, spacing_xy, p, s):
        return s
    coarsest = slice_extent(shape_hw, spacing_xy) / p  # at the limit it may round just below the finest it holds
    return max(coarsest, finest) if holds_patch(shape_hw, spacing_xy, p, finest) else coarsest


def drawn_pixel_range(shapes, spacings, sizes, spacing_range, max_upsample: float) -> tuple[float, float]:
    """The smallest and largest pixel size (mm) :class:`PatchSampler` draws from slices of ``shapes`` (H, W) at
    ``spacings`` (x, y) mm, patches of ``sizes`` and ``spacing_range`` asked (``drawn_pixel_size`` of its ends)."""
    cases = [(sp, sh, p) for sh, sp in zip(shapes, spacings) for p in sizes]
    return (min(drawn_pixel_size(spacing_range[0], *c, max_upsample) for c in cases),
            max(drawn_pixel_size(spacing_range[1], *c, max_upsample) for c in cases))


class PatchSampler:
    """Random training patches with their position channels, drawn from ``PatchData`` with augmentation.

    Per batch one patch size P (``sizes`` with ``probs``); the batch holds ``pixels // P^2`` patches (at
    least 1) so every step costs about the same. Per patch: a slice uniformly over all slices; a target
    pixel size s ~ log-uniform over ``spacing_range`` mm (at most ``max_upsample`` x finer than the scan's
    own, and coarse enough for the slice to hold a patch); a rotation of the whole slice by U(-rotate_deg,
    rotate_deg) degrees; a left-right flip with probability 1/2; then the patch position uniformly inside
    the rescaled slice. Positions refer to the rescaled, rotated slice. Downsampling is antialiased by
    sampling (bilinear) from a 2x box-filtered pyramid level at most 2x finer than the target. Intensity
    jitter x -> x (1 + a) + b, a, b ~ U(-j, j); before it, with ``scale_range`` (lo, hi), a brightness scale
    x -> o + c (x - o), c ~ log-uniform over [lo, hi], about ``scale_origin`` o (the model value of physical 0:
    an MR magnitude image c times as bright). With probability ``fov_crop`` the rescaled slice is first cut to a
    random window (each side uniform between P and the slice's, placed uniformly) that then counts as the whole
    slice for the positions: scans whose field of view cuts through the body have no air at their edges, and a
    prior that only saw whole bodies paints a skin line there. With probability ``phase`` a patch becomes one
    part of a complex image with a smooth synthetic phase (``synthetic_phase``): x -> o + (x - o) cos(phi). With
    probability ``contrast`` (before the phase) its intensities go through a random curve (``random_contrast``)
    over the data's intensity window (its bottom, air, is kept): another contrast of the same anatomy.
    ``context`` k > 0 (2.5D): each patch also carries the same region of the k slices below and the k above
    (channels 1..2k; the volume's edge slice repeats past its ends), their order reversed with probability 1/2
    (z flip)."""

    def __init__(self, data: PatchData, sizes=(16, 32, 64), probs=None, pixels: int = 8 * 64 * 64,
                 spacing_range=(0.7, 4.0), max_upsample: float = 1.25, rotate_deg: float = 10.0,
                 flip: bool = True, jitter: float = 0.02, max_batch: int = 256, context: int = 0,
                 scale_range=None, scale_origin: float = 0.0, fov_crop: float = 0.0, phase: float = 0.0,
                 contrast: float = 0.0):
        self.context = int(context)
        self.phase, self.contrast = float(phase), float(contrast)
        imap = IntensityMap.from_dict(data.intensity)
        self.window = (float(imap.model_min), float(imap.model_max))  # the intensity window in model units
        self.fov_crop = float(fov_crop)
        self.scale_range = tuple(float(v) for v in scale_range) if scale_range else None
        self.scale_origin = float(scale_origin)
        self.sizes = [int(s) for s in sizes]
        p = np.asarray(probs if probs is not None else [1.0] * len(self.sizes), dtype=np.float64)
        self.probs = torch.tensor(p / p.sum())
        self.pixels, self.max_batch = int(pixels), int(max_batch)
        self.spacing_range = (float(spacing_range[0]), float(spacing_range[1]))
        self.max_upsample, self.rotate_deg, self.flip, self.jitter = float(max_upsample), float(rotate_deg), flip, \
            float(jitter)
        self.spacings = data.spacings
        for k, (v, spacing) in enumerate(zip(data.volumes, self.spacings)):  # else the pixel size leaves the range
            why = too_small_for_patches(v.shape[-2:], spacing, self.sizes, self.spacing_range, self.max_upsample)
            if why:
                raise InputError(f"{data.volume_name(k)}: {why}: give smaller --patch-sizes, or leave the volume out")
        self.pyramids = []
        for v in data.volumes:
            levels = [v]
            while min(levels[-1].shape[-2:]) >= 2 * max(self.sizes) and len(levels) < 6:
                levels.append(F.avg_pool2d(levels[-1], 2))
            self.pyramids.append(levels)
        counts = torch.tensor([float(v.shape[0]) for v in data.volumes])
        self.vol_probs = counts / counts.sum()
        self.used_spacing = [math.inf, 0.0]  # smallest and largest pixel size actually drawn (the run's)
        self.last_spacing = (math.inf, 0.0)  # the same, of the last batch

    def batch_size(self, p: int) -> int:
        return max(1, min(self.max_batch, self.pixels // (p * p)))

    def sample(self, gen: torch.Generator, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(patches (B, 1 + 2 context, P, P), positions (B, 2, P, P)) on the CPU."""
        p = size or self.sizes[int(torch.multinomial(self.probs, 1, generator=gen))]
        b = self.batch_size(p)
        vols = torch.multinomial(self.vol_probs, b, replacement=True, generator=gen).tolist()
        u = torch.rand(b, 12 if self.fov_crop else 7, generator=gen, dtype=torch.float64).numpy()
        xs, ps, spacings = [], [], []
        for k, v in enumerate(vols):
            x, pos, s = self._one(v, p, u[k])
            xs.append(x)
            ps.append(pos)
            spacings.append(s)
        x, pos = torch.stack(xs), torch.stack(ps)
        self.last_spacing = (min(spacings), max(spacings))
        self.record_spacing(*self.last_spacing)
        if self.scale_range:
            lo, hi = (math.log(v) for v in self.scale_range)
            c = torch.exp(lo + torch.rand(b, 1, 1, 1, generator=gen) * (hi - lo))
            x = self.scale_origin + c * (x - self.scale_origin)
        if self.contrast:
            keep = (torch.rand(b, generator=gen) >= self.contrast).view(-1, 1, 1, 1)
            lo, span = self.window[0], self.window[1] - self.window[0]
            x = torch.where(keep, x, lo + span * random_contrast((x - lo) / span, gen))
        if self.phase:
            keep = torch.rand(b, generator=gen) >= self.phase
            cos = torch.where(keep.view(-1, 1, 1, 1), 1.0, torch.cos(synthetic_phase(pos[:, 0:1], pos[:, 1:2], gen)))
            x = self.scale_origin + cos * (x - self.scale_origin)
        if self.jitter:
            a, c = (torch.rand(2, b, 1, 1, 1, generator=gen) * 2 - 1) * self.jitter
            x = x * (1 + a) + c
        return x, pos

    def record_spacing(self, lo: float, hi: float) -> None:
        """Widen ``used_spacing`` (the run's smallest and largest pixel size drawn, for the card) to [lo, hi]."""
        self.used_spacing = [min(self.used_spacing[0], float(lo)), max(self.used_spacing[1], float(hi))]

    def _one(self, v: int, p: int, u) -> tuple[torch.Tensor, torch.Tensor, float]:
        levels = self.pyramids[v]
        z_n, _, h0, w0 = levels[0].shape
        sx0, sy0 = self.spacings[v]
        lo, hi = self.spacing_range
        s = math.exp(math.log(lo) + u[0] * (math.log(hi) - math.log(lo)))
        s = drawn_pixel_size(s, (sx0, sy0), (h0, w0), p, self.max_upsample)
        h1, w1 = max(p, int(h0 * sy0 / s)), max(p, int(w0 * sx0 / s))
        z = min(int(u[1] * z_n), z_n - 1)
        hc, wc, oi, oj = h1, w1, 0, 0  # the window that counts as the slice (fov_crop), its offset
        if len(u) > 7 and u[7] < self.fov_crop:
            hc, wc = p + min(int(u[8] * (h1 - p + 1)), h1 - p), p + min(int(u[9] * (w1 - p + 1)), w1 - p)
            oi, oj = min(int(u[10] * (h1 - hc + 1)), h1 - hc), min(int(u[11] * (w1 - wc + 1)), w1 - wc)
        i1 = oi + min(int(u[2] * (hc - p + 1)), hc - p)
        j1 = oj + min(int(u[3] * (wc - p + 1)), wc - p)
        theta = math.radians((2 * u[4] - 1) * self.rotate_deg)
        flip = self.flip and u[5] < 0.5
        r = torch.arange(p, dtype=torch.float32)
        rows, cols = i1 + r, j1 + r
        pos = slice_positions(rows - oi, cols - oj, hc, wc)
        # output pixel (centred, in output pixels) -> rotated -> source pixel of level 0
        uu = (rows - (h1 - 1) / 2)[:, None].expand(p, p)
        ww = (cols - (w1 - 1) / 2)[None, :].expand(p, p)
        ct, st = math.cos(theta), math.sin(theta)
        ys = (h0 - 1) / 2 + (ct * uu - st * ww) * (s / sy0)
        xs = (w0 - 1) / 2 + (st * uu + ct * ww) * (s / sx0)
        if flip:
            xs = (w0 - 1) - xs
        f = min(s / sy0, s / sx0)
        lev = max(0, min(len(levels) - 1, int(math.floor(math.log2(f))) if f >= 2 else 0))
        stack = stack_indices(z, z_n, self.context, z_flip=self.context > 0 and u[6] < 0.5)
        img = levels[lev][stack].reshape(1, -1, *levels[lev].shape[-2:])  # (1, 1 + 2 context, h, w)
        k = 2 ** lev
        yl, xl = (ys - (k - 1) / 2) / k, (xs - (k - 1) / 2) / k
        hl, wl = img.shape[-2:]
        grid = torch.stack([2 * xl / max(wl - 1, 1) - 1, 2 * yl / max(hl - 1, 1) - 1], dim=-1)[None]
        out = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out[0], pos, s


def synthetic_phase(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, std: float = 1.0) -> torch.Tensor:
    """A smooth random phase (radians) at slice positions x, y in [-1, 1] (B, 1, P, P): per item a uniform
    constant plus a quadratic a1 x + a2 y + a3 (x^2 - 1/3) + a4 (y^2 - 1/3) + a5 x y, a_k ~ N(0, std^2), which
    spreads about 1 rad over a slice (a coil-combined brain image's phase spreads about as much, with slow
    gradients). cos(phase) times a magnitude image is the real part of a complex image with that phase; the
    constant, uniform over the circle, makes it the imaginary part as often."""
    b = x.shape[0]
    c0 = torch.rand(b, 1, 1, 1, generator=gen) * 2 * math.pi
    a = torch.randn(5, b, 1, 1, 1, generator=gen) * std
    return c0 + a[0] * x + a[1] * y + a[2] * (x * x - 1 / 3) + a[3] * (y * y - 1 / 3) + a[4] * x * y


def random_contrast(t: torch.Tensor, gen: torch.Generator, knots: int = 3) -> torch.Tensor:
    """A random intensity curve per item of t (B, C, P, P; the intensity window as 0..1): piecewise linear through
    0 at 0 and values ~ U(0.05, 1) at 1/3, 2/3 and 1, scaled so that the largest is 1, extended linearly past both
    ends. It keeps air (the window's bottom) at 0 and may reorder the tissues (T1 -> T2-like: dark fluid made bright), so a prior trained with
    it has seen more than its scans' contrasts."""
    b = t.shape[0]
    v = torch.rand(b, knots, generator=gen) * 0.95 + 0.05
    v = torch.cat([torch.zeros(b, 1), v / v.max(1, keepdim=True).values], 1)
    v = v.view(b, knots + 1, 1, 1).expand(b, knots + 1, *t.shape[-2:])
    seg = torch.clamp(torch.floor(t * knots), 0, knots - 1).long()
    lo, hi = torch.gather(v, 1, seg), torch.gather(v, 1, seg + 1)  # the curve at each pixel's knots, per channel
    return lo + (hi - lo) * (t * knots - seg)


def heldout_slices(data: PatchData, spacing_mm: float = 2.0, per_volume: int = 4,
                   context: int = 0) -> list[torch.Tensor]:
    """Fixed whole slices for the held-out loss: ``per_volume`` evenly spaced slices of each volume,
    resampled (antialiased) to ``spacing_mm`` pixels; one tensor (n, 1 + 2 context, H, W) per volume
    (``context`` > 0: each slice with its neighbours, as ``stack_indices`` orders them)."""
    out = []
    for v, (sx, sy) in zip(data.volumes, data.spacings):
        idx = np.unique(np.linspace(0, v.shape[0] - 1, per_volume + 2)[1:-1].round().astype(int))
        x = v[[j for i in idx for j in stack_indices(int(i), v.shape[0], context)]].reshape(
            len(idx), 1 + 2 * context, *v.shape[-2:])
        h, w = max(8, round(x.shape[-2] * sy / spacing_mm)), max(8, round(x.shape[-1] * sx / spacing_mm))
        if (h, w) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        out.append(x.contiguous())
    return out


__all__ = ["ARCHITECTURE", "POSITION_CONVENTION", "PatchPrior", "PatchData", "PatchSampler", "heldout_slices",
           "patch_prior_from_card", "patchwise", "position_channels", "prepare_volumes", "slice_positions",
           "random_contrast", "synthetic_phase"]
