"""Multi-objective, multi-fidelity architecture search over ask/tell, resumable after any kill.

Stages (each budget a setting):

0. **Screening, free** (:mod:`nas.search_screening`). Hard limits (size from the config, then latency measured on
   the untrained model) reject a candidate before any training; zero-cost proxies rank each batch of candidates
   and the worst part is dropped (Optuna state PRUNED, recorded with its proxies).
1. **Short training** of every survivor (``stage1_budget``). Its objective values are what the sampler
   (NSGA-II, aging evolution or random) learns from.
2. **Longer training** of the best ``1/eta`` of stage 1 by Pareto rank (at most ``stage2_max``), in a
   second study ``<name>.stage2`` of the same storage so fidelities never mix in one sampler.

With ``rungs`` (e.g. ``1/27,1/9,1/3,1`` of ``max_budget`` tokens) stages 1 and 2 become rungs 1..K, run as
asynchronous successive halving (:class:`_RungSearchRun`, :mod:`nas.search_rungs`): a promoted trial continues from its
lower rung's weights and trains only the difference, each rung's noise is measured by replicates, and a promotion
follows the noise rule of :mod:`nas.rungs`. With ``inherit``, an aging-evolution child whose change keeps its parent's
function (deeper, wider FFN) starts from the parent's rung-1 weights (:mod:`nas.morphism`); every trial records its
start. ``token_budget`` stops the search when its trials together trained that many tokens (equal compute).

Every trial's architecture is stored on the Optuna trial before it runs; a trial found RUNNING after a
crash is run again from its folder (continuing from its checkpoint, or reading its finished metrics), so a
resumed search loses no completed trial and repeats none. Optuna's multi-objective studies have no
pruners, so the promotion between stages is ours, built on ask/tell.

This module holds the order of things; each job has its own module: the studies (:mod:`nas.search_study`),
screening (:mod:`nas.search_screening`), the clock and the executor (:mod:`nas.search_schedule`), the output
files (:mod:`nas.search_results`), ``best/`` (:mod:`nas.search_export`) and the live table (:mod:`nas.search_live`).
"""

from __future__ import annotations

import math
import time
from collections import deque
from pathlib import Path
from typing import Any

import torch
from optuna.trial import TrialState

from harness.budget import parse_budget
from harness.errors import UserError
from harness.tokenizer import Tokenizer, parse_tokenizer_spec
from nas.executors import Executor, LocalExecutor, RayExecutor
from nas.objectives import Objective, parse_objectives
from nas.pareto import rank_order
from nas.proxies import PROXY_NAMES
from nas.ranker import LEARNED
from nas.rungs import parse_rungs, rung_tokens
from nas.search_config import SearchConfig
from nas.search_export import export_front
from nas.search_live import LiveStatus, LiveView
from nas.search_results import SearchResults
from nas.search_rungs import RungLadder
from nas.search_schedule import Job, SearchClock, TrialRunner, trial_folder
from nas.search_screening import Candidate, Screener
from nas.search_study import TRAINED_STATUSES, Outcome, SearchStudies, arch_attrs
from nas.space import ArchConfig, SearchSpace, get_space
from nas.trial import TrialResult, cached_corpus

__all__ = ["Search", "SearchConfig"]  # SearchConfig lives in nas.search_config; importers name it from here

DRIVER_THREADS = 1  # the driver's own torch work: proxies of one candidate, the front's latency (decoded at 1 thread)
TSV_EVERY_S = 10.0  # results.tsv is rewritten at most this often while trials finish (and always at the end)
MAX_EMPTY_BATCHES = 50  # screening batches in a row with no survivor before the limits are called too tight
WAIT_S = 1.0  # how long one look at the executor waits for results


