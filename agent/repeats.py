"""Repeats the graph schedules itself, whoever plans: the noise measurement and the re-run of close calls.

The judge's rule is only sound when run-to-run noise is measured and a close call is decided on the mean of
several seeds. Both are the loop's contract, not a planner's taste, so the graph asks for them before it asks
any planner (LLM or offline):

- after the first kept model (train or distill), that experiment once more with the next seed: the pair is the
  first noise measurement (a crashed repeat is not retried: the run goes on with the floor);
- after a close call, the same kind, config and code change with the next seed; the edit node replays the stored
  patch, so both runs measure the same code, and the judge decides on the mean of the group.
"""

from __future__ import annotations

from typing import Any

from agent.offline import group_key
from agent.plans import MODEL_KINDS, AnyPlan, parse_plan


def scheduled_repeat(history: list[dict[str, Any]]) -> AnyPlan | None:
    """The repeat the loop owes before any new idea, or None."""
    if not history:
        return None
    last = history[-1]
    if last["decision"] == "close":
        return _next_seed(last, history, f"re-run of {last['id']} with another seed: its gain was within the measured noise")
    first_kept = next((h for h in history if h["plan"]["kind"] in MODEL_KINDS and h["decision"] == "keep"), None)
    if first_kept is not None and len(_group(first_kept, history)) == 1:
        return _next_seed(first_kept, history, f"repeat of {first_kept['id']} with another seed to measure run-to-run noise")
    return None


def _group(entry: dict[str, Any], history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    key = group_key(entry["plan"])
    return [h for h in history if group_key(h["plan"]) == key]


def _next_seed(entry: dict[str, Any], history: list[dict[str, Any]], rationale: str) -> AnyPlan:
    plan = entry["plan"]
    seed = max(int(h["plan"]["config"].get("seed", 0)) for h in _group(entry, history)) + 1
    return parse_plan({"kind": plan["kind"], "config": {**plan["config"], "seed": seed}, "code_change": plan.get("code_change"),
                       "rationale": f"{rationale} (seed {seed})"})
