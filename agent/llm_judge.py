"""The LLM judge: a second opinion on top of the metric rule, never a way around it.

It sees only metrics.json numbers (the worker's free-form output never reaches it) and the rule's
statistics. It may turn a keep into a close call (re-run) or a discard, and a close call into a discard;
it can never keep what the rule does not keep, because a gain within the measured run-to-run noise is
not a gain. Crashes, limit breaches and noise repeats are decided by the rule alone (no call is spent).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.context import incumbent_text, limits_text
from agent.goal import Goal
from agent.judge import Verdict, violations
from agent.llm import CostLedger, LLMClient, LLMError
from agent.plans import AnyPlan
from agent.prompting import Prompts
from agent.state import HistoryEntry

TOOL = "submit_verdict"
TOOL_DESCRIPTION = "Submit the verdict on this experiment."


class JudgeAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    decision: Literal["keep", "close", "discard"]
    reason: str = Field(min_length=1)


def judge_tool_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "decision": {"type": "string", "enum": ["keep", "close", "discard"]},
            "reason": {"type": "string", "description": "one sentence"},
        },
        "required": ["decision", "reason"],
    }


class LLMJudge:
    def __init__(
        self,
        goal: Goal,
        client: LLMClient,
        ledger: CostLedger,
        prompts: Prompts,
        max_attempts: int = 2,
        max_cost_usd: float | None = None,
    ):
        self.goal, self.client, self.ledger, self.prompts = goal, client, ledger, prompts
        self.max_attempts, self.max_cost_usd = max_attempts, max_cost_usd

    def describe(self) -> str:
        return self.client.describe() + " over the metric rule"

    def review(
        self,
        rule: Verdict,
        exp_id: str,
        plan: AnyPlan,
        metrics: dict[str, Any],
        incumbent: HistoryEntry | None,
        repeats: int,
        notes: list[str],
    ) -> Verdict:
        if rule.decision not in ("keep", "close", "discard") or violations(self.goal, metrics):
            return rule
        flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        stats = (
            f"this configuration's mean val_bpb over {repeats} run(s): {rule.metric:.4f}\n"
            + (f"delta vs incumbent: {rule.delta:+.4f} bpb (negative is better)\n" if rule.delta is not None else "")
            + (
                f"measured run-to-run noise (std): {rule.noise:.4f} bpb\n"
                if rule.noise is not None
                else "noise: not measured yet\n"
            )
            + f"the metric rule's verdict: {rule.decision}: {rule.reason}"
        )
        user = self.prompts.render(
            "judge",
            goal=self.goal.text,
            limits=limits_text(self.goal),
            experiment=f"{exp_id} ({plan.kind})",
            rationale=plan.rationale,
            metrics=json.dumps(flat, indent=1, sort_keys=True),
            incumbent=incumbent_text(incumbent),
            statistics=stats,
        )
        answer: JudgeAnswer | None = None
        for attempt in range(1, self.max_attempts + 1):
            if self.max_cost_usd is not None and self.ledger.total_usd >= self.max_cost_usd:
                notes.append("judge: LLM spend cap reached, the metric rule decides")
                return rule
            try:
                reply = self.ledger.call(
                    self.client,
                    "judge",
                    self.prompts.render("judge_system"),
                    user,
                    TOOL,
                    TOOL_DESCRIPTION,
                    judge_tool_schema(),
                )
            except LLMError as err:
                notes.append(f"judge LLM failed ({err}); the metric rule decides")
                return rule
            try:
                answer = JudgeAnswer.model_validate(
                    reply.data if reply.data is not None else json.loads(reply.text or "null")
                )
                break
            except (ValidationError, ValueError) as err:
                notes.append(f"judge answer rejected (attempt {attempt}): {str(err).splitlines()[0]}")
                user += f"\n\nYour previous answer could not be read ({str(err).splitlines()[0]}). Call submit_verdict."
        if answer is None:
            notes.append("the metric rule decides")
            return rule
        return combine(rule, answer, repeats)


def combine(rule: Verdict, answer: JudgeAnswer, repeats: int) -> Verdict:
    """The LLM may only be stricter than the rule."""
    said = f"LLM judge: {answer.decision}: {answer.reason}"
    if answer.decision == "keep" and rule.decision != "keep":
        return rule.model_copy(update={"reason": f"{rule.reason} ({said}; overruled: not beyond noise)"})
    if answer.decision == "close" and (rule.decision == "discard" or repeats >= 3):
        return rule.model_copy(update={"decision": "discard", "reason": f"{said}; {repeats} runs already, discarded"})
    return rule.model_copy(update={"decision": answer.decision, "reason": f"{said} (rule: {rule.reason})"})
