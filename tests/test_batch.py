"""DICOM-folder batch: mirrored tree, manifest, a corrupt series, interruption and resumption, safe names."""
import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from medrecon.errors import InputError
from medrecon.io import read_volume

import pipelines.batching as batch_mod
from pipelines.batching import sanitize
from pipelines.cli import main
from dicom_trees import leaked, write_named_series, write_test_series  # noqa: E402

SETS = ["--set", "solver.name=fbp", "--set", "ct.image_size=16"]


def _series(folder, seed, description):
    write_test_series(folder, seed, description, size=24)


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "in"
    _series(root / "study A" / "ct", 1, "Abdomen 1.0")
    _series(root / "studyB" / "deep" / "ct", 2, "../../../escape me")
    bad = root / "studyB" / "broken"
    _series(bad, 3, "broken")
    for f in bad.iterdir():  # files cut inside the pixel data: listed as a series, but cannot be read
        f.write_bytes(f.read_bytes()[:-600])
    return root


def _manifest(out):
    return batch_mod.read_manifest(out / "manifest.csv")


def _run(tree, out, *extra):
    return main(["batch", str(tree), str(out), "--config", "sparse_view_ct_8", *SETS, *extra])


def test_batch_records_failures_and_resumes(tree, tmp_path):
    out = tmp_path / "out"
    assert _run(tree, out, "--dry-run") == 0 and not out.exists()
    assert _run(tree, out) == 1  # one series failed
    rows = _manifest(out)
    assert sorted(r["status"] for r in rows) == ["done", "done", "failed"]
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["input_path"] == "studyB/broken" and failed["error"] and str(tmp_path) not in failed["error"]
    for r in rows:
        p = out.resolve()
        assert not Path(r["output_path"]).is_absolute() and not Path(r["input_path"]).is_absolute()
        assert p in (out / r["output_path"]).resolve().parents  # nothing escapes OUTPUT_ROOT
        if r["status"] == "done":
            assert (out / r["output_path"] / "report.json").is_file()
            assert (out / r["output_path"] / "dicom").is_dir()
    assert not (out / "studyB" / "broken").exists()  # #13.15: no empty folder for the failed series
    escaped = next(r["output_path"] for r in rows if "escape" in r["output_path"])
    assert escaped.startswith("studyB/deep/ct/escape_me_")
    assert (out / "study_A" / "ct").is_dir()  # the tree is mirrored (sanitised folder names)

    # resume: finished series are skipped (no time spent), the broken one is tried again
    assert _run(tree, out) == 1
    again = {r["output_path"]: r for r in _manifest(out)}
    for r in rows:
        want = "skipped" if r["status"] == "done" else "failed"
        assert again[r["output_path"]]["status"] == want
    assert all(float(r["seconds"]) == 0.0 for r in again.values() if r["status"] == "skipped")


def test_interrupted_batch_redoes_the_half_written_series(tree, tmp_path, monkeypatch):
    out = tmp_path / "out"
    import pipelines.tasks as tasks
    real, good = tasks.reconstruct, []
    sets = ["solver.name=fbp", "ct.image_size=16"]

    def killed_on_second_good_series(*a, **k):
        if "broken" not in str(a[1]):
            good.append(a[2])
            if len(good) == 2:
                half = a[2].parent / f".medrecon-tmp-deadbeef-{a[2].name}"  # what a killed run leaves behind
                half.mkdir(parents=True)
                (half / "recon.nii.gz").write_text("half")
                raise KeyboardInterrupt
        return real(*a, **k)

    def rel(p):
        return p.relative_to(out.absolute()).as_posix()

    monkeypatch.setattr(batch_mod, "reconstruct", killed_on_second_good_series)
    with pytest.raises(KeyboardInterrupt):
        batch_mod.batch(tree, out, "sparse_view_ct_8", sets, echo=lambda s: None)
    status = {r["output_path"]: r["status"] for r in _manifest(out)}
    assert status[rel(good[0])] == "done" and status[rel(good[1])] == "pending"
    assert not (good[1] / "report.json").exists()
    monkeypatch.setattr(batch_mod, "reconstruct", real)
    res = batch_mod.batch(tree, out, "sparse_view_ct_8", sets, echo=lambda s: None)
    status = {r["output_path"]: r["status"] for r in res.rows}
    assert status[rel(good[0])] == "skipped" and status[rel(good[1])] == "done"
    assert sorted(status.values()) == ["done", "failed", "skipped"] and res.failed == 1
    assert not list(good[1].parent.glob(".medrecon-tmp-*"))  # the half-written folder is gone


def test_a_batch_interrupted_in_its_first_series_records_every_series_pending(tree, tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM) before the first series finished left no manifest at all, while the README says the
    series not reached stay 'pending'; the batch says so in one line and the interrupt goes on."""
    out, said = tmp_path / "out", []

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(batch_mod, "reconstruct", interrupted)
    with pytest.raises(KeyboardInterrupt):
        batch_mod.batch(tree, out, "sparse_view_ct_8", ["solver.name=fbp"], echo=said.append)
    assert [r["status"] for r in _manifest(out)] == ["pending"] * 3
    assert said[-1].startswith("interrupted: 3 series stay 'pending' in") and "rerun" in said[-1]


def _uid_of(out, row):
    return json.loads((out / row["output_path"] / "report.json").read_text())["series_uid"]


def test_resume_never_attaches_a_series_to_another_series_output(tmp_path):
    """#13.3: two series whose names collide get _2 in discovery order; when the order changes on a later
    run (here: the first one is moved away), each series still maps to its own output, never another's."""
    root, out = tmp_path / "in", tmp_path / "out"
    _series(root / "a", 1, "same")
    _series(root / "b", 2, "same")
    for ds_folder, uid in ((root / "a", "1.2.3.100000000001"), (root / "b", "1.2.3.200000000001")):
        for f in ds_folder.iterdir():  # UIDs with one tail, so the folder names collide
            import pydicom
            ds = pydicom.dcmread(f)
            ds.SeriesInstanceUID = uid
            ds.save_as(f)
    (root / "b").rename(root / "a" / "b")  # one mirrored folder for both
    (root / "a" / "sub").mkdir()
    assert _run(root, out, "--quiet") == 0
    rows = _manifest(out)
    first = {r["series_uid"]: r["output_path"] for r in rows}
    assert len(set(first.values())) == 2 and all(_uid_of(out, r) == r["series_uid"] for r in rows)
    report = json.loads((out / rows[0]["output_path"] / "report.json").read_text())
    assert report["input"] in ("a", "b") and str(tmp_path) not in json.dumps(report)  # #13.18: names only
    # a run without the manifest (lost) still finds each series' own output through its marker
    (out / "manifest.csv").unlink()
    assert _run(root, out, "--quiet") == 0
    assert {r["series_uid"]: r["output_path"] for r in _manifest(out)} == first
    assert all(r["status"] == "skipped" for r in _manifest(out))
    # the series discovered first disappears: the other keeps its folder (the mapping never changes)
    gone = next(r for r in rows if r["input_path"] == "a")
    import shutil
    shutil.move(str(root / "a" / "b"), str(root / "b2"))
    shutil.rmtree(root / "a")
    assert _run(root, out, "--quiet") == 0
    now = {r["series_uid"]: r for r in _manifest(out)}
    other = next(u for u in first if u != gone["series_uid"])
    assert now[other]["output_path"] == first[other] and now[other]["status"] == "skipped"
    assert now[gone["series_uid"]]["output_path"] == gone["output_path"]  # its row kept from the earlier run
    # a series whose files changed is not taken as finished
    next((root / "b2").iterdir()).unlink()
    assert _run(root, out, "--quiet") == 1
    changed = next(r for r in _manifest(out) if r["series_uid"] == other)
    assert "changed" in changed["error"] and "--overwrite" in changed["error"]


