"""simulate / reconstruct / evaluate: the Python API behind the commands (config -> Problem -> files).

Units and the data term are explained in ``pipelines.problem``; simulation without the inverse crime in
``pipelines.simulation``.
"""
from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medrecon.device import reset_cuda_peak, resolve_device
from medrecon.errors import InputError
from medrecon.io import atomic_path, read_volume, write_dicom_series, write_nifti
from medrecon.io.common import file_sha256, voxels_sha256
from medrecon.io.deidentify import (RUN_RECORD_LEFT_OUT, check_deidentifiable, input_label, path_forms,
                                    pseudonym, recorded_source, scrubber)
from medrecon.metrics import per_axis_metrics
from medrecon.volume import Volume

from .config import Config, load_config
from .html_report import page_volumes, write_series_page
from .measurement import Measurement, is_measurement_file
from .outputs import (Timings, atomic_output, check_output_folder, peak_memory, preview_png, report, reset_rss_peak,
                      write_json)
from .problem import Problem, Solution, configured_prior, measured_geometry, simulate_on_its_grid
from .raw_mri import is_measured_kspace, mask_used

log = logging.getLogger("medrecon")


@dataclass
class RunResult:
    output: Path
    recon: Volume
    report: dict
    skipped_files: tuple[str, ...] = ()  # damaged input files read without ("path (why)")


def prepare_config(config, overrides=()) -> Config:
    """Load, override, validate and resolve a config (a name, a path, a dict or a Config)."""
    return load_config(config, overrides).resolved()


def path_argument(name: str, value) -> Path:
    """A path given to the file API, or an InputError naming the argument (an in-memory Volume belongs to
    ``Problem.build`` / ``compare_methods``, or is written first)."""
    if not isinstance(value, (str, os.PathLike)):
        raise InputError(f"{name}: give a path, not {type(value).__name__}"
                         + (" (write it first with medrecon.io.write_nifti, or reconstruct it in memory with "
                            "pipelines.problem.Problem.build or pipelines.compare.compare_methods)"
                            if isinstance(value, Volume) else ""))
    return Path(value)


def write_simulation(folder: Path, ref: Volume, meas: Measurement, source: str | None = None) -> None:
    """measurements.npz and reference.nii.gz; ``source``: how measurements.npz names the input (default: the name
    the simulation gave it; a de-identified run's ``input_label``)."""
    folder.mkdir(parents=True, exist_ok=True)
    if source is not None:
        meas = copy.copy(meas)
        meas.info = {**meas.info, "source": source}
    meas.save(folder / "measurements.npz")
    write_nifti(ref, folder / "reference.nii.gz")


def simulate(config, input, output, overrides=(), overwrite: bool = False, series: str | None = None,
             resample: bool = False) -> Path:
    """Simulate measurements of a ground-truth volume on its own grid (or the one the config names); writes
    OUTPUT/measurements.npz and reference.nii.gz."""
    cfg = load_config(config, overrides, check_files=False).resolved()  # the prior is not needed here
    input, output = path_argument("input", input), path_argument("output", output)
    source = read_volume(input, series=series, resample_nonuniform=resample)
    if cfg.outputs.deidentify:  # the voxels go into reference.nii.gz
        check_deidentifiable(source.meta.get("dicom"))
    # the input's own grid (or the config's): the prior is the reconstruction's business (check_grid)
    ref, meas, _ = simulate_on_its_grid(cfg, None, source, resample)
    with atomic_output(output, overwrite, protect=[input]) as tmp:
        write_simulation(Path(tmp), ref, meas, input_label(input) if cfg.outputs.deidentify else None)
    return Path(output)


