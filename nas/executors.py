"""Where trials run: long-lived local worker processes (one per GPU, else CPU processes) or Ray tasks.

Both take a :class:`~nas.trial.TrialSpec`, run :func:`~nas.trial.run_trial` and hand back a
:class:`~nas.trial.TrialResult`, so the search and its result files do not depend on the executor.

Local workers (``python -m nas.worker``) are started once and reused, so a trial does not pay for Python
and torch start-up (about two seconds here); each runs in a process group of its own, and a trial past its
time limit has its worker's whole group killed (never processes found by name: other jobs share the machine) and the
worker replaced. A worker that dies (the kernel's OOM killer, a segfault) fails only its trial.

Workers see only the allow-listed worker environment (``sandbox.environment``), never the driver's keys; so does
a local Ray cluster started here, whose processes are started from this process's environment.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Protocol

from harness.errors import UserError
from harness.run_files import METRICS_FILE, RunFileError, parse_metrics, write_metrics
from nas.trial import RESULT_FILES, Status, TrialResult, TrialSpec
from sandbox.environment import WORKER, child_env, environ_limited_to
from sandbox.processes import kill_group


class Executor(Protocol):
    slots: int

    def free_slots(self) -> int: ...
    def submit(self, spec: TrialSpec) -> None: ...
    def wait(self, timeout: float | None = None) -> list[TrialResult]: ...
    def shutdown(self) -> None: ...


@dataclass
class _Worker:
    """One ``python -m nas.worker`` process in a session (process group) of its own."""

    device: str
    env: dict[str, str]
    log_path: str | None = None
    process: subprocess.Popen | None = None
    spec: TrialSpec | None = None
    started: float = 0.0
    deadline: float | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nas.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=child_env(WORKER, self.env),
            start_new_session=True,
            text=True,
            bufsize=1,
        )
        if not isinstance(log, int):  # an open log file, not subprocess.DEVNULL: the child holds its own copy
            log.close()
        self.ready = False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is None:
            return
        kill_group(self.process, wait_s=10)  # its whole group: whatever the trial started goes with it
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        self.process = None


WORKER_THREADS_ENV = "AUTONAS_WORKER_THREADS"
CPU_WORKER_THREADS = 1


def worker_threads(devices: list[str]) -> int:
    """Intra-op threads of each local worker: ``AUTONAS_WORKER_THREADS`` when set, else the measured default.

    CPU workers default to one thread each. Measured with ``benchmarks/thread_choice.py`` on this project's
    shared 2-core machine (fresh processes, alternated, 2 rounds; other jobs kept the load average near 12):
    a training process made 742 tokens/s at 1 thread against 140 at 2 with no competitor of ours, and 454
    against 73 beside a second training process; 2 threads on a busy machine only queue behind the other jobs.
    GPU workers keep the cores shared evenly (their CPU threads feed the device; not measured here). On a
    quiet machine with cores to spare, ``AUTONAS_WORKER_THREADS=2`` (or more) in the driver's environment
    gives each worker more.
    """
    raw = os.environ.get(WORKER_THREADS_ENV, "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise UserError(f"{WORKER_THREADS_ENV}={raw!r}: give a whole number of threads, at least 1")
        return int(raw)
    if any(d.startswith("cuda") for d in devices):
        return max(1, (os.cpu_count() or 1) // len(devices))
    return CPU_WORKER_THREADS


class LocalExecutor:
    """One worker per visible GPU, else ``workers`` CPU processes sharing the cores evenly."""

    def __init__(self, workers: int | None = None, devices: list[str] | None = None, log_path: str | None = None):
        import torch  # here, not at the top: the search driver imports this module and never needs torch otherwise

        if devices is None:
            if torch.cuda.is_available():
                devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
            else:
                devices = ["cpu"] * (workers or 1)
        if not devices:
            raise UserError("no devices to run trials on")
        threads = worker_threads(devices)
        self.workers: list[_Worker] = []
        for dev in devices:
            env = {"OMP_NUM_THREADS": str(threads), "AUTONAS_WORKER_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
            if dev.startswith("cuda"):
                env["CUDA_VISIBLE_DEVICES"] = dev.split(":")[1] if ":" in dev else "0"
            self.workers.append(_Worker(device="cuda" if dev.startswith("cuda") else "cpu", env=env, log_path=log_path))
        for w in self.workers:
            w.start()
        self.slots = len(self.workers)

    def free_slots(self) -> int:
        return sum(1 for w in self.workers if w.spec is None)

    def submit(self, spec: TrialSpec) -> None:
        worker = next((w for w in self.workers if w.spec is None), None)
        if worker is None:
            raise RuntimeError("no free worker: call wait() first")
        if not worker.alive():
            worker.kill()
            worker.start()
        spec = spec.model_copy(update={"device": worker.device})
        worker.spec, worker.started = spec, time.monotonic()
        worker.deadline = worker.started + spec.time_limit_s if spec.time_limit_s else None
        assert worker.process is not None and worker.process.stdin is not None
        worker.process.stdin.write(spec.model_dump_json() + "\n")
        worker.process.stdin.flush()

    def _replace(self, worker: _Worker, status: Status, reason: str) -> TrialResult:
        spec = worker.spec
        assert spec is not None
        worker.kill()
        worker.start()
        worker.spec = None
        return TrialResult(
            number=spec.number,
            stage=spec.stage,
            replicate=spec.replicate,
            status=status,
            fail_reason=reason,
            run_s=time.monotonic() - worker.started,
        )

    def _read(self, worker: _Worker) -> TrialResult | None:
        """The worker's next result line; None while it only reported being ready."""
        assert worker.process is not None and worker.process.stdout is not None
        line = worker.process.stdout.readline()
        if line.strip() == "ready":
            return None
        if not line:
            worker.process.wait(timeout=10)
            code = worker.process.returncode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            return self._replace(
                worker, "crashed", f"worker process died ({how}); running out of memory is the usual cause"
            )
        result = TrialResult.model_validate_json(line)
        worker.spec = None
        return result

    def wait(self, timeout: float | None = None) -> list[TrialResult]:
        """Results of trials that finished within ``timeout`` seconds (possibly none)."""
        out: list[TrialResult] = []
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            busy = [w for w in self.workers if w.spec is not None]
            if not busy:
                return out
            now = time.monotonic()
            limits = [w.deadline - now for w in busy if w.deadline is not None]
            if end is not None:
                limits.append(end - now)
            limit = max(0.0, min(limits)) if limits else None
            # keyed by file descriptor: wait() hands back what it was given, and _read reads the worker's stream
            by_fd = {
                w.process.stdout.fileno(): w for w in busy if w.process is not None and w.process.stdout is not None
            }
            for fd in wait(list(by_fd), timeout=limit):
                assert isinstance(fd, int)
                result = self._read(by_fd[fd])
                if result is not None:
                    out.append(result)
            for w in busy:
                if w.spec is not None and w.deadline is not None and time.monotonic() >= w.deadline:
                    out.append(
                        self._replace(
                            w, "timeout", f"no result within the trial time limit of {w.spec.time_limit_s:.0f} s"
                        )
                    )
            if out or (end is not None and time.monotonic() >= end):
                return out

    def shutdown(self) -> None:
        """Idle workers are told to finish (end of their input) all at once, then given 5 s together to exit (one
        after the other, a loaded machine made this 4 s per worker); a busy or stuck one is killed with its group."""
        idle = [w for w in self.workers if w.process is not None and w.process.stdin is not None and w.spec is None]
        for w in idle:
            try:
                assert w.process is not None and w.process.stdin is not None
                w.process.stdin.close()
            except OSError:
                pass
        end = time.monotonic() + 5
        for w in idle:
            try:
                assert w.process is not None
                w.process.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for w in self.workers:
            w.kill()


