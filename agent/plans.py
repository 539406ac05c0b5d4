"""Plans: what the next experiment is, as a typed object. A planner (LLM or offline) produces JSON; it is
validated here, and a validation error goes back to the planner as text, never as a crash."""

from __future__ import annotations

import json
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from nas.errors import describe_validation_error
from nas.space import ArchConfig


class TrainConfigPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arch: ArchConfig
    budget: str = "60s"
    lr: float = Field(3e-3, gt=0, lt=1)
    batch_size: int = Field(16, ge=1, le=512)
    seed: int = Field(0, ge=0)


class SearchConfigPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    space: str = "default"
    objectives: str = "bpb,bytes_int8"
    strategy: Literal["nsga2", "evolution", "random"] = "nsga2"
    trials: int = Field(6, ge=1, le=1000)
    stage1_budget: str = "20s"
    seed: int = Field(0, ge=0)
    max_mb: float | None = Field(None, gt=0)
    max_latency_ms: float | None = Field(None, gt=0)


class TrainPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["train"] = "train"
    config: TrainConfigPlan
    rationale: str = Field(min_length=1)


class SearchPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["nas_search"] = "nas_search"
    config: SearchConfigPlan
    rationale: str = Field(min_length=1)


Plan = Annotated[Union[TrainPlan, SearchPlan], Field(discriminator="kind")]
_ADAPTER: TypeAdapter = TypeAdapter(Plan)
PLAN_KINDS = ("train", "nas_search")


class PlanError(ValueError):
    """The planner's output is not a valid plan; the message is fed back to it."""


def parse_plan(raw: str | dict) -> TrainPlan | SearchPlan:
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
