"""Quick sample grids of a prior during training (Karras/EDM deterministic sampler, PNG grids).

``python -m medrecon.priors.sample_grid PRIOR`` draws the sample grid of a prior folder that ``medrecon train`` wrote
(one a ``--time-limit`` ended is written without it) into ``PRIOR/samples/step_N.png``, N its card's steps.
"""
from __future__ import annotations

import argparse
import math
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .base import Denoiser
from .training_data import MODEL_RANGE


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    r = torch.linspace(0, 1, n, dtype=torch.float64)
    s = (sigma_max ** (1 / rho) + r * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)])


#: Heun steps of a sample grid (2 * steps - 1 denoiser calls): 12, not EDM's 18, since the sixty-second session; on
#: bundled:ct_patch and bundled:mri_patch the samples look alike (the same structures, as sharp) at a third less time
GRID_STEPS = 12


@contextmanager
def one_tile_grid(prior: Denoiser):
    """A patch prior denoises with one tile grid per call (its card's ``inference_shifts`` may say 2): the second
    grid, against seams of about the noise level (a few HU at a sampler's last sigma), doubles a sample grid's cost
    and does not show in its [-1, 1] window (bundled:ct_patch, bundled:mri_patch: the same samples' look)."""
    before = getattr(prior, "shifts", None)
    if before is None:
        yield prior
        return
    prior.shifts = 1
    try:
        yield prior
    finally:
        prior.shifts = before


def quick_samples(prior: Denoiser, n: int = 16, steps: int = GRID_STEPS, seed: int = 0) -> torch.Tensor:
    """Unconditional samples with EDM's deterministic Heun sampler through the Denoiser contract (any prior).
    A prior of any size (patch prior) samples slices twice its tile size (64 without one), with one tile grid per
    call (``one_tile_grid``)."""
    s = prior.image_size or 2 * int(getattr(prior, "patch_size", 32))
    sig = karras_sigmas(steps, max(prior.schedule.sigma_min, 2e-3), prior.schedule.sigma_max)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, s, s, generator=g, dtype=torch.float64) * sig[0]
    with torch.no_grad(), one_tile_grid(prior):
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


def draw_grid(prior: Denoiser, path: Path, n: int, steps: int) -> Path:
    """Draw ``n`` samples of ``prior`` in ``steps`` Heun steps (``quick_samples``) and save them as a grid at
    ``path`` (``save_grid``; ``grid_path`` for a run's)."""
    return save_grid(quick_samples(prior, n, steps), path)


def grid_path(folder, step: int) -> Path:
    """Where ``medrecon train`` writes the sample grid of step ``step`` of the prior in ``folder``."""
    return Path(folder) / "samples" / f"step_{int(step):07d}.png"


def draw_command(folder) -> str:
    """The command that draws the sample grid of the prior in ``folder`` afterwards (``main``), its path absolute."""
    import shlex

    return f"python -m medrecon.priors.sample_grid {shlex.quote(str(Path(folder).absolute()))}"


#: the wording of a card's ``training.sample_grid`` note for people (``skipped_grid``, ``_note_drawn``); code reads
#: the fields beside it, and the note only on a card written before them (``skipped_why``)
_SKIP, _DRAW, _SKIPPED = "skipped: ", "; draw it with ", "; the run skipped it: "


def skipped_grid(why: str, folder) -> dict:
    """A card's ``training`` fields for a final sample grid the run skipped: ``sample_grid_skipped`` (``why``) and
    the ``sample_grid`` note, which adds the command that draws it."""
    return {"sample_grid": f"{_SKIP}{why}{_DRAW}{draw_command(folder)}", "sample_grid_skipped": why}


def skipped_why(training: dict) -> str:
    """Why the run skipped its final sample grid: the card's ``training.sample_grid_skipped``, or on a card written
    before that field, as its ``sample_grid`` note words it ('skipped: WHY; draw it with ...', or after a drawing
    '...; the run skipped it: WHY')."""
    if training.get("sample_grid_skipped"):
        return str(training["sample_grid_skipped"])
    note = str(training["sample_grid"])
    return note.partition(_SKIPPED)[2] if _SKIPPED in note else note.removeprefix(_SKIP).partition(_DRAW)[0]


