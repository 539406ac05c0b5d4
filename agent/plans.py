"""Plans: what the next experiment is, as a typed object. A planner (LLM or offline) produces JSON; it is
validated here, and a validation error goes back to the planner as text, never as a crash.

Each plan kind is one class that owns everything kind-specific: its title, its one-line summary for prompts, the
config files the workers read, the worker command and its time limit, how the run's wall cap is passed on, the
checks against the run, and the verdict of a kind the metric rule does not judge. Adding a kind is one class here
and its place in :data:`AnyPlan`.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
)

from agent.judge import Verdict, settled
from agent.search_resume import search_continuation
from harness.budget import Budget, parse_budget
from harness.errors import UserError, describe_validation_error
from nas import validate
from nas.objectives import parse_objectives
from nas.request import TrainRequest
from nas.rungs import parse_rungs, rung_tokens
from nas.space import ArchConfig, ArchConstraints, get_space
from nas.validate import MAX_SEED


class TrainConfigPlan(TrainRequest):
    """A ``train`` plan's config: the training request (:class:`nas.request.TrainRequest`, the same JSON), within a
    planner's bounds. A budget left out becomes the run's experiment budget (:meth:`PlanBase.default_budgets`)."""

    budget: str = Field("60s", description="wall clock (60s) or tokens (500ktok), of the kind of the run's")
    lr: float = Field(3e-3, gt=0, lt=1)
    batch_size: int = Field(16, ge=1, le=512)


class SearchConfigPlan(BaseModel):
    """An architecture search: every trial trains stage1_budget, or with rungs the lowest rung first and the
    promising ones on to the next rungs."""

    model_config = ConfigDict(extra="forbid")

    space: str = "default"
    objectives: str = "bpb,bytes_int8"
    strategy: Literal["nsga2", "evolution", "random"] = "nsga2"
    trials: int = Field(6, ge=1, le=1000, description="stage-1 trainings (with rungs: rung-1 trainings)")
    stage1_budget: str = "20s"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    max_mb: float | None = Field(None, gt=0)
    max_latency_ms: float | None = Field(None, gt=0)
    rungs: str | None = Field(
        None,
        description="successive halving over fractions of max_budget, e.g. 1/9,1/3,1 (replaces stage1_budget): "
        "every candidate trains the lowest rung, the promising ones continue to the next; runs with token budgets only",
    )
    max_budget: str | None = Field(
        None, description="with rungs: tokens of the last rung, e.g. 900ktok (default: one experiment's budget)"
    )
    token_budget: str | None = Field(
        None, description="tokens all of the search's trainings together may use, e.g. 900ktok (equal compute)"
    )
    replicates: int | None = Field(
        None, ge=0, le=8, description="with rungs: trials per rung trained twice to measure its noise (default 2)"
    )
    inherit: bool = Field(
        False,
        description="with strategy evolution: a child whose change keeps its parent's function (deeper, wider FFN) "
        "starts from the parent's weights",
    )
    population: int | None = Field(
        None, ge=2, le=1000, description="with strategy evolution: random trials before children (default 12)"
    )

    @model_serializer(mode="wrap")
    def _without_unset_rung_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A plan without the rung fields dumps without them (config files, the resume stamp, the history), so an
        old plan's files and worker command stay byte for byte what they were."""
        data: dict[str, Any] = handler(self)
        for key in SEARCH_RUNG_FIELDS:
            if data.get(key) is None or data.get(key) is False:
                data.pop(key, None)
        return data


#: the optional fields of a search plan that an old plan does not have (left out of its dump when unset)
SEARCH_RUNG_FIELDS = ("rungs", "max_budget", "token_budget", "replicates", "inherit", "population")


class DistillConfigPlan(TrainConfigPlan):
    """Distil an earlier experiment's model (the teacher) into a student architecture ``arch``: the training request
    of a ``train`` plan, plus the teacher and the loss."""

    teacher: str = Field(
        "incumbent", description="'incumbent' or the id of a finished train/distill experiment, e.g. e003"
    )
    loss: Literal["fkl", "rkl", "skl", "srkl"] = "fkl"
    temperature: float = Field(1.0, gt=0, le=10)
    ce_weight: float = Field(0.5, ge=0, le=1)


