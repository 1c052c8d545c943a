"""Train a 2D diffusion prior on axial slices of the user's volumes (medrecon's own format, see unet.py).

Two architectures (``TrainOptions.arch``):

* ``unet``: whole slices. Volumes -> axial slices -> the caller's intensity window mapped to [-1, 1]
  (optionally per-volume magnitude / percentile first, for MRI) -> centre crop to square and resize to
  the training size (``prepare_slices`` / ``load_slices``).
* ``patch``: position-aware patches (PaDIS, patch.py). Volumes are kept at their own pixel size
  (``patch.prepare_volumes`` / ``load_patch_data``); every step draws random patches of one of several
  sizes with their position channels, under random in-plane rescaling over a range of pixel sizes, small
  rotations, left-right flips and intensity jitter. The held-out loss is scored on whole slices through the
  stitched patch denoiser.

The core knows no modality: the intensity window (and the MRI normalisation) comes from the caller
(``medrecon train`` takes them from pipelines.modality). Training: EDM denoising score matching (sigma
log-normal, preconditioned D, loss weight (s^2+sd^2)/(s*sd)^2), Adam with a short warm-up, gradient
clipping, EMA of the weights, bf16 autocast on CUDA, checkpoints with exact resume, a loss log (CSV), a
held-out loss log (CSV), sample grids (PNG) and, at every checkpoint, an exported prior folder that
``load_prior`` accepts (the EMA weights + model card).

Output folder::

    model_card.yaml  config.json  diffusion_pytorch_model.safetensors   <- the prior (EMA weights)
    loss.csv  heldout.csv  samples/step_XXXXXXX.png  checkpoints/state.pt   <- training record and state
"""
from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from ..device import bf16_native, resolve_device
from ..errors import InputError, one_line
from ..io.atomic import os_reason
from .base import Denoiser, IntensityMap, schedule_from_dict
from .card import CARD_NAME
from .network import EDMPrior, bf16_autocast, edm_denoise, image_convs
from .samples import GRID_STEPS, draw_command, draw_grid, grid_path, skipped_grid
from .training_data import volume_name, volume_names
from .unet import CONFIG_NAME, EDM_SCHEDULE, WEIGHTS_NAME, build_unet, save_unet_prior, unet_config
from .widen import wide_config, widen_state_dict, widening_factor

STATE_FILE = Path("checkpoints") / "state.pt"


ARCHS = ("unet", "patch")


@dataclass
class TrainOptions:
    arch: str = "unet"  # 'unet': whole slices at image_size; 'patch': position-aware patches (patch.py)
    image_size: int = 64  # unet: the slice size (patch: unused, the network's size is max(patch_sizes))
    channels: tuple = (32, 64, 128, 128)
    layers_per_block: int = 1
    attention: bool | None = None  # self-attention at the coarsest level (None: yes for unet, no for patch)
    steps: int = 5000
    time_limit: float | None = None  # wall-clock minutes of the loop; then stop early and export (resume continues)
    batch_size: int = 16  # unet: slices per step; patch: patches of the largest size per step (smaller: more)
    lr: float = 2e-4
    warmup: int = 200  # steps of linear lr warm-up (at most steps // 10)
    lr_final: float | None = None  # cosine decay from lr to this at the last step (None: constant lr)
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    sigma_data: float = 0.5
    p_mean: float = -1.2  # ln(sigma) ~ N(p_mean, p_std^2) during training (EDM)
    p_std: float = 1.2
    flip: bool = True  # left-right flips
    intensity_jitter: float = 0.02  # x -> x * (1 + a) + b, a, b ~ U(-j, j), in the model range
    fov_crop: float = 0.0  # patch: probability that a slice is cut to a random smaller field of view first
    intensity_scale: tuple | None = None  # patch: brightness c ~ log-U(lo, hi) about physical 0 (MR magnitude)
    synthetic_phase: float = 0.0  # patch: probability that a patch is a part of a complex image (smooth phase)
    random_contrast: float = 0.0  # patch: probability that a patch's intensities go through a random curve
    patch_sizes: tuple = (16, 32, 64)  # patch: training patch sizes (each divisible by 2^(levels-1))
    patch_probs: tuple | None = None  # patch: probability of each size (None: equal)
    patch_inference_size: int | None = None  # patch: tile size at inference (None: the largest)
    # patch: tile grids averaged per denoiser call (1: PaDIS's single grid, seams); None: the --init-from patch
    # prior's (a fine-tune runs as fast as what it started from), else 2
    patch_inference_shifts: int | None = None
    pixel_spacing_range: tuple | None = None  # patch: in-plane pixel sizes (mm) drawn by random rescaling (None:
    #                                           0.7-4.0 widened to take in the training scans' own, pixel_range_for)
    max_upsample: float = 1.25  # patch: never draw pixels finer than the scan's own / this
    rotate_deg: float = 10.0  # patch: random in-plane rotation in [-r, r] degrees
    heldout_spacing_mm: float = 2.0  # patch: pixel size of the held-out whole slices
    context_slices: int = 0  # patch: 2.5D, the network also sees this many noisy slices on each side
    init_from: str | None = None  # a prior folder whose weights start the network (extra inputs start at 0)
    sampler_errors: str | None = None  # patch: a folder of recorded sampler steps (sampler_errors.py)
    sampler_error_prob: float = 0.5  # patch: probability that a step trains on recorded steps
    sampler_error_sigma_min: float = 0.0  # patch: only recorded steps at this noise level or above
    loader_workers: int = 0  # patch: processes drawing the batches ahead, seeded per step (0: the run's generator)
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast (input convolution fp32) where the device has native bf16, else fp32
    log_every: int = 10
    checkpoint_every: int = 1000
    heldout_every: int | None = None  # held-out loss every N steps (None: at every checkpoint; 0: never)
    sample_every: int = 1000  # a sample grid every N steps and after the last (0 or -1: none; the CLI's
    #                            --sample-every 0, after the last only, passes steps); none after a --time-limit
    num_samples: int = 16
    sample_steps: int = GRID_STEPS  # Heun steps of a sample grid (samples.GRID_STEPS)

    def __post_init__(self):
        # one home for what sample_every means, whoever builds the options: -1 is none, as on the command line
        # (it drew a grid at every step here, step % -1 == 0), and as 0 always was in Python
        if self.sample_every < -1:
            raise InputError(f"sample_every {self.sample_every}: give N > 0 (a sample grid every N steps and after "
                             "the last), or 0 or -1 (no sample grid)")
        if self.sample_every == -1:
            self.sample_every = 0


#: options a resumed run may change: how long, where and how fast it runs, its learning-rate schedule (a step
#: decay by resuming with a lower --lr) and what it logs; not the data, augmentation, batch or seed it learns from
#: (``loader_workers`` from N to M > 0 draws the same batches; between 0 and N another stream of the same kind)
RESUME_MAY_CHANGE = {"steps", "time_limit", "device", "amp", "loader_workers", "init_from", "lr", "lr_final",
                     "ema_decay", "log_every", "checkpoint_every", "heldout_every", "sample_every", "num_samples",
                     "sample_steps", "patch_inference_size", "patch_inference_shifts", "heldout_spacing_mm"}


#: the CLI's spelling of an option where it is not the field's name
OPTION_FLAGS = {"pixel_spacing_range": "--pixel-range"}

#: the pixel sizes (mm) a patch prior learns by default, widened to take in the training scans' own
DEFAULT_PIXEL_RANGE = (0.7, 4.0)