def test_top_level_folder_named_like_the_manifest_and_symlinked_series(tmp_path, capsys):
    """#13.9 and #13.17: a folder named manifest.csv is mirrored beside the manifest; a symlinked series
    folder is followed (a link loop is not)."""
    root, out = tmp_path / "in", tmp_path / "out"
    _series(root / "manifest.csv", 1, "m")
    _series(tmp_path / "elsewhere" / "ct", 2, "linked")
    (root / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)
    assert _run(root, out, "--quiet") == 0
    rows = _manifest(out)
    assert sorted(r["input_path"] for r in rows) == ["link/ct", "manifest.csv"]
    assert (out / "manifest.csv").is_file() and (out / "manifest.csv_").is_dir()
    assert not [p for p in out.iterdir() if p.name.startswith(".medrecon-tmp")]


def test_batch_overwrite_killed_keeps_the_outputs_the_manifest_lists(tree, tmp_path, monkeypatch):
    """#13.4: --overwrite interrupted: every folder the manifest lists still exists."""
    out = tmp_path / "out"
    assert _run(tree, out, "--quiet") == 1
    import pipelines.tasks as tasks
    seen = []

    def killed_while_solving(self, *a, **k):  # as if killed -9 here: nothing after this point runs
        seen.append(all((out / r["output_path"] / "report.json").is_file()
                        for r in _manifest(out) if r["status"] == "done"))
        raise KeyboardInterrupt

    monkeypatch.setattr(tasks.Problem, "solve", killed_while_solving)
    with pytest.raises(KeyboardInterrupt):
        batch_mod.batch(tree, out, "sparse_view_ct_8", ["solver.name=fbp", "ct.image_size=16"], overwrite=True,
                        echo=lambda s: None)
    assert seen == [True]
    for r in _manifest(out):
        if r["status"] in ("done", "pending"):
            assert (out / r["output_path"] / "report.json").is_file() or "broken" in r["input_path"]


def test_batch_progress_bars_and_unwritable_output(tree, tmp_path, capsys):
    """#13.14: a bar over the series and the per-series bars by default; #13.7: an unwritable output root is
    one line, exit 2."""
    out = tmp_path / "out"
    assert _run(tree, out) == 1
    err = capsys.readouterr().err
    assert "series" in err and "3/3" in err
    (tmp_path / "file").write_text("not a folder")
    code = _run(tree, tmp_path / "file" / "out")
    err = capsys.readouterr().err
    assert code == 2 and "error: cannot create the output root" in err and "Traceback" not in err


def test_sanitize():
    assert sanitize("../../etc/passwd") == "etc_passwd"
    assert sanitize("..") == "series" and sanitize("") == "series"
    assert sanitize("a b/c\\d:e") == "a_b_c_d_e"
    assert len(sanitize("x" * 500)) == 64
    assert sanitize("...hidden") == "hidden"


def test_a_series_split_over_sub_folders_is_read_whole_and_unreadable_folders_are_recorded(tmp_path, capsys):
    """A series with files in a folder and its sub-folder is reconstructed from all of them and is finished on
    a rerun; a folder whose DICOM files are all damaged is a failed manifest row, not left out."""
    import nibabel as nib
    root, out = tmp_path / "in", tmp_path / "out"
    _series(root / "split", 1, "split")
    (root / "split" / "more").mkdir()
    moved = sorted(p for p in (root / "split").iterdir() if p.is_file())[-1]
    moved.rename(root / "split" / "more" / moved.name)
    _series(root / "garbled", 2, "garbled")
    for f in (root / "garbled").iterdir():
        f.write_bytes(f.read_bytes()[:300])  # cut inside the header
    assert _run(root, out, "--quiet") == 1
    rows = {r["input_path"]: r for r in _manifest(out)}
    assert rows["garbled"]["status"] == "failed" and "none of its 3 DICOM file(s) can be read" in \
        rows["garbled"]["error"]
    assert rows["split"]["status"] == "done"
    assert nib.load(out / rows["split"]["output_path"] / "recon.nii.gz").shape[2] == 3  # all three slices
    assert _run(root, out, "--quiet") == 1 and _manifest(out)[-1]["status"] == "skipped"
    next((root / "split" / "more").iterdir()).unlink()
    capsys.readouterr()
    assert _run(root, out, "--dry-run") == 0
    assert "conflict (changed)" in capsys.readouterr().out  # the real run would fail it: it says so


def test_a_rerun_with_another_config_does_not_pass_the_old_outputs_off_as_finished(tmp_path, capsys):
    root, out = tmp_path / "in", tmp_path / "out"
    _series(root / "s1", 1, "one")
    assert _run(root, out, "--quiet") == 0
    assert _run(root, out, "--quiet") == 0 and _manifest(out)[0]["status"] == "skipped"  # the same config
    assert _run(root, out, "--quiet", "--set", "solver.device=cpu") == 0  # where it runs changes no result
    assert _manifest(out)[0]["status"] == "skipped"
    other = ["--set", "solver.name=fbp", "--set", "ct.image_size=24"]
    code = main(["batch", str(root), str(out), "--config", "sparse_view_ct_8", *other, "--quiet"])
    row = _manifest(out)[0]  # a conflict, not a failure: its earlier output stands (the row said 'failed')
    assert code == 1 and row["status"] == "conflict" and "made with another config" in row["error"]
    assert "conflict: --overwrite redoes them" in capsys.readouterr().err
    assert main(["batch", str(root), str(out), "--config", "sparse_view_ct_8", *other, "--quiet",
                 "--overwrite"]) == 0
    report = json.loads((out / _manifest(out)[0]["output_path"] / "report.json").read_text())
    assert report["grid"]["size"] == 24


