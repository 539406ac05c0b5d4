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

from agent.plans import AnyPlan
from agent.state import HistoryEntry


def scheduled_repeat(history: list[HistoryEntry]) -> AnyPlan | None:
    """The repeat the loop owes before any new idea, or None."""
    if not history:
        return None
    last = history[-1]
    if last.decision == "close":
        return _next_seed(
            last, history, f"re-run of {last.id} with another seed: its gain was within the measured noise"
        )
    first_kept = next((h for h in history if h.plan.is_model and h.decision == "keep"), None)
    if first_kept is not None and len(_group(first_kept, history)) == 1:
        return _next_seed(
            first_kept, history, f"repeat of {first_kept.id} with another seed to measure run-to-run noise"
        )
    return None


def _group(entry: HistoryEntry, history: list[HistoryEntry]) -> list[HistoryEntry]:
    key = entry.plan.group_key()
    return [h for h in history if h.plan.group_key() == key]


def _next_seed(entry: HistoryEntry, history: list[HistoryEntry], rationale: str) -> AnyPlan:
    seed = max(int(getattr(h.plan.config, "seed", 0)) for h in _group(entry, history)) + 1
    return entry.plan.with_seed(seed, f"{rationale} (seed {seed})")