def pixel_range_for(spacings, given=None) -> tuple[tuple, str]:
    """The pixel sizes (mm) a patch prior trained on scans of ``spacings`` ((x, y) mm each) draws from, and why:
    ``given``, or by default 0.7-4.0 mm widened to take in the scans' own pixel sizes (else a prior trained on
    0.57 mm scans refused them in reconstruct)."""
    own = [float(v) for sp in spacings for v in sp]
    span = (f"{min(own):.3g}" if f"{min(own):.3g}" == f"{max(own):.3g}" else f"{min(own):.3g}-{max(own):.3g}") \
        if own else ""
    scans = f"the training scans' own pixel sizes ({span} mm)" if own else "no pixel sizes"
    if given is not None:
        return (float(given[0]), float(given[1])), f"given (--pixel-range); {scans}"
    lo, hi = round(min([DEFAULT_PIXEL_RANGE[0], *own]), 4), round(max([DEFAULT_PIXEL_RANGE[1], *own]), 4)
    if (lo, hi) == DEFAULT_PIXEL_RANGE:
        return (lo, hi), f"the default {lo:g}-{hi:g} mm, which holds {scans}"
    return (lo, hi), (f"the default {DEFAULT_PIXEL_RANGE[0]:g}-{DEFAULT_PIXEL_RANGE[1]:g} mm widened to take in "
                      f"{scans}; --pixel-range LO HI chooses another")


def trained_pixel_range(data, opts: TrainOptions) -> tuple[tuple, str]:
    """The pixel sizes (mm) a patch prior trained with ``opts`` on ``data`` (a PatchData) learns, which its card
    records and reconstruct accepts, and why: its range (``opts.pixel_spacing_range`` or the default,
    ``pixel_range_for``) as the sampler draws from it (``patch.drawn_pixel_range``: never finer than a scan's own /
    ``max_upsample``, nor coarser than its slices hold), with the scans' own pixel sizes inside it. A range that
    some scans can only be drawn above is an InputError; a range so cut says so in the why (``_range_cut``), the one
    statement of the cut that the card records and ``medrecon train`` prints."""
    from .patch import drawn_pixel_range, finest_pixel_size

    (r0, r1), why = pixel_range_for(data.spacings, opts.pixel_spacing_range)
    finest = [finest_pixel_size(sp, opts.max_upsample) for sp in data.spacings]
    if max(finest) > r1:
        coarse = sorted({round(max(sp), 4) for sp, f in zip(data.spacings, finest) if f > r1})
        raise InputError(f"--pixel-range {r0:g} {r1:g}: training scans at {', '.join(f'{v:g}' for v in coarse)} mm "
                         f"are never drawn finer than {max(finest):.4g} mm (their pixel size / {opts.max_upsample:g}), "
                         f"above the range: give HI of at least {max(finest):.4g}, leave those scans out, or leave "
                         "--pixel-range out (its default takes in the scans' own)")
    lo, hi = drawn_pixel_range([v.shape[-2:] for v in data.volumes], data.spacings, opts.patch_sizes, (r0, r1),
                               opts.max_upsample)
    own = [min(sp) for sp in data.spacings if r0 <= min(sp) <= r1]  # reconstruct takes a scan at its own
    lo, hi = round(min([lo, *own]), 4), round(max([hi, *own]), 4)
    cut = _range_cut(data, opts, (r0, r1), (lo, hi))
    return (lo, hi), why + (f"; {cut}" if cut else "")


def _range_cut(data, opts: TrainOptions, asked: tuple, got: tuple) -> str | None:
    """How the pixel range ``asked`` (mm; ``--pixel-range`` where ``opts`` gives one) is cut to ``got``, naming the
    training scans that cut each end with the pixel size each is drawn at there (``patch.drawn_pixel_range`` of the
    scan; the one that sets the end first), or None where it is not cut."""
    from .patch import drawn_pixel_range

    (r0, r1), (lo, hi) = asked, got
    if (lo, hi) == (r0, r1):
        return None
    each = [drawn_pixel_range([v.shape[-2:]], [sp], opts.patch_sizes, asked, opts.max_upsample)
            for v, sp in zip(data.volumes, data.spacings)]

    def scans(end: int, cuts) -> str:  # the scans whose own draws stop short of the asked end
        ks = sorted((k for k, e in enumerate(each) if cuts(round(e[end], 4))), key=lambda k: each[k][end],
                    reverse=end == 1)
        named = [f"{data.volume_name(k)}: {each[k][end]:.4g} mm" for k in ks[:3]]
        return ", ".join(named) + (f" and {len(ks) - 3} more" if len(ks) > 3 else "")

    finer, coarser = f"finer than its scan's pixel size / {opts.max_upsample:g}", "coarser than its slice holds"
    ends = ([f"{finer} ({scans(0, lambda v: v > r0)})"] if lo > r0 else []) + \
        ([f"{coarser} ({scans(1, lambda v: v < r1)})"] if hi < r1 else [])
    how = " nor ".join(ends) or f"{finer} nor {coarser}"  # neither cut: a too small scan the sampler refuses
    given = f"--pixel-range {r0:g} {r1:g} is " if opts.pixel_spacing_range is not None else ""
    return f"{given}cut to {lo:g}-{hi:g} mm: no patch is drawn {how}"


def _flag(name: str) -> str:
    return OPTION_FLAGS.get(name, "--" + name.replace("_", "-"))


def _option_value(v):
    return tuple(v) if isinstance(v, list) else v


def _cli_value(v) -> str:
    """An option's value as the command line spells it: integers comma separated (--channels 8,16), other numbers
    space separated (--pixel-range 0.7 4); None: not given."""
    if v is None:
        return "not given"
    if isinstance(v, (list, tuple)):
        return ("," if all(isinstance(x, int) for x in v) else " ").join(f"{x:g}" if isinstance(x, float) else str(x)
                                                                          for x in v)
    return str(v)


