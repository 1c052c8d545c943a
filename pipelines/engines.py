"""The distributed batch engine: one Ray task per DICOM series, on GPUs where the cluster has some, else CPUs.

``medrecon batch IN OUT --config C --engine ray [--address auto|HOST:PORT]``. The driver (this process)
plans the batch exactly as the local engine does (``pipelines.batch``), submits one task per series still to
do and alone writes the manifest: atomically, after every finished series, in plan order, with 'pending'
for the series not finished yet. A task runs ``pipelines.batch.run_series``, the same function the local
engine calls, which writes its series' output atomically (input and output trees on shared storage, at the
same paths on every node) and returns the series' manifest row.

* Resources per series: ``gpus_per_series`` (default: 1 where the cluster has GPUs, else 0; fractions pack
  several series on one GPU) and ``cpus_per_series`` (default 1; Ray sets OMP_NUM_THREADS to it). Ray sets
  CUDA_VISIBLE_DEVICES of each task to its GPUs, so the solver's 'auto' device is that GPU; report.json
  records it under ``runtime``. A GPU task gets a fresh worker process (Ray's default for GPU tasks: a CUDA
  context never outlives its GPU assignment); CPU tasks reuse workers.
* Faults: a series whose worker process dies (killed, out of memory, node lost) is rerun by Ray up to
  ``max_retries`` times and then recorded as failed with the reason; the rerun removes the half-written
  temporary folder first. An error inside a series is recorded as the local engine records it (no rerun:
  it would fail again). Exit status and resumption are the local engine's.
* Ctrl-C: the series still running are cancelled (their workers killed), the manifest keeps them as
  'pending' and KeyboardInterrupt propagates; a rerun of the batch redoes them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from tqdm.auto import tqdm

from medrecon.errors import InputError

from .batch import Job, error_text, pending_row, run_series, write_manifest

INSTALL_HINT = "pip install 'medrecon[distributed]'"
ENGINES = ("local", "ray")


def import_ray():
    """The ray module, or a one-line InputError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError(f"--engine ray needs Ray, which is not installed here: {INSTALL_HINT}") from None
    return ray


def series_resources(cluster: dict, gpus_per_series: float | None, cpus_per_series: float) -> dict:
    """Ray resources of one series task on a cluster with ``cluster`` resources ({'CPU': n, 'GPU': m, ...}):
    GPUs where the cluster has some (1 per series unless told), CPUs otherwise."""
    have_gpu, have_cpu = float(cluster.get("GPU", 0)), float(cluster.get("CPU", 0))
    gpus = (1.0 if have_gpu > 0 else 0.0) if gpus_per_series is None else float(gpus_per_series)
    if gpus > have_gpu:
        raise InputError(f"--gpus-per-series {gpus:g}: the Ray cluster has {have_gpu:g} GPUs; start Ray with "
                         "GPUs (ray start --num-gpus N) or pass --gpus-per-series 0 to run on CPUs")
    if cpus_per_series > have_cpu:
        raise InputError(f"--cpus-per-series {cpus_per_series:g}: the Ray cluster has {have_cpu:g} CPUs")
    return {"num_cpus": float(cpus_per_series), "num_gpus": gpus}


def make_engine(name: str, address: str | None = None, gpus_per_series: float | None = None,
                cpus_per_series: float | None = None, max_retries: int = 2):
    """The engine for ``batch(..., engine=...)``: None for 'local' (its options are then errors)."""
    if name not in ENGINES:
        raise InputError(f"--engine {name!r}: expected one of {', '.join(ENGINES)}")
    if name == "local":
        given = [f for f, v in (("--address", address), ("--gpus-per-series", gpus_per_series),
                                ("--cpus-per-series", cpus_per_series)) if v is not None]
        if given:
            raise InputError(f"{', '.join(given)}: only with --engine ray")
        return None
    return RayEngine(address, gpus_per_series, 1.0 if cpus_per_series is None else cpus_per_series, max_retries)


