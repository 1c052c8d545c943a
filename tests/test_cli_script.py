"""The installed `medrecon` console script (#13.6, #13.10, #13.19): usage errors are click's usage message and
exit 2 (no traceback), help lists flags without value types and option names in full."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = shutil.which("medrecon", path=str(Path(sys.executable).parent)) or shutil.which("medrecon")
pytestmark = pytest.mark.skipif(SCRIPT is None, reason="the medrecon console script is not installed")


def medrecon(*args, cwd=None):
    # PYTHONPATH: the script runs this checkout's code (CI installs it editable, so there it is the same)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    return subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.mark.parametrize("args,expected", [
    ([], "Usage:"),  # bare `medrecon`: the help, then exit 2 (was NoArgsIsHelpError)
    (["info", "--no-such-option", "x"], "No such option: --no-such-option"),
    (["info"], "Missing argument"),
    (["infoo", "x"], "No such command 'infoo'"),
    (["evaluate", "--data-range", "abc", "-r", "a.nii", "-i", "b.nii"], "Invalid value for '--data-range'"),
])
def test_usage_errors_exit_2_with_the_usage_message(args, expected):
    r = medrecon(*args)
    assert r.returncode == 2, r.stderr
    text = r.stdout + r.stderr
    assert expected in text and "Usage:" in text and "Traceback" not in text


def test_help_shows_no_value_type_for_flags_and_full_option_names():
    r = medrecon("info", "--help")
    assert r.returncode == 0 and "<bool>" not in r.stdout and "--json" in r.stdout
    r = medrecon("train", "--help")
    assert r.returncode == 0
    for opt in ("--heldout-dataset", "--checkpoint-every", "--heldout-fraction", "--mri-percentile",
                "--attention / --no-attention", "--layers-per-block"):
        assert opt in r.stdout, opt
    assert "--heldout-data " in r.stdout  # its own option, not only --heldout-dataset


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_train_on_cuda_without_cuda_is_one_line_and_writes_nothing(tmp_path):
    r = medrecon("phantom", tmp_path / "data", "--shape", "4,16,16", "--seeds", "1")
    assert r.returncode == 0, r.stderr
    r = medrecon("train", "--data", tmp_path / "data", "--output", tmp_path / "prior", "--device", "cuda",
                 "--steps", "1", "--image-size", "16")
    assert r.returncode == 2 and "CUDA is not available" in r.stderr and "Traceback" not in r.stderr
    assert "train: --device cpu" in r.stderr  # the fix names options that exist (reconstruct has no --device)
    assert not (tmp_path / "prior").exists()


def test_batch_progress_and_unwritable_output_through_the_script(tmp_path):
    """#13.14: a progress bar over the series by default; #13.7: an unwritable output root is one line."""
    from medrecon.io import write_dicom_series
    from pipelines.phantoms import ct_phantom
    write_dicom_series(ct_phantom((3, 24, 24), seed=1), tmp_path / "in" / "ct", series_description="CT")
    sets = ["--config", "sparse_view_ct_8", "--set", "solver.name=fbp", "--set", "ct.image_size=16"]
    r = medrecon("batch", tmp_path / "in", tmp_path / "out", *sets)
    assert r.returncode == 0 and "series: 100%" in r.stderr and "1 ok, 0 failed" in r.stdout, r.stderr
    (tmp_path / "file").write_text("x")
    r = medrecon("batch", tmp_path / "in", tmp_path / "file" / "out", *sets)
    assert r.returncode == 2 and r.stderr.startswith("error: cannot create the output root"), r.stderr


def test_sigterm_unwinds_like_ctrl_c_and_leaves_no_temporary(tmp_path):
    """A batch system's time limit (SIGTERM) killed the process where it stood, leaving .medrecon-tmp-* behind."""
    import signal
    import time
    from medrecon.io import write_nifti
    from pipelines.phantoms import ct_phantom
    write_nifti(ct_phantom((4, 64, 64), seed=1), src := tmp_path / "ct.nii.gz")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([SCRIPT, "reconstruct", "-c", "sparse_view_ct_8", "-i", str(src), "-o", str(tmp_path / "o"),
                          "--set", "solver.name=admm_tv", "--set", "solver.steps=100000", "--quiet"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".medrecon-tmp-*")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.1)  # the output's temporary exists: the solve is under way
    assert list(tmp_path.glob(".medrecon-tmp-*")), "the run never started writing"
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 128 + signal.SIGTERM
    assert not list(tmp_path.glob(".medrecon-tmp-*")) and not (tmp_path / "o").exists()


def test_config_files_that_cannot_be_read_and_memory_are_one_line(tmp_path):
    (latin := tmp_path / "latin.yaml").write_bytes(b"# r\xe9solution\nmodality: ct\n")
    (bad := tmp_path / "bad.yaml").write_text("a: [1, 2\nb: 3\n")
    for cfg, text in ((latin, "save it as UTF-8"), (bad, "line 2, column 2: not valid YAML")):
        r = medrecon("reconstruct", "-c", cfg, "-i", tmp_path / "none.nii.gz", "-o", tmp_path / "o")
        assert r.returncode == 2 and text in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_running_out_of_memory_is_one_line(tmp_path, monkeypatch, capsys):
    """ct.image_size=100000 gave a MemoryError traceback (in-process: whether a huge allocation fails at once
    depends on the machine's overcommit)."""
    from pipelines import cli, tasks

    def huge(*a, **k):
        raise MemoryError
    monkeypatch.setattr(tasks, "reconstruct", huge)
    assert cli.main(["reconstruct", "-c", "sparse_view_ct_8", "-i", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: not enough memory")
