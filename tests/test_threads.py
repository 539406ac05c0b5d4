"""Thread counts are settable: the worker threads from the environment, refused in one line when malformed."""

from __future__ import annotations

import os

import pytest

from harness.errors import UserError
from nas.executors import CPU_WORKER_THREADS, WORKER_THREADS_ENV, worker_threads


def test_worker_threads_default_to_the_measured_count_and_the_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WORKER_THREADS_ENV, raising=False)
    assert worker_threads(["cpu"]) == worker_threads(["cpu", "cpu"]) == CPU_WORKER_THREADS == 1
    assert worker_threads(["cuda:0"]) == (os.cpu_count() or 1)  # a GPU worker keeps the cores
    monkeypatch.setenv(WORKER_THREADS_ENV, "3")
    assert worker_threads(["cpu"]) == 3 and worker_threads(["cuda:0", "cuda:1"]) == 3
    for bad in ("0", "two", "-1", "1.5"):
        monkeypatch.setenv(WORKER_THREADS_ENV, bad)
        with pytest.raises(UserError, match=f"{WORKER_THREADS_ENV}='{bad}'"):
            worker_threads(["cpu"])
