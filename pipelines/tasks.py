"""simulate / reconstruct / evaluate: the Python API behind the commands (config -> Problem -> files).

Units and the data term are explained in ``pipelines.problem``; simulation without the inverse crime in
``pipelines.simulate``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from medrecon.errors import InputError
from medrecon.io import read_volume, write_dicom_series, write_nifti
from medrecon.metrics import per_axis_metrics
from medrecon.priors import IntensityMap
from medrecon.volume import Volume

from .config import Config, load_config
from .measurement import Measurement
from .outputs import Timings, atomic_output, peak_memory, preview_png, report, write_json
from .problem import Problem, Solution, configured_prior, grid_size
from .simulate import simulate_volume


@dataclass
class RunResult:
    output: Path
    recon: Volume
    report: dict


def prepare_config(config, overrides=()) -> Config:
    """Load, override, validate and resolve a config (a name, a path, a dict or a Config)."""
    return load_config(config, list(overrides)).resolved()


def write_simulation(folder: Path, ref: Volume, meas: Measurement) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    meas.save(folder / "measurements.npz")
    write_nifti(ref, folder / "reference.nii.gz")


def simulate(config, input, output, overrides=(), overwrite: bool = False, series: str | None = None) -> Path:
    """Simulate measurements of a ground-truth volume; writes OUTPUT/measurements.npz and reference.nii.gz."""
    cfg = load_config(config, list(overrides), check_files=False)
    cfg = prepare_config(config, overrides) if cfg.image_size is None else cfg.resolved()  # the prior sets the size
    prior = configured_prior(cfg, "cpu") if cfg.image_size is None else None
    ref, meas = simulate_volume(cfg, read_volume(input, series=series), grid_size(cfg, prior))
    with atomic_output(output, overwrite, protect=[input]) as tmp:
        write_simulation(Path(tmp), ref, meas)
    return Path(output)


def reconstruct(config, input, output, overrides=(), overwrite: bool = False, series: str | None = None,
                progress: bool = False, prior=None) -> RunResult:
    """Reconstruct a volume (simulated first, into OUTPUT/simulation/) or a measurements file.
    ``prior``: the config's prior, already loaded (a batch worker keeps it); None loads it when needed.

    Writes recon.nii.gz, dicom/ (DICOM source only), preview.png, report.json and, with samples > 1,
    std.nii.gz, all into a temporary folder renamed to OUTPUT at the end.
    """
    cfg = prepare_config(config, overrides)
    inp, out = Path(input), Path(output)
    if not inp.exists():
        raise InputError(f"input not found: {inp} (give a DICOM folder, a NIfTI file or a measurements file)")
    if out.exists() and not overwrite:
        raise InputError(f"output exists: {out} (use --overwrite to replace it)")
    t = Timings()
    with t("setup"):
        problem = Problem.build(cfg, inp, series=series, prior=prior)
    with atomic_output(out, overwrite, protect=[inp]) as tmp:
        tmp = Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        if problem.reference is not None:
            write_simulation(tmp / "simulation", problem.reference, problem.measurement)
        with t("solve"):
            snap = snapshot_writer(tmp / "snapshots", problem) if cfg.outputs.snapshots_every else None
            sol = problem.solve(progress=progress, snapshot=snap, snapshot_every=cfg.outputs.snapshots_every)
        with t("write"):
            recon = problem.to_volume(sol.x)
            files = write_results(cfg, tmp, recon, sol, problem.intensity,
                                  problem.source if _source_is_dicom(inp) else None)
            rep = report(run_config(cfg, problem), input=str(inp), output=str(out), device=str(problem.device),
                         prior=problem.prior_summary(), intensity=vars(problem.intensity), seed=_seed(cfg),
                         network_evaluations_per_slice=int(sol.nfe_per_slice),
                         backward_passes_per_slice=int(sol.backward_per_slice),
                         measured_data_scale=problem.data_scale, files=files)
        rep["timings_s"] = t.as_dict()
        rep["peak_memory"] = peak_memory()
        write_json(tmp / "report.json", rep)
    return RunResult(out, recon, rep)


def _seed(cfg: Config) -> int:
    return int(getattr(cfg.solver, "seed", 0))


def _source_is_dicom(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() == ".dcm"


def snapshot_writer(folder: Path, problem: Problem):
    """Callback for the diffusion solvers: the current estimate as snapshots/step_NNNNN.nii.gz (physical units);
    posterior samples after the first as sampleK_step_NNNNN.nii.gz."""
    state = {"sample": 0, "last": 0}

    def snap(step: int, est: torch.Tensor) -> None:
        if step <= state["last"]:
            state["sample"] += 1
        state["last"] = step
        prefix = f"sample{state['sample']}_" if state["sample"] else ""
        folder.mkdir(exist_ok=True)
        write_nifti(problem.to_volume(est), folder / f"{prefix}step_{step:05d}.nii.gz")
    return snap


def run_config(cfg: Config, problem: Problem) -> dict:
    """The config as run: resolved, with the slice size of the grid actually used."""
    d = cfg.to_dict()
    d[cfg.modality]["image_size"] = int(problem.shape[-1])
    return d


def write_results(cfg: Config, folder: Path, recon: Volume, sol: Solution, imap: IntensityMap,
                  dicom_src: Volume | None) -> list[str]:
    files = ["recon.nii.gz"]
    write_nifti(recon, folder / "recon.nii.gz")
    if sol.std is not None:
        write_nifti(recon.with_data(sol.std.float().cpu().numpy() / imap.scale), folder / "std.nii.gz")
        files.append("std.nii.gz")
    if cfg.outputs.dicom and dicom_src is not None:
        write_dicom_series(recon, folder / "dicom", series_description=f"medrecon {cfg.task} {cfg.solver.name}",
                           source_meta=dicom_src.meta.get("dicom"))
        files.append("dicom/")
    if cfg.outputs.preview:
        preview_png(recon, folder / "preview.png", cfg.outputs.window)
        files.append("preview.png")
    return files


def evaluate(reference, input, output=None, data_range: float | None = None) -> dict:
    """PSNR/SSIM per plane of ``input`` against ``reference`` (volumes or paths); optionally written as JSON."""
    ref, rec = (v if isinstance(v, Volume) else read_volume(v) for v in (reference, input))
    if ref.shape != rec.shape:
        raise InputError(f"reference shape {ref.shape} and input shape {rec.shape} differ (evaluate needs the "
                         f"same grid: compare against OUTPUT/simulation/reference.nii.gz)")
    try:
        m = per_axis_metrics(ref.data, rec.data, data_range)
    except ValueError as e:
        raise InputError(str(e)) from None
    if output is not None:
        write_json(Path(output), m)
    return m


__all__ = ["Measurement", "RunResult", "evaluate", "prepare_config", "reconstruct", "simulate"]
