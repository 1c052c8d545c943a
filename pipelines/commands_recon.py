"""`simulate`, `reconstruct`, `evaluate` and `batch`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from .app import app, say

CONFIG = typer.Option(..., "--config", "-c", help="YAML file, or a name in configs/ (e.g. sparse_view_ct_8).")
SET = typer.Option(None, "--set", help="Override a config value: --set solver.steps=50 (repeatable).")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing output.")
SERIES = typer.Option(None, "--series", help="SeriesInstanceUID when the DICOM folder holds several series.")
RESAMPLE = typer.Option(False, "--resample", help="Allow resampling (reconstruct and batch record it in report.json): "
                        "a DICOM series with uneven slice gaps (beyond 0.2 mm) onto about its median spacing from its "
                        "first slice to its last, oblong pixels "
                        "beyond 1.5:1, and the input onto the prior's grid or pixel-size range. Without it such "
                        "inputs stop with a message.")


@app.command()
def simulate(config: str = CONFIG,
             input: Path = typer.Option(..., "--input", "-i", help="Ground-truth volume: a DICOM folder or file, NIfTI, NRRD, MHA/MHD, Analyze or .npy."),
             output: Path = typer.Option(..., "--output", "-o", help="Folder for measurements.npz and "
                                                                     "reference.nii.gz."),
             set: Optional[List[str]] = SET, series: Optional[str] = SERIES, overwrite: bool = OVERWRITE,
             resample: bool = RESAMPLE):
    """Simulate noisy measurements of a volume (no inverse crime) and write the reference."""
    from .tasks import simulate as run
    out = run(config, input, output, overrides=set or [], overwrite=overwrite, series=series, resample=resample)
    say(f"wrote {out / 'measurements.npz'} and {out / 'reference.nii.gz'}")


@app.command()
def reconstruct(config: str = CONFIG,
                input: Path = typer.Option(..., "--input", "-i", help="Volume (simulated first) or "
                                                                      "measurements (.npz, fastMRI .h5)."),
                output: Path = typer.Option(..., "--output", "-o", help="Output folder."),
                set: Optional[List[str]] = SET, series: Optional[str] = SERIES, overwrite: bool = OVERWRITE,
                resample: bool = RESAMPLE,
                progress: bool = typer.Option(True, "--progress/--quiet", help="Show a progress bar.")):
    """Reconstruct; writes recon.nii.gz, dicom/, preview.png, report.json and index.html."""
    from .tasks import reconstruct as run
    res = run(config, input, output, overrides=set or [], overwrite=overwrite, series=series, progress=progress,
              resample=resample)
    r = res.report
    scored = r.get("vs_reference")
    say(f"wrote {res.output}: {', '.join(r['files'])}, report.json, index.html "
        f"({r['timings_s']['total']:.1f} s, {r['network_evaluations_per_slice']} network evaluations/slice"
        + (f"; PSNR axial {scored['psnr']['axial']:.2f} dB against {scored['reference']}" if scored else "")
        + ")")


@app.command()
def evaluate(reference: Path = typer.Option(..., "--reference", "-r", help="Reference volume."),
             input: Path = typer.Option(..., "--input", "-i", help="Reconstruction to score."),
             output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the metrics JSON here."),
             data_range: Optional[float] = typer.Option(None, "--data-range",
                                                        help="Data range R of PSNR/SSIM (default: reference "
                                                             "max - min; report.json scores CT over 2000)."),
             overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output file.")):
    """PSNR and SSIM per plane (axial, coronal, sagittal) and over the volume, as JSON."""
    from .tasks import evaluate as run
    typer.echo(json.dumps(run(reference, input, output, data_range, overwrite=overwrite), indent=2))


@app.command()
def batch(input_root: Path = typer.Argument(..., help="Folder tree holding DICOM series."),
          output_root: Path = typer.Argument(..., help="Where the tree is mirrored, with manifest.csv."),
          config: str = CONFIG, set: Optional[List[str]] = SET,
          dry_run: bool = typer.Option(False, "--dry-run", help="List the plan and stop."),
          overwrite: bool = typer.Option(False, "--overwrite", help="Redo finished series too."),
          resample: bool = RESAMPLE,
          progress: bool = typer.Option(True, "--progress/--quiet", help="Progress bars over the series and "
                                                                        "within each."),
          engine: str = typer.Option("local", "--engine", help="local (one series after the other here) or ray "
                                                                 "(a pool of Ray actors, one series each at a time; "
                                                                 "README: distributed batch)."),
          address: Optional[str] = typer.Option(None, "--address", help="Ray cluster: auto or HOST:PORT (default: "
                                                                         "a new Ray instance on this machine)."),
          gpus_per_series: Optional[float] = typer.Option(None, "--gpus-per-series", help="Ray: GPUs per series "
                                                          "(default 1 where the cluster has GPUs, else 0)."),
          cpus_per_series: Optional[float] = typer.Option(None, "--cpus-per-series", help="Ray: CPUs per series "
                                                          "(default 1)."),
          retries: int = typer.Option(2, "--retries", help="Ray: reruns of a series whose worker died.")):
    """Reconstruct every DICOM series under INPUT_ROOT; exit code 1 if any failed."""
    from .batching import batch as run
    from .engines import make_engine
    eng = make_engine(engine, address, gpus_per_series, cpus_per_series, retries)
    res = run(input_root, output_root, config, overrides=set or [], dry_run=dry_run, overwrite=overwrite,
              progress=progress, echo=say, resample=resample, engine=eng)
    if not dry_run:
        say(f"manifest: {res.manifest} ({res.summary()})")
    exit_if_series_failed(res)


def exit_if_series_failed(res) -> None:
    """Exit status 1, with one line, when any series of a batch failed or was left for a conflict (an output made
    from other files or with another config; the manifest says which)."""
    if res.failed or res.conflicts:
        what = " and ".join(t for t in (f"{res.failed} failed" if res.failed else "",
                                        f"{res.conflicts} left as they were (conflict: --overwrite redoes them, or remove their folders)"
                                        if res.conflicts else "") if t)
        say(f"error: of {len(res.rows)} series, {what}; see {res.manifest}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
