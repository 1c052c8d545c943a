"""`train`: train a 2D diffusion prior (whole slices or position-aware patches) on the user's volumes."""
from __future__ import annotations

import math
import shlex
from enum import Enum
from pathlib import Path
from typing import List, Optional, Tuple

import typer

from .app import app, say
from .modality import Modality, training_volume_check


class Arch(str, Enum):
    unet = "unet"
    patch = "patch"


class Planes(str, Enum):
    axial = "axial"
    all = "all"


def _command_line(ctx: typer.Context) -> str:
    """The canonical command line that reproduces this run: every parameter spelled out."""
    words = ["medrecon", ctx.info_name or "train"]
    for p in ctx.command.params:
        v = ctx.params.get(p.name)
        if getattr(p, "param_type_name", "") != "option" or v is None:
            continue
        if p.name == "data":  # paths given positionally after --data belong to it
            v = list(v) + list(ctx.params.get("more") or [])
            if not v:
                continue
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


def _ints(text: str, what: str) -> tuple[int, ...]:
    from medrecon.errors import InputError

    try:
        return tuple(int(c) for c in text.split(","))
    except ValueError:
        raise InputError(f"{what} {text!r}: expected comma-separated integers, e.g. 32,64,128") from None


def _check_network(arch, image_size: int, widths: tuple, sizes: tuple, channels: str) -> None:
    """The network the options ask for can be built: one line naming the option, before any data are read."""
    from medrecon.errors import InputError
    from medrecon.priors.unet import unet_config

    if not widths or min(widths) < 1 or any(w % 8 for w in widths):
        raise InputError(f"--channels {channels}: give positive widths divisible by 8 (the UNet's group norm), "
                         "e.g. 32,64,128")
    step = 2 ** (len(widths) - 1)
    levels = f"{len(widths)} UNet levels, --channels {channels}"
    if arch == Arch.patch:
        bad = [p for p in sizes if p < 1 or p % step]
        if bad:
            raise InputError(f"--patch-sizes {','.join(map(str, sizes))}: {', '.join(map(str, bad))} not a positive "
                             f"multiple of 2^{len(widths) - 1} = {step} ({levels}): use other sizes or fewer "
                             "--channels")
    elif image_size % step:
        raise InputError(f"--image-size {image_size}: not a multiple of 2^{len(widths) - 1} = {step} ({levels}): "
                         f"use e.g. {max(step, image_size // step * step)}, or fewer --channels")
    unet_config(max(sizes) if arch == Arch.patch else image_size, widths)  # anything else it refuses


def training_intensity(modality: Modality, hu_window, mri_percentile: float) -> tuple[dict, float | None]:
    """The intensity section and the per-volume magnitude percentile for a modality (core knows none)."""
    from .modality import intensity_card

    imap = intensity_card(modality)
    if modality == Modality.ct:
        imap.update(physical_min=float(hu_window[0]), physical_max=float(hu_window[1]))
        return imap, None
    imap["normalisation"] = f"per volume: |v| / {mri_percentile}th percentile of |v|, clipped to [0, 1]"
    imap["normalisation_percentile"] = float(mri_percentile)  # reconstruct warns where it is far from its own
    return imap, float(mri_percentile)


def _with_training_warnings(check, registered: dict, digests: dict):
    """``check`` (the modality's), which also returns a warning for a training volume that is a copy of a registered
    val or test scan (``--dataset`` refuses those; a copy given with ``--data`` would make its figures no longer held
    out): read_volumes logs it and the card keeps it with the volume, a resume too (train._Trainer.restore).
    ``registered``: {path: its Scan.training_note} of the --dataset volumes, whose note is their warning (they are
    checked against their checksums already, not hashed again). ``digests``: the run's {resolved path: its files'
    SHA-256} (datasets.file_digests), shared with _found_records so that a file is hashed once."""
    notes = {str(Path(p).resolve()): note for p, note in registered.items()}

    def checked(path, vol) -> str | None:
        check(path, vol)
        key = str(Path(path).resolve())
        if key in notes:
            return notes[key] or None
        from .datasets import held_out_copy

        copy = held_out_copy(path, digests)
        return copy and (f"holds the registered scan {copy}, which medrecon keeps out of training (its figures are "
                         "held out); leave it out of --data unless that is meant")
    return checked


