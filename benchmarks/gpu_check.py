"""GPU check: whether medrecon's CUDA paths work and how fast they are against the targets below.
Steps 1-4: 77 s on an H200 without torch.compile (--compile adds a row and minutes), random network weights (speed,
not quality).

    python benchmarks/gpu_check.py --out out/gpu_check            # on the GPU machine (needs CUDA)
    python benchmarks/gpu_check.py --device cpu --small --out DIR  # CPU smoke run at small sizes (~1 min)

Steps, each recorded in DIR/gpu_check.json (after every step) and summarised in DIR/gpu_check.md; they run in the
order 1, 5, 3, 2, 4, the result never measured on a GPU (5) first after the tests:
1. ``pytest -m gpu``: the gpu-marked tests (all skipped without CUDA).
2. One network evaluation per slice at 256x256 for the full-size public architectures with random weights:
   NCSN++ with DiffusionMBIR's AAPM config (``medrecon.priors.ncsnpp.AAPM256_CONFIG``) and ADM with DDS's
   (``medrecon.priors.adm.AAPM256_CONFIG``), in fp32, TF32, bf16 autocast, bf16 + channels-last and
   bf16 + channels-last + torch.compile (CUDA only, with ``--compile``), ms per slice, each in its own arithmetic
   (not the prior's exact-fp32 wrapper); a variant that fails is recorded as its error.
3. FastSampler (ADM) and DiffusionMBIR (NCSN++) with steps scaled down on a 256x256x64 volume (sparse-view
   parallel-beam CT, slice-wise projector): wall time, network time (every network call timed, synchronised),
   solver overhead = (wall - network) / network, the automatic chunk size and peak memory; the wall time is
   projected to 256x256x256 and the full step counts (50 and 2000) as wall * 256 / slices * full / steps.
4. Cone-beam projector (forward, adjoint) and FDK on 256^3, only where ``astra.use_cuda()`` (ASTRA's 3D calls
   die with SIGFPE without a GPU).
5. The bundled patch priors' quality under ``solver.precision`` fp32 and auto (bf16 on a GPU that has it), each
   config's default solver on a held-out phantom at 256x256 (``sparse_view_ct_8`` on 8 CT slices at 1 mm,
   ``cs_mri_x4``, self-adaptation included, on 8 PD MR slices at 0.9 mm): PSNR per plane and wall time.

Targets (one H100/H200-class GPU), each reported as met / missed (``null`` on a CPU or --small run):
fast sampler on 256^3 with the DDS-size network <= 2 min; DiffusionMBIR 2000 steps on 256^3 <= 30 min;
solver overhead <= 5 % of network time (both samplers). Exit status 1 if a gpu test failed or a step raised.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the GPU machine runs it from a copy of the tree, medrecon not installed there

from medrecon.device import reset_cuda_peak  # noqa: E402
from medrecon.priors import VEScorePrior, VESchedule, VPEpsPrior, VPSchedule  # noqa: E402
from medrecon.priors.adm import ADMUNet, adm_config  # noqa: E402
from medrecon.priors.ncsnpp import NCSNpp, ncsnpp_config  # noqa: E402
from medrecon.solvers.diffusion import DiffusionMBIR, FastSampler, auto_chunk_size  # noqa: E402
from operators.ct import ParallelBeamGeometry, SliceProjector  # noqa: E402
from pipelines.outputs import peak_memory  # noqa: E402
from pipelines.registry import ADMM_DEFAULTS  # noqa: E402

TARGETS = {"fast_256cubed_s": 120.0, "mbir_2000_256cubed_s": 1800.0, "overhead_fraction": 0.05}
FULL_STEPS = {"FastSampler": FastSampler.default_steps, "DiffusionMBIR": DiffusionMBIR.default_steps}
PROJECT_SLICES = 256


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_priors(size: int, small: bool, device: torch.device) -> dict:
    """NCSN++ (VE score, DiffusionMBIR AAPM) and ADM (VP eps, DDS AAPM) with random weights; --small: narrow."""
    torch.manual_seed(0)
    n = ncsnpp_config(image_size=size, **({"nf": 16, "ch_mult": [1, 2], "num_res_blocks": 1} if small else {}))
    a = adm_config(image_size=size, **({"model_channels": 32, "channel_mult": [1, 2], "num_head_channels": 32,
                                        "attention_resolutions": [size // 2]} if small else {}))
    return {"ncsnpp": VEScorePrior(NCSNpp(n), {"name": "ncsnpp-random"}, VESchedule(0.01, 378.0, 2000), None,
                                   size).to(device),
            "adm": VPEpsPrior(ADMUNet(a), {"name": "adm-random"}, VPSchedule(), None, size).to(device)}


@contextlib.contextmanager
def precision(variant: str, device: torch.device):
    """fp32 (TF32 off), tf32, or bf16 autocast (the bf16* variants)."""
    if device.type == "cuda":
        old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = variant == "tf32"
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if variant.startswith("bf16") else \
        contextlib.nullcontext()
    try:
        with ctx:
            yield
    finally:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def network_variants(device: torch.device, compile_: bool) -> list[str]:
    if device.type != "cuda":
        return ["fp32", "bf16"]
    return ["fp32", "tf32", "bf16", "bf16+channels_last"] + (["bf16+channels_last+compile"] if compile_ else [])


def time_network(prior, variant: str, batch: int, size: int, device: torch.device, repeats: int) -> float:
    """Median ms per slice of one denoiser evaluation on ``batch`` slices."""
    net = prior.network
    x = torch.randn(batch, 1, size, size, device=device)
    if "channels_last" in variant:
        prior.network = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if "compile" in variant:
        prior.network = torch.compile(prior.network)
    prior.arithmetic = contextlib.nullcontext  # the variant's arithmetic, not the prior's own (its exact fp32 turned
    try:                                       # cuDNN's TF32 off inside every call: the tf32 row measured fp32)
        times = []
        with torch.no_grad(), precision(variant, device):
            for k in range(repeats + 2):  # two warm-up calls (compilation, cudnn autotuning)
                sync(device)
                t0 = time.perf_counter()
                prior.denoise(x, 1.0)
                sync(device)
                if k >= 2:
                    times.append(time.perf_counter() - t0)
        return 1000.0 * statistics.median(times) / batch
    finally:
        del prior.arithmetic
        prior.network = net.to(memory_format=torch.contiguous_format)


def time_variants(priors: dict, variants: list[str], batch: int, size: int, device: torch.device,
                  repeats: int) -> dict:
    """ms per slice of each network in each variant; a variant that fails (torch.compile without Triton, say) is
    recorded as its error, the others kept."""
    out = {}
    for name, prior in priors.items():
        out[name] = {}
        for v in variants:
            try:
                out[name][v] = time_network(prior, v, batch, size, device, repeats)
            except Exception as e:  # noqa: BLE001 - one variant must not lose the others' rows
                out[name][v] = f"error: {(str(e).strip().splitlines() or [type(e).__name__])[-1][:200]}"
    return out


class TimedNetwork(torch.nn.Module):
    """The network with every call synchronised and timed (and run under the chosen precision)."""

    def __init__(self, net: torch.nn.Module, variant: str, device: torch.device):
        super().__init__()
        self.net, self.variant, self.device, self.seconds, self.calls = net, variant, device, 0.0, 0

    def forward(self, *args):
        sync(self.device)
        t0 = time.perf_counter()
        with precision(self.variant, self.device):
            out = self.net(*args).float()
        sync(self.device)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def run_sampler(cls, prior, size: int, slices: int, steps: int, device: torch.device, variant: str) -> dict:
    """One scaled-down run on a (slices, size, size) sparse-view CT problem; times, overhead, chunk, memory."""
    A = SliceProjector(ParallelBeamGeometry.sparse_view(size, 8))
    z, y, x = torch.meshgrid(*(torch.linspace(-1, 1, n, device=device) for n in (slices, size, size)), indexing="ij")
    y_meas = A.forward(((x ** 2 + y ** 2 + 0.3 * z ** 2) < 0.6).float() * 0.8 + 0.1)
    net = prior.network
    if "channels_last" in variant:
        net.to(memory_format=torch.channels_last)
    prior.network = TimedNetwork(net, variant, device)
    try:
        lam, rho = ADMM_DEFAULTS["ct"]["lam"], ADMM_DEFAULTS["ct"]["rho"]  # the paper's, no slice-spacing scaling
        solver = cls(prior, A, y_meas, n_steps=steps, lam=lam, rho=rho, seed=0)
        chunk = auto_chunk_size(prior, (size, size), device)
        solver.chunk_size = chunk
        prior.network.seconds = prior.network.calls = 0
        if device.type == "cuda":
            reset_cuda_peak(device)
        sync(device)
        t0 = time.perf_counter()
        solver.run()
        sync(device)
        wall = time.perf_counter() - t0
        net_s = prior.network.seconds
    finally:
        prior.network = net.to(memory_format=torch.contiguous_format)
    name = cls.__name__
    mem = peak_memory(device)
    projected = wall * PROJECT_SLICES / slices * FULL_STEPS[name] / steps
    return {"sampler": name, "prior": prior.name, "precision": variant, "slices": slices, "size": size,
            "steps": steps, "nfe_per_slice": solver.nfe, "chunk_size": chunk,
            "chunk_used": min(chunk, slices), "wall_s": round(wall, 3),
            "network_s": round(net_s, 3), "overhead_fraction": round((wall - net_s) / max(net_s, 1e-9), 4),
            "peak_cuda_mib": mem["cuda_mib"], "peak_rss_mib": mem["rss_mib"],
            f"projected_{PROJECT_SLICES}_slices_{FULL_STEPS[name]}_steps_s": round(projected, 1)}


def run_cone(size: int, device: torch.device) -> dict:
    import astra
    if device.type != "cuda" or not astra.use_cuda():
        return {"skipped": "needs CUDA (ASTRA's 3D calls die with SIGFPE without a GPU)"}
    from operators.ct import ConeBeamGeometry, ConeProjector, fdk
    geom = ConeBeamGeometry.sparse_view((size, size, size), 180)
    P = ConeProjector(geom)
    vol = torch.rand(geom.volume_shape, device=device)
    out = {"volume": list(geom.volume_shape), "projections": list(geom.proj_shape)}
    proj = P.forward(vol)  # also the warm-up of the forward projection
    for name, fn in (("forward_s", lambda: P.forward(vol)), ("adjoint_s", lambda: P.adjoint(proj)),
                     ("fdk_s", lambda: fdk(proj, geom))):
        fn() if name != "forward_s" else None  # warm-up
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out[name] = round(time.perf_counter() - t0, 4)
    return out


def run_bundled(small: bool, device: torch.device) -> dict:
    """Step 5: each bundled patch prior's config on a held-out phantom, fp32 against auto precision: a row per
    run and a markdown table per config."""
    from pipelines.compare import compare_methods, markdown_table
    from pipelines.phantoms import HELD_OUT_SEEDS, ct_phantom, mr_phantom

    shape = (2, 64, 64) if small else (8, 256, 256)
    seed = HELD_OUT_SEEDS[0]
    cases = {"sparse_view_ct_8": ct_phantom(shape, seed=seed, pixel_size_mm=1.0),
             "cs_mri_x4": mr_phantom(shape, seed=seed, contrast="PD", pixel_size_mm=0.9, slice_thickness_mm=5.0)}
    common = [f"solver.device={device.type}", "outputs.preview=false"] + \
        (["solver.steps=3", "solver.self_adapt.steps=2"] if small else [])
    methods = {p: {"name": "fast", "precision": p} for p in ("fp32", "auto")}
    out = {"rows": [], "tables": []}
    for config, src in cases.items():
        _, results = compare_methods(config, src, methods, common)
        out["rows"] += [{"config": config, **r.row(), "self_adapt_bf16": (r.self_adapt or {}).get("bf16")}
                        for r in results]
        out["tables"].append(markdown_table(results, f"{config}, fp32 against auto precision (phantom {shape})"))
    return out


def run_gpu_tests(timeout_s: int) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfE", "-p", "no:cacheprovider", str(ROOT / "tests")]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:  # what ran is kept: the tail says which test hung
        text = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return {"timed_out": True, "seconds": round(time.perf_counter() - t0, 1),
                "tail": text.strip().splitlines()[-40:]}
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)",
                                                p.stdout.strip().splitlines()[-1] if p.stdout.strip() else "")}
    return {"returncode": p.returncode, "seconds": round(time.perf_counter() - t0, 1), **counts,
            "tail": p.stdout.strip().splitlines()[-40:] if p.returncode not in (0, 5) else []}


def judge(result: dict, judged: bool) -> list[dict]:
    """The targets, met or missed (None: not judged on a CPU or --small run, or not measured)."""
    s = {r["sampler"]: r for r in result.get("samplers", [])}
    rows = []

    def add(what, limit, value, unit):
        rows.append({"target": what, "limit": limit, "value": value, "unit": unit,
                     "met": None if not judged or value is None else value <= limit})
    proj = {k: next((v for key, v in r.items() if key.startswith("projected_")), None) for k, r in s.items()}
    add("fast sampler, 256^3, DDS-size ADM, 50 steps", TARGETS["fast_256cubed_s"], proj.get("FastSampler"), "s")
    add("DiffusionMBIR, 256^3, NCSN++, 2000 steps", TARGETS["mbir_2000_256cubed_s"], proj.get("DiffusionMBIR"), "s")
    for k, r in s.items():
        add(f"{k} solver overhead / network time", TARGETS["overhead_fraction"], r["overhead_fraction"], "")
    return rows


def markdown(res: dict, skipped_tests: bool = False) -> str:
    out = [f"# GPU check ({res['device']}, {res['mode']}, {res['seconds']:.0f} s)", ""]
    t = res.get("gpu_tests")
    tests = ("not run (--skip-tests)" if skipped_tests else "not run (the step raised; see errors)") if t is None \
        else f"timed out after {t['seconds']} s (the tail is in gpu_check.json)" if t.get("timed_out") else \
        ", ".join(f"{t[k]} {k}" for k in ("passed", "failed", "skipped", "errors", "error") if k in t) or str(t)
    out += [f"gpu tests: {tests}", ""]
    if res.get("networks"):
        variants = list(next(iter(res["networks"].values())))
        out += ["| network (ms/slice) | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
        out += [f"| {n} | " + " | ".join(f"{v[k]:.2f}" if isinstance(v[k], float) else str(v[k]) for k in variants)
                + " |" for n, v in res["networks"].items()]
        out.append("")
    if res.get("samplers"):
        out += ["| sampler | steps | slices | chunk | wall s | network s | overhead | peak MiB | projected s |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in res["samplers"]:
            proj = next(v for k, v in r.items() if k.startswith("projected_"))
            out.append(f"| {r['sampler']} ({r['prior']}, {r['precision']}) | {r['steps']} | {r['slices']} | "
                       f"{r['chunk_size']} | {r['wall_s']} | {r['network_s']} | {100 * r['overhead_fraction']:.1f} % "
                       f"| {r['peak_cuda_mib'] or r['peak_rss_mib']} | {proj} |")
        out.append("")
    out += [f"cone beam: {json.dumps(res.get('cone'))}", ""]
    out += res.get("bundled_precision", {}).get("tables", [])
    out += ["| target | limit | value | met |", "|---|---|---|---|"]
    out += [f"| {r['target']} | {r['limit']}{r['unit']} | {r['value']} | "
            f"{'n/a' if r['met'] is None else ('yes' if r['met'] else 'NO')} |" for r in res["targets"]]
    if res["errors"]:
        out += ["", "errors:"] + [f"- {k}: {v.splitlines()[-1]}" for k, v in res["errors"].items()]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--small", action="store_true", help="small sizes and narrow networks (CPU smoke run)")
    ap.add_argument("--out", type=Path, default=Path("out/gpu_check"))
    ap.add_argument("--compile", action="store_true", help="add a bf16+channels_last+torch.compile row (needs Triton "
                    "and a C compiler; minutes; never measured on a GPU here)")
    ap.add_argument("--no-compile", action="store_true", help=argparse.SUPPRESS)  # the default since --compile
    ap.add_argument("--skip-tests", action="store_true", help="do not run the gpu-marked tests")
    ap.add_argument("--fast-steps", type=int, default=None, help="FastSampler steps (default 10; --small 2)")
    ap.add_argument("--mbir-steps", type=int, default=None, help="DiffusionMBIR steps (default 10; --small 2)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here; run on the GPU machine, or use --device cpu --small", file=sys.stderr)
        return 2
    size, slices, batch, repeats = (32, 4, 2, 2) if args.small else (256, 64, 8, 5)
    steps = {"fast": args.fast_steps or (2 if args.small else 10), "mbir": args.mbir_steps or (2 if args.small else 10)}
    # bf16 without channels-last: on the H200 channels-last made both networks 31-36 % slower (thirty-fifth session)
    variant = "bf16" if device.type == "cuda" else "fp32"
    t_start = time.perf_counter()
    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "mode": "small" if args.small else "full", "torch": torch.__version__, "errors": {}}

    def step(name, fn):
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            res[name] = fn()
        except Exception:  # noqa: BLE001 - one failing step must not hide the others
            res["errors"][name] = traceback.format_exc()
            print(res["errors"][name], file=sys.stderr)
        args.out.mkdir(parents=True, exist_ok=True)  # after every step: a run cut short keeps what it measured
        (args.out / "gpu_check.json").write_text(json.dumps(res, indent=2) + "\n")

    if not args.skip_tests:
        step("gpu_tests", lambda: run_gpu_tests(timeout_s=240))
    step("bundled_precision", lambda: run_bundled(args.small, device))  # the result never measured on a GPU first
    priors = {}

    def built() -> dict:  # inside the steps: a failure (out of memory) is that step's error, not the run's end
        if not priors:
            priors.update(build_priors(size, args.small, device))
        return priors
    step("samplers", lambda: [run_sampler(FastSampler, built()["adm"], size, slices, steps["fast"], device, variant),
                              run_sampler(DiffusionMBIR, built()["ncsnpp"], size, slices, steps["mbir"], device,
                                          variant)])
    step("networks", lambda: time_variants(built(), network_variants(device, args.compile), batch, size, device,
                                           repeats))
    step("cone", lambda: run_cone(64 if args.small else 256, device))
    res["targets"] = judge(res, judged=device.type == "cuda" and not args.small)
    res["seconds"] = round(time.perf_counter() - t_start, 1)
    (args.out / "gpu_check.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(res, args.skip_tests))
    print(markdown(res, args.skip_tests))
    t = res.get("gpu_tests") or {}
    tests_failed = t.get("timed_out") or t.get("returncode", 0) not in (0, 5)  # 5: nothing collected/all skipped
    return 1 if res["errors"] or tests_failed else 0


if __name__ == "__main__":
    sys.exit(main())
