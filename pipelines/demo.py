"""`medrecon demo`: a held-out synthetic CT phantom, 8-view sparse-view CT with Poisson noise, reconstructed by
FBP, ADMM-TV and the diffusion solver with the bundled prior; NIfTI, a derived DICOM series, a side-by-side
preview and a metrics table."""
from __future__ import annotations

import re
from pathlib import Path

from medrecon.errors import InputError
from medrecon.io import write_dicom_series, write_nifti

from .compare import admm_tv_settings, compare_methods, markdown_table
from .config import resolve_prior_path
from .html_report import write_series_page
from .outputs import atomic_output, preview_grid, report, write_json
from .phantoms import HELD_OUT_SEEDS, ct_phantom
from .prior_cards import load_prior_for

DEMO_SEED = HELD_OUT_SEEDS[0]
DEMO_WINDOW = (-400.0, 600.0)  # HU: soft-tissue window (W 1000, L 100) for the preview
# ADMM-TV weight chosen on another held-out seed (see benchmarks/bench_quality.py --tune), not on this one.
DEMO_METHODS = {
    "FBP": {"name": "fbp"},
    "ADMM-TV (3D)": admm_tv_settings(0.1),
    "Diffusion + z-TV (fast)": {"name": "fast"},
}
DIFFUSION = "Diffusion + z-TV (fast)"


def run_demo(output: str | Path, prior: str = "bundled:ct", slices: int = 24, seed: int = DEMO_SEED,
             steps: int | None = None, overwrite: bool = False, progress: bool = True, echo=print) -> dict:
    """Run the demo into ``output``; returns {"metrics": {method: metrics}, "table": markdown}."""
    out = Path(output)
    if out.exists() and not overwrite:  # say so before the work, not after it
        raise InputError(f"output exists: {out} (use --overwrite to replace it)")
    prior_dir = resolve_prior_path(prior, Path.cwd())
    loaded = load_prior_for(prior_dir)
    size = loaded.image_size or 64
    # Twice the reconstruction resolution: the reference is resampled from it and the sinogram is projected
    # from it, so the reconstruction never sees its own discretisation (no inverse crime).
    source = ct_phantom((slices, 2 * size, 2 * size), seed=seed, slice_thickness_mm=6.0)
    methods = {k: dict(v) for k, v in DEMO_METHODS.items()}
    if steps:
        methods[DIFFUSION]["steps"] = steps
    echo(f"demo: held-out phantom seed {seed}, {slices} slices of {size}x{size}, 8 views, Poisson noise")
    ref, results = compare_methods("sparse_view_ct_8", source, methods,
                                   common=[f"prior.path={prior_dir}", f"ct.image_size={size}"],
                                   progress=progress, echo=echo, prior=loaded)
    table = markdown_table(results, f"8-view sparse-view CT, held-out phantom seed {seed}, "
                                    f"{slices}x{size}x{size}, PSNR/SSIM over 2000 HU")
    with atomic_output(out, overwrite) as tmp:
        tmp = Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        write_nifti(ref, tmp / "reference.nii.gz")
        for r in results:
            write_nifti(r.volume, tmp / f"{_slug(r.label)}.nii.gz")
        best = results[-1]
        write_dicom_series(best.volume, tmp / "dicom", series_description=f"medrecon demo {best.label}",
                           modality="CT")
        preview_grid([("reference", ref)] + [(r.label, r.volume) for r in results], tmp / "preview.png",
                     DEMO_WINDOW)
        write_json(tmp / "metrics.json", {r.label: r.row() for r in results})
        # report.json makes this a regular medrecon output folder, which --overwrite can replace.
        write_json(tmp / "report.json", report({"task": "sparse_view_ct_8", "methods": methods}, command="demo",
                                               phantom_seed=seed, slices=slices, output=str(out),
                                               prior={"name": loaded.name, "sha256": loaded.sha256},
                                               results={r.label: r.row() for r in results}))
        (tmp / "metrics.md").write_text(table)
        write_series_page(tmp, [("reference", ref)] + [(r.label, r.volume) for r in results], DEMO_WINDOW,
                          title=f"medrecon demo: 8-view sparse-view CT, phantom seed {seed}")
    echo("")
    echo(table)
    echo(f"wrote {out}/: reference.nii.gz, {', '.join(_slug(r.label) + '.nii.gz' for r in results)}, dicom/, "
         f"preview.png, metrics.json, metrics.md")
    return {"metrics": {r.label: r.metrics for r in results}, "table": table}


def _slug(label: str) -> str:
    """'Diffusion + z-TV (fast)' -> 'diffusion_z_tv_fast'."""
    return "_".join(re.findall(r"[a-z0-9]+", label.lower()))


__all__ = ["run_demo", "DEMO_METHODS", "DEMO_SEED"]