@dataclass
class RayEngine:
    """Runs the series of a batch as Ray tasks (see the module docstring). ``series_fn`` is what a task
    runs (``run_series``; tests wrap it); ``poll_s`` how often the driver wakes for Ctrl-C and the bar."""

    address: str | None = None  # None: a Ray already initialised in this process, else a new local one
    gpus_per_series: float | None = None
    cpus_per_series: float = 1.0
    max_retries: int = 2
    series_fn: Callable = run_series
    poll_s: float = 0.5

    def __post_init__(self):
        if self.gpus_per_series is not None and self.gpus_per_series < 0:
            raise InputError(f"--gpus-per-series {self.gpus_per_series:g}: must be >= 0")
        if self.cpus_per_series <= 0:
            raise InputError(f"--cpus-per-series {self.cpus_per_series:g}: must be > 0")
        if self.max_retries < 0:
            raise InputError(f"--retries {self.max_retries}: must be >= 0")
        self.ray = import_ray()

    def run(self, cfg, jobs: list[Job], manifest, overwrite: bool = False, echo=print) -> list[dict]:
        started = self._connect()
        try:
            return self._run(cfg, jobs, manifest, overwrite, echo)
        finally:
            if started:
                self.ray.shutdown()

    def _connect(self) -> bool:
        """Join the cluster (or reuse this process's Ray); True when this call started Ray."""
        ray = self.ray
        if ray.is_initialized():
            return False
        kw = {"logging_level": "warning"}
        if self.address is None:
            kw["include_dashboard"] = False
        try:
            ray.init(address=self.address, **kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = self.address or "a new local Ray instance"
            raise InputError(f"--address {where}: cannot connect to a Ray cluster ({' '.join(str(e).split())[:200]}); "
                             "start one with 'ray start --head' (README: distributed batch)") from None
        return True

    def _run(self, cfg, jobs, manifest, overwrite, echo) -> list[dict]:
        ray = self.ray
        res = series_resources(ray.cluster_resources(), self.gpus_per_series, self.cpus_per_series)
        rows: dict[int, dict] = {}
        todo = []
        for i, j in enumerate(jobs):
            if j.todo(overwrite):
                todo.append(i)
            else:
                rows[i] = run_series(cfg, j, overwrite)  # the skip rule's one home: returns 'skipped' at once
        task = ray.remote(self.series_fn).options(max_retries=self.max_retries, retry_exceptions=False, **res)
        cfg_ref = ray.put(cfg)
        t0 = time.perf_counter()
        refs = {task.remote(cfg_ref, jobs[i], overwrite): i for i in todo}

        def save() -> None:
            write_manifest(manifest, [rows.get(k) or pending_row(j) for k, j in enumerate(jobs)])

        for i in sorted(rows):
            echo(f"[{len(rows)}/{len(jobs)}] skipped {jobs[i].output}")
        save()  # every series listed before the first one finishes
        bar = tqdm(total=len(todo), unit="series", desc=f"batch ({res['num_gpus']:g} GPU, "
                   f"{res['num_cpus']:g} CPU per series)", disable=None)
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=self.poll_s)
                for ref in ready:
                    i = refs.pop(ref)
                    rows[i] = self._result(ref, jobs[i], time.perf_counter() - t0)
                    save()
                    bar.update(1)
                    finished = len(todo) - len(refs)  # (a disabled bar does not count)
                    eta = tqdm.format_interval((time.perf_counter() - t0) / finished * len(refs))
                    with tqdm.external_write_mode():
                        echo(f"[{len(rows)}/{len(jobs)}] {rows[i]['status']:7s} {jobs[i].output} "
                             f"{rows[i]['error']}".rstrip() + f"  (eta {eta})")
        except KeyboardInterrupt:
            for ref in refs:
                ray.cancel(ref, force=True)
            echo(f"interrupted: cancelled {len(refs)} running series; they stay 'pending' in {manifest} "
                 "and a rerun redoes them")
            raise
        finally:
            bar.close()
        return [rows[i] for i in range(len(jobs))]

    def _result(self, ref, job: Job, seconds: float) -> dict:
        """The task's row, or a failed row when its worker was lost more than max_retries times."""
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as e:
            lost = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.OutOfMemoryError)
            what = (f"worker lost {self.max_retries + 1} times (last: {type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''})") if isinstance(e, lost) else error_text(e)
            return {**pending_row(job), "status": "failed", "seconds": f"{seconds:.2f}",
                    "error": " ".join(what.split())[:500]}


__all__ = ["ENGINES", "INSTALL_HINT", "RayEngine", "import_ray", "make_engine", "series_resources"]
