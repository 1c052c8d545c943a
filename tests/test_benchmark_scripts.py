"""Every benchmark script still imports and parses its options: they share helpers (bench_real's), and a renamed
helper once broke five of them without a test noticing."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCH.glob("*.py"))


def test_the_scripts_are_found():
    assert {"bench_real", "bench_quality", "tune_ztv"} <= {p.stem for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_script_imports_and_answers_help(script, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import one another by name
    spec = importlib.util.spec_from_file_location(f"bench_{script.stem}", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    main = getattr(mod, "main", None)
    if main is None or "argparse" not in script.read_text():
        return  # no options to ask for; importing it is the check
    monkeypatch.setattr(sys, "argv", [script.name, "--help"])  # main() or main(argv=None) reads sys.argv
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0
    assert "usage" in capsys.readouterr().out.lower()


def test_score_mean_scores_the_mean_of_saved_runs_and_refuses_other_references(tmp_path, monkeypatch):
    """score_mean.py reports what the voxel-wise mean of two saved runs scores (an error that averages out: the mean
    beats both runs), and runs of another simulation are refused, not averaged."""
    monkeypatch.syspath_prepend(str(BENCH))
    from medrecon.io import write_nifti
    from medrecon.metrics import per_axis_metrics
    from medrecon.volume import Volume
    import score_mean

    rng = np.random.default_rng(0)
    ref = rng.uniform(-1000, 1000, (2, 8, 8)).astype(np.float32)
    noise = rng.normal(0, 50, ref.shape).astype(np.float32)
    runs = [tmp_path / "a", tmp_path / "b"]
    for run, x in zip(runs, (ref + noise, ref - noise + 10)):
        run.mkdir()
        write_nifti(Volume(ref), run / "ct4_s_reference.nii.gz")
        write_nifti(Volume(ref + 200), run / "ct4_s_ADMM_TV_3D_lam_2.nii.gz")
        write_nifti(Volume(x), run / "ct4_s_fast_z_TV_warm.nii.gz")
    (row,) = score_mean.score(runs, score_mean.FAST, 2000.0)
    expect = per_axis_metrics(ref, ref + 5, 2000.0)["psnr"]["axial"]  # the noise cancels, the offset halves
    assert row["mean"] == pytest.approx(expect, abs=1e-3) and row["mean"] > max(row["runs"]) + 10
    assert row["admm_tv"] == pytest.approx(per_axis_metrics(ref, ref + 200, 2000.0)["psnr"]["axial"], abs=1e-3)
    write_nifti(Volume(ref + 1), runs[1] / "ct4_s_reference.nii.gz", overwrite=True)
    with pytest.raises(SystemExit, match="another reference"):
        score_mean.score(runs, score_mean.FAST, 2000.0)
