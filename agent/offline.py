"""The offline planner: a deterministic research strategy that needs no LLM.

1. Train a baseline that fits the goal's limits (the graph repeats it with another seed to measure
   run-to-run noise, whoever plans: agent.repeats).
2. Run a small multi-objective architecture search under the same limits: with token budgets large enough that
   the lowest rung of 1/9,1 is at least :data:`MIN_RUNG_TOKENS`, successive halving of random candidates over
   those rungs (one experiment's tokens in all: the form that beat random search at equal tokens in
   benchmarks/results/search_quality.json); else the two-stage search, every trial a quarter of an experiment.
3. Train the search's Pareto front at the full experiment budget, best first.
4. (Close calls are re-run with another seed by the graph, so a lucky seed is never kept.)
5. Distil the incumbent into its own architecture once (born-again networks, Furlanello et al. 2018:
   a student of the teacher's size trained on its soft targets often beats it), then score the
   incumbent on HumanEval once, so the report carries a code-ability figure, and quantize it to INT8
   once (size on disk, CPU latency, and the bpb that costs).
6. Then explore the incumbent's neighbourhood: one-gene mutations not tried before.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from agent.goal import Goal
from agent.plans import (
    AnyPlan,
    CompressConfigPlan,
    CompressPlan,
    DistillConfigPlan,
    DistillPlan,
    EvalConfigPlan,
    EvalPlan,
    SearchConfigPlan,
    SearchPlan,
    TrainConfigPlan,
    TrainPlan,
    budget_fraction,
)
from agent.state import HistoryEntry
from harness.budget import parse_budget
from nas.rungs import parse_rungs, rung_tokens
from nas.space import ArchConfig, ArchConstraints, get_space

__all__ = ["OfflinePlanner", "budget_fraction"]  # budget_fraction lives with the plans, whose defaults it makes

#: the rungs of the offline planner's search, as fractions of one experiment's tokens. 1/9,1 with eta 3 and random
#: candidates is the form measured against random search at equal tokens (benchmarks/results/search_quality.json:
#: 12 fresh seeds, 12/12 paired wins, hypervolume +0.017 [+0.010, +0.024]); no other ladder or candidate source
#: (evolution with inherited weights, a middle rung 1/3) has been measured to beat it, so the planner uses this one.
RUNGS = "1/9,1"
#: the least tokens a rung-1 training needs for its ranking to mean something. Measured on the default space
#: (benchmarks/results/proxy_correlation_120ktok.json, 60 architectures in six size bins): at 120ktok two seeds of
#: one architecture differ by sd 0.051 bpb while architectures of one size bin spread by sd 0.110 (ratio 0.46; at
#: 240ktok 0.31). Below it the seed is as large as the differences the rung is meant to rank, and a promotion is a
#: coin toss; so the rungs are used when one experiment is at least 9 x 120ktok (1.08M tokens).
MIN_RUNG_TOKENS = 120_000


class OfflinePlanner:
    def __init__(self, goal: Goal, vocab_size: int, train_budget: str, search_trials: int, seed: int = 0):
        self.goal, self.vocab, self.train_budget, self.search_trials, self.seed = (
            goal,
            vocab_size,
            train_budget,
            search_trials,
            seed,
        )
        self.space = get_space("default").model_copy(update={"vocab_size": (vocab_size,)})
        self.constraints = ArchConstraints(
            max_bytes=int(goal.max_mb * 1e6) if goal.max_mb else None, max_params=goal.max_params
        )

    def _train(self, arch: ArchConfig, rationale: str) -> TrainPlan:
        """A training at the full budget with the run's seed (``autonas run --seed``: runs with other seeds are other
        samples of the whole strategy, their trainings included, not the same trainings again)."""
        return TrainPlan(
            config=TrainConfigPlan(arch=arch, budget=self.train_budget, seed=self.seed), rationale=rationale
        )

    def _baseline_arch(self) -> ArchConfig:
        arch = ArchConfig(vocab_size=self.vocab)
        if self.constraints.allows(arch):
            return arch
        return self.space.sample_feasible(random.Random(self.seed), self.constraints)

    def _rungs_pay(self) -> bool:
        """Whether one experiment's tokens make the lowest rung a ranking (see :data:`MIN_RUNG_TOKENS`)."""
        tokens = parse_budget(self.train_budget).tokens
        return tokens is not None and rung_tokens(tokens, parse_rungs(RUNGS))[0] >= MIN_RUNG_TOKENS

    def _rung_search(self, objectives: str) -> SearchPlan:
        """Successive halving of random candidates over :data:`RUNGS` of one experiment, the search's tokens in all
        one experiment's (so it costs what one more training would). One replicate of the lowest rung measures its
        noise for the promotions (the last rung owes none)."""
        return SearchPlan(
            config=SearchConfigPlan(
                objectives=objectives,
                strategy="random",
                trials=self.search_trials,
                stage1_budget=budget_fraction(self.train_budget, 4),
                seed=self.seed,
                max_mb=self.goal.max_mb,
                max_latency_ms=self.goal.max_latency_ms,
                rungs=RUNGS,
                max_budget=self.train_budget,
                token_budget=self.train_budget,
                replicates=1,
            ),
            rationale=f"multi-objective search (bpb vs int8 size) by successive halving of random candidates over "
            f"rungs {RUNGS} of one experiment, one experiment's tokens in all",
        )

    def propose(self, history: list[HistoryEntry], incumbent: HistoryEntry | None) -> AnyPlan:
        tried = {h.plan.group_key() for h in history}
        trains = [h for h in history if isinstance(h.plan, TrainPlan)]
        # 1. baseline (its noise repeat and the re-runs of close calls are the graph's: agent.repeats)
        if not trains:
            return self._train(self._baseline_arch(), "baseline: the default shape within the goal's limits")
        # 2. one architecture search under the goal's limits
        searches = [h for h in history if isinstance(h.plan, SearchPlan)]
        if not searches:
            objectives = "bpb,bytes_int8" + (",latency" if self.goal.max_latency_ms else "")
            if self._rungs_pay():
                return self._rung_search(objectives)
            return SearchPlan(
                config=SearchConfigPlan(
                    objectives=objectives,
                    trials=self.search_trials,
                    stage1_budget=budget_fraction(self.train_budget, 4),
                    seed=self.seed,
                    max_mb=self.goal.max_mb,
                    max_latency_ms=self.goal.max_latency_ms,
                ),
                rationale="multi-objective search (bpb vs int8 size) to find shapes worth a full training",
            )
        # 3. the search's front, best first, at the full budget
        for h in searches:
            for arch in _front_archs(h):
                plan = self._train(arch, f"train Pareto candidate from {h.id} at the full budget")
                if plan.group_key() not in tried and self.constraints.allows(arch):
                    return plan
        # 5. born-again distillation of the incumbent, then one HumanEval of the incumbent
        if incumbent is not None and not any(isinstance(h.plan, DistillPlan) for h in history):
            return DistillPlan(
                config=DistillConfigPlan(
                    teacher=incumbent.id, arch=_arch_of(incumbent), loss="fkl", budget=self.train_budget, seed=self.seed
                ),
                rationale=f"born-again distillation: {incumbent.id}'s soft targets into its own architecture",
            )
        if incumbent is not None and not any(isinstance(h.plan, EvalPlan) for h in history):
            return EvalPlan(
                config=EvalConfigPlan(target=incumbent.id, limit=20, max_new_tokens=96),
                rationale=f"HumanEval pass@1 of the incumbent {incumbent.id} (first 20 problems, greedy)",
            )
        if incumbent is not None and not any(isinstance(h.plan, CompressPlan) for h in history):
            return CompressPlan(
                config=CompressConfigPlan(target=incumbent.id, int8=True),
                rationale=f"INT8 of the incumbent {incumbent.id}: size on disk, CPU latency and the bpb it costs",
            )
        # 6. neighbourhood of the incumbent
        base = _arch_of(incumbent) if incumbent else self._baseline_arch()
        rng = random.Random(self.seed * 7919 + len(history))
        for _ in range(200):
            arch = self.space.mutate(base, rng, n_genes=1 if rng.random() < 0.7 else 2)
            plan = self._train(arch, f"one-step mutation of the incumbent ({base.describe()} -> {arch.describe()})")
            if plan.group_key() not in tried and self.constraints.allows(arch):
                return plan
        return self._train(
            self.space.sample_feasible(rng, self.constraints), "random restart: the neighbourhood is exhausted"
        )


def _arch_of(entry: HistoryEntry) -> ArchConfig:
    """The architecture of a model experiment (the incumbent is always one: train or distill)."""
    assert isinstance(entry.plan, (TrainPlan, DistillPlan)), entry.plan.kind
    return entry.plan.config.arch


def _front_archs(search_record: HistoryEntry) -> list[ArchConfig]:
    path = Path(search_record.run_dir or "") / "pareto.json"
    if not path.is_file():
        return []
    front = json.loads(path.read_text()).get("front", [])
    return [ArchConfig(**m["arch"]) for m in sorted(front, key=lambda m: m["objectives"]["bpb"])]
