"""`medrecon batch --engine ray` on a local Ray cluster with two logical GPUs: scheduling, identity with the
local engine, a worker killed mid-series, Ctrl-C and resumption. Skips where Ray is not installed."""
import csv
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
import _thread
from pathlib import Path

import numpy as np
import pytest
import torch

from medrecon.io import read_volume
from medrecon.io.deidentify import input_label
from pipelines.batching import batch, run_series
from pipelines.cli import main
from pipelines.engines import RayEngine, SeriesWorker, capacity, series_resources
from dicom_trees import leaked, write_named_series, write_test_series  # noqa: E402

try:
    import ray
except ImportError:
    ray = None
needs_ray = pytest.mark.skipif(ray is None, reason="ray is not installed (pip install 'medrecon[distributed]')")

FBP = ["solver.name=fbp", "ct.image_size=16"]


def _series(folder, seed, description):
    write_test_series(folder, seed, description, size=16)


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "in"
    _series(root / "a", 1, "first")
    _series(root / "b", 2, "second")
    _series(root / "broken", 3, "broken")
    for f in (root / "broken").iterdir():  # listed as a series, but cannot be read
        f.write_bytes(f.read_bytes()[:-300])
    return root


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="warning")
    yield
    ray.shutdown()


def _rows(out):
    with open(out / "manifest.csv", newline="") as fh:
        return {Path(r["input_path"]).name: r for r in csv.DictReader(fh)}


def _quiet(s):
    pass


# --- series functions the workers run (closures: Ray pickles them by value) -------------------------------
def _recording(log: Path, wait_for: int):
    """run_series after writing where it ran (pid, CUDA_VISIBLE_DEVICES, times) and waiting until
    ``wait_for`` series have started (proves they run at the same time)."""
    def series(job, cfg, **kw):
        start = time.time()
        (log / f"start-{job.input.name}").touch()
        while len(list(log.glob("start-*"))) < wait_for and time.time() < start + 60:
            time.sleep(0.05)
        row = run_series(job, cfg, **kw)
        (log / f"{job.input.name}.json").write_text(json.dumps(
            {"pid": os.getpid(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "prior": id(kw.get("prior")),
             "threads": torch.get_num_threads(), "end": time.time()}))
        return row
    return series


def _killing(log: Path, once: str, always: str):
    """Kills its worker (SIGKILL) in the middle of writing the outputs: series ``once`` on its first attempt,
    series ``always`` on every attempt."""
    def series(job, cfg, **kw):
        import pipelines.tasks as tasks
        name = job.input.name
        n = len(list(log.glob(f"{name}-*")))
        (log / f"{name}-{n}").touch()
        if name == always or (name == once and n == 0):
            real = tasks.write_results

            def die_after_recon(*a, **k):
                real(*a, **k)  # recon.nii.gz etc. are in the temporary folder, report.json is not
                os.kill(os.getpid(), signal.SIGKILL)
            tasks.write_results = die_after_recon
        return run_series(job, cfg, **kw)
    return series


def _hanging(log: Path, name: str):
    def series(job, cfg, **kw):
        if job.input.name == name:
            (log / "hang").write_text(str(os.getpid()))
            time.sleep(120)
        return run_series(job, cfg, **kw)
    return series


# --- tests ----------------------------------------------------------------------------------------------
def test_series_resources():
    assert series_resources({"CPU": 8, "GPU": 2}, None, 1) == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert series_resources({"CPU": 8}, None, 2) == {"num_cpus": 2.0, "num_gpus": 0.0}  # CPUs otherwise
    assert series_resources({"CPU": 8, "GPU": 2}, 0.5, 1)["num_gpus"] == 0.5
    with pytest.raises(Exception, match="has 0 GPUs"):
        series_resources({"CPU": 8}, 1, 1)
    with pytest.raises(Exception, match="has 8 CPUs"):
        series_resources({"CPU": 8}, None, 16)
    assert capacity({"CPU": 8, "GPU": 2}, {"num_cpus": 1.0, "num_gpus": 1.0}) == 2  # one worker per GPU
    assert capacity({"CPU": 8, "GPU": 2}, {"num_cpus": 1.0, "num_gpus": 0.5}) == 4
    assert capacity({"CPU": 8, "GPU": 2}, {"num_cpus": 3.0, "num_gpus": 0.0}) == 2  # CPU slots


def test_engine_ray_without_ray_says_how_to_install(tree, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    rc = main(["batch", str(tree), str(tmp_path / "out"), "--config", "sparse_view_ct_8", "--engine", "ray"])
    assert rc == 2 and "pip install 'medrecon[distributed]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["batch", str(tree), str(tmp_path / "out"), "--config", "sparse_view_ct_8",
                 "--address", "auto"]) == 2  # Ray options without --engine ray