class Search:
    """Run with :meth:`run`; ``resume=True`` continues the study stored for ``cfg.out``.

    The constructor checks the config (bad input is one line before anything is touched); :meth:`run` connects the
    executor first (a bad cluster address must not touch the study), then opens the studies."""

    def __init__(self, cfg: SearchConfig, resume: bool = False, live: bool = True, executor: Executor | None = None):
        self.cfg, self.resume, self.live = cfg, resume, live
        self.out = Path(cfg.out)
        self.objectives: list[Objective] = parse_objectives(cfg.objectives)
        _, vocab = parse_tokenizer_spec(cfg.tokenizer)
        self.space: SearchSpace = get_space(cfg.space).model_copy(update={"vocab_size": (vocab,)})
        for b in (cfg.stage1_budget, cfg.stage2_budget, cfg.budget):
            if b is not None:
                parse_budget(b)
        if cfg.trials is None and cfg.budget is None and cfg.token_budget is None:
            raise UserError("give --trials, --budget or --token-budget so the search knows when to stop")
        if cfg.token_budget is not None and parse_budget(cfg.token_budget).tokens is None:
            raise UserError(f"--token-budget {cfg.token_budget} is a time: give tokens trained in all, e.g. 5Mtok")
        if cfg.rungs is not None:
            self.cfg = cfg = _with_rungs(cfg)
        elif cfg.token_budget is not None and parse_budget(cfg.stage1_budget).tokens is None:
            raise UserError("--token-budget counts tokens: give the trials a token budget too (--stage1 e.g. 50ktok)")
        if cfg.budget is not None and parse_budget(cfg.budget).seconds is None:
            raise UserError(f"--budget {cfg.budget} is a token count: a search's --budget is wall-clock time, e.g. 1h")
        if cfg.screen_proxy not in (*PROXY_NAMES, LEARNED):
            raise UserError(
                f"unknown screening proxy {cfg.screen_proxy!r}: choose from {', '.join((*PROXY_NAMES, LEARNED))}"
            )
        smallest = self.space.smallest()
        too_big = [k for k, v in cfg.limits.size_violations(smallest).items() if v > 0]
        if too_big:
            raise UserError(
                f"no architecture in the search space fits the limits: even the smallest ({smallest.describe()}) "
                f"exceeds {', '.join(too_big)}"
            )
        self.executor = executor  # None: run makes one from the config; either way run shuts it down at the end

    def _connect(self) -> Executor:
        if self.executor is not None:
            return self.executor
        if self.cfg.executor == "ray":
            if not self.cfg.ray_address:
                raise UserError("--executor ray needs --ray-address HOST:PORT (or 'local' to start one here)")
            return RayExecutor(self.cfg.ray_address)
        return LocalExecutor(workers=self.cfg.workers, log_path=str(self.out / "workers.log"))

    def run(self) -> dict[str, Any]:
        """Run (or resume) the search; returns the summary also written to pareto.json.

        The driver's torch work runs on one thread: a proxy on a tiny untrained model is a chain of small operators,
        and a second thread waits for a core the workers hold (a 200-trial search spent 567 s on proxies at two
        threads on a busy 2-core machine, 37 s at one). Latency of the final front is measured at one thread, the
        project's decode default (``kernels/threads.py``)."""
        threads_before = torch.get_num_threads()
        torch.set_num_threads(DRIVER_THREADS)
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads_before)

    def _run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        executor = self._connect()
        started = time.monotonic()
        try:
            studies = SearchStudies(self.cfg, self.out, len(self.objectives), self.resume)
            corpus = cached_corpus(self.cfg.corpus, self.cfg.tokenizer)
            view = LiveView(self.out, f"search {self.cfg.study_name} ({self.cfg.strategy})", enabled=self.live)
            screener = Screener(self.cfg, self.space, self.objectives, studies, corpus, view.note)
        except BaseException:
            executor.shutdown()
            raise
        clock = SearchClock(self.cfg, self.out, studies.elapsed_before, started)
        run = (_RungSearchRun if self.cfg.rungs else _SearchRun)(
            self.cfg,
            self.objectives,
            studies,
            screener,
            TrialRunner(self.cfg, self.out, executor, clock),
            SearchResults(self.cfg, self.out, self.objectives, studies),
            view,
            clock,
        )
        return run.run(corpus.tokenizer)