def reconstruct(config, input, output, overrides=(), overwrite: bool = False, series: str | None = None,
                progress: bool = False, resample: bool = False, prior=None) -> RunResult:
    """Reconstruct a volume (simulated first, into OUTPUT/simulation/) or a measurements file.
    ``prior``: the config's prior, already loaded (a batch worker keeps it); None loads it when needed.

    Writes recon.nii.gz, dicom/ (DICOM source only), preview.png, report.json and, with samples > 1,
    std.nii.gz, all into a temporary folder renamed to OUTPUT at the end. The reconstruction grid is the
    input's own unless the config names one; ``resample`` allows resampling (a DICOM series with uneven slice
    gaps onto about its median spacing from its first slice to its last, the input onto the prior's grid or pixel-size range; ``Problem.build``), and
    report.json records the grid under ``grid``. The output's marker and report record the source series
    (see :func:`source_identity`) and the config's ``fingerprint``; paths are recorded by name only. With
    ``outputs.deidentify`` nothing identifying is recorded (``medrecon.io.deidentify``: the source series by its
    de-identified UID, the input by its ``input_label``, no date, no output name), and a source flagged with
    identifying pixels is refused before the work, whatever the output formats.
    """
    cfg = prepare_config(config, overrides)
    inp, out = path_argument("input", input), path_argument("output", output)
    if not inp.exists():
        raise InputError(f"input not found: {inp} (give a DICOM folder, a NIfTI file or a measurements file)")
    check_output_folder(out, overwrite, protect=[inp])  # say so before the work, not after it
    device = resolve_device(cfg.solver.device)
    reset_rss_peak()  # report.json's peaks are this series', not the process's (a batch worker runs many)
    if device.type == "cuda":
        reset_cuda_peak(device)
    t = Timings()
    with t("setup"):
        src = inp if is_measurement_file(inp) else read_volume(inp, series=series, resample_nonuniform=resample)
        if cfg.outputs.deidentify:  # its refusals (burned-in text, a key) before the work, whatever the formats:
            check_deidentifiable(src.meta.get("dicom") if isinstance(src, Volume) else None)  # all hold the voxels
        problem = Problem.build(cfg, src, series=series, resample=resample, prior=prior)
    if problem.config.solver != cfg.solver:
        cv = getattr(problem.config.solver, "cross_validate", None)
        log.info(f"{inp.name}: measured k-space: the solver's null settings take its defaults (steps "
                 f"{problem.config.solver.steps}" + ("; held-out lines decide between the warm start and the "
                                                    "diffusion" if cv is not None and cv.enabled else "")
                 + "; README: 'Defaults for measured k-space')")
    cfg = problem.config  # as run
    grid = problem.info.get("grid")
    if grid and grid["resampled"]:
        log.warning(f"{inp.name}: resampled to {grid['size']}x{grid['size']} pixels of {grid['pixel_mm']:.3g} mm "
                    f"(from {' x '.join(f'{v:.3g}' for v in grid['source_pixel_mm'])} mm): {grid['reason']}")
    deid = cfg.outputs.deidentify
    identity = {**source_identity(problem.source, deid), "config_sha256": cfg.fingerprint()}
    with atomic_output(out, overwrite, protect=[inp], marker=identity) as tmp:
        tmp = Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        if problem.reference is not None and problem.source is not None:
            write_simulation(tmp / "simulation", problem.reference, problem.measurement,
                             input_label(inp) if deid else None)
        with t("solve"):
            snap = snapshot_writer(tmp / "snapshots", problem) if cfg.outputs.snapshots_every else None
            sol = problem.solve(progress=progress, snapshot=snap, snapshot_every=cfg.outputs.snapshots_every)
        if (problem.info.get("two_scale") or {}).get("off"):
            log.info(f"{inp.name}: two-scale denoising off: {problem.info['two_scale']['off']}")
        with t("write"):
            recon = problem.to_volume(sol.x)
            std = None if sol.std is None else \
                problem.output_grid(sol.std.float().cpu().numpy() / problem.intensity.scale)
            files = write_results(cfg, tmp, recon, std, problem.source if _is_dicom(problem.source) else None,
                                  measured_mri=is_measured_kspace(problem.measurement),  # not a simulation's npz
                                  source_scale=problem.measurement.info.get("scale") if problem.source is not None
                                  and cfg.modality == "mri" else None)
            files += write_measured_extras(cfg, tmp, problem, sol)
            files += write_self_adapted(tmp, problem)
            # the input's warnings, and the measurements' against the config
            warned = list((problem.source.meta if problem.source is not None else {}).get("warnings", [])) \
                + problem.info.get("warnings", [])
            if warned:  # de-identified: the input's names derived once for them all
                said = scrubber(inp) if deid else (lambda w: named_only(w, inp))
                warned = [said(w) for w in warned]
            voxels = input_sha256(problem, inp)
            rep = report(run_config(problem), input=input_label(inp) if deid else inp.name,
                         input_files=input_files(problem.source),
                         input_sha256=pseudonym(voxels) if deid and voxels else voxels, output=out.name,
                         **identity, input_warnings=warned,
                         device=str(problem.device), precision=problem.info.get("precision"),
                         prior=problem.prior_summary(), intensity=vars(problem.intensity), seed=_seed(cfg),
                         sample_seeds=problem.info.get("sample_seeds"),
                         antithetic_samples=problem.info.get("antithetic_samples"),
                         network_evaluations_per_slice=int(sol.nfe_per_slice),
                         backward_passes_per_slice=int(sol.backward_per_slice),
                         measured_data_scale=problem.data_scale, grid=grid, z_tv=problem.info.get("z_tv"),
                         two_scale=problem.info.get("two_scale"),
                         cross_validation=problem.info.get("cross_validation"),
                         self_adapt=problem.info.get("self_adapt"), coil_maps=problem.info.get("coil_maps"),
                         retrospective_mask=problem.measurement.info.get("retrospective_mask"),
                         measured_mask=mask_used(problem.measurement),
                         vs_reference=scores_against_reference(problem, recon), files=files)
            for field in RUN_RECORD_LEFT_OUT if deid else ():
                rep.pop(field, None)
        rep["timings_s"], rep["peak_memory"] = t.as_dict(), peak_memory(problem.device)  # as the page shows them
        with t("page"):  # timed too (4 s of 266 on 20 x 256^2 were left out of the total)
            # the volumes in memory: read back, they took seconds and repeated the input's read warnings
            shown = page_volumes(problem.reference, problem.adapted[0] if problem.adapted else None, recon)
            try:
                write_series_page(tmp, shown, title=f"{'medrecon' if deid else out.name}: {cfg.task} {cfg.solver.name}",
                                  report=rep, std=std)
            except MemoryError:  # the result is kept: a page is a convenience
                log.warning("not enough memory left for the series page; the output is written without index.html")
        rep["timings_s"] = t.as_dict()
        write_json(tmp / "report.json", rep)
    return RunResult(out, recon, rep, tuple((problem.source.meta if problem.source is not None else {})
                                           .get("skipped_files", ())))


