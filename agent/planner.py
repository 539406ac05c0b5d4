"""The planner step: an LLM proposes the next experiment, or the offline strategy does.

An LLM's plan goes through the same validation as any plan (schema, then :func:`check_plan` against the
run's tokenizer, limits and time left). A rejected plan goes back to the LLM with the error; after
``max_attempts`` rejections, a provider failure (after the SDK's retries) or an exhausted ``--max-cost``,
the offline planner takes that step. The noise repeat and the re-run of a close call are not a planner's
choice: the graph schedules them before it asks a planner (:mod:`agent.repeats`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from agent.context import front_text, history_table, incumbent_text, limits_text, seconds_text, space_text
from agent.goal import Goal
from agent.llm import CostLedger, LLMClient, LLMError
from agent.offline import OfflinePlanner
from agent.plans import AnyPlan, PlanContext, PlanError, check_plan, parse_plan, plan_tool_schema
from agent.prompting import Prompts
from agent.state import HistoryEntry

TOOL = "submit_plan"
TOOL_DESCRIPTION = "Submit the next experiment as a plan {kind, config, rationale}."


@dataclass
class PlanOutcome:
    plan: AnyPlan
    source: str  # "llm", "offline", "rule" (a repeat the graph schedules) or "offline fallback"
    notes: list[str] = field(default_factory=list)


class Planner:
    def __init__(
        self,
        goal: Goal,
        offline: OfflinePlanner,
        tokenizer: str,
        experiment_budget: str,
        prompts: Prompts,
        client: LLMClient | None = None,
        ledger: CostLedger | None = None,
        max_attempts: int = 3,
        max_cost_usd: float | None = None,
    ):
        self.goal, self.offline, self.tokenizer, self.experiment_budget = goal, offline, tokenizer, experiment_budget
        self.prompts, self.client, self.ledger = prompts, client, ledger
        self.max_attempts, self.max_cost_usd = max_attempts, max_cost_usd

    def describe(self) -> str:
        return self.client.describe() if self.client else "offline (deterministic strategy)"

    def propose(
        self, history: list[HistoryEntry], incumbent: HistoryEntry | None, noise: float | None, ctx: PlanContext
    ) -> PlanOutcome:
        if self.client is None:
            return PlanOutcome(self._offline(history, incumbent), "offline")
        notes: list[str] = []
        feedback = ""
        for attempt in range(1, self.max_attempts + 1):
            if self._over_budget():
                notes.append(f"LLM spend cap of ${self.max_cost_usd:g} reached")
                break
            user = self.prompts.render(
                "planner",
                goal=self.goal.text,
                limits=limits_text(self.goal),
                time_left=seconds_text(ctx.time_left_s),
                experiment_budget=self.experiment_budget,
                tokenizer=self.tokenizer,
                vocab_size=ctx.vocab_size,
                space=space_text(self.offline.space),
                incumbent=incumbent_text(incumbent),
                noise=f"{noise:.4f} bpb" if noise is not None else "not measured yet",
                history=history_table(history, incumbent),
                front=front_text(history),
                feedback=feedback,
                code_editing=(
                    "available: a plan may carry code_change"
                    if ctx.code_editing
                    else "not available in this run (built-in editor only): leave code_change out"
                ),
            )
            assert self.ledger is not None
            try:
                reply = self.ledger.call(
                    self.client,
                    "planner",
                    self.prompts.render("planner_system"),
                    user,
                    TOOL,
                    TOOL_DESCRIPTION,
                    plan_tool_schema(),
                )
            except LLMError as err:
                notes.append(f"planner LLM failed: {err}")
                break
            raw: dict[str, Any] | str = reply.data if reply.data is not None else _json_in(reply.text)
            try:
                plan = check_plan(parse_plan(raw), ctx)
                _refuse_exact_repeat(plan, history)
                return PlanOutcome(plan, "llm", notes)
            except PlanError as err:
                notes.append(f"plan rejected (attempt {attempt}/{self.max_attempts}): {err}")
                shown = json.dumps(raw)[:1500] if isinstance(raw, dict) else str(raw)[:1500]
                feedback = (
                    f"# Your previous answer was rejected\nAnswer: {shown}\nError: {err}\n"
                    "Fix exactly this error and call submit_plan again.\n"
                )
        notes.append("the offline planner takes this step")
        return PlanOutcome(self._offline(history, incumbent), "offline fallback", notes)

    def _offline(self, history: list[HistoryEntry], incumbent: HistoryEntry | None) -> AnyPlan:
        return self.offline.propose(history, incumbent)

    def _over_budget(self) -> bool:
        return self.max_cost_usd is not None and self.ledger is not None and self.ledger.total_usd >= self.max_cost_usd


def _refuse_exact_repeat(plan: AnyPlan, history: list[HistoryEntry]) -> None:
    """The same kind and config with the same seed would only re-measure a known number."""
    for h in history:
        if (
            h.plan.kind == plan.kind
            and h.plan.config.model_dump() == plan.config.model_dump()
            and h.plan.code_change == plan.code_change
        ):
            raise PlanError(
                f"this exact configuration was already run as {h.id}: "
                "change the config, or the seed for a deliberate repeat"
            )


def _json_in(text: str) -> dict[str, Any] | str:
    """A model that answered in text instead of calling the tool: take the outermost JSON object, if any."""
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        try:
            data = json.loads(text[start : end + 1])
            if isinstance(data, dict):
                return data
        except json.JSONDecodeError:
            pass
    return text or "(empty reply: no tool call and no text)"
