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
    mod = _script(script)
    main = getattr(mod, "main", None)
    if main is None or "argparse" not in script.read_text():
        return  # no options to ask for; importing it is the check
    monkeypatch.setattr(sys, "argv", [script.name, "--help"])  # main() or main(argv=None) reads sys.argv
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0
    assert "usage" in capsys.readouterr().out.lower()


def test_the_scans_reported_held_out_are_test_scans_no_baseline_is_tuned_on(monkeypatch):
    """The README's issue-12 table (read by lease_eval.py) reports its scans held out: each is a registered test
    scan, and bench_real tunes ADMM-TV's lam on none of them (until the sixty-fifth session ct_chest_drr, a row of
    that table, was registered 'train' and among TUNE_SCANS)."""
    monkeypatch.syspath_prepend(str(BENCH))
    bench_real = _script(BENCH / "bench_real.py")
    from pipelines import datasets
    reported = set(_lease_eval().readme_table()) | set(bench_real.TEST_SCANS["ct"])
    assert len(reported) == 9 and reported <= set(datasets.names("test", "ct"))
    for modality, scans in bench_real.TUNE_SCANS.items():
        assert set(scans) <= set(datasets.names("train", modality)), modality


def test_lease_eval_reads_the_readme_held_out_table():
    """lease_eval.py compares a returned prior with the README's issue-12 table, which it held as a hand-typed copy
    (kept equal by this test); it now reads the table from README.md: nine scans, an ADMM-TV and a wide figure at 8
    and at 4 views each (a single slice's 4-view wide figure the two-sample one, not the one sample's)."""
    table = _lease_eval().readme_table()
    assert len(table) == 9 and all(set(by) == {"ct8", "ct4"} and all(len(v) == 2 for v in by.values())
                                   for by in table.values())
    assert table["ct_tumour2"]["ct8"] == (24.25, 26.18)
    assert table["ct_abdomen_slice"]["ct4"] == (22.00, 22.60)


def test_lease_eval_refuses_a_readme_table_row_it_cannot_read(tmp_path, monkeypatch):
    """A row whose cells lost a figure (or its scan's backticks) is an error naming the row, not a verdict drawn from
    shifted columns."""
    le = _lease_eval()
    readme = (le.ROOT / "README.md").read_text().replace("24.25 (was 23.61) / 25.99 / 26.18", "24.25 / 26.18")
    (tmp_path / "README.md").write_text(readme)
    monkeypatch.setattr(le, "ROOT", tmp_path)  # (a module loaded afresh: its README cache is empty)
    with pytest.raises(SystemExit, match="ct_tumour2"):
        le.readme_table()


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


def _script(path):
    """A benchmark script loaded as a module (its folder must be on sys.path where it imports a sibling)."""
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _lease_eval():
    return _script(BENCH / "gpu_lease" / "lease_eval.py")


def _real_json(folder, scores):
    """A bench_real.py output folder: real.json with the ADMM-TV and default rows of {(case, scan): (admm, fast)}."""
    import json
    rows = {}
    for (case, scan), (admm, fast) in scores.items():
        rows.setdefault(case, {"tuned": {}, "scans": {}})["scans"][scan] = [
            {"method": "FBP", "psnr_axial": 10.0}, {"method": "ADMM-TV 3D (lam 5)", "psnr_axial": admm},
            {"method": "fast + z-TV (warm)", "psnr_axial": fast}]
    folder.mkdir()
    (folder / "real.json").write_text(json.dumps(rows))
    return folder


