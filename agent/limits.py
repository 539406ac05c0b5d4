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
    if remaining < 0.5 * expected_experiment_s(s.experiment_budget, state.get("history", [])):
        return "too little time left for another experiment"
    return None


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
