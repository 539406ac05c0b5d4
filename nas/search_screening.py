"""Stage 0 of the search, free of training: hard limits, known architectures and zero-cost proxies.

Cheapest first: the size limits (from the config alone) reject a candidate before anything is built, and only a
candidate within them is built and timed for a latency limit (on the untrained model, which decodes as fast as the
trained one). A candidate whose architecture was already trained in this study is not trained again. The rest are
ranked within their batch by a zero-cost proxy, or by the learned ranker (:mod:`nas.ranker`, refit on this study's
trained stage-1 trials) once it has enough of them, and the worst part is dropped (Optuna state PRUNED, with its
proxies). With ``screen_by="front"`` the batch is ordered instead by NSGA-II's order
(:func:`nas.pareto.rank_order`) over (predicted quality, the objectives known before training: sizes, parameters), so
a multi-objective search keeps the predicted front of each batch; by score alone the small models, which the proxies
and a bpb ranker rate low, are screened out and the front's small end is never trained (benchmarks/search_quality.py
measured it). Each ranked trial records which ranker decided (``screen_ranker``) and its score (``screen_score``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from optuna.trial import Trial, TrialState

from harness.data import TokenizedCorpus
from harness.metrics import measure_latency
from harness.run_files import OLD_STATUS
from nas.counting import arch_metrics
from nas.model import build_model
from nas.morphism import plan_inheritance
from nas.objectives import Objective
from nas.pareto import rank_order
from nas.proxies import PROXY_NAMES, compute_proxies
from nas.ranker import RankPoint, ScreenRanker, load_rank_points
from nas.search_config import SearchConfig
from nas.search_schedule import trial_folder
from nas.search_study import Outcome, SearchStudies, arch_attrs, evolution_params
from nas.space import GENES, ArchConfig, SearchSpace

PROXY_BATCH = 4  # sequences in the batch every proxy is computed on
PROXY_CONTEXT = 128  # tokens per sequence at most (the space's shortest context if shorter)
REJECTED_BPB = 8.0  # the bpb objective told for a rejected candidate: worse than any trained byte model
# what the learned ranker falls back to: the best single proxy within bins over both fidelities measured
# (benchmarks/results/proxy_correlation*.json: synflow +0.40 at 240ktok, +0.20 at 120ktok; the others lower at one)
FALLBACK_PROXY = "synflow"


@dataclass(frozen=True)
class Candidate:
    """A stage-1 trial that passed screening, waiting for a worker."""

    number: int
    arch: ArchConfig
    init_from: str | None = None  # the parent's folder when this evolution child starts from its weights


def proxy_batch(corpus: TokenizedCorpus, space: SearchSpace, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets ([PROXY_BATCH, T]) from the training split, the same for every candidate."""
    g = np.random.Generator(np.random.PCG64(seed))
    T = min(PROXY_CONTEXT, min(space.context_length))
    train = corpus["train"]
    starts = g.integers(0, train.size - T - 1, size=PROXY_BATCH)
    window = torch.from_numpy(np.stack([np.asarray(train[s : s + T + 1], dtype=np.int64) for s in starts]))
    return window[:, :-1], window[:, 1:]


def screen_order(scores: list[float], sizes: list[list[float]] | None = None) -> list[int]:
    """Indices of a screened batch, the kept ones first: by score (higher predicted better), or, given each
    candidate's objectives known before training (``sizes``, minimised), in NSGA-II's order over (-score, *sizes):
    the predicted front of the batch first, its extremes first, then the next front."""
    if not sizes or not sizes[0]:
        return sorted(range(len(scores)), key=lambda i: -scores[i])
    return rank_order([(-score, *size) for score, size in zip(scores, sizes, strict=True)])