def warmup_steps(warmup: int, steps: int) -> int:
    """The steps of linear warm-up a run of ``steps`` asking for ``warmup`` gets: at most a tenth of it."""
    return max(1, min(int(warmup), int(steps) // 10))


def resolved_attention(arch: str, attention: bool | None) -> bool:
    """Self-attention at the coarsest level: ``attention`` as given, or by default yes for ``unet``, no for
    ``patch``."""
    return arch == "unet" if attention is None else bool(attention)


def learning_rate(o: TrainOptions, step: int, warmup: int | None = None) -> float:
    """Linear warm-up (``warmup`` steps; by default at most a tenth of the run), then o.lr, or a cosine from o.lr
    to o.lr_final."""
    warmup = warmup_steps(o.warmup, o.steps) if warmup is None else warmup
    if step < warmup:
        return o.lr * (step + 1) / warmup
    if o.lr_final is None:
        return o.lr
    t = min(1.0, (step - warmup) / max(1, o.steps - 1 - warmup))
    return o.lr_final + (o.lr - o.lr_final) * 0.5 * (1 + math.cos(math.pi * t))


def training_sigma(opts: TrainOptions, b: int, generator: torch.Generator | None = None,
                   device=None) -> torch.Tensor:
    """b noise levels drawn as EDM training draws them: ln(sigma) ~ N(p_mean, p_std^2)."""
    return torch.exp(opts.p_mean + opts.p_std * torch.randn(b, generator=generator)).to(device)


def edm_loss(unet, x0: torch.Tensor, opts: TrainOptions, generator: torch.Generator | None = None,
             sigma: torch.Tensor | None = None, cond: torch.Tensor | None = None,
             context: torch.Tensor | None = None, input_error: torch.Tensor | None = None) -> torch.Tensor:
    """EDM denoising score matching loss, one value per sample: w(sigma) * mean (D(x0 + sigma n) - x0)^2.
    ``cond``: extra network input channels (a patch prior's positions); ``context``: clean neighbouring
    slices of x0 (2.5D), given to the network with noise of the same sigma; ``input_error`` (B, 1, H, W):
    added to the noisy slice and alike to every context slice, not to the target (an error the network
    must learn to remove although the neighbours share it)."""
    b = x0.shape[0]
    if sigma is None:
        sigma = training_sigma(opts, b, generator, x0.device)
    n = torch.randn(x0.shape, generator=generator).to(x0.device)
    if context is not None:
        context = context + sigma.view(-1, 1, 1, 1) * torch.randn(context.shape, generator=generator).to(x0.device)
    noisy = x0 + sigma.view(-1, 1, 1, 1) * n
    if input_error is not None:
        noisy = noisy + input_error
        context = None if context is None else context + input_error
    d = edm_denoise(unet, noisy, sigma, opts.sigma_data, cond=cond, context=context)
    w = (sigma ** 2 + opts.sigma_data ** 2) / (sigma * opts.sigma_data) ** 2
    return w * ((d.float() - x0) ** 2).flatten(1).mean(1)


def heldout_loss(prior: Denoiser, x0, sigmas=(0.02, 0.1, 0.3, 1.0, 3.0), sigma_data: float = 0.5,
                 seed: int = 1234) -> float:
    """Denoising loss of any prior on fixed slices, noise and sigmas (parameterisation independent):
    mean over sigma of mean (D(x0 + sigma n, sigma) - x0)^2 / (sigma^2 sd^2 / (sigma^2 + sd^2)).
    1.0 is the error of the best constant-mean linear shrinkage for data of std sd; lower is better.
    ``x0``: (N, 1, H, W), or a list of such tensors of different sizes (pixel-weighted mean); (N, 1 + 2k, H, W)
    for a 2.5D prior: each slice and its neighbours (noised alike, only the slice scored). A prior with
    a random tile shift (patch prior) is reseeded first, so the number is reproducible."""
    if hasattr(prior, "reseed"):
        prior.reseed()
    g = torch.Generator().manual_seed(seed)
    parts = [x0] if torch.is_tensor(x0) else list(x0)
    total, weight = 0.0, sum(p[:, :1].numel() for p in parts)
    with torch.no_grad():
        for s in sigmas:
            norm = s ** 2 * sigma_data ** 2 / (s ** 2 + sigma_data ** 2)
            for x in parts:
                noisy = x + s * torch.randn(x.shape, generator=g)
                context = noisy[:, 1:] if x.shape[1] > 1 else None
                d = prior.denoise(noisy[:, :1], torch.full((x.shape[0],), float(s)), context)
                total += float(((d - x[:, :1]) ** 2).sum()) / norm
    return total / weight / len(sigmas)


class PatchBatches(torch.utils.data.Dataset):
    """Batch k of a patch-training run with loader workers, drawn with a generator seeded by (seed, k) alone: the
    same batches whatever the number of workers and after a resume. Item k: (patches, positions, (smallest,
    largest) pixel size drawn)."""

    def __init__(self, sampler, seed: int, steps: int):
        self.sampler, self.seed, self.steps = sampler, int(seed), int(steps)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, k: int):
        # a 64-bit seed per step (the same as before for seeds below 2^23; a large --seed must not overflow)
        x, pos = self.sampler.sample(torch.Generator().manual_seed((self.seed * 2 ** 40 + int(k)) % 2 ** 63))
        return x, pos, self.sampler.last_spacing


def patch_batch_stream(sampler, seed: int, start: int, steps: int, workers: int):
    """An iterator over the batches ``start`` .. ``steps`` - 1 (:class:`PatchBatches`), drawn ahead by ``workers``
    processes (a GPU run is otherwise held up by drawing patches on one CPU core)."""
    loader = torch.utils.data.DataLoader(PatchBatches(sampler, seed, steps), batch_size=None,
                                         sampler=range(start, steps), num_workers=int(workers), prefetch_factor=4)
    return iter(loader)


def _volume_identity(v) -> dict | None:
    """What identifies a training volume whatever its path: a registered scan's file checksum, the voxels'
    checksum and pixel size of one of the user's own (training_data.volume_record); None for a bare path. A
    registered scan's record carries its voxels' checksum too (for the held-out overlap check), not compared here:
    the file's identifies it, and a reader that changed a voxel would refuse a resume on the very same file."""
    if not isinstance(v, dict):
        return None
    keys = ("sha256",) + (() if "sha256" in v else ("voxels_sha256",)) + ("series_uid", "plane") + \
        (() if v.get("plane") in ("coronal", "sagittal") else ("pixel_spacing_mm",))  # the axial one's says it
    return {k: v[k] for k in keys if k in v}


def _planes_option(record: dict) -> str:
    """The --planes a data record was made with: 'all' where its volumes say their plane."""
    vols = record.get("volumes")
    return "all" if isinstance(vols, list) and any(isinstance(v, dict) and "plane" in v for v in vols) else "axial"


def _data_difference(old: str | None, new: str, old_paths: list, new_paths: list, old_held: list = ()) -> str | None:
    """What differs between a checkpoint's data record and the data given now, in words (None: the same data).
    ``old_paths``, ``new_paths``: the training volumes' names (``volume_names``); ``old_held``: the run's held-out
    volumes' (its checkpoint's, where it kept them). A record from before a field was kept (a checkpoint without
    the data, a volume without its checksums, a run's held-out volumes) compares what it has."""
    if old is None or old == new:
        return None
    a, b = json.loads(old), json.loads(new)
    if _planes_option(a) != _planes_option(b):
        return f"--planes {_planes_option(b)} now, the run had --planes {_planes_option(a)}"
    if a.get("n_volumes") != b.get("n_volumes"):
        return f"{b.get('n_volumes')} volumes now, the run had {a.get('n_volumes')}"
    listed = {k for k in ("volumes", "heldout_volumes") if isinstance(a.get(k), list) and isinstance(b.get(k), list)}
    if "volumes" in listed:
        va, vb = a["volumes"], b["volumes"]
        if len(va) != len(vb):
            return f"{len(vb)} volumes now, the run had {len(va)}"
        k, differ = _volume_difference(va, vb)
        if differ:
            now, then = volume_name(new_paths, k), volume_name(old_paths, k)
            return f"{now}: {', '.join(differ)}" + (f"; the run trained on {then}" if then != now else "")
    said = _heldout_difference(a, b, old_held)
    if said:
        return said
    for key in sorted(set(a) - listed - {"heldout_slices"}):  # what the checkpoint recorded (a newer record may
        if a.get(key) != b.get(key):                           # keep more)
            return f"{key.replace('_', ' ')} {b.get(key)} now, the run had {a.get(key)}"
    return None


def _volume_difference(va: list, vb: list) -> tuple[int, list[str]]:
    """The first volume whose record differs between the run's ``va`` and now's ``vb`` and what differs, in words
    ((0, []): none)."""
    for k, (x, y) in enumerate(zip(va, vb)):
        # an older record: a checksum, None, or a coronal or sagittal view with the axial view's pixel size
        x = {"sha256": x} if isinstance(x, str) else (_volume_identity(x) or {})
        y = y or {}
        what = {"pixel_spacing_mm": f"pixel size {y.get('pixel_spacing_mm')} mm, the run's "
                                    f"{x.get('pixel_spacing_mm')} mm",
                "series_uid": f"series {y.get('series_uid')}, the run's {x.get('series_uid')}",
                "sha256": "its file differs (SHA-256)", "voxels_sha256": "its voxels differ (SHA-256)"}
        differ = [text for field, text in what.items() if field in x and x[field] != y.get(field)]
        if differ:
            return k, differ
    return 0, []


def _heldout_difference(a: dict, b: dict, old_held: list) -> str | None:
    """What differs in the held-out data between the run's data record ``a`` and now's ``b``: its volumes (none
    given now, their count, a volume's identity) or --heldout-fraction's slices; ``old_held``: _data_difference's."""
    va, vb = a.get("heldout_volumes"), b.get("heldout_volumes")
    was = f" ({', '.join(map(str, old_held))})" if old_held else ""
    if isinstance(va, list) and vb is None:  # no held-out data given now
        return f"held-out volumes: none now, the run had {len(va)}{was}"
    if isinstance(va, list) and isinstance(vb, list):
        if len(va) != len(vb):
            return f"{len(vb)} held-out volumes now, the run had {len(va)}{was}"
        k, differ = _volume_difference(va, vb)
        if differ:  # the run's file, where its checkpoint kept the names
            then = f"; the run held out {old_held[k]}" if k < len(old_held) else ""
            return f"held-out volume {k + 1}: {', '.join(differ)}{then}"
    if "heldout_slices" in a and a["heldout_slices"] != b.get("heldout_slices"):
        # --heldout-fraction's: absent where held-out data is given (or none taken)
        return (f"held-out slices of the training data: {b.get('heldout_slices') or 'none'} now, the run had "
                f"{a['heldout_slices'] or 'none'}")
    return None


class _Trainer:
    """The training state (network, EMA, optimiser, step) and one optimisation step (whole-slice prior)."""

    arch = "unet"

    def __init__(self, data, out: Path, opts: TrainOptions, command: str | None, start: Denoiser | None = None):
        """``start``: a loaded prior whose weights start the network (else ``opts.init_from``'s, if any)."""
        self.data, self.out, self.opts, self.command = data, out, opts, command
        self.device = resolve_device(opts.device)
        self.bf16 = opts.amp and bf16_native(self.device)  # the training steps' arithmetic (TrainOptions.amp)
        torch.manual_seed(opts.seed)
        from .loader import load_prior

        if start is None and opts.init_from:
            start = load_prior(opts.init_from)  # read by the loader, with its checks
        if opts.patch_inference_shifts is None:  # neither given nor a resumed run's own (train_prior): the start's
            self.opts = replace(opts, patch_inference_shifts=int(getattr(start, "shifts", 2)))
        config = self.network_config()
        if start is not None:  # a narrower prior's heads are copied whole: the head width follows it
            config = wide_config(dict(start.network.config), config)
        self._build(config, start)
        self.gen = torch.Generator().manual_seed(opts.seed + 1)
        self.step, self.seconds, self.recent, self.heldout_log = 0, 0.0, [], []
        self.grid_skipped: str | None = None  # why this run's final sample grid is not drawn (the card's, skipped_grid)
        self.log_window: list[float] = []  # losses since loss.csv's last row (kept across a resume)
        self.warmup = warmup_steps(opts.warmup, opts.steps)  # a resumed run keeps its own (restore)
        self.segments = [self._segment(0)]  # the run's parts: a resume adds one (restore)

    def _segment(self, start: int) -> dict:
        """One part of the run: its first step, command and what a resume may change of how it learns."""
        o = self.opts
        return {"from_step": int(start), "to_step": None,
                "command": self.command or "python API: medrecon.priors.train", "lr": o.lr,
                "lr_final": o.lr_final, "ema_decay": o.ema_decay, "steps": o.steps}

    def segments_now(self) -> list:
        """The run's parts up to this step (the last one ends here; one resumed at its end and done is left out)."""
        parts = [dict(p) for p in self.segments]
        parts[-1]["to_step"] = self.step
        return [p for p in parts if p["to_step"] > p["from_step"] or len(parts) == 1]

    def _build(self, config: dict, start: Denoiser | None = None):
        """The network of ``config`` (started from ``start``'s weights, if given), its EMA and optimiser."""
        self.unet_config = config
        self.model = build_unet(config).train()
        if start is not None:
            init_weights(self.model, start, self.opts.init_from or start.name, seed=self.opts.seed)
        self.model.to(self.device)
        self.image_convs = image_convs(self.model)  # found once: bf16 keeps them in fp32 at every step
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optim = torch.optim.Adam(self.model.parameters(), lr=self.opts.lr)

    def network_config(self) -> dict:
        o = self.opts
        return unet_config(o.image_size, o.channels, o.layers_per_block,
                           attention=resolved_attention(o.arch, o.attention))

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.optim.state_dict(),
                "step": self.step, "seconds": self.seconds, "unet_config": self.unet_config,
                "options": asdict(self.opts), "generator": self.gen.get_state(), "recent": self.recent,
                "log_window": list(self.log_window), "heldout_log": self.heldout_log, "data": self._data_record(),
                "data_paths": volume_names(self.data.description), "heldout_paths": self._heldout_names(),
                "data_warnings": [v.get("warning") for v in self._volume_records()],
                "warmup_steps": self.warmup, "segments": self.segments_now()}

    def _data_record(self) -> str:
        """What the run trains on, as text a resume must match: the card's data record without the paths (a
        resume from another folder, or with a path spelled otherwise, is the same data), each volume's checksums
        (a registered scan's file, a volume of the user's own its voxels) and pixel size kept."""
        desc = {k: v for k, v in self.data.description.items() if k != "skipped"}  # paths of what it did not read
        for key in ("volumes", "heldout_volumes"):
            if isinstance(desc.get(key), list):
                desc[key] = [_volume_identity(v) for v in desc[key]]
        window = self.data.intensity or {}
        desc["intensity_window"] = [window.get("physical_min"), window.get("physical_max"),  # --hu-window, or MRI's
                                    window.get("normalisation")]                         # --mri-percentile
        return json.dumps(desc, sort_keys=True, default=str)

    def _heldout_names(self) -> list[str]:
        """The held-out volumes as the resume's messages name them: a registered scan by its name, else its recorded
        path (``volume_names``), not the data cache's path of the scan."""
        vols = self.data.description.get("heldout_volumes")
        return [v.get("name") or n if isinstance(v, dict) else n
                for v, n in zip(vols or [], volume_names({"volumes": vols}))]

    def _volume_records(self) -> list[dict]:
        """The card's record of each training volume ({} for one recorded by its path alone)."""
        vols = self.data.description.get("volumes")
        return [v if isinstance(v, dict) else {} for v in vols] if isinstance(vols, list) else []

    def restore(self, st: dict, path: Path):
        """Continue from the training state ``st`` (read from ``path``, which the messages name)."""
        old = st.get("options") or {}
        if old.get("arch", self.opts.arch) != self.opts.arch:  # before the data: another arch reads them otherwise
            raise InputError(f"{path}: the run was trained with --arch {old['arch']} (now {self.opts.arch}); resume "
                             f"with its own --arch, or start a new run from it with --init-from {path.parent.parent}")
        differs = _data_difference(st.get("data"), self._data_record(), st.get("data_paths") or [],
                                   volume_names(self.data.description), st.get("heldout_paths") or [])
        if differs:  # first: other data also resolve other defaults (the pixel range)
            raise InputError(f"{path}: the run was trained on other data than given now ({differs}); resume with "
                             "the run's own --data/--dataset, --heldout-data/--heldout-dataset (and --planes, "
                             "--hu-window/--mri-percentile), or start a new run from it with --init-from "
                             f"{path.parent.parent}")
        resolved = {"attention": lambda v: resolved_attention(self.opts.arch, v)}
        changed = [k for k in old if k not in RESUME_MAY_CHANGE and hasattr(self.opts, k)
                   and resolved.get(k, _option_value)(old[k]) != resolved.get(k, _option_value)(getattr(self.opts, k))]
        if changed:
            was = ", ".join(f"{_flag(k)} {_cli_value(old[k])} (now {_cli_value(getattr(self.opts, k))})"
                            for k in changed)
            raise InputError(f"{path}: the run was trained with {was}; resume with its own options, or start a "
                             f"new run from it with --init-from {path.parent.parent}")
        if st["unet_config"] != self.unet_config:
            if not old:  # a checkpoint without its options: nothing says the network is the run's
                raise InputError(f"{path}: the checkpoint's network (arch, size, channels) differs from the options "
                                 "given now; resume with the original --arch/--image-size/--patch-sizes/--channels")
            self._build(st["unet_config"])  # the run's own: a widened run's heads follow the prior it started from
        if old:  # the warm-up the run had: another --steps must not send it back into one, or shorten it
            self.warmup = int(st.get("warmup_steps") or warmup_steps(old["warmup"], old["steps"]))
        self.model.load_state_dict(st["model"])
        self.ema.load_state_dict(st["ema"])
        self.optim.load_state_dict(st["optimizer"])
        self.gen.set_state(st["generator"])
        self.step, self.seconds, self.recent = st["step"], st["seconds"], list(st["recent"])
        self.log_window = [float(v) for v in st.get("log_window", [])]
        self.heldout_log = list(st.get("heldout_log", []))
        for record, said in zip(self._volume_records(), st.get("data_warnings") or []):
            if said and "warning" not in record:  # what the run trained on stays said (the same data: checked above)
                record["warning"] = said
        if "init_from" in old:  # what the run started from, not a --init-from given at a resume (never used there)
            self.opts = replace(self.opts, init_from=old["init_from"])
        before = [dict(p) for p in st.get("segments") or [{  # a checkpoint of before: its command unknown
            "from_step": 0, "to_step": None, "command": "not recorded (a checkpoint from before medrecon kept each "
            "resumed part's command)", "lr": old.get("lr"), "lr_final": old.get("lr_final"),
            "ema_decay": old.get("ema_decay"), "steps": old.get("steps")}]]
        before[-1]["to_step"] = self.step
        self.segments = before + [self._segment(self.step)]

    def batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        o, n = self.opts, self.data.slices.shape[0]
        x = self.data.slices[torch.randint(n, (o.batch_size,), generator=self.gen)]
        if o.flip:
            flip = torch.rand(o.batch_size, generator=self.gen) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if o.intensity_jitter:
            a, b = (torch.rand(2, o.batch_size, 1, 1, 1, generator=self.gen) * 2 - 1) * o.intensity_jitter
            x = x * (1 + a) + b
        return x.to(self.device), None

    def train_step(self) -> float:
        o = self.opts
        for grp in self.optim.param_groups:
            grp["lr"] = learning_rate(o, self.step, self.warmup)
        x0, cond = self.batch()
        context = x0[:, 1:] if o.context_slices else None  # a 2.5D batch: the slice, then its neighbours
        with bf16_autocast(self.model, self.device.type, self.image_convs) if self.bf16 else nullcontext():
            loss = self.loss(x0, cond, context).mean()
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        if o.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip)
        self.optim.step()
        decay = min(o.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for pe, p in zip(self.ema.parameters(), self.model.parameters()):
                pe.lerp_(p, 1 - decay)
        self.step += 1
        return float(loss.detach())

    def timed_step(self, fix: str) -> float:
        """``train_step``, its time added to ``seconds`` and its loss to ``recent`` (the last 100); a non-finite loss
        is an InputError that says ``fix``."""
        t0 = time.perf_counter()
        loss = self.train_step()
        self.seconds += time.perf_counter() - t0
        if not math.isfinite(loss):
            raise InputError(f"training diverged at step {self.step} (loss {loss}); {fix}")
        self.recent = (self.recent + [loss])[-100:]
        return loss

    def loss(self, x0: torch.Tensor, cond: torch.Tensor | None, context: torch.Tensor | None) -> torch.Tensor:
        """The step's loss per sample (the patch trainer may swap in recorded sampler steps)."""
        return edm_loss(self.model, x0[:, :1], self.opts, self.gen, cond=cond, context=context)

    def prior(self) -> Denoiser:
        return EDMPrior(self.ema, self.card(), schedule_from_dict(EDM_SCHEDULE),
                        IntensityMap.from_dict(self.data.intensity), self.opts.image_size,
                        sigma_data=self.opts.sigma_data)

    def training_record(self, heldout: dict | None) -> dict:
        o, last = self.opts, self.segments_now()[-1]  # the last part that trained (a resume that trained none
        training = {"data": self.data.description, "command": last["command"],  # is left out of the segments)
                    "steps": self.step, "batch_size": o.batch_size, "lr": last["lr"], "ema_decay": last["ema_decay"],
                    "final_loss": round(float(np.mean(self.recent)), 5) if self.recent else None,
                    "final_loss_note": f"mean EDM-weighted training loss over the last {len(self.recent)} steps",
                    "seconds": round(self.seconds, 1), "device": str(self.device),
                    "mixed_precision": "bf16" if self.bf16 else "none",
                    "options": {**asdict(o), **{k: last[k] for k in ("lr", "lr_final", "ema_decay")}},
                    "versions": _versions(), "segments": self.segments_now()}
        if len(training["segments"]) > 1:
            training["segments_note"] = ("the run was resumed: command, lr, lr_final and ema_decay above are its last "
                                         "part's; segments lists each part's steps and command")
        if heldout:
            training["heldout"] = heldout
        if self.grid_skipped:
            training.update(skipped_grid(self.grid_skipped, self.out))
        return training

    def card(self, heldout: dict | None = None) -> dict:
        o = self.opts
        return {"name": self.out.name, "architecture": "diffusers-unet2d", "parameterization": "edm",
                "weights": WEIGHTS_NAME,
                "config": {"sigma_data": o.sigma_data, "c_noise": "ln(sigma) / 4", "unet": self.unet_config},
                "schedule": dict(EDM_SCHEDULE), "image_size": o.image_size,
                "pixel_spacing_mm": self.data.pixel_spacing_mm, "modality": self.data.modality,
                "intensity": self.data.intensity, "training": self.training_record(heldout)}

    def export(self, heldout: dict | None = None):
        """Write the prior (EMA weights, config.json, model card) and the resumable training state."""
        save_unet_prior(self.out, self.ema, self.card(heldout))
        (self.out / STATE_FILE).parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out / (str(STATE_FILE) + ".tmp")
        torch.save(self.state(), tmp)
        tmp.replace(self.out / STATE_FILE)


class _PatchTrainer(_Trainer):
    """Position-aware patch prior (PaDIS): random patches of several sizes with their position channels."""

    arch = "patch"

    def __init__(self, data, out: Path, opts: TrainOptions, command: str | None, start: Denoiser | None = None):
        from .patch import PatchSampler

        rng, _ = pixel_range_for(data.spacings, opts.pixel_spacing_range)
        self.pixel_range, self.pixel_range_why = trained_pixel_range(data, opts)  # the card's, reconstruct's
        opts = replace(opts, pixel_spacing_range=rng)  # recorded resolved: a resume compares it
        bad = [p for p in opts.patch_sizes if p % 2 ** (len(opts.channels) - 1)]
        if bad:
            raise InputError(f"patch sizes {bad} are not divisible by 2^{len(opts.channels) - 1} "
                             f"({len(opts.channels)} UNet levels): use other --patch-sizes or fewer --channels")
        self.sampler = PatchSampler(data, opts.patch_sizes, opts.patch_probs,
                                    pixels=opts.batch_size * max(opts.patch_sizes) ** 2,
                                    spacing_range=opts.pixel_spacing_range, max_upsample=opts.max_upsample,
                                    rotate_deg=opts.rotate_deg, flip=opts.flip, jitter=opts.intensity_jitter,
                                    context=opts.context_slices, scale_range=opts.intensity_scale,
                                    scale_origin=IntensityMap.from_dict(data.intensity).to_model(0.0),
                                    fov_crop=opts.fov_crop, phase=opts.synthetic_phase,
                                    contrast=opts.random_contrast)
        self.recorded, self.stream = None, None  # stream: the loader workers' batches (loader_workers > 0)
        if opts.sampler_errors:
            from .sampler_errors import RecordedSteps

            if opts.context_slices:
                raise InputError("--sampler-errors trains on single slices: drop --context-slices")
            self.recorded = RecordedSteps(opts.sampler_errors, opts.sampler_error_sigma_min)
            if self.recorded.min_side < max(opts.patch_sizes):
                raise InputError(f"{opts.sampler_errors}: a recorded slice is {self.recorded.min_side} pixels on a "
                                 f"side, smaller than the largest patch ({max(opts.patch_sizes)}); record larger "
                                 "slabs or train with smaller --patch-sizes")
        super().__init__(data, out, opts, command, start)

    def network_config(self) -> dict:
        o = self.opts
        return unet_config(max(o.patch_sizes), o.channels, o.layers_per_block, in_channels=3 + 2 * o.context_slices,
                           attention=resolved_attention(o.arch, o.attention))

    def state(self) -> dict:
        return {**super().state(), "used_spacing": list(self.sampler.used_spacing),
                "pixel_range_why": self.pixel_range_why}

    def restore(self, st: dict, path: Path):
        super().restore(st, path)
        if "used_spacing" in st:
            self.sampler.used_spacing = [float(v) for v in st["used_spacing"]]
        if st.get("pixel_range_why"):  # the resumed range is the run's own, not one given (--pixel-range)
            self.pixel_range_why = st["pixel_range_why"]

    def batch(self):
        if not self.opts.loader_workers:  # drawn here from the run's generator (as every recorded run was)
            x, pos = self.sampler.sample(self.gen)
            return x.to(self.device), pos.to(self.device)
        if self.stream is None:  # made at the first step, so that a resumed run starts at its step
            self.stream = patch_batch_stream(self.sampler, self.opts.seed, self.step, self.opts.steps,
                                             self.opts.loader_workers)
        x, pos, spacing = next(self.stream)
        self.sampler.record_spacing(*spacing)  # drawn in a worker: its record is the worker's copy's
        return x.to(self.device), pos.to(self.device)

    def loss(self, x0, cond, context):
        o = self.opts
        if self.recorded is not None and float(torch.rand(1, generator=self.gen)) < o.sampler_error_prob:
            return self.recorded.loss(self.model, x0.shape[0], x0.shape[-1], o.sigma_data, self.gen, self.device)
        return super().loss(x0, cond, context)

    def inference_size(self) -> int:
        return int(self.opts.patch_inference_size or max(self.opts.patch_sizes))

    def prior(self):
        from .patch import PatchPrior

        return PatchPrior(self.ema, self.card(), schedule_from_dict(EDM_SCHEDULE),
                          IntensityMap.from_dict(self.data.intensity), patch_size=self.inference_size(),
                          sigma_data=self.opts.sigma_data, context_slices=self.opts.context_slices,
                          shifts=self.opts.patch_inference_shifts)

    def card(self, heldout: dict | None = None) -> dict:
        from .patch import ARCHITECTURE, POSITION_CONVENTION

        o = self.opts
        lo, hi = self.sampler.used_spacing
        return {"name": self.out.name, "architecture": ARCHITECTURE, "parameterization": "edm",
                "weights": WEIGHTS_NAME,
                "config": {"sigma_data": o.sigma_data, "c_noise": "ln(sigma) / 4", "unet": self.unet_config},
                "schedule": dict(EDM_SCHEDULE), "image_size": None,
                "patch": {"sizes": list(o.patch_sizes), "probs": list(o.patch_probs) if o.patch_probs else None,
                          "inference_size": self.inference_size(),
                          "inference_shifts": o.patch_inference_shifts, "positions": POSITION_CONVENTION,
                          "position_channels": ["x", "y"], "grid_shift": "random per call (seeded)", "seed": 0,
                          "context_slices": o.context_slices},
                "pixel_spacing_mm_range": list(self.pixel_range), "pixel_spacing_mm": None,
                "modality": self.data.modality, "intensity": self.data.intensity,
                "training": {**self.training_record(heldout),
                             "augmentation": {"pixel_spacing_range_mm": list(self.pixel_range),
                                              "pixel_spacing_range_why": self.pixel_range_why,
                                              "pixel_spacing_drawn_mm": [round(lo, 4), round(hi, 4)] if hi > 0
                                              else None,  # what this run's draws reached
                                              "max_upsample": o.max_upsample, "rotate_deg": o.rotate_deg,
                                              "flip": "left-right" if o.flip else None,
                                              "intensity_jitter": o.intensity_jitter,
                                              "intensity_scale": list(o.intensity_scale) if o.intensity_scale
                                              else None, "fov_crop": o.fov_crop,
                                              "synthetic_phase": o.synthetic_phase,
                                              "random_contrast": o.random_contrast},
                             **({"sampler_errors": self.recorded.describe(o.sampler_error_prob,
                                                                          o.sampler_error_sigma_min)}
                                if self.recorded is not None else {})}}


def init_weights(model: torch.nn.Module, prior, source: str | Path, seed: int = 0) -> None:
    """Start ``model`` from the weights of ``prior`` (loaded from ``source``): the same network but for the
    number of input channels (inputs the prior lacks, e.g. a 2.5D prior's neighbouring slices, get zero
    weights) and for widths k times the prior's (widen.py: the channels are copied). Either way the model
    starts as that prior (up to the widening's symmetry-breaking noise)."""
    weights, own = dict(prior.network.state_dict()), model.state_dict()
    w, w_own = weights.get("conv_in.weight"), own["conv_in.weight"]
    if w is not None and w.shape[1] < w_own.shape[1]:
        weights["conv_in.weight"] = torch.cat([w, w.new_zeros(w.shape[0], w_own.shape[1] - w.shape[1], *w.shape[2:])],
                                              dim=1)
    k = widening_factor(dict(prior.network.config), dict(model.config))
    if k and k > 1:
        weights = widen_state_dict(weights, {n: t.shape for n, t in own.items()}, k,
                                   generator=torch.Generator().manual_seed(seed))
    bad = [name for name in own if name not in weights or weights[name].shape != own[name].shape] + \
        [name for name in weights if name not in own]  # e.g. attention layers the new network has not
    if bad:
        raise InputError(f"{source}: its network differs from the one asked for ({bad[0]}, ...): give the same "
                         "--arch, --layers-per-block, --attention and --context-slices as that prior, and its "
                         "--channels or k times them")
    model.load_state_dict(weights)


def _truncate_log(path: Path, step: int) -> None:
    if not path.is_file():
        return
    text = path.read_text(errors="replace").replace("\x00", "")  # a killed writer can leave NUL bytes
    rows = list(csv.reader(io.StringIO(text, newline="")))
    keep = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]
    if len(keep) != len(rows):
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows(keep)