def _ray_run(spec_json: str, threads: int) -> str:
    # Runs in a Ray worker process: it imports what the trial needs there, not the driver at import time.
    import torch

    from nas.trial import run_trial

    torch.set_num_threads(max(1, threads))
    return run_trial(TrialSpec.model_validate_json(spec_json), include_files=True).model_dump_json()


MAX_LOST_RETRIES = 2  # times a trial lost with its node or worker is run again before it counts as crashed
# Ray's errors for a task lost with its worker process or node (ray.exceptions): the trial did not fail by itself.
# A RayTaskError (the trial's own exception), OutOfMemoryError (the trial used too much memory), a cancellation
# (the trial's time limit) are the trial's own outcome and are not retried.
LOST_ERRORS = ("NodeDiedError", "WorkerCrashedError", "LocalRayletDiedError", "ObjectLostError")


def task_lost(err: BaseException, exceptions: Any) -> bool:
    """Whether ``err`` (from ``ray.get``) says a task was lost with its node or worker rather than failed by itself;
    ``exceptions`` is ``ray.exceptions`` (passed in: this module does not import Ray unless it is used)."""
    lost = tuple(getattr(exceptions, name) for name in LOST_ERRORS)
    return isinstance(err, lost) and not isinstance(err, exceptions.RayTaskError)