def _dataset_volumes(names: list[str], modality: Modality, heldout: bool = False) -> tuple[list[Path], list[dict]]:
    """Paths and provenance records of registered datasets (pipelines.datasets), fetched beforehand; only
    training scans unless ``heldout``."""
    from medrecon.errors import InputError

    from . import datasets

    paths, prov = [], []
    for n in names:
        s = datasets.scan(n)
        if s.modality != modality.value:
            raise InputError(f"dataset {n!r} is {s.modality}, not {modality.value}")
        if s.role == "val":
            raise InputError(f"dataset {n!r} is a validation scan (it chooses settings and is never trained on or "
                             "held out; README, 'Set-up'): drop it, and train on --dataset train")
        if s.role != "train" and not heldout:
            raise InputError(f"dataset {n!r} is a held-out test scan (never trained on; README, 'Set-up'): score "
                             f"it with --heldout-dataset {n}, or train on --dataset train")
        paths.append(datasets.path(n))
        prov.append({**s.provenance, "path": str(paths[-1])})
    return paths, prov


def _heldout_sources(names: list[str], paths: list[Path], modality: Modality) -> tuple[list, list]:
    """The held-out volumes' paths and sources (read_volumes'): the registered scans ``names`` (--heldout-dataset),
    recorded by their provenance, then the user's ``paths`` (--heldout-data), recorded when read as a training
    volume of one's own is (training_data.volume_record: path, voxels' SHA-256, pixel size)."""
    dpaths, prov = _dataset_volumes(names, modality, heldout=True) if names else ([], [])
    return dpaths + paths, prov + paths


def _found_records(sources: list, given: list[str], hashed: bool, digests: dict) -> list:
    """``sources`` (read_volumes': registered scans' records, paths of one's own) as records of each volume's path,
    found as read_volumes finds them but before anything is read: _refuse_repeated_volumes's file part, in seconds
    where reading the data takes minutes (its voxel part needs the data read). ``given``: the option each source
    came with, as the user gave it ("--data DIR", "--heldout-dataset test"), kept with its records as "given".
    ``hashed``: a file of one's own gets its SHA-256 too, which a registered scan's record carries (a byte copy of
    one, held out and trained on, is refused before reading; where the other side has a registered scan).
    ``digests``: the run's {resolved path: its files' SHA-256} (datasets.file_digests), filled here and read by
    _with_training_warnings' held_out_copy, so that a file is hashed once."""
    from medrecon.priors.training_data import found_volumes

    from .datasets import file_digests

    def own(f: Path) -> dict:
        return {"path": str(f), **({"sha256": file_digests(f, digests)[0]} if hashed and Path(f).is_file() else {})}

    return [{**r, "given": g} for s, g in zip(sources, given, strict=True)
            for r in ([s] if isinstance(s, dict) else [own(f) for f in found_volumes([s])])]