def named_only(text: str, inp: Path) -> str:
    """``text`` with the input's path (as given, absolute or resolved) written as its name: report.json records
    names, not the folders above them (which may name the patient)."""
    name = Path(os.path.abspath(inp)).name  # "." names the folder it is
    for form in sorted(path_forms(inp), key=len, reverse=True):
        text = text.replace(form, name)
    return text


def scores_against_reference(problem: Problem, recon: Volume) -> dict | None:
    """PSNR / SSIM per plane of the result against the reference written beside it (the simulation's ground
    truth, or a measured file's own reference; both on the result's grid), over the intensity window as the
    benchmarks score; None without one."""
    if problem.reference is None:
        return None
    where = "simulation/reference.nii.gz" if problem.source is not None else "reference.nii.gz"
    try:
        return {"reference": where, **problem.score(recon)}
    except MemoryError:  # after a finished solve: the result is kept, its scores left out
        log.warning("not enough memory left to score the result; it is written without scores (medrecon evaluate "
                    "scores it later)")
        return None


def input_sha256(problem: Problem, inp: Path) -> str | None:
    """SHA-256 of what was reconstructed: the input volume's voxels as read (a DICOM slice edited in place keeps its
    file names and sizes, which is all ``files_sha256`` sees), else the measurements file's bytes."""
    if problem.source is not None:
        return voxels_sha256(problem.source)
    return file_sha256(inp) if inp.is_file() else None


def source_identity(source: Volume | None, deidentify: bool = False) -> dict:
    """What identifies the input of an output: the DICOM SeriesInstanceUID and the SHA-256 of its file list
    (names and sizes); empty for other inputs. ``deidentify``: in the form a de-identified output records them
    (``medrecon.io.deidentify.recorded_source``)."""
    meta = source.meta if source is not None else {}
    return recorded_source(meta.get("series_uid"), meta.get("files_sha256"), deidentify)


def input_files(source: Volume | None) -> int | None:
    """How many files the input volume was read from (a DICOM series: its slices, and the damaged files passed over;
    another volume: 1); None for measurements."""
    if source is None:
        return None
    if not _is_dicom(source):
        return 1
    return len((source.meta.get("dicom") or {}).get("SourceImages") or [None]) + len(source.meta.get("skipped_files")
                                                                                      or [])


