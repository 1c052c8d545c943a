"""DICOM-folder batch: mirrored tree, manifest, a corrupt series, interruption and resumption, safe names."""
import csv
from pathlib import Path

import numpy as np
import pytest

import pipelines.batch as batch_mod
from medrecon.io import write_dicom_series
from medrecon.volume import Volume
from pipelines.batch import sanitize
from pipelines.cli import main

SETS = ["--set", "solver.name=fbp", "--set", "ct.image_size=16"]


def _series(folder, seed, description):
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (3, 24, 24)), indexing="ij")
    hu = np.where(x ** 2 + (y - 0.1 * seed) ** 2 < 0.6, 40.0 + 10 * seed, -1000.0).astype(np.float32)
    vol = Volume(hu, spacing=(2.0, 2.0, 3.0), meta={"dicom": {"Modality": "CT", "PatientID": f"P{seed}"}})
    write_dicom_series(vol, folder, series_description=description)


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
    with open(out / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _run(tree, out, *extra):
    return main(["batch", str(tree), str(out), "--config", "sparse_view_ct_8", *SETS, *extra])


def test_batch_records_failures_and_resumes(tree, tmp_path):
    out = tmp_path / "out"
    assert _run(tree, out, "--dry-run") == 0 and not out.exists()
    assert _run(tree, out) == 1  # one series failed
    rows = _manifest(out)
    assert sorted(r["status"] for r in rows) == ["done", "done", "failed"]
    failed = next(r for r in rows if r["status"] == "failed")
    assert "broken" in failed["input_path"] and failed["error"]
    for r in rows:
        p = out.resolve()
        assert p in Path(r["output_path"]).parents  # nothing escapes OUTPUT_ROOT
        if r["status"] == "done":
            assert (Path(r["output_path"]) / "report.json").is_file()
            assert (Path(r["output_path"]) / "dicom").is_dir()
    escaped = next(r["output_path"] for r in rows if "escape" in r["output_path"])
    assert escaped.startswith(str(out.resolve() / "studyB" / "deep" / "ct" / "escape_me_"))
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

    monkeypatch.setattr(batch_mod, "reconstruct", killed_on_second_good_series)
    with pytest.raises(KeyboardInterrupt):
        batch_mod.batch(tree, out, "sparse_view_ct_8", sets, echo=lambda s: None)
    status = {r["output_path"]: r["status"] for r in _manifest(out)}
    assert status[str(good[0])] == "done" and status[str(good[1])] == "pending"
    assert not (good[1] / "report.json").exists()
    monkeypatch.setattr(batch_mod, "reconstruct", real)
    res = batch_mod.batch(tree, out, "sparse_view_ct_8", sets, echo=lambda s: None)
    status = {r["output_path"]: r["status"] for r in res.rows}
    assert status[str(good[0])] == "skipped" and status[str(good[1])] == "done"
    assert sorted(status.values()) == ["done", "failed", "skipped"] and res.failed == 1
    assert not list(good[1].parent.glob(".medrecon-tmp-*"))  # the half-written folder is gone


def test_sanitize():
    assert sanitize("../../etc/passwd") == "etc_passwd"
    assert sanitize("..") == "series" and sanitize("") == "series"
    assert sanitize("a b/c\\d:e") == "a_b_c_d_e"
    assert len(sanitize("x" * 500)) == 64
    assert sanitize("...hidden") == "hidden"