def _refuse_repeated_volumes(trained: list, held: list, given: dict) -> None:
    """One line for a volume given twice as training data (the same file, bytes or voxels of one plane and series:
    a file and its folder, say), which would weigh it twice; for a held-out volume that is also a training volume,
    the same file (links resolved), the same bytes as a registered scan (its file's SHA-256) or the same voxels (the
    voxels' SHA-256 the card records of every volume, a registered scan's too: a copy of one is caught either way
    round): its loss would not be held out; or for one given twice as held-out data, which would weigh its loss
    twice. ``trained``, ``held``: the card's records of the volumes (read_volumes'), checked
    after the volumes are read; before, _found_records' (paths, a file's SHA-256 where a registered scan is on the
    other side, the option each came with). ``given``: {resolved path: that option} for the records read."""
    from medrecon.errors import InputError

    def path(record) -> str | None:
        return str(Path(record["path"]).resolve()) if record.get("path") else None

    def keys(record) -> list:  # what identifies a volume: its file, its bytes (a registered scan's), its voxels
        return [k for k in (("file", path(record)), ("bytes", record.get("sha256")),
                            ("voxels", record.get("voxels_sha256"))) if k[1]]

    def name(record) -> str:
        return record.get("name") or path(record)

    def option(record) -> str:  # the option that gave it, as the user gave it: a folder, 'test', not its file
        # _found_records' carry it; a record read has its path among theirs (read_volumes finds each source's
        # volumes as _found_records does, a registered scan's path is its provenance's), so ``given`` holds it
        return record.get("given") or given.get(path(record), path(record))  # (else the path itself)

    def first(record, seen: dict, *also):  # (kind, the record seen first) of a key of ``record`` (plus ``also``)
        return next(((kind, seen[(kind, v, *also)]) for kind, v in keys(record) if (kind, v, *also) in seen),
                    (None, None))

    trained_at, held_at, twice = {}, {}, {}
    for t in trained:
        if not isinstance(t, dict):
            continue
        view = (t.get("series_uid"), t.get("plane"))  # a folder's series, a volume's planes: each its own volume
        kind, o = first(t, twice, view)
        if o is not None:  # trained on twice: weighed twice, and a unet's last slices held out would be trained on
            same = "" if kind == "file" else f" (the same {kind} as {name(o)})"
            raise InputError(f"{name(t)}{same}: given twice as training data ({option(o)} and {option(t)}); give "
                             "it once")
        for k in keys(t):
            trained_at.setdefault(k, t)
            twice.setdefault((*k, view), t)
    for h in held:
        if not isinstance(h, dict):
            continue
        kind, t = first(h, trained_at)
        if t is not None:
            same = "the same file" if kind == "file" else f"the same {kind} as the training volume {name(t)}"
            raise InputError(f"{name(h)}: both held out and trained on ({same}); a held-out volume is never trained "
                             f"on: keep it in only one of {option(h)} and {option(t)}")
        kind, o = first(h, held_at)
        if o is not None:
            same = "" if kind == "file" else f" (the same {kind} as {name(o)})"
            raise InputError(f"{name(h)}{same}: given twice as held-out data ({option(o)} and {option(h)}); give it "
                             "once")
        for k in keys(h):
            held_at.setdefault(k, h)


