"""Run a worker command as a subprocess under limits: wall clock, memory, and an environment built from the
allow-list in ``sandbox.environment`` (the worker's families of settings, no keys). On timeout the worker's
whole process group is killed (TERM, then KILL after a grace period, by :mod:`sandbox.processes`); nothing
is ever killed by name, since other jobs share the machine."""

from __future__ import annotations

import resource
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.confine import Confinement, run_confined
from sandbox.environment import WORKER, child_env
from sandbox.processes import die_with_parent, kill_group, signal_group


@dataclass(frozen=True)
class RunOutcome:
    returncode: int | None
    timed_out: bool
    wall_s: float
    signal: int | None  # the signal that ended the process, if any

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def _limits(memory_mb: int | None) -> Callable[[], None]:
    """The preexec function: the worker dies with the agent (so a resumed run never races an orphan in the
    same folder) and gets an address-space cap when ``memory_mb`` is set."""

    def apply() -> None:
        die_with_parent()
        if memory_mb is not None:
            limit = memory_mb * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def run_limited(
    cmd: Sequence[str],
    cwd: str | Path,
    log_path: str | Path,
    timeout_s: float,
    memory_mb: int | None = None,
    env: dict[str, str] | None = None,
    grace_s: float = 5.0,
    confinement: Confinement | None = None,
) -> RunOutcome:
    """Run ``cmd`` in its own session with stdout+stderr to ``log_path``; never raises for the worker's failures.
    ``env`` is the whole environment of the child (default: the worker profile of this process's environment).
    With ``confinement`` the worker runs under bubblewrap (:mod:`sandbox.confine`), which may raise
    :class:`~sandbox.confine.ConfinementUnavailable` before anything starts."""
    t0 = time.monotonic()
    with open(log_path, "ab") as log:
        kw: dict[str, Any] = dict(
            cwd=str(cwd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env if env is not None else child_env(WORKER),
            start_new_session=True,
            preexec_fn=_limits(memory_mb),
        )
        proc = (
            run_confined(list(cmd), confinement, **kw) if confinement is not None else subprocess.Popen(list(cmd), **kw)
        )
        try:
            proc.wait(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(proc, grace_s)
        finally:
            signal_group(proc.pid)  # children the worker left running in its group go too
    code = proc.returncode
    return RunOutcome(
        returncode=code,
        timed_out=timed_out,
        wall_s=time.monotonic() - t0,
        signal=-code if code is not None and code < 0 else None,
    )
