"""Thread counts are settable: the worker threads from the environment, refused in one line when malformed."""

from __future__ import annotations

import os

import pytest

from harness.errors import UserError
from nas.executors import WORKER_THREADS_ENV, worker_threads


def test_worker_threads_default_share_the_cores_and_the_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WORKER_THREADS_ENV, raising=False)
    cores = os.cpu_count() or 1
    assert worker_threads(1) == cores and worker_threads(cores * 2) == 1
    monkeypatch.setenv(WORKER_THREADS_ENV, "3")
    assert worker_threads(1) == 3 and worker_threads(8) == 3
    for bad in ("0", "two", "-1", "1.5"):
        monkeypatch.setenv(WORKER_THREADS_ENV, bad)
        with pytest.raises(UserError, match=f"{WORKER_THREADS_ENV}='{bad}'"):
            worker_threads(1)