def main(argv=None) -> int:
    """``python -m medrecon.priors.sample_grid PRIOR`` (sample_grid.py): draw the sample grid of a prior folder
    written by ``medrecon train`` as the run would have: its card's ``training.options`` num_samples and sample_steps
    (or -n / --steps), into PRIOR/samples/step_N.png, N its card's steps. A card whose ``training.sample_grid`` says
    the grid was skipped (``training.sample_grid_skipped``) then says where it was drawn (``sample_grid_drawn``)."""
    from ..errors import InputError, one_line, printed
    from .loader import load_prior

    ap = argparse.ArgumentParser(prog="python -m medrecon.priors.sample_grid", description=main.__doc__)
    ap.add_argument("prior", help="a prior folder (model_card.yaml, weights) written by medrecon train")
    ap.add_argument("-n", type=int, default=None, help="samples (default: the run's num_samples, else 16)")
    ap.add_argument("--steps", type=int, default=None, help=f"Heun steps (default: the run's sample_steps, else "
                    f"{GRID_STEPS})")
    ap.add_argument("--output", default=None, help="the PNG to write (default: PRIOR/samples/step_N.png)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default: auto)")
    a = ap.parse_args(argv)
    for flag, value, what in (("-n", a.n, "sample"), ("--steps", a.steps, "step")):
        if value is not None and value < 1:  # 0 fell back to the card's value (a.n or ...), saying nothing
            print(f"error: {flag} {value}: give at least 1 {what}", file=sys.stderr)
            return 2
    try:
        prior = load_prior(a.prior, device=a.device)
        training = prior.card.get("training") or {}
        opts = training.get("options") or {}
        n = a.n if a.n is not None else int(opts.get("num_samples") or 16)
        steps = a.steps if a.steps is not None else int(opts.get("sample_steps") or GRID_STEPS)
        if n < 1 or steps < 1:  # a card's negative values (the flags' were refused above, a card's 0 falls back)
            raise InputError(f"-n {n} --steps {steps}: give at least one sample and one step")
        out = Path(a.output) if a.output else grid_path(a.prior, int(training.get("steps") or 0))
        print(f"drawing {n} samples, {steps} steps ...", file=sys.stderr)
        try:
            draw_grid(prior, out, n, steps)
        except OSError as e:
            raise InputError(f"cannot write {out}: {e.strerror or e}; choose a writable --output") from None
        print(one_line(str(out)))  # a newline or terminal escape in the path escaped, as in errors
        _note_drawn(a.prior, out, n, steps)
    except InputError as e:
        print(f"error: {printed(e)}", file=sys.stderr)
        return 2
    return 0


def _note_drawn(prior, out: Path, n: int, steps: int) -> None:
    """Where the card of the prior folder ``prior`` says its grid was skipped (``training.sample_grid_skipped``, or on
    a card written before that field the ``training.sample_grid`` note; written by ``medrecon train``), say where it
    is now drawn: ``sample_grid_drawn`` {path, samples, steps}, ``sample_grid_skipped`` (added to an older card) and
    the note reworded (the card rewritten atomically, ``write_model_card``); a card that cannot be rewritten is a
    warning, the grid being drawn."""
    from ..errors import one_line
    from .card import CARD_NAME, read_model_card, write_model_card

    folder = Path(prior)
    path = folder / CARD_NAME if folder.is_dir() else folder.parent / CARD_NAME
    if not path.is_file():
        return
    try:
        card = read_model_card(path)
        training = card.get("training")
        if not isinstance(training, dict) or not (training.get("sample_grid_skipped") or training.get("sample_grid")):
            return  # drawn by the run: nothing noted
        why = skipped_why(training)
        training.update(sample_grid=f"drawn afterwards: {out.absolute()} ({n} sample{'s' * (n != 1)}, "
                                    f"{steps} step{'s' * (steps != 1)}){_SKIPPED}{why}", sample_grid_skipped=why,
                        sample_grid_drawn={"path": str(out.absolute()), "samples": n, "steps": steps})
        write_model_card(path, card)
    except Exception as e:  # noqa: BLE001 - the grid is drawn; only the card's note is stale
        print(one_line(f"warning: {path}: could not note the drawn grid in the card ({e}); its sample_grid note "
                       "still says skipped"), file=sys.stderr)
