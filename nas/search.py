"""Multi-objective, multi-fidelity architecture search over ask/tell, resumable after any kill.

Stages (each budget a setting):

0. **Screening, free.** Hard limits (size from the config, latency measured on the untrained model)
   reject a candidate before any training; zero-cost proxies rank each batch of candidates and the worst
   part is dropped (Optuna state PRUNED, recorded with its proxies).
1. **Short training** of every survivor (``stage1_budget``). Its objective values are what the sampler
   (NSGA-II, aging evolution or random) learns from.
2. **Longer training** of the best ``1/eta`` of stage 1 by Pareto rank (at most ``stage2_max``), in a
   second study ``<name>.stage2`` of the same storage so fidelities never mix in one sampler.

Every trial's architecture is stored on the Optuna trial before it runs; a trial found RUNNING after a
crash is run again from its folder (continuing from its checkpoint, or reading its finished metrics), so a
resumed search loses no completed trial and repeats none. Optuna's multi-objective studies have no
pruners, so the promotion between stages is ours, built on ask/tell.
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness.budget import parse_budget
from harness.data import CorpusSpec
from harness.errors import UserError
from harness.run_files import EVAL_BYTES, append_log, write_metrics
from nas.executors import Executor
from nas.objectives import Objective, SearchLimits, parse_objectives
from nas.pareto import pareto_front, rank_order
from nas.space import GENES, ArchConfig, SearchSpace, get_space
from nas.storage import open_storage, study_exists
from nas.trial import TrialResult, TrialSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)

Strategy = Literal["nsga2", "evolution", "random"]
STOP_FILE = "STOP"
TRAINED_STATUSES = ("ok", "diverged", "capped", "failed", "timeout", "crashed", "interrupted")


class SearchConfig(BaseModel):
    """A search, as the CLI or the agent asks for it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    out: str
    space: str = "default"
    objectives: str = "bpb,bytes_int8"
    strategy: Strategy = "nsga2"
    limits: SearchLimits = SearchLimits()
    trials: int | None = Field(None, ge=1, description="stage-1 trainings to run (None: until the budget)")
    budget: str | None = Field(None, description="wall-clock budget of the whole search, e.g. 1h")
    cap_trials: bool = Field(False, description="trials stop at the end of --budget (a capped trial is a partial result), "
                                                "so the search ends by it; otherwise a running trial finishes")
    stage1_budget: str = "30s"
    stage2_budget: str | None = "120s"
    eta: int = Field(3, ge=2, description="promote the best 1/eta of stage 1")
    stage2_max: int = Field(4, ge=0)
    stage2_share: float = Field(0.3, ge=0, lt=1, description="part of --budget kept for stage 2")
    screen: bool = True
    screen_proxy: str = "synflow"
    screen_batch: int = Field(6, ge=1)
    screen_keep: float = Field(0.5, gt=0, le=1)
    population: int = Field(12, ge=2)
    tournament: int = Field(4, ge=2)
    seed: int = 0
    executor: Literal["local", "ray"] = "local"
    workers: int | None = Field(None, ge=1)
    ray_address: str | None = None
    storage: str | None = None
    study_name: str = "search"
    corpus: CorpusSpec = CorpusSpec()
    tokenizer: str = "byte"
    batch_size: int = Field(16, ge=1)
    lr: float = Field(3e-3, gt=0)
    eval_bytes: int = Field(EVAL_BYTES, gt=0)
    trial_timeout_s: float = Field(1800.0, gt=0, description="limit for token-budget trials")
    export_hf: bool = True

    @field_validator("stage2_budget", mode="before")
    @classmethod
    def _none_means_no_stage2(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.strip().lower() in ("", "none", "off", "0") else v


@dataclass
class _Candidate:
    trial: optuna.trial.Trial
    arch: ArchConfig


def _genes_params(space: SearchSpace, trial: optuna.trial.Trial) -> ArchConfig:
    genes = {name: trial.suggest_categorical(name, list(getattr(space, name))) for name in GENES}
    return space.decode(genes)


def _time_limit(budget: str, fallback: float) -> float:
    b = parse_budget(budget)
    return b.seconds * 3 + 120 if b.seconds is not None else fallback


class Search:
    """Run with :meth:`run`; ``resume=True`` continues the study stored for ``cfg.out``."""

    def __init__(self, cfg: SearchConfig, resume: bool = False, live: bool = True, executor: Executor | None = None):
        self.cfg, self.resume, self.live = cfg, resume, live
        self.out = Path(cfg.out)
        self.objectives: list[Objective] = parse_objectives(cfg.objectives)
        self.space = get_space(cfg.space)
        from harness.tokenizer import parse_tokenizer_spec

        _, vocab = parse_tokenizer_spec(cfg.tokenizer)
        self.space = self.space.model_copy(update={"vocab_size": (vocab,)})
        for b in (cfg.stage1_budget, cfg.stage2_budget, cfg.budget):
            if b is not None:
                parse_budget(b)
        if cfg.trials is None and cfg.budget is None:
            raise UserError("give --trials or --budget (or both) so the search knows when to stop")
        from nas.proxies import PROXY_NAMES

        if cfg.screen_proxy not in PROXY_NAMES:
            raise UserError(f"unknown screening proxy {cfg.screen_proxy!r}: choose from {', '.join(PROXY_NAMES)}")
        self._check_limits_feasible()
        self.rng = random.Random(cfg.seed)
        self._executor = executor
        self.ready: deque[_Candidate] = deque()
        self.running: dict[tuple[int, int], TrialSpec] = {}
        self.log_lines: deque[str] = deque(maxlen=12)

    # ---------------------------------------------------------------------------------------------- setup

    def _check_limits_feasible(self) -> None:
        lim = self.cfg.limits
        smallest = self.space.smallest()
        bad = {k: v for k, v in lim.size_violations(smallest).items() if v > 0}
        if bad:
            raise UserError(f"no architecture in the search space fits the limits: even the smallest ({smallest.describe()}) "
                            f"exceeds {', '.join(bad)}")

    def _open_studies(self) -> None:
        cfg = self.cfg
        self.storage = open_storage(cfg.storage, self.out)
        exists = study_exists(self.storage, cfg.study_name)
        if exists and not self.resume:
            raise UserError(f"a study {cfg.study_name!r} already exists in {cfg.storage or self.out / 'study.journal'}: "
                            "pass --resume to continue it, or choose another --out / --study-name")
        if self.resume and not exists:
            raise UserError(f"nothing to resume: no study {cfg.study_name!r} in {cfg.storage or self.out / 'study.journal'}")
        directions = ["minimize"] * len(self.objectives)
        if cfg.strategy == "nsga2":
            sampler: optuna.samplers.BaseSampler = optuna.samplers.NSGAIISampler(population_size=cfg.population, seed=cfg.seed)
        else:
            sampler = optuna.samplers.RandomSampler(seed=cfg.seed)
        self.study = optuna.create_study(storage=self.storage, study_name=cfg.study_name, directions=directions,
                                         sampler=sampler, load_if_exists=True)
        self.study2 = optuna.create_study(storage=self.storage, study_name=f"{cfg.study_name}.stage2", directions=directions,
                                          sampler=optuna.samplers.RandomSampler(seed=cfg.seed), load_if_exists=True)
        if not self.resume:
            self.study.set_user_attr("config", json.loads(cfg.model_dump_json()))
        else:
            stored = self.study.user_attrs.get("config", {})
            for key in ("space", "objectives", "tokenizer", "stage1_budget", "corpus", "eval_bytes"):  # scored alike
                mine = json.loads(cfg.model_dump_json())[key]
                if key in stored and stored[key] != mine:
                    raise UserError(f"cannot resume with a different {key} ({mine!r}; the study was run with {stored[key]!r}): "
                                    "start a new study in another --out instead")
        self.elapsed_before = float(self.study.user_attrs.get("elapsed_s", 0.0))

    def _proxy_batch(self) -> None:
        import numpy as np
        import torch

        from nas.trial import _corpus

        corpus = _corpus(self.cfg.corpus.model_dump_json(), self.cfg.tokenizer)
        self.corpus = corpus
        g = np.random.Generator(np.random.PCG64(self.cfg.seed))
        T = min(128, min(self.space.context_length))
        train = corpus["train"]
        starts = g.integers(0, train.size - T - 1, size=4)
        window = torch.from_numpy(np.stack([np.asarray(train[s : s + T + 1], dtype=np.int64) for s in starts]))
        self.proxy_x, self.proxy_y = window[:, :-1], window[:, 1:]

    # ---------------------------------------------------------------------------------------------- stage 0

    def _tell(self, study: optuna.Study, trial: optuna.trial.Trial, attrs: dict[str, Any], values: list[float] | None,
              state: optuna.trial.TrialState = optuna.trial.TrialState.COMPLETE) -> None:
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        study.tell(trial, values=values if state == optuna.trial.TrialState.COMPLETE else None, state=state)

    def _ask(self) -> _Candidate:
        params = self._evolution_params() if self.cfg.strategy == "evolution" else None
        if params is not None:
            self.study.enqueue_trial(params, skip_if_exists=False)
        trial = self.study.ask()
        arch = _genes_params(self.space, trial)
        trial.set_user_attr("arch", arch.model_dump())
        trial.set_user_attr("arch_hash", arch.short_hash())
        trial.set_user_attr("stage", 1)
        return _Candidate(trial, arch)

    def _evolution_params(self) -> dict[str, Any] | None:
        """Aging evolution (Real et al. 2019) on Pareto rank: tournament over the newest ``population``
        trained trials, mutate the winner. None while the first population is still random."""
        done = [t for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if t.user_attrs.get("status") == "ok"]
        if len(done) < self.cfg.population:
            return None
        population = sorted(done, key=lambda t: t.number)[-self.cfg.population :]
        sample = self.rng.sample(population, min(self.cfg.tournament, len(population)))
        parent = sample[rank_order([t.values for t in sample])[0]]
        child = self.space.mutate(ArchConfig(**parent.user_attrs["arch"]), self.rng)
        return self.space.encode(child)

    def _screen_batch(self) -> None:
        """Ask a batch, drop what breaks the limits or is a known architecture, rank the rest by proxy."""
        from harness.metrics import measure_latency
        from nas.counting import arch_metrics
        from nas.model import build_model
        from nas.proxies import compute_proxies

        lim = self.cfg.limits
        seen = self._known_stage1()
        batch: list[tuple[_Candidate, dict[str, float]]] = []
        for _ in range(self.cfg.screen_batch):
            cand = self._ask()
            arch, trial = cand.arch, cand.trial
            static = arch_metrics(arch)
            constraints = lim.size_violations(arch)
            if lim.max_latency_ms is not None:
                lat = measure_latency(build_model(arch, seed=0), prompt_tokens=16, decode_tokens=16, warmup=1, repeats=2)
                static.update(lat.as_metrics())
                constraints["latency"] = lim.latency_violation(lat.decode_ms_p50)
            for k, v in constraints.items():
                trial.set_constraint(k, v)
            if any(v > 0 for v in constraints.values()):
                reason = ", ".join(f"{k} over the limit by {v:.0%}" for k, v in constraints.items() if v > 0)
                values = [8.0 if o.name == "bpb" else float(static.get(o.metric, 1e12)) for o in self.objectives]
                self._tell(self.study, trial, {"status": "rejected", "reason": reason, "metrics": static}, values)
                self._note(f"#{trial.number} rejected before training: {reason}")
                continue
            twin = seen.get(arch.short_hash())
            if twin is not None:
                self._tell(self.study, trial, {"status": "duplicate", "reason": f"same architecture as trial {twin.number}",
                                               "metrics": twin.user_attrs.get("metrics", {})}, None, optuna.trial.TrialState.PRUNED)
                continue
            proxies = compute_proxies(arch, self.proxy_x, self.proxy_y, seed=self.cfg.seed)
            trial.set_user_attr("proxies", proxies)
            seen[arch.short_hash()] = trial
            batch.append((cand, proxies))
        if not batch:
            return
        keep = len(batch)
        if self.cfg.screen and len(batch) > 1:
            keep = max(1, math.ceil(self.cfg.screen_keep * len(batch)))
        batch.sort(key=lambda cp: -cp[1][self.cfg.screen_proxy])
        for cand, proxies in batch[keep:]:
            self._tell(self.study, cand.trial, {"status": "screened", "reason": f"bottom of its batch by {self.cfg.screen_proxy}",
                                                "metrics": arch_metrics(cand.arch)}, None, optuna.trial.TrialState.PRUNED)
            self._note(f"#{cand.trial.number} screened out ({cand.arch.describe()})")
        for cand, _ in batch[:keep]:
            self.ready.append(cand)

    def _known_stage1(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for t in self.study.get_trials(deepcopy=False):
            if t.user_attrs.get("arch_hash") and t.user_attrs.get("status") in (None, "ok", "diverged", "failed") \
                    and t.state != optuna.trial.TrialState.PRUNED:
                out.setdefault(t.user_attrs["arch_hash"], t)
        return out

    # ---------------------------------------------------------------------------------------------- running

    def _spec(self, number: int, stage: int, arch: ArchConfig) -> TrialSpec:
        budget = self.cfg.stage1_budget if stage == 1 else str(self.cfg.stage2_budget)
        return TrialSpec(number=number, stage=stage, arch=arch, budget=budget,
                         out_dir=str(self.out / "trials" / f"s{stage}-{number:05d}"), corpus=self.cfg.corpus,
                         tokenizer=self.cfg.tokenizer, batch_size=self.cfg.batch_size, lr=self.cfg.lr, seed=self.cfg.seed,
                         eval_bytes=self.cfg.eval_bytes, time_limit_s=_time_limit(budget, self.cfg.trial_timeout_s),
                         deadline=self._deadline())

    def _deadline(self) -> float | None:
        """With ``cap_trials``, the end of the search's --budget (``time.time()``): a trial's wall cap, so the search
        ends by its budget even when its trials' token budgets would take longer (None: trials run to their budget)."""
        if self.cfg.budget is None or not self.cfg.cap_trials:
            return None
        return time.time() + parse_budget(self.cfg.budget).seconds - self.elapsed()  # type: ignore[operator]

    def _submit(self, stage: int, trial_number: int, arch: ArchConfig) -> None:
        spec = self._spec(trial_number, stage, arch)
        self.executor.submit(spec)
        self.running[(stage, trial_number)] = spec

    def _record(self, result: TrialResult) -> None:
        study = self.study if result.stage == 1 else self.study2
        trial = optuna.trial.Trial(study, study._storage.get_trial_id_from_study_id_trial_number(study._study_id, result.number))
        self.running.pop((result.stage, result.number), None)
        attrs = {"status": result.status, "reason": result.reason, "metrics": result.metrics, "run_s": round(result.run_s, 3)}
        if result.status == "ok" and all(o.metric in result.metrics for o in self.objectives):
            values = [float(result.metrics[o.metric]) for o in self.objectives]
            self._tell(study, trial, attrs, values)
            desc = " ".join(f"{o.name}={v:.4g}" for o, v in zip(self.objectives, values))
            self._note(f"stage {result.stage} #{result.number}: {desc}")
        else:
            self._tell(study, trial, attrs, None, optuna.trial.TrialState.FAIL)
            self._note(f"stage {result.stage} #{result.number} {result.status}: {result.reason}")
        self._save_elapsed()
        self.write_results()

    def _save_elapsed(self) -> None:
        self.study.set_user_attr("elapsed_s", self.elapsed())

    def elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self.t_start)

    def _stage1_trained(self) -> int:
        """Stage-1 trials that went to a worker and came back (whatever the outcome)."""
        return sum(1 for t in self.study.get_trials(deepcopy=False)
                   if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
                   and t.user_attrs.get("status") in TRAINED_STATUSES)

    def _stop_requested(self) -> bool:
        return (self.out / STOP_FILE).exists()

    def _stage1_time_left(self) -> bool:
        cfg = self.cfg
        if self._stop_requested():
            return False
        if cfg.budget is not None:
            share = 1 - cfg.stage2_share if cfg.stage2_budget and cfg.stage2_max else 1.0
            if self.elapsed() >= parse_budget(cfg.budget).seconds * share:  # type: ignore[operator]
                return False
        return True

    def _stage1_open(self) -> bool:
        """May more candidates be asked for (the queue counts as planned work)?"""
        limit = self.cfg.trials
        return self._stage1_time_left() and (limit is None or self._stage1_trained() + len(self.running) + len(self.ready) < limit)

    def _stage1_open_for_submit(self) -> bool:
        """May a queued candidate start training?"""
        limit = self.cfg.trials
        return self._stage1_time_left() and (limit is None or self._stage1_trained() + len(self.running) < limit)

    def _resubmit_interrupted(self) -> None:
        """Trials a killed search left RUNNING: run them again (their folders resume or hold the result)."""
        for stage, study in ((1, self.study), (2, self.study2)):
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                arch_attr = t.user_attrs.get("arch")
                trial = optuna.trial.Trial(study, t._trial_id)
                if arch_attr is None:
                    self._tell(study, trial, {"status": "lost", "reason": "the search was killed while it was being sampled"}, None,
                               optuna.trial.TrialState.FAIL)
                    continue
                arch = ArchConfig(**arch_attr)
                if stage == 1 and not Path(self._spec(t.number, 1, arch).out_dir).exists():
                    self.ready.append(_Candidate(trial, arch))  # chosen but never started: back in the queue
                else:
                    self.pending.append((stage, t.number, arch))

    def _close_queue(self) -> None:
        """Candidates still queued when stage 1 ends are closed as not run (a resume must not start them)."""
        while self.ready:
            cand = self.ready.popleft()
            self._tell(self.study, cand.trial, {"status": "not_run", "reason": "stage 1 ended before it was trained"}, None,
                       optuna.trial.TrialState.PRUNED)

    def _drain(self, timeout: float) -> None:
        for result in self.executor.wait(timeout=timeout):
            self._record(result)
        self._refresh()

    def _fill(self, stage: int, make: Any) -> None:
        while self.executor.free_slots() > 0:
            if self.pending:
                st, number, arch = self.pending.popleft()
                self._submit(st, number, arch)
                continue
            item = make()
            if item is None:
                return
            self._submit(stage, *item)

    def _next_stage1(self) -> tuple[int, ArchConfig] | None:
        tries = 0
        while not self.ready and self._stage1_open():
            self._screen_batch()
            tries += 1
            if tries > 50:
                raise UserError("the limits reject almost every sampled architecture (50 batches in a row): loosen them")
        if not self.ready or not self._stage1_open_for_submit():
            return None
        cand = self.ready.popleft()
        return cand.trial.number, cand.arch

    def _promotions(self) -> list[tuple[int, ArchConfig]]:
        """The best 1/eta of stage 1 by Pareto rank (then crowding), at most stage2_max, not yet promoted."""
        if not self.cfg.stage2_budget or self.cfg.stage2_max == 0:
            return []
        ok = [t for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
              if t.user_attrs.get("status") == "ok"]
        if not ok:
            return []
        k = min(self.cfg.stage2_max, math.ceil(len(ok) / self.cfg.eta))
        chosen = [ok[i] for i in rank_order([t.values for t in ok])[:k]]
        done = {t.user_attrs.get("parent") for t in self.study2.get_trials(deepcopy=False)}
        out = []
        for t in chosen:
            if t.number in done:
                continue
            self.study2.enqueue_trial(t.params, skip_if_exists=False)
            trial = self.study2.ask()
            arch = ArchConfig(**t.user_attrs["arch"])
            for key, value in {"arch": arch.model_dump(), "arch_hash": arch.short_hash(), "stage": 2, "parent": t.number}.items():
                trial.set_user_attr(key, value)
            out.append((trial.number, arch))
        return out

    def run(self) -> dict[str, Any]:
        """Run (or resume) the search; returns the summary also written to pareto.json."""
        from nas.executors import LocalExecutor, RayExecutor

        self.out.mkdir(parents=True, exist_ok=True)
        if self._executor is None:  # connect first: a bad cluster address must not touch the study
            if self.cfg.executor == "ray":
                if not self.cfg.ray_address:
                    raise UserError("--executor ray needs --ray-address HOST:PORT (or 'local' to start one here)")
                self._executor = RayExecutor(self.cfg.ray_address)
            else:
                self._executor = LocalExecutor(workers=self.cfg.workers, log_path=str(self.out / "workers.log"))
        self.executor = self._executor
        self.t_start = time.monotonic()
        self.pending: deque[tuple[int, int, ArchConfig]] = deque()
        self._live = None
        try:
            self._open_studies()
            self._proxy_batch()
        except BaseException:
            self.executor.shutdown()
            raise
        self._resubmit_interrupted()
        self._live_start()
        try:
            while self.pending or self.running or self._stage1_open() or (self.ready and self._stage1_open_for_submit()):
                self._fill(1, self._next_stage1)
                if not self.running:
                    break
                self._drain(timeout=1.0)
            if self._stop_requested():
                return self.finalize()
            self._close_queue()
            promoted = self._promotions()
            for number, arch in promoted:
                self.pending.append((2, number, arch))
            while self.pending or self.running:
                self._fill(2, lambda: None)
                self._drain(timeout=1.0)
        finally:
            self._save_elapsed()
            self._live_stop()
            self.executor.shutdown()
        return self.finalize()

    # ---------------------------------------------------------------------------------------------- outputs

    def _rows(self) -> list[dict[str, Any]]:
        rows = []
        for stage, study in ((1, self.study), (2, self.study2)):
            for t in study.get_trials(deepcopy=False):
                arch = t.user_attrs.get("arch")
                row: dict[str, Any] = dict(t.user_attrs.get("metrics") or {})  # the trial's own fields below win
                row.update({f"proxy_{k}": v for k, v in (t.user_attrs.get("proxies") or {}).items()})
                row.update({
                    "stage": stage, "trial": t.number, "state": t.state.name.lower(),
                    "status": t.user_attrs.get("status", "running" if t.state.name == "RUNNING" else ""),
                    "reason": t.user_attrs.get("reason", ""), "arch_hash": t.user_attrs.get("arch_hash", ""),
                    "arch": ArchConfig(**arch).describe() if arch else "", "parent": t.user_attrs.get("parent", ""),
                })
                rows.append(row)
        return rows

    def write_results(self) -> Path:
        rows = self._rows()
        head = ["stage", "trial", "state", "status", "reason", "arch_hash", "arch", "parent"]
        head += [o.metric for o in self.objectives if o.metric not in head]
        extra = sorted({k for r in rows for k in r} - set(head))
        path = self.out / "results.tsv"
        tmp = path.with_suffix(".tsv.tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=head + extra, delimiter="\t", extrasaction="ignore")
            writer.writeheader()
            for r in rows:
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        tmp.replace(path)
        return path

    def _front(self, study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
        ok = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)) if t.user_attrs.get("status") == "ok"]
        return [ok[i] for i in pareto_front([t.values for t in ok])]

    def finalize(self) -> dict[str, Any]:
        """Re-measure the final front's latency, write pareto.json / pareto.png / results.tsv, export the best."""
        from harness.metrics import measure_latency
        from nas.model import build_model

        stage = 2 if self._front(self.study2) else 1
        front = self._front(self.study2 if stage == 2 else self.study)
        members = []
        for t in sorted(front, key=lambda t: t.values[0]):
            arch = ArchConfig(**t.user_attrs["arch"])
            lat = measure_latency(build_model(arch, seed=0), warmup=3, repeats=10)
            folder = self.out / "trials" / f"s{stage}-{t.number:05d}"
            members.append({
                "stage": stage, "trial": t.number, "arch_hash": arch.short_hash(), "arch": arch.model_dump(),
                "describe": arch.describe(), "objectives": {o.name: v for o, v in zip(self.objectives, t.values)},
                "metrics": t.user_attrs.get("metrics", {}), "latency_remeasured": lat.as_metrics(), "folder": str(folder),
            })
        summary = {
            "study": self.cfg.study_name, "objectives": [o.name for o in self.objectives], "strategy": self.cfg.strategy,
            "stage_of_front": stage, "elapsed_s": round(self.elapsed(), 1), "counts": self._counts(), "front": members,
        }
        (self.out / "pareto.json").write_text(json.dumps(summary, indent=2))
        self._write_metrics(members)
        self.write_results()
        self._plot(members)
        self._export(members)
        return summary

    def _write_metrics(self, members: list[dict[str, Any]]) -> None:
        """The worker contract: a flat metrics.json (the best-bpb member of the front, and counts)."""
        metrics: dict[str, Any] = {"status": "ok" if members else "failed", "fail_reason": "" if members else "no trial finished",
                                   "kind": "search", "eval_bytes": self.cfg.eval_bytes,
                                   "front_size": len(members), "stage_of_front": members[0]["stage"] if members else 0,
                                   "elapsed_s": round(self.elapsed(), 1), "wall_s": round(self.elapsed(), 1)}
        metrics.update({f"trials_{k}": v for k, v in self._counts().items()})
        if members:
            best = min(members, key=lambda m: m["objectives"]["bpb"])
            metrics.update({k: v for k, v in best["metrics"].items()
                            if isinstance(v, (int, float, str)) and k not in ("status", "fail_reason", "kind")})
            metrics.update(best["latency_remeasured"])
            metrics["best_trial"] = best["trial"]
            metrics["best_arch_file"] = str(self.out / "best" / f"{members.index(best):02d}-{best['arch_hash']}.json")
        write_metrics(self.out, metrics)

    def _counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self._rows():
            key = f"stage{r['stage']}_{r['status'] or r['state']}"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def _plot(self, members: list[dict[str, Any]]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x_obj = self.objectives[1] if len(self.objectives) > 1 else None
        x_key = x_obj.metric if x_obj else "params"
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for stage, study, colour in ((1, self.study, "#9aa5b1"), (2, self.study2, "#1f77b4")):
            pts = [(t.user_attrs["metrics"].get(x_key), t.values[0]) for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                   if t.user_attrs.get("status") == "ok" and t.user_attrs["metrics"].get(x_key) is not None]
            if pts:
                ax.scatter(*zip(*pts), s=18, c=colour, label=f"stage {stage}", alpha=0.8)
        if members:
            fx = [m["metrics"].get(x_key) for m in members]
            fy = [m["objectives"]["bpb"] for m in members]
            order = sorted(range(len(fx)), key=lambda i: fx[i])
            ax.step([fx[i] for i in order], [fy[i] for i in order], where="post", c="#d62728", lw=1.2)
            ax.scatter(fx, fy, s=40, facecolors="none", edgecolors="#d62728", label="Pareto front")
        ax.set_xlabel(x_obj.label if x_obj else "parameters")
        ax.set_ylabel("val bits per byte")
        if x_key.startswith(("size", "params")):
            ax.set_xscale("log")
        ax.set_title(f"{self.cfg.study_name}: {self.cfg.strategy}, {len(members)} on the front")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(self.out / "pareto.png", dpi=120)
        plt.close(fig)

    def _export(self, members: list[dict[str, Any]]) -> None:
        from nas.hf import export_blockers, export_hf
        from nas.model import CodeLM

        best = self.out / "best"
        best.mkdir(exist_ok=True)
        for i, m in enumerate(members):
            arch = ArchConfig(**m["arch"])
            (best / f"{i:02d}-{arch.short_hash()}.json").write_text(arch.to_json())
            weights = Path(m["folder"]) / "model.safetensors"
            if self.cfg.export_hf and not export_blockers(arch) and weights.is_file():
                from safetensors.torch import load_model

                model = CodeLM(arch)
                load_model(model, str(weights))
                tok = Path(m["folder"]) / "tokenizer.json"
                export_hf(model, best / f"{i:02d}-{arch.short_hash()}-hf", tokenizer_json=tok if tok.is_file() else None,
                          eos_id=self.corpus.tokenizer.eos_id)

    # ---------------------------------------------------------------------------------------------- live view

    def _note(self, line: str) -> None:
        self.log_lines.append(line)
        append_log(self.out, line)

    def _live_start(self) -> None:
        self._live = None
        if self.live:
            from rich.live import Live

            self._live = Live(self._table(), refresh_per_second=2, transient=False)
            self._live.__enter__()

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._table())

    def _live_stop(self) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(None, None, None)

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title=f"search {self.cfg.study_name} ({self.cfg.strategy}) {self.elapsed() if hasattr(self, 't_start') else 0:.0f}s",
                      show_header=False, expand=False)
        counts = self._counts() if hasattr(self, "study") else {}
        table.add_row("counts", ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "-")
        table.add_row("running", ", ".join(f"s{s}#{n}" for s, n in self.running) or "-")
        for line in self.log_lines:
            table.add_row("", line)
        return table
