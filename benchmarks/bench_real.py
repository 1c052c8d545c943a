"""Quality on real scans the priors never saw: FBP, tuned 3D ADMM-TV, 2D prior only, fast sampler + z-TV (warm-started;
cold with --cold; weights by cross-validation with --cv) and DiffusionMBIR (--mbir-steps), all on one grid per case.

Held out: the test scans of ``pipelines.datasets`` (CT: ct_abdomen_dicom, ct_lung2, the default; also ct_tumour1-4,
ct_abdomen_slice, ct_pelvis_slice, ct_chest_drr with --scans; MR: mr_brain2), never used for training. Every weight
that is tuned is tuned on *training* scans against their references, then frozen for the test scans: the ADMM-TV
lam of the baseline by its mean axial PSNR over TUNE_SCANS, the warm start's noise level on the first of them.
Measurements are simulated on a 2x finer grid with noise (no inverse crime).

    medrecon data fetch                                   # set-up: the scans (once)
    python benchmarks/bench_real.py                       # CT 8 and 4 views, both test scans
    python benchmarks/bench_real.py --cases ct8 --scans ct_abdomen_dicom --slices 6 --pixel 2.0
    python benchmarks/bench_real.py --cases ct8 --scans ct_small --slices 1 --pixel 0.8   # pydicom's CT_small
    python benchmarks/bench_real.py --cases ct8 --scans ct_lung1 --fov 100 --pixel 1.0     # a window inside the body
    python benchmarks/bench_real.py --cases ct4 --scans ct_val_head ct_val_skull_base ct_val_neck ct_val_chest \
        --slices 1 --pixel 0.977 --fov 160    # validation: unseen patients' slices, cut to 160 mm (choose settings here)

Writes OUT/real.md (the README table), OUT/real.json and OUT/<case>_<scan>.png (reference and every method).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medrecon.io import read_volume, write_nifti  # noqa: E402
from pipelines import datasets  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.compare import admm_tv_settings, compare_methods, markdown_table, write_tables  # noqa: E402
from pipelines.outputs import preview_grid  # noqa: E402
from pipelines.prior_cards import load_prior_for  # noqa: E402
from pipelines.registry import SELF_ADAPT_DEFAULT  # noqa: E402

CASES = {"ct8": ("sparse_view_ct_8", "ct"), "ct4": ("sparse_view_ct_4", "ct"), "ct2": ("sparse_view_ct_2", "ct"),
         "la90": ("limited_angle_ct_90", "ct"), "mri4": ("cs_mri_x4", "mri"), "mri8": ("cs_mri_x8", "mri")}
TEST_SCANS = {"ct": ["ct_abdomen_dicom", "ct_lung2"], "mri": ["mr_brain2"]}
TUNE_SCANS = {"ct": ["ct_chest_contrast", "ct_lung1", "ct_abdomen"],
              "mri": ["mr_head_t1w", "mr_brain1"]}
LAMBDA_GRID = {"ct": [0.3, 0.5, 1.0, 2.0, 5.0, 10.0], "mri": [0.0003, 0.001, 0.003, 0.006, 0.01, 0.03]}
START_GRID = {"ct": [0.4, 0.8, 1.2], "mri": [0.2, 0.4, 0.8]}
WINDOW = {"ct": (-400.0, 600.0), "mri": (0.0, 1.0)}


def volume_file(out: Path, stem: str, label: str) -> Path:
    """Where --save-volumes writes one method's (or the reference's) volume of a case: OUT/STEM_LABEL.nii.gz
    (STEM is CASE_SCAN), the label's punctuation as _; score_mean.py reads them back by this name."""
    return out / f"{stem}_{re.sub('[^0-9A-Za-z]+', '_', label).strip('_')}.nii.gz"


def case_prior(case: str, given: str | None = None) -> str:
    """The prior a case runs with: ``given`` (a script's prior option) if any, else its config's ``prior.path``."""
    return given or load_config(CASES[case][0]).prior.path


def load(name: str, slices: int, fov_mm: float | None = None):
    """The central slab of a registered scan (or pydicom's CT_small, or a volume file), cut to a central ``fov_mm``
    window."""
    if name == "ct_small":
        from pydicom.data import get_testdata_file

        vol = read_volume(get_testdata_file("CT_small.dcm"))
    elif Path(name).exists():
        vol = read_volume(name)
    else:
        vol = read_volume(datasets.path(name))
    vol = vol.central_slab(slices)
    return vol.central_window(fov_mm) if fov_mm else vol


