"""Train a 2D diffusion prior on axial slices of the user's volumes (medrecon's own format, see unet.py).

Pipeline: volumes (DICOM series / NIfTI via ``medrecon.io.read_volume``, or arrays) -> axial slices ->
intensity map per the model card (CT: HU window -> [-1, 1]; MRI: per-volume magnitude / high percentile ->
[0, 1] -> [-1, 1]) -> centre crop to square and resize to the training size -> ``train_prior``:
EDM denoising score matching (sigma log-normal, preconditioned D, loss weight (s^2+sd^2)/(s*sd)^2), Adam
with a short warm-up, gradient clipping, EMA of the weights, bf16 autocast on CUDA, checkpoints with
resume, a loss log (CSV), sample grids (PNG) and, at every checkpoint, an exported prior folder that
``load_prior`` accepts (the EMA weights + model card).

Output folder::

    model_card.yaml  config.json  diffusion_pytorch_model.safetensors   <- the prior (EMA weights)
    loss.csv  samples/step_XXXXXXX.png  checkpoints/state.pt            <- training record and state
"""
from __future__ import annotations

import copy
import csv
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..volume import Volume
from .base import Denoiser, IntensityMap, schedule_from_dict
from .card import CARD_NAME
from .network import EDMPrior, edm_denoise
from .unet import EDM_SCHEDULE, WEIGHTS_NAME, build_unet, save_unet_prior, unet_config

MODEL_RANGE = (-1.0, 1.0)
STATE_FILE = Path("checkpoints") / "state.pt"


# ---- data --------------------------------------------------------------------------------------------------

@dataclass
class SliceData:
    """Training slices (N, 1, S, S) float32 in the model range [-1, 1] and what the card says about them."""

    slices: torch.Tensor
    modality: str
    intensity: dict
    pixel_spacing_mm: list | None = None
    description: dict = field(default_factory=dict)