def test_an_empty_output_folder_is_free_and_a_dicom_file_of_any_name_gets_dicom_outputs(tmp_path):
    from pipelines.tasks import reconstruct
    _series(tmp_path / "s", 1, "one")
    single = tmp_path / "IM0002"  # one DICOM file without the .dcm suffix
    single.write_bytes(sorted((tmp_path / "s").iterdir())[1].read_bytes())
    (tmp_path / "out").mkdir()  # made ready, empty
    reconstruct("sparse_view_ct_8", single, tmp_path / "out", ["solver.name=fbp", "ct.image_size=16"])
    assert (tmp_path / "out" / "dicom").is_dir() and (tmp_path / "out" / "recon.nii.gz").is_file()


def test_a_folder_name_that_is_not_utf8_survives_the_manifest_and_its_rerun(tmp_path):
    root, out = tmp_path / "in", tmp_path / "out"
    latin1 = root / os.fsdecode(b"M\xfcller")  # copied from a Latin-1 share
    _series(latin1, 1, "one")
    _series(root / "z_last", 2, "two")
    assert _run(root, out, "--quiet") == 0
    rows = _manifest(out)
    assert sorted(r["status"] for r in rows) == ["done", "done"] and (out / "index.html").is_file()
    latin = next(r for r in rows if r["input_path"] != "z_last")
    assert root / latin["input_path"] == latin1 and latin1.is_dir()  # the folder's own bytes, found again
    assert _run(root, out, "--quiet") == 0 and {r["status"] for r in _manifest(out)} == {"skipped"}


def test_anonymised_series_without_uids_are_one_per_folder_and_finished_on_a_rerun(tmp_path):
    """SeriesInstanceUID blanked (TotalSegmentator's example series, anonymised exports): the files of every
    folder were merged into one series, and each rerun wrote a new copy (CT_Body, CT_Body_2, ...)."""
    import pydicom
    from medrecon import Volume
    from medrecon.io import write_dicom_series
    root, out = tmp_path / "in", tmp_path / "out"
    for name, seed in (("patient1", 1), ("patient2", 2)):
        _series(root / name, seed, "anon")
    hu = np.full((5, 24, 24), -1000.0, np.float32)  # a larger series in a sub-folder: 70 HU
    hu[:, 6:18, 6:18] = 70.0
    write_dicom_series(Volume(hu, spacing=(2.0, 2.0, 3.0), meta={"dicom": {"Modality": "CT"}}), root / "patient2/sub")
    for name in ("patient1", "patient2", "patient2/sub"):
        for f in (root / name).iterdir():
            if f.is_file():
                ds = pydicom.dcmread(f)
                ds.SeriesInstanceUID = ""
                ds.save_as(f)
    for _ in range(2):
        assert _run(root, out, "--quiet") == 0
    rows = _manifest(out)
    assert sorted(r["input_path"] for r in rows) == ["patient1", "patient2", "patient2/sub"]
    assert [r["status"] for r in rows] == ["skipped"] * 3
    tissue = {"patient1": 50.0, "patient2": 60.0, "patient2/sub": 70.0}  # 40 + 10 seed HU (dicom_trees); 70
    for r in rows:  # each output made from its own folder's files (a folder read the UID-less series below it too)
        ref = read_volume(out / r["output_path"] / "simulation" / "reference.nii.gz").data
        assert float(np.median(ref[ref > -500])) == pytest.approx(tissue[r["input_path"]], abs=1.0)
    assert sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("report.json")) == \
        sorted(r["output_path"] for r in rows)  # no second copies


def test_deidentified_series_without_a_uid_keep_their_output_folders(tmp_path):
    """De-identified, series without a SeriesInstanceUID were named by position (series-, series-_2): with one
    input moved away the other took the first's folder, a 'conflict', and --overwrite put its reconstruction over
    the first's. Now each is named by the tail of its input_label."""
    import pydicom

    from medrecon.io.deidentify import input_label
    root, out = tmp_path / "in", tmp_path / "out"
    for name, seed in (("patient1", 1), ("patient2", 2)):
        _series(root / name, seed, "anon")
        for f in (root / name).iterdir():
            ds = pydicom.dcmread(f)
            ds.SeriesInstanceUID = ""
            ds.save_as(f)
    deid = ["--set", "outputs.deidentify=true", "--quiet"]
    assert _run(root, out, *deid) == 0
    made = {r["input_path"]: r["output_path"] for r in _manifest(out)}
    assert sorted(made.values()) == sorted(f"input-{label[-12:]}" for label in made)
    shutil.move(root / "patient1", tmp_path / "patient1")
    assert _run(root, out, *deid) == 0
    assert [(r["status"], r["output_path"]) for r in _manifest(out)] == \
        [("skipped", made[input_label(root / "patient2")])]


def test_a_users_manifest_or_index_in_the_output_root_stops_the_batch(tmp_path, capsys):
    root, out = tmp_path / "in", tmp_path / "out"
    _series(root / "s1", 1, "one")
    out.mkdir()
    (out / "manifest.csv").write_text("patient,notes\nP1,keep me\n")
    assert _run(root, out, "--quiet") == 2 and "is not a medrecon batch manifest" in capsys.readouterr().err
    assert (out / "manifest.csv").read_text() == "patient,notes\nP1,keep me\n"  # kept (it was replaced before)
    (out / "manifest.csv").unlink()
    (out / "index.html").write_text("<html>Reconstructions made with medrecon by J. Smith</html>")  # its name
    assert _run(root, out, "--quiet") == 2 and "is not a medrecon batch page" in capsys.readouterr().err
    (out / "index.html").unlink()
    elsewhere = tmp_path / "notes.md"
    elsewhere.write_text("my medrecon notes")
    (out / "index.html").symlink_to(elsewhere)  # written through, the batch page replaced a file outside the root
    assert _run(root, out, "--quiet") == 2 and "index.html is a symbolic link" in capsys.readouterr().err
    assert elsewhere.read_text() == "my medrecon notes"
    (out / "index.html").unlink()
    (out / ".medrecon-batch.lock").symlink_to(tmp_path / "created_by_lock")  # a dangling link: not created
    assert _run(root, out, "--quiet") == 2 and not (tmp_path / "created_by_lock").exists()
    (out / ".medrecon-batch.lock").unlink()
    assert _run(root, out, "--quiet") == 0 and _run(root, out, "--quiet") == 0  # its own files: a rerun goes on


