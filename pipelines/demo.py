"""`medrecon demo`: 8-view sparse-view CT with Poisson noise simulated from a real CT series the prior never saw
(TotalSegmentator's 20-slice abdomen DICOM, fetched by `medrecon data fetch`), reconstructed at a realistic pixel
size by FBP, tuned 3D ADMM-TV and the warm-started diffusion sampler with the bundled patch prior; NIfTI, a
derived DICOM series of the source, a side-by-side preview and a metrics table. ``source="phantom"`` runs the
same on a held-out synthetic phantom with the 64x64 whole-slice prior (no data needed)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from medrecon.errors import InputError
from medrecon.io import read_volume, write_dicom_series, write_nifti

from . import datasets
from .compare import admm_tv_settings, compare_methods, markdown_table
from .config import load_config, resolve_prior_path
from .html_report import write_series_page
from .outputs import atomic_output, check_output_folder, preview_grid, report, write_json
from .phantoms import HELD_OUT_SEEDS, ct_phantom
from .prior_cards import load_prior_for
from .registry import WARM_START_DEFAULTS

DEMO_SEED = HELD_OUT_SEEDS[0]
DEMO_SCAN = "ct_abdomen_dicom"
DEMO_CONFIG = "sparse_view_ct_8"
DEMO_WINDOW = (-400.0, 600.0)  # HU: soft-tissue window (W 1000, L 100) for the preview
DIFFUSION = "Diffusion + z-TV (fast)"
# ADMM-TV weights chosen on other data than the demo's (benchmarks/bench_real.py --tune on a training scan;
# bench_quality.py --tune on another phantom seed), never on the demo's own case.
SCAN_TV_LAM = WARM_START_DEFAULTS["ct"]["lam"]
#: the registry's noise level, tuned at 20 steps (the 8-view config's 0.4 is for its 50); eta, z-TV: the config's
DEMO_START_SIGMA = WARM_START_DEFAULTS["ct"]["start_sigma"]
#: bench_quality.py's tuning on phantom seed 1001 (0.05 / 0.1 / 0.2 / 0.3 / 0.5 / 1: 23.82 / 24.42 / 24.97 / 24.89 /
#: 24.71 / 24.30 dB); 0.1 until the fifteenth session, chosen when runs without a prior had model units [0, 1]
PHANTOM_TV_LAM = 0.2


@dataclass
class DemoCase:
    prior: str
    overrides: list  # config overrides of the reconstruction grid
    methods: dict = field(default_factory=dict)
    describe: str = ""


def demo_case(source: str, slices: int | None, seed: int):
    """(source volume, DemoCase) for ``source`` 'scan' (the held-out real series) or 'phantom'; ``slices`` None:
    the default (all of the scan, 24 phantom slices)."""
    if slices is not None and slices < 1:
        raise InputError(f"--slices {slices}: give at least one slice, or leave it out for the default")
    if source == "scan":
        if not datasets.is_fetched(DEMO_SCAN):
            raise InputError(f"the demo's CT series ({DEMO_SCAN}) is not set up: run `medrecon data fetch "
                             f"{DEMO_SCAN}` (or `make demo`, which does it), or pass --source phantom")
        vol = read_volume(datasets.path(DEMO_SCAN))
        vol = vol.central_slab(slices) if slices else vol
        case = DemoCase(load_config(DEMO_CONFIG).prior.path, ["ct.pixel_size=2.5"], {
            "FBP": {"name": "fbp"}, "ADMM-TV (3D)": admm_tv_settings(SCAN_TV_LAM),
            DIFFUSION: {"name": "fast", "steps": 20, "warm_start": {"start_sigma": DEMO_START_SIGMA}}},
            f"held-out real abdomen CT ({DEMO_SCAN}, {datasets.scan(DEMO_SCAN).requirement})")
        return vol, case
    if source == "phantom":
        # Twice the reconstruction resolution: the reference is resampled from it and the sinogram projected
        # from it, so the reconstruction never sees its own discretisation (no inverse crime).
        vol = ct_phantom((slices or 24, 128, 128), seed=seed, slice_thickness_mm=6.0)
        return vol, DemoCase("bundled:ct", ["ct.image_size=64"], {
            "FBP": {"name": "fbp"}, "ADMM-TV (3D)": admm_tv_settings(PHANTOM_TV_LAM), DIFFUSION: {"name": "fast"}},
            f"held-out synthetic phantom seed {seed}")
    raise InputError(f"--source {source!r}: expected scan or phantom")


def run_demo(output: str | Path, source: str = "scan", prior: str | None = None, slices: int | None = None,
             seed: int = DEMO_SEED, steps: int | None = None, overwrite: bool = False, progress: bool = True,
             echo=print) -> dict:
    """Run the demo into ``output``; returns {"metrics": {method: metrics}, "table": markdown}."""
    out = Path(output)
    check_output_folder(out, overwrite)  # say so before the work, not after it
    vol, case = demo_case(source, slices, seed)
    prior_dir = resolve_prior_path(prior or case.prior, Path.cwd())
    loaded = load_prior_for(prior_dir)
    methods = {k: dict(v) for k, v in case.methods.items()}
    if steps is not None:
        if steps < 1:
            raise InputError(f"--steps {steps}: the diffusion needs at least one step")
        methods[DIFFUSION]["steps"] = steps
    echo(f"demo: {case.describe}, {vol.shape[0]} slices, 8 views, Poisson noise")
    ref, results = compare_methods(DEMO_CONFIG, vol, methods,
                                   common=[f"prior.path={prior_dir}", *case.overrides],
                                   progress=progress, echo=echo, prior=loaded)
    table = markdown_table(results, f"8-view sparse-view CT, {case.describe}, {ref.shape[0]}x{ref.shape[1]}x"
                                    f"{ref.shape[2]} at {ref.spacing[0]:.3g} mm, PSNR/SSIM over 2000 HU")
    with atomic_output(out, overwrite) as tmp:
        tmp = Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        write_nifti(ref, tmp / "reference.nii.gz")
        for r in results:
            write_nifti(r.volume, tmp / f"{_slug(r.label)}.nii.gz")
        best = results[-1]
        write_dicom_series(best.volume, tmp / "dicom", series_description=f"medrecon demo {best.label}",
                           modality="CT", source_meta=vol.meta.get("dicom"))
        preview_grid([("reference", ref)] + [(r.label, r.volume) for r in results], tmp / "preview.png",
                     DEMO_WINDOW)
        write_json(tmp / "metrics.json", {r.label: r.row() for r in results})
        # report.json makes this a regular medrecon output folder, which --overwrite can replace.
        write_json(tmp / "report.json", report({"task": DEMO_CONFIG, "methods": methods,
                                                "overrides": case.overrides}, command="demo", source=source,
                                               case=case.describe, slices=int(ref.shape[0]), output=out.name,
                                               prior={"name": loaded.name, "sha256": loaded.sha256},
                                               results={r.label: r.row() for r in results}))
        (tmp / "metrics.md").write_text(table)
        write_series_page(tmp, [("reference", ref)] + [(r.label, r.volume) for r in results], DEMO_WINDOW,
                          title=f"medrecon demo: 8-view sparse-view CT of the {case.describe}")
    # echo prints one line each (the CLI's escapes control characters); the table's final newline: a blank line
    for line in ["", *table.split("\n")]:
        echo(line)
    echo(f"wrote {out}/: reference.nii.gz, {', '.join(_slug(r.label) + '.nii.gz' for r in results)}, dicom/, "
         f"preview.png, metrics.json, metrics.md, report.json, index.html")
    return {"metrics": {r.label: r.metrics for r in results}, "table": table}


def _slug(label: str) -> str:
    """'Diffusion + z-TV (fast)' -> 'diffusion_z_tv_fast'."""
    return "_".join(re.findall(r"[a-z0-9]+", label.lower()))


__all__ = ["run_demo", "demo_case", "DEMO_SCAN", "DEMO_SEED"]
