"""Measured multi-coil brain k-space, undersampled retrospectively: LS-SENSE, ADMM-TV, BART TV and diffusion.

Data (``--data``, ``pipelines.datasets``):

- ``vfa``: ``mr_kspace_vfa`` (pyqmri 1.3.0 test/VFA_cart_smalltest.h5): one 224 x 224 slice, 13 coils, 10 flip
  angles, fully sampled Cartesian k-space. Frames ``--frames`` (flip angles) form the (Z, H, W) stack, so TV
  along z runs along the flip angle. Weights (ADMM-TV lam, BART lam, LS-SENSE iterations, the warm start's
  noise level) are tuned on frame ``--tune`` and reported on frame ``--report`` (different flip angles).
- ``t2``: ``mr_kspace_t2`` (mirtorch 0.1.2 examples/AXT2_210_6001736_layer11.npz, a fastMRI brain slice): one
  axial T2 slice, 16 coils, fully sampled, 2x readout oversampling removed (384 x 396). Another subject,
  scanner and contrast: a hold-out for weights tuned on ``vfa``, given as single values (``--lam-tv`` etc.);
  an extra ADMM-TV row picks its weight on this slice itself (the classical method's best case).
- ``hip``: ``mr_complex_hip`` (mri-fatwater 1.2.2 mri_fatwater/data/17.npy): coil-combined complex hip images with
  their measured phase (fat and water out of phase at some echoes), 4 slices of 101 x 101 at 1.5 mm, 5 mm apart;
  echo ``--echo``. Single-coil k-space is their FFT, the coil map is 1 (there are no coils to estimate). Another
  anatomy and contrast: a hold-out like ``t2``, scored on all four slices (PSNR of the stack, mean slice SSIM).

Each frame gets its own 1D mask (the project's ``make_mask``, seed = frame) with a fully sampled centre.
Reference: the fully sampled k-space combined with the file's coil maps (its magnitude). Coil maps for every
method: ESPIRiT from each frame's undersampled calibration region (mri.coil_maps=espirit's). PSNR/SSIM of the magnitude, data
range = the reference frame's maximum.

    python benchmarks/bench_mri_raw.py --out out/bench_mri_raw                    # LS, ADMM-TV, BART
    python benchmarks/bench_mri_raw.py --prior PATH --out out/bench_mri_raw        # + diffusion rows
    python benchmarks/bench_mri_raw.py --data t2 --prior PATH --lam-tv 0.003 --lam-bart 0.01 --ls-iters 10 \
        --start-sigmas 0.03 --out out/bench_mri_raw_t2                           # the held-out subject
    python benchmarks/bench_mri_raw.py --data hip --prior PATH --lam-tv 0.003 --ls-iters 10 --fast-steps 0 \
        --accelerations 2 4 8 --out out/bench_mri_raw_hip                       # the third subject (one coil)

Writes OUT/mri_raw.md and OUT/mri_raw.json. ``bart`` on PATH (Debian package; ``sh benchmarks/get_bart.sh``
unpacks it without root) adds the BART rows.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medrecon.io import read_cfl, write_cfl  # noqa: E402
from medrecon.metrics import psnr, ssim  # noqa: E402
from medrecon.priors import IntensityMap  # noqa: E402
from medrecon.volume import Volume  # noqa: E402
from operators.mri import calibration_region, espirit_maps, fftc, ifftc, make_mask  # noqa: E402
from pipelines import datasets  # noqa: E402
from pipelines.measurement import Measurement  # noqa: E402
from pipelines.problem import Problem  # noqa: E402
from pipelines.raw_mri import MEASURED  # noqa: E402
from pipelines.compare import write_tables  # noqa: E402
from pipelines.tasks import prepare_config  # noqa: E402

DATA = {"vfa": "mr_kspace_vfa", "t2": "mr_kspace_t2", "hip": "mr_complex_hip"}
LAM_TV = [3e-4, 1e-3, 3e-3]
# the held-out data's own best ADMM-TV: a wider grid (the hip chose 3e-3, the top of LAM_TV)
LAM_TV_HELD_OUT = LAM_TV + [1e-2, 3e-2]
LAM_BART = [3e-3, 1e-2, 3e-2]
LS_ITERS = [5, 10, 20]
START_SIGMAS = [0.03, 0.05, 0.1]  # model units of the prior (the image's 99.9th percentile is 1); --start-sigmas
ALL = slice(None)  # score every frame (hip)
HIP_SPACING = (1.5, 1.5, 5.0)  # x, y, z mm (mri-fatwater's dataParams.yml)


def read_vfa(frames):
    """The file's coil images (Z, coils, H, W) of ``frames`` and their coil-combined complex image (Z, H, W), combined
    with the file's own coil maps."""
    import h5py
    with h5py.File(datasets.path("mr_kspace_vfa"), "r") as f:
        k = (f["real_dat"][()] + 1j * f["imag_dat"][()])[frames, :, 0].astype(np.complex64)
        maps = f["Coils"][()][:, 0].astype(np.complex64)
    coil_img = np.fft.ifft2(k, norm="ortho")  # the file's k-space has DC at [0, 0]
    return coil_img, (coil_img * maps.conj()[None]).sum(1)


