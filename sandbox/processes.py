"""Process groups: the one place that makes a child die with its parent and ends a child's whole group.

Every long-running child of the project (a worker under :mod:`sandbox.runner`, Claude Code under
:mod:`ccaa.claude_code`, a trial worker of :mod:`nas.executors`, an untrusted program under
:mod:`sandbox.isolation`) is started in a session of its own (``start_new_session=True``), so its process
group holds it and everything it started, and nothing else. Ending the group therefore ends exactly the
child's processes; nothing is ever killed by name, since other jobs share the machine. Standard library
only: ``nas.worker`` imports this before torch, and ``harness`` and ``nas`` may both import ``sandbox``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies, so no orphan keeps writing into a run folder
    that a resumed run uses again. Elsewhere (no prctl) a no-op. Safe in a ``preexec_fn``."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def signal_group(pgid: int, sig: int = signal.SIGKILL) -> bool:
    """Send ``sig`` to process group ``pgid``; False when the group is gone (or not ours to signal)."""
    try:
        os.killpg(pgid, sig)
    except OSError:  # ProcessLookupError: nothing left in it; PermissionError: a setuid child we cannot reach
        return False
    return True


def kill_group(proc: subprocess.Popen, grace_s: float = 0.0, wait_s: float | None = None) -> int | None:
    """End the group led by ``proc`` (started with ``start_new_session``) and reap ``proc``.

    With ``grace_s`` > 0 the group first gets SIGTERM and that long to exit (a worker may checkpoint);
    then SIGKILL, which also takes whatever the leader left behind in its group. Returns the leader's exit
    code, or None when it could not be reaped within ``wait_s`` (uninterruptible sleep: left to the
    kernel rather than waited on forever; ``None`` waits without a limit). Also called after the leader
    has exited: what it left running in its group still goes (the group id stays taken while they live)."""
    if grace_s > 0 and signal_group(proc.pid, signal.SIGTERM):
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    if not signal_group(proc.pid, signal.SIGKILL) and proc.poll() is None:
        proc.kill()  # not in a group we may signal: at least the leader goes
    try:
        return proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        return None