def _seed(cfg: Config) -> int:
    return int(getattr(cfg.solver, "seed", 0))


def _is_dicom(source: Volume | None) -> bool:
    """Whether the input was read from DICOM (a folder, or one file of any name): the output gets dicom/."""
    return source is not None and source.meta.get("format") == "dicom"


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


def run_config(problem: Problem) -> dict:
    """The config as run: resolved (for measured k-space with its defaults), with the slice size and (from an
    image) the pixel size of the grid actually used, so that the recorded config reruns on the same grid (a run
    moved into the prior's pixel range recorded only the size, and its rerun took the field of view / size)."""
    d = problem.config.to_dict()
    d[problem.config.modality]["image_size"] = int(problem.shape[-1])
    if problem.info.get("grid"):
        d[problem.config.modality]["pixel_size"] = problem.info["grid"]["pixel_mm"]
    if problem.source is None:  # a CT measurements file: its geometry is what ran, whatever the config said
        for key, value in measured_geometry(problem.measurement).items():
            *parents, last = key.split(".")
            node = d
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
    return d


def write_measured_extras(cfg: Config, folder: Path, problem: Problem, sol: Solution) -> list[str]:
    """Complex MRI: phase.nii.gz (outputs.phase) and the file's own reference magnitude (reference.nii.gz)."""
    files = []
    if cfg.outputs.phase and sol.x.is_complex():
        write_nifti(problem.phase_volume(sol.x), folder / "phase.nii.gz")
        files.append("phase.nii.gz")
    if problem.reference is not None and problem.source is None:
        write_nifti(problem.reference, folder / "reference.nii.gz")
        files.append("reference.nii.gz")
    return files


def write_self_adapted(folder: Path, problem: Problem) -> list[str]:
    """After a self-adapted solve (solver.self_adapt): the first pass (self_adapt/first_pass.nii.gz) and the adapted
    prior (self_adapt/prior/, a folder prior.path accepts, e.g. for the scan's neighbours)."""
    if problem.adapted is None:
        return []
    from medrecon.priors.unet import save_unet_prior

    first, prior = problem.adapted
    (folder / "self_adapt").mkdir()
    write_nifti(first, folder / "self_adapt" / "first_pass.nii.gz")
    save_unet_prior(folder / "self_adapt" / "prior", prior.network, prior.card)
    return ["self_adapt/first_pass.nii.gz", "self_adapt/prior/"]


def write_results(cfg: Config, folder: Path, recon: Volume, std: Volume | None, dicom_src: Volume | None,
                  measured_mri: bool = False, source_scale: float | None = None) -> list[str]:
    """recon.nii.gz, std.nii.gz (``std``: the samples' standard deviation, physical units), dicom/ (a DICOM
    source's derived series; measured MRI: a new MR series, ``MEASURED_MR_DICOM_SCALE`` x the normalised
    magnitude) and preview.png. ``source_scale``: what a simulation
    divided an MR source by (``simulation.magnitude_scale``): the derived series is in the source's own units,
    whole numbers stored as they are (RescaleSlope 1), which MR viewers that ignore rescaling show as the source."""
    files = ["recon.nii.gz"]
    write_nifti(recon, folder / "recon.nii.gz")
    if std is not None:
        write_nifti(std, folder / "std.nii.gz")
        files.append("std.nii.gz")
    if cfg.outputs.dicom and (dicom_src is not None or measured_mri):
        if measured_mri:  # no source series to take units from
            in_source_units = recon.with_data(np.round(recon.data * MEASURED_MR_DICOM_SCALE))
        elif source_scale:  # the writer keeps an MR source's values on its stored scale (dicom_write.mr_stored_scale)
            in_source_units = recon.with_data(recon.data * np.float32(source_scale))
        else:
            in_source_units = recon
        write_dicom_series(in_source_units, folder / "dicom", series_description=f"medrecon {cfg.task} {cfg.solver.name}",
                           source_meta=dicom_src.meta.get("dicom") if dicom_src is not None else {},
                           modality=None if dicom_src is not None else "MR", deidentify=cfg.outputs.deidentify)
        files.append("dicom/")
    if cfg.outputs.preview:
        preview_png(recon, folder / "preview.png", cfg.outputs.window)
        files.append("preview.png")
    return files


