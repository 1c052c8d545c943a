"""The distributed batch engine: one Ray task per DICOM series, on GPUs where the cluster has some, else CPUs.

``medrecon batch IN OUT --config C --engine ray [--address auto|HOST:PORT]``. The driver (this process)
plans the batch exactly as the local engine does (``pipelines.batch``, in ``pipelines.batching``), hands the series still to do to a
pool of Ray actors and alone writes the manifest: atomically, after every finished series, in plan order,
with 'pending' for the series not finished yet. An actor (``SeriesWorker``) runs
``pipelines.batching.run_series``, the function the local engine calls, which writes its series' output
atomically (input and output trees on shared storage, at the same paths on every node) and returns the
series' manifest row.

* Resources: one actor per ``gpus_per_series`` GPUs (default: 1 where the cluster has GPUs, else 0;
  fractions pack several series on one GPU) and ``cpus_per_series`` CPUs (default 1; Ray sets
  OMP_NUM_THREADS to it), as many as the cluster holds (at most one per series); a fraction also caps
  the actor's CUDA memory at that share of the GPU (the automatic chunk size plans within it). Ray sets
  CUDA_VISIBLE_DEVICES of each actor to its GPUs, so the solver's 'auto' device is that GPU; report.json
  records it under ``runtime``. An actor keeps torch, its CUDA context and the prior loaded from series to
  series (a fresh process costs seconds of imports; measured in the README).
* Faults: a series whose worker process dies (killed, out of memory, node lost) is rerun on a restarted
  actor up to ``max_retries`` times and then recorded as failed with the reason; the rerun removes the
  half-written temporary folder first. An error inside a series, or raised by the worker's own code, is
  recorded as the local engine records it, without a rerun (it would fail again): ``recorded_error`` of the
  worker's exception, ``Job.said``; not Ray's text of it, a traceback ending in the console's message. Under
  outputs.deidentify any other error (Ray's own: a lost worker or object, a full disk) is recorded by its type
  alone, as Ray's text may repr the task's arguments (``RayEngine._recorded``). Exit status and resumption are
  the local engine's.
* Ctrl-C: the actors are killed (with the series they were running), the manifest keeps those series as
  'pending' and KeyboardInterrupt propagates; a rerun of the batch redoes them.
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Callable

from tqdm.auto import tqdm

from medrecon.errors import InputError, recorded_error

from .batching import Job, progress_line, run_series, save_progress

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
        check_reachable(self.address)  # before anything is written

    def run(self, cfg, jobs: list[Job], manifest, overwrite: bool = False, echo=print,
            resample: bool = False, listed: list[dict] = ()) -> list[dict]:
        """The jobs' manifest rows; ``listed``: rows decided before (unreadable folders), kept at the top of
        every manifest written on the way."""
        started = self._connect()
        try:
            return self._run(cfg, jobs, manifest, overwrite, echo, resample, list(listed))
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

    def _run(self, cfg, jobs, manifest, overwrite, echo, resample, listed) -> list[dict]:
        ray = self.ray
        cluster = ray.cluster_resources()
        res = series_resources(cluster, self.gpus_per_series, self.cpus_per_series)
        rows: dict[int, dict] = {}
        queue = []
        for i, j in enumerate(jobs):
            state = j.state_for(overwrite)  # read once; a worker reads it again at the series' turn
            if state == "new":
                queue.append(i)
            else:  # the skip rule's one home: answers at once
                rows[i] = run_series(j, cfg, overwrite=overwrite, state=state)
        n_todo = len(queue)
        worker_cls = ray.remote(max_restarts=-1, max_task_retries=self.max_retries, **res)(SeriesWorker)

        key = None
        if cfg.outputs.deidentify:  # every node must pseudonymise as the driver does (records too, not dicom/ only)
            from medrecon.io.deidentify import key_fingerprint
            key = key_fingerprint()

        def new_worker():
            return worker_cls.remote(self.series_fn, cfg, resample, res["num_gpus"], key)
        workers = [new_worker() for _ in range(min(n_todo, capacity(cluster, res)))]
        idle, running = list(workers), {}  # ref -> (job index, worker, submitted at)

        def save() -> None:  # the manifest and the page, as the local engine keeps them after each series
            save_progress(manifest, listed + [rows.get(k) or j.row("pending") for k, j in enumerate(jobs)])

        for n, i in enumerate(sorted(rows), 1):
            echo(progress_line(n, len(jobs), rows[i]))
        save()  # every series listed before the first one finishes
        t0 = time.perf_counter()
        bar = tqdm(total=n_todo, unit="series", desc=f"batch ({len(workers)} workers, {res['num_gpus']:g} GPU "
                   f"and {res['num_cpus']:g} CPU each)", disable=None)
        try:
            while queue or running:
                while queue and idle:
                    w, i = idle.pop(), queue.pop(0)
                    running[w.run.remote(jobs[i], overwrite)] = (i, w, time.perf_counter())
                ready, _ = ray.wait(list(running), num_returns=1, timeout=self.poll_s)
                for ref in ready:
                    i, w, t_sub = running.pop(ref)
                    rows[i], lost = self._result(ref, jobs[i], time.perf_counter() - t_sub)
                    if lost:  # replace a worker that died more often than max_retries
                        ray.kill(w)
                        w = new_worker()  # with its GPU share, as the first ones
                        workers.append(w)
                    idle.append(w)
                    save()
                    bar.update(1)
                    finished = n_todo - len(queue) - len(running)  # (a disabled bar does not count)
                    eta = tqdm.format_interval((time.perf_counter() - t0) / finished * (n_todo - finished))
                    with tqdm.external_write_mode():
                        echo(f"{progress_line(len(rows), len(jobs), rows[i])}  (eta {eta})")
        except KeyboardInterrupt:
            echo(f"interrupted: stopped {len(running)} running series; they stay 'pending' in {manifest} "
                 "and a rerun redoes them")
            raise
        finally:
            bar.close()
            for w in workers:  # kills the series still running (their temporary folders go at the rerun)
                ray.kill(w)
        return [rows[i] for i in range(len(jobs))]

    def _result(self, ref, job: Job, seconds: float) -> tuple[dict, bool]:
        """(the series' row, whether its worker was lost more than max_retries times)."""
        ray = self.ray
        try:
            return ray.get(ref), False
        except ray.exceptions.RayError as e:
            lost = isinstance(e, (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                                  ray.exceptions.NodeDiedError, ray.exceptions.OutOfMemoryError))
            what = job.said(self._recorded(e, lost, job.deidentify))  # (said: one line, paths scrubbed)
            return {**job.row("pending"), "status": "failed", "seconds": f"{seconds:.2f}", "error": what}, lost

    def _recorded(self, e: BaseException, lost: bool, deidentify: bool) -> str:
        """How a series' row records the Ray error ``e`` (``lost``: its worker lost more than max_retries times).
        The worker's own exception (the cause of a RayTaskError) as the local engine records it, ``recorded_error``:
        not Ray's text of it (its traceback, the console's message). Any other error is Ray's own (a lost worker
        or object, a full disk or object store, a cause Ray could not carry back, its traceback in the text):
        de-identified, by its type alone, as Ray's text may repr the task's arguments (a SeriesDescription naming
        the patient, in no path for ``scrub`` to find); else with Ray's text (a lost worker's first line)."""
        cause = e.cause if isinstance(e, self.ray.exceptions.RayTaskError) else None
        if isinstance(cause, BaseException) and not isinstance(cause, self.ray.exceptions.RayError):
            return recorded_error(cause)
        error = cause if isinstance(cause, BaseException) else e
        if lost:
            first = "" if deidentify else (str(e).strip().splitlines() or [""])[0]
            last = f"{type(e).__name__}: {first}" if first else type(e).__name__
            return f"worker lost {self.max_retries + 1} times (last: {last})"
        return f"Ray error: {type(error).__name__}" if deidentify else recorded_error(error)


def check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """A HOST:PORT address must accept a TCP connection (ray.init retries an unreachable one for minutes)."""
    if not address or address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as e:
        raise InputError(f"--address {address}: no Ray head answers there ({e}); check the host and port of "
                         "'ray start --head' (default port 6379)") from None


def capacity(cluster: dict, res: dict) -> int:
    """How many series the cluster runs at once with ``res`` per series (at least 1)."""
    by = [cluster.get("CPU", 0) / res["num_cpus"]]
    if res["num_gpus"]:
        by.append(cluster.get("GPU", 0) / res["num_gpus"])
    return max(1, int(min(by) + 1e-9))


class SeriesWorker:
    """A Ray actor (one per GPU, or per ``cpus_per_series`` CPUs): runs series after series in one process,
    keeping torch, the CUDA context and the config's prior loaded between them."""

    def __init__(self, series_fn: Callable, cfg, resample: bool = False, gpu_share: float = 0.0,
                 key: str | None = None):
        self.series_fn, self.cfg, self.resample, self.prior = series_fn, cfg, resample, None
        self.key_differs = False
        if key is not None:  # this node's key against the driver's, once (made here, it would pseudonymise apart)
            from medrecon.io.deidentify import key_fingerprint
            self.key_differs = key_fingerprint(create=False) != key
        if 0 < gpu_share < 1:  # series packed onto one GPU: each takes its share, not what is free when it starts
            import torch
            if torch.cuda.is_available():
                torch.cuda.set_per_process_memory_fraction(gpu_share)

    def run(self, job: Job, overwrite: bool) -> dict:
        if self.key_differs:
            from medrecon.io.deidentify import key_path
            return job.row("failed", "0.0", f"this node's de-identification key is not the driver's: copy the "
                                            f"driver's {key_path()} to every node, or set MEDRECON_DEID_KEY on each")
        return self.series_fn(job, self.cfg, overwrite=overwrite, resample=self.resample, prior=self._prior())

    def _prior(self):
        """The config's prior, loaded once; None when the solver needs none or it cannot be loaded (then
        run_series loads it itself and records the error in the series' row)."""
        from medrecon.device import resolve_device

        from .problem import configured_prior
        if self.prior is None and self.cfg.needs_prior:
            try:
                self.prior = configured_prior(self.cfg, resolve_device(self.cfg.solver.device))
            except Exception:  # noqa: BLE001 - reported through run_series
                return None
        return self.prior


__all__ = ["ENGINES", "INSTALL_HINT", "RayEngine", "SeriesWorker", "capacity", "import_ray", "make_engine",
           "series_resources"]