@needs_ray
def test_unreachable_address_is_one_line_error(tree, tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = main(["batch", str(tree), str(tmp_path / "out"), "--config", "sparse_view_ct_8", "--engine", "ray",
               "--address", f"127.0.0.1:{port}"])
    assert rc == 2 and "no Ray head answers there" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@needs_ray
def test_one_series_per_logical_gpu_and_same_results_as_local(cluster, tree, tmp_path):
    sets = ["solver.name=fast", "solver.steps=2", "solver.seed=3", "ct.image_size=64",
            "prior.path=bundled:ct"]  # the 64² phantom prior (the tree holds small phantoms), seeded
    log = tmp_path / "log"
    log.mkdir()
    res = batch(tree, tmp_path / "ray", "sparse_view_ct_8", sets, echo=_quiet,
                engine=RayEngine(series_fn=_recording(log, wait_for=2)))
    ran = {n: json.loads((log / f"{n}.json").read_text()) for n in ("a", "b", "broken")}
    # a Ray worker runs torch with its own thread count (OMP_NUM_THREADS from its CPU share); the thread count
    # orders the convolutions' float32 sums, and the warm start's ADMM-TV and the sampler amplify the last bits
    # to about 1 HU, so the local run uses the workers' count and must then give the same volumes
    threads = {r["threads"] for r in ran.values()}
    assert len(threads) == 1
    before = torch.get_num_threads()
    torch.set_num_threads(threads.pop())
    try:
        local = batch(tree, tmp_path / "local", "sparse_view_ct_8", sets, echo=_quiet)
    finally:
        torch.set_num_threads(before)
    assert res.failed == local.failed == 1
    rows, lrows = _rows(tmp_path / "ray"), _rows(tmp_path / "local")
    assert {k: r["status"] for k, r in rows.items()} == {k: r["status"] for k, r in lrows.items()} == \
        {"a": "done", "b": "done", "broken": "failed"}
    assert rows["broken"]["error"] == lrows["broken"]["error"]
    assert all(r["cuda"] in ("0", "1") for r in ran.values())  # one logical GPU each
    assert len({r["pid"] for r in ran.values()}) == 2  # one worker per GPU, kept for the batch ...
    assert len({(r["pid"], r["cuda"], r["prior"]) for r in ran.values()}) == 2  # ... with its GPU and its prior
    first, second = sorted(ran.values(), key=lambda r: r["start"])[:2]
    assert first["start"] < second["end"] and second["start"] < first["end"]  # at the same time ...
    assert first["cuda"] != second["cuda"]  # ... on different GPUs
    for n in ("a", "b"):
        out = tmp_path / "ray" / rows[n]["output_path"]  # manifest paths are relative to the output root
        assert json.loads((out / "report.json").read_text())["runtime"]["cuda_visible_devices"] == ran[n]["cuda"]
        mine, theirs = (read_volume(tmp_path / root / r[n]["output_path"] / "recon.nii.gz").data
                        for root, r in (("ray", rows), ("local", lrows)))
        np.testing.assert_array_equal(mine, theirs)  # same seed, same thread count: the same volume


@needs_ray
def test_worker_killed_mid_series_is_retried_then_recorded(cluster, tree, tmp_path):
    log, out = tmp_path / "log", tmp_path / "out"
    log.mkdir()
    res = batch(tree, out, "sparse_view_ct_8", FBP, echo=_quiet,
                engine=RayEngine(max_retries=1, series_fn=_killing(log, once="a", always="b")))
    rows = _rows(out)
    assert rows["a"]["status"] == "done" and len(list(log.glob("a-*"))) == 2  # killed once, rerun
    assert rows["b"]["status"] == "failed" and len(list(log.glob("b-*"))) == 2  # 1 + max_retries attempts
    assert "worker lost 2 times" in rows["b"]["error"]
    assert rows["broken"]["status"] == "failed" and len(list(log.glob("broken-*"))) == 1  # an error: no rerun
    assert res.failed == 2 and ((out / rows["a"]["output_path"]) / "report.json").is_file()
    assert not ((out / rows["b"]["output_path"])).exists()
    b_name = (out / rows["b"]["output_path"]).name  # a rerun of the batch removes what b's last worker left
    assert all(p.name.endswith(b_name) for p in out.rglob(".medrecon-tmp-*"))


@needs_ray
def test_unreadable_folders_are_in_the_manifest_while_the_series_run(cluster, tree, tmp_path):
    """A folder whose DICOM cannot be read at all is a failed row from the first manifest on, as with the local
    engine (it appeared only once every series had finished)."""
    log, out = tmp_path / "log", tmp_path / "out"
    log.mkdir()
    _series(tree / "garbled", 4, "garbled")
    for f in (tree / "garbled").iterdir():
        f.write_bytes(f.read_bytes()[:300])  # cut inside the header

    def series(job, cfg, **kw):
        (log / f"{job.input.name}.csv").write_text((out / "manifest.csv").read_text())
        return run_series(job, cfg, **kw)
    batch(tree, out, "sparse_view_ct_8", FBP, echo=_quiet, engine=RayEngine(series_fn=series))
    seen = (log / "a.csv").read_text()
    assert "garbled" in seen and "can be read" in seen
    assert _rows(out)["garbled"]["status"] == "failed"


@needs_ray
def test_ctrl_c_cancels_and_the_rerun_finishes(cluster, tree, tmp_path):
    log, out = tmp_path / "log", tmp_path / "out"
    log.mkdir()

    def interrupt_when_hanging():  # only once the series runs: Ctrl-C during Ray's start-up is another case
        deadline = time.time() + 300  # a loaded machine starts Ray and its actors slowly
        while not (log / "hang").exists() and time.time() < deadline:
            time.sleep(0.05)
        if (log / "hang").exists():
            _thread.interrupt_main()
    threading.Thread(target=interrupt_when_hanging, daemon=True).start()
    # Ctrl-C as at a terminal: a suite started in the background (`make test &`) inherits SIGINT ignored, and
    # interrupt_main() then does nothing
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            batch(tree, out, "sparse_view_ct_8", FBP, echo=_quiet, engine=RayEngine(series_fn=_hanging(log, "a")))
    finally:
        signal.signal(signal.SIGINT, previous)
    rows = _rows(out)
    assert rows["a"]["status"] == "pending" and not ((out / rows["a"]["output_path"]) / "report.json").exists()
    assert "pending" in (out / "index.html").read_text()  # the page was written only when a batch ended
    for r in rows.values():  # the manifest is never ahead of the files
        assert r["status"] != "done" or ((out / r["output_path"]) / "report.json").is_file()
    pid, deadline = int((log / "hang").read_text()), time.time() + 20
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)  # the running series' worker was killed
    res = batch(tree, out, "sparse_view_ct_8", FBP, echo=_quiet, engine=RayEngine())
    assert {k: r["status"] for k, r in _rows(out).items()}["a"] == "done" and res.failed == 1


