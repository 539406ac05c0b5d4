"""When the loop stops planning: never with less time left than the shortest experiment it could run (an experiment
planned with seconds left only ends as a crash at its wall cap). Fake clocks: the state's elapsed seconds and the
history's worker seconds are set, nothing is timed."""

from __future__ import annotations

from pathlib import Path

from agent.graph import ResearchAgent
from agent.limits import MIN_EXPERIMENT_S, stop_reason
from agent.llm import CostLedger
from agent.plans import parse_plan
from agent.settings import RunSettings
from agent.state import AgentState, HistoryEntry
from nas.space import ArchConfig


def _settings(tmp_path: Path) -> RunSettings:
    return RunSettings(
        run_id="t",
        goal="find the best Python code model under 2 MB",
        runs_dir=str(tmp_path),
        budget="5m",
        experiment_budget="250ktok",
    )


def _done(exp_id: str, decision: str, worker_s: float, kind: str = "train") -> HistoryEntry:
    config = {"arch": ArchConfig().model_dump()} if kind == "train" else {"target": "incumbent"}
    return HistoryEntry(
        id=exp_id,
        plan=parse_plan({"kind": kind, "config": config, "rationale": "x"}),
        decision=decision,  # type: ignore[arg-type]
        worker_s=worker_s,
    )


def _reason(tmp_path: Path, elapsed_s: float, history: list[HistoryEntry]) -> str | None:
    state: AgentState = {"elapsed_s": elapsed_s, "history": history}
    return stop_reason(_settings(tmp_path), state, CostLedger(tmp_path / "llm_calls.jsonl"), tmp_path)


def test_the_loop_stops_when_less_time_is_left_than_the_shortest_finished_experiment(tmp_path: Path) -> None:
    # a token budget has no nominal duration: the measured walls are all the loop knows
    history = [_done("e001", "keep", 60.0), _done("e002", "discard", 41.0), _done("e003", "crash", 5.0)]
    assert _reason(tmp_path, 300 - 8, history) == "8 s left, shorter than the shortest experiment so far (41 s)"
    # the crash (at its wall cap) is not the shortest experiment: 30 s left would have been planned on its 5 s
    assert _reason(tmp_path, 300 - 30, history) == "30 s left, shorter than the shortest experiment so far (41 s)"
    assert _reason(tmp_path, 300 - 45, history) is None  # 45 s: both the shortest (41) and half the mean (~25) fit


def test_a_short_kind_counts_as_the_shortest_experiment(tmp_path: Path) -> None:
    history = [_done("e001", "keep", 30.0), _done("e002", "keep", 12.0, kind="eval")]
    assert _reason(tmp_path, 300 - 20, history) is None  # an eval of 12 s still fits in 20 s
    assert _reason(tmp_path, 300 - 11, history) == "11 s left, shorter than the shortest experiment so far (12 s)"


def test_a_model_experiment_is_not_started_with_less_than_half_its_measured_wall(tmp_path: Path) -> None:
    history = [_done("e001", "keep", 80.0), _done("e002", "keep", 12.0, kind="eval")]
    assert _reason(tmp_path, 300 - 30, history) == "30 s left, less than half a model experiment (80 s)"


def test_before_any_experiment_finished_the_floor_holds(tmp_path: Path) -> None:
    left = MIN_EXPERIMENT_S - 1
    expected = f"{left:.0f} s left, shorter than a worker's start-up and one evaluation ({MIN_EXPERIMENT_S:.0f} s)"
    assert _reason(tmp_path, 300 - left, []) == expected
    assert _reason(tmp_path, 300 - left, [_done("e001", "crash", 3.0)]) == expected  # a crash measures nothing
    assert _reason(tmp_path, 300 - MIN_EXPERIMENT_S - 1, []) is None


def test_the_plan_node_goes_to_the_report_with_the_reason(tmp_path: Path) -> None:
    agent = ResearchAgent(_settings(tmp_path))
    agent.run_dir.mkdir(parents=True, exist_ok=True)
    update = agent.plan({"elapsed_s": 300 - 8, "history": [_done("e001", "keep", 41.0)], "step": 1})
    assert update["done"] is True
    assert update["stop_reason"] == "8 s left, shorter than the shortest experiment so far (41 s)"
    assert "plan" not in update  # nothing was planned


def test_a_model_experiment_whose_cap_is_eaten_by_the_scoring_reserve_is_not_started(tmp_path: Path) -> None:
    """45 s left passes the stop rule (the 12 s eval fits, and more than half the 80 s training), but a training
    leaves the harness's scoring its 60 s reserve: its cap would be 1 s and it could only crash. The plan node stops
    instead; with time for the training it plans it."""
    agent = ResearchAgent(_settings(tmp_path))
    agent.run_dir.mkdir(parents=True, exist_ok=True)
    history = [_done("e001", "keep", 80.0), _done("e002", "keep", 12.0, kind="eval")]
    assert _reason(tmp_path, 300 - 45, history) is None
    state: AgentState = {"elapsed_s": 300 - 45, "history": history, "step": 2}
    update = agent.plan(state)
    assert update["done"] is True and "plan" not in update
    assert update["stop_reason"] == (
        "45 s left: a train experiment would get a 1 s cap after the scoring reserve of 60 s, "
        "shorter than the shortest train experiment so far (80 s)"
    )
    agent.s.workspace.mkdir(parents=True, exist_ok=True)  # the planned experiment goes into the journal
    planned = agent.plan({**state, "elapsed_s": 300 - 150})  # 150 s: a 90 s cap, longer than the 80 s training
    assert not planned.get("done") and planned["plan"].kind == "train"


def test_a_search_with_less_time_than_its_last_run_still_starts(tmp_path: Path) -> None:
    """A search stops sampling at its cap and reports what it found: only a worker's start-up must fit, not its last
    run's length. A training with the same time left would only crash."""
    agent = ResearchAgent(_settings(tmp_path))
    history = [
        _done("e001", "keep", 30.0),
        HistoryEntry(
            id="e002",
            plan=parse_plan({"kind": "nas_search", "config": {"trials": 4}, "rationale": "x"}),
            decision="keep",
            worker_s=200.0,
        ),
    ]
    state: AgentState = {"elapsed_s": 300 - 40, "history": history, "step": 2}
    search = parse_plan({"kind": "nas_search", "config": {"trials": 2, "seed": 1}, "rationale": "x"})
    assert agent._cannot_finish(search, state) is None
    assert agent._cannot_finish(search, {**state, "elapsed_s": 300 - MIN_EXPERIMENT_S + 1}) is not None
    train = parse_plan({"kind": "train", "config": {"arch": ArchConfig().model_dump()}, "rationale": "x"})
    assert "shorter than the shortest train experiment so far (30 s)" in str(agent._cannot_finish(train, state))