class EvalConfigPlan(BaseModel):
    """HumanEval on an earlier experiment's model (greedy pass@1 unless n > 1)."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field("incumbent", description="'incumbent' or the id of a finished train/distill experiment")
    limit: int | None = Field(40, ge=1, le=164, description="first N problems (None: all 164)")
    n: int = Field(1, ge=1, le=200)
    max_new_tokens: int = Field(128, ge=8, le=1024)
    seed: int = Field(0, ge=0, le=MAX_SEED)


class CompressConfigPlan(BaseModel):
    """Compress an earlier experiment's model: prune (optional) + recovery fine-tune + INT8 (optional)."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field("incumbent", description="'incumbent' or the id of a finished train/distill experiment")
    int8: bool = True
    prune: str | None = Field(None, description="magnitude:<s>, wanda:<s>, ffn:<s> or heads:<s> with s in (0, 1)")
    recover: str | None = Field(None, description="recovery fine-tune budget after pruning, e.g. 30s")

    @field_validator("prune")
    @classmethod
    def _prune_spec(cls, v: str | None) -> str | None:
        if v is not None:
            # deliberate: kernels.prune imports torch, which a plan's parse does not need
            from kernels.prune import PruneSpec

            try:
                PruneSpec.parse(v)
            except UserError as err:
                raise ValueError(str(err)) from None
        return v


class PlanError(ValueError):
    """The planner's output is not a valid plan; the message is fed back to it."""


class PlanContext(BaseModel):
    """What a plan must agree with beyond its schema: the run's tokenizer, the goal's limits, the time left."""

    model_config = ConfigDict(frozen=True)

    vocab_size: int
    max_mb: float | None = None  # int8 bytes / 10^6, as in the goal
    max_params: int | None = None
    max_latency_ms: float | None = None
    time_left_s: float
    models: tuple[str, ...] = ()  # ids of finished train/distill experiments (teachers / eval targets)
    has_incumbent: bool = False
    code_editing: bool = False  # the run has an editor that can change code (claude-code or gui)
    experiment_budget: str | None = None  # the run's: every budget of a plan is of its kind (tokens or wall clock)


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker command needs besides its plan: the run's data settings and how a model reference
    ('incumbent', 'e003') becomes a run folder (raises UserError when that model is missing)."""

    tokenizer: str
    corpus: str
    eval_bytes: int
    resolve_model: Callable[[str], str]


class PlanBase(BaseModel):
    """What every plan carries besides its kind and config: why, and optionally a change to the workspace's code
    that an LLM editor (Claude Code, or the GUI fallback) makes before the worker runs."""

    model_config = ConfigDict(extra="forbid")

    #: the result is a model that competes for the incumbent (judged by the metric rule, scored by the harness)
    is_model: ClassVar[bool] = False
    #: a code change may go with this kind
    takes_code_change: ClassVar[bool] = True
    #: the worker ends by its wall cap with a result (a search stops sampling and caps its trials), so a cap shorter
    #: than its last run is a smaller result, not a crash
    ends_by_its_cap: ClassVar[bool] = False

    rationale: str = Field(min_length=1)
    code_change: str | None = Field(
        None,
        min_length=1,
        max_length=4000,
        description="optional: a change to the model or search code in the workspace (the nas/ "
        "package), in words, for the code editor; leave out for config-only experiments",
    )

    kind: str
    config: BaseModel

    # ------------------------------------------------------------------ what every kind says about itself

    def config_title(self) -> str:
        raise NotImplementedError

    def title(self) -> str:
        """The experiment's title: commit subject, journal and progress line."""
        title = self.config_title()
        return f"{title} + code change" if self.code_change else title

    def summary(self) -> str:
        """One short line for the experiments table of an LLM prompt."""
        raise NotImplementedError

    def own_config_files(self) -> dict[str, str]:
        """The kind's files under ``configs/``: ``arch.json`` is read by the worker (``--arch`` / ``--student``); the
        others record the settings the worker gets as flags, so a config change shows in the commit's diff."""
        raise NotImplementedError

    def config_files(self, exp_id: str) -> dict[str, str]:
        """The plan's configuration under ``configs/`` (see :meth:`own_config_files`), plus the plan itself."""
        return {
            **self.own_config_files(),
            "configs/plan.json": json.dumps({"experiment": exp_id, **self.model_dump()}, indent=2) + "\n",
        }

    def worker_command(self, setup: WorkerSetup, out: Path) -> tuple[list[str], float]:
        """The worker's command line and its own time limit (a token budget's limit is generous: the run's time left
        and the worker's wall cap are what bound it)."""
        raise NotImplementedError

    def with_wall_cap(self, cmd: list[str], cap_s: float) -> list[str]:
        """The command told to stop by itself at the run's wall cap (kinds that cannot are bounded by the timeout)."""
        return cmd

    def continuation(self, out: Path) -> list[str]:
        """Arguments that let a re-run after a kill continue the work already in ``out`` (none: it starts again)."""
        return []

    def settled_verdict(self, metrics: dict[str, Any] | None) -> Verdict | None:
        """The verdict of a kind the metric rule does not judge (None: the rule judges it against the incumbent)."""
        return None

    def check(self, ctx: PlanContext) -> Self:
        """Semantic checks of the kind (PlanError with the reason); returns the plan, possibly completed."""
        return self

    def default_budgets(self, experiment_budget: str) -> Self:
        """Budgets this plan left out, as the run's (not the schema's wall-clock defaults)."""
        return self

    def group_key(self) -> str:
        """Experiments that differ only by seed form one group (their spread is the noise)."""
        cfg = self.config.model_dump()
        cfg.pop("seed", None)
        return json.dumps({"kind": self.kind, "config": cfg, "code_change": self.code_change}, sort_keys=True)

    def with_seed(self, seed: int, rationale: str) -> Self:
        """The same experiment with another seed (a noise repeat or the re-run of a close call)."""
        return self.model_copy(update={"config": self.config.model_copy(update={"seed": seed}), "rationale": rationale})