@needs_ray
def test_a_deidentified_batch_records_a_failing_workers_error_as_the_local_engine_does(cluster, tmp_path):
    """An error raised in a Ray worker outside run_series was recorded with its full text: Ray's traceback (a
    terminal's colour codes, the worker's address) and the exception's console message, which may name the series
    by its SeriesDescription ('Quintessa Zyxwaldo chest'). Now it is recorded as the local engine records an error
    (``recorded_error`` of the worker's exception, ``Job.said``): with outputs.deidentify, nothing identifying."""
    root, out = tmp_path / "in", tmp_path / "out"
    said = write_named_series(root / "Zyxwaldo_Quintessa_PID4711" / "CT_20240229", seed=1)

    def failing(job, cfg, **kw):
        import pydicom

        from medrecon.errors import InputError
        first = sorted(job.input.iterdir())[0]
        named = f"{first}: cannot read the series '{pydicom.dcmread(first).SeriesDescription}'"
        raise InputError(named, recorded=f"{first}: cannot read the series")
    res = batch(root, out, "sparse_view_ct_8", FBP + ["outputs.deidentify=true"], echo=_quiet,
                engine=RayEngine(series_fn=failing))
    assert leaked(out, said + [str(tmp_path)]) == []
    [row] = _rows(out).values()
    assert res.failed == 1 and re.fullmatch(r"InputError: input-[0-9a-f]{16}/file-[0-9a-f]{8}: cannot read the "
                                            "series", row["error"]), row["error"]


