"""Plans: what the next experiment is, as a typed object. A planner (LLM or offline) produces JSON; it is
validated here, and a validation error goes back to the planner as text, never as a crash."""

from __future__ import annotations

import json
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from harness.budget import Budget
from harness.errors import describe_validation_error
from nas import validate
from nas.space import ArchConfig
from nas.validate import MAX_SEED


class TrainConfigPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arch: ArchConfig
    budget: str = "60s"
    lr: float = Field(3e-3, gt=0, lt=1)
    batch_size: int = Field(16, ge=1, le=512)
    seed: int = Field(0, ge=0, le=MAX_SEED)


class SearchConfigPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    space: str = "default"
    objectives: str = "bpb,bytes_int8"
    strategy: Literal["nsga2", "evolution", "random"] = "nsga2"
    trials: int = Field(6, ge=1, le=1000)
    stage1_budget: str = "20s"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    max_mb: float | None = Field(None, gt=0)
    max_latency_ms: float | None = Field(None, gt=0)


class DistillConfigPlan(BaseModel):
    """Distil an earlier experiment's model (the teacher) into a student architecture ``arch``."""

    model_config = ConfigDict(extra="forbid")

    teacher: str = Field("incumbent", description="'incumbent' or the id of a finished train/distill experiment, e.g. e003")
    arch: ArchConfig
    loss: Literal["fkl", "rkl", "skl", "srkl"] = "fkl"
    temperature: float = Field(1.0, gt=0, le=10)
    ce_weight: float = Field(0.5, ge=0, le=1)
    budget: str = "60s"
    lr: float = Field(3e-3, gt=0, lt=1)
    batch_size: int = Field(16, ge=1, le=512)
    seed: int = Field(0, ge=0, le=MAX_SEED)


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
            from kernels.prune import PruneSpec
            from harness.errors import UserError

            try:
                PruneSpec.parse(v)
            except UserError as err:
                raise ValueError(str(err)) from None
        return v


class PlanBase(BaseModel):
    """What every plan carries besides its kind and config: why, and optionally a change to the workspace's code
    that an LLM editor (Claude Code, or the GUI fallback) makes before the worker runs."""

    model_config = ConfigDict(extra="forbid")

    rationale: str = Field(min_length=1)
    code_change: str | None = Field(None, min_length=1, max_length=4000,
                                    description="optional: a change to the model or search code in the workspace (the nas/ "
                                                "package), in words, for the code editor; leave out for config-only experiments")


class TrainPlan(PlanBase):
    kind: Literal["train"] = "train"
    config: TrainConfigPlan


class SearchPlan(PlanBase):
    kind: Literal["nas_search"] = "nas_search"
    config: SearchConfigPlan


class DistillPlan(PlanBase):
    kind: Literal["distill"] = "distill"
    config: DistillConfigPlan


class CompressPlan(PlanBase):
    kind: Literal["compress"] = "compress"
    config: CompressConfigPlan


class EvalPlan(PlanBase):
    kind: Literal["eval"] = "eval"
    config: EvalConfigPlan


AnyPlan = Union[TrainPlan, SearchPlan, DistillPlan, EvalPlan, CompressPlan]
Plan = Annotated[AnyPlan, Field(discriminator="kind")]
_ADAPTER: TypeAdapter = TypeAdapter(Plan)
PLAN_KINDS = ("train", "nas_search", "distill", "eval", "compress")
MODEL_KINDS = ("train", "distill")  # kinds whose result is a model that competes for the incumbent


class PlanError(ValueError):
    """The planner's output is not a valid plan; the message is fed back to it."""


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


_CONFIG_DEFS = ("TrainConfigPlan", "SearchConfigPlan", "DistillConfigPlan", "EvalConfigPlan", "CompressConfigPlan")


def plan_tool_schema() -> dict:
    """The plan as one JSON object for an LLM tool call: providers want an object at the top level (not the
    ``oneOf`` of the union), so ``config`` is the ``anyOf`` of the kinds' configs and ``kind`` says which."""
    union = plan_schema()
    defs = union.get("$defs", {})
    return {
        "type": "object",
        "properties": {
            "kind": {"type": "string", "enum": list(PLAN_KINDS),
                     "description": "train: train one architecture; nas_search: a short multi-objective architecture "
                                    "search; distill: distil an earlier model (teacher) into an architecture; "
                                    "eval: HumanEval pass@k of an earlier model; compress: prune / INT8 an earlier model"},
            "config": {"anyOf": [{"$ref": f"#/$defs/{name}"} for name in _CONFIG_DEFS],
                       "description": "TrainConfigPlan for train, SearchConfigPlan for nas_search, DistillConfigPlan for "
                                      "distill, EvalConfigPlan for eval, CompressConfigPlan for compress"},
            "rationale": {"type": "string", "minLength": 1, "description": "why this experiment, in one or two sentences"},
            "code_change": {"type": "string", "description": "optional, only where the run has a code editor: a change to the "
                                                             "workspace's model/search code (nas/ package) in words"},
        },
        "required": ["kind", "config", "rationale"],
        "additionalProperties": False,
        "$defs": {k: v for k, v in defs.items() if k in (*_CONFIG_DEFS, "ArchConfig")},
    }


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


