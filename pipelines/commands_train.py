"""`train`: train a 2D diffusion prior on the user's volumes."""
from __future__ import annotations

import shlex
from enum import Enum
from pathlib import Path
from typing import List, Optional, Tuple

import typer

from .app import app


class Modality(str, Enum):
    ct = "ct"
    mri = "mri"


def _command_line(ctx: typer.Context) -> str:
    """The canonical command line that reproduces this run: every parameter spelled out."""
    words = ["medrecon", ctx.info_name or "train"]
    for p in ctx.command.params:
        v = ctx.params.get(p.name)
        if getattr(p, "param_type_name", "") != "option" or v is None:
            continue
        if p.name == "data":  # paths given positionally after --data belong to it
            v = list(v) + list(ctx.params.get("more") or [])
        if getattr(p, "is_flag", False):
            words.append(p.opts[0] if v else (p.secondary_opts[0] if p.secondary_opts else ""))
        elif getattr(p, "multiple", False):
            for item in v:
                words += [p.opts[0], str(item.value if isinstance(item, Enum) else item)]
        elif isinstance(v, (tuple, list)):
            words += [p.opts[0], *map(str, v)]
        else:
            words += [p.opts[0], str(v.value if isinstance(v, Enum) else v)]
    return shlex.join(w for w in words if w)


@app.command()
def train(
    ctx: typer.Context,
    data: List[Path] = typer.Option(..., "--data", "-d", help="DICOM series folders, NIfTI files, or folders "
                                    "holding them (searched recursively). Several paths may follow --data."),
    more: Optional[List[Path]] = typer.Argument(None, help="More data paths (as if listed after --data).",
                                                show_default=False),
    output: Path = typer.Option(..., "--output", "-o", help="Prior folder to write (model card, weights, logs)."),
    modality: Modality = typer.Option(Modality.ct, "--modality", help="ct: HU window; mri: per-volume normalisation."),
    image_size: int = typer.Option(64, "--image-size", help="Training slice size (square, divisible by 2^(levels-1))."),
    steps: int = typer.Option(5000, "--steps", help="Total optimisation steps (with --resume: the new total)."),
    batch_size: int = typer.Option(16, "--batch-size"),
    lr: float = typer.Option(2e-4, "--lr", help="Adam learning rate (after a linear warm-up)."),
    channels: str = typer.Option("32,64,128,128", "--channels", help="UNet widths per level, comma separated."),
    layers_per_block: int = typer.Option(1, "--layers-per-block"),
    hu_window: Tuple[float, float] = typer.Option((-1000.0, 1000.0), "--hu-window",
                                                  help="CT: HU mapped to the model range [-1, 1]."),
    mri_percentile: float = typer.Option(99.5, "--mri-percentile", help="MRI: percentile that maps to 1."),
    ema_decay: float = typer.Option(0.999, "--ema-decay"),
    heldout_fraction: float = typer.Option(0.05, "--heldout-fraction",
                                           help="Last slices held out to score denoising before/after."),
    checkpoint_every: int = typer.Option(1000, "--checkpoint-every"),
    sample_every: int = typer.Option(1000, "--sample-every", help="Sample grid PNG every N steps (0: only at end)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="bf16 autocast on CUDA."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUTPUT/checkpoints/state.pt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing prior in OUTPUT."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Train a 2D diffusion prior (diffusers UNet2DModel, EDM) on axial slices; writes a folder load_prior accepts."""
    from medrecon.errors import InputError
    from medrecon.priors.train import TrainOptions, load_slices, train_prior

    try:
        widths = tuple(int(c) for c in channels.split(","))
    except ValueError:
        raise InputError(f"--channels {channels!r}: expected comma-separated integers, e.g. 32,64,128") from None
    opts = TrainOptions(image_size=image_size, channels=widths, layers_per_block=layers_per_block, steps=steps,
                        batch_size=batch_size, lr=lr, ema_decay=ema_decay, seed=seed, device=device, amp=amp,
                        checkpoint_every=checkpoint_every, sample_every=sample_every or steps)
    sd = load_slices(list(data) + list(more or []), modality.value, image_size, hu_window=hu_window,
                     mri_percentile=mri_percentile)
    n = sd.slices.shape[0]
    n_held = int(round(n * heldout_fraction)) if n >= 8 else 0
    heldout = sd.slices[n - n_held:] if n_held else None
    if n_held:
        sd.slices = sd.slices[:n - n_held]
        sd.description["heldout_slices"] = n_held
    typer.echo(f"training on {sd.slices.shape[0]} slices from {sd.description['n_volumes']} volumes "
               f"({image_size}x{image_size}), {n_held} held out", err=True)
    out = train_prior(sd, output, opts, command=_command_line(ctx), resume=resume, overwrite=overwrite,
                      heldout=heldout, progress=progress)
    typer.echo(str(out))