def read_t2():
    """The fastMRI T2 slice's coil images (1, coils, 384, 396), readout oversampling cropped, and their complex
    image combined with the file's coil maps (1, 384, 396)."""
    z = np.load(datasets.path("mr_kspace_t2"))
    k, maps = ((z[f"{a}_r"].astype(np.float32) + 1j * z[f"{a}_i"].astype(np.float32)) / 32767 for a in "ks")
    rows = slice(k.shape[1] // 4, 3 * k.shape[1] // 4)  # the 2x oversampled readout's central half
    coil_img = ifftc(torch.from_numpy(k.astype(np.complex64)), 2).numpy()[:, rows]  # DC at the centre
    return coil_img[None], (coil_img * maps[:, rows].conj()).sum(0)[None].astype(np.complex64)


def read_hip(echo):
    """The hip's complex images of one echo as a single coil (4, 1, 101, 101) and as the image (4, 101, 101)."""
    img = np.moveaxis(np.load(datasets.path("mr_complex_hip"))[echo], -1, 0).astype(np.complex64)
    return img[:, None], img


def load(data, frames, echo=0):
    """Centred k-space (Z, coils, H, W), as the operators expect, and the reference magnitude (Z, H, W)."""
    coil_img, combined = {"vfa": lambda: read_vfa(frames), "t2": read_t2, "hip": lambda: read_hip(echo)}[data]()
    kc = fftc(torch.from_numpy(coil_img), 2).numpy().astype(np.complex64)
    return kc, np.abs(combined).astype(np.float32)


def measurement(kc, ref, acc, kind, maps, data="vfa"):
    z, _, h, w = kc.shape
    mask = np.stack([make_mask(kind, (h, w), acc, 0.08, seed=s) for s in range(z)]).astype(np.float32)  # (Z,1,W)
    grid = Volume(np.zeros((z, h, w), np.float32), spacing=HIP_SPACING if data == "hip" else (1.0, 1.0, 1.0))
    return Measurement("mri", kc * mask[:, None], grid, None, mask, maps,
                       {"source": datasets.scan(DATA[data]).requirement, "layout": "2d", "units": MEASURED},
                       reference=ref)


def phase_split_maps(meas, maps):
    """Maps times the phase of each frame's low-resolution (calibration) image: the image is then ~ real."""
    k = torch.from_numpy(meas.data)
    w = k.shape[-1]
    low = torch.zeros_like(k)
    c0 = w // 2 - int(round(0.08 * w)) // 2
    low[..., c0:c0 + int(round(0.08 * w))] = k[..., c0:c0 + int(round(0.08 * w))]
    img = (ifftc(low, 2) * torch.from_numpy(maps).conj()).sum(1, keepdim=True)
    return (torch.from_numpy(maps) * torch.exp(1j * torch.angle(img))).numpy().astype(np.complex64)


def run(meas, config, overrides, prior=None, first_pass: dict | None = None):
    """(magnitude, reference, seconds) of one configured run; with solver.self_adapt, ``first_pass`` (a dict) gets
    the magnitude of the run's first pass under "magnitude"."""
    cfg = prepare_config(config, ["mri.coil_maps=given", *overrides])
    p = Problem.build(cfg, meas, prior=prior, load_prior=prior is not None)
    t = time.time()
    sol = p.solve()
    cv = p.info.get("cross_validation")  # the default on measured k-space, or given with --set: what it tried, chose
    if cv and "skipped" in cv:
        print(f"  cross-validation skipped: {cv['skipped']}", flush=True)
    elif cv:
        tried = ", ".join(f"{c['start_sigma']:.3g} / {c['lam']:.3g}: {c['heldout_error']:.5f}" for c in cv["candidates"])
        print(f"  cross-validation ({cv['held_out']}): chose {cv['chosen']}; held-out error per start sigma / lam: "
              f"{tried}", flush=True)
    mag = p.to_volume(sol.x).data
    if first_pass is not None and p.adapted is not None:
        first_pass["magnitude"] = p.adapted[0].data
    return mag, p.reference.data if p.reference is not None else meas.reference / p.data_scale, time.time() - t


def score(mag, ref, frame):
    """PSNR and SSIM of one frame, or of the stack (``frame`` ALL): its PSNR and the mean of its slices' SSIM."""
    r = float(ref[frame].max())
    slices = range(len(ref)) if frame is ALL else [frame]
    return psnr(ref[frame], mag[frame], r), float(np.mean([ssim(ref[i], mag[i], r) for i in slices]))


def admm_tv_overrides(lam, steps=30, image="complex"):
    """The ADMM-TV rows' settings: 3D TV of weight ``lam`` (rho 10 lam), ``steps`` iterations of 3 CG steps."""
    return ["solver.name=admm_tv", "solver.tv=3d", f"solver.steps={steps}", "solver.n_cg=3", "solver.nonneg=false",
            f"solver.admm.lam={lam}", f"solver.admm.rho={10 * lam}", f"mri.image={image}"]


def untuned(label, result, tune, report, rows):
    """One row for a run with nothing tuned: ``result`` is ``run``'s (magnitude, reference, seconds); the JSON also
    keeps frame ``tune``'s PSNR (``psnr_tune``), on which a setting given with --set may be chosen."""
    mag, ref, sec = result
    p, s = score(mag, ref, report)
    rows.append({"method": label, "setting": "", "psnr": p, "ssim": s, "seconds": sec,
                 "psnr_tune": score(mag, ref, tune)[0]})


def tuned(label, grid, make, tune, report, rows):
    """Run ``make(value)`` over the grid, keep the value with the best PSNR on frame ``tune``."""
    best = None
    for v in grid:
        mag, ref, sec = make(v)
        p_t = score(mag, ref, tune)[0]
        print(f"  {label} {v}: tune PSNR {p_t:.2f}", flush=True)
        if best is None or p_t > best[0]:
            best = (p_t, v, mag, ref, sec)
    _, v, mag, ref, sec = best
    p, s = score(mag, ref, report)
    rows.append({"method": label, "setting": v, "psnr": p, "ssim": s, "seconds": sec})
    return v


def bart_pics(k_frame, maps_frame, lam, iters=100):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        write_cfl(d / "k", np.moveaxis(k_frame, 0, -1)[:, :, None, :])
        write_cfl(d / "s", np.moveaxis(maps_frame, 0, -1)[:, :, None, :])
        subprocess.run(["bart", "pics", "-S", "-d0", "-i", str(iters), "-R", f"T:3:0:{lam}", str(d / "k"),
                        str(d / "s"), str(d / "x")], check=True, capture_output=True)
        return np.abs(read_cfl(d / "x")).reshape(k_frame.shape[-2:])


def bench(args):
    frames = list(range(args.frames[0], args.frames[1] + 1)) if args.data == "vfa" else [0]
    tune, report = ((frames.index(args.tune), frames.index(args.report)) if args.data == "vfa" else
                    {"t2": (0, 0), "hip": (ALL, ALL)}[args.data])
    kc, ref_full = load(args.data, frames, args.echo)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for acc in args.accelerations:
        meas = measurement(kc, ref_full, acc, args.mask, None, args.data)
        if args.data == "hip":  # one coil: its map is 1
            meas.coil_maps = np.ones_like(kc)
        else:
            # each acceleration's own data, calibrated on its fully sampled centre as mri.coil_maps=espirit does (a
            # cache written at the first acceleration, 24 lines wide, gave x8 the x4 maps and put unsampled lines
            # into the calibration; forty-first session)
            t = time.time()
            meas.coil_maps = espirit_maps(meas.data, region=calibration_region(meas.mask)).numpy()
            print(f"ESPIRiT maps (x{acc}): {time.time() - t:.1f} s", flush=True)
        rows = []
        cfg = "cs_mri_x4" if acc <= 4 else "cs_mri_x8"  # the config a user would give these data (both null solver
        # values: measured k-space's defaults either way; x4 data under cs_mri_x8 were warned as tuned for x8)
        print(f"x{acc}", flush=True)
        untuned("zero-filled (A^H y)", run(meas, cfg, ["solver.name=zero_filled", "mri.image=complex"]), tune, report,
                rows)
        for image in ("complex", "real") if acc in args.phase_split else ("complex",):
            # real: the magnitude/phase split, each frame's low-resolution phase folded into the maps
            m = meas if image == "complex" else replace(meas, coil_maps=phase_split_maps(meas, meas.coil_maps))
            tag = "" if image == "complex" else " [phase split, real image]"
            tuned(f"LS-SENSE (cgls){tag}", args.ls_iters, lambda n: run(m, cfg, [
                "solver.name=cgls", f"solver.steps={n}", f"mri.image={image}"]), tune, report, rows)
            def admm_tv(lam, m=m, image=image):
                return run(m, cfg, admm_tv_overrides(lam, args.admm_steps, image))
            tuned(f"ADMM-TV 3D{tag}", args.lam_tv, admm_tv, tune, report, rows)
            if args.data != "vfa" and image == "complex":  # the classical method's best case: lam chosen here
                tuned("ADMM-TV 3D, lam chosen on this slice", LAM_TV_HELD_OUT, admm_tv, report, report, rows)
        if shutil.which("bart"):
            def bart_all(lam):
                t = time.time()
                scored = range(len(ref_full)) if report is ALL else sorted({tune, report})
                full = np.zeros_like(ref_full)
                full[scored] = np.stack([bart_pics(meas.data[f], meas.coil_maps[f], lam) for f in scored])
                return full, ref_full, (time.time() - t) / len(scored) * len(ref_full)  # per stack, as every row
            tuned("BART pics -R T (2D TV, per frame)", args.lam_bart, bart_all, tune, report, rows)
        else:
            rows.append({"method": "BART pics -R T", "setting": "bart not installed", "psnr": None, "ssim": None})
        if args.prior:
            from pipelines.prior_cards import load_prior_for
            prior = load_prior_for(args.prior, device="cuda" if torch.cuda.is_available() else "cpu")
            # the ADMM-TV weight was tuned in the config's intensity units; the warm start runs in the prior's:
            # x_model = s x_physical scales the data term by s^2 and TV by s, so lam_model = lam * s_prior / s_config
            plain = IntensityMap(**prepare_config(cfg, []).intensity.model_dump())
            lam_tv = next(r["setting"] for r in rows if r["method"] == "ADMM-TV 3D") * prior.intensity.scale / plain.scale
            # warm start from the tuned 3D ADMM-TV (Come-Closer-Diffuse-Faster): the noise level it restarts at is
            # tuned on frame --tune like every other weight; z-TV: the registry's defaults
            for name, steps in (("fast", args.fast_steps), ("diffusion_mbir", args.mbir_steps)):
                if steps:
                    tuned(f"{name} + z-TV ({steps} steps, warm)", args.start_sigmas, lambda s0: run(meas, cfg, [
                        f"solver.name={name}", f"solver.steps={steps}", "solver.nonneg=false", f"prior.path={args.prior}",
                        "mri.image=complex", "solver.warm_start.method=admm_tv", f"solver.warm_start.lam={lam_tv}",
                        f"solver.warm_start.iters={args.admm_steps}", f"solver.warm_start.start_sigma={s0}"],
                        prior), tune, report, rows)
            # the config as a user runs it: every solver value null, so measured k-space's defaults
            # (registry.MEASURED_KSPACE), the registry's warm start and z-TV; nothing tuned
            label = "fast, the config's defaults" + (f" ({', '.join(args.overrides)})" if args.overrides else "")
            first = {}
            result = run(meas, cfg, [f"prior.path={args.prior}", *args.overrides], prior, first)
            if first:  # solver.self_adapt given with --set: its first pass is the plain default
                untuned("  its first pass (before self-adaptation)", (first["magnitude"], result[1], None), tune,
                        report, rows)  # (its time is inside the run's)
            untuned(label, result, tune, report, rows)
        else:
            rows.append({"method": "fast sampler + z-TV / DiffusionMBIR", "setting": "no prior for 224x224 MR "
                         "(bundled:mri is a 64x64 whole-image prior): give --prior", "psnr": None, "ssim": None})
        results[f"x{acc}"] = rows
    return results


def markdown(results, args) -> str:
    data = (f"Measured brain k-space (pyqmri VFA, 13 coils, 224x224), frames {args.frames[0]}-{args.frames[1]} as z, "
            f"{args.mask} masks with 8% centre, ESPIRiT maps; tuned on frame {args.tune}, reported on frame "
            f"{args.report}." if args.data == "vfa" else
            f"Measured brain k-space (mirtorch's fastMRI T2 slice, 16 coils, 384x396), {args.mask} mask with 8% "
            f"centre, ESPIRiT maps; settings as given (a single value: fixed; several: the best on this slice)."
            if args.data == "t2" else
            f"Measured complex hip images (mri-fatwater's data set 17, echo {args.echo}, 4 slices of 101x101), their "
            f"single-coil FFT, {args.mask} masks with 8% centre, coil map 1; settings as given (several: the best "
            f"on these slices); PSNR of the 4-slice stack, mean slice SSIM.")
    lines = [data, ""]
    for acc, rows in results.items():
        lines += [f"**{acc}**", "", "| method | tuned setting | PSNR (dB) | SSIM | time (s) |", "|---|---|---|---|---|"]
        for r in rows:
            if r["psnr"] is None:
                lines.append(f"| {r['method']} | {r['setting']} | – | – | – |")
            else:
                sec = "–" if r["seconds"] is None else f"{r['seconds']:.1f}"
                lines.append(f"| {r['method']} | {r['setting']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {sec} |")
        lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/bench_mri_raw")
    ap.add_argument("--data", choices=tuple(DATA), default="vfa", help="the measured data (module doc)")
    ap.add_argument("--echo", type=int, default=0, choices=(0, 1, 2), help="hip: the echo")
    ap.add_argument("--frames", type=int, nargs=2, default=(2, 4), help="first and last flip angle (inclusive)")
    ap.add_argument("--tune", type=int, default=2)
    ap.add_argument("--report", type=int, default=4)
    ap.add_argument("--accelerations", type=float, nargs="+", default=[4, 8])
    ap.add_argument("--mask", default="uniform1d")
    ap.add_argument("--admm-steps", type=int, default=30)
    ap.add_argument("--prior", default=None, help="an any-size (patch) MR prior directory")
    ap.add_argument("--fast-steps", type=int, default=20, help="the tuned fast-sampler rows' steps (0: none)")
    ap.add_argument("--mbir-steps", type=int, default=0, help="also DiffusionMBIR, warm, with this many steps")
    ap.add_argument("--start-sigmas", type=float, nargs="+", default=START_SIGMAS,
                    help="the warm start's noise levels tried on frame --tune (the default on measured k-space: 0.03)")
    ap.add_argument("--phase-split", type=float, nargs="*", default=[8],
                    help="accelerations that also run the magnitude/phase-split (real image) rows")
    ap.add_argument("--lam-tv", type=float, nargs="+", default=LAM_TV, help="ADMM-TV weights tried (one: fixed)")
    ap.add_argument("--lam-bart", type=float, nargs="+", default=LAM_BART, help="BART TV weights tried")
    ap.add_argument("--ls-iters", type=int, nargs="+", default=LS_ITERS, help="LS-SENSE iterations tried")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config overrides for the config's-defaults diffusion row (e.g. solver.seed=1)")
    args = ap.parse_args()
    if args.data == "vfa" and args.tune == args.report:
        ap.error("--tune and --report must be different frames")
    results = bench(args)
    md = markdown(results, args)
    write_tables(args.out, "mri_raw", [md], results)
    print(md)


if __name__ == "__main__":
    main()