def check_output(out: Path, resume: bool, overwrite: bool) -> None:
    """``out`` can take this run's prior (before any data are read): a folder, holding a training state to
    ``resume`` or, without ``overwrite``, no prior yet."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: is a file; --output names the folder the prior is written to")
    made_in = next(p for p in (out, *out.absolute().parents) if p.exists())  # the folder it is, or is made in
    if not made_in.is_dir():
        raise InputError(f"{out}: cannot be made, {made_in} is a file; --output names the folder the prior is "
                         "written to: give a path in a folder")
    if not os.access(made_in, os.W_OK | os.X_OK):
        raise InputError(f"{out}: cannot be written, {made_in} is not writable here; choose another --output")
    if resume and not (out / STATE_FILE).is_file():
        raise InputError(f"{out / STATE_FILE}: nothing to resume (no training state); drop --resume to start anew")
    if not resume and (out / CARD_NAME).exists() and not overwrite:
        raise InputError(f"{out}: already holds a prior; use --resume to continue it or --overwrite to replace it")
    theirs = [str(n) for n in (CONFIG_NAME, WEIGHTS_NAME, "loss.csv", "heldout.csv", STATE_FILE) if (out / n).exists()]
    if not resume and not overwrite and theirs and not (out / CARD_NAME).exists():  # a run would overwrite them
        raise InputError(f"{out}: holds {', '.join(theirs)} but no prior (files of a run stopped before its first "
                         "checkpoint, or not medrecon's); choose another --output, or --overwrite to replace them")


def read_state(path: Path) -> dict:
    """The training state ``path`` (checkpoints/state.pt) that ``--resume`` continues; one line naming it where it
    cannot be read (cut short by a full disk or a copy, overwritten) or holds no training state."""
    from .loader import torch_load

    try:
        state = torch_load(path)
    except InputError as e:  # the loader's, for a damaged file; its cause kept as the context
        cause = e.__context__ or e
        why = str(cause).strip().split(". ")[0].splitlines()[0][:100] if str(cause).strip() else ""
        state, what = None, f"unreadable ({type(cause).__name__}{': ' + why if why else ''}), the file is damaged"
    else:
        what = "not a training state of medrecon train"
    if not isinstance(state, dict) or not {"model", "ema", "optimizer", "step", "unet_config"} <= state.keys():
        prior = f" (from the prior last exported there: --init-from {path.parent.parent})" \
            if (path.parent.parent / CARD_NAME).is_file() else ""
        raise InputError(f"{path}: {what}; restore it from a copy to --resume, or start a new run into another "
                         f"--output{prior}")
    return state


class StoppedAtOnce(KeyboardInterrupt):
    """A second Ctrl-C (or SIGTERM) while a step waits to finish: the run stops at once and saves nothing of the
    half-done step (the last checkpoint stays, written atomically)."""


@contextmanager
def _step_finishes_first():
    """SIGINT and SIGTERM wait for the step under way (it changes network, optimiser and step together), then act
    as they would have; a second one stops at once (StoppedAtOnce); an error of the step itself is raised instead
    (a diverged step is not saved as a checkpoint by the interrupt). In the main thread only (the only one signals
    reach); a signal the process ignores stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []

    def wait(signum, frame):
        if caught:
            raise StoppedAtOnce()
        caught.append(signum)
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    old = {sig: signal.signal(sig, wait) for sig, handler in old.items()
           if handler is not signal.SIG_IGN}  # ignored (a run started with nohup ... &): it stays ignored
    try:
        yield  # the step's own error (a divergence) goes on past the finally: no export of what it left
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if caught:
        signal.raise_signal(caught[0])