def _check_model_ref(ref: str, field: str, ctx: PlanContext) -> None:
    if ref == "incumbent":
        if not ctx.has_incumbent:
            raise PlanError(f"config.{field} is 'incumbent' but nothing has been kept yet")
    elif ref not in ctx.models:
        known = ", ".join(ctx.models) or "none yet"
        raise PlanError(f"config.{field} {ref!r} is not a finished train/distill experiment (known: {known})")


def _check_arch_and_budget(arch: ArchConfig, budget: str, ctx: PlanContext) -> None:
    from nas.space import ArchConstraints

    if arch.vocab_size != ctx.vocab_size:
        raise PlanError(f"config.arch.vocab_size is {arch.vocab_size} but the run's tokenizer has {ctx.vocab_size} tokens")
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
            raise PlanError(f"{field} {text} is {kinds[1]} but this run counts experiment budgets in {kinds[0]} "
                            f"(one experiment: {ctx.experiment_budget})")
    return b


def _default_budgets(plan: AnyPlan, ctx: PlanContext) -> AnyPlan:
    """Budgets a plan left out are the run's (a search's stage 1: a quarter of it), not the schema's wall-clock defaults."""
    from agent.offline import budget_fraction

    if ctx.experiment_budget is None:
        return plan
    cfg = plan.config
    if isinstance(plan, (TrainPlan, DistillPlan)) and "budget" not in cfg.model_fields_set:
        return plan.model_copy(update={"config": cfg.model_copy(update={"budget": ctx.experiment_budget})})
    if isinstance(plan, SearchPlan) and "stage1_budget" not in cfg.model_fields_set:
        return plan.model_copy(update={"config": cfg.model_copy(update={"stage1_budget": budget_fraction(ctx.experiment_budget, 4)})})
    return plan


def check_plan(plan: AnyPlan, ctx: PlanContext) -> AnyPlan:
    """Semantic checks (PlanError with the reason) and the goal's limits filled into a search that left them out."""
    from harness.errors import UserError
    from nas.objectives import parse_objectives
    from nas.space import get_space

    if plan.code_change and not ctx.code_editing:
        raise PlanError("code_change needs a code editor but this run has only the built-in one (--editor builtin): "
                        "leave code_change out")
    if plan.code_change and plan.kind in ("eval", "compress"):
        raise PlanError(f"code_change applies to train, distill and nas_search plans, not {plan.kind}")
    plan = _default_budgets(plan, ctx)
    try:
        if isinstance(plan, TrainPlan):
            _check_arch_and_budget(plan.config.arch, plan.config.budget, ctx)
            return plan
        if isinstance(plan, DistillPlan):
            _check_model_ref(plan.config.teacher, "teacher", ctx)
            _check_arch_and_budget(plan.config.arch, plan.config.budget, ctx)
            return plan
        if isinstance(plan, EvalPlan):
            _check_model_ref(plan.config.target, "target", ctx)
            return plan
        if isinstance(plan, CompressPlan):
            _check_model_ref(plan.config.target, "target", ctx)
            if not plan.config.int8 and not plan.config.prune:
                raise PlanError("config: a compress plan needs int8 and/or prune")
            if plan.config.recover and not plan.config.prune:
                raise PlanError("config.recover fine-tunes after pruning: set config.prune too")
            if plan.config.recover:
                b = _check_budget_kind(plan.config.recover, "config.recover", ctx)
                if b.seconds is not None and b.seconds > max(ctx.time_left_s, 1.0):
                    raise PlanError(f"config.recover {plan.config.recover} is more than the {ctx.time_left_s:.0f}s left")
            return plan
        cfg = plan.config
        get_space(cfg.space)
        parse_objectives(cfg.objectives)
        b = _check_budget_kind(cfg.stage1_budget, "config.stage1_budget", ctx)
        if b.seconds is not None and b.seconds * cfg.trials > 2 * max(ctx.time_left_s, 1.0):
            raise PlanError(f"{cfg.trials} trials of {cfg.stage1_budget} do not fit in the {ctx.time_left_s:.0f}s left")
        limits = {"max_mb": _tighter(cfg.max_mb, ctx.max_mb), "max_latency_ms": _tighter(cfg.max_latency_ms, ctx.max_latency_ms)}
        return plan.model_copy(update={"config": cfg.model_copy(update=limits)})
    except UserError as err:
        raise PlanError(str(err)) from None


def _tighter(a: float | None, b: float | None) -> float | None:
    return b if a is None else (a if b is None else min(a, b))