def test_manifest_cells_read_back_as_written(tmp_path):
    names = ["=x", "'=x", "''", "-2+3", "+1", "@SUM(1)", "\tA", "plain", "it's"]
    rows = [{"series_uid": "1.2", "input_path": n, "output_path": "o", "status": "done", "seconds": "1",
             "error": ""} for n in names]
    batch_mod.write_manifest(tmp_path / "m.csv", rows)
    text = (tmp_path / "m.csv").read_text()
    assert not re.search(r"^[=+\-@\t]|,[=+\-@\t]", text, re.M)
    assert [r["input_path"] for r in batch_mod.read_manifest(tmp_path / "m.csv")] == names


def test_a_manifest_of_an_older_version_counts_its_series_passed_over(tmp_path):
    """A series passed over as no volume was told from one skipped as finished by its error's tail; it has its own
    status now (``PASSED_OVER``), which an older manifest's row (``skipped``, ``no_volume_reason``) reads back as."""
    def row(uid, status, error=""):
        return {"series_uid": uid, "input_path": "", "output_path": "", "status": status, "seconds": "0.0",
                "error": error}
    batch_mod.write_manifest(tmp_path / "m.csv", [row("1", "skipped", "a RTSTRUCT object, not a volume to reconstruct"),
                                                  row("2", "skipped"), row("3", "done")])
    rows = batch_mod.read_manifest(tmp_path / "m.csv")
    assert [r["status"] for r in rows] == ["passed over", "skipped", "done"]
    assert batch_mod.BatchResult(tmp_path / "m.csv", rows).summary() == "2 ok, 1 passed over (not a volume), 0 failed"


def test_manifest_cells_are_no_formulas_and_errors_never_name_the_input_root(tmp_path):
    """A folder or UID starting with = ran as a formula in a spreadsheet; an error about a series lying in
    INPUT_ROOT itself named the root's absolute path (often a patient's name) in the manifest and the page."""
    root, out = tmp_path / "Doe_John_CT", tmp_path / "out"
    write_test_series(root, 2, "two", size=24, slices=4)
    _series(root / "=HYPERLINK(1)", 1, "one")
    _series(root / "-2+3", 3, "three")
    _series(root / "@SUM(1)", 4, "four")
    sorted(root.glob("*.dcm"))[1].unlink()  # the flat series in the root itself: a missing slice, an error naming it
    _run(root, out, "--quiet")
    text = (out / "manifest.csv").read_text()
    assert not re.search(r"(^|,)[=+\-@]", text, re.M) and "'=HYPERLINK(1)" in text and "'-2+3" in text
    rows = _manifest(out)
    flat = next(r for r in rows if r["input_path"] == ".")
    assert flat["status"] == "failed" and flat["error"].startswith("InputError: .: ")  # the root's path named '.'
    assert str(root) not in text and str(root) not in (out / "index.html").read_text()
    assert {r["input_path"] for r in rows} == {"=HYPERLINK(1)", "-2+3", "@SUM(1)", "."}  # read back as named
    assert _run(root, out, "--quiet") in (0, 1) and len(_manifest(out)) == 4  # a rerun matches its rows


def test_reconstructions_under_the_input_tree_are_not_reconstructed_again(tmp_path, capsys):
    """An input tree that reaches the output root (here through a link) lists the batch's own derived series:
    they are passed over (they grew a chain of reconstructions of reconstructions); a series medrecon wrote
    from a user's volume (write_dicom_series, as `medrecon convert` does) is a scan and is reconstructed."""
    root, out = tmp_path / "in", tmp_path / "out"
    _series(root / "p0" / "ct", 1, "scan")
    out.mkdir()
    (root / "results").symlink_to(out, target_is_directory=True)
    assert _run(root, out, "--quiet") == 0
    assert _run(root, out, "--quiet") == 0
    rows = _manifest(out)
    assert [r["input_path"] for r in rows] == ["p0/ct"] and rows[0]["status"] == "skipped"
    assert "pass    results/p0/ct/" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["index.html", "manifest.csv", "p0"]


def test_a_second_batch_into_the_same_output_root_is_refused_while_the_first_runs(tree, tmp_path, capsys):
    import fcntl
    out = tmp_path / "out"
    out.mkdir()
    with open(out / batch_mod.LOCK, "a") as held:  # the first batch holds the root
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert _run(tree, out, "--quiet") == 2
        assert "another batch is writing into" in capsys.readouterr().err
        assert not (out / "manifest.csv").exists()
    assert _run(tree, out, "--quiet") == 1  # released: runs (the broken series fails as always)
    assert not (out / batch_mod.LOCK).exists()  # removed by the batch that held it (an empty file was left behind)