def best(results, key=lambda r: r.metrics["psnr"]["axial"]):
    return max(results, key=key)


def tune(config, modality, common, slices, fast_steps, fov_mm=None, warm_start=True, prior=None) -> dict:
    """The baseline's lam (best mean axial PSNR over the training scans; ``lam_scores``: each lam's mean) and the
    warm start's noise level (on the first of them; None without ``warm_start``); never a test scan. ``prior``: the
    comparison's, so that lam is tuned in the units it is then used in (the prior's intensity map, not the
    config's, wherever a comparison holds a prior row)."""
    grid = {f"{lam}": admm_tv_settings(lam) for lam in LAMBDA_GRID[modality]}
    scores: dict[str, list[float]] = {}
    for scan in TUNE_SCANS[modality]:
        _, res = compare_methods(config, load(scan, slices, fov_mm), grid, common, prior=prior)
        for r in res:
            scores.setdefault(r.label, []).append(r.metrics["psnr"]["axial"])
    lam = float(max(scores, key=lambda k: sum(scores[k])))
    first, start_sigma = TUNE_SCANS[modality][0], None
    if warm_start:
        warm = {f"{s}": fast(fast_steps, lam, s, self_adapt=0) for s in START_GRID[modality]}
        _, res = compare_methods(config, load(first, slices, fov_mm), warm, common, prior=prior)
        start_sigma = float(best(res).label)
    return {"lam": lam, "lam_on": TUNE_SCANS[modality], "start_sigma": start_sigma, "scan": first,
            "lam_scores": {k: round(sum(v) / len(v), 3) for k, v in scores.items()},
            "grid": tuning_grid(common, slices, fov_mm)}


def tuning_grid(common, slices, fov_mm) -> dict:
    """What a tuning was done on besides the scans (the pixel size among the overrides, slices, field of view):
    recorded with it, and compared when ``--tuned`` reuses it."""
    pixel = next((c.split("=", 1)[1] for c in common if c.split("=", 1)[0].endswith(".pixel_size")), None)
    return {"pixel_size": pixel, "slices": slices, "fov_mm": fov_mm}


def fast(steps, lam, start_sigma=None, name="fast", self_adapt=None):
    """A fast-sampler section with the registry's defaults (eta, z-TV weight, self-adaptation unless
    ``self_adapt`` steps are given): warm-started from 3D ADMM-TV of weight ``lam`` at ``start_sigma``, or cold
    (``start_sigma`` None)."""
    warm = {"method": "none"} if start_sigma is None else \
        {"method": "admm_tv", "start_sigma": start_sigma, "lam": lam}
    return {"name": name, "steps": steps, "warm_start": warm,
            **({} if self_adapt is None else {"self_adapt": {"steps": self_adapt}})}


def cv_note(r) -> str:
    """What the cross-validated method held out, tried and chose (a line under the table)."""
    cv = r.cross_validation
    tried = ", ".join(f"{c['start_sigma']:.3g} / {c['lam']:.3g}: {c['heldout_error']:.5f}" for c in cv["candidates"])
    return (f"\n{r.label}: {cv['held_out']} held out; chose start sigma {cv['chosen']['start_sigma']:.3g}, z-TV lam "
            f"{cv['chosen']['lam']:.3g} (held-out error per start sigma / lam: {tried})\n")


