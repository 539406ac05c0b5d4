"""The search's Optuna studies, one per stage (rung), created or resumed, and spoken to through ask/tell only.

Stage 1 (``<name>``) is what the sampler learns from; stage k > 1 (``<name>.stage2``, ``<name>.stage3`` ...) holds
the longer trainings of trials promoted from stage k-1, so fidelities never mix in one sampler (a two-stage storage
of an earlier version reads the same). A trial is asked, its architecture stored on it as user
attributes before it runs, and it is told by its number (``Study.tell(number, ...)``) with an :class:`Outcome`
whose fields become its user attributes: ``results.tsv`` and ``pareto.json`` are read back from those.

A trial found RUNNING when a killed search resumes was asked by the dead process, so no ``Trial`` object exists for
it here; Optuna's ``Study`` has no method to reopen one, so its outcome attributes go through the public interface
of the storage this module opened (``BaseStorage.set_trial_user_attr``), never through a study's private storage.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from harness.errors import UserError
from harness.run_files import OLD_STATUS, Status, current_status
from nas.pareto import rank_order
from nas.search_config import SCORED_ALIKE, SearchConfig
from nas.space import ArchConfig, SearchSpace
from nas.storage import describe_storage, open_storage, study_exists

optuna.logging.set_verbosity(optuna.logging.WARNING)

# statuses of a stage-1 trial that went to a worker and came back (whatever the outcome): they count against --trials
# (a storage written by an earlier version may hold an old word for one of them)
TRAINED_STATUSES: tuple[str, ...] = (*get_args(Status), *OLD_STATUS)


@dataclass(frozen=True)
class Outcome:
    """How a trial ended. ``values`` go to the sampler (COMPLETE only); the rest is stored as user attributes."""

    state: TrialState
    status: str  # a run's status (harness.run_files.Status) or the search's own: rejected, duplicate, not_run, lost
    fail_reason: str
    values: list[float] | None = None
    metrics: dict[str, Any] | None = None  # None: the trial has no metrics (never sampled / never trained)
    run_s: float | None = None

    def user_attrs(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {"status": self.status, "fail_reason": self.fail_reason}
        if self.metrics is not None:
            attrs["metrics"] = self.metrics
        if self.run_s is not None:
            attrs["run_s"] = round(self.run_s, 3)
        return attrs


def trial_status(t: FrozenTrial) -> str:
    """A told trial's status in today's words (a storage of an earlier version may hold ``failed``); an untold one's
    is ``running`` or empty."""
    status = t.user_attrs.get("status")
    if status is None:
        return "running" if t.state == TrialState.RUNNING else ""
    return current_status(str(status))


def trial_fail_reason(t: FrozenTrial) -> str:
    """Why a trial did not end ``ok`` (a storage of an earlier version holds it as ``reason``)."""
    return str(t.user_attrs.get("fail_reason", t.user_attrs.get("reason", "")))


def arch_attrs(
    arch: ArchConfig,
    stage: int,
    parent: int | None = None,
    init_from: str | None = None,
    train_budget: str | None = None,
) -> dict[str, Any]:
    """The user attributes that let a trial be run again from its storage alone (resume) and be reported:
    ``parent`` (the trial number it was promoted or mutated from), ``init_from`` (the folder whose weights it starts
    from) and ``train_budget`` (what it trains, when that is not its stage's budget)."""
    attrs: dict[str, Any] = {"arch": arch.model_dump(), "arch_hash": arch.short_hash(), "stage": stage}
    if parent is not None:
        attrs["parent"] = parent
    if init_from is not None:
        attrs["init_from"] = init_from
    if train_budget is not None:
        attrs["train_budget"] = train_budget
    return attrs


def _sampler(cfg: SearchConfig) -> optuna.samplers.BaseSampler:
    """NSGA-II learns from stage 1; aging evolution enqueues its own children, so its sampler only fills the first
    population (random)."""
    if cfg.strategy == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=cfg.population, seed=cfg.seed)
    return optuna.samplers.RandomSampler(seed=cfg.seed)


