"""The run's budgets, applied between experiments: when the loop stops, and the time limits of the next experiment.

Budgets hold: an experiment's timeout is its own limit or, if less, the time left in the run plus one grace period;
the worker's own wall cap is the time left (and leaves a reserve before the timeout), so a worker that would
overrun stops at the run's budget and writes its metrics (a partial result: a crash) before anything is killed.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from agent.llm import CostLedger
from agent.settings import RunSettings
from agent.state import AgentState, HistoryEntry
from harness.budget import parse_budget

#: the floor of an experiment's wall clock before one has finished: a worker's start-up (Python, torch, the corpus)
#: and one evaluation of a model; deliberately low, so that only a run with seconds left stops on it
MIN_EXPERIMENT_S = 15.0


def gpu_count() -> int:
    import torch  # deliberate: the agent process needs torch only to count GPUs for --max-gpu-hours

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def stop_reason(settings: RunSettings, state: AgentState, ledger: CostLedger, run_dir: Path) -> str | None:
    """Why the loop stops before another experiment (None: it goes on)."""
    s = settings
    if (run_dir / "STOP").exists():
        return "stop file"
    if state.get("elapsed_s", 0.0) >= s.budget_s:
        return f"time budget of {s.budget_s:g}s spent"
    if s.max_experiments is not None and len(state.get("history", [])) >= s.max_experiments:
        return f"{s.max_experiments} experiments done"
    if s.max_cost_usd is not None and ledger.total_usd >= s.max_cost_usd:
        return f"LLM spend cap of ${s.max_cost_usd:g} reached (${ledger.total_usd:.4f} spent)"
    if (
        s.max_gpu_hours is not None
        and gpu_count()
        and state.get("worker_s", 0.0) * gpu_count() / 3600 >= s.max_gpu_hours
    ):
        return f"{s.max_gpu_hours:g} GPU-hours spent"
    remaining = s.budget_s - state.get("elapsed_s", 0.0)
    history = state.get("history", [])
    shortest, measured = shortest_experiment_s(history)
    if remaining < shortest:
        what = "the shortest experiment so far" if measured else "a worker's start-up and one evaluation"
        return f"{max(remaining, 0.0):.0f} s left, shorter than {what} ({shortest:.0f} s)"
    expected = expected_experiment_s(s.experiment_budget, history)
    if remaining < 0.5 * expected:
        return f"{max(remaining, 0.0):.0f} s left, less than half a model experiment ({expected:.0f} s)"
    return None


def shortest_experiment_s(history: list[HistoryEntry], kind: str | None = None) -> tuple[float, bool]:
    """The least wall clock an experiment (of ``kind``; None: of any kind) can take, and whether it was measured:
    the shortest worker of one that finished (one that crashed, often at its wall cap, says nothing about how long
    a finished one takes), else :data:`MIN_EXPERIMENT_S`. Planning one with less time left only makes a crash."""
    walls = [h.worker_s for h in history if h.decision != "crash" and h.worker_s and kind in (None, h.plan.kind)]
    return (min(walls), True) if walls else (MIN_EXPERIMENT_S, False)


def expected_experiment_s(experiment_budget: str, history: list[HistoryEntry]) -> float:
    """Wall clock of a training experiment as measured so far (start-up and evaluation included), else
    its nominal budget: the run does not start an experiment it would overrun by more than half."""
    walls = [h.worker_s for h in history if h.plan.is_model and h.worker_s]
    if walls:
        return statistics.fmean(walls[-5:])
    return parse_budget(experiment_budget).seconds or 0.0


def experiment_limits(
    settings: RunSettings, own_s: float, elapsed_s: float, reserve_s: float = 0.0
) -> tuple[float, float]:
    """(timeout, worker cap) of the next experiment. A model the harness scores afterwards leaves that scoring its
    measured time (``reserve_s``) out of the cap."""
    left = max(settings.budget_s - elapsed_s, 0.0)
    timeout = min(own_s, left + settings.grace_s)
    return timeout, max(1.0, min(left - reserve_s, timeout - reserve_s - min(settings.grace_s, 0.25 * timeout)))