def adapt_note(r) -> str:
    """A self-adapted method's first pass (the plain sampler) and its training (a line under the table)."""
    sa, p = r.self_adapt, r.self_adapt["first_pass_scores"]["psnr"]
    return (f"\n{r.label}: first pass PSNR axial / coronal / sagittal {p['axial']:.2f} / "
            + " / ".join("–" if p[k] is None else f"{p[k]:.2f}" for k in ("coronal", "sagittal"))
            + f"; {sa['steps']} steps in {sa['seconds']:.0f} s (final loss {sa['final_loss']})\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["ct8", "ct4"], choices=list(CASES))
    ap.add_argument("--scans", nargs="+", default=None, help="test scans (default: the held-out ones; also "
                                                               "the validation slices ct_val_* that choose settings, "
                                                               "ct_small, pydicom's CT_small.dcm, or a volume file)")
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--pixel", type=float, default=2.0, help="reconstruction pixel size in mm (inside the "
                                                             "prior's trained range)")
    ap.add_argument("--fov", type=float, default=None, help="cut every scan (the tuning scan too) to its central "
                                                               "FOV x FOV mm window (a field of view inside the body)")
    ap.add_argument("--fast-steps", type=int, default=20)
    ap.add_argument("--cold", action="store_true", help="also the cold-started fast sampler and 2D prior alone (2x "
                                                        "the steps): z-TV over a purely slice-wise prior, as the "
                                                        "DiffusionMBIR paper compares them")
    ap.add_argument("--no-slicewise", action="store_true", help="skip the warm 2D-prior-only row (half the time "
                                                               "when only the default is compared)")
    ap.add_argument("--cv", action="store_true", help="also the fast sampler with its noise level and z-TV weight "
                                                      "chosen per scan by cross-validation (solver.cross_validate)")
    ap.add_argument("--cv-start-sigma", type=float, nargs="+", default=None, metavar="F",
                    help="--cv's noise-level factors (0: the warm start itself, no diffusion; default the registry's)")
    ap.add_argument("--cv-lam", type=float, nargs="+", default=None, metavar="F",
                    help="--cv's z-TV weight factors (default the registry's)")
    ap.add_argument("--no-default", action="store_true", help="skip the default fast-sampler row (when only --cv "
                                                             "or another variant is compared with a recorded run)")
    ap.add_argument("--mbir-steps", type=int, default=0, help="also DiffusionMBIR with this many steps (0: off)")
    ap.add_argument("--self-adapt", type=int, default=None, metavar="STEPS", help="solver.self_adapt.steps of the "
                    "fast-sampler rows (default: the config's, 500 on MR images, 0 on CT; 0: off); a self-adapted "
                    "row's first pass is printed under the table")
    ap.add_argument("--baselines-only", action="store_true", help="only FBP / zero-filled and the tuned ADMM-TV (no "
                                                                  "prior runs, no warm-start tuning)")
    ap.add_argument("--ct-prior", default=None, help="the CT prior (default: each case's config's)")
    ap.add_argument("--mri-prior", default=None, help="the MR prior (default: each case's config's)")
    ap.add_argument("--tuned", type=Path, default=None, help="reuse the tuning of an earlier real.json (or a JSON "
                    "{case: {tuned: {lam, start_sigma, scan[, warm_lam]}}}; warm_lam: the warm start's ADMM-TV "
                    "weight when it differs from the baseline's lam)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value for every case (repeatable), e.g. noise.I0=1e7")
    ap.add_argument("--save-volumes", action="store_true", help="also write each method's reconstruction as NIfTI "
                    "and the reference (CASE_SCAN_LABEL.nii.gz under --out, punctuation as _), e.g. to fine-tune a prior on "
                    "a scan's own estimate or to score a combination of results")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench_real")
    a = ap.parse_args(argv)
    if not a.cv and (a.cv_start_sigma or a.cv_lam):
        ap.error("--cv-start-sigma and --cv-lam choose --cv's candidates: add --cv")
    if a.baselines_only and (a.cv or a.cold or a.mbir_steps or a.self_adapt is not None):
        ap.error("--baselines-only runs no prior: drop --cv, --cold, --mbir-steps and --self-adapt")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    a.out.mkdir(parents=True, exist_ok=True)
    earlier = json.loads(a.tuned.read_text()) if a.tuned else {}
    for case in a.cases:  # checked before any work: a --baselines-only run's file would run the "warm" rows cold
        given = earlier.get(case, {}).get("tuned")
        if given and given.get("start_sigma") is None and not a.baselines_only:
            ap.error(f"--tuned {a.tuned}: case {case} has no start_sigma (a --baselines-only run wrote it): add one, "
                     "or leave the case out of the file to tune it here")
    tables, rows = [], {}
    for case in a.cases:
        config, modality = CASES[case]
        prior = case_prior(case, a.ct_prior if modality == "ct" else a.mri_prior)
        common = [f"prior.path={prior}", f"{modality}.pixel_size={a.pixel}", *a.overrides]
        t0 = time.perf_counter()
        loaded = load_prior_for(prior)  # one prior for the tuning and every row: lam in one unit
        tuned = earlier.get(case, {}).get("tuned") or tune(config, modality, common, a.slices, a.fast_steps, a.fov,
                                                           warm_start=not a.baselines_only, prior=loaded)
        here = tuning_grid(common, a.slices, a.fov)
        if tuned.get("grid", here) != here:  # a file written before the grid was recorded is taken as it is
            print(f"[{case}] note: the reused tuning was done on {tuned['grid']}, this run is on {here}", flush=True)
        lam, s0 = tuned["lam"], tuned["start_sigma"]
        warm_lam = tuned.get("warm_lam", lam)  # the warm start's own ADMM-TV weight, when tuned apart
        # the 2D rows adapt as the fast rows do (the registry adapts only 'fast' by default): the pair then differs
        # by z-TV alone
        adapt = a.self_adapt if a.self_adapt is not None else SELF_ADAPT_DEFAULT.get("fast", {}).get(modality, 0)
        methods = {
            "FBP" if modality == "ct" else "zero-filled": {"name": "fbp" if modality == "ct" else "zero_filled"},
            f"ADMM-TV 3D (lam {lam:g})": admm_tv_settings(lam)}
        if not (a.baselines_only or a.no_slicewise):
            methods["2D prior only (warm, no z-TV)"] = fast(a.fast_steps, warm_lam, s0, name="slicewise_fast",
                                                            self_adapt=adapt)
        if not (a.baselines_only or a.no_default):
            # self-adapted (the config's default on MR images): its first pass under the table
            methods["fast + z-TV (warm)"] = fast(a.fast_steps, warm_lam, s0, self_adapt=adapt)
        if a.cv:
            cv = {"enabled": True, "start_sigma": a.cv_start_sigma, "lam": a.cv_lam}
            methods["fast + z-TV + CV (warm)"] = {**fast(a.fast_steps, warm_lam, s0, self_adapt=adapt),
                                                  "cross_validate": {k: v for k, v in cv.items() if v is not None}}
        if a.cold:
            methods["2D prior only (cold, no z-TV)"] = fast(2 * a.fast_steps, lam, name="slicewise_fast",
                                                            self_adapt=adapt)
            methods["fast + z-TV (cold)"] = fast(2 * a.fast_steps, lam, self_adapt=adapt)
        if a.mbir_steps:
            methods[f"DiffusionMBIR ({a.mbir_steps} steps, warm)"] = {  # its own start_sigma: registry.MBIR_WARM
                "name": "diffusion_mbir", "steps": a.mbir_steps, "warm_start": {"method": "admm_tv", "lam": warm_lam}}
        for scan in a.scans or TEST_SCANS[modality]:
            vol = load(scan, a.slices, a.fov)
            scan = Path(scan).name.split(".")[0] if Path(scan).exists() else scan  # a file: named by its stem
            ref, res = compare_methods(config, vol, methods, common, prior=loaded,
                                       echo=lambda m: print(f"[{case} {scan}] {m}", flush=True))
            preview_grid([("reference", ref)] + [(r.label, r.volume) for r in res], a.out / f"{case}_{scan}.png",
                         WINDOW[modality])
            if a.save_volumes:  # the reference too: scores of combined results are computed from these files
                for label, volume in [("reference", ref)] + [(r.label, r.volume) for r in res]:
                    write_nifti(volume, volume_file(a.out, f"{case}_{scan}", label))
            lam_on = tuned.get("lam_on", [tuned["scan"]])
            title = (f"**{case} on {scan}** ({config}; {ref.shape[0]} slices of {ref.shape[1]}x{ref.shape[2]} at "
                     f"{ref.spacing[0]:.2g} mm; lam {lam:g} tuned on {', '.join(lam_on)}"
                     + (f" (**{scan} among them: not held out from the baseline's tuning**)" if scan in lam_on else "")
                     + ("" if s0 is None else f", start sigma {s0:g} on {tuned['scan']}")
                     + f"; {time.perf_counter() - t0:.0f} s)")
            tables.append(markdown_table(res, title) + "".join(cv_note(r) for r in res if r.cross_validation)
                          + "".join(adapt_note(r) for r in res if r.self_adapt))
            rows.setdefault(case, {"tuned": tuned, "scans": {}})["scans"][scan] = [r.row() for r in res]
            write_tables(a.out, "real", tables, rows)
            print(tables[-1], flush=True)
    print(f"wrote {a.out / 'real.md'}")


if __name__ == "__main__":
    main()