@app.command()
def train(
    ctx: typer.Context,
    data: Optional[List[Path]] = typer.Option(None, "--data", "-d", help="DICOM series folders, NIfTI/NRRD files, or "
                                              "folders holding them (searched recursively). Several paths may "
                                              "follow --data."),
    more: Optional[List[Path]] = typer.Argument(None, help="More data paths (as if listed after --data).",
                                                show_default=False),
    series: Optional[List[str]] = typer.Option(None, "--series", help="SeriesInstanceUID to train on from a DICOM "
                                               "folder holding several series (default: its largest); repeatable, "
                                               "each series its own volume. Other --data folders, which hold none "
                                               "of the UIDs, still give their largest series."),
    dataset: Optional[List[str]] = typer.Option(None, "--dataset", help="A registered scan (pipelines.datasets, "
                                                "fetched by `medrecon data fetch`) to train on; repeatable; "
                                                "'train' = every training scan of the modality (for CT more than "
                                                "the bundled priors trained on: README, 'Patch priors')."),
    heldout_dataset: Optional[List[str]] = typer.Option(None, "--heldout-dataset", help="Registered scans scored "
                                                        "for the held-out loss (never trained on); 'test' = every "
                                                        "held-out scan of the modality."),
    heldout_data: Optional[List[Path]] = typer.Option(None, "--heldout-data", help="Volumes of one's own (DICOM "
                                                      "series folders, NIfTI/NRRD files, or folders holding them, "
                                                      "read as --data reads them) scored for the held-out loss, "
                                                      "never trained on; one path per --heldout-data, repeatable "
                                                      "(paths after it without an option are training data). A "
                                                      "training volume (the same file or voxels), or one given "
                                                      "twice, is refused."),
    output: Path = typer.Option(..., "--output", "-o", help="Prior folder to write (model card, weights, logs)."),
    arch: Arch = typer.Option(Arch.unet, "--arch", help="unet: whole slices at --image-size; patch: position-aware "
                              "patches (PaDIS), usable on slices of any size."),
    modality: Modality = typer.Option(Modality.ct, "--modality", case_sensitive=False, help="ct: HU window; mri: per-volume normalisation."),
    image_size: int = typer.Option(64, "--image-size", min=1, help="unet: training slice size (square, divisible by "
                                   "2^(levels-1))."),
    patch_sizes: str = typer.Option("16,32,64", "--patch-sizes", help="patch: training patch sizes, comma separated "
                                    "(the largest is used at inference)."),
    pixel_range: Optional[Tuple[float, float]] = typer.Option(None, "--pixel-range", help="patch: range of in-plane "
                                                              "pixel sizes (mm) drawn by random rescaling, and so "
                                                              "the range the prior reconstructs at [default: 0.7 4.0, "
                                                              "widened to take in the training scans' own]."),
    planes: Planes = typer.Option(Planes.axial, "--planes", help="patch: axial = the slices as stored; all = each "
                                  "near-isotropic training volume (voxel sizes within 1.5x, a 3D acquisition) as "
                                  "axial, coronal and sagittal slices, for a prior that reconstructs any plane."),
    context_slices: int = typer.Option(0, "--context-slices", min=0, help="patch: 2.5D, the network also sees "
                                       "this many noisy slices on each side of the one it denoises."),
    intensity_scale: Tuple[float, float] = typer.Option((1.0, 1.0), "--intensity-scale", help="patch: brightness "
                                                        "augmentation, each patch x c, c log-uniform in [LO, HI] "
                                                        "(MRI: a magnitude normalised otherwise than in training)."),
    fov_crop: float = typer.Option(0.0, "--fov-crop", min=0.0, max=1.0, help="patch: probability that a training "
                                   "slice is first cut to a random smaller field of view (positions refer to the "
                                   "cut), for scans whose field of view cuts through the body."),
    synthetic_phase: float = typer.Option(0.0, "--synthetic-phase", min=0.0, max=1.0, help="patch, MRI: "
                                          "probability that a training patch is the real or imaginary part of the "
                                          "image times a smooth random phase, for complex images (measured k-space)."),
    random_contrast: float = typer.Option(0.0, "--random-contrast", min=0.0, max=1.0, help="patch: probability "
                                          "that a training patch's intensities go through a random curve over the "
                                          "intensity window that keeps its bottom, air (other contrasts than the "
                                          "training scans': T2 from T1)."),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="Start from this prior's weights (a folder "
                                            "or bundled:NAME, same network; inputs it lacks start at zero)."),
    sampler_errors: Optional[Path] = typer.Option(None, "--sampler-errors", help="patch: a folder of the fast "
                                                  "sampler's recorded steps (benchmarks/sampler_errors.py); with "
                                                  "probability --sampler-error-prob a step trains on them "
                                                  "(medrecon.priors.sampler_errors)."),
    sampler_error_prob: float = typer.Option(0.5, "--sampler-error-prob", min=0.0, max=1.0,
                                             help="patch: probability that a step trains on recorded steps."),
    sampler_error_sigma_min: float = typer.Option(0.0, "--sampler-error-sigma-min", min=0.0, help="patch: only "
                                                  "recorded steps at this noise level or above."),
    loader_workers: int = typer.Option(0, "--loader-workers", min=0, help="patch: processes that draw the "
                                       "training patches ahead, each batch seeded by its step, the same for any "
                                       "number of workers (0: the training process draws them from the run's "
                                       "generator). On a GPU one core drawing patches limits the speed."),
    steps: int = typer.Option(5000, "--steps", min=1, help="Total optimisation steps (with --resume: the new total)."),
    time_limit: Optional[float] = typer.Option(None, "--time-limit", min=0.0, help="Stop after this many minutes "
                                               "(wall clock, held-out scoring and checkpoints included; a GPU slot, "
                                               "say), export the prior and keep the state; --resume continues "
                                               "towards --steps. A run it ends draws no final sample grid "
                                               "(python -m medrecon.priors.sample_grid OUTPUT draws it)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="unet: slices per step; patch: patches of the largest "
                                   "size per step (smaller sizes get proportionally more)."),
    lr: float = typer.Option(2e-4, "--lr", min=0.0, help="Adam learning rate (after a linear warm-up)."),
    lr_final: Optional[float] = typer.Option(None, "--lr-final", help="Cosine decay of the learning rate from "
                                             "--lr to this at the last step (default: constant)."),
    channels: str = typer.Option("32,64,128,128", "--channels", help="UNet widths per level, comma separated."),
    layers_per_block: int = typer.Option(1, "--layers-per-block", min=1),
    attention: Optional[bool] = typer.Option(None, "--attention/--no-attention", help="Self-attention at the "
                                             "coarsest level (default: unet yes, patch no)."),
    hu_window: Tuple[float, float] = typer.Option((-1000.0, 1000.0), "--hu-window",
                                                  help="CT: HU mapped to the model range [-1, 1]."),
    mri_percentile: float = typer.Option(99.5, "--mri-percentile", min=50.0, max=100.0, help="MRI: percentile that maps to 1."),
    ema_decay: float = typer.Option(0.999, "--ema-decay", min=0.0, max=1.0),
    heldout_fraction: float = typer.Option(0.05, "--heldout-fraction", min=0.0, max=0.5, help="unet without "
                                           "--heldout-dataset or --heldout-data: last slices held out to score "
                                           "denoising before/after."),
    checkpoint_every: int = typer.Option(1000, "--checkpoint-every", min=0, help="Checkpoint (and export the prior) every N steps (0: only at the end)."),
    heldout_every: Optional[int] = typer.Option(None, "--heldout-every", min=0, help="Held-out loss every N steps "
                                                "(default: at every checkpoint; 0: only before/after)."),
    sample_every: int = typer.Option(1000, "--sample-every", min=-1, help="Sample grid PNG every N steps and at the "
                                     "end (0: only at the end; -1: never; none at the end of a run --time-limit "
                                     "ended)."),
    seed: int = typer.Option(0, "--seed", min=-2 ** 63, max=2 ** 63 - 2),  # torch: 64-bit seeds (the run adds 1)
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for torch (default: torch's)."),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="bf16 autocast where the device has native bf16 (an Ampere or later GPU, or a CPU with AVX512-BF16/AMX)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUTPUT/checkpoints/state.pt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing prior in OUTPUT."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Train a 2D diffusion prior (diffusers UNet2DModel, EDM) on axial slices (or every plane, --planes all); writes
    a folder load_prior accepts."""
    import torch

    from medrecon.errors import InputError
    from medrecon.io.atomic import check_not_input
    from medrecon.priors.patch import heldout_slices, too_small_for_patches
    from medrecon.priors.train import DEFAULT_PIXEL_RANGE, TrainOptions, check_output, trained_pixel_range, train_prior
    from medrecon.priors.training_data import load_patch_data, load_slices

    from . import datasets

    from medrecon.device import resolve_device

    resolve_device(device)  # before the data are loaded: `--device cuda` without CUDA is one line, nothing written
    check_output(output, resume, overwrite)
    if pixel_range and not 0 < pixel_range[0] <= pixel_range[1] < math.inf:
        raise InputError(f"--pixel-range {pixel_range[0]:g} {pixel_range[1]:g}: give finite 0 < LO <= HI (mm), "
                         "e.g. 0.7 4.0")
    if not 0 < intensity_scale[0] <= intensity_scale[1] < math.inf:
        raise InputError(f"--intensity-scale {intensity_scale[0]:g} {intensity_scale[1]:g}: give finite "
                         "0 < LO <= HI, e.g. 0.5 1.1")
    if not -math.inf < hu_window[0] < hu_window[1] < math.inf:
        raise InputError(f"--hu-window {hu_window[0]:g} {hu_window[1]:g}: give finite LO < HI (HU), "
                         "e.g. -1000 1000")
    if lr_final is not None and not 0 <= lr_final <= lr:
        raise InputError(f"--lr-final {lr_final:g}: give a value in [0, --lr] ({lr:g}), "
                         "or leave it out for a constant rate")
    if threads:
        torch.set_num_threads(threads)
    widths = _ints(channels, "--channels")
    sizes = _ints(patch_sizes, "--patch-sizes")
    _check_network(arch, image_size, widths, sizes, channels)  # before the data are loaded (minutes for many)
    paths = list(data or []) + list(more or [])
    for p in paths:  # `--dataset a b` gives b as a path: say how a registered scan is named
        if str(p) in datasets.SCANS and not p.exists():
            raise InputError(f"{p}: no such file or folder; the registered scan {p} is trained on with --dataset {p} "
                             "(one name per --dataset)")
    sources: list = list(paths)
    source_options = [f"--data {p}" for p in paths]  # the option each source came with, as given: the overlap refusal's
    named = [(n, f"--dataset {d}") for d in (dataset or [])
             for n in (datasets.names("train", modality.value) if d == "train" else [d])]
    names = [n for n, _ in named]
    source_options += [g for _, g in named]
    dpaths: list = []
    if names:
        dpaths, prov = _dataset_volumes(names, modality)
        paths += dpaths
        sources += prov
    if not paths:
        raise InputError("no training data: give --data PATH... and/or --dataset NAME")
    held_named = [(n, f"--heldout-dataset {d}") for d in (heldout_dataset or [])
                  for n in (datasets.names("test", modality.value) if d == "test" else [d])]
    held_names = [n for n, _ in held_named]
    held_given = [g for _, g in held_named] + [f"--heldout-data {p}" for p in heldout_data or []]
    overlap = sorted(set(held_names) & set(names))
    if overlap:
        raise InputError(f"datasets {', '.join(overlap)} are both trained on and held out: drop them from one list")
    hpaths, hsources = _heldout_sources(held_names, list(heldout_data or []), modality)
    if planes != Planes.axial and arch != Arch.patch:
        raise InputError("--planes all needs --arch patch; drop it for a whole-slice prior")
    if context_slices and arch != Arch.patch:
        raise InputError("--context-slices needs --arch patch (2.5D patches); drop it for a whole-slice prior")
    scale = tuple(intensity_scale) if tuple(intensity_scale) != (1.0, 1.0) else None  # (1, 1): none
    if scale and arch != Arch.patch:
        raise InputError("--intensity-scale needs --arch patch; drop it for a whole-slice prior")
    for flag, value in (("--fov-crop", fov_crop), ("--synthetic-phase", synthetic_phase),
                        ("--random-contrast", random_contrast)):
        if value and arch != Arch.patch:
            raise InputError(f"{flag} needs --arch patch; drop it for a whole-slice prior")
    if sampler_errors and arch != Arch.patch:
        raise InputError("--sampler-errors needs --arch patch; drop it for a whole-slice prior")
    if loader_workers and arch != Arch.patch:
        raise InputError("--loader-workers needs --arch patch; drop it for a whole-slice prior")
    if sampler_errors and not sampler_errors.is_dir():
        raise InputError(f"--sampler-errors {sampler_errors}: no such folder; record the sampler's steps with "
                         "benchmarks/sampler_errors.py --out FOLDER first")
    scan_folders = [datasets.cache_root() / n for n in [*names, *held_names]]  # a registered scan's, in the cache
    check_not_input(output, [*paths, *hpaths, *scan_folders, sampler_errors])  # the prior would land among the scans
    start = None  # the --init-from prior, read by the loader (its checks) before the data, and trained from
    if init_from:
        from .config import resolve_prior_path

        init_from = str(resolve_prior_path(init_from))
        if not resume:  # (a resume keeps the run's own)
            from medrecon.priors import load_prior

            start = load_prior(init_from)
    imap, pct = training_intensity(modality, hu_window, mri_percentile)
    opts = TrainOptions(arch=arch.value, image_size=image_size, channels=widths, layers_per_block=layers_per_block,
                        attention=attention, steps=steps, time_limit=time_limit, loader_workers=loader_workers,
                        batch_size=batch_size, lr=lr, lr_final=lr_final,
                        ema_decay=ema_decay,
                        patch_sizes=sizes, pixel_spacing_range=tuple(pixel_range) if pixel_range else None, seed=seed, device=device,
                        amp=amp, checkpoint_every=checkpoint_every, heldout_every=heldout_every,
                        sample_every=sample_every or steps, context_slices=context_slices, init_from=init_from,
                        intensity_scale=scale, fov_crop=fov_crop, synthetic_phase=synthetic_phase,
                        random_contrast=random_contrast,
                        sampler_errors=str(sampler_errors) if sampler_errors else None,
                        sampler_error_prob=sampler_error_prob, sampler_error_sigma_min=sampler_error_sigma_min)
    digests: dict = {}  # {resolved path: its files' SHA-256}: each file of one's own hashed once in the run
    # a file given twice, or both trained on and held out: before the data are read (the voxels after)
    registered = [any(isinstance(s, dict) for s in side) for side in (sources, hsources)]  # hashed against
    found = (_found_records(sources, source_options, bool(hpaths) and registered[1], digests),
             _found_records(hsources, held_given, any(registered), digests) if hpaths else [])
    # {resolved path: the option that gave it}: the refusal after reading names it too
    found_given = {str(Path(r["path"]).resolve()): r["given"] for rs in found for r in rs if r.get("path")}
    _refuse_repeated_volumes(*found, found_given)
    heldout, held_desc = None, None
    check = training_volume_check(modality)
    notes = {p: datasets.scan(n).training_note for n, p in zip(names, dpaths)}
    train_check = _with_training_warnings(check, notes, digests)  # the training volumes': a held-out copy is warned of
    # a registered training scan's voxels are hashed only for the overlap check, which needs held-out data
    if arch == Arch.patch:
        sd = load_patch_data(paths, imap, magnitude_percentile=pct, modality=modality.value, sources=sources,
                             check=train_check, series=series, planes=planes.value, registered_voxels=bool(hpaths),
                             fits=lambda v: too_small_for_patches(
                                 v.shape[-2:], v.spacing[:2], sizes, pixel_range or DEFAULT_PIXEL_RANGE,
                                 opts.max_upsample) is None)
        if hpaths:
            hd = load_patch_data(hpaths, imap, magnitude_percentile=pct, modality=modality.value, sources=hsources,
                                 check=check)
            heldout = heldout_slices(hd, opts.heldout_spacing_mm, context=context_slices)
            held_desc = hd.description["volumes"]
        what = f"{sd.n_slices} slices at their own pixel size, patches {','.join(map(str, sizes))}"
        if resume and pixel_range is None:  # train_prior takes the run's own range from its state
            typer.echo("pixel sizes drawn from the resumed run's own range (its card's pixel_spacing_range_why)",
                       err=True)
        else:
            (lo, hi), why = trained_pixel_range(sd, opts)  # what the card records and reconstruct accepts; the why
            given = f"--pixel-range {pixel_range[0]:g} {pixel_range[1]:g}" if pixel_range else None  # states a cut,
            cut = given and (lo, hi) != tuple(pixel_range)  # naming the scans: a given range cut makes it a warning
            refused = ": the prior will refuse other pixel sizes in reconstruct (without --resample)" if cut else ""
            say(f"{'warning: ' if cut else ''}pixel sizes drawn from {lo:g}-{hi:g} mm ({why}){refused}", err=True)
            outside = sorted({round(min(sp), 4) for sp in sd.spacings if not lo <= min(sp) <= hi})
            if given and outside:  # (the default range takes in every scan's own)
                typer.echo(f"warning: training scans at {', '.join(f'{v:g}' for v in outside)} mm lie outside "
                           f"{given}: the prior will refuse them in reconstruct (without --resample); widen "
                           "--pixel-range LO HI to take them in, or leave it out", err=True)
    else:
        sd = load_slices(paths, imap, image_size, magnitude_percentile=pct, modality=modality.value, sources=sources,
                         check=train_check, series=series, registered_voxels=bool(hpaths))
        if hpaths:
            hd = load_slices(hpaths, imap, image_size, magnitude_percentile=pct, sources=hsources, check=check)
            heldout, held_desc = hd.slices, hd.description["volumes"]
        else:
            n = sd.slices.shape[0]
            n_held = int(round(n * heldout_fraction)) if n >= 8 else 0
            if n_held:
                heldout = sd.slices[n - n_held:]
                sd.slices = sd.slices[:n - n_held]
                sd.description["heldout_slices"] = n_held
        what = f"{sd.slices.shape[0]} slices ({image_size}x{image_size})"
    _refuse_repeated_volumes(sd.description["volumes"], held_desc or [], found_given)
    if held_desc:
        sd.description["heldout_volumes"] = held_desc
    n_held = 0 if heldout is None else sum(h.shape[0] for h in ([heldout] if torch.is_tensor(heldout) else heldout))
    typer.echo(f"training {arch.value} prior on {what} from {sd.description['n_volumes']} volumes, "
               f"{n_held} held-out slices", err=True)
    out = train_prior(sd, output, opts, command=_command_line(ctx), resume=resume, overwrite=overwrite,
                      heldout=heldout, progress=progress, start=start)
    say(str(out))