@needs_ray
def test_a_ray_task_error_is_recorded_by_its_cause_alone(tmp_path, monkeypatch):
    """The same without a cluster, with a short traceback: Ray's text of a worker's error ends in the exception's
    console message, whose SeriesDescription (not in any path, so not ``scrub``-bed) reached the manifest."""
    from medrecon.errors import InputError
    from pipelines.batching import Job

    root = tmp_path / "in"
    series = root / "Zyxwaldo_Quintessa_PID4711" / "CT_20240229"
    series.mkdir(parents=True)
    (series / "Zyxwaldo_Quintessa_001.dcm").write_bytes(b"")
    job = Job("1.2.826.0.1.3680043.2.1125.7", series, tmp_path / "out" / "series-1", "", root, tmp_path / "out",
              deidentify=True)
    description = " ".join(["Quintessa", "Zyxwaldo", "chest"])  # as read from a header: not in the traceback's code
    try:
        raise InputError(f"{series}: the series '{description}'", recorded=f"{series}: the series")
    except InputError as cause:
        error = ray.exceptions.RayTaskError("run", traceback.format_exc(), cause, "ray::SeriesWorker.run", 1,
                                            "10.1.2.3").as_instanceof_cause()

    def get(ref):
        raise error
    monkeypatch.setattr(ray, "get", get)
    row, lost = RayEngine()._result(None, job, 1.0)
    assert not lost and row["status"] == "failed" and "Zyxwaldo" not in row["error"], row["error"]
    assert row["error"] == f"InputError: {input_label(series)}: the series", row["error"]


@needs_ray
@pytest.mark.parametrize("deidentify", [True, False])
def test_a_lost_workers_record_under_deidentify_holds_no_ray_text(tmp_path, monkeypatch, deidentify):
    """A worker lost more often than its retries was recorded with the first line of Ray's text, which may repr
    the task's arguments (a series' description naming the patient, not in any path: not ``scrub``-bed). Under
    outputs.deidentify the record keeps only the exception's type and the tries; without, the line escaped."""
    from pipelines.batching import Job

    root, name = tmp_path / "in", " ".join(["Quintessa", "Zyxwaldo"])
    job = Job("1.2.826.0.1.3680043.2.1125.7", root / "s1", tmp_path / "out" / "series-1", "", root,
              tmp_path / "out", deidentify=deidentify)
    error = ray.exceptions.RayActorError(error_msg=f"The actor died: SeriesWorker.run(description='{name}\x1b[2J')"
                                                   "\nits traceback")

    def get(ref):
        raise error
    monkeypatch.setattr(ray, "get", get)
    row, lost = RayEngine(max_retries=2)._result(None, job, 1.0)
    assert lost and row["status"] == "failed" and "\x1b" not in row["error"] and "\n" not in row["error"]
    if deidentify:
        assert row["error"] == "worker lost 3 times (last: RayActorError)", row["error"]
    else:
        assert row["error"] == (f"worker lost 3 times (last: RayActorError: The actor died: "
                                f"SeriesWorker.run(description='{name}\\x1b[2J'))"), row["error"]