def _model_config_files(name: str, config: BaseModel) -> dict[str, str]:
    cfg = config.model_dump()
    return {
        "configs/arch.json": json.dumps(cfg["arch"], indent=2) + "\n",
        f"configs/{name}": json.dumps({k: v for k, v in cfg.items() if k != "arch"}, indent=2) + "\n",
    }


_P = TypeVar("_P", bound=PlanBase)


def _budget_default(plan: _P, field: str, value: str) -> _P:
    if field in plan.config.model_fields_set:
        return plan
    return plan.model_copy(update={"config": plan.config.model_copy(update={field: value})})


def _worker(*command: str, **options: str | int | float | bool | Path | None) -> list[str]:
    """``python -m <command>`` and its options, in the order given: ``max_mb=3`` is ``--max-mb 3`` (a one-letter
    name is a short flag, ``n=5`` is ``-n 5``), ``True`` a bare flag, ``False`` its ``--no-`` form, ``None`` left
    out. Every kind spells its worker's command line through this, so an option reads the same in all of them."""
    cmd = [sys.executable, "-m", *command]
    for name, value in options.items():
        flag = f"-{name}" if len(name) == 1 else "--" + name.replace("_", "-")
        if value is True:
            cmd.append(flag)
        elif value is False:
            cmd.append("--no-" + flag.removeprefix("--"))
        elif value is not None:
            cmd += [flag, str(value)]
    return cmd


def _time_limit(budget: str, per_second: float, margin_s: float, token_budget_s: float) -> float:
    """A worker's own time limit: ``per_second`` times a wall-clock budget plus ``margin_s`` (start-up, scoring);
    a token budget has no known duration, so it gets ``token_budget_s`` (the run's wall cap bounds it anyway)."""
    seconds = parse_budget(budget).seconds
    return seconds * per_second + margin_s if seconds else token_budget_s