def _versions() -> dict:
    import diffusers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__}


def train_prior(data, output: str | Path, options: TrainOptions | None = None, *,
                command: str | None = None, resume: bool = False, overwrite: bool = False,
                heldout=None, progress: bool = True, start: Denoiser | None = None) -> Path:
    """Train an EDM-preconditioned UNet2DModel prior on ``data`` and write a prior folder to ``output``.

    ``options.arch``: 'unet' (``data`` a SliceData from prepare_slices/load_slices) or 'patch' (``data`` a
    PatchData from patch.prepare_volumes/load_patch_data). ``resume`` continues from
    ``output/checkpoints/state.pt`` up to ``options.steps`` in total. ``heldout``: slices in the model range
    (a tensor, or a list of tensors of different sizes), scored with :func:`heldout_loss` before, at every
    ``heldout_every`` steps (heldout.csv) and after, into the card. ``command`` is recorded in the model card
    (the CLI passes its exact command line). ``start``: ``options.init_from``'s prior already loaded (else read
    here). Returns ``output``.
    """
    from tqdm.auto import tqdm

    opts = options or TrainOptions()
    if opts.arch not in ARCHS:
        raise InputError(f"arch {opts.arch!r}: expected one of {', '.join(ARCHS)}")
    if opts.arch == "unet":
        if not hasattr(data, "slices"):
            raise InputError("arch 'unet' trains on whole slices: prepare the data with prepare_slices/load_slices")
        if tuple(data.slices.shape[-2:]) != (opts.image_size, opts.image_size):
            raise InputError(f"training slices are {tuple(data.slices.shape[-2:])}, options ask for image size "
                             f"{opts.image_size}: prepare the slices at that size")
    elif not hasattr(data, "volumes"):
        raise InputError("arch 'patch' trains on volumes at their own pixel size: prepare the data with "
                         "patch.prepare_volumes/load_patch_data")
    out = Path(output)
    check_output(out, resume, overwrite)
    resolve_device(opts.device)  # an unusable device is an error before anything is written
    state = read_state(out / STATE_FILE) if resume else None  # read once
    if resume and opts.arch == "patch" and opts.pixel_spacing_range is None:  # the run's own range, not the default
        was = (state.get("options") or {}).get("pixel_spacing_range")  # (a checkpoint of before: 0.7-4.0 whatever
        opts = replace(opts, pixel_spacing_range=tuple(was)) if was else opts  # its scans)
    if resume and opts.patch_inference_shifts is None:  # the run's own tile grids (else its start's: _Trainer)
        opts = replace(opts, patch_inference_shifts=(state.get("options") or {}).get("patch_inference_shifts") or None)
    tr = (_PatchTrainer if opts.arch == "patch" else _Trainer)(data, out, opts, command, start)  # or --init-from
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # what check_output cannot see (a read-only file system, /proc)
        raise InputError(f"{out}: cannot be made ({os_reason(e)}); choose another --output") from None
    if overwrite and not resume and ((out / CARD_NAME).is_file() or (out / STATE_FILE).is_file()):
        for old_file in (out / STATE_FILE, out / "loss.csv", out / "heldout.csv"):  # nothing of the old run may
            old_file.unlink(missing_ok=True)                                         # pass as this one's
        shutil.rmtree(out / "samples", ignore_errors=True)
    if resume:
        tr.restore(state, out / STATE_FILE)
        if tr.step >= opts.steps:  # nothing left to train: the prior stays as it is
            if tr.step > opts.steps:
                raise InputError(f"--steps {opts.steps}: the run in {out} already reached step {tr.step} (with "
                                 f"--resume, --steps is the new total): give more than {tr.step} to train on")
            tqdm.write(one_line(f"nothing left to train: the run in {out} reached step {tr.step}, --steps "
                                f"{opts.steps}; the prior is left as it was"), file=sys.stderr)
            return out
        for log_file in (out / "loss.csv", out / "heldout.csv"):  # drop what was logged after the checkpoint
            _truncate_log(log_file, tr.step)
    held = {}
    held_every = opts.checkpoint_every if opts.heldout_every is None else opts.heldout_every
    held_csv = out / "heldout.csv"

    def score() -> float:
        return round(heldout_loss(tr.prior(), heldout, sigma_data=opts.sigma_data), 5)

    def said() -> str:  # the last held-out loss, as the run's output tells it
        return f"step {tr.step}: held-out loss {tr.heldout_log[-1][1]:.4f} (start {held['loss_before']:.4f})"

    def log_heldout(value: float):
        tr.heldout_log.append([tr.step, value])
        fresh = not held_csv.is_file()
        with open(held_csv, "a", newline="") as f:
            w = csv.writer(f)
            if fresh:
                w.writerow(["step", "heldout_loss", "elapsed_s"])
            w.writerow([tr.step, f"{value:.6f}", f"{tr.seconds:.1f}"])

    if heldout is not None:
        if not resume and held_csv.is_file():
            held_csv.unlink()
        if not tr.heldout_log:
            log_heldout(score())
        held["loss_before"] = tr.heldout_log[0][1]
        held["loss_before_step"] = int(tr.heldout_log[0][0])  # 0, or the step a held-out set was added at (resume)
    log_path = out / "loss.csv"
    new_log = not (resume and log_path.is_file())
    with open(log_path, "w" if new_log else "a", newline="") as fh:
        log = csv.writer(fh)
        if new_log:
            log.writerow(["step", "loss", "lr", "img_per_s", "elapsed_s"])
        bar = tqdm(total=opts.steps, initial=tr.step, disable=not progress, desc="train", unit="it")
        n_img, t_win = 0, time.perf_counter()
        first_step, started = tr.step, time.perf_counter()
        try:
            while tr.step < opts.steps:
                if opts.time_limit is not None and tr.step > first_step and \
                        time.perf_counter() - started >= 60 * opts.time_limit:  # wall clock: scoring, checkpoints too
                    if opts.sample_every:  # the limit bounds the run: no grid of minutes after it
                        tr.grid_skipped = f"--time-limit {opts.time_limit:g} min ended the run at step {tr.step}"
                    skipped = (f"; the final sample grid is skipped (minutes for a large prior on a CPU): draw it "
                               f"with {draw_command(out)}" if tr.grid_skipped else "")
                    bar.write(one_line(f"--time-limit {opts.time_limit:g} min reached at step {tr.step}: exporting; "
                                       f"--resume continues{skipped}"), file=sys.stderr)
                    break
                with _step_finishes_first():  # a step and its log row are whole when Ctrl-C stops the run
                    loss = tr.timed_step(f"lower --lr and resume from the last checkpoint in {out / STATE_FILE}")
                    tr.log_window.append(loss)
                    n_img += opts.batch_size
                    bar.update(1)
                    if tr.step % opts.log_every == 0 or tr.step == opts.steps:
                        ips = n_img / max(time.perf_counter() - t_win, 1e-9)
                        mean_loss = float(np.mean(tr.log_window))
                        log.writerow([tr.step, f"{mean_loss:.6f}", f"{tr.optim.param_groups[0]['lr']:.3g}",
                                      f"{ips:.1f}", f"{tr.seconds:.1f}"])
                        fh.flush()
                        bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{ips:.1f}")
                        tr.log_window, n_img, t_win = [], 0, time.perf_counter()
                if heldout is not None and held_every and tr.step % held_every == 0 and tr.step < opts.steps:
                    log_heldout(score())
                    bar.write(said(), file=sys.stderr)
                if opts.sample_every > 0 and tr.step % opts.sample_every == 0 and tr.step < opts.steps:
                    draw_grid(tr.prior(), grid_path(out, tr.step), opts.num_samples, opts.sample_steps)
                if opts.checkpoint_every and tr.step % opts.checkpoint_every == 0 and tr.step < opts.steps:
                    tr.export({**held, "log": tr.heldout_log} if held else None)
        except StoppedAtOnce:
            bar.close()
            tqdm.write(f"stopped at once by a second interrupt: nothing of step {tr.step + 1} is saved; --resume "
                       "continues from the last checkpoint, if one was written", file=sys.stderr)
            raise
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C, SIGTERM (a batch system's limit): keep what was trained
            bar.close()
            if tr.step > first_step:
                with _step_finishes_first():
                    tr.export({**held, "log": tr.heldout_log} if held else None)
                tqdm.write(f"interrupted at step {tr.step}: the prior and its training state are saved; --resume "
                           "continues", file=sys.stderr)
            elif not resume:
                tqdm.write("interrupted before the first step: no training state to resume; run the command again",
                           file=sys.stderr)
            raise
        bar.close()
    if heldout is not None:
        if not tr.heldout_log or tr.heldout_log[-1][0] != tr.step:
            log_heldout(score())
        held["loss_after"] = tr.heldout_log[-1][1]
        held["n_slices"] = int(sum(h.shape[0] for h in ([heldout] if torch.is_tensor(heldout) else heldout)))
        held["log"] = tr.heldout_log
        tqdm.write(said(), file=sys.stderr)  # stdout holds only the prior's folder: PRIOR=$(medrecon train ...)
    tr.export(held or None)  # before the last sample grid, which takes minutes for a large prior on a CPU
    if opts.sample_every > 0 and not tr.grid_skipped:  # said whatever the progress setting: it takes minutes
        tqdm.write(one_line(f"prior written to {out}; drawing the final sample grid ({opts.num_samples} samples, "
                            f"{opts.sample_steps} steps; Ctrl-C loses nothing, --sample-every -1 skips it)"),
                   file=sys.stderr)
        draw_grid(tr.prior(), grid_path(out, tr.step), opts.num_samples, opts.sample_steps)
    return out


def adaptation_options(prior: Denoiser, **changes) -> TrainOptions:
    """The options a patch ``prior`` was trained with (its card's ``training.options``) with ``changes``, for
    fine-tuning it in memory (no checkpoints, samples or held-out scoring); an InputError for other priors."""
    recorded = (prior.card.get("training") or {}).get("options") or {}
    if prior.image_size is not None or recorded.get("arch") != "patch":
        raise InputError(f"prior {prior.name}: self-adaptation fine-tunes a patch prior with the options its model "
                         "card records (training.options, written by `medrecon train --arch patch`); use "
                         "bundled:ct_patch / bundled:mri_patch or a patch prior of your own")
    known = {f.name for f in fields(TrainOptions)}
    opts = TrainOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items() if k in known})
    return replace(opts, init_from=None, sampler_errors=None, checkpoint_every=0, heldout_every=0, sample_every=0,
                   time_limit=None, loader_workers=0, **changes)


