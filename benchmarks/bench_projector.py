"""Slice-wise CT projector benchmark: torch CSR system matrix against ASTRA's own per-slice CPU projection.

Forward + adjoint of a (slices, n, n) float32 volume, parallel beam with ASTRA's 'linear' projector:

* ours:  ``SliceProjector`` — one sparse-dense product for all slices, then one with the transposed copy;
* ASTRA: ``astra.create_sino`` and ``astra.create_backprojection`` slice by slice (same projector).

The two are timed alternately in one run (so machine load hits both alike); the ratio of the fastest
repetitions is the speed-up. The one-off matrix build and the cached matrices' memory are reported too.

    python benchmarks/bench_projector.py                 # 64 slices of 256², 8 and 180 views
    python benchmarks/bench_projector.py --threads 1 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import astra
import numpy as np
import torch

from operators.ct import ParallelBeamGeometry, SliceProjector, clear_matrix_cache


def _astra_per_slice(vol: np.ndarray, pid: int):
    sinos = []
    for sl in vol:
        sid, s = astra.create_sino(sl, pid)
        astra.data2d.delete(sid)
        sinos.append(s)
    for s in sinos:
        bid, _ = astra.create_backprojection(s, pid)
        astra.data2d.delete(bid)
    return np.stack(sinos)


def bench(n_views: int, size: int, slices: int, repeats: int, seed: int = 0) -> dict:
    clear_matrix_cache()
    geom = ParallelBeamGeometry.sparse_view(size, n_views)
    t0 = time.perf_counter()
    op = SliceProjector(geom)
    build_s = time.perf_counter() - t0
    x = torch.rand(slices, size, size, generator=torch.Generator().manual_seed(seed))
    vol = x.numpy()
    vg, pg = geom.astra_geometries()
    pid = astra.create_projector("linear", pg, vg)
    try:
        op.adjoint(op.forward(x))  # warm-up
        ours, theirs = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            y = op.forward(x)
            op.adjoint(y)
            ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ref = _astra_per_slice(vol, pid)
            theirs.append(time.perf_counter() - t0)
    finally:
        astra.projector.delete(pid)
    rel = float(np.linalg.norm(y.numpy() - ref) / np.linalg.norm(ref))
    return {
        "views": n_views, "size": size, "slices": slices, "repeats": repeats,
        "ours_s": min(ours), "astra_s": min(theirs), "ratio": min(theirs) / min(ours),
        "ratio_median": statistics.median(t / o for t, o in zip(theirs, ours)),
        "matrix_build_s": build_s, "nnz": op.matrix.nnz, "matrix_mb": op.matrix.nbytes / 2 ** 20,
        "rel_diff_vs_astra": rel,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--views", type=int, nargs="+", default=[8, 180])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--slices", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", help="also write the results to this file")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "load_avg_1m": os.getloadavg()[0],
               "torch": torch.__version__, "astra": astra.__version__}
    rows = [bench(v, a.size, a.slices, a.repeats) for v in a.views]
    machine["load_avg_1m_end"] = os.getloadavg()[0]
    print(f"machine: {machine}")
    print("| views | ours fwd+adj (s) | ASTRA per slice (s) | speed-up (best / median) | matrix nnz | cached MB "
          "(both copies) | build (s) | rel. diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['views']} | {r['ours_s']:.3f} | {r['astra_s']:.2f} | {r['ratio']:.1f}× / "
              f"{r['ratio_median']:.1f}× | {r['nnz']:,} | {r['matrix_mb']:.0f} | {r['matrix_build_s']:.1f} | "
              f"{r['rel_diff_vs_astra']:.1e} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