class TrainPlan(PlanBase):
    is_model: ClassVar[bool] = True
    kind: Literal["train"] = "train"
    config: TrainConfigPlan

    def config_title(self) -> str:
        c = self.config
        return f"train {c.arch.describe()} for {c.budget} (seed {c.seed})"

    def summary(self) -> str:
        c = self.config
        return f"{c.arch.describe()}, {c.budget}, lr {c.lr:g}"

    def own_config_files(self) -> dict[str, str]:
        return _model_config_files("train.json", self.config)

    def worker_command(self, setup: WorkerSetup, out: Path) -> tuple[list[str], float]:
        c = self.config
        cmd = _worker(
            "nas",
            "train",
            arch="configs/arch.json",
            budget=c.budget,
            out=out,
            seed=c.seed,
            lr=c.lr,
            batch_size=c.batch_size,
            tokenizer=setup.tokenizer,
            corpus=setup.corpus,
            eval_bytes=setup.eval_bytes,
            quiet=True,
        )
        return cmd, _time_limit(c.budget, 3, 180, 3600.0)

    def with_wall_cap(self, cmd: list[str], cap_s: float) -> list[str]:
        return cmd + ["--max-seconds", f"{cap_s:.1f}"]

    def check(self, ctx: PlanContext) -> Self:
        _check_arch_and_budget(self.config.arch, self.config.budget, ctx)
        return self

    def default_budgets(self, experiment_budget: str) -> Self:
        return _budget_default(self, "budget", experiment_budget)


class SearchPlan(PlanBase):
    ends_by_its_cap: ClassVar[bool] = True
    kind: Literal["nas_search"] = "nas_search"
    config: SearchConfigPlan

    def config_title(self) -> str:
        c = self.config
        if c.rungs:
            return f"architecture search: {c.trials} trials, rungs {c.rungs} of {c.max_budget}, {c.objectives}"
        return f"architecture search: {c.trials} trials, {c.objectives}"

    def summary(self) -> str:
        c = self.config
        if c.rungs:
            spent = f", {c.token_budget} in all" if c.token_budget else ""
            grown = " + inherit" if c.inherit else ""
            return (
                f"search {c.strategy}{grown}, {c.trials} trials on rungs {c.rungs} of {c.max_budget}{spent}, "
                f"{c.objectives}"
            )
        return f"search {c.strategy}, {c.trials} trials x {c.stage1_budget}, {c.objectives}"

    def own_config_files(self) -> dict[str, str]:
        return {"configs/search.json": json.dumps(self.config.model_dump(), indent=2) + "\n"}

    def worker_command(self, setup: WorkerSetup, out: Path) -> tuple[list[str], float]:
        c = self.config
        cmd = _worker(
            "nas",
            "nas",
            "search",
            out=out,
            space=c.space,
            objectives=c.objectives,
            strategy=c.strategy,
            trials=c.trials,
            stage1=c.stage1_budget,
            stage2="none",
            seed=c.seed,
            tokenizer=setup.tokenizer,
            corpus=setup.corpus,
            eval_bytes=setup.eval_bytes,
            quiet=True,
            max_mb=c.max_mb,
            max_latency_ms=c.max_latency_ms,
            # the rung fields last and only when set: an old plan's command is what it was
            rungs=c.rungs,
            max_budget=c.max_budget,
            token_budget=c.token_budget,
            replicates=c.replicates,
            inherit=True if c.inherit else None,
            population=c.population,
        )
        return cmd, _time_limit(c.stage1_budget, 3, 120, 600.0) * c.trials + 300

    def with_wall_cap(self, cmd: list[str], cap_s: float) -> list[str]:
        # the search stops sampling at its budget and caps its trials at what is left
        return cmd + ["--budget", f"{cap_s:.1f}s", "--cap-trials"]

    def continuation(self, out: Path) -> list[str]:
        return search_continuation(out, self)

    def settled_verdict(self, metrics: dict[str, Any] | None) -> Verdict | None:
        m = metrics or {}
        ok = m.get("status") == "ok"
        found = f"search found a front of {m.get('front_size')}; its members are trained next"
        return settled(ok, found if ok else str(m.get("fail_reason", "search failed")), m.get("val_bpb"))

    def check(self, ctx: PlanContext) -> Self:
        cfg = self.config
        get_space(cfg.space)
        parse_objectives(cfg.objectives)
        b = _check_budget_kind(cfg.stage1_budget, "config.stage1_budget", ctx)
        if b.seconds is not None and b.seconds * cfg.trials > 2 * max(ctx.time_left_s, 1.0):
            raise PlanError(f"{cfg.trials} trials of {cfg.stage1_budget} do not fit in the {ctx.time_left_s:.0f}s left")
        _check_search_rungs(cfg, ctx)
        limits = {
            "max_mb": _tighter(cfg.max_mb, ctx.max_mb),
            "max_latency_ms": _tighter(cfg.max_latency_ms, ctx.max_latency_ms),
        }
        return self.model_copy(update={"config": cfg.model_copy(update=limits)})

    def default_budgets(self, experiment_budget: str) -> Self:
        plan = _budget_default(self, "stage1_budget", budget_fraction(experiment_budget, 4))
        if plan.config.rungs and parse_budget(experiment_budget).tokens is not None:
            plan = _budget_default(plan, "max_budget", experiment_budget)  # the last rung: one full experiment
        return plan