def test_gpu_lease_eval_rules(tmp_path, capsys):
    """evaluate.sh's rules on hand-made runs: validation needs +0.10 dB mean at 8 and 4 views and no more cases
    below ADMM-TV (the same slice full and cropped counted as two cases); held out, the README's wide column is
    compared per case (mean change >= 0, none below -0.2) and an ADMM-TV that does not reproduce it voids the run."""
    le = _lease_eval()
    scans = ["a", "b"]
    cur = {(c, s): (20.0, 21.0) for c in ("ct8", "ct4") for s in scans}
    for name, new_fast, new_low, ok in [("pass", 21.10, 21.10, True), ("short", 21.09, 21.09, False),
                                        ("below", 21.50, 19.9, False)]:
        runs = {k: _real_json(tmp_path / f"{name}_{k}", {**{key: (20.0, new_fast) for key in cur},
                                                          ("ct4", "b"): (20.0, new_low if k == "crop" else new_fast)})
                for k in ("full", "crop")}
        currents = [_real_json(tmp_path / f"{name}_cur_{k}", cur) for k in ("full", "crop")]
        summary = le.val_summary(le.axial([runs["full"], runs["crop"]], by_run=True))
        assert summary["ct4"]["n"] == 4
        assert le.validate(currents, [runs["full"], runs["crop"]], ("ct8", "ct4")) is ok, name
    readme = {(c, s): v for s, by in le.readme_table().items() for c, v in by.items()}
    assert len(readme) == 18
    same = _real_json(tmp_path / "same", readme)
    assert le.heldout([same], None, ("ct8", "ct4")) is True  # no change: mean 0, none lower
    worse = dict(readme)
    worse["ct4", "ct_lung2"] = (readme["ct4", "ct_lung2"][0], readme["ct4", "ct_lung2"][1] - 0.21)
    worse["ct4", "ct_tumour1"] = (readme["ct4", "ct_tumour1"][0], readme["ct4", "ct_tumour1"][1] + 0.5)
    assert le.heldout([_real_json(tmp_path / "worse", worse)], None, ("ct8", "ct4")) is False  # mean up, one -0.21
    off = dict(readme)
    off["ct8", "ct_tumour2"] = (readme["ct8", "ct_tumour2"][0] + 0.03, 27.0)  # ADMM-TV 0.03 dB off the README's
    assert le.heldout([_real_json(tmp_path / "off", off)], None, ("ct8", "ct4")) is None  # no verdict
    assert "INVALID" in capsys.readouterr().out
    # a rerun of the current prior replaces the README's figures
    assert le.heldout([_real_json(tmp_path / "off2", off)], [_real_json(tmp_path / "cur", off)], ("ct8", "ct4"))


