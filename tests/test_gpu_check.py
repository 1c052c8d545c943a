"""benchmarks/gpu_check.py: the target verdicts, and a CPU smoke run at small sizes (slow) so it does not rot."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_targets_are_judged_only_on_a_full_gpu_run():
    gc = _module()
    res = {"samplers": [{"sampler": "FastSampler", "overhead_fraction": 0.02, "projected_256_slices_50_steps_s": 130.0},
                        {"sampler": "DiffusionMBIR", "overhead_fraction": 0.08,
                         "projected_256_slices_2000_steps_s": 1500.0}]}
    met = {r["target"]: r["met"] for r in gc.judge(res, judged=True)}
    assert list(met.values()) == [False, True, True, False]  # fast 130 s > 120 s; MBIR 1500 s <= 1800 s; 2 %; 8 %
    assert all(r["met"] is None for r in gc.judge(res, judged=False))
    assert [r["met"] for r in gc.judge({}, judged=True)] == [None, None]  # nothing measured: nothing judged


@pytest.mark.slow
def test_gpu_check_small_on_cpu(tmp_path):
    p = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--small", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600, cwd=SCRIPT.parents[1])
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert res["errors"] == {} and res["gpu_tests"]["returncode"] in (0, 5)
    assert set(res["networks"]) == {"ncsnpp", "adm"}
    assert all(v > 0 for n in res["networks"].values() for v in n.values())
    fast, mbir = res["samplers"]
    assert (fast["sampler"], fast["nfe_per_slice"], mbir["sampler"], mbir["nfe_per_slice"]) == \
        ("FastSampler", 2, "DiffusionMBIR", 4)
    for r in (fast, mbir):
        assert r["chunk_size"] == 8 and 0 < r["network_s"] <= r["wall_s"] * 1.01  # CPU default chunk
    assert "skipped" in res["cone"] and len(res["targets"]) == 4
    assert all(t["met"] is None for t in res["targets"])  # not judged on a CPU run
    assert "| network (ms/slice) | fp32 | bf16 |" in (tmp_path / "gpu_check.md").read_text()
    rows = res["bundled_precision"]["rows"]  # step 5: each config at fp32 and auto, scored against its phantom
    assert [(r["config"], r["method"]) for r in rows] == [(c, p) for c in ("sparse_view_ct_8", "cs_mri_x4")
                                                          for p in ("fp32", "auto")]
    assert all(r["psnr_axial"] > 15 for r in rows)  # 3 steps on 64x64 phantoms: 21-30 dB measured, far above noise
    assert [r["self_adapt_bf16"] for r in rows][::2] == [False, False]  # fp32 adapts in fp32


def test_each_network_variant_runs_in_its_own_arithmetic_and_a_failing_one_keeps_the_others(monkeypatch):
    """The tf32 row ran inside the prior's exact-fp32 wrapper, which turns cuDNN's TF32 off in every call (it timed
    fp32); one variant raising (torch.compile without Triton) lost every row of the step."""
    import contextlib

    import torch

    gc = _module()
    priors = gc.build_priors(16, True, torch.device("cpu"))
    seen = []

    def spy(x, sigma):
        seen.append(type(priors["adm"].arithmetic()).__name__)
        return x
    monkeypatch.setattr(priors["adm"], "denoise", spy)
    assert gc.time_network(priors["adm"], "fp32", 1, 16, torch.device("cpu"), 1) >= 0
    assert set(seen) == {"nullcontext"} and priors["adm"].arithmetic is not contextlib.nullcontext  # restored

    def broken(prior, variant, *a):
        if variant == "bf16":
            raise RuntimeError("line one\nTriton not found")
        return 1.0
    monkeypatch.setattr(gc, "time_network", broken)
    rows = gc.time_variants({"adm": priors["adm"]}, ["fp32", "bf16"], 1, 16, torch.device("cpu"), 1)
    assert rows == {"adm": {"fp32": 1.0, "bf16": "error: Triton not found"}}


def test_a_hung_gpu_test_run_is_told_as_timed_out_with_its_tail(monkeypatch):
    """A timeout of step 1 read 'not run (--skip-tests)' and its partial output was dropped."""
    gc = _module()

    def hang(*a, **k):
        raise subprocess.TimeoutExpired(cmd="pytest", timeout=1, output=b"tests/test_x.py ..")
    monkeypatch.setattr(gc.subprocess, "run", hang)
    res = gc.run_gpu_tests(1)
    assert res["timed_out"] and res["tail"] == ["tests/test_x.py .."]
    md = gc.markdown({"device": "cpu", "mode": "small", "seconds": 1, "gpu_tests": res, "errors": {}, "targets": []})
    assert "timed out after" in md and "--skip-tests" not in md


def test_the_comparison_tables_memory_column_says_which_memory_it_holds():
    """On a GPU the 'peak RSS growth' column printed the absolute CUDA peak (weights included)."""
    import numpy as np

    from medrecon.volume import Volume
    from pipelines.compare import MethodResult, markdown_table

    m = {"psnr": {"axial": 1.0, "coronal": 1.0, "sagittal": 1.0}, "ssim": {"axial": 0.5, "coronal": 0.5, "sagittal": 0.5}}
    v = Volume(np.zeros((1, 2, 2), np.float32))
    cpu = MethodResult("a", "fast", v, m, 1, 0, 1.0, 150.0)
    gpu = MethodResult("a", "fast", v, m, 1, 0, 1.0, 150.0, 20480.0)
    assert "peak RSS growth (MiB)" in markdown_table([cpu]) and "| 150 |" in markdown_table([cpu])
    assert "peak CUDA memory (MiB)" in markdown_table([gpu]) and "| 20480 |" in markdown_table([gpu])