def find_volume_paths(paths) -> list[Path]:
    """Expand files and folders into volume paths: NIfTI files, and folders that directly hold DICOM files
    (one series folder each); folders are searched recursively."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise InputError(f"{p}: no such file or folder (training data must be DICOM series folders or NIfTI files)")
        if p.is_file():
            out.append(p)
            continue
        files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        nifti = [f for f in files if f.name.endswith((".nii", ".nii.gz"))]
        out += nifti
        if any(_is_dicom(f) for f in files if f not in nifti):
            out.append(p)
        out += find_volume_paths(sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")))
    return out


def _is_dicom(f: Path) -> bool:
    if f.suffix.lower() == ".dcm":
        return True
    try:
        with open(f, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def read_training_volume(path: Path) -> Volume:
    """medrecon.io.read_volume (DICOM or NIfTI); a nibabel fallback for NIfTI while that reader is absent."""
    try:
        from ..io import read_volume
    except ImportError:
        read_volume = None
    if read_volume is not None:
        return read_volume(path)
    if not str(path).endswith((".nii", ".nii.gz")):
        raise InputError(f"{path}: reading DICOM needs medrecon.io.read_volume, which is not available")
    import nibabel as nib

    img = nib.load(str(path))
    return Volume.from_affine_ras(np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0), img.affine,
                                  {"source": str(path)})


def _intensity_card(modality: str, hu_window, percentile: float) -> dict:
    lo, hi = MODEL_RANGE
    if modality == "ct":
        return {"physical_min": float(hu_window[0]), "physical_max": float(hu_window[1]), "model_min": lo,
                "model_max": hi, "unit": "HU"}
    if modality == "mri":
        return {"physical_min": 0.0, "physical_max": 1.0, "model_min": lo, "model_max": hi,
                "unit": "normalised magnitude",
                "normalisation": f"per volume: |v| / {percentile}th percentile of |v|, clipped to [0, 1]"}
    raise InputError(f"modality {modality!r} is not supported: use 'ct' or 'mri'")


def _square_resize(x: torch.Tensor, size: int) -> tuple[torch.Tensor, float]:
    """Centre crop (N, 1, H, W) to a square, resize to size; returns the images and the zoom (in px / out px)."""
    h, w = x.shape[-2:]
    m = min(h, w)
    x = x[..., (h - m) // 2:(h - m) // 2 + m, (w - m) // 2:(w - m) // 2 + m]
    if m != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=m > size)
    return x, m / size


def prepare_slices(volumes, modality: str = "ct", image_size: int = 64, hu_window=(-1000.0, 1000.0),
                   mri_percentile: float = 99.5, min_std: float = 1e-3, sources=None) -> SliceData:
    """Axial slices of ``volumes`` (Volume objects or (Z, Y, X) arrays in HU / magnitude) as training data.

    Slices that are nearly constant after the intensity map (std < ``min_std``, e.g. all air) are dropped.
    """
    imap = _intensity_card(modality, hu_window, mri_percentile)
    to_model = IntensityMap.from_dict(imap)
    out, spacings, kept = [], [], []
    for v in volumes:
        data = np.asarray(v.data if isinstance(v, Volume) else v, dtype=np.float32)
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3:
            raise InputError(f"training volumes must be (Z, Y, X) arrays or Volumes, got shape {data.shape}")
        if modality == "mri":
            data = np.abs(data)
            data = data / max(float(np.percentile(data, mri_percentile)), 1e-12)
        x = torch.from_numpy(to_model.to_model(data)).clamp(*MODEL_RANGE)[:, None]
        x, zoom = _square_resize(x, image_size)
        x = x[x.flatten(1).std(dim=1) >= min_std]
        out.append(x)
        kept.append(int(x.shape[0]))
        if isinstance(v, Volume):
            spacings.append([v.spacing[0] * zoom, v.spacing[1] * zoom])
    slices = torch.cat(out) if out else torch.zeros(0, 1, image_size, image_size)
    if slices.shape[0] == 0:
        raise InputError("no usable training slices: the volumes are empty or constant in the intensity window")
    spacing = [round(float(s), 4) for s in np.median(np.array(spacings), axis=0)] if spacings else None
    desc = {"volumes": [str(s) for s in sources] if sources else f"{len(kept)} in-memory volumes",
            "n_volumes": len(kept), "n_slices": int(slices.shape[0]), "slices_per_volume": kept}
    return SliceData(slices.contiguous(), modality, imap, spacing, desc)


def load_slices(paths, modality: str = "ct", image_size: int = 64, **kw) -> SliceData:
    """Find, read and prepare the volumes under ``paths`` (files or folders)."""
    found = find_volume_paths(paths)
    if not found:
        raise InputError(f"no DICOM series or NIfTI files found under {', '.join(map(str, paths))}")
    return prepare_slices([read_training_volume(p) for p in found], modality, image_size, sources=found, **kw)


# ---- training ---------------------------------------------------------------------------------------------

@dataclass
class TrainOptions:
    image_size: int = 64
    channels: tuple = (32, 64, 128, 128)
    layers_per_block: int = 1
    steps: int = 5000
    batch_size: int = 16
    lr: float = 2e-4
    warmup: int = 200  # steps of linear lr warm-up (at most steps // 10)
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    sigma_data: float = 0.5
    p_mean: float = -1.2  # ln(sigma) ~ N(p_mean, p_std^2) during training (EDM)
    p_std: float = 1.2
    flip: bool = True
    intensity_jitter: float = 0.02  # x -> x * (1 + a) + b, a, b ~ U(-j, j), in the model range
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    log_every: int = 10
    checkpoint_every: int = 1000
    sample_every: int = 1000
    num_samples: int = 16
    sample_steps: int = 18


def edm_loss(unet, x0: torch.Tensor, opts: TrainOptions, generator: torch.Generator | None = None,
             sigma: torch.Tensor | None = None) -> torch.Tensor:
    """EDM denoising score matching loss, one value per sample: w(sigma) * mean (D(x0 + sigma n) - x0)^2."""
    b = x0.shape[0]
    if sigma is None:
        sigma = torch.exp(opts.p_mean + opts.p_std * torch.randn(b, generator=generator)).to(x0.device)
    n = torch.randn(x0.shape, generator=generator).to(x0.device)
    d = edm_denoise(unet, x0 + sigma.view(-1, 1, 1, 1) * n, sigma, opts.sigma_data)
    w = (sigma ** 2 + opts.sigma_data ** 2) / (sigma * opts.sigma_data) ** 2
    return w * ((d.float() - x0) ** 2).flatten(1).mean(1)


def heldout_loss(prior: Denoiser, x0: torch.Tensor, sigmas=(0.02, 0.1, 0.3, 1.0, 3.0), sigma_data: float = 0.5,
                 seed: int = 1234) -> float:
    """Denoising loss of any prior on fixed slices, noise and sigmas (parameterisation independent):
    mean over sigma of mean (D(x0 + sigma n, sigma) - x0)^2 / (sigma^2 sd^2 / (sigma^2 + sd^2)).
    1.0 is the error of the best constant-mean linear shrinkage for data of std sd; lower is better."""
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    with torch.no_grad():
        for s in sigmas:
            n = torch.randn(x0.shape, generator=g)
            d = prior.denoise(x0 + s * n, torch.full((x0.shape[0],), float(s)))
            total += float(((d - x0) ** 2).mean()) / (s ** 2 * sigma_data ** 2 / (s ** 2 + sigma_data ** 2))
    return total / len(sigmas)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    r = torch.linspace(0, 1, n, dtype=torch.float64)
    s = (sigma_max ** (1 / rho) + r * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)])


def quick_samples(prior: Denoiser, n: int = 16, steps: int = 18, seed: int = 0) -> torch.Tensor:
    """Unconditional samples with EDM's deterministic Heun sampler through the Denoiser contract (any prior)."""
    s = prior.image_size or 64
    sig = karras_sigmas(steps, max(prior.schedule.sigma_min, 2e-3), prior.schedule.sigma_max)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, s, s, generator=g, dtype=torch.float64) * sig[0]
    with torch.no_grad():
        for i in range(steps):
            s0, s1 = sig[i], sig[i + 1]
            d0 = (x - prior.denoise(x.float(), s0.float().expand(n)).double()) / s0
            x1 = x + (s1 - s0) * d0
            if s1 > 0:
                d1 = (x1 - prior.denoise(x1.float(), s1.float().expand(n)).double()) / s1
                x1 = x + (s1 - s0) * (d0 + d1) / 2
            x = x1
    return x.float()