def test_a_second_batch_is_refused_before_it_lists_the_input_tree(tree, tmp_path, capsys, monkeypatch):
    """Listing a large input tree reads every DICOM header (minutes on a PACS export): a second batch into a
    root that another holds spent that time before it was refused. The lock is now taken first where the output
    root exists (where it does not, no batch can hold it, and an input with nothing to do must create nothing)."""
    import fcntl
    out = tmp_path / "out"
    out.mkdir()
    listed = []
    monkeypatch.setattr(batch_mod, "list_series", lambda *a, **k: listed.append(a) or [])
    with open(out / batch_mod.LOCK, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert _run(tree, out, "--quiet") == 2
    assert "another batch is writing into" in capsys.readouterr().err and listed == []
    assert _run(tree, out, "--quiet") == 2 and len(listed) == 1  # released: listed (here: nothing found)
    assert "no DICOM series to reconstruct" in capsys.readouterr().err and list(out.iterdir()) == []


def test_the_lock_file_is_removed_by_its_holder_and_a_batch_that_locked_a_removed_one_tries_again(tmp_path,
                                                                                                  monkeypatch):
    """batch_lock removes LOCK when its batch ends, still holding it. A second batch that opened the file just
    before that removal gets its flock once the first lets go, on a file no longer at the path: it tries again
    on the path's file, so it is refused while a third batch holds a new one (without the check both ran)."""
    import fcntl
    from pipelines.batching import batch_lock
    out = tmp_path / "out"
    out.mkdir()
    with batch_lock(out):
        assert (out / batch_mod.LOCK).is_file()
        with pytest.raises(InputError, match="another batch is writing into"):
            with batch_lock(out):
                pass
    assert list(out.iterdir()) == []  # the holder took its lock file with it

    real_flock, third = fcntl.flock, []

    def first_holder_ends_and_a_third_begins(f, how):  # between this batch's open and its flock
        if not third:
            os.unlink(out / batch_mod.LOCK)  # the first holder's removal
            third.append(open(out / batch_mod.LOCK, "a"))
            real_flock(third[0], fcntl.LOCK_EX | fcntl.LOCK_NB)  # the third batch holds the new file
        return real_flock(f, how)
    monkeypatch.setattr(batch_mod.fcntl, "flock", first_holder_ends_and_a_third_begins)
    with pytest.raises(InputError, match="another batch is writing into"):
        with batch_lock(out):
            pass
    os.unlink(out / batch_mod.LOCK)  # the third batch ends; in a fourth, the file it opened is removed before it locks
    third[0].close()
    calls = []

    def first_holder_ends(f, how):
        calls.append(f)
        if len(calls) == 1:
            os.unlink(out / batch_mod.LOCK)
        return real_flock(f, how)
    monkeypatch.setattr(batch_mod.fcntl, "flock", first_holder_ends)
    with batch_lock(out):  # it locks the path's new file
        assert len(calls) == 2 and os.path.samestat(os.fstat(calls[1].fileno()), os.stat(out / batch_mod.LOCK))
    assert not (out / batch_mod.LOCK).exists()


def test_a_batch_of_nifti_files_names_one_and_the_command_that_reads_it(tmp_path, capsys):
    """Sixty-third session: a tree of NIfTI/MetaImage files was told only that it holds no DICOM series."""
    import nibabel as nib
    (root := tmp_path / "in" / "p1").mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.eye(4)), root / "ct.nii.gz")
    assert _run(tmp_path / "in", out := tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"it holds 1 NIfTI or NRRD/MetaImage file(s), e.g. {Path('p1/ct.nii.gz')}" in err
    assert f"medrecon reconstruct -i {root / 'ct.nii.gz'}" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_batch_with_nothing_to_reconstruct_creates_nothing(tmp_path, capsys):
    """An input root without a series to reconstruct is refused before the output root (and its lock file) is
    made."""
    (root := tmp_path / "in").mkdir()
    assert _run(root, out := tmp_path / "out") == 2
    assert f"no DICOM series to reconstruct under {root}" in capsys.readouterr().err and not out.exists()
    out.mkdir()  # an existing output root is left as it was
    assert _run(root, out) == 2 and list(out.iterdir()) == []
    import pydicom
    _series(root / "scout", 1, "scout")  # only a series that is no scan
    for f in (root / "scout").iterdir():
        ds = pydicom.dcmread(f)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.save_as(f)
    capsys.readouterr()
    assert _run(root, out2 := tmp_path / "out2") == 2 and not out2.exists()
    assert "(only 1 series that are no scans, e.g. a localizer" in capsys.readouterr().err


def test_folder_names_that_sanitise_alike_stay_apart(tmp_path):
    """Two patients' folders must not merge into one output folder ('Müller, Jörg' and 'Müller, Jürg', names in
    another script), and a top-level folder named index.html is mirrored beside the batch's page."""
    root, out = tmp_path / "in", tmp_path / "out"
    for k, name in enumerate(["Müller, Jörg", "Müller, Jürg", "山田太郎", "鈴木一郎", "index.html", "study A"], 1):
        _series(root / name, k, "s")
    assert _run(root, out, "--quiet") == 0
    tops = {Path(r["output_path"]).parts[0] for r in _manifest(out)}
    assert len(tops) == 6 and "index.html_" in tops and "study_A" in tops
    assert {t.split("-")[0] for t in tops} >= {"Muller_Jorg", "Muller_Jurg", "folder"}
    assert (out / "index.html").is_file()
    # a series' own folder: accents dropped, and a long description (DICOM allows 64) never cuts the UID's digits
    _series(tmp_path / "in2" / "a", 1, "Thorax Übersicht")
    _series(tmp_path / "in2" / "b", 2, "A" * 60)
    assert _run(tmp_path / "in2", out2 := tmp_path / "out2", "--quiet") == 0
    leaves = {Path(r["output_path"]).name: r["series_uid"] for r in _manifest(out2)}
    assert all(name.endswith(uid[-12:]) for name, uid in leaves.items()) and len(max(leaves, key=len)) <= 64
    assert any(name.startswith("Thorax_Ubersicht_") for name in leaves), leaves


def test_damaged_files_are_named_in_the_manifest(tmp_path):
    """A series read without a damaged end slice is done, and its row says which file was left out (also one with
    an intact header whose pixel data is cut short); a damaged middle slice (or an empty .dcm) fails naming the
    file, not just uneven spacing."""
    root, out = tmp_path / "in", tmp_path / "out"
    cuts = {"header": lambda b: b[:300], "pixels": lambda b: b[:-600], "empty": lambda b: b""}
    for name, k, cut in (("end", 3, "header"), ("pixels", 3, "pixels"), ("mid", 1, "header"), ("empty", 1, "empty")):
        write_test_series(root / name, 1, name, size=24, slices=4)
        f = sorted((root / name).iterdir())[k]
        f.write_bytes(cuts[cut](f.read_bytes()))
    assert _run(root, out, "--quiet") == 1
    rows = {r["input_path"]: r for r in _manifest(out)}
    for name in ("end", "pixels"):
        end_file = sorted((root / name).iterdir())[3].name
        assert rows[name]["status"] == "done", rows[name]
        assert rows[name]["error"].startswith(f"read without 1 damaged file(s): {name}/{end_file} ("), rows[name]
    for name in ("mid", "empty"):
        bad = sorted((root / name).iterdir())[1].name
        assert rows[name]["status"] == "failed" and bad in rows[name]["error"], rows[name]
        assert "damaged" in rows[name]["error"] and str(tmp_path) not in rows[name]["error"]
    report = json.loads((out / rows["end"]["output_path"] / "report.json").read_text())
    assert report["input_warnings"] and str(tmp_path) not in json.dumps(report)  # names, not the folders above


def test_the_manifest_keeps_earlier_runs_series_from_other_input_folders(tmp_path):
    """A lab runs each day's inbox into one output root: the manifest and the page keep every day's series."""
    out = tmp_path / "out"
    _series(tmp_path / "monday" / "ct", 1, "mon")
    _series(tmp_path / "tuesday" / "ct", 2, "tue")
    assert _run(tmp_path / "monday", out, "--quiet") == 0
    assert _run(tmp_path / "tuesday", out, "--quiet") == 0
    rows = _manifest(out)
    assert sorted(r["status"] for r in rows) == ["done", "done"] and len({r["series_uid"] for r in rows}) == 2
    page = (out / "index.html").read_text()
    assert all(r["output_path"] in page for r in rows)


def test_a_file_system_without_locks_runs_the_batch_with_a_warning(tree, tmp_path, monkeypatch, caplog):
    """NFS mounted nolock (ENOLCK), SMB/FUSE without flock (EOPNOTSUPP): the lock cannot be taken, which is not
    another batch holding it; the batch runs (it was refused for good with a false reason)."""
    import errno as errno_mod

    def no_locks(f, how):
        raise OSError(errno_mod.ENOLCK, "No locks available")
    monkeypatch.setattr(batch_mod.fcntl, "flock", no_locks)
    assert _run(tree, tmp_path / "out", "--quiet") == 1  # the broken series fails as always; the others run
    assert "running without the lock" in caplog.text
    assert sorted(r["status"] for r in _manifest(tmp_path / "out")) == ["done", "done", "failed"]


def test_scouts_screenshots_and_rt_objects_in_a_study_export_are_passed_over_not_failed(tmp_path):
    """A study export holds the scout, dose screenshots and RT dose beside the CT: each was a job (a scout
    reconstructed and marked done, the others failed, so the batch exited 1). They are passed over, said why."""
    import pydicom
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid
    root = tmp_path / "in"
    _series(root / "study" / "ct", 1, "Abdomen")
    for name, change in (("scout", lambda ds: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"])),
                         ("dose", lambda ds: setattr(ds, "Modality", "RTDOSE")),
                         ("protocol", lambda ds: (setattr(ds, "SOPClassUID", SecondaryCaptureImageStorage),
                                                  delattr(ds, "ImagePositionPatient"))),
                         ("sc_volume", lambda ds: setattr(ds, "SOPClassUID", SecondaryCaptureImageStorage))):
        _series(root / "study" / name, 2, name)
        uid = generate_uid()
        for f in (root / "study" / name).iterdir():
            ds = pydicom.dcmread(f)
            ds.SeriesInstanceUID, ds.Manufacturer = uid, "scanner"
            change(ds)
            ds.save_as(f)
    said = []
    batch_mod.batch(root, tmp_path / "out", "sparse_view_ct_8", dry_run=True, echo=said.append)
    assert sum(s.startswith("run ") for s in said) == 2  # the CT, and a volume SimpleITK wrote as secondary capture
    passed = sorted(s for s in said if s.startswith("pass"))
    assert len(passed) == 3 and "study/dose: a RTDOSE object, not a volume to reconstruct" in passed[0]
    assert "study/protocol: a secondary capture" in passed[1] and "study/scout: a localizer (scout)" in passed[2]


def test_the_dry_run_reads_each_output_marker_once(tmp_path, monkeypatch):
    """The dry run read a finished output's marker three times (run?, skip?, its state) and a new one's twice;
    once each now, and not at all with --overwrite (every series is run)."""
    root, out = tmp_path / "in", tmp_path / "out"
    _series(root / "a", 1, "A")
    assert _run(root, out, "--quiet") == 0
    _series(root / "b", 2, "B")
    reads, read_marker = [], batch_mod.read_marker
    monkeypatch.setattr(batch_mod, "read_marker", lambda f: reads.append(Path(f)) or read_marker(f))
    assert _run(root, out, "--dry-run") == 0
    outputs = [r for r in reads if out in r.parents]
    assert len(outputs) == 2 and len(set(outputs)) == 2  # the finished one and the new one's folder
    reads.clear()
    assert _run(root, out, "--dry-run", "--overwrite") == 0 and not [r for r in reads if out in r.parents]


def test_a_deidentified_rerun_reads_each_output_marker_once(tmp_path, monkeypatch):
    """A de-identified rerun read every earlier output's marker twice: for ``check_key`` (the key that made them)
    and again for the series' state (skip it or not). The dry run, which writes nothing, now acts on those read for
    ``check_key``: once each. A run reads each again at the series' turn (an output may be removed or replaced while
    earlier series run: test_a_deidentified_rerun_rebuilds_an_output_removed_while_an_earlier_series_ran): twice
    each, no more."""
    root, out = tmp_path / "in", tmp_path / "out"
    write_named_series(root / "p1" / "s1", seed=1)
    write_named_series(root / "p2" / "s2", seed=2, surname="Oakenshield", given="Tamsin", patient_id="PID0815")
    deid = ["--set", "outputs.deidentify=true", "--quiet"]
    assert _run(root, out, *deid) == 0
    reads, read_marker = [], batch_mod.read_marker
    monkeypatch.setattr(batch_mod, "read_marker", lambda f: reads.append(Path(f)) or read_marker(f))
    for dry, each in ((["--dry-run"], 1), ([], 2)):
        reads.clear()
        assert _run(root, out, *deid, *dry) == 0
        outputs = [r for r in reads if out in r.parents]
        assert len(set(outputs)) == 2 and all(outputs.count(o) == each for o in outputs), (dry, outputs)
    assert [r["status"] for r in _manifest(out)] == ["skipped", "skipped"]


def test_a_deidentified_rerun_rebuilds_an_output_removed_while_an_earlier_series_ran(tmp_path, monkeypatch):
    """A de-identified rerun acted on each output's marker as read at the batch's start (for ``check_key``): an
    output removed while an earlier series ran was recorded 'skipped', and stayed missing. The run now reads it at
    the series' turn and rebuilds it, as a batch that is not de-identified does."""
    root, out = tmp_path / "in", tmp_path / "out"
    write_named_series(root / "p1" / "s1", seed=1)
    write_named_series(root / "p2" / "s2", seed=2, surname="Oakenshield", given="Tamsin", patient_id="PID0815")
    deid = ["--set", "outputs.deidentify=true", "--quiet"]
    assert _run(root, out, *deid) == 0
    outputs = {p for p in out.iterdir() if p.is_dir()}
    assert len(outputs) == 2
    removed, run_series = [], batch_mod.run_series

    def first_then_remove_the_other(job, cfg, **kw):
        row = run_series(job, cfg, **kw)
        if not removed:  # the user removes the other series' output while this one is handled
            removed.append((outputs - {job.output}).pop())
            shutil.rmtree(removed[0])
        return row
    monkeypatch.setattr(batch_mod, "run_series", first_then_remove_the_other)
    assert _run(root, out, *deid) == 0
    rows = {out / r["output_path"]: r["status"] for r in _manifest(out)}
    assert rows[removed[0]] == "done" and list(rows.values()).count("skipped") == 1, rows
    assert removed[0].is_dir() and batch_mod.read_marker(removed[0]) is not None


def test_the_dry_run_says_an_enhanced_series_will_fail_as_the_run_then_does(tmp_path, capsys):
    """The dry run listed an enhanced multi-frame series as `run`, and the real run then failed it: both now decide
    from the same headers (``dicom_scan.refusal``), and the dry run prints the run's reason."""
    import pydicom
    from pydicom.dataset import Dataset
    root = tmp_path / "in"
    _series(root / "ct", 1, "Abdomen")
    _series(root / "enhanced", 2, "Enhanced")
    for f in (root / "enhanced").iterdir():
        ds = pydicom.dcmread(f)
        ds.SharedFunctionalGroupsSequence = [Dataset()]
        ds.save_as(f)
    said = []
    batch_mod.batch(root, tmp_path / "out", "sparse_view_ct_8", dry_run=True, echo=said.append)
    why = "is a multi-frame (enhanced) DICOM image, whose geometry lives in functional groups"
    assert sorted(s.split()[0] for s in said) == ["fail", "run"]
    fail = next(s for s in said if s.startswith("fail"))
    assert why in fail and str(root / "enhanced") in fail
    assert _run(root, tmp_path / "out", "--quiet") == 1
    rows = {r["input_path"]: r for r in _manifest(tmp_path / "out")}
    assert rows["ct"]["status"] == "done" and rows["enhanced"]["status"] == "failed" and why in rows["enhanced"]["error"]


def test_a_scan_series_holding_a_scout_is_still_a_job(tmp_path):
    """Whether a series is a scan is decided over all its files, not the first listed (a scout filed in the CT's
    own series, listed first, would have passed the whole CT over)."""
    import pydicom
    root = tmp_path / "in"
    _series(root / "ct", 1, "Abdomen")
    first = sorted((root / "ct").iterdir())[0]
    ds = pydicom.dcmread(first)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(root / "ct" / "0_scout.dcm")  # listed first
    said = []
    batch_mod.batch(root, tmp_path / "out", "sparse_view_ct_8", dry_run=True, echo=said.append)
    assert sum(s.startswith("run ") for s in said) == 1 and not any(s.startswith("pass") for s in said)


def test_error_paths_are_relative_to_the_input_root_however_it_is_given(tmp_path, monkeypatch, capsys):
    """With INPUT_ROOT given as a relative path, the error of a folder whose DICOM files are all damaged named a file
    relative to the working directory (in/garbled/...) in the console, manifest.csv and index.html; it is relative
    to INPUT_ROOT (garbled/...) wherever the batch is started from, as the README says."""
    import html
    root = tmp_path / "in"
    _series(root / "good", 1, "good")
    _series(root / "garbled", 2, "garbled")
    for f in (root / "garbled").iterdir():
        f.write_bytes(f.read_bytes()[:300])  # cut inside the header
    errors = set()
    for cwd, given, out in ((tmp_path, "in", "out1"), (tmp_path, "./in/", "out2"), (root, ".", "../out3"),
                            (tmp_path.parent, root, tmp_path / "out4")):
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        assert _run(given, out) == 1
        row = next(r for r in _manifest(Path(out)) if r["status"] == "failed")
        assert row["input_path"] == "garbled" and re.search(r", e\.g\. garbled/[^/ ]+ \(", row["error"]), row["error"]
        assert f"failed  garbled: {row['error']}" in capsys.readouterr().out
        assert html.escape(row["error"]) in (Path(out) / "index.html").read_text()
        errors.add(row["error"])
    assert len(errors) == 1


def test_an_interrupted_batch_leaves_no_empty_folders_and_writes_its_page(tree, tmp_path, monkeypatch):
    """Ctrl-C in a series left the folders made for its output behind, empty, and a batch interrupted before any
    series finished wrote no index.html; now only what finished stays, and the page lists the rest 'pending'."""
    import pipelines.tasks as tasks
    real, calls = tasks.Problem.solve, []

    def interrupted(self, *a, **k):  # inside reconstruct's output folder, as a Ctrl-C mid-solve
        calls.append(1)
        if len(calls) == stop:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(tasks.Problem, "solve", interrupted)
    for stop, out in ((1, tmp_path / "first"), (2, tmp_path / "second")):
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            batch_mod.batch(tree, out, "sparse_view_ct_8", ["solver.name=fbp", "ct.image_size=16"], echo=print)
        status = [r["status"] for r in _manifest(out)]  # the broken series fails wherever it comes
        assert status.count("done") == stop - 1 and status.count("pending") == 3 - status.count("failed") - stop + 1
        assert not [p for p in out.rglob("*") if p.is_dir() and not any(p.iterdir())]  # no empty folders
        assert (out / "index.html").read_text().count("<td>pending</td>") == status.count("pending")


def test_a_series_failing_inside_its_output_folder_leaves_no_empty_folders(tree, tmp_path, monkeypatch):
    """A series that failed after its output was begun (in a temporary sibling folder) left the folders above it
    empty: the output folder itself was never made, and the pruning stopped there."""
    import pipelines.tasks as tasks

    def fails(self, *a, **k):
        raise RuntimeError("solver blew up")

    monkeypatch.setattr(tasks.Problem, "solve", fails)
    out = tmp_path / "out"
    assert batch_mod.batch(tree, out, "sparse_view_ct_8", ["solver.name=fbp"], echo=lambda s: None).failed == 3
    assert not [p for p in out.rglob("*") if p.is_dir()]


def test_a_deidentified_batch_holds_no_identifier_and_resumes(tmp_path, monkeypatch, capsys):
    """With outputs.deidentify the manifest, index.html, every series' report.json and marker, and the folder names
    kept what identifies the source: its UIDs, its folders' names (mirrored, and in input_path and the errors),
    its SeriesDescription (the output's name), its file names. Now the rows go by the de-identified UID and a keyed
    pseudonym of the input folder, the outputs by the de-identified UID; a rerun skips what is done; a batch
    without de-identification into the same root (or the other way round) is refused, and so is one with another
    key or none (it made a new key and redid every series under new names)."""
    root, out = tmp_path / "in", tmp_path / "out"
    said = write_named_series(root / "Zyxwaldo_Quintessa_PID4711" / "CT_20240229", seed=1)
    said += write_named_series(root / "Oakenshield_Tamsin_PID0815", seed=2, surname="Oakenshield", given="Tamsin",
                               patient_id="PID0815", damaged="pixels")
    said += write_named_series(root / "Quimby_Ferdinand_PID2323", seed=3, surname="Quimby", given="Ferdinand",
                               patient_id="PID2323", damaged="header")
    deid = ["--set", "outputs.deidentify=true", "--quiet"]
    config = os.environ["XDG_CONFIG_HOME"]
    assert _run(root, out, *deid) == 1  # the damaged series fail: one read, one not even listed
    assert leaked(out, said) == []
    rows = sorted(_manifest(out), key=lambda r: r["status"])
    assert [r["status"] for r in rows] == ["done", "failed", "failed"] and all(r["error"] for r in rows[1:])
    assert all(re.fullmatch(r"input-[0-9a-f]{16}", r["input_path"]) for r in rows)
    assert rows[0]["series_uid"] == _uid_of(out, rows[0])
    report = json.loads((out / rows[0]["output_path"] / "report.json").read_text())
    assert report["input"] == rows[0]["input_path"]
    assert _run(root, out, *deid) == 1
    assert sorted(r["status"] for r in _manifest(out)) == ["failed", "failed", "skipped"] and leaked(out, said) == []
    assert _run(root, out, "--quiet") == 2 and leaked(out, said) == []  # not de-identified: refused there
    # another key, or none: a new key was made and every series reconstructed again under new names (7 rows)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "elsewhere"))
    assert _run(root, out, *deid) == 2 and len(_manifest(out)) == 3
    assert not (tmp_path / "elsewhere").exists()  # no key made
    err = capsys.readouterr().err
    assert "the key they were made with is not at" in err and str(tmp_path / "elsewhere") in err
    monkeypatch.setenv("MEDRECON_DEID_KEY", "another site's secret, long enough")
    assert _run(root, out, *deid) == 2 and len(_manifest(out)) == 3
    assert "de-identified with another key" in capsys.readouterr().err
    monkeypatch.delenv("MEDRECON_DEID_KEY")
    monkeypatch.setenv("XDG_CONFIG_HOME", config)
    assert _run(root, tmp_path / "plain", "--quiet") == 1
    assert _run(root, tmp_path / "plain", *deid) == 2


def test_a_deidentified_root_made_before_key_fingerprints_warns_a_batch_whose_key_may_not_be_theirs(
        tmp_path, monkeypatch, caplog):
    """Outputs written before the key's fingerprint was recorded hold none, so a batch there with another key was
    not refused: it reconstructed every series again beside them under new names, without a word. Now it warns
    once, naming the root, unless one of those outputs is of a series found, as this key names it (the key is
    theirs: the rerun skips them)."""
    def without_fingerprint(value):
        if isinstance(value, dict):
            return {k: without_fingerprint(v) for k, v in value.items() if k != "key_fingerprint"}
        return [without_fingerprint(v) for v in value] if isinstance(value, list) else value

    root, out = tmp_path / "in", tmp_path / "out"
    write_named_series(root / "p1" / "s1", seed=1)
    deid = ["--set", "outputs.deidentify=true", "--quiet"]
    assert _run(root, out, *deid) == 0
    written = [*out.rglob(".medrecon-output"), *out.rglob("report.json")]
    assert len(written) == 2 and all("key_fingerprint" in f.read_text() for f in written)
    for f in written:  # as an earlier medrecon wrote them
        f.write_text(json.dumps(without_fingerprint(json.loads(f.read_text())), indent=2))
    caplog.clear()
    assert _run(root, out, *deid) == 0 and [r["status"] for r in _manifest(out)] == ["skipped"]
    assert "earlier medrecon" not in caplog.text  # the same key: its series is there
    monkeypatch.setenv("MEDRECON_DEID_KEY", "another site's secret, long enough")
    caplog.clear()
    assert _run(root, out, *deid) == 0
    warned = [r.getMessage() for r in caplog.records if "earlier medrecon" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(f"{out}: 1 de-identified output(s)")
    assert "rerun with the key that made them, or write into a fresh output root" in warned[0]


def test_the_fingerprintless_root_warning_is_not_repeated_where_an_output_has_this_keys_fingerprint(
        monkeypatch, caplog):
    """Review of the sixty-third session: every batch of a new input folder into a root holding outputs of an
    earlier medrecon warned again, though outputs there were already stamped with this key's fingerprint."""
    from medrecon.io.deidentify import check_key, key_fingerprint
    monkeypatch.setenv("MEDRECON_DEID_KEY", "this site's secret, long enough")
    old = {"series_uid": "1.2.3"}
    with caplog.at_level(logging.WARNING):
        check_key("out", [old], source_uids=["9.9"])
        assert "earlier medrecon" in caplog.text
        caplog.clear()
        check_key("out", [old, {"series_uid": "4.5.6", "key_fingerprint": key_fingerprint(create=False)}],
                  source_uids=["9.9"])
        assert "earlier medrecon" not in caplog.text


@pytest.mark.parametrize("error", ["no such series", "sub-folders"])
def test_a_deidentified_batch_records_no_series_description_in_its_errors(tmp_path, monkeypatch, capsys, error):
    """The errors that list a folder's series ('holds no series UID; the series there are: ...', and the hint of a
    folder whose sub-folders hold series) name each series' SeriesDescription on the console but not where they are
    recorded (manifest.csv, index.html): it may name the patient ('Quintessa Zyxwaldo chest'), as the note on a
    folder of several series leaves it out. Here the series is gone when it is read, or the folder read is the one
    above it."""
    root, out = tmp_path / "in", tmp_path / "out"
    said = write_named_series(root / "p1" / "s1", seed=1)
    read = batch_mod.reconstruct

    def gone(cfg, src, dst, **kw):
        if error == "no such series":
            return read(cfg, src, dst, **{**kw, "series": "1.2.826.0.1.3680043.99.1"})
        return read(cfg, src.parent, dst, **{**kw, "series": None})
    monkeypatch.setattr(batch_mod, "reconstruct", gone)
    assert _run(root, out, "--set", "outputs.deidentify=true") == 1
    [row] = _manifest(out)
    assert row["status"] == "failed" and ("holds no series" if error == "no such series" else "sub-folders hold") \
        in row["error"] and "(3 files, CT)" in row["error"]
    assert leaked(out, said) == []
    with pytest.raises(InputError, match="Quintessa Zyxwaldo chest"):  # the console's message keeps it
        gone(batch_mod.load_config("sparse_view_ct_8"), root / "p1" / "s1", tmp_path / "o2")