def _check_search_rungs(cfg: SearchConfigPlan, ctx: PlanContext) -> None:
    """The rung fields of a search plan agree with each other and with the run (PlanError, one line, else)."""
    if cfg.rungs is None:
        for name in ("max_budget", "replicates"):
            if getattr(cfg, name) is not None:
                raise PlanError(f"config.{name} belongs to a search with rungs: give config.rungs too (e.g. 1/9,1/3,1)")
    if cfg.inherit and cfg.strategy != "evolution":
        raise PlanError("config.inherit needs config.strategy evolution (only its children have a parent)")
    if cfg.population is not None and cfg.strategy != "evolution":
        raise PlanError("config.population belongs to config.strategy evolution")
    first = parse_budget(cfg.stage1_budget).tokens
    if cfg.rungs is not None:
        if ctx.experiment_budget is not None and parse_budget(ctx.experiment_budget).tokens is None:
            raise PlanError(
                f"config.rungs needs token budgets but this run counts experiment budgets in wall-clock time "
                f"({ctx.experiment_budget}): leave rungs out"
            )
        if cfg.max_budget is None:
            raise PlanError("config.rungs needs config.max_budget, the tokens of the last rung (e.g. 900ktok)")
        fractions = parse_rungs(cfg.rungs)  # a UserError is the plan's error (check_plan)
        most = validate.budget(cfg.max_budget, "config.max_budget").tokens
        if most is None:
            raise PlanError(f"config.max_budget {cfg.max_budget} is wall-clock time: rungs add tokens up, e.g. 900ktok")
        first = rung_tokens(most, fractions)[0]
    if cfg.token_budget is not None:
        total = validate.budget(cfg.token_budget, "config.token_budget").tokens
        if total is None:
            raise PlanError(f"config.token_budget {cfg.token_budget} is wall-clock time: give tokens, e.g. 900ktok")
        if first is None:
            raise PlanError("config.token_budget counts tokens: give config.stage1_budget in tokens too (or rungs)")
        if total < first:
            raise PlanError(
                f"config.token_budget {cfg.token_budget} is less than one trial of the lowest rung ({first} tokens)"
            )


