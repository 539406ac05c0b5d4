"""When and where the search's trials run: its wall clock across resumes, and trials (jobs) on an executor.

The clock decides whether stage 1 may still start work (``--budget`` minus the share kept for stage 2, a STOP file
in the run folder) and, with ``cap_trials``, the wall-clock deadline every trial gets. The runner turns a trial
number and architecture (a :class:`Job`) into a :class:`~nas.trial.TrialSpec` (one folder per stage and number, and
per replicate, so a trial run again after a kill finds its checkpoint or its finished metrics), keeps the executor's
slots busy and hands back results.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.budget import parse_budget
from nas.executors import Executor
from nas.objectives import parse_objectives
from nas.search_config import SearchConfig
from nas.space import ArchConfig
from nas.trial import TrialResult, TrialSpec

STOP_FILE = "STOP"  # touch <out>/STOP: no new stage-1 work; a stopped search writes its outputs and ends


def trial_time_limit(budget: str, fallback: float) -> float:
    """A worker's hard limit for one trial: three times a time budget plus start-up, or ``fallback`` for a token
    budget (whose duration is not known in advance)."""
    b = parse_budget(budget)
    return b.seconds * 3 + 120 if b.seconds is not None else fallback


def trial_folder(out: Path, stage: int, number: int, replicate: int = 0) -> Path:
    """``trials/s1-00012``; a replicate (the same trial again with another seed) is ``trials/s1-00012-r1``."""
    return out / "trials" / (f"s{stage}-{number:05d}" + (f"-r{replicate}" if replicate else ""))


@dataclass(frozen=True)
class Job:
    """One training for a worker: trial ``number`` of ``stage`` (its ``replicate``-th repeat when > 0), trained for
    ``budget`` (None: the stage's budget of the two-stage search) from ``init_from`` (a folder) or from scratch."""

    stage: int
    number: int
    arch: ArchConfig
    budget: str | None = None
    init_from: str | None = None
    replicate: int = 0

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.stage, self.number, self.replicate)


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

    def time_left(self) -> bool:
        """Whether any work may still start: no STOP file, and --budget not spent."""
        if self.stop_requested():
            return False
        return self.cfg.budget is None or self.elapsed() < self._budget_s()

    def deadline(self) -> float | None:
        """With ``cap_trials``, the end of the search's --budget (``time.time()``): a trial's wall cap, so the search
        ends by its budget even when its trials' token budgets would take longer (None: trials run to their budget)."""
        if self.cfg.budget is None or not self.cfg.cap_trials:
            return None
        return time.time() + self._budget_s() - self.elapsed()


class TrialRunner:
    """Jobs on an executor. ``pending`` jobs (resumed after a kill, promoted to stage 2) take free slots before new
    ones are made."""

    def __init__(self, cfg: SearchConfig, out: Path, executor: Executor, clock: SearchClock):
        self.cfg, self.out, self.executor, self.clock = cfg, out, executor, clock
        self.running: dict[tuple[int, int, int], TrialSpec] = {}  # (stage, number, replicate) -> what a worker runs
        self.pending: deque[Job] = deque()  # waiting for a slot
        self.latency_objective = any(o.metric.startswith("latency") for o in parse_objectives(cfg.objectives))

    def spec(self, job: Job) -> TrialSpec:
        cfg = self.cfg
        budget = job.budget or (cfg.stage1_budget if job.stage == 1 else str(cfg.stage2_budget))
        seed = cfg.seed
        if cfg.rungs:  # a continued trial must not replay its start's batches; a replicate is another seed
            seed = (cfg.seed + 7919 * (job.stage - 1) + 1_000_003 * job.replicate) % 2**32
        return TrialSpec(
            number=job.number,
            stage=job.stage,
            arch=job.arch,
            budget=budget,
            out_dir=str(trial_folder(self.out, job.stage, job.number, job.replicate)),
            corpus=cfg.corpus,
            tokenizer=cfg.tokenizer,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            seed=seed,
            eval_bytes=cfg.eval_bytes,
            time_limit_s=trial_time_limit(budget, cfg.trial_timeout_s),
            deadline=self.clock.deadline(),
            init_from=job.init_from,
            replicate=job.replicate,
            # a trial's own latency only when an objective needs it: the limit is checked at screening (untrained
            # models decode as fast) and the final front is measured again; it was 0.77 s of a 1.2 s tiny trial
            measure_latency=self.latency_objective,
        )

    def submit(self, job: Job) -> None:
        spec = self.spec(job)
        self.executor.submit(spec)
        self.running[job.key] = spec

    def planned_tokens(self) -> int:
        """Tokens the running jobs were asked to train (a time budget counts 0: its tokens are not known)."""
        return sum(parse_budget(s.budget).tokens or 0 for s in self.running.values())

    def fill(self, make: Callable[[], Job | None]) -> None:
        """Give every free slot a pending job, else a new one from ``make`` (None: nothing to run now)."""
        while self.executor.free_slots() > 0:
            if self.pending:
                self.submit(self.pending.popleft())
                continue
            job = make()
            if job is None:
                return
            self.submit(job)

    def wait(self, timeout: float) -> list[TrialResult]:
        """Results that came back within ``timeout`` seconds (their jobs no longer count as running)."""
        results = self.executor.wait(timeout=timeout)
        for result in results:
            self.running.pop((result.stage, result.number, result.replicate), None)
        return results