#: the MR series written from measured k-space holds the normalised magnitude times this, as whole numbers with
#: RescaleSlope 1 (0..1 through a slope of about 1e-5 showed as +-32000 in viewers that ignore MR rescaling)
MEASURED_MR_DICOM_SCALE = 1000.0


def _same_grid(a: Volume, b: Volume) -> bool:
    """One voxel grid: shape, spacing, origin and axes alike (within what float32 headers round)."""
    return a.shape == b.shape and not _grid_difference(a, b)


def _grid_difference(a: Volume, b: Volume) -> str:
    """What differs between two grids ("" when nothing does, within what float32 headers round): spacing, origin,
    axes (the angle between the two directions where the axis letters agree)."""
    def show(v, digits):
        return "(" + ", ".join(f"{float(x):.{digits}g}" for x in v) + ")"
    said = []
    if not np.allclose(a.spacing, b.spacing, rtol=1e-4):
        said.append(f"spacing {show(a.spacing, 4)} vs {show(b.spacing, 4)} mm")
    if not np.allclose(a.origin, b.origin, atol=0.01):
        said.append(f"origin {show(a.origin, 5)} vs {show(b.origin, 5)}")
    if not np.allclose(a.direction, b.direction, atol=1e-4):
        cosines = np.clip(np.sum(a.direction * b.direction, axis=0), -1.0, 1.0)  # per voxel axis
        said.append(f"axes {a.orientation} vs {b.orientation}" if a.orientation != b.orientation else
                    f"axes rotated by up to {np.degrees(np.arccos(cosines.min())):.3g} degrees")
    return ", ".join(said)


def _scale_mismatch(ref: np.ndarray, rec: np.ndarray) -> str | None:
    """Why two volumes look like they hold other units (their typical magnitudes 10x apart: an MR run's dicom/ in
    the source's units against its normalised reference), or None."""
    a, b = (float(np.percentile(np.abs(v), 99)) for v in (ref, rec))
    if min(a, b) > 0 and max(a, b) > 10 * min(a, b):
        return (f"reference and input are on other scales (99th percentile of |value| {a:.4g} vs {b:.4g}): other "
                "units? An MR run's dicom/ holds the source's units; score its recon.nii.gz against its reference")
    return None


def evaluate(reference, input, output=None, data_range: float | None = None, overwrite: bool = False) -> dict:
    """PSNR/SSIM per plane of ``input`` against ``reference`` (volumes or paths); optionally written as JSON
    (atomically; an existing file is replaced only with ``overwrite``)."""
    ref, rec = (v if isinstance(v, Volume) else read_volume(path_argument(name, v))
                for name, v in (("reference", reference), ("input", input)))
    if data_range is not None:
        try:
            data_range = float(data_range)
        except (TypeError, ValueError):
            raise InputError(f"data_range: give a number (the intensity range the PSNR is taken over), not "
                             f"{data_range!r}") from None
    reordered = None
    if not _same_grid(ref, rec):
        in_lps = ref.nearest_lps(), rec.nearest_lps()
        if _same_grid(*in_lps):  # one voxel grid, stored in two axis orders
            ref, rec = in_lps
            reordered = ("reference and input are stored in different axis orders (e.g. a RAS copy): compared with "
                         "both in LPS order, axial = slices along the patient's head-foot axis")
    if ref.shape != rec.shape:
        raise InputError(f"reference shape {ref.shape} and input shape {rec.shape} differ (evaluate needs the "
                         f"same grid: compare against OUTPUT/simulation/reference.nii.gz)")
    if reordered is None and (difference := _grid_difference(ref, rec)):  # (re-ordered: one grid already)
        raise InputError("reference and input have the same shape but lie on different grids "
                         f"({difference}): compare against OUTPUT/simulation/reference.nii.gz, "
                         "or resample one onto the other first")
    try:
        m = per_axis_metrics(ref.data, rec.data, data_range)
    except ValueError as e:
        raise InputError(str(e)) from None
    if reordered:
        m.setdefault("notes", []).append(reordered)
    scale = _scale_mismatch(ref.data, rec.data)
    if scale:
        log.warning(scale)
        m.setdefault("notes", []).append(scale)
    if output is not None:
        with atomic_path(path_argument("output", output), overwrite, protect=[v for v in (reference, input) if not isinstance(v, Volume)]) as tmp:
            write_json(tmp, m)
    return m


__all__ = ["Measurement", "RunResult", "evaluate", "prepare_config", "reconstruct", "simulate"]