class DistillPlan(PlanBase):
    is_model: ClassVar[bool] = True
    kind: Literal["distill"] = "distill"
    config: DistillConfigPlan

    def config_title(self) -> str:
        c = self.config
        return (
            f"distill {c.teacher} into {c.arch.describe()} ({c.loss}, T={c.temperature:g}) "
            f"for {c.budget} (seed {c.seed})"
        )

    def summary(self) -> str:
        c = self.config
        return f"distill {c.teacher} -> {c.arch.describe()}, {c.loss}, {c.budget}"

    def own_config_files(self) -> dict[str, str]:
        return _model_config_files("distill.json", self.config)

    def worker_command(self, setup: WorkerSetup, out: Path) -> tuple[list[str], float]:
        c = self.config
        cmd = _worker(
            "distill",
            "distill",
            teacher=setup.resolve_model(c.teacher),
            student="configs/arch.json",
            loss=c.loss,
            temperature=c.temperature,
            ce_weight=c.ce_weight,
            budget=c.budget,
            out=out,
            seed=c.seed,
            lr=c.lr,
            batch_size=c.batch_size,
            corpus=setup.corpus,
            eval_bytes=setup.eval_bytes,
            quiet=True,
        )
        return cmd, _time_limit(c.budget, 4, 180, 3600.0)

    def with_wall_cap(self, cmd: list[str], cap_s: float) -> list[str]:
        return cmd + ["--max-seconds", f"{cap_s:.1f}"]

    def check(self, ctx: PlanContext) -> Self:
        _check_model_ref(self.config.teacher, "teacher", ctx)
        _check_arch_and_budget(self.config.arch, self.config.budget, ctx)
        return self

    def default_budgets(self, experiment_budget: str) -> Self:
        return _budget_default(self, "budget", experiment_budget)