class SearchStudies:
    """The studies of one search (stage 1 and every higher stage) in one storage. Opening checks create-vs-resume."""

    def __init__(self, cfg: SearchConfig, out: Path, n_objectives: int, resume: bool):
        self.storage = open_storage(cfg.storage, out)
        where = describe_storage(cfg.storage, out)
        exists = study_exists(self.storage, cfg.study_name)
        if exists and not resume:
            raise UserError(
                f"a study {cfg.study_name!r} already exists in {where}: "
                "pass --resume to continue it, or choose another --out / --study-name"
            )
        if resume and not exists:
            raise UserError(f"nothing to resume: no study {cfg.study_name!r} in {where}")
        directions: list[Literal["minimize", "maximize"]] = ["minimize"] * n_objectives
        self.stage1 = optuna.create_study(
            storage=self.storage,
            study_name=cfg.study_name,
            directions=directions,
            sampler=_sampler(cfg),
            load_if_exists=True,
        )
        self.higher = [
            optuna.create_study(
                storage=self.storage,
                study_name=f"{cfg.study_name}.stage{stage}",
                directions=directions,
                sampler=optuna.samplers.RandomSampler(seed=cfg.seed),
                load_if_exists=True,
            )
            for stage in range(2, cfg.n_stages + 1)
        ]
        mine = json.loads(cfg.model_dump_json())
        if not resume:
            self.stage1.set_user_attr("config", mine)
        else:
            stored = self.stage1.user_attrs.get("config", {})
            for key in SCORED_ALIKE:
                if key in stored and stored[key] != mine[key]:
                    raise UserError(
                        f"cannot resume with a different {key} ({mine[key]!r}; the study was run with "
                        f"{stored[key]!r}): start a new study in another --out instead"
                    )
        self.elapsed_before = float(self.stage1.user_attrs.get("elapsed_s", 0.0))  # seconds run before a resume
        self._asked: dict[tuple[int, int], Trial] = {}  # (stage, number) -> trials asked by this process, until told

    @property
    def stages(self) -> range:
        return range(1, len(self.higher) + 2)

    def of(self, stage: int) -> optuna.Study:
        return self.stage1 if stage == 1 else self.higher[stage - 2]

    def trials(self, stage: int, *states: TrialState) -> list[FrozenTrial]:
        return self.of(stage).get_trials(deepcopy=False, states=states or None)

    def ok_trials(self, stage: int) -> list[FrozenTrial]:
        """Trials trained to the end with every objective measured: the ones Pareto fronts are made of."""
        return [t for t in self.trials(stage, TrialState.COMPLETE) if t.user_attrs.get("status") == "ok"]

    def ask(self, stage: int, params: dict[str, Any] | None = None) -> Trial:
        """A new trial; with ``params`` (an evolution child, a promotion) those are its parameters."""
        study = self.of(stage)
        if params is not None:
            study.enqueue_trial(params, skip_if_exists=False)
        trial = study.ask()
        self._asked[(stage, trial.number)] = trial
        return trial

    def tell(self, stage: int, number: int, outcome: Outcome) -> None:
        """Finish trial ``number`` of ``stage`` with ``outcome`` (its attributes first: a told trial is read-only)."""
        attrs = outcome.user_attrs()
        trial = self._asked.pop((stage, number), None)
        if trial is not None:
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
        else:  # RUNNING since before a kill: see the module docstring
            study = self.of(stage)
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(
                self.storage.get_study_id_from_name(study.study_name), number
            )
            for key, value in attrs.items():
                self.storage.set_trial_user_attr(trial_id, key, value)
        values = outcome.values if outcome.state == TrialState.COMPLETE else None
        self.of(stage).tell(number, values=values, state=outcome.state)

    def interrupted(self, stage: int) -> list[FrozenTrial]:
        """Trials a killed search left RUNNING (none of them asked by this process)."""
        return [t for t in self.trials(stage, TrialState.RUNNING) if (stage, t.number) not in self._asked]

    def save_elapsed(self, seconds: float) -> None:
        """The search's wall-clock so far, kept on the study so a resumed search's --budget counts it."""
        self.stage1.set_user_attr("elapsed_s", seconds)


def evolution_params(
    studies: SearchStudies,
    space: SearchSpace,
    population: int,
    tournament: int,
    rng: random.Random,
    grow_share: float = 0.0,
) -> tuple[dict[str, Any], FrozenTrial] | None:
    """Aging evolution (Real et al. 2019) on Pareto rank: tournament over the newest ``population`` trained trials,
    mutate the winner; returns the child's parameters and its parent. None while the first population is still
    random. A ``grow_share`` of the children are mutated by a growth move (:func:`grow_genes`) when the parent can
    grow, so that they can start from the parent's weights instead of from scratch."""
    done = studies.ok_trials(1)
    if len(done) < population:
        return None
    newest = sorted(done, key=lambda t: t.number)[-population:]
    sample = rng.sample(newest, min(tournament, len(newest)))
    parent = sample[rank_order([t.values for t in sample])[0]]
    arch = ArchConfig(**parent.user_attrs["arch"])
    child = grow_genes(space, arch, rng) if grow_share > 0 and rng.random() < grow_share else None
    return space.encode(child or space.mutate(arch, rng)), parent


#: genes whose next larger choice grows the network without changing its function (nas.morphism): deeper, wider FFN
GROWTH_GENES = ("n_layers", "ffn_mult")


def grow_genes(space: SearchSpace, arch: ArchConfig, rng: random.Random) -> ArchConfig | None:
    """``arch`` one step larger on one growth gene (more layers, or a wider FFN), or None when it is at the top of
    the space on both. Head count cannot grow alone in the gene space (it follows the residual width)."""
    genes = space.encode(arch)
    movable = [g for g in GROWTH_GENES if any(c > genes[g] for c in getattr(space, g))]
    if not movable:
        return None
    name = rng.choice(movable)
    genes[name] = min(c for c in getattr(space, name) if c > genes[name])
    child = space.decode(genes)
    return child if child != arch else None