class Screener:
    """Asks stage-1 candidates of the studies a batch at a time and tells the ones it drops."""

    def __init__(
        self,
        cfg: SearchConfig,
        space: SearchSpace,
        objectives: list[Objective],
        studies: SearchStudies,
        corpus: TokenizedCorpus,
        note: Callable[[str], None],
    ):
        self.cfg, self.space, self.objectives, self.studies, self.note = cfg, space, objectives, studies, note
        self.rng = random.Random(cfg.seed)  # aging evolution's tournaments and mutations
        self.proxy_x, self.proxy_y = proxy_batch(corpus, space, cfg.seed)
        seeds = load_rank_points(cfg.screen_dataset) if cfg.screen_dataset else []
        self.ranker = ScreenRanker(cfg.screen_proxy, PROXY_NAMES, FALLBACK_PROXY, cfg.screen_min_fit, seeds)

    def _ask(self) -> tuple[Trial, ArchConfig, str | None]:
        """A new stage-1 trial, its architecture (an evolution child, or what the sampler suggests) and the folder of
        the parent it starts from (with ``inherit``, when the child keeps the parent's function; else None)."""
        cfg = self.cfg
        params, parent = None, None
        if cfg.strategy == "evolution":
            grow_share = cfg.grow_share if cfg.inherit else 0.0
            asked = evolution_params(self.studies, self.space, cfg.population, cfg.tournament, self.rng, grow_share)
            if asked is not None:
                params, parent = asked
        trial = self.studies.ask(1, params)
        arch = self.space.decode(
            {name: trial.suggest_categorical(name, list(getattr(self.space, name))) for name in GENES}
        )
        init_from = None
        if parent is not None and cfg.inherit:
            how = plan_inheritance(ArchConfig(**parent.user_attrs["arch"]), arch)
            init_from = str(trial_folder(Path(cfg.out), 1, parent.number)) if how.preserved else None
        attrs = arch_attrs(arch, stage=1, parent=parent.number if parent is not None else None, init_from=init_from)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return trial, arch, init_from

    def _limits(self, trial: Trial, arch: ArchConfig) -> tuple[dict[str, float], dict[str, float | str]]:
        """(constraint values, > 0 = violated; the metrics measured to check them). Latency is measured only for a
        candidate within the size limits: building and timing a model is the one costly check."""
        lim = self.cfg.limits
        static: dict[str, float | str] = dict(arch_metrics(arch))  # latency adds its device's name
        constraints = lim.size_violations(arch)
        if lim.max_latency_ms is not None and not any(v > 0 for v in constraints.values()):
            lat = measure_latency(build_model(arch, seed=0), prompt_tokens=16, decode_tokens=16, warmup=1, repeats=2)
            static.update(lat.as_metrics())
            constraints["latency"] = lim.latency_violation(lat.decode_ms_p50)
        for key, value in constraints.items():  # NSGA-II's constrained domination reads these
            trial.set_constraint(key, value)
        return constraints, static

    def _known_stage1(self) -> dict[str, tuple[int, dict[str, Any]]]:
        """arch hash -> (number, metrics) of the first stage-1 trial that trained (or is training) it."""
        out: dict[str, tuple[int, dict[str, Any]]] = {}
        for t in self.studies.trials(1):
            if (
                t.user_attrs.get("arch_hash")
                and t.user_attrs.get("status") in (None, "ok", "diverged", "crashed", *OLD_STATUS)
                and t.state != TrialState.PRUNED
            ):
                out.setdefault(t.user_attrs["arch_hash"], (t.number, t.user_attrs.get("metrics", {})))
        return out

    def trained_points(self) -> list[RankPoint]:
        """This study's stage-1 trials trained to the end, as the learned ranker fits them (proxies, arch, val bpb)."""
        points = []
        for t in self.studies.ok_trials(1):
            bpb, proxies, arch = t.user_attrs.get("metrics", {}).get("val_bpb"), t.user_attrs.get("proxies"), None
            if bpb is not None and proxies and "arch" in t.user_attrs:
                arch = ArchConfig(**t.user_attrs["arch"])
                points.append(RankPoint(arch, proxies, float(bpb), group="study"))
        return points

    def screen_batch(self) -> list[Candidate]:
        """Ask ``screen_batch`` candidates; drop what breaks the limits or is a known architecture, rank the rest by
        proxy and return the kept part, best first."""
        cfg = self.cfg
        seen = self._known_stage1()
        batch: list[tuple[Candidate, dict[str, float], Trial]] = []
        for _ in range(cfg.screen_batch):
            trial, arch, init_from = self._ask()
            number = trial.number
            constraints, static = self._limits(trial, arch)
            if any(v > 0 for v in constraints.values()):
                reason = ", ".join(f"{k} over the limit by {v:.0%}" for k, v in constraints.items() if v > 0)
                values = [
                    REJECTED_BPB if o.name == "bpb" else float(static.get(o.metric, 1e12)) for o in self.objectives
                ]
                self.studies.tell(1, number, Outcome(TrialState.COMPLETE, "rejected", reason, values, static))
                self.note(f"#{number} rejected before training: {reason}")
                continue
            twin = seen.get(arch.short_hash())
            if twin is not None:
                self.studies.tell(
                    1,
                    number,
                    Outcome(TrialState.PRUNED, "duplicate", f"same architecture as trial {twin[0]}", metrics=twin[1]),
                )
                continue
            proxies = compute_proxies(arch, self.proxy_x, self.proxy_y, seed=cfg.seed)
            trial.set_user_attr("proxies", proxies)
            seen[arch.short_hash()] = (number, {})  # not trained yet: no metrics
            batch.append((Candidate(number, arch, init_from), proxies, trial))
        keep = len(batch)
        if cfg.screen and len(batch) > 1:
            keep = max(1, math.ceil(cfg.screen_keep * len(batch)))
        ranked = self.ranker.score([(c.arch, p) for c, p, _ in batch], self.trained_points() if batch else [])
        for (_, _, trial), score in zip(batch, ranked.scores, strict=True):
            trial.set_user_attr("screen_ranker", ranked.ranker)
            trial.set_user_attr("screen_score", score)
        known = [arch_metrics(c.arch) for c, _, _ in batch]  # the objectives known before training
        sizes = [[float(m[o.metric]) for o in self.objectives if o.metric in m] for m in known]
        order = screen_order(ranked.scores, sizes if cfg.screen_by == "front" else None)
        batch = [batch[i] for i in order]
        for cand, _, _ in batch[keep:]:
            self.studies.tell(
                1,
                cand.number,
                Outcome(
                    TrialState.PRUNED,
                    "screened",
                    f"bottom of its batch by {ranked.ranker}",
                    metrics=arch_metrics(cand.arch),
                ),
            )
            self.note(f"#{cand.number} screened out ({cand.arch.describe()})")
        return [cand for cand, _, _ in batch[:keep]]