def test_gpu_lease_eval_exits_3_on_any_error_never_a_verdict(tmp_path, capsys):
    """A lease_eval.py error exited 1 (an exception, a SystemExit("message")) or 2 (a usage error), which
    evaluate.sh reads as FAIL / NO or as "no verdict, rerun with --rerun-current". Any error now exits 3 (evaluate.sh:
    "evaluation error, no verdict"); the verdicts keep 0, 1 and 2."""
    import subprocess

    missing = tmp_path / "nonexistent"
    done = subprocess.run([sys.executable, str(BENCH / "gpu_lease" / "lease_eval.py"), "heldout", str(missing)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3 and str(missing) in done.stderr and not done.stdout, done
    le = _lease_eval()
    (tmp_path / "loss.md").write_text("no table\n")
    assert le.run(["loss", str(tmp_path / "loss.md")]) == 3  # a SystemExit with a message
    assert "lease_eval.py: error: " in capsys.readouterr().err
    assert le.run(["validate", "--current", str(missing)]) == 3  # a usage error (argparse's 2)
    readme = {(c, s): v for s, by in le.readme_table().items() for c, v in by.items()}
    worse, off = dict(readme), dict(readme)
    worse["ct4", "ct_lung2"] = (readme["ct4", "ct_lung2"][0], readme["ct4", "ct_lung2"][1] - 0.21)
    off["ct8", "ct_tumour2"] = (readme["ct8", "ct_tumour2"][0] + 0.03, 27.0)
    assert [le.run(["heldout", str(_real_json(tmp_path / name, runs))])
            for name, runs in (("same", readme), ("worse", worse), ("off", off))] == [0, 1, 2]


def test_gpu_lease_evaluate_reextracts_a_prior_whose_extraction_stopped(tmp_path):
    """evaluate.sh extracted the returned prior straight into OUT/prior: an extraction stopped midway (a truncated
    stream, Ctrl-C) left a card beside partial weights, and a rerun took the card for a finished extraction and
    scored the partial prior. It now extracts into OUT/prior.tmp and moves it into place (with returned.sha256)
    only when the extraction finished, so a rerun extracts again."""
    import os
    import shutil
    import subprocess
    import tarfile

    src = tmp_path / "src"
    src.mkdir()
    (src / "model_card.yaml").write_text("name: returned\n")
    weights = np.random.default_rng(0).bytes(300_000)
    (src / "weights.bin").write_bytes(weights)
    ret = tmp_path / "ret"
    (ret / "wide").mkdir(parents=True)
    with tarfile.open(ret / "wide" / "part_00", "w:gz") as tar:
        for name in ("model_card.yaml", "weights.bin"):  # the card first: whole in a cut stream
            tar.add(src / name, arcname=name)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "gunzip").write_text(f"#!/bin/bash\n{shutil.which('gunzip')} | head -c 100000\nexit 1\n")
    (fake / "gunzip").chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PY": "false"}  # `false lease_eval.py card`: the script stops after step 1
    cmd = ["bash", str(BENCH / "gpu_lease" / "evaluate.sh"), str(ret), str(out)]
    cut = subprocess.run(cmd, env={**env, "PATH": f"{fake}:{os.environ['PATH']}"}, capture_output=True, text=True,
                         timeout=120)
    assert cut.returncode == 1 and "reassembly failed" in cut.stdout, cut
    assert not (out / "prior" / "model_card.yaml").exists() and not (out / "returned.sha256").exists()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert "does not load" in again.stdout, again  # extracted, then `false` for the card
    assert (out / "prior" / "weights.bin").read_bytes() == weights and not (out / "prior.tmp").exists()
    assert (out / "returned.sha256").read_text().strip() == \
        __import__("hashlib").sha256((ret / "wide" / "part_00").read_bytes()).hexdigest()


def test_gpu_lease_card_rewrites_the_card_atomically(tmp_path, monkeypatch):
    """lease_eval.py card sets patch.inference_shifts in the returned prior's model_card.yaml; it rewrote the file
    in place, so a write stopped midway (a full disk, a kill) left half a card. It now writes a temporary beside it
    and renames it over the card: a failed write keeps the card whole."""
    import pathlib

    le = _lease_eval()
    card = tmp_path / "model_card.yaml"
    text = "name: returned\npatch:\n  sizes:\n  - 16\n  inference_size: 64\n  inference_shifts: 2\n  seed: 0\n"
    card.write_text(text)
    plain = pathlib.Path.write_text

    def cut(self, data, *a, **k):  # half the text, then the disk is full
        plain(self, data[: len(data) // 2], *a, **k)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", cut)
    from medrecon.errors import InputError

    with pytest.raises(InputError, match=r"cannot write .*model_card\.yaml: No space left on device") as raised:
        le.card(tmp_path)  # the injected error, from the write itself (atomic_path says which file)
    assert isinstance(raised.value.__cause__, OSError) and raised.value.__cause__.errno == 28
    monkeypatch.setattr(pathlib.Path, "write_text", plain)
    assert card.read_text() == text and [p.name for p in tmp_path.iterdir()] == ["model_card.yaml"]


def test_gpu_lease_card_sets_the_bundled_tile_grids(tmp_path, monkeypatch, capsys):
    """lease_eval.py card sets a returned patch prior's patch.inference_shifts to bundled:ct_patch_wide's, so that
    the CPU runs compare weights, not tile grids; the rest of the card stays as it was (the project's card writer
    adds its `format` line)."""
    import types

    import pipelines.prior_cards
    from medrecon.priors.card import read_model_card
    from pipelines.config import resolve_prior_path

    want = read_model_card(resolve_prior_path("bundled:ct_patch_wide"))["patch"]["inference_shifts"]
    (tmp_path / "model_card.yaml").write_text(f"name: returned\npatch:\n  sizes:\n  - 16\n  inference_size: 64\n"
                                              f"  inference_shifts: {want + 1}\n  seed: 0\ntraining:\n  steps: 7\n")
    monkeypatch.setattr(pipelines.prior_cards, "load_prior_for", lambda p: types.SimpleNamespace(card={"name": "r"}))
    _lease_eval().card(tmp_path)
    assert read_model_card(tmp_path) == {"format": "medrecon-model-card/1", "name": "returned", "training": {"steps": 7},
                                         "patch": {"sizes": [16], "inference_size": 64, "inference_shifts": want,
                                                   "seed": 0}}
    out = capsys.readouterr().out
    assert f"was {want + 1}; set to {want}" in out and "steps 7" in out
