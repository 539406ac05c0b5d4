"""When and where the search's trials run: its wall clock across resumes, and trials on an executor.

The clock decides whether stage 1 may still start work (``--budget`` minus the share kept for stage 2, a STOP file
in the run folder) and, with ``cap_trials``, the wall-clock deadline every trial gets. The runner turns a trial
number and architecture into a :class:`~nas.trial.TrialSpec` (one folder per stage and number, so a trial run again
after a kill finds its checkpoint or its finished metrics), keeps the executor's slots busy and hands back results.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from harness.budget import parse_budget
from nas.executors import Executor
from nas.search_config import SearchConfig
from nas.space import ArchConfig
from nas.trial import TrialResult, TrialSpec

STOP_FILE = "STOP"  # touch <out>/STOP: no new stage-1 work; a stopped search writes its outputs and ends


def trial_time_limit(budget: str, fallback: float) -> float:
    """A worker's hard limit for one trial: three times a time budget plus start-up, or ``fallback`` for a token
    budget (whose duration is not known in advance)."""
    b = parse_budget(budget)
    return b.seconds * 3 + 120 if b.seconds is not None else fallback


def trial_folder(out: Path, stage: int, number: int) -> Path:
    return out / "trials" / f"s{stage}-{number:05d}"


class SearchClock:
    """Seconds the search has run, counting the runs before a resume (stored on the study)."""

    def __init__(self, cfg: SearchConfig, out: Path, elapsed_before: float, started: float):
        self.cfg, self.out = cfg, out
        self.elapsed_before = elapsed_before
        self.started = started  # time.monotonic() when this run began

    def elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self.started)

    def stop_requested(self) -> bool:
        return (self.out / STOP_FILE).exists()

    def _budget_s(self) -> float:
        """``--budget`` in seconds; only called with one (a search refuses a token --budget at its start)."""
        seconds = parse_budget(self.cfg.budget).seconds if self.cfg.budget is not None else None
        assert seconds is not None, "Search checks that --budget is wall-clock time"
        return seconds

    def stage1_time_left(self) -> bool:
        """Whether stage 1 may still start work: no STOP file, and its share of --budget not spent."""
        cfg = self.cfg
        if self.stop_requested():
            return False
        if cfg.budget is not None:
            share = 1 - cfg.stage2_share if cfg.has_stage2 else 1.0
            if self.elapsed() >= self._budget_s() * share:
                return False
        return True

    def deadline(self) -> float | None:
        """With ``cap_trials``, the end of the search's --budget (``time.time()``): a trial's wall cap, so the search
        ends by its budget even when its trials' token budgets would take longer (None: trials run to their budget)."""
        if self.cfg.budget is None or not self.cfg.cap_trials:
            return None
        return time.time() + self._budget_s() - self.elapsed()


class TrialRunner:
    """Trials on an executor. ``pending`` trials (resumed after a kill, promoted to stage 2) take free slots before
    new ones are made."""

    def __init__(self, cfg: SearchConfig, out: Path, executor: Executor, clock: SearchClock):
        self.cfg, self.out, self.executor, self.clock = cfg, out, executor, clock
        self.running: dict[tuple[int, int], TrialSpec] = {}  # (stage, number) -> what a worker is running
        self.pending: deque[tuple[int, int, ArchConfig]] = deque()  # (stage, number, arch) waiting for a slot

    def spec(self, stage: int, number: int, arch: ArchConfig) -> TrialSpec:
        cfg = self.cfg
        budget = cfg.stage1_budget if stage == 1 else str(cfg.stage2_budget)
        return TrialSpec(
            number=number,
            stage=stage,
            arch=arch,
            budget=budget,
            out_dir=str(trial_folder(self.out, stage, number)),
            corpus=cfg.corpus,
            tokenizer=cfg.tokenizer,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            seed=cfg.seed,
            eval_bytes=cfg.eval_bytes,
            time_limit_s=trial_time_limit(budget, cfg.trial_timeout_s),
            deadline=self.clock.deadline(),
        )

    def submit(self, stage: int, number: int, arch: ArchConfig) -> None:
        spec = self.spec(stage, number, arch)
        self.executor.submit(spec)
        self.running[(stage, number)] = spec

    def fill(self, stage: int, make: Callable[[], tuple[int, ArchConfig] | None]) -> None:
        """Give every free slot a pending trial, else a new one of ``stage`` from ``make`` (None: nothing to run)."""
        while self.executor.free_slots() > 0:
            if self.pending:
                self.submit(*self.pending.popleft())
                continue
            item = make()
            if item is None:
                return
            self.submit(stage, *item)

    def wait(self, timeout: float) -> list[TrialResult]:
        """Results that came back within ``timeout`` seconds (their trials no longer count as running)."""
        results = self.executor.wait(timeout=timeout)
        for result in results:
            self.running.pop((result.stage, result.number), None)
        return results
