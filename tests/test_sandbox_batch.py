"""Sandboxes started ahead (sandbox.batch, sandbox.isolation.start): still one fresh sandbox per program.

Programs run one after another in one evaluation, each handed to a sandbox that was started before the
program was known: none may see what an earlier one left (files, shared memory, processes, interpreter
state), a program's deadline counts from the hand-over, and nothing is left running afterwards.
"""

from __future__ import annotations

import os
import time

import pytest

from sandbox import batch
from sandbox.isolation import ExecLimits, ExecResult, start
from tests.sandbox_helpers import live_descendants, needs_sandbox

# Leaves a file in /tmp and /dev/shm, a change to a module it imported, a variable in the environment, and a
# daemon in a session of its own; then passes.
LEAVER = (
    "import json, os, time\n"
    "open('/tmp/left-behind', 'w').write('x')\n"
    "open('/dev/shm/left-behind', 'w').write('x')\n"
    "json.left_behind = True\n"
    "os.environ['LEFT_BEHIND'] = '1'\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    while True:\n"
    "        time.sleep(0.05)\n"
)
# Fails (with what it found) if anything of an earlier program is visible.
LOOKER = (
    "import json, os\n"
    "found = [p for p in ('/tmp/left-behind', '/dev/shm/left-behind') if os.path.exists(p)]\n"
    "found += ['json'] if hasattr(json, 'left_behind') else []\n"
    "found += ['environ'] if 'LEFT_BEHIND' in os.environ else []\n"
    "procs = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
    "found += ['processes %s' % procs] if len(procs) > 2 else []  # the namespace's init and this interpreter\n"
    "assert not found, found\n"
)


@pytest.fixture
def pre_existing() -> set[int]:
    """This process's children before the test: a test run holds others (GitPython's cat-file helpers of earlier
    tests live until their Repo is collected), and only a process the evaluation left behind is a leak."""
    return live_descendants(os.getpid())


@needs_sandbox
@pytest.mark.parametrize("workers", [1, 2])
def test_programs_of_one_evaluation_cannot_see_each_other(workers: int, pre_existing: set[int]) -> None:
    sources = [LEAVER, LOOKER] * 6
    results = batch.run_programs(sources, ExecLimits(timeout_s=5), workers=workers)
    assert len(results) == len(sources)
    for i, r in enumerate(results):
        assert r.passed, f"program {i}: {r.result}"
    assert live_descendants(os.getpid()) - pre_existing == set()  # the daemons went with their sandboxes


@needs_sandbox
def test_a_sandbox_started_ahead_counts_the_deadline_from_the_hand_over(pre_existing: set[int]) -> None:
    limits = ExecLimits(timeout_s=1.0, grace_s=1.0)
    waited = start(limits)
    time.sleep(limits.timeout_s + limits.grace_s + 0.5)  # longer than the whole deadline, before the program
    assert waited.run("import time\ntime.sleep(0.2)\n").passed
    hung = start(limits)
    time.sleep(0.5)
    assert hung.run("while True:\n    pass\n").result == "timed out"
    assert live_descendants(os.getpid()) - pre_existing == set()


@needs_sandbox
def test_hung_and_forking_programs_are_killed_and_nothing_is_left(pre_existing: set[int]) -> None:
    sources = [
        "import os, time\nfor _ in range(8):\n    if os.fork() == 0:\n        break\nwhile True:\n    time.sleep(1)\n",
        "import signal, time\nsignal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals))\ntime.sleep(1000)\n",
        "pass\n",
    ]
    results = batch.run_programs(sources, ExecLimits(timeout_s=0.5, grace_s=0.5), workers=2)
    assert [r.result for r in results] == ["timed out", "timed out", "passed"]
    assert live_descendants(os.getpid()) - pre_existing == set()


@needs_sandbox
def test_a_sandbox_that_gets_no_program_is_torn_down(pre_existing: set[int]) -> None:
    box = start(ExecLimits())
    box.close()
    assert live_descendants(os.getpid()) - pre_existing == set()


def test_a_sandbox_that_cannot_start_fails_only_its_program(
    monkeypatch: pytest.MonkeyPatch, pre_existing: set[int]
) -> None:
    """(Unsandboxed, so it runs anywhere.) The second start fails: that program fails, the others pass, in order."""
    real_start, calls = batch.start, []

    def flaky(limits: ExecLimits):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:
            raise OSError("no more processes")
        return real_start(limits)

    monkeypatch.setattr(batch, "start", flaky)
    done: list[int] = []
    sources = ["pass\n", "pass\n", "raise ValueError('third')\n", "pass\n"]
    results = batch.run_programs(
        sources, ExecLimits(unsafe_no_sandbox=True), workers=1, on_done=lambda i, r: done.append(i)
    )
    assert [r.result for r in results] == [
        "passed",
        "failed: the harness could not run it (no more processes)",
        "failed: ValueError: third",
        "passed",
    ]
    assert all(isinstance(r, ExecResult) for r in results) and sorted(done) == [0, 1, 2, 3]
    assert live_descendants(os.getpid()) - pre_existing == set()


def test_an_evaluation_whose_sandboxes_cannot_start_at_all_raises(
    monkeypatch: pytest.MonkeyPatch, pre_existing: set[int]
) -> None:
    """An error that is no single program's (here a RuntimeError from start) stops the evaluation and reaches
    the caller, instead of leaving the workers waiting for sandboxes that never come."""
    real_start, calls = batch.start, []

    def broken_after_two(limits: ExecLimits):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("the kernel refused the sandbox")
        return real_start(limits)

    monkeypatch.setattr(batch, "start", broken_after_two)
    with pytest.raises(RuntimeError, match="kernel refused"):
        batch.run_programs(["pass\n"] * 6, ExecLimits(unsafe_no_sandbox=True), workers=2, ahead=1)
    assert live_descendants(os.getpid()) - pre_existing == set()
