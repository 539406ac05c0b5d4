"""The agent's checkpointed state: its models survive the real checkpointer's serializer, and an old checkpoint
(plans and history as dicts) is refused in one line."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.graph import NODES, build_graph, graph_config, open_checkpointer
from agent.judge import Verdict
from agent.plans import parse_plan
from agent.state import HistoryEntry, refuse_old_state
from harness.errors import UserError
from nas.space import ArchConfig


def _entry() -> HistoryEntry:
    plan = parse_plan(
        {
            "kind": "train",
            "config": {"arch": ArchConfig().model_dump(), "budget": "8ktok"},
            "rationale": "r",
            "code_change": "add QK-norm",
        }
    )
    return HistoryEntry(
        id="e001",
        plan=plan,
        decision="repeat",
        val_bpb=3.0,
        metrics={"params": 10, "status": "ok"},
        edit={"ok": True, "files": ["nas/model.py"]},
        noise_bpb=0.01,
        noise_source="measured",
    )


def test_the_state_models_round_trip_through_the_checkpointer_without_a_warning(tmp_path: Path, caplog) -> None:
    entry = _entry()
    state = {
        "plan": entry.plan,
        "verdict": Verdict(decision="repeat", reason="noise", metric=3.0, noise=0.01),
        "history": [entry],
        "incumbent": entry,
    }
    serde = open_checkpointer(tmp_path).serde
    with caplog.at_level(logging.WARNING):
        back = serde.loads_typed(serde.dumps_typed(state))
    assert back == state and isinstance(back["history"][0].plan, type(entry.plan))
    assert not [r for r in caplog.records if "unregistered" in r.getMessage() or "Blocked" in r.getMessage()]


@pytest.mark.parametrize(
    "old",
    [
        {"plan": {"kind": "train"}},
        {"history": [{"id": "e001"}]},
        {"incumbent": {"id": "e001"}},
        {"verdict": {"decision": "keep"}},
    ],
)
def test_an_old_checkpoint_is_refused_in_one_line(old: dict) -> None:
    with pytest.raises(UserError, match="older version") as err:
        refuse_old_state(old, "r1")  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
    refuse_old_state({"history": [_entry()], "incumbent": _entry(), "plan": None}, "r1")  # the current shape passes


def test_resuming_an_old_checkpoint_raises_the_one_line_error_out_of_the_graph(tmp_path: Path) -> None:
    """Through the real graph and checkpointer: a checkpoint whose state has the old shape stops at its next node
    with the UserError (which the CLI prints as one line), before the node reads it."""
    ran: list[str] = []

    def node(name: str):
        def run(state: dict) -> dict:
            ran.append(name)
            return {}

        return run

    fake = SimpleNamespace(s=SimpleNamespace(run_id="old1"), **{name: node(name) for name in NODES})
    graph = build_graph(fake).compile(checkpointer=open_checkpointer(tmp_path))  # type: ignore[arg-type]
    config = graph_config("old1")
    old_entry = {"id": "e001", "plan": {"kind": "train", "config": {}}, "decision": "keep"}
    graph.update_state(config, {"plan": old_entry["plan"], "history": [old_entry], "step": 1}, as_node="plan")
    with pytest.raises(UserError, match="older version"):
        graph.invoke(None, config)
    assert ran == []
