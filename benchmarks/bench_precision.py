"""bf16 against fp32 network arithmetic (``solver.precision``): speed and what the rounding does to the estimate.

For each bundled patch prior: the time of one whole-slice denoiser call at each size, fp32 and bf16 interleaved
(``--repeats`` rounds, the best of each, so the ratio comes from one run); and on a slice of a scan, noised at
each sigma, how far the bf16 estimate lies from the fp32 one, against the fp32 estimate's own error
(RMS(D_bf16 - D_fp32) / RMS(D_fp32 - x0)). Reconstruction quality is measured by ``bench_real.py --set
solver.precision=bf16`` (RESULTS.md, "Thirty-eighth session").

    python benchmarks/bench_precision.py --sizes 256 512 --threads 2 --json out/precision.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medrecon.device import bf16_native  # noqa: E402
from medrecon.priors import load_prior  # noqa: E402
from medrecon.priors.training_data import model_slices  # noqa: E402
from medrecon.io import read_volume  # noqa: E402
from pipelines import datasets  # noqa: E402
from pipelines.config import resolve_prior_path  # noqa: E402

SCANS = {"ct_patch": "ct_head", "mri_patch": "mr_brain1"}  # training scans: the error check needs no held-out data
MR_PERCENTILE = 99.5  # the bundled MR prior's training normalisation (its card: |v| / the 99.5th percentile)


def call_time(prior, x: torch.Tensor, precision: str) -> float:
    prior.precision = precision
    t0 = time.perf_counter()
    prior.denoise(x, 0.5)
    return time.perf_counter() - t0


def scan_slice(name: str, prior) -> torch.Tensor | None:
    """The middle slice of the scan in the prior's model units (as training maps it: ``model_slices``), or None
    where the scan is not fetched."""
    try:
        vol = read_volume(datasets.path(SCANS[name]))
    except Exception as e:  # noqa: BLE001 - a missing scan skips the error check, it does not stop the timing
        print(f"{name}: no scan for the error check ({e}); run `medrecon data fetch {SCANS[name]}`")
        return None
    slices = model_slices(vol, prior.intensity, MR_PERCENTILE if name.startswith("mri") else None)
    return slices[len(slices) // 2][None]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--priors", nargs="+", default=list(SCANS))
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.02, 0.1, 0.4, 1.2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cpu = torch.device("cpu")
    out = {"bf16_native": bf16_native(cpu), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "threads": a.threads, "priors": {}}
    print(f"CPU capability {out['cpu_capability']}, native bf16: {out['bf16_native']}, {a.threads} threads")
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for name in a.priors:
            prior = load_prior(resolve_prior_path(f"bundled:{name}", ROOT))
            rec = out["priors"][name] = {"seconds_per_slice": {}, "error_ratio": {}}
            for n in a.sizes:
                x = 0.3 * torch.randn(1, 1, n, n, generator=g)
                call_time(prior, x, "fp32")  # warm-up
                times = {"fp32": [], "bf16": []}
                for _ in range(a.repeats):
                    for p in times:
                        times[p].append(call_time(prior, x, p))
                fp32, bf16 = min(times["fp32"]), min(times["bf16"])
                rec["seconds_per_slice"][n] = {"fp32": fp32, "bf16": bf16, "speed-up": fp32 / bf16}
                print(f"{name} {n}^2: fp32 {fp32:.3f} s, bf16 {bf16:.3f} s per slice: {fp32 / bf16:.2f}x")
            x0 = scan_slice(name, prior)
            for s in a.sigmas if x0 is not None else []:
                x = x0 + s * torch.randn(x0.shape, generator=g)
                prior.precision = "fp32"
                d32 = prior.reseed().denoise(x, s)
                prior.precision = "bf16"
                d16 = prior.reseed().denoise(x, s)
                ratio = ((d16 - d32).norm() / (d32 - x0).norm()).item()
                rec["error_ratio"][s] = ratio
                print(f"{name} sigma {s}: RMS(D_bf16 - D_fp32) / RMS(D_fp32 - x0) = {ratio:.3f}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