RAY_ERRORS = {  # Ray's own errors, each with the text Ray may give it (a task's arguments repr-ed), a name planted
    "ObjectLostError": lambda t: ray.exceptions.ObjectLostError("ffff", None, f"SeriesWorker.run({t})"),
    "OwnerDiedError": lambda t: ray.exceptions.OwnerDiedError("ffff", None, f"SeriesWorker.run({t})"),
    "RaySystemError": lambda t: ray.exceptions.RaySystemError(f"task SeriesWorker.run({t}) failed"),
    "ActorUnschedulableError": lambda t: ray.exceptions.ActorUnschedulableError(f"actor for {t}"),
    "OutOfDiskError": lambda t: ray.exceptions.OutOfDiskError(f"disk full running {t}"),
    "ObjectStoreFullError": lambda t: ray.exceptions.ObjectStoreFullError(f"store full running {t}"),
    # a worker's exception Ray could not carry back: the cause holds the worker's traceback, as text
    "UnserializableException": lambda t: ray.exceptions.RayTaskError(
        "run", "Traceback", ray.exceptions.UnserializableException(f"Traceback ...\nValueError: {t}"),
        "ray::SeriesWorker.run", 1, "10.1.2.3").as_instanceof_cause(),
} if ray is not None else {}


@needs_ray
@pytest.mark.parametrize("deidentify", [True, False])
@pytest.mark.parametrize("kind", sorted(RAY_ERRORS))
def test_a_ray_error_under_deidentify_is_recorded_by_its_type_alone(tmp_path, monkeypatch, kind, deidentify):
    """Only a lost worker's record dropped Ray's text under outputs.deidentify: any other Ray error (an object
    lost, a full disk, a cause Ray could not carry back) was recorded with it, a patient's name in a repr-ed
    argument or traceback too (in no path: not ``scrub``-bed). De-identified, the record is its type alone;
    without, Ray's text stays as it was."""
    from pipelines.batching import Job

    root, name = tmp_path / "in", " ".join(["Quintessa", "Zyxwaldo"])
    job = Job("1.2.826.0.1.3680043.2.1125.7", root / "s1", tmp_path / "out" / "series-1", "", root,
              tmp_path / "out", deidentify=deidentify)
    error = RAY_ERRORS[kind](f"description='{name}'")

    def get(ref):
        raise error
    monkeypatch.setattr(ray, "get", get)
    row, lost = RayEngine(max_retries=2)._result(None, job, 1.0)
    assert not lost and row["status"] == "failed" and "\n" not in row["error"], row["error"]
    if deidentify:
        assert row["error"] == f"Ray error: {kind}", row["error"]
    else:
        assert row["error"].startswith(f"{kind}: ") and name in row["error"], row["error"]


