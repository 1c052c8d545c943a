"""`phantom` (synthetic training/test volumes) and `demo` (the bundled phantom and prior, end to end)."""
from __future__ import annotations

from pathlib import Path

import typer

from .app import app, say
from .modality import Modality


def parse_seeds(text: str) -> list[int]:
    """'0-199' or '3,5,9' or '1000' -> list of seeds (never empty: a reversed range is refused)."""
    from medrecon.errors import InputError

    seeds: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            if hi and int(hi) < int(lo):
                raise InputError(f"--seeds {text!r}: the range {part.strip()} is reversed; write {hi.strip()}-"
                                 f"{lo.strip()}")
            seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise InputError(f"--seeds {text!r}: expected a range like 0-199 or a list like 3,5,9") from None
    return seeds


@app.command()
def phantom(
    output: Path = typer.Argument(..., help="Folder to write one NIfTI per seed into."),
    modality: Modality = typer.Option(Modality.ct, "--modality", case_sensitive=False),
    seeds: str = typer.Option("1000", "--seeds", help="Seeds: 0-199 (training range 0-999, held out 1000-1099)."),
    shape: str = typer.Option("32,64,64", "--shape", help="Z,Y,X voxels."),
    slice_thickness: float = typer.Option(None, "--slice-thickness", help="mm (default: the phantom's own)."),
    overwrite: bool = typer.Option(False, "--overwrite"),
):
    """Write synthetic CT (HU) or MR (normalised) phantom volumes as NIfTI, reproducible from seeds."""
    from tqdm import tqdm

    from medrecon.errors import InputError
    from medrecon.io import write_nifti
    from medrecon.io.atomic import os_reason

    from .phantoms import ct_phantom, mr_phantom
    from .phantoms.fields import check_geometry

    try:
        zyx = tuple(int(s) for s in shape.split(","))
        assert len(zyx) == 3
    except (ValueError, AssertionError):
        raise InputError(f"--shape {shape!r}: expected Z,Y,X such as 32,64,64") from None
    seed_list = parse_seeds(seeds)
    check_geometry(seed_list[0], zyx, slice_thickness)  # the phantoms' own checks, before the folder is made
    make = ct_phantom if modality == Modality.ct else mr_phantom
    kw = {} if slice_thickness is None else {"slice_thickness_mm": slice_thickness}
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the output folder {output}: {os_reason(e)}; choose a writable "
                         "location") from e
    for seed in tqdm(seed_list, desc=f"{modality.value} phantoms", unit="vol"):
        contrast = {} if modality == Modality.ct else {"contrast": ("T1", "T2", "PD")[seed % 3]}
        write_nifti(make(zyx, seed=seed, **kw, **contrast), output / f"{modality.value}_seed{seed:04d}.nii.gz",
                    overwrite=overwrite)


@app.command()
def demo(
    output: Path = typer.Option(Path("out/demo"), "--output", "-o", help="Folder for the results."),
    source: str = typer.Option("scan", "--source", help="scan: a held-out real CT series (set up by "
                                                        "`medrecon data fetch`); phantom: a synthetic one."),
    prior: str = typer.Option(None, "--prior", help="Prior folder (default: the 8-view config's for the scan, "
                                                    "bundled:ct_patch_wide; bundled:ct for the phantom)."),
    slices: int = typer.Option(None, "--slices", help="Central slices to use (default: all of the scan, 24 "
                                                      "phantom slices)."),
    seed: int = typer.Option(None, "--seed", help="Phantom seed (default: the first held-out seed)."),
    steps: int = typer.Option(None, "--steps", help="Diffusion steps (default: 20 for the scan, from its warm "
                                                    "start; the registry's 50 for the phantom)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """8-view sparse-view CT of a held-out scan: FBP vs ADMM-TV vs warm-started diffusion + z-TV."""
    from .demo import DEMO_SEED, run_demo

    run_demo(output, source, prior, slices, DEMO_SEED if seed is None else seed, steps, overwrite, progress,
             say)