def _with_rungs(cfg: SearchConfig) -> SearchConfig:
    """A rung search's config with stage 1 set to rung 1's token budget and no separate stage 2 (one line for bad
    rungs)."""
    assert cfg.rungs is not None and cfg.max_budget is not None
    fractions = parse_rungs(cfg.rungs)
    max_tokens = parse_budget(cfg.max_budget).tokens
    if max_tokens is None:
        raise UserError(
            f"--max-budget {cfg.max_budget} is a time: rungs need tokens (they add up across rungs), e.g. 270ktok"
        )
    return cfg.model_copy(
        update={"stage1_budget": f"{rung_tokens(max_tokens, fractions)[0]}tok", "stage2_budget": None}
    )


class _SearchRun:
    """One run of a search over opened studies and a connected executor: stage 1, promotion, stage 2, outputs."""

    def __init__(
        self,
        cfg: SearchConfig,
        objectives: list[Objective],
        studies: SearchStudies,
        screener: Screener,
        runner: TrialRunner,
        results: SearchResults,
        view: LiveView,
        clock: SearchClock,
    ):
        self.cfg, self.objectives, self.studies, self.screener = cfg, objectives, studies, screener
        self.runner, self.results, self.view, self.clock = runner, results, view, clock
        self.ready: deque[Candidate] = deque()  # screened stage-1 candidates waiting for a worker
        self._tsv_written_at = -math.inf

    # ------------------------------------------------------------------------------------------- the order of things

    def run(self, tokenizer: Tokenizer) -> dict[str, Any]:
        try:
            self._resubmit_interrupted()
            self.view.start(self._status)
            while (
                self.runner.pending
                or self.runner.running
                or self._stage1_open()
                or (self.ready and self._stage1_open_for_submit())
            ):
                self.runner.fill(self._next_stage1)
                if not self.runner.running:
                    break
                self._drain()
            if not self.clock.stop_requested():
                self._close_queue()
                self.runner.pending.extend(Job(2, number, arch) for number, arch in self._promotions())
                while self.runner.pending or self.runner.running:
                    self.runner.fill(lambda: None)
                    self._drain()
        finally:
            self.studies.save_elapsed(self.clock.elapsed())
            self.view.stop(self._status)
            self.runner.executor.shutdown()
        return self._finalize(tokenizer)

    def _finalize(self, tokenizer: Tokenizer) -> dict[str, Any]:
        """Re-measure the final front's latency, write pareto.json / metrics.json / results.tsv / pareto.png, export
        the best."""
        stage, members = self.results.final_front()
        summary = self.results.write_final(stage, members, self.clock.elapsed(), self._rungs_record())
        export_front(self.results.out, [(m.arch, m.folder) for m in members], self.cfg.export_hf, tokenizer)
        return summary

    def _rungs_record(self) -> dict[str, Any] | None:
        """rungs.json's content for pareto.json (a search without rungs has none)."""
        return None

    def _status(self) -> LiveStatus:
        return LiveStatus(self.clock.elapsed(), self.results.counts(), [k[:2] for k in self.runner.running])

    # ------------------------------------------------------------------------------------------- stage 1

    def _stage1_trained(self) -> int:
        """Stage-1 trials that went to a worker and came back (whatever the outcome)."""
        return sum(
            1
            for t in self.studies.trials(1, TrialState.COMPLETE, TrialState.FAIL)
            if t.user_attrs.get("status") in TRAINED_STATUSES
        )

    def _stage1_open(self) -> bool:
        """May more candidates be asked for (the queue counts as planned work)?"""
        limit = self.cfg.trials
        planned = self._stage1_trained() + self._stage1_running() + len(self.ready)
        return self.clock.stage1_time_left() and (limit is None or planned < limit) and self._tokens_left()

    def _stage1_open_for_submit(self) -> bool:
        """May a queued candidate start training?"""
        limit = self.cfg.trials
        return (
            self.clock.stage1_time_left()
            and (limit is None or self._stage1_trained() + self._stage1_running() < limit)
            and self._tokens_left()
        )

    def _stage1_running(self) -> int:
        return sum(1 for stage, _, replicate in self.runner.running if stage == 1 and not replicate)

    def _tokens_left(self) -> bool:
        """With ``token_budget``: whether one more stage-1 training fits in what is left of it."""
        total = self.cfg.token_budget_tokens
        if total is None:
            return True
        spent = self.results.tokens_trained() + self.runner.planned_tokens()
        return spent + (parse_budget(self.cfg.stage1_budget).tokens or 0) <= total

    def _next_stage1(self) -> Job | None:
        """The next screened candidate to train, screening new batches while the queue is empty and stage 1 is open."""
        batches = 0
        while not self.ready and self._stage1_open():
            self.ready.extend(self.screener.screen_batch())
            batches += 1
            if batches > MAX_EMPTY_BATCHES:
                raise UserError(
                    f"the limits reject almost every sampled architecture ({MAX_EMPTY_BATCHES} batches in a row): "
                    "loosen them"
                )
        if not self.ready or not self._stage1_open_for_submit():
            return None
        cand = self.ready.popleft()
        return Job(1, cand.number, cand.arch, init_from=cand.init_from)

    def _resubmit_interrupted(self) -> None:
        """Trials a killed search left RUNNING: run them again (their folders resume or hold the result)."""
        for stage in self.studies.stages:
            for t in self.studies.interrupted(stage):
                arch_attr = t.user_attrs.get("arch")
                if arch_attr is None:
                    self.studies.tell(
                        stage,
                        t.number,
                        Outcome(TrialState.FAIL, "lost", "the search was killed while it was being sampled"),
                    )
                    continue
                arch = ArchConfig(**arch_attr)
                init_from = t.user_attrs.get("init_from")
                if stage == 1 and not trial_folder(self.results.out, 1, t.number).exists():
                    self.ready.append(Candidate(t.number, arch, init_from))  # chosen but never started: queue again
                else:
                    self.runner.pending.append(Job(stage, t.number, arch, t.user_attrs.get("train_budget"), init_from))

    def _close_queue(self) -> None:
        """Candidates still queued when stage 1 ends are closed as not run (a resume must not start them)."""
        while self.ready:
            cand = self.ready.popleft()
            self.studies.tell(
                1, cand.number, Outcome(TrialState.PRUNED, "not_run", "stage 1 ended before it was trained")
            )

    # ------------------------------------------------------------------------------------------- results, stage 2

    def _drain(self) -> None:
        for result in self.runner.wait(timeout=WAIT_S):
            self._record(result)
        self.view.refresh(self._status)

    def _record(self, result: TrialResult) -> None:
        """Tell a trained trial: COMPLETE with its objective values when it finished ok with all of them, else FAIL."""
        measured = result.status == "ok" and all(o.metric in result.metrics for o in self.objectives)
        if measured:
            values = [float(result.metrics[o.metric]) for o in self.objectives]
            outcome = Outcome(
                TrialState.COMPLETE, result.status, result.fail_reason, values, result.metrics, result.run_s
            )
            desc = " ".join(f"{o.name}={v:.4g}" for o, v in zip(self.objectives, values, strict=True))
            self.view.note(f"stage {result.stage} #{result.number}: {desc}")
        else:
            outcome = Outcome(TrialState.FAIL, result.status, result.fail_reason, None, result.metrics, result.run_s)
            self.view.note(f"stage {result.stage} #{result.number} {result.status}: {result.fail_reason}")
        self.studies.tell(result.stage, result.number, outcome)
        self.studies.save_elapsed(self.clock.elapsed())
        self._write_tsv_now_and_then()

    def _write_tsv_now_and_then(self) -> None:
        """results.tsv after a result, at most every TSV_EVERY_S: it holds every trial, so writing it after each
        one grows with the square of the trial count (192 s of a 550-trial search); the final write has them all."""
        now = time.monotonic()
        if now - self._tsv_written_at >= TSV_EVERY_S:
            self.results.write_tsv()
            self._tsv_written_at = now

    def _promotions(self) -> list[tuple[int, ArchConfig]]:
        """The best 1/eta of stage 1 by Pareto rank (then crowding), at most stage2_max, not yet promoted; each is
        asked as a stage-2 trial with its parent's parameters."""
        if not self.cfg.has_stage2:
            return []
        ok = self.studies.ok_trials(1)
        if not ok:
            return []
        k = min(self.cfg.stage2_max, math.ceil(len(ok) / self.cfg.eta))
        chosen = [ok[i] for i in rank_order([t.values for t in ok])[:k]]
        done = {t.user_attrs.get("parent") for t in self.studies.trials(2)}
        out = []
        for t in chosen:
            if t.number in done:
                continue
            trial = self.studies.ask(2, t.params)
            arch = ArchConfig(**t.user_attrs["arch"])
            for key, value in arch_attrs(arch, stage=2, parent=t.number).items():
                trial.set_user_attr(key, value)
            out.append((trial.number, arch))
        return out