@dataclass
class _RayTask:
    """A trial on the cluster: its spec, when its current attempt started, and why earlier attempts were lost."""

    spec: TrialSpec
    started: float  # time.monotonic() of this attempt: the trial's time limit counts from here
    first_started: float
    lost: list[str]


class RayExecutor:
    """Trials as Ray tasks on an existing cluster (``address``), or a local one (``address='local'``).

    Each task asks for ``gpus_per_trial`` GPUs (default: 1 where the cluster has GPUs) and
    ``cpus_per_trial`` CPUs; Ray places it. Workers write the trial folder themselves when they share the
    driver's disk; otherwise the small result files come back with the result and are written here.

    A task lost with its node or worker process (:data:`LOST_ERRORS`) is submitted again, at most
    ``max_lost_retries`` times; its result then carries ``executor_retries`` and ``executor_retry_reason`` in its
    metrics (so results.tsv shows them). The retries are ours, not Ray's (``max_retries=0``), so that they are
    recorded and so that a trial that fails by itself is never run twice. On a shared disk a retried trial continues
    from its folder's checkpoint, or reads its finished ``metrics.json``, like a resumed search's.
    """

    def __init__(
        self,
        address: str,
        cpus_per_trial: int = 1,
        gpus_per_trial: float | None = None,
        connect_timeout_s: float = 30.0,
        max_lost_retries: int = MAX_LOST_RETRIES,
    ):
        try:
            import ray  # optional (the 'ray' extra) and heavy: only the Ray executor needs it
        except ImportError:
            raise UserError("the ray executor needs the 'ray' package: pip install ray") from None
        self.ray = ray
        os.environ.setdefault("RAY_gcs_rpc_server_connect_timeout_s", str(int(connect_timeout_s)))
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        kwargs: dict[str, Any] = {
            "ignore_reinit_error": True,
            "include_dashboard": False,
            "log_to_driver": False,
            "configure_logging": False,
        }
        if address != "local":
            _check_reachable(address, connect_timeout_s)
        loopback = address == "local" or _host(address) in ("127.0.0.1", "localhost", "::1")
        if loopback:  # keep a one-machine cluster on the loopback interface
            kwargs["_node_ip_address"] = "127.0.0.1"
        try:
            if address == "local":
                with environ_limited_to(WORKER):  # the cluster's processes (and so the tasks) start from it
                    ray.init(num_cpus=os.cpu_count(), **kwargs)
            else:
                ray.init(address=address, **kwargs)
        except Exception as err:  # ray raises ConnectionError, RuntimeError, ValueError ... for a bad address
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"cannot connect to the Ray cluster at {address!r}: {first[:200]}") from None
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0)
        self.gpus_per_trial = gpus_per_trial if gpus_per_trial is not None else (1.0 if gpus >= 1 else 0.0)
        self.cpus_per_trial = cpus_per_trial
        self.max_lost_retries = max_lost_retries
        self.slots = self._slots(resources)
        self._remote = ray.remote(_ray_run).options(
            num_cpus=cpus_per_trial, num_gpus=self.gpus_per_trial, max_retries=0
        )
        self._running: dict[Any, _RayTask] = {}

    def _slots(self, resources: dict[str, float]) -> int:
        """Trials the cluster can run at once, from its resources (a lost node lowers it)."""
        if self.gpus_per_trial:
            return max(1, int(resources.get("GPU", 0) // self.gpus_per_trial))
        return max(1, int(resources.get("CPU", 1) // max(self.cpus_per_trial, 1)))

    def free_slots(self) -> int:
        return self.slots - len(self._running)

    def _launch(self, task: _RayTask) -> None:
        ref = self._remote.remote(task.spec.model_dump_json(), self.cpus_per_trial)
        self._running[ref] = task

    def submit(self, spec: TrialSpec) -> None:
        now = time.monotonic()
        self._launch(_RayTask(spec.model_copy(update={"device": "auto"}), now, now, []))

    def _result(self, ref: Any, task: _RayTask) -> TrialResult | None:
        """The finished task's result; None when it was lost and has been submitted again."""
        spec = task.spec
        try:
            result = TrialResult.model_validate_json(self.ray.get(ref))
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            reason = f"{type(err).__name__}: {first[:300]}"
            if task_lost(err, self.ray.exceptions) and len(task.lost) < self.max_lost_retries:
                task.lost.append(reason)
                task.started = time.monotonic()
                self.slots = min(self.slots, self._slots(self.ray.cluster_resources()))
                self._launch(task)
                return None
            lost = f" (after {len(task.lost)} retries of a lost task)" if task.lost else ""
            result = TrialResult(
                number=spec.number,
                stage=spec.stage,
                replicate=spec.replicate,
                status="crashed",
                fail_reason=f"ray task failed{lost}: {reason}",
                run_s=time.monotonic() - task.first_started,
            )
        if task.lost:
            result.metrics = {
                **result.metrics,
                "executor_retries": len(task.lost),
                "executor_retry_reason": task.lost[-1],
            }
        _write_missing_files(spec, result)
        return result

    def wait(self, timeout: float | None = None) -> list[TrialResult]:
        if not self._running:
            return []
        now = time.monotonic()
        deadlines = [t.started + t.spec.time_limit_s - now for t in self._running.values() if t.spec.time_limit_s]
        limit = (
            min([timeout] + deadlines)
            if timeout is not None and deadlines
            else (timeout if not deadlines else min(deadlines))
        )
        ready, _ = self.ray.wait(list(self._running), num_returns=1, timeout=None if limit is None else max(0.0, limit))
        out = []
        for ref in ready:
            result = self._result(ref, self._running.pop(ref))
            if result is not None:
                out.append(result)
        for ref, task in list(self._running.items()):
            spec = task.spec
            if spec.time_limit_s and time.monotonic() - task.started >= spec.time_limit_s:
                self.ray.cancel(ref, force=True)
                self._running.pop(ref)
                out.append(
                    TrialResult(
                        number=spec.number,
                        stage=spec.stage,
                        replicate=spec.replicate,
                        status="timeout",
                        fail_reason=f"no result within the trial time limit of {spec.time_limit_s:.0f} s",
                        run_s=time.monotonic() - task.first_started,
                    )
                )
        return out

    def shutdown(self) -> None:
        for ref in list(self._running):
            self.ray.cancel(ref, force=True)
        self._running.clear()
        self.ray.shutdown()


def _host(address: str) -> str:
    return address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")


def _check_reachable(address: str, timeout_s: float) -> None:
    """Fail in seconds on a wrong address (ray.init itself retries for minutes)."""
    rest = address.split("://", 1)[-1]
    if ":" not in rest:
        raise UserError(f"Ray address {address!r} needs a port (host:port), or use 'local'")
    host, port = rest.rsplit(":", 1)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=min(timeout_s, 5.0)):
            pass
    except (OSError, ValueError) as err:
        raise UserError(f"cannot connect to the Ray cluster at {address!r}: {err}") from None


def _write_missing_files(spec: TrialSpec, result: TrialResult) -> None:
    """A remote trial's files in its folder here; its metrics.json through the one writer, so it is checked too."""
    out = Path(spec.out_dir)
    if not result.files or (out / METRICS_FILE).is_file():
        return
    out.mkdir(parents=True, exist_ok=True)
    for name, text in result.files.items():
        if name in RESULT_FILES and name != METRICS_FILE:
            (out / name).write_text(text)
    if METRICS_FILE in result.files:  # written last: its presence means the trial finished
        try:
            write_metrics(out, parse_metrics(result.files[METRICS_FILE], f"{out / METRICS_FILE} (from the worker)"))
        except RunFileError:  # not the trainer's file: kept out of the folder, so a resume trains the trial again
            pass
    result.files = {}