def adapt_prior(prior: Denoiser, data, steps: int, *, ema_decay: float = 0.99, lr: float | None = None,
                seed: int = 0, device="cpu", amp: bool = True, progress: bool = False) -> tuple[Denoiser, dict]:
    """Self-adaptation: fine-tune a copy of a patch ``prior`` on ``data`` (a PatchData, e.g. the scan's own
    first reconstruction) for ``steps`` steps with the options its card records (``training.options``), EMA
    ``ema_decay`` and its learning rate unless ``lr`` is given; ``amp=False`` trains in fp32 (else bf16 where the
    device has it, ``TrainOptions.amp``). ``prior`` is not changed. Returns the adapted copy (its card records the
    adaptation) and that record."""
    from tqdm.auto import tqdm

    opts = adaptation_options(prior, steps=int(steps), ema_decay=float(ema_decay), seed=int(seed), device=str(device),
                              amp=bool(amp), **({"lr": float(lr)} if lr else {}))
    dev = resolve_device(device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):  # the caller's global RNG stays as it was
        tr = _PatchTrainer(data, Path(prior.name), opts, None, start=prior)
        for _ in tqdm(range(opts.steps), disable=not progress, desc="self-adapt", unit="it"):
            tr.timed_step("lower solver.self_adapt.lr")
    record = {"from": prior.name, "from_sha256": getattr(prior, "sha256", None), "steps": opts.steps,
              "ema_decay": opts.ema_decay, "lr": opts.lr, "batch_size": opts.batch_size, "seed": opts.seed,
              "n_slices": data.n_slices, "bf16": tr.bf16, "final_loss": round(float(np.mean(tr.recent)), 5) if tr.recent else None,
              "seconds": round(tr.seconds, 1)}
    adapted = copy.deepcopy(prior)
    adapted.network.load_state_dict(tr.ema.state_dict())
    adapted.name, adapted.weights_path, adapted._sha256 = f"{prior.name}+self-adapted", None, None
    adapted.card = {**{k: v for k, v in prior.card.items() if k != "sha256"}, "name": adapted.name,  # new weights
                    "training": {**prior.card["training"], "self_adaptation": record}}
    return adapted, record
