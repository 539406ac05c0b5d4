"""sandbox.processes: a child's whole group ends with it, and a child dies with its parent (real processes)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from sandbox.processes import kill_group

# A leader that starts a sleeping grandchild in its own group and prints the grandchild's pid.
LEADER = (
    "import subprocess, sys, time\n"
    "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "print(p.pid, flush=True)\n"
    "time.sleep(120)\n"
)


def _gone(pid: int, within_s: float = 5.0) -> bool:
    """No such process, or only its zombie (reaping an orphan is init's business)."""
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def _leader() -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", LEADER], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def test_kill_group_terms_then_takes_the_whole_group():
    proc, grandchild = _leader()
    code = kill_group(proc, grace_s=2.0)
    assert code == -signal.SIGTERM  # the grace signal ended the leader
    assert _gone(grandchild)  # SIGKILL after the grace took what the leader left in its group


def test_kill_group_without_grace_kills_at_once():
    proc, grandchild = _leader()
    assert kill_group(proc, wait_s=10) == -signal.SIGKILL
    assert _gone(grandchild)


def test_die_with_parent():
    parent = (
        "import subprocess, sys\n"
        "from sandbox.processes import die_with_parent\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], preexec_fn=die_with_parent)\n"
        "print(c.pid, flush=True)\n"
    )  # and exits at once, leaving the child
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=60, check=True)
    assert _gone(int(out.stdout))