@needs_ray
def test_series_answered_at_once_are_echoed_as_the_local_engine_echoes_them(cluster, tree, tmp_path):
    """A series the driver answers without a worker (finished, or a conflict) is echoed with its row's status and
    error, numbered as it comes, as the local engine does: a config conflict was echoed '[3/3] skipped <folder>'
    on every line (recorded as failed, the reason nowhere)."""
    import shutil
    shutil.rmtree(tree / "broken")
    out, other = tmp_path / "out", ["solver.name=fbp", "ct.image_size=24"]
    batch(tree, out, "sparse_view_ct_8", FBP, echo=_quiet)
    local, distributed = [], []
    batch(tree, out, "sparse_view_ct_8", other, echo=local.append)
    res = batch(tree, out, "sparse_view_ct_8", other, echo=distributed.append, engine=RayEngine())
    assert res.conflicts == 2 and res.failed == 0 and distributed == local
    assert local[0].startswith("[1/2] conflict ") and "made with another config" in local[0]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_worker_packed_onto_a_shared_gpu_caps_its_cuda_memory_at_its_share(monkeypatch):
    """--gpus-per-series 0.5: two actors on one GPU each plan chunks from what is free when they start; each is
    capped at its share (torch's per-process fraction, which auto_chunk_size also reads) so neither takes all."""
    from pipelines.engines import SeriesWorker

    set_to = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, device=None: set_to.append(f))
    for share in (0.0, 0.5, 1.0, 0.25):
        SeriesWorker(lambda *a, **k: None, cfg=None, gpu_share=share)
    assert set_to == [0.5, 0.25]  # whole GPUs and CPU actors are not capped


def test_a_worker_whose_de_identification_key_is_not_the_drivers_fails_its_series(tmp_path, monkeypatch):
    """Each Ray node made its own key at first use, silently: one patient got one pseudonym per node. A worker
    now checks the driver's key's fingerprint and refuses a series without making a key of its own."""
    from medrecon.io.deidentify import key_fingerprint
    from pipelines.batching import Job

    monkeypatch.setenv("MEDRECON_DEID_KEY", "the driver's own secret passphrase")
    driver = key_fingerprint()
    from types import SimpleNamespace
    cfg = SimpleNamespace(needs_prior=False)
    ran = []
    job = Job("1.2.3", tmp_path / "in", tmp_path / "out" / "s", "", tmp_path / "in", tmp_path / "out")
    same = SeriesWorker(lambda *a, **k: ran.append(1) or {"status": "done"}, cfg=cfg, key=driver)
    assert same.run(job, False)["status"] == "done" and ran
    monkeypatch.delenv("MEDRECON_DEID_KEY")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "node_b"))
    other = SeriesWorker(lambda *a, **k: ran.append(2), cfg=cfg, key=driver)
    row = other.run(job, False)
    assert row["status"] == "failed" and "not the driver's" in row["error"] and ran == [1]
    assert not (tmp_path / "node_b" / "medrecon" / "deidentify.key").exists()  # made no key of its own


def test_a_series_the_driver_answers_has_its_marker_read_once(tree, tmp_path, monkeypatch):
    """The driver read a finished series' marker twice (to do? then ``run_series`` again): once now, its state
    passed on, as the local engine reads it. Without a cluster: a stand-in for the few Ray calls a batch with
    nothing to do makes."""
    import shutil
    from types import SimpleNamespace

    import pipelines.batching as batching
    import pipelines.engines as engines
    fake = SimpleNamespace(is_initialized=lambda: True, cluster_resources=lambda: {"CPU": 1.0},
                           remote=lambda **kw: (lambda cls: cls), kill=lambda w: None)
    monkeypatch.setattr(engines, "import_ray", lambda: fake)
    shutil.rmtree(tree / "broken")  # (a failed series is redone: a worker's)
    out = tmp_path / "out"
    batch(tree, out, "sparse_view_ct_8", FBP, echo=_quiet)
    reads, read_marker = [], batching.read_marker
    monkeypatch.setattr(batching, "read_marker", lambda f: reads.append(Path(f)) or read_marker(f))
    res = batch(tree, out, "sparse_view_ct_8", FBP, echo=_quiet, engine=RayEngine())
    outputs = [r for r in reads if out in r.parents]
    assert [r["status"] for r in res.rows if r["output_path"]] == ["skipped", "skipped"]
    assert len(outputs) == 2 and len(set(outputs)) == 2, outputs
