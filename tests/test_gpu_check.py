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