class _RungSearchRun(_SearchRun):
    """A search with rungs (:mod:`nas.search_rungs`), asynchronous successive halving (ASHA, Li et al. 2020): each
    free worker gets, in this order, a replicate a rung still owes (its noise), the best promotable trial from the
    highest rung down, else a new screened rung-1 candidate. The search ends when none of them can start and no job
    is running (the stage-1 limits, --budget, --token-budget or a STOP file close the door to new work)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.ladder = RungLadder(self.cfg, self.results.out, self.studies)

    def run(self, tokenizer: Tokenizer) -> dict[str, Any]:
        try:
            self._resubmit_interrupted()
            self.runner.pending.extend(self.ladder.unfinished_replicates())
            self.view.start(self._status)
            while True:
                self.runner.fill(self._next_job)
                if not self.runner.running:
                    break
                self._drain()
            if not self.clock.stop_requested():
                self._close_queue()
        finally:
            self.studies.save_elapsed(self.clock.elapsed())
            self.ladder.write_json()
            self.view.stop(self._status)
            self.runner.executor.shutdown()
        return self._finalize(tokenizer)

    def _rungs_record(self) -> dict[str, Any] | None:
        return self.ladder.write_json()

    def _tokens_free(self) -> int | None:
        """Tokens of --token-budget not yet trained or promised to a running job (None: no such budget)."""
        total = self.cfg.token_budget_tokens
        if total is None:
            return None
        return total - self.results.tokens_trained() - self.runner.planned_tokens()

    def _next_job(self) -> Job | None:
        if self.clock.time_left():
            free = self._tokens_free()
            job = self.ladder.next_replicate(free)
            if job is not None:
                return job
            promoted = self.ladder.next_promotion(free)
            if promoted is not None:
                self.view.note(f"promote s{promoted.stage - 1}#{self._parent_of(promoted)} -> s{promoted.stage}")
                return promoted
        return self._next_stage1()

    def _parent_of(self, job: Job) -> int:
        return int(Path(str(job.init_from)).name.split("-")[1])

    def _record(self, result: TrialResult) -> None:
        if result.replicate:
            bpb = result.metrics.get("val_bpb")
            self.view.note(f"stage {result.stage} #{result.number} replicate: {result.status} bpb={bpb}")
            self._write_tsv_now_and_then()
        else:
            super()._record(result)
        self.ladder.write_json()
