"""Run several reconstruction methods on one simulated measurement and score them against the reference.

Shared by `medrecon demo` and benchmarks/bench_quality.py: one simulation, one operator, one prior, one
metric definition, so every column of a comparison differs only in the solver.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from medrecon.device import cuda_peak_bytes, reset_cuda_peak
from medrecon.metrics import AXES, flat_metrics
from medrecon.volume import Volume

from .config import Config, load_config
from .outputs import reset_rss_peak, rss_kib, write_json
from .problem import Problem
from .registry import SOLVERS


class PeakMemory:
    """Peak resident memory (MiB) above the level the block starts at (Linux: VmHWM, restarted on entry; where
    it cannot be restarted, the level at the end; 0 without /proc), and CUDA peak allocation when the solver runs on
    a GPU. Memory freed before the block is handed back first (glibc); with another allocator it may be reused
    unseen and the figure is a lower bound. For per-process figures see benchmarks/bench_samplers.py."""

    def __init__(self, device: torch.device):
        self.device, self.cpu_mib, self.cuda_mib = device, 0.0, None

    def __enter__(self):
        if self.device.type == "cuda":
            reset_cuda_peak(self.device)
        self._peak_field = "VmHWM" if reset_rss_peak() else "VmRSS"
        self._base = rss_kib()
        return self

    def __exit__(self, *exc):
        peak = rss_kib(self._peak_field)
        if self._base is not None and peak is not None:
            self.cpu_mib = max(peak - self._base, 0.0) / 1024
        if self.device.type == "cuda":
            self.cuda_mib = cuda_peak_bytes(self.device) / 2**20


@dataclass
class MethodResult:
    label: str
    solver: str
    volume: Volume  # physical units (HU or normalised magnitude)
    metrics: dict
    nfe_per_slice: int
    backward_per_slice: int
    seconds: float
    peak_cpu_mib: float
    peak_cuda_mib: float | None = None
    settings: dict = field(default_factory=dict)  # the method's solver section
    cross_validation: dict | None = None  # what solver.cross_validate tried and chose
    self_adapt: dict | None = None  # solver.self_adapt's record (with the first pass's scores)

    def row(self) -> dict:
        m = self.metrics
        return {"method": self.label, "solver": self.solver,
                **flat_metrics(m),
                "nfe_per_slice": self.nfe_per_slice, "backward_per_slice": self.backward_per_slice, "seconds": round(self.seconds, 1),
                "peak_cpu_mib": round(self.peak_cpu_mib, 1),
                "peak_cuda_mib": None if self.peak_cuda_mib is None else round(self.peak_cuda_mib, 1),
                **({"cross_validation": self.cross_validation} if self.cross_validation else {}),
                **({"self_adapt": self.self_adapt} if self.self_adapt else {})}


def admm_tv_settings(lam: float, iters: int = 100) -> dict:
    """The classical baseline's solver section: 3D anisotropic ADMM-TV, rho = 10 lam, 5 CG steps."""
    return {"name": "admm_tv", "tv": "3d", "steps": iters, "n_cg": 5, "admm": {"lam": lam, "rho": 10 * lam}}


def method_configs(config, methods: dict[str, dict], common=()) -> dict[str, Config]:
    """One resolved config per method: ``config`` with ``common`` overrides and the method's solver section (a
    ``solver:`` mapping, validated by the registry like a config file's) over the settings of the file's solver
    that the method's solver also takes (e.g. ``nonneg``, ``device``)."""
    base = load_config(config, common, check_files=False)
    out = {}
    for label, solver in methods.items():
        d = base.model_dump()
        takes = SOLVERS[solver["name"]].settings.model_fields
        d["solver"] = {**{k: v for k, v in d["solver"].items() if k in takes and k != "name"}, **solver}
        cfg = load_config(d)
        cfg._source = base.source
        out[label] = cfg.resolved()
    return out


def compare_methods(config, source: Volume, methods: dict[str, dict], common=(),
                    data_range: float | None = None, progress: bool = False, echo=None,
                    prior=None) -> tuple[Volume, list[MethodResult]]:
    """Simulate measurements of ``source`` with ``config`` once, then reconstruct them with each method.

    ``methods`` maps a label to a solver section (e.g. ``{"ADMM-TV": {"name": "admm_tv"}}``); ``common``
    overrides (``key=value``) apply to the config. ``prior`` (already loaded) is used as given; otherwise it is
    loaded once, from the first method that needs one. Every method sees the same ``Problem``.
    Returns the reference volume (at reconstruction resolution) and one MethodResult per method.
    """
    cfgs = method_configs(config, methods, common)
    first = next((c for c in cfgs.values() if c.needs_prior), next(iter(cfgs.values())))
    problem = Problem.build(first, source, prior=prior)
    results = []
    for label, cfg in cfgs.items():
        if echo:
            echo(f"{label}: {cfg.solver.name} ...")
        with PeakMemory(problem.device) as mem:
            t0 = time.perf_counter()
            sol = problem.solve(cfg.solver, progress)
            seconds = time.perf_counter() - t0
        vol = problem.to_volume(sol.x, description=label)
        metrics = problem.score(vol, data_range)
        results.append(MethodResult(label, cfg.solver.name, vol, metrics, int(sol.nfe_per_slice),
                                    int(sol.backward_per_slice), seconds, mem.cpu_mib, mem.cuda_mib,
                                    dict(methods[label]), problem.info.pop("cross_validation", None),
                                    problem.info.pop("self_adapt", None)))
        if echo:
            echo(f"{label}: PSNR axial {metrics['psnr']['axial']:.2f} dB, {seconds:.1f} s")
    return problem.reference, results


def _num(v, digits: int) -> str:
    """A table cell: the value rounded, or a dash where the plane does not exist (one slice: no coronal)."""
    return "–" if v is None else f"{v:.{digits}f}"


def markdown_table(results: list[MethodResult], title: str = "") -> str:
    """PSNR/SSIM per plane, network evaluations per slice, wall time and peak memory, one row per method."""
    on_gpu = any(r.peak_cuda_mib is not None for r in results)  # the column says which memory it holds
    memory = "peak CUDA memory (MiB)" if on_gpu else "peak RSS growth (MiB)"
    head = ("| method | PSNR axial | PSNR coronal | PSNR sagittal | SSIM axial | SSIM coronal | SSIM sagittal "
            f"| NFE/slice | backward/slice | time (s) | {memory} |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in results:
        p, s = r.metrics["psnr"], r.metrics["ssim"]
        mem = (r.peak_cuda_mib if on_gpu else r.peak_cpu_mib) or 0.0
        cells = [_num(p[a], 2) for a in AXES] + [_num(s[a], 3) for a in AXES]
        lines.append(f"| {r.label} | {' | '.join(cells)} | {r.nfe_per_slice} | {r.backward_per_slice} | {r.seconds:.1f} "
                     f"| {mem:.0f} |")
    return (f"{title}\n\n" if title else "") + head + "\n".join(lines) + "\n"


def write_tables(out, stem: str, tables: list[str], rows: dict) -> None:
    """A benchmark's results so far: OUT/<stem>.md (its tables) and OUT/<stem>.json (their rows)."""
    Path(out, f"{stem}.md").write_text("\n".join(tables))
    write_json(Path(out, f"{stem}.json"), rows)


__all__ = ["admm_tv_settings", "write_tables", "method_configs", "compare_methods", "markdown_table", "MethodResult", "PeakMemory"]