def save_grid(images: torch.Tensor, path: Path, value_range=MODEL_RANGE) -> Path:
    """Save (N, 1, S, S) images as one PNG grid, value_range mapped to 0..255."""
    from PIL import Image

    n, _, s, _ = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    lo, hi = value_range
    im = ((images[:, 0].clamp(lo, hi) - lo) / (hi - lo) * 255).round().to(torch.uint8).numpy()
    grid = np.zeros((rows * (s + 2), cols * (s + 2)), np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * (s + 2) + 1:r * (s + 2) + 1 + s, c * (s + 2) + 1:c * (s + 2) + 1 + s] = im[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class _Trainer:
    """The training state (network, EMA, optimiser, step) and one optimisation step."""

    def __init__(self, data: SliceData, out: Path, opts: TrainOptions, command: str | None):
        self.data, self.out, self.opts, self.command = data, out, opts, command
        self.device = _pick_device(opts.device)
        torch.manual_seed(opts.seed)
        self.unet_config = unet_config(opts.image_size, opts.channels, opts.layers_per_block)
        self.model = build_unet(self.unet_config).to(self.device).train()
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optim = torch.optim.Adam(self.model.parameters(), lr=opts.lr)
        self.gen = torch.Generator().manual_seed(opts.seed + 1)
        self.step, self.seconds, self.recent = 0, 0.0, []

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.optim.state_dict(),
                "step": self.step, "seconds": self.seconds, "unet_config": self.unet_config,
                "options": asdict(self.opts), "generator": self.gen.get_state(), "recent": self.recent}

    def restore(self, path: Path):
        st = torch.load(path, map_location="cpu", weights_only=True)
        if st["unet_config"] != self.unet_config:
            raise InputError(f"{path}: the checkpoint's network (image size, channels) differs from the options "
                             "given now; resume with the original --image-size/--channels")
        self.model.load_state_dict(st["model"])
        self.ema.load_state_dict(st["ema"])
        self.optim.load_state_dict(st["optimizer"])
        self.gen.set_state(st["generator"])
        self.step, self.seconds, self.recent = st["step"], st["seconds"], list(st["recent"])

    def batch(self) -> torch.Tensor:
        o, n = self.opts, self.data.slices.shape[0]
        x = self.data.slices[torch.randint(n, (o.batch_size,), generator=self.gen)]
        if o.flip:
            flip = torch.rand(o.batch_size, generator=self.gen) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if o.intensity_jitter:
            a, b = (torch.rand(2, o.batch_size, 1, 1, 1, generator=self.gen) * 2 - 1) * o.intensity_jitter
            x = x * (1 + a) + b
        return x.to(self.device)

    def train_step(self) -> float:
        o = self.opts
        warmup = max(1, min(o.warmup, o.steps // 10))  # linear warm-up, at most a tenth of the run
        for grp in self.optim.param_groups:
            grp["lr"] = o.lr * min(1.0, (self.step + 1) / warmup)
        x0 = self.batch()
        amp = o.amp and self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = edm_loss(self.model, x0, o, self.gen).mean()
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

    def prior(self) -> EDMPrior:
        return EDMPrior(self.ema, self.card(), schedule_from_dict(EDM_SCHEDULE),
                        IntensityMap.from_dict(self.data.intensity), self.opts.image_size,
                        sigma_data=self.opts.sigma_data)

    def card(self, heldout: dict | None = None) -> dict:
        o = self.opts
        training = {"data": self.data.description, "command": self.command or "python API: medrecon.priors.train",
                    "steps": self.step, "batch_size": o.batch_size, "lr": o.lr, "ema_decay": o.ema_decay,
                    "final_loss": round(float(np.mean(self.recent)), 5) if self.recent else None,
                    "final_loss_note": "mean EDM-weighted training loss over the last 100 steps",
                    "seconds": round(self.seconds, 1), "device": str(self.device),
                    "mixed_precision": "bf16" if o.amp and self.device.type == "cuda" else "none",
                    "options": asdict(o), "versions": _versions()}
        if heldout:
            training["heldout"] = heldout
        return {"name": self.out.name, "architecture": "diffusers-unet2d", "parameterization": "edm",
                "weights": WEIGHTS_NAME,
                "config": {"sigma_data": o.sigma_data, "c_noise": "ln(sigma) / 4", "unet": self.unet_config},
                "schedule": dict(EDM_SCHEDULE), "image_size": o.image_size,
                "pixel_spacing_mm": self.data.pixel_spacing_mm, "modality": self.data.modality, "intensity": self.data.intensity, "training": training}

    def export(self, heldout: dict | None = None):
        """Write the prior (EMA weights, config.json, model card) and the resumable training state."""
        save_unet_prior(self.out, self.ema, self.card(heldout))
        (self.out / STATE_FILE).parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out / (str(STATE_FILE) + ".tmp")
        torch.save(self.state(), tmp)
        tmp.replace(self.out / STATE_FILE)


def _versions() -> dict:
    import diffusers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__}


def train_prior(data: SliceData, output: str | Path, options: TrainOptions | None = None, *,
                command: str | None = None, resume: bool = False, overwrite: bool = False,
                heldout: torch.Tensor | None = None, progress: bool = True) -> Path:
    """Train an EDM-preconditioned UNet2DModel prior on ``data`` and write a prior folder to ``output``.

    ``resume`` continues from ``output/checkpoints/state.pt`` up to ``options.steps`` in total; ``heldout``
    slices (model range) are scored with :func:`heldout_loss` before and after, into the card and CSV.
    ``command`` is recorded in the model card (the CLI passes its exact command line). Returns ``output``.
    """
    from tqdm.auto import tqdm

    opts = options or TrainOptions()
    if tuple(data.slices.shape[-2:]) != (opts.image_size, opts.image_size):
        raise InputError(f"training slices are {tuple(data.slices.shape[-2:])}, options ask for image size "
                         f"{opts.image_size}: prepare the slices at that size")
    out = Path(output)
    if resume and not (out / STATE_FILE).is_file():
        raise InputError(f"{out / STATE_FILE}: nothing to resume (no training state); drop --resume to start anew")
    if not resume and (out / CARD_NAME).exists() and not overwrite:
        raise InputError(f"{out}: already holds a prior; use --resume to continue it or --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    tr = _Trainer(data, out, opts, command)
    if resume:
        tr.restore(out / STATE_FILE)
    held = {}
    if heldout is not None:
        held["loss_before"] = round(heldout_loss(tr.prior(), heldout, sigma_data=opts.sigma_data), 5)
    log_path = out / "loss.csv"
    new_log = not (resume and log_path.is_file())
    with open(log_path, "w" if new_log else "a", newline="") as fh:
        log = csv.writer(fh)
        if new_log:
            log.writerow(["step", "loss", "lr", "img_per_s", "elapsed_s"])
        bar = tqdm(total=opts.steps, initial=tr.step, disable=not progress, desc="train", unit="it")
        window, t_win = [], time.perf_counter()
        while tr.step < opts.steps:
            t0 = time.perf_counter()
            loss = tr.train_step()
            tr.seconds += time.perf_counter() - t0
            if not math.isfinite(loss):
                raise InputError(f"training diverged at step {tr.step} (loss {loss}); lower --lr and resume "
                                 f"from the last checkpoint in {out / STATE_FILE}")
            window.append(loss)
            tr.recent = (tr.recent + [loss])[-100:]
            bar.update(1)
            if tr.step % opts.log_every == 0 or tr.step == opts.steps:
                ips = len(window) * opts.batch_size / max(time.perf_counter() - t_win, 1e-9)
                log.writerow([tr.step, f"{np.mean(window):.6f}", f"{tr.optim.param_groups[0]['lr']:.3g}",
                              f"{ips:.1f}", f"{tr.seconds:.1f}"])
                fh.flush()
                bar.set_postfix(loss=f"{np.mean(window):.4f}", img_s=f"{ips:.1f}")
                window, t_win = [], time.perf_counter()
            if opts.sample_every and tr.step % opts.sample_every == 0 and tr.step < opts.steps:
                save_grid(quick_samples(tr.prior(), opts.num_samples, opts.sample_steps),
                          out / "samples" / f"step_{tr.step:07d}.png")
            if opts.checkpoint_every and tr.step % opts.checkpoint_every == 0 and tr.step < opts.steps:
                tr.export()
        bar.close()
    if heldout is not None:
        held["loss_after"] = round(heldout_loss(tr.prior(), heldout, sigma_data=opts.sigma_data), 5)
        held["n_slices"] = int(heldout.shape[0])
    if opts.sample_every:
        save_grid(quick_samples(tr.prior(), opts.num_samples, opts.sample_steps),
                  out / "samples" / f"step_{tr.step:07d}.png")
    tr.export(held or None)
    return out