class CompressPlan(PlanBase):
    takes_code_change: ClassVar[bool] = False
    kind: Literal["compress"] = "compress"
    config: CompressConfigPlan

    def config_title(self) -> str:
        c = self.config
        return f"compress {c.target}: " + " + ".join(
            x for x in (c.prune, c.recover and f"recover {c.recover}", "int8" if c.int8 else None) if x
        )

    def summary(self) -> str:
        c = self.config
        return f"compress {c.target}: prune {c.prune or '-'}, recover {c.recover or '-'}, int8 {c.int8}"

    def own_config_files(self) -> dict[str, str]:
        return {"configs/compress.json": json.dumps(self.config.model_dump(), indent=2) + "\n"}

    def worker_command(self, setup: WorkerSetup, out: Path) -> tuple[list[str], float]:
        c = self.config
        # with ONNX Runtime installed the deployment runtime is chosen among PyTorch and ONNX Runtime by measurement
        onnx = bool(importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"))
        cmd = _worker(
            "kernels",
            "compress",
            model=setup.resolve_model(c.target),
            out=out,
            eval_bytes=setup.eval_bytes,
            quiet=True,
            int8=c.int8,
            onnx=onnx or None,
            prune=c.prune or None,
            recover=c.recover or None,
        )
        return cmd, _time_limit(c.recover, 3, 600.0, 600.0) if c.recover else 600.0

    def settled_verdict(self, metrics: dict[str, Any] | None) -> Verdict | None:
        m = metrics or {}
        ok = m.get("status") == "ok" and isinstance(m.get("val_bpb"), float)
        reason = str(m.get("fail_reason", "compression failed"))
        if ok:
            size = m.get("size_bytes_on_disk_int8") or m.get("size_bytes_on_disk_fp32")
            # a worker that wrote neither size still gets its verdict, without the size
            on_disk = f", {size / 1e6:.3f} MB on disk" if isinstance(size, (int, float)) else ""
            reason = (
                f"compressed {self.config.target}: val bpb {m['val_bpb_before']:.4f} -> {m['val_bpb']:.4f} "
                f"({m['val_bpb_change_pct']:+.2f}%){on_disk}"
                + (
                    f", {m['latency_ms_p50_deploy_cpu']:.2f} ms/token on CPU with {m['deploy_cpu_runtime']}"
                    if "latency_ms_p50_deploy_cpu" in m
                    else f", {m['latency_ms_p50']:.2f} ms/token"
                    if "latency_ms_p50" in m
                    else ""
                )
            )
        return settled(ok, reason)

    def check(self, ctx: PlanContext) -> Self:
        c = self.config
        _check_model_ref(c.target, "target", ctx)
        if not c.int8 and not c.prune:
            raise PlanError("config: a compress plan needs int8 and/or prune")
        if c.recover and not c.prune:
            raise PlanError("config.recover fine-tunes after pruning: set config.prune too")
        if c.recover:
            b = _check_budget_kind(c.recover, "config.recover", ctx)
            if b.seconds is not None and b.seconds > max(ctx.time_left_s, 1.0):
                raise PlanError(f"config.recover {c.recover} is more than the {ctx.time_left_s:.0f}s left")
        return self


class EvalPlan(PlanBase):
    takes_code_change: ClassVar[bool] = False
    kind: Literal["eval"] = "eval"
    config: EvalConfigPlan

    def config_title(self) -> str:
        c = self.config
        return f"HumanEval of {c.target} ({c.limit or 164} problems, n={c.n})"

    def summary(self) -> str:
        c = self.config
        return f"HumanEval of {c.target}, {c.limit or 164} problems, n={c.n}"

    def own_config_files(self) -> dict[str, str]:
        return {"configs/eval.json": json.dumps(self.config.model_dump(), indent=2) + "\n"}

    def worker_command(self, setup: WorkerSetup, out: Path) -> tuple[list[str], float]:
        c = self.config
        cmd = _worker(
            "distill",
            "eval",
            "humaneval",
            model=setup.resolve_model(c.target),
            out=out,
            generate_only=True,
            n=c.n,
            k=1,
            max_new_tokens=c.max_new_tokens,
            seed=c.seed,
            limit=c.limit,
        )
        return cmd, 1800.0

    def settled_verdict(self, metrics: dict[str, Any] | None) -> Verdict | None:
        m = metrics or {}
        if "humaneval_pass_at_1" not in m:
            return settled(False, str(m.get("fail_reason", "evaluation failed")))
        return settled(True, f"HumanEval pass@1 {m['humaneval_pass_at_1']:.4f} on {m['humaneval_problems']} problems")

    def check(self, ctx: PlanContext) -> Self:
        _check_model_ref(self.config.target, "target", ctx)
        return self


AnyPlan = TrainPlan | SearchPlan | DistillPlan | EvalPlan | CompressPlan
Plan = Annotated[AnyPlan, Field(discriminator="kind")]
_ADAPTER: TypeAdapter = TypeAdapter(Plan)
PLAN_CLASSES: tuple[type[PlanBase], ...] = get_args(AnyPlan)
PLAN_KINDS = tuple(cls.model_fields["kind"].default for cls in PLAN_CLASSES)
MODEL_KINDS = tuple(
    cls.model_fields["kind"].default for cls in PLAN_CLASSES if cls.is_model
)  # compete for the incumbent


def parse_plan(raw: str | dict) -> AnyPlan:
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as err:
        raise PlanError(f"not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise PlanError("a plan must be a JSON object with kind, config and rationale")
    if data.get("kind") not in PLAN_KINDS:
        raise PlanError(f"unknown plan kind {data.get('kind')!r}: use one of {', '.join(PLAN_KINDS)}")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as err:
        raise PlanError(describe_validation_error(err)) from None


def plan_schema() -> dict:
    """JSON schema of a plan, for LLM structured output."""
    return _ADAPTER.json_schema()


def _config_class_name(cls: type[PlanBase]) -> str:
    annotation = cls.model_fields["config"].annotation
    assert annotation is not None  # every plan kind declares its config class
    return annotation.__name__


_CONFIG_DEFS = tuple(_config_class_name(cls) for cls in PLAN_CLASSES)


def plan_tool_schema() -> dict:
    """The plan as one JSON object for an LLM tool call: providers want an object at the top level (not the
    ``oneOf`` of the union), so ``config`` is the ``anyOf`` of the kinds' configs and ``kind`` says which."""
    union = plan_schema()
    defs = union.get("$defs", {})
    return {
        "type": "object",
        "properties": {
            "kind": {
                "type": "string",
                "enum": list(PLAN_KINDS),
                "description": "train: train one architecture; nas_search: a short multi-objective architecture "
                "search; distill: distil an earlier model (teacher) into an architecture; "
                "eval: HumanEval pass@k of an earlier model; compress: prune / INT8 an earlier model",
            },
            "config": {
                "anyOf": [{"$ref": f"#/$defs/{name}"} for name in _CONFIG_DEFS],
                "description": "TrainConfigPlan for train, SearchConfigPlan for nas_search, DistillConfigPlan for "
                "distill, EvalConfigPlan for eval, CompressConfigPlan for compress",
            },
            "rationale": {
                "type": "string",
                "minLength": 1,
                "description": "why this experiment, in one or two sentences",
            },
            "code_change": {
                "type": "string",
                "description": "optional, only where the run has a code editor: a change to the "
                "workspace's model/search code (nas/ package) in words",
            },
        },
        "required": ["kind", "config", "rationale"],
        "additionalProperties": False,
        "$defs": {k: v for k, v in defs.items() if k in (*_CONFIG_DEFS, "ArchConfig")},
    }


def _check_model_ref(ref: str, field: str, ctx: PlanContext) -> None:
    if ref == "incumbent":
        if not ctx.has_incumbent:
            raise PlanError(f"config.{field} is 'incumbent' but nothing has been kept yet")
    elif ref not in ctx.models:
        known = ", ".join(ctx.models) or "none yet"
        raise PlanError(f"config.{field} {ref!r} is not a finished train/distill experiment (known: {known})")


def _check_arch_and_budget(arch: ArchConfig, budget: str, ctx: PlanContext) -> None:
    if arch.vocab_size != ctx.vocab_size:
        raise PlanError(
            f"config.arch.vocab_size is {arch.vocab_size} but the run's tokenizer has {ctx.vocab_size} tokens"
        )
    max_bytes = int(ctx.max_mb * 1e6) if ctx.max_mb else None
    broken = ArchConstraints(max_bytes=max_bytes, max_params=ctx.max_params).violations(arch)
    if broken:
        raise PlanError("config.arch breaks the goal's limits: " + "; ".join(broken))
    b = _check_budget_kind(budget, "config.budget", ctx)
    if b.seconds is not None and b.seconds > max(ctx.time_left_s, 1.0):
        raise PlanError(f"config.budget {budget} is more than the {ctx.time_left_s:.0f}s left in the run")


def _check_budget_kind(text: str, field: str, ctx: PlanContext) -> Budget:
    """A plan's budget is of the kind of the run's experiment budget: with token budgets a wall-clock budget would
    make its number depend on the machine's load (and the other way round, a token count has no known duration)."""
    b = validate.budget(text, field)
    if ctx.experiment_budget is not None:
        run = validate.budget(ctx.experiment_budget, "experiment budget")
        if (b.tokens is None) != (run.tokens is None):
            kinds = ("tokens", "wall-clock time") if run.tokens is not None else ("wall-clock time", "tokens")
            raise PlanError(
                f"{field} {text} is {kinds[1]} but this run counts experiment budgets in {kinds[0]} "
                f"(one experiment: {ctx.experiment_budget})"
            )
    return b


def budget_fraction(budget: str, div: int) -> str:
    """``budget / div`` written as a budget of the same kind (a search's stage 1 is a fraction of one experiment)."""
    b = parse_budget(budget)
    if b.seconds is not None:
        return f"{max(2.0, b.seconds / div):g}s"
    return f"{max(1000, (b.tokens or 0) // div)}tok"


def check_plan(plan: AnyPlan, ctx: PlanContext) -> AnyPlan:
    """Semantic checks (PlanError with the reason); budgets the plan left out become the run's (a search's stage 1:
    a quarter of it), and the goal's limits are filled into a search that left them out."""
    if plan.code_change and not ctx.code_editing:
        raise PlanError(
            "code_change needs a code editor but this run has only the built-in one (--editor builtin): "
            "leave code_change out"
        )
    if plan.code_change and not plan.takes_code_change:
        takers = [cls.model_fields["kind"].default for cls in PLAN_CLASSES if cls.takes_code_change]
        raise PlanError(f"code_change applies to {', '.join(takers[:-1])} and {takers[-1]} plans, not {plan.kind}")
    if ctx.experiment_budget is not None:
        plan = plan.default_budgets(ctx.experiment_budget)
    try:
        return plan.check(ctx)
    except UserError as err:
        raise PlanError(str(err)) from None


def _tighter(a: float | None, b: float | None) -> float | None:
    return b if a is None else (a if b is None else min(a, b))
